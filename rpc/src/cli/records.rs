//! The record commands, generated from the datamodel for every class that can list its
//! objects: `<class>-list`, `-param-list`, `-param-get`, `-param-set`, `-param-add`,
//! `-param-remove`, `-param-clear`.
//!
//! Names follow the reference's conventions: a field's CLI name is its datamodel name with
//! `_` written `-` (`name_label` is `name-label`, `default_SR` is `default-SR`); a reference
//! to an object shows its uuid; a reference named after the class it points to becomes
//! `<class>-uuid`, with `<class>-name-label` beside it where that class has names (`VBD.VM`
//! is `vm-uuid` and `vm-name-label`), and a set of them named after the class in the plural
//! becomes `<class>-uuids` (`VM_group.VMs` is `vm-uuids`). Sets print as `a; b`, maps as
//! `k: v; k2: v2`, enums in the datamodel's spelling (a VM's power state in lower case, as
//! the reference shows it), a missing object as `<not in database>`.
//!
//! Each label carries the field's access: `( RO)`/`( RW)`, `(SRO)`/`(SRW)` for sets,
//! `(MRO)`/`(MRW)` for maps, by whether the class has the messages that change it.

use super::args::{bytes_of_string, parse_bool, Params};
use super::printer::{PrintVal, Record};
use super::session::{Ctx, STDPARAMS};
use super::CliError;
use agent::schema::{ClassId, FieldId, Ty};
use agent::value::{format_datetime, Object, Value};
use serde_json::{json, Value as Json};
use std::sync::{Arc, OnceLock};

/// A CLI record class: which objects of which API class, named how, listed with which fields.
#[derive(Debug)]
pub(crate) struct RecordClass {
    /// The CLI name (`vm`, `sr`, `host-cpu`).
    pub cli: String,
    /// The API class.
    pub class: ClassId,
    /// Filters every list applies (`vm` shows no templates).
    pub filters: &'static [(&'static str, &'static str)],
    /// Fields a list shows without `params=` (empty: all of them).
    pub defaults: &'static [&'static str],
}

/// The reference's record classes: CLI name, API class, default filters, default fields.
type Known = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);

