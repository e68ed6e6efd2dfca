//! The XenAPI datamodel as static tables, generated at build time from `vendor/xenapi/`.
//!
//! Everything generic in the daemon (records, implicit messages, dispatch, codecs, the store)
//! walks these tables instead of naming classes or fields by hand.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Index of a class in [`CLASSES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassId(pub usize);

/// Index of a field within its class's `fields`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldId(pub usize);

/// A message: its class and its index in the class's `messages`. The behaviour table is keyed
/// by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    /// Owning class.
    pub class: ClassId,
    /// Index in the class's `messages`.
    pub index: usize,
}

impl MessageId {
    /// The message's definition.
    pub fn def(self) -> &'static MessageDef {
        &CLASSES[self.class.0].messages[self.index]
    }
    /// `Class.message`, as on the wire.
    pub fn wire_name(self) -> String {
        format!("{}.{}", self.class.name(), self.def().name)
    }
    /// Every message of the API, in datamodel order.
    pub fn all() -> impl Iterator<Item = MessageId> {
        CLASSES.iter().enumerate().flat_map(|(c, def)| {
            (0..def.messages.len()).map(move |index| MessageId {
                class: ClassId(c),
                index,
            })
        })
    }
}

/// Index of an enum in [`ENUMS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnumId(pub usize);

/// A XenAPI type.
#[derive(Debug, PartialEq)]
pub enum Ty {
    /// Text.
    String,
    /// 64-bit integer.
    Int,
    /// IEEE double.
    Float,
    /// Boolean.
    Bool,
    /// Date and time (UTC, second precision).
    DateTime,
    /// Reference to an object of a class.
    Ref(ClassId),
    /// Enumeration value.
    Enum(EnumId),
    /// Set of values.
    Set(&'static Ty),
    /// Map from keys to values.
    Map(&'static Ty, &'static Ty),
    /// A whole record of a class.
    Record(ClassId),
    /// A value that may be absent.
    Option(&'static Ty),
    /// The record of whichever class an event names.
    AnyRecord,
    /// The result of `event.from`.
    EventBatch,
    /// No value.
    Void,
}

/// Field qualifier, as the datamodel gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qualifier {
    /// Read/write.
    Rw,
    /// Set at creation, then read-only.
    RoConstructor,
    /// Computed by the server.
    RoRuntime,
}

/// One field of a class.
#[derive(Debug)]
pub struct FieldDef {
    /// Wire name (namespaces joined with `_`).
    pub name: &'static str,
    /// Type.
    pub ty: &'static Ty,
    /// Qualifier.
    pub qualifier: Qualifier,
    /// Default from the datamodel, in its textual form.
    pub default: Option<&'static str>,
}

/// One parameter of a message.
#[derive(Debug)]
pub struct ParamDef {
    /// Name.
    pub name: &'static str,
    /// Type.
    pub ty: &'static Ty,
    /// The value used when a client leaves this (trailing) parameter out, as JSON.
    pub default: Option<&'static str>,
}

/// What a message does, where that follows from the datamodel alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// `get_<field>`.
    Get(FieldId),
    /// `set_<field>` on an RW field.
    Set(FieldId),
    /// An explicit `set_<field>` with the field's type (owners may add checks).
    ExplicitSet(FieldId),
    /// `add_<field>` on an RW set.
    AddToSet(FieldId),
    /// `remove_<field>` on an RW set.
    RemoveFromSet(FieldId),
    /// `add_to_<field>` on an RW map.
    AddToMap(FieldId),
    /// `remove_from_<field>` on an RW map.
    RemoveFromMap(FieldId),
    /// `get_by_uuid`.
    GetByUuid,
    /// `get_by_name_label`.
    GetByNameLabel,
    /// `get_record`.
    GetRecord,
    /// `get_all`.
    GetAll,
    /// `get_all_records`.
    GetAllRecords,
    /// `get_all_records_where`.
    GetAllRecordsWhere,
    /// Implicit `create`.
    Create,
    /// Implicit `destroy`.
    Destroy,
    /// A message with behaviour of its own.
    Custom,
}