const KNOWN: &[Known] = &[
    (
        "pool",
        "pool",
        &[],
        &["uuid", "name-label", "name-description", "master", "default-SR"],
    ),
    (
        "pif",
        "PIF",
        &[],
        &[
            "uuid",
            "device",
            "VLAN",
            "MAC",
            "network-uuid",
            "currently-attached",
            "host-uuid",
        ],
    ),
    ("bond", "Bond", &[], &["uuid", "master", "slaves"]),
    ("vlan", "VLAN", &[], &["uuid", "tagged-PIF", "untagged-PIF", "tag"]),
    (
        "tunnel",
        "tunnel",
        &[],
        &["uuid", "transport-PIF", "access-PIF", "status"],
    ),
    ("vif", "VIF", &[], &["uuid", "device", "vm-uuid", "network-uuid"]),
    (
        "network",
        "network",
        &[],
        &["uuid", "name-label", "name-description", "bridge"],
    ),
    (
        "console",
        "console",
        &[],
        &["uuid", "vm-uuid", "vm-name-label", "protocol", "location"],
    ),
    (
        "vm",
        "VM",
        &[("is-a-template", "false")],
        &["name-label", "uuid", "power-state"],
    ),
    (
        "template",
        "VM",
        &[("is-a-template", "true"), ("is-a-snapshot", "false")],
        &["name-label", "name-description", "uuid"],
    ),
    (
        "snapshot",
        "VM",
        &[("is-a-snapshot", "true")],
        &[
            "name-label",
            "name-description",
            "uuid",
            "snapshot_of",
            "snapshot_time",
            "is-vmss-snapshot",
        ],
    ),
    ("host", "host", &[], &["uuid", "name-label", "name-description"]),
    (
        "host-cpu",
        "host_cpu",
        &[],
        &["uuid", "number", "vendor", "speed", "utilisation"],
    ),
    (
        "host-crashdump",
        "host_crashdump",
        &[],
        &["uuid", "host", "timestamp", "size"],
    ),
    (
        "patch",
        "pool_patch",
        &[],
        &[
            "uuid",
            "name-label",
            "name-description",
            "size",
            "hosts",
            "after-apply-guidance",
        ],
    ),
    (
        "update",
        "pool_update",
        &[],
        &[
            "uuid",
            "name-label",
            "name-description",
            "version",
            "installation-size",
            "hosts",
            "after-apply-guidance",
        ],
    ),
    (
        "vdi",
        "VDI",
        &[],
        &[
            "uuid",
            "name-label",
            "name-description",
            "virtual-size",
            "read-only",
            "sharable",
            "sr-uuid",
        ],
    ),
    (
        "vbd",
        "VBD",
        &[],
        &["uuid", "vm-uuid", "vm-name-label", "vdi-uuid", "device", "empty"],
    ),
    (
        "sr",
        "SR",
        &[],
        &["uuid", "name-label", "name-description", "host", "type", "content-type"],
    ),
    (
        "sm",
        "SM",
        &[],
        &[
            "uuid",
            "type",
            "name-label",
            "name-description",
            "vendor",
            "copyright",
            "configuration",
        ],
    ),
    (
        "pbd",
        "PBD",
        &[],
        &["uuid", "host-uuid", "sr-uuid", "device-config", "currently-attached"],
    ),
    (
        "task",
        "task",
        &[],
        &["uuid", "name-label", "name-description", "status", "progress"],
    ),
    (
        "subject",
        "subject",
        &[],
        &["uuid", "subject-identifier", "other-config", "roles"],
    ),
    ("role", "role", &[], &["uuid", "name", "description", "subroles"]),
    (
        "vmss",
        "VMSS",
        &[],
        &[
            "uuid",
            "name-label",
            "name-description",
            "enabled",
            "type",
            "retained-snapshots",
            "frequency",
            "schedule",
            "last-run-time",
            "VMs",
        ],
    ),
    ("message", "message", &[], &[]),
    ("secret", "secret", &[], &[]),
    ("appliance", "VM_appliance", &[], &[]),
    (
        "vm-group",
        "VM_group",
        &[],
        &["uuid", "name-label", "name-description", "placement", "vm-uuids"],
    ),
    (
        "pgpu",
        "PGPU",
        &[],
        &["uuid", "pci-uuid", "vendor-name", "device-name", "gpu-group-uuid"],
    ),
    (
        "gpu-group",
        "GPU_group",
        &[],
        &["uuid", "name-label", "name-description"],
    ),
    ("vgpu", "VGPU", &[], &["uuid", "vm-uuid", "device", "gpu-group-uuid"]),
    (
        "vgpu-type",
        "VGPU_type",
        &[],
        &["uuid", "vendor-name", "model-name", "max-resolution", "max-heads"],
    ),
    ("drtask", "DR_task", &[], &[]),
    (
        "pvs-site",
        "PVS_site",
        &[],
        &["uuid", "name-label", "name-description", "pvs-uuid", "pvs-server-uuids"],
    ),
    ("pvs-server", "PVS_server", &[], &["uuid", "addresses", "pvs-site-uuid"]),
    (
        "pvs-proxy",
        "PVS_proxy",
        &[],
        &[
            "uuid",
            "vif-uuid",
            "pvs-site-uuid",
            "currently-attached",
            "cache-sr-uuid",
        ],
    ),
    (
        "pvs-cache-storage",
        "PVS_cache_storage",
        &[],
        &["uuid", "host-uuid", "sr-uuid", "pvs-site-uuid", "size"],
    ),
    (
        "feature",
        "Feature",
        &[],
        &[
            "uuid",
            "name-label",
            "name-description",
            "enabled",
            "experimental",
            "version",
            "host-uuid",
        ],
    ),
    (
        "sdn-controller",
        "SDN_controller",
        &[],
        &["uuid", "protocol", "address", "port"],
    ),
    (
        "pusb",
        "PUSB",
        &[],
        &[
            "uuid",
            "path",
            "product-id",
            "product-desc",
            "vendor-id",
            "vendor-desc",
            "serial",
            "version",
            "description",
            "speed",
        ],
    ),
    (
        "usb-group",
        "USB_group",
        &[],
        &["uuid", "name-label", "name-description"],
    ),
    ("vusb", "VUSB", &[], &["uuid", "vm-uuid", "usb-group-uuid"]),
    (
        "network-sriov",
        "network_sriov",
        &[],
        &[
            "uuid",
            "physical-pif",
            "logical-pif",
            "requires-reboot",
            "configuration-mode",
        ],
    ),
    (
        "cluster",
        "Cluster",
        &[],
        &[
            "uuid",
            "cluster-hosts",
            "cluster-token",
            "cluster-stack",
            "allowed-operations",
            "current-operations",
            "pool-auto-join",
            "cluster-config",
            "other-config",
        ],
    ),
    (
        "cluster-host",
        "Cluster_host",
        &[],
        &[
            "uuid",
            "cluster",
            "pif",
            "host",
            "enabled",
            "allowed-operations",
            "current-operations",
            "other-config",
        ],
    ),
    (
        "certificate",
        "Certificate",
        &[],
        &[
            "uuid",
            "type",
            "name",
            "host",
            "not-before",
            "not-after",
            "fingerprint",
            "purpose",
        ],
    ),
    (
        "repository",
        "Repository",
        &[],
        &[
            "uuid",
            "name-label",
            "name-description",
            "binary-url",
            "source-url",
            "update",
            "hash",
            "up-to-date",
            "gpgkey-path",
            "origin",
        ],
    ),
    (
        "hostdriver-variant",
        "Driver_variant",
        &[],
        &[
            "uuid",
            "driver-name",
            "name",
            "version",
            "priority",
            "host-uuid",
            "driver-uuid",
            "active",
            "selected",
            "status",
            "hw-present",
        ],
    ),
    (
        "hostdriver",
        "Host_driver",
        &[],
        &[
            "uuid",
            "name",
            "host-uuid",
            "active-variant",
            "selected-variant",
            "variants",
            "variants-uuid",
        ],
    ),
    ("vtpm", "VTPM", &[], &["uuid", "vm-uuid", "profile"]),
    (
        "observer",
        "Observer",
        &[],
        &[
            "uuid",
            "name-label",
            "name-description",
            "host-uuids",
            "endpoints",
            "enabled",
        ],
    ),
    ("pci", "PCI", &[], &["uuid", "vendor-name", "device-name", "pci-id"]),
    (
        "caller",
        "Caller",
        &[],
        &[
            "uuid",
            "name-label",
            "name-description",
            "user-agent",
            "client-ip",
            "last-access",
            "groups",
            "rate-limit",
        ],
    ),
    (
        "rate-limit",
        "Rate_limit",
        &[],
        &["uuid", "name-label", "callers", "burst-size", "fill-rate"],
    ),
];