/// One message of a class.
#[derive(Debug)]
pub struct MessageDef {
    /// Name without the class.
    pub name: &'static str,
    /// Whether the datamodel marks it implicit.
    pub implicit: bool,
    /// Generic behaviour, if any.
    pub kind: MessageKind,
    /// Parameters, the session first where there is one.
    pub params: &'static [ParamDef],
    /// Result type.
    pub result: &'static Ty,
    /// Error codes it may raise.
    pub errors: &'static [&'static str],
}

impl MessageDef {
    /// Whether the first parameter is a session.
    pub fn takes_session(&self) -> bool {
        self.params
            .first()
            .is_some_and(|p| p.name == "session_id" && matches!(p.ty, Ty::Ref(c) if *c == class_ids::session))
    }
}

/// One class.
#[derive(Debug)]
pub struct ClassDef {
    /// Name as on the wire.
    pub name: &'static str,
    /// Whether its objects are written to disk.
    pub persistent: bool,
    /// Fields in datamodel order.
    pub fields: &'static [FieldDef],
    /// Messages.
    pub messages: &'static [MessageDef],
}

/// One enum.
#[derive(Debug)]
pub struct EnumDef {
    /// Name.
    pub name: &'static str,
    /// Values in canonical spelling.
    pub values: &'static [&'static str],
}

/// A (class, field) pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldRef {
    /// Class.
    pub class: ClassId,
    /// Field.
    pub field: FieldId,
}

include!(concat!(env!("OUT_DIR"), "/schema_gen.rs"));

impl ClassId {
    /// The class's definition.
    pub fn def(self) -> &'static ClassDef {
        &CLASSES[self.0]
    }
    /// The class's wire name.
    pub fn name(self) -> &'static str {
        CLASSES[self.0].name
    }
    /// A field's definition.
    pub fn field(self, f: FieldId) -> &'static FieldDef {
        &CLASSES[self.0].fields[f.0]
    }
    /// Looks a message of the class up by name.
    pub fn message_by_name(self, name: &str) -> Option<MessageId> {
        CLASSES[self.0]
            .messages
            .iter()
            .position(|m| m.name == name)
            .map(|index| MessageId { class: self, index })
    }
    /// Looks a field up by name.
    pub fn field_by_name(self, name: &str) -> Option<FieldId> {
        index().fields[self.0].get(name).copied()
    }
    /// Looks a class up by name, case-insensitively (event classes travel in lower case).
    pub fn by_name(name: &str) -> Option<ClassId> {
        index().classes.get(&name.to_ascii_lowercase()).copied()
    }
    /// All classes.
    pub fn all() -> impl Iterator<Item = ClassId> {
        (0..CLASSES.len()).map(ClassId)
    }
    /// Whether the class has a field of that name.
    pub fn has_field(self, name: &str) -> bool {
        self.field_by_name(name).is_some()
    }
}

impl EnumId {
    /// The enum's definition.
    pub fn def(self) -> &'static EnumDef {
        &ENUMS[self.0]
    }
    /// The canonical spelling of a value, matched case-insensitively.
    pub fn canonical(self, value: &str) -> Option<&'static str> {
        ENUMS[self.0]
            .values
            .iter()
            .copied()
            .find(|v| v.eq_ignore_ascii_case(value))
    }
}

/// A message found by its wire name.
#[derive(Clone, Copy, Debug)]
pub struct MethodRef {
    /// The message's id.
    pub id: MessageId,
    /// Owning class.
    pub class: ClassId,
    /// The message.
    pub message: &'static MessageDef,
}

/// Name lookups (fields by name on every decoded record and call).
use crate::FastHash as Fast;

struct Index {
    classes: HashMap<String, ClassId, Fast>,
    fields: Vec<HashMap<&'static str, FieldId, Fast>>,
    methods: HashMap<String, MethodRef, Fast>,
}

fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut classes = HashMap::default();
        let mut fields = Vec::new();
        let mut methods = HashMap::default();
        for (i, c) in CLASSES.iter().enumerate() {
            classes.insert(c.name.to_ascii_lowercase(), ClassId(i));
            fields.push(c.fields.iter().enumerate().map(|(j, f)| (f.name, FieldId(j))).collect());
            for (index, m) in c.messages.iter().enumerate() {
                let r = MethodRef {
                    id: MessageId {
                        class: ClassId(i),
                        index,
                    },
                    class: ClassId(i),
                    message: m,
                };
                methods.insert(format!("{}.{}", c.name, m.name), r);
                methods.entry(format!("{}_{}", c.name, m.name)).or_insert(r);
            }
        }
        Index {
            classes,
            fields,
            methods,
        }
    })
}