/// Every record class: the reference's, then one for each other class that has uuids and
/// lists its objects, named by its lower-cased API name with `-` for `_`.
pub(crate) fn record_classes() -> &'static [RecordClass] {
    static TABLE: OnceLock<Vec<RecordClass>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut out: Vec<RecordClass> = KNOWN
            .iter()
            .filter_map(|(cli, api, filters, defaults)| {
                ClassId::by_name(api).map(|class| RecordClass {
                    cli: (*cli).to_owned(),
                    class,
                    filters,
                    defaults,
                })
            })
            .collect();
        for class in ClassId::all() {
            if out.iter().any(|r| r.class == class) {
                continue;
            }
            let listable = class.message_by_name("get_all_records").is_some()
                && class.message_by_name("get_by_uuid").is_some()
                && class.has_field("uuid");
            if listable {
                out.push(RecordClass {
                    cli: class.name().to_ascii_lowercase().replace('_', "-"),
                    class,
                    filters: &[],
                    defaults: &[],
                });
            }
        }
        out
    })
}

/// A record class by CLI name.
pub(crate) fn by_cli_name(name: &str) -> Option<&'static RecordClass> {
    record_classes().iter().find(|r| r.cli == name)
}

/// Where a CLI field's value comes from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Source {
    /// A field, shown by its type.
    Field(FieldId),
    /// The name of the object a reference field points to.
    RefName(FieldId, ClassId),
    /// An SR's host, as the reference shows it: the name of the host its one PBD is on,
    /// `<shared>` when it has several.
    SrHost,
}

/// How a field filters and changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// One value.
    Normal,
    /// A set (`name:contains=x` filters).
    Set,
    /// A map (`name:key=value` filters and sets).
    Map,
}

/// One field of a CLI record.
#[derive(Clone, Debug)]
pub(crate) struct CliField {
    /// Its CLI name.
    pub name: String,
    /// Where its value comes from.
    pub source: Source,
    /// How it filters and changes.
    pub shape: Shape,
    /// The datamodel field's name (for the messages that change it).
    pub api: &'static str,
    /// `set_<field>` exists.
    pub settable: bool,
    /// `add_<field>` / `remove_<field>` exist (sets).
    pub set_addable: bool,
    /// `add_to_<field>` / `remove_from_<field>` exist (maps).
    pub map_addable: bool,
}

impl CliField {
    /// The label a record shows: the name and the access.
    pub fn label(&self) -> String {
        let access = match self.shape {
            Shape::Set if self.set_addable => " (SRW)",
            Shape::Set => " (SRO)",
            Shape::Map if self.map_addable => " (MRW)",
            Shape::Map => " (MRO)",
            Shape::Normal if self.settable => " ( RW)",
            Shape::Normal => " ( RO)",
        };
        format!("{}{access}", self.name)
    }

    fn ty(&self, class: ClassId) -> &'static Ty {
        match self.source {
            Source::Field(f) => class.field(f).ty,
            Source::RefName(..) | Source::SrHost => &Ty::String,
        }
    }
}

fn dashed(s: &str) -> String {
    s.replace('_', "-")
}

fn same_name(field: &str, class: ClassId) -> bool {
    field.eq_ignore_ascii_case(class.name())
}

/// The fields of a class's CLI records, in datamodel order.
pub(crate) fn fields_of(class: ClassId) -> &'static [CliField] {
    static TABLE: OnceLock<Vec<Vec<CliField>>> = OnceLock::new();
    let table = TABLE.get_or_init(|| ClassId::all().map(build_fields).collect());
    table.get(class.0).map_or(&[], Vec::as_slice)
}

fn build_fields(class: ClassId) -> Vec<CliField> {
    let has = |m: String| class.message_by_name(&m).is_some();
    let mut out = Vec::new();
    for (i, f) in class.def().fields.iter().enumerate() {
        let id = FieldId(i);
        let base = CliField {
            name: dashed(f.name),
            source: Source::Field(id),
            shape: Shape::Normal,
            api: f.name,
            settable: has(format!("set_{}", f.name)),
            set_addable: false,
            map_addable: false,
        };
        match f.ty {
            Ty::Ref(target) if same_name(f.name, *target) => {
                let stem = dashed(&target.name().to_ascii_lowercase());
                out.push(CliField {
                    name: format!("{stem}-uuid"),
                    ..base.clone()
                });
                if target.has_field("name_label") {
                    out.push(CliField {
                        name: format!("{stem}-name-label"),
                        source: Source::RefName(id, *target),
                        settable: false,
                        ..base
                    });
                }
            }
            Ty::Set(inner) => {
                let name = match inner {
                    Ty::Ref(target) if f.name.eq_ignore_ascii_case(&format!("{}s", target.name())) => {
                        format!("{}-uuids", dashed(&target.name().to_ascii_lowercase()))
                    }
                    _ => base.name.clone(),
                };
                out.push(CliField {
                    name,
                    shape: Shape::Set,
                    set_addable: has(format!("add_{}", f.name)) && has(format!("remove_{}", f.name)),
                    ..base
                });
            }
            Ty::Map(..) => out.push(CliField {
                shape: Shape::Map,
                map_addable: has(format!("add_to_{}", f.name)) && has(format!("remove_from_{}", f.name)),
                ..base
            }),
            _ => out.push(base),
        }
        if class.name() == "SR" && f.name == "name_description" {
            out.push(CliField {
                name: "host".into(),
                source: Source::SrHost,
                shape: Shape::Normal,
                api: "PBDs",
                settable: false,
                set_addable: false,
                map_addable: false,
            });
        }
    }
    out
}

/// One object with its class, as the record commands handle it.
#[derive(Clone, Debug)]
pub(crate) struct Rec {
    /// Its ref.
    pub reference: String,
    /// Its fields.
    pub obj: Arc<Object>,
}

impl Rec {
    /// Its uuid.
    pub fn uuid(&self) -> String {
        self.obj.uuid().unwrap_or_default().to_owned()
    }
    /// A string field.
    pub fn str(&self, field: &str) -> String {
        self.obj.str_field(field).to_owned()
    }
    /// A field's raw value.
    pub fn get(&self, field: &str) -> Value {
        self.obj
            .class
            .field_by_name(field)
            .map(|f| self.obj.get(f).clone())
            .unwrap_or(Value::None)
    }
}

/// Shown where an object is missing, as the reference shows it.
pub(crate) const NOT_IN_DATABASE: &str = "<not in database>";

/// The uuid of the object `r` names, or `<not in database>`.
pub(crate) fn uuid_of_ref(ctx: &Ctx<'_>, class: ClassId, r: &str) -> String {
    ctx.agent
        .uuid_of(class, r)
        .unwrap_or_else(|| NOT_IN_DATABASE.to_owned())
}

/// A value of type `ty` as the CLI shows it.
fn render(ctx: &Ctx<'_>, class: ClassId, field: &str, v: &Value, ty: &Ty) -> String {
    match (ty, v) {
        (Ty::Ref(c), Value::Ref(r)) => uuid_of_ref(ctx, *c, r),
        (Ty::Set(inner), _) => v
            .as_set()
            .iter()
            .map(|x| render(ctx, class, field, x, inner))
            .collect::<Vec<_>>()
            .join("; "),
        (Ty::Map(kt, vt), _) => v
            .as_map()
            .iter()
            .map(|(k, x)| {
                format!(
                    "{}: {}",
                    render(ctx, class, field, k, kt),
                    render(ctx, class, field, x, vt)
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        (Ty::Enum(_), Value::Enum(e)) if class.name() == "VM" && field == "power_state" => {
            let mut c = e.chars();
            c.next()
                .map(|first| first.to_lowercase().chain(c).collect())
                .unwrap_or_default()
        }
        (Ty::Option(inner), _) => render(ctx, class, field, v, inner),
        _ => scalar(v),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) | Value::Ref(s) => s.to_string(),
        Value::Enum(e) => (*e).to_owned(),
        Value::Int(i) => i.to_string(),
        Value::Int32(i) => i.to_string(),
        Value::Float(f) => format!("{f:.3}"),
        Value::Bool(b) => b.to_string(),
        Value::DateTime(t) => format_datetime(*t),
        Value::Shared(s) => scalar(s.value()),
        Value::None => String::new(),
        other => other.key_text(),
    }
}

/// A field's value as the CLI shows it.
pub(crate) async fn value(ctx: &Ctx<'_>, rec: &Rec, f: &CliField) -> String {
    let class = rec.obj.class;
    match f.source {
        Source::Field(id) => render(ctx, class, f.api, rec.obj.get(id), class.field(id).ty),
        Source::SrHost => {
            let pbds: Vec<String> = rec
                .get("PBDs")
                .as_set()
                .iter()
                .filter_map(|p| p.as_ref_str().map(str::to_owned))
                .collect();
            match pbds.as_slice() {
                [pbd] => {
                    let host = ctx.call("PBD.get_host", vec![json!(pbd)]).await;
                    let name = match host {
                        Ok(h) => ctx.call("host.get_name_label", vec![json!(h.as_str())]).await,
                        Err(e) => Err(e),
                    };
                    name.map_or_else(
                        |_| NOT_IN_DATABASE.to_owned(),
                        |n| n.as_str().unwrap_or_default().to_owned(),
                    )
                }
                [] => NOT_IN_DATABASE.to_owned(),
                _ => "<shared>".to_owned(),
            }
        }
        Source::RefName(id, target) => {
            let Some(r) = rec.obj.get(id).as_ref_str() else {
                return NOT_IN_DATABASE.to_owned();
            };
            if ctx.agent.uuid_of(target, r).is_none() {
                return NOT_IN_DATABASE.to_owned();
            }
            match ctx
                .call(&format!("{}.get_name_label", target.name()), vec![json!(r)])
                .await
            {
                Ok(v) => v.as_str().unwrap_or_default().to_owned(),
                Err(_) => NOT_IN_DATABASE.to_owned(),
            }
        }
    }
}

/// The members of a set field, as the CLI shows them.
fn set_members(ctx: &Ctx<'_>, rec: &Rec, f: &CliField) -> Vec<String> {
    let Source::Field(id) = f.source else {
        return Vec::new();
    };
    let class = rec.obj.class;
    let inner = match class.field(id).ty {
        Ty::Set(inner) => inner,
        _ => return Vec::new(),
    };
    rec.obj
        .get(id)
        .as_set()
        .iter()
        .map(|x| render(ctx, class, f.api, x, inner))
        .collect()
}

/// The pairs of a map field, as the CLI shows them.
fn map_pairs(ctx: &Ctx<'_>, rec: &Rec, f: &CliField) -> Vec<(String, String)> {
    let Source::Field(id) = f.source else {
        return Vec::new();
    };
    let class = rec.obj.class;
    let (kt, vt) = match class.field(id).ty {
        Ty::Map(k, v) => (*k, *v),
        _ => return Vec::new(),
    };
    rec.obj
        .get(id)
        .as_map()
        .iter()
        .map(|(k, v)| (render(ctx, class, f.api, k, kt), render(ctx, class, f.api, v, vt)))
        .collect()
}

/// The field of that CLI name.
pub(crate) fn field_lookup<'f>(fields: &'f [CliField], name: &str) -> Result<&'f CliField, CliError> {
    let mut it = fields.iter().filter(|f| f.name == name);
    match (it.next(), it.next()) {
        (Some(f), None) => Ok(f),
        _ => Err(CliError::MissingParameter(name.to_owned())),
    }
}