/// Finds a message by `Class.msg` or `Class_msg`.
pub fn method(name: &str) -> Option<MethodRef> {
    index().methods.get(name).copied()
}

/// Every `Class.message` name the API has, in datamodel order.
pub fn method_names() -> impl Iterator<Item = (ClassId, &'static MessageDef)> {
    CLASSES
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.messages.iter().map(move |m| (ClassId(i), m)))
}

/// The bound partner of a field, if the field is one end of a relation. A field listed as
/// its own partner (`role.subroles`, `subject.roles` in the reference's relation list) is a
/// plain set: the reference keeps it one-sided (pool-admin's subroles name permissions whose
/// own subroles are empty).
pub fn partner(class: ClassId, field: FieldId) -> Option<FieldRef> {
    RELATIONS.iter().filter(|(a, b)| a != b).find_map(|(a, b)| {
        if a.class == class && a.field == field {
            Some(*b)
        } else if b.class == class && b.field == field {
            Some(*a)
        } else {
            None
        }
    })
}

/// The fields of a class that are the "many" end of a one-to-many relation: a set of refs
/// whose members each name this object in their partner field (`SR.VDIs` and `VDI.SR`).
/// Such a set says nothing its members do not, so the store does not write it to disk and
/// rebuilds it from the members when it loads.
pub fn derived_sets(class: ClassId) -> &'static [FieldId] {
    static TABLE: std::sync::OnceLock<Vec<Vec<FieldId>>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..CLASSES.len())
            .map(|c| {
                let class = ClassId(c);
                (0..class.def().fields.len())
                    .map(FieldId)
                    .filter(|&f| {
                        matches!(class.field(f).ty, Ty::Set(Ty::Ref(_)))
                            && partner(class, f).is_some_and(|p| matches!(p.class.field(p.field).ty, Ty::Ref(_)))
                    })
                    .collect()
            })
            .collect()
    });
    table.get(class.0).map_or(&[], Vec::as_slice)
}

/// Parameter names of an error code, as `errors.json` lists them.
pub fn error_params(code: &str) -> Option<Option<&'static [&'static str]>> {
    ERROR_CODES.iter().find(|(c, _)| *c == code).map(|(_, p)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_cover_the_published_api() {
        assert!(CLASSES.len() >= 67);
        let vm = ClassId::by_name("vm").unwrap();
        assert_eq!(vm, class_ids::VM);
        assert_eq!(vm.field_by_name("power_state"), Some(fields::VM::power_state));
        let m = method("VM.get_power_state").unwrap();
        assert_eq!(m.message.kind, MessageKind::Get(fields::VM::power_state));
        assert!(method("VM_get_record").is_some());
        assert_eq!(
            method("VM.add_to_other_config").unwrap().message.kind,
            MessageKind::AddToMap(fields::VM::other_config)
        );
        assert_eq!(
            method("VM.add_tags").unwrap().message.kind,
            MessageKind::AddToSet(fields::VM::tags)
        );
        assert_eq!(method("VM.start").unwrap().message.kind, MessageKind::Custom);
        assert!(method("VM.get_all_records_where").is_some());
    }

    #[test]
    fn relations_resolve_both_ways() {
        let p = partner(class_ids::VIF, fields::VIF::VM).unwrap();
        assert_eq!(
            p,
            FieldRef {
                class: class_ids::VM,
                field: fields::VM::VIFs
            }
        );
        let back = partner(class_ids::VM, fields::VM::VIFs).unwrap();
        assert_eq!(back.field, fields::VIF::VM);
    }

    #[test]
    fn enums_match_case_insensitively() {
        let e = match class_ids::VM.field(fields::VM::power_state).ty {
            Ty::Enum(e) => *e,
            other => panic!("{other:?}"),
        };
        assert_eq!(e.canonical("halted"), Some("Halted"));
        assert_eq!(e.canonical("bogus"), None);
    }
}