/// How a filter or `param-set` name addresses a field.
enum FieldType<'f> {
    Normal,
    Set(&'f CliField),
    Map(&'f CliField),
}

fn field_type<'f>(name: &str, fields: &'f [CliField]) -> Result<FieldType<'f>, CliError> {
    if fields.iter().any(|f| f.name == name) {
        return Ok(FieldType::Normal);
    }
    if let Some((real, _)) = name.split_once(':') {
        let f = fields
            .iter()
            .find(|f| f.name == real)
            .ok_or_else(|| CliError::fail(format!("Unknown field '{name}'")))?;
        return match f.shape {
            Shape::Set => Ok(FieldType::Set(f)),
            Shape::Map => Ok(FieldType::Map(f)),
            Shape::Normal => Err(CliError::fail(format!("Field '{}' is not a set or map", f.name))),
        };
    }
    // The old syntax, `map-name-key=value`: the longest map (then set) name that prefixes it.
    for shape in [Shape::Map, Shape::Set] {
        let mut candidates: Vec<&CliField> = fields.iter().filter(|f| f.shape == shape).collect();
        candidates.sort_by_key(|f| std::cmp::Reverse(f.name.len()));
        if let Some(f) = candidates
            .into_iter()
            .find(|f| name.starts_with(&format!("{}-", f.name)))
        {
            return Ok(if shape == Shape::Map {
                FieldType::Map(f)
            } else {
                FieldType::Set(f)
            });
        }
    }
    Err(CliError::fail(format!("Unknown field '{name}'")))
}

/// The records matching `name=value` (a field equal), `map:key=value` (a key's value) and
/// `set:contains=member` filters.
pub(crate) async fn filter(
    ctx: &Ctx<'_>,
    fields: &[CliField],
    mut recs: Vec<Rec>,
    filters: &[(String, String)],
) -> Result<Vec<Rec>, CliError> {
    for (k, v) in filters {
        if recs.is_empty() {
            return Ok(recs);
        }
        let mut keep = Vec::with_capacity(recs.len());
        match field_type(k, fields)? {
            FieldType::Normal => {
                let f = field_lookup(fields, k)?;
                for r in recs {
                    if value(ctx, &r, f).await == *v {
                        keep.push(r);
                    }
                }
            }
            FieldType::Map(f) => {
                let key = k.get(f.name.len() + 1..).unwrap_or_default();
                for r in recs {
                    if map_pairs(ctx, &r, f).iter().any(|(mk, mv)| mk == key && mv == v) {
                        keep.push(r);
                    }
                }
            }
            FieldType::Set(f) => {
                if k.get(f.name.len() + 1..) != Some("contains") {
                    return Err(CliError::fail(
                        "Invalid syntax for set filtering (should be set-param:contains=key)",
                    ));
                }
                for r in recs {
                    if set_members(ctx, &r, f).iter().any(|m| m == v) {
                        keep.push(r);
                    }
                }
            }
        }
        recs = keep;
    }
    Ok(recs)
}

/// Every object of a class.
pub(crate) async fn all_records(ctx: &Ctx<'_>, class: ClassId) -> Result<Vec<Rec>, CliError> {
    let v = ctx.call(&format!("{}.get_all_records", class.name()), vec![]).await?;
    Ok(v.as_map()
        .iter()
        .filter_map(|(r, rec)| match (r.as_str(), rec) {
            (Some(r), Value::Record(o)) => Some(Rec {
                reference: r.to_owned(),
                obj: o.clone(),
            }),
            _ => None,
        })
        .collect())
}

/// One object by ref.
pub(crate) async fn record(ctx: &Ctx<'_>, class: ClassId, r: &str) -> Result<Rec, CliError> {
    match ctx
        .call(&format!("{}.get_record", class.name()), vec![json!(r)])
        .await?
    {
        Value::Record(o) => Ok(Rec {
            reference: r.to_owned(),
            obj: o,
        }),
        _ => Err(CliError::fail(format!("no record for {r}"))),
    }
}

/// The ref of the object of `class` with this uuid.
pub(crate) async fn by_uuid(ctx: &Ctx<'_>, class: ClassId, uuid: &str) -> Result<String, CliError> {
    let v = ctx
        .call(&format!("{}.get_by_uuid", class.name()), vec![json!(uuid)])
        .await?;
    Ok(v.as_str().unwrap_or_default().to_owned())
}

/// The fields to show: `params=a,b` (in record order), `params=all`, or the class's default.
fn chosen<'a>(params: &'a Params, defaults: &'a [&'a str]) -> Vec<&'a str> {
    match params.get("params") {
        Some("all") => Vec::new(),
        Some(ps) => ps.split(',').collect(),
        None => defaults.to_vec(),
    }
}

/// Records as the printer takes them, with the chosen fields.
pub(crate) async fn table(
    ctx: &Ctx<'_>,
    fields: &[CliField],
    recs: &[Rec],
    params: &Params,
    defaults: &[&str],
) -> Vec<Record> {
    let names = chosen(params, defaults);
    let mut out = Vec::with_capacity(recs.len());
    for r in recs {
        let mut row = Vec::new();
        for f in fields
            .iter()
            .filter(|f| names.is_empty() || names.contains(&f.name.as_str()))
        {
            row.push((f.label(), value(ctx, r, f).await));
        }
        out.push(row);
    }
    out
}

/// Runs `work` in the session of a database other than the live one when `database:vdi-uuid=`
/// or `database:filename=` asks for one (the calls answer what they answer here).
async fn with_database(ctx: &mut Ctx<'_>) -> Result<Option<String>, CliError> {
    let db = ctx.params.map("database");
    let vdi = db.iter().find(|(k, _)| k == "vdi-uuid").map(|(_, v)| v.clone());
    let file = db.iter().find(|(k, _)| k == "filename").map(|(_, v)| v.clone());
    match (vdi, file) {
        (Some(_), Some(_)) => Err(CliError::fail("xapi can query a DB vdi or a DB file, but not both.")),
        (Some(uuid), None) => {
            let vdi = ctx.call("VDI.get_by_uuid", vec![json!(uuid)]).await?;
            let s = ctx.call("VDI.open_database", vec![json!(vdi.as_str())]).await?;
            Ok(s.as_str().map(str::to_owned))
        }
        (None, Some(f)) => {
            let s = ctx.call("session.create_from_db_file", vec![json!(f)]).await?;
            Ok(s.as_str().map(str::to_owned))
        }
        (None, None) => Ok(None),
    }
}

/// `<class>-list`.
pub(crate) async fn list(ctx: &mut Ctx<'_>, rc: &RecordClass) -> Result<(), CliError> {
    let other = with_database(ctx).await?;
    let live = other.as_ref().map(|s| std::mem::replace(&mut ctx.session, s.clone()));
    let r = list_in(ctx, rc).await;
    if let Some(live) = live {
        let _ = ctx.call("session.logout", vec![]).await;
        ctx.session = live;
    }
    r
}

async fn list_in(ctx: &mut Ctx<'_>, rc: &RecordClass) -> Result<(), CliError> {
    let fields = fields_of(rc.class);
    let all = all_records(ctx, rc.class).await?;
    let mut filters: Vec<(String, String)> = rc
        .filters
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    filters.extend(
        ctx.params
            .0
            .iter()
            .filter(|(k, _)| k != "params" && !STDPARAMS.contains(&k.as_str()) && !k.starts_with("database:"))
            .cloned(),
    );
    let shown = if ctx.params.bool("all", false)? {
        all
    } else {
        filter(ctx, fields, all, &filters).await?
    };
    let params = ctx.params.clone();
    let t = table(ctx, fields, &shown, &params, rc.defaults).await;
    ctx.print(PrintVal::Table(t)).await
}

/// The object a `uuid=` parameter names.
async fn target(ctx: &Ctx<'_>, rc: &RecordClass) -> Result<Rec, CliError> {
    let uuid = ctx.params.req("uuid")?;
    let r = by_uuid(ctx, rc.class, uuid).await?;
    record(ctx, rc.class, &r).await
}

/// `<class>-param-list`.
pub(crate) async fn param_list(ctx: &mut Ctx<'_>, rc: &RecordClass) -> Result<(), CliError> {
    let rec = target(ctx, rc).await?;
    let t = table(
        ctx,
        fields_of(rc.class),
        std::slice::from_ref(&rec),
        &Params::default(),
        &[],
    )
    .await;
    ctx.print(PrintVal::Table(t)).await
}

/// `<class>-param-get`.
pub(crate) async fn param_get(ctx: &mut Ctx<'_>, rc: &RecordClass) -> Result<(), CliError> {
    let rec = target(ctx, rc).await?;
    let name = ctx.params.req("param-name")?.to_owned();
    let f = field_lookup(fields_of(rc.class), &name)?;
    let shown = match (ctx.params.get("param-key"), f.shape) {
        (Some(key), Shape::Map) => map_pairs(ctx, &rec, f)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or_else(|| CliError::fail(format!("Key {key} not found in map")))?,
        _ => value(ctx, &rec, f).await,
    };
    ctx.print(PrintVal::List(vec![shown])).await
}

/// A CLI value as the JSON argument of a field of type `ty`.
async fn typed_arg(ctx: &Ctx<'_>, name: &str, api: &str, ty: &Ty, v: &str) -> Result<Json, CliError> {
    Ok(match ty {
        Ty::String => json!(v),
        Ty::Int => {
            if api.contains("memory") || api.contains("size") {
                json!(bytes_of_string(name, v)?)
            } else {
                json!(v
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| CliError::fail(format!("Parameter {name} must be an integer")))?)
            }
        }
        Ty::Float => json!(v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .ok_or_else(|| CliError::fail(format!("Parameter {name} must be a floating-point number")))?),
        Ty::Bool => json!(parse_bool(v).ok_or_else(|| CliError::fail(format!(
            "Failed to parse parameter '{name}': expecting a boolean (true or false)"
        )))?),
        Ty::Ref(c) => {
            if v.is_empty() || v == NOT_IN_DATABASE || v == agent::value::NULL_REF {
                json!(agent::value::NULL_REF)
            } else if ctx.agent.exists(*c, v) {
                json!(v)
            } else {
                json!(by_uuid(ctx, *c, v).await?)
            }
        }
        Ty::Option(inner) => Box::pin(typed_arg(ctx, name, api, inner, v)).await?,
        _ => json!(v),
    })
}

fn class_method(class: ClassId, m: &str) -> String {
    format!("{}.{m}", class.name())
}

/// `<class>-param-set uuid=… name=value map:key=value …`.
pub(crate) async fn param_set(ctx: &mut Ctx<'_>, rc: &RecordClass) -> Result<(), CliError> {
    let rec = target(ctx, rc).await?;
    let fields = fields_of(rc.class);
    let sets: Vec<(String, String)> = ctx
        .params
        .0
        .iter()
        .filter(|(k, _)| k != "uuid" && !STDPARAMS.contains(&k.as_str()))
        .cloned()
        .collect();
    let class = rc.class;
    for (k, v) in sets {
        match field_type(&k, fields)? {
            FieldType::Map(f) => {
                let key = k.get(f.name.len() + 1..).unwrap_or_default().to_owned();
                if f.map_addable {
                    if map_pairs(ctx, &rec, f).iter().any(|(mk, _)| *mk == key) {
                        ctx.call(
                            &class_method(class, &format!("remove_from_{}", f.api)),
                            vec![json!(rec.reference), json!(key)],
                        )
                        .await?;
                    }
                    ctx.call(
                        &class_method(class, &format!("add_to_{}", f.api)),
                        vec![json!(rec.reference), json!(key), json!(v)],
                    )
                    .await?;
                } else if f.settable {
                    let mut m: serde_json::Map<String, Json> = map_pairs(ctx, &rec, f)
                        .into_iter()
                        .map(|(a, b)| (a, json!(b)))
                        .collect();
                    m.insert(key, json!(v));
                    ctx.call(
                        &class_method(class, &format!("set_{}", f.api)),
                        vec![json!(rec.reference), Json::Object(m)],
                    )
                    .await?;
                } else {
                    return Err(CliError::fail(format!("Map field '{}' is read-only.", f.name)));
                }
            }
            FieldType::Set(_) => return Err(CliError::fail("Cannot param-set on set fields")),
            FieldType::Normal => {
                let f = field_lookup(fields, &k)?;
                if !f.settable || matches!(f.source, Source::RefName(..)) {
                    return Err(CliError::fail(if f.shape == Shape::Normal {
                        format!("Field '{k}' is read-only.")
                    } else {
                        format!("Field '{k}' is a map or set. use the 'name:key=value' syntax.")
                    }));
                }
                if f.shape != Shape::Normal {
                    return Err(CliError::fail(format!(
                        "Field '{k}' is a map or set. use the 'name:key=value' syntax."
                    )));
                }
                let arg = typed_arg(ctx, &k, f.api, f.ty(class), &v).await?;
                ctx.call(
                    &class_method(class, &format!("set_{}", f.api)),
                    vec![json!(rec.reference), arg],
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// `<class>-param-add uuid=… param-name=… (param-key=… | key=value …)`.
pub(crate) async fn param_add(ctx: &mut Ctx<'_>, rc: &RecordClass) -> Result<(), CliError> {
    let rec = target(ctx, rc).await?;
    let name = ctx.params.req("param-name")?.to_owned();
    let f = field_lookup(fields_of(rc.class), &name)?;
    match f.shape {
        Shape::Set if f.set_addable => {
            let key = ctx.params.get("param-key").ok_or_else(|| {
                CliError::fail(
                    "When adding a key to a set, use the syntax: *-param-add param-name=<name> param-key=<key>",
                )
            })?;
            ctx.call(
                &class_method(rc.class, &format!("add_{}", f.api)),
                vec![json!(rec.reference), json!(key)],
            )
            .await?;
        }
        Shape::Map if f.map_addable => {
            let pairs: Vec<(String, String)> = ctx
                .params
                .0
                .iter()
                .filter(|(k, _)| {
                    !["uuid", "param-name", "param-key"].contains(&k.as_str()) && !STDPARAMS.contains(&k.as_str())
                })
                .cloned()
                .collect();
            for (k, v) in pairs {
                ctx.call(
                    &class_method(rc.class, &format!("add_to_{}", f.api)),
                    vec![json!(rec.reference), json!(k), json!(v)],
                )
                .await?;
            }
        }
        Shape::Set | Shape::Map => return Err(CliError::fail("Parameter is read-only")),
        Shape::Normal => return Err(CliError::fail("Can only add to parameters of type Set or Map")),
    }
    Ok(())
}

/// `<class>-param-remove uuid=… param-name=… param-key=…`.
pub(crate) async fn param_remove(ctx: &mut Ctx<'_>, rc: &RecordClass) -> Result<(), CliError> {
    let rec = target(ctx, rc).await?;
    let name = ctx.params.req("param-name")?.to_owned();
    let key = ctx.params.req("param-key")?.to_owned();
    let f = field_lookup(fields_of(rc.class), &name)?;
    match f.shape {
        Shape::Set if f.set_addable => {
            if !set_members(ctx, &rec, f).contains(&key) {
                return Err(CliError::fail(format!("Key {key} is not in the set")));
            }
            ctx.call(
                &class_method(rc.class, &format!("remove_{}", f.api)),
                vec![json!(rec.reference), json!(key)],
            )
            .await?;
        }
        Shape::Map if f.map_addable => {
            if !map_pairs(ctx, &rec, f).iter().any(|(k, _)| *k == key) {
                return Err(CliError::fail(format!("Key {key} is not in map")));
            }
            ctx.call(
                &class_method(rc.class, &format!("remove_from_{}", f.api)),
                vec![json!(rec.reference), json!(key)],
            )
            .await?;
        }
        Shape::Set | Shape::Map => return Err(CliError::fail("Cannot remove parameters from read-only map")),
        Shape::Normal => return Err(CliError::fail("Can only remove from parameters of type Set or Map")),
    }
    Ok(())
}

/// `<class>-param-clear uuid=… param-name=…`.
pub(crate) async fn param_clear(ctx: &mut Ctx<'_>, rc: &RecordClass) -> Result<(), CliError> {
    let rec = target(ctx, rc).await?;
    let name = ctx.params.req("param-name")?.to_owned();
    let f = field_lookup(fields_of(rc.class), &name)?;
    let r = json!(rec.reference);
    match f.shape {
        Shape::Set if f.set_addable => {
            for m in set_members(ctx, &rec, f) {
                ctx.call(
                    &class_method(rc.class, &format!("remove_{}", f.api)),
                    vec![r.clone(), json!(m)],
                )
                .await?;
            }
        }
        Shape::Map if f.settable => {
            ctx.call(&class_method(rc.class, &format!("set_{}", f.api)), vec![r, json!({})])
                .await?;
        }
        Shape::Map if f.map_addable => {
            for (k, _) in map_pairs(ctx, &rec, f) {
                ctx.call(
                    &class_method(rc.class, &format!("remove_from_{}", f.api)),
                    vec![r.clone(), json!(k)],
                )
                .await?;
            }
        }
        Shape::Normal if f.settable && matches!(f.source, Source::Field(_)) => {
            let arg = match typed_arg(ctx, &name, f.api, f.ty(rc.class), "").await {
                Ok(a) => a,
                Err(_) => return Err(CliError::fail("Cannot clear this parameter")),
            };
            ctx.call(&class_method(rc.class, &format!("set_{}", f.api)), vec![r, arg])
                .await
                .map_err(|_| CliError::fail("Cannot clear this parameter"))?;
        }
        _ => return Err(CliError::fail("Can only clear RW parameters")),
    }
    Ok(())
}

/// The command-line names `-param-set` takes (settable fields, and `map:` for maps).
pub(crate) fn settable_names(class: ClassId) -> Vec<String> {
    let fields = fields_of(class);
    let mut v: Vec<String> = fields
        .iter()
        .filter(|f| f.settable && f.shape == Shape::Normal && matches!(f.source, Source::Field(_)))
        .map(|f| f.name.clone())
        .collect();
    v.extend(
        fields
            .iter()
            .filter(|f| f.shape == Shape::Map && (f.map_addable || f.settable))
            .map(|f| format!("{}:", f.name)),
    );
    v
}

/// Fields `-param-add` and `-param-remove` take.
pub(crate) fn addable_names(class: ClassId) -> Vec<String> {
    fields_of(class)
        .iter()
        .filter(|f| (f.shape == Shape::Set && f.set_addable) || (f.shape == Shape::Map && f.map_addable))
        .map(|f| f.name.clone())
        .collect()
}

/// Fields `-param-clear` takes.
pub(crate) fn clearable_names(class: ClassId) -> Vec<String> {
    fields_of(class)
        .iter()
        .filter(|f| match f.shape {
            Shape::Normal => f.settable && matches!(f.source, Source::Field(_)),
            Shape::Set => f.set_addable,
            Shape::Map => f.map_addable || f.settable,
        })
        .map(|f| f.name.clone())
        .collect()
}

/// Names a list filters on: every field, and `set:contains` for sets.
pub(crate) fn list_names(class: ClassId) -> Vec<String> {
    let fields = fields_of(class);
    let mut v: Vec<String> = vec!["params".into(), "database:".into()];
    v.extend(fields.iter().map(|f| f.name.clone()));
    v.extend(
        fields
            .iter()
            .filter(|f| f.shape == Shape::Set)
            .map(|f| format!("{}:contains", f.name)),
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str) -> ClassId {
        ClassId::by_name(name).unwrap()
    }

    fn names(c: &str) -> Vec<String> {
        fields_of(class(c)).iter().map(|f| f.name.clone()).collect()
    }

    #[test]
    fn field_names_follow_the_reference() {
        let vbd = names("VBD");
        for n in [
            "uuid",
            "vm-uuid",
            "vm-name-label",
            "vdi-uuid",
            "vdi-name-label",
            "device",
            "empty",
        ] {
            assert!(vbd.contains(&n.to_owned()), "VBD lacks {n}: {vbd:?}");
        }
        let vm = names("VM");
        for n in [
            "name-label",
            "power-state",
            "is-a-template",
            "is-control-domain",
            "resident-on",
            "other-config",
        ] {
            assert!(vm.contains(&n.to_owned()), "VM lacks {n}");
        }
        let pool = names("pool");
        assert!(pool.contains(&"master".to_owned()));
        assert!(pool.contains(&"default-SR".to_owned()));
        assert!(names("PIF").contains(&"network-uuid".to_owned()));
        assert!(names("VDI").contains(&"sr-uuid".to_owned()));
        assert!(names("VM_group").contains(&"vm-uuids".to_owned()));
    }

    #[test]
    fn access_labels() {
        let vm = fields_of(class("VM"));
        let label = |n: &str| field_lookup(vm, n).unwrap().label();
        assert_eq!(label("uuid"), "uuid ( RO)");
        assert_eq!(label("name-label"), "name-label ( RW)");
        assert_eq!(label("power-state"), "power-state ( RO)");
        assert_eq!(label("other-config"), "other-config (MRW)");
        assert_eq!(label("tags"), "tags (SRW)");
        assert_eq!(label("allowed-operations"), "allowed-operations (SRO)");
    }

    #[test]
    fn every_listable_class_has_one_record_class_name() {
        let all = record_classes();
        let mut seen = std::collections::HashSet::new();
        for r in all {
            assert!(seen.insert(r.cli.as_str()), "{} twice", r.cli);
        }
        for n in [
            "vm", "template", "snapshot", "sr", "vdi", "vbd", "vif", "pif", "host", "pool", "network", "task",
        ] {
            assert!(by_cli_name(n).is_some(), "{n}");
        }
        assert_eq!(by_cli_name("host-cpu").map(|r| r.class.name()), Some("host_cpu"));
        assert_eq!(by_cli_name("vm-metrics").map(|r| r.class.name()), Some("VM_metrics"));
        // The default fields of the common lists are fields of their records.
        for cli in [
            "vm", "template", "vdi", "vbd", "vif", "pif", "pool", "network", "task", "host", "pbd",
        ] {
            let r = by_cli_name(cli).unwrap();
            for d in r.defaults {
                assert!(
                    fields_of(r.class).iter().any(|f| f.name == *d),
                    "{cli}-list shows {d}, which its records lack"
                );
            }
        }
    }
}
