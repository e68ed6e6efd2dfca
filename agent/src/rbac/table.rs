//! The static roles and their permissions, generated at first use from the datamodel's
//! per-message roles (`vendor/xenapi/datamodel.json` and `additions.json`, embedded in the
//! binary), as the reference generates its static RBAC tables:
//!
//! - one permission per message of the API, named by its wire name in lower case
//!   (`vm.start`); an `Async.` call needs the permission of its message;
//! - for the maps whose entries are guarded key by key, one permission per guarded key of the
//!   `add_to_`/`remove_from_` messages (`vm.add_to_other_config/key:folder`, a trailing `*`
//!   standing for any suffix);
//! - the HTTP handlers' permissions (`http/get_export`) and `task.destroy/any`;
//! - a permission belongs to every role the datamodel lists for it. Messages with no role
//!   are the local superuser's alone.
//!
//! Role and permission uuids are the MD5 of their names in the reference's form (which makes
//! `pool-admin`'s the fixed `0165f154-…` the datamodel names as `subject.roles`' default);
//! their refs are `OpaqueRef:<uuid>`.

use crate::schema::{class_ids, ClassId, MessageId, CLASSES};
use crate::FastHash;
use std::collections::HashMap;
use std::sync::OnceLock;

/// One static role.
#[derive(Debug)]
pub struct RoleDef {
    /// Its name (`pool-admin`).
    pub name: &'static str,
    /// What it may do, as the reference describes it.
    pub description: &'static str,
    /// Whether it is internal (not meant to be given to subjects).
    pub internal: bool,
}

/// The roles, in decreasing order of privilege (the datamodel's order). Bit `i` of a role
/// mask is `ROLES[i]`.
pub const ROLES: [RoleDef; 7] = [
    RoleDef {
        name: "pool-admin",
        description: "The Pool Administrator role has full access to all features and settings, including accessing Dom0 and managing subjects, roles and external authentication",
        internal: false,
    },
    RoleDef {
        name: "pool-operator",
        description: "The Pool Operator role manages host- and pool-wide resources, including setting up storage, creating resource pools and managing patches, high availability (HA) and workload balancing (WLB)",
        internal: false,
    },
    RoleDef {
        name: "vm-power-admin",
        description: "The VM Power Administrator role has full access to VM and template management and can choose where to start VMs and use the dynamic memory control and VM snapshot features",
        internal: false,
    },
    RoleDef {
        name: "vm-admin",
        description: "The VM Administrator role can manage VMs and templates",
        internal: false,
    },
    RoleDef {
        name: "vm-operator",
        description: "The VM Operator role can use VMs and interact with VM consoles",
        internal: false,
    },
    RoleDef {
        name: "client-cert",
        description: "The Client Certificate role has access to functionality granted to those who authenticate using a client certificate",
        internal: true,
    },
    RoleDef {
        name: "read-only",
        description: "The Read-Only role can log in with basic read-only access",
        internal: false,
    },
];

/// Index of `pool-admin` in [`ROLES`].
pub const POOL_ADMIN: usize = 0;
const POOL_OPERATOR: usize = 1;
const VM_POWER_ADMIN: usize = 2;
const VM_ADMIN: usize = 3;
const VM_OPERATOR: usize = 4;
const CLIENT_CERT: usize = 5;
const READ_ONLY: usize = 6;

/// The order in which the reference lists the roles that have a permission (in
/// `RBAC_PERMISSION_DENIED` and `role.get_by_permission*`), and its static roles after its
/// permissions in `role.get_all`: the order its generator leaves its role list in.
pub const LISTING_ORDER: [usize; 7] = [
    VM_POWER_ADMIN,
    VM_ADMIN,
    VM_OPERATOR,
    READ_ONLY,
    CLIENT_CERT,
    POOL_ADMIN,
    POOL_OPERATOR,
];

/// The description of every permission.
pub const PERMISSION_DESCRIPTION: &str = "A basic permission";

/// The mask of one role.
pub const fn bit(role: usize) -> u8 {
    1 << role
}

/// `role` and every role above it (`_R_VM_OP`: pool-admin … vm-operator). `read-only`'s
/// includes `client-cert`, which the datamodel places above it.
const fn at_least(role: usize) -> u8 {
    ((1u16 << (role + 1)) - 1) as u8
}

/// The mask of every role.
pub const ALL_ROLES: u8 = at_least(READ_ONLY);

/// A role by name.
pub fn role_index(name: &str) -> Option<usize> {
    ROLES.iter().position(|r| r.name == name)
}

/// The uuid the reference gives a role or permission: the MD5 of its name, as a uuid.
pub fn uuid_of(name: &str) -> String {
    use md5::{Digest, Md5};
    let d = Md5::digest(name.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&d);
    let mut buf = uuid::Uuid::encode_buffer();
    uuid::Uuid::from_bytes(bytes)
        .hyphenated()
        .encode_lower(&mut buf)
        .to_owned()
}

/// The ref of a role or permission named `name`.
pub fn ref_of(name: &str) -> String {
    format!("OpaqueRef:{}", uuid_of(name))
}

/// Maps whose entries are guarded key by key: `(class, map field, [(key, from role)])`.
/// Their `add_to_`/`remove_from_` messages need the key's permission instead of their own
/// when the key matches; a key ending in `*` matches any key with that prefix.
/// Guarded keys of one map: `(key, the lowest role that may change it)`.
type Keys = &'static [(&'static str, usize)];

const GUARDED_KEYS: &[(&str, &str, Keys)] = &[
    (
        "task",
        "other_config",
        &[
            ("applies_to", VM_OPERATOR),
            ("XenCenterUUID", VM_OPERATOR),
            ("XenCenterMeddlingActionTitle", VM_OPERATOR),
        ],
    ),
    (
        "network",
        "other_config",
        &[
            ("folder", VM_OPERATOR),
            ("XenCenter.CustomFields.*", VM_OPERATOR),
            ("XenCenterCreateInProgress", VM_OPERATOR),
        ],
    ),
    (
        "SR",
        "other_config",
        &[("folder", VM_OPERATOR), ("XenCenter.CustomFields.*", VM_OPERATOR)],
    ),
    (
        "VDI",
        "other_config",
        &[("folder", VM_OPERATOR), ("XenCenter.CustomFields.*", VM_OPERATOR)],
    ),
    (
        "host",
        "other_config",
        &[("folder", VM_OPERATOR), ("XenCenter.CustomFields.*", VM_OPERATOR)],
    ),
    (
        "pool",
        "other_config",
        &[
            ("folder", VM_OPERATOR),
            ("XenCenter.CustomFields.*", VM_OPERATOR),
            ("EMPTY_FOLDERS", VM_OPERATOR),
        ],
    ),
    (
        "VM",
        "other_config",
        &[
            ("hvm_serial", POOL_ADMIN),
            ("pci", POOL_ADMIN),
            ("folder", VM_OPERATOR),
            ("XenCenter.CustomFields.*", VM_OPERATOR),
        ],
    ),
    ("VM", "platform", &[("hvm_serial", POOL_ADMIN)]),
];

/// The `set_<map>` messages that check the guarded keys they change themselves (the
/// reference lets a session keep entries it could not add): `(class, map field)`.
pub const SET_MAP_CHECKED: &[(&str, &str)] = &[("task", "other_config"), ("VM", "other_config"), ("VM", "platform")];

/// The HTTP handlers' permissions (`http/<action>`, sub-actions `http/<action>/<sub>`), with
/// the roles that have them. Listed for the role table; the HTTP data paths check their own.
/// Sub-actions of an HTTP action: `(name, roles)`.
type SubActions = &'static [(&'static str, u8)];

const HTTP_ACTIONS: &[(&str, u8, SubActions)] = &[
    ("get_services", at_least(READ_ONLY), &[]),
    ("post_services", at_least(POOL_ADMIN), &[]),
    ("put_services", at_least(POOL_ADMIN), &[]),
    ("post_remote_db_access", at_least(POOL_ADMIN), &[]),
    ("post_remote_db_access_v2", at_least(POOL_ADMIN), &[]),
    ("get_services_xenops", at_least(VM_POWER_ADMIN), &[]),
    ("post_services_xenops", at_least(VM_POWER_ADMIN) | bit(CLIENT_CERT), &[]),
    ("put_services_xenops", at_least(VM_POWER_ADMIN) | bit(CLIENT_CERT), &[]),
    ("get_services_sm", at_least(VM_POWER_ADMIN), &[]),
    ("post_services_sm", at_least(VM_POWER_ADMIN), &[]),
    ("put_services_sm", at_least(VM_POWER_ADMIN), &[]),
    ("put_import", at_least(VM_ADMIN), &[]),
    ("put_import_metadata", at_least(VM_ADMIN), &[]),
    ("put_import_raw_vdi", at_least(VM_ADMIN), &[]),
    ("get_export", at_least(VM_ADMIN), &[]),
    ("get_export_metadata", at_least(VM_ADMIN), &[]),
    ("get_export_raw_vdi", at_least(VM_ADMIN), &[]),
    (
        "connect_console",
        at_least(VM_OPERATOR),
        &[("host_console", at_least(POOL_ADMIN))],
    ),
    (
        "connect_console_ws",
        at_least(VM_OPERATOR),
        &[("host_console_ws", at_least(POOL_ADMIN))],
    ),
    ("get_root", at_least(READ_ONLY), &[]),
    ("post_cli", at_least(READ_ONLY), &[]),
    ("get_host_backup", at_least(POOL_ADMIN), &[]),
    ("put_host_restore", at_least(POOL_ADMIN), &[]),
    ("get_host_logs_download", at_least(POOL_OPERATOR), &[]),
    ("put_pool_patch_upload", at_least(POOL_OPERATOR), &[]),
    (
        "get_vncsnapshot",
        at_least(VM_OPERATOR),
        &[("host_console", at_least(POOL_ADMIN))],
    ),
    ("get_pool_xml_db_sync", at_least(POOL_ADMIN), &[]),
    ("put_pool_xml_db_sync", at_least(POOL_ADMIN), &[]),
    ("get_config_sync", at_least(POOL_ADMIN), &[]),
    ("get_system_status", at_least(POOL_OPERATOR), &[]),
    ("vm_rrd", at_least(READ_ONLY), &[]),
    ("get_vm_rrds", at_least(READ_ONLY), &[]),
    ("host_rrd", at_least(READ_ONLY), &[]),
    ("get_host_rrds", at_least(READ_ONLY), &[]),
    ("sr_rrd", at_least(READ_ONLY), &[]),
    ("rrd_updates", at_least(READ_ONLY), &[]),
    ("rrd", at_least(POOL_ADMIN), &[]),
    ("get_blob", at_least(READ_ONLY), &[]),
    ("put_blob", at_least(VM_POWER_ADMIN), &[]),
    ("put_messages", at_least(VM_POWER_ADMIN), &[]),
    ("connect_remotecmd", at_least(POOL_ADMIN), &[]),
    ("get_wlb_report", at_least(READ_ONLY), &[]),
    ("get_wlb_diagnostics", at_least(READ_ONLY), &[]),
    ("get_audit_log", at_least(READ_ONLY), &[]),
    ("post_root", at_least(READ_ONLY), &[]),
    ("post_RPC2", at_least(READ_ONLY), &[]),
    ("post_json", at_least(READ_ONLY), &[]),
    ("post_root_options", at_least(READ_ONLY), &[]),
    ("post_json_options", at_least(READ_ONLY), &[]),
    ("post_jsonrpc", at_least(READ_ONLY), &[]),
    ("post_jsonrpc_options", at_least(READ_ONLY), &[]),
    ("get_pool_update_download", at_least(READ_ONLY), &[]),
    ("get_repository", 0, &[]),
    (
        "get_enabled_repository",
        at_least(POOL_OPERATOR) | bit(CLIENT_CERT),
        &[],
    ),
    ("get_host_updates", at_least(POOL_OPERATOR) | bit(CLIENT_CERT), &[]),
    ("get_updates", at_least(POOL_OPERATOR) | bit(CLIENT_CERT), &[]),
    ("put_bundle", at_least(POOL_OPERATOR), &[]),
];

/// The permission to act on tasks other sessions' subjects created.
pub const TASK_DESTROY_ANY: &str = "task.destroy/any";

/// One permission.
#[derive(Debug)]
pub struct Permission {
    /// Its name in the reference's form (`VM.start`), which its uuid is made from.
    pub name: String,
    /// Its name label: the name in lower case (`vm.start`), what sessions hold.
    pub label: String,
    /// The roles that have it.
    pub roles: u8,
}

/// A guarded key of a map message and its permission.
#[derive(Debug)]
pub struct GuardedKey {
    /// The key as the datamodel names it (a trailing `*` matches any suffix).
    pub pattern: &'static str,
    /// Index of its permission.
    pub permission: usize,
}

impl GuardedKey {
    /// Whether `key` is this guarded key.
    pub fn matches(&self, key: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => key == self.pattern,
        }
    }
}

/// Every permission, and which each message needs.
#[derive(Debug)]
pub struct Table {
    /// Every permission: the messages' in datamodel order, then the guarded keys', the HTTP
    /// handlers' and `task.destroy/any`.
    pub permissions: Vec<Permission>,
    by_label: HashMap<String, usize, FastHash>,
    /// `[class][message index]` → the message's permission.
    by_message: Vec<Vec<usize>>,
    /// The guarded keys of `add_to_`/`remove_from_` messages.
    keyed: HashMap<MessageId, Vec<GuardedKey>, FastHash>,
    /// Messages the datamodel lists no roles for, though it has them (none in a sound build;
    /// `get_all_records_where` borrows `get_all_records`' roles, as in the reference).
    pub unlisted: Vec<String>,
}

#[derive(serde::Deserialize)]
struct JsonClass {
    name: String,
    #[serde(default)]
    messages: Vec<JsonMessage>,
}

#[derive(serde::Deserialize)]
struct JsonMessage {
    name: String,
    #[serde(default)]
    roles: Option<Vec<String>>,
}

#[derive(serde::Deserialize)]
struct JsonAddition {
    class: String,
    #[serde(default)]
    messages: Vec<JsonMessage>,
}

#[derive(serde::Deserialize, Default)]
struct JsonAdditions {
    #[serde(default)]
    classes: Vec<JsonClass>,
    #[serde(default)]
    fields: Vec<JsonAddition>,
    #[serde(default)]
    messages: Vec<JsonAddition>,
}

const DATAMODEL: &str = include_str!("../../../vendor/xenapi/datamodel.json");
const ADDITIONS: &str = include_str!("../../../vendor/xenapi/additions.json");

/// `(class, message)` → role mask, from the datamodel's own files.
fn datamodel_roles() -> HashMap<(String, String), u8> {
    let mut out = HashMap::new();
    let mut add = |class: &str, messages: &[JsonMessage]| {
        for m in messages {
            let mask = m
                .roles
                .iter()
                .flatten()
                .filter_map(|r| role_index(r))
                .fold(0u8, |acc, r| acc | bit(r));
            out.insert((class.to_owned(), m.name.clone()), mask);
        }
    };
    match serde_json::from_str::<Vec<JsonClass>>(DATAMODEL) {
        Ok(classes) => {
            for c in &classes {
                add(&c.name, &c.messages);
            }
        }
        Err(e) => tracing::error!(error = %e, "the embedded datamodel does not parse: no roles"),
    }
    match serde_json::from_str::<JsonAdditions>(ADDITIONS) {
        Ok(a) => {
            for c in &a.classes {
                add(&c.name, &c.messages);
            }
            for f in a.fields.iter().chain(&a.messages) {
                add(&f.class, &f.messages);
            }
        }
        Err(e) => tracing::error!(error = %e, "the embedded datamodel additions do not parse"),
    }
    out
}

impl Table {
    fn push(&mut self, name: String, roles: u8) -> usize {
        let label = name.to_ascii_lowercase();
        if let Some(&i) = self.by_label.get(&label) {
            self.permissions[i].roles |= roles;
            return i;
        }
        let i = self.permissions.len();
        self.by_label.insert(label.clone(), i);
        self.permissions.push(Permission { name, label, roles });
        i
    }

    fn build() -> Table {
        let roles = datamodel_roles();
        let mut t = Table {
            permissions: Vec::new(),
            by_label: HashMap::default(),
            by_message: Vec::with_capacity(CLASSES.len()),
            keyed: HashMap::default(),
            unlisted: Vec::new(),
        };
        for def in CLASSES {
            let mut row = Vec::with_capacity(def.messages.len());
            for m in def.messages {
                let key = (def.name.to_owned(), m.name.to_owned());
                let mask = match roles.get(&key) {
                    Some(&mask) => mask,
                    None if m.name == "get_all_records_where" => roles
                        .get(&(def.name.to_owned(), "get_all_records".to_owned()))
                        .copied()
                        .unwrap_or(0),
                    None => {
                        t.unlisted.push(format!("{}.{}", def.name, m.name));
                        0
                    }
                };
                row.push(t.push(format!("{}.{}", def.name, m.name), mask));
            }
            t.by_message.push(row);
        }
        for (class, field, keys) in GUARDED_KEYS {
            let Some(cid) = ClassId::by_name(class) else {
                continue;
            };
            for prefix in ["add_to_", "remove_from_"] {
                let message = format!("{prefix}{field}");
                let Some(id) = cid.message_by_name(&message) else {
                    continue;
                };
                let mut guarded = Vec::new();
                for (pattern, role) in keys.iter() {
                    let name = format!("{class}.{message}/key:{pattern}");
                    let permission = t.push(name, at_least(*role));
                    guarded.push(GuardedKey { pattern, permission });
                }
                t.keyed.insert(id, guarded);
            }
        }
        for (action, mask, subs) in HTTP_ACTIONS {
            t.push(format!("http/{action}"), *mask);
            for (sub, mask) in subs.iter() {
                t.push(format!("http/{action}/{sub}"), *mask);
            }
        }
        t.push(TASK_DESTROY_ANY.to_owned(), at_least(POOL_OPERATOR));
        t
    }

    /// The permission a message needs (before guarded keys).
    pub fn of_message(&self, id: MessageId) -> Option<usize> {
        self.by_message.get(id.class.0)?.get(id.index).copied()
    }

    /// The guarded keys of a map message, if it has any.
    pub fn guarded_keys(&self, id: MessageId) -> Option<&[GuardedKey]> {
        self.keyed.get(&id).map(Vec::as_slice)
    }

    /// A permission by its name label.
    pub fn by_label(&self, label: &str) -> Option<usize> {
        self.by_label.get(label).copied()
    }

    /// Permission `i`.
    pub fn get(&self, i: usize) -> Option<&Permission> {
        self.permissions.get(i)
    }

    /// The permissions of `role`, in table order.
    pub fn of_role(&self, role: usize) -> impl Iterator<Item = &Permission> {
        self.permissions.iter().filter(move |p| p.roles & bit(role) != 0)
    }

    /// The names of the roles that have permission `i`, in the reference's listing order.
    pub fn roles_with(&self, i: usize) -> Vec<&'static str> {
        let mask = self.permissions.get(i).map_or(0, |p| p.roles);
        LISTING_ORDER
            .iter()
            .filter(|&&r| mask & bit(r) != 0)
            .map(|&r| ROLES[r].name)
            .collect()
    }

    /// `RBAC_PERMISSION_DENIED [permission, message]` for permission `i`, as the reference
    /// words it.
    pub fn denied(&self, i: usize) -> crate::error::ApiError {
        let label = self.permissions.get(i).map_or("", |p| p.label.as_str());
        crate::error::ApiError::RbacPermissionDenied {
            permission: label.to_owned(),
            message: format!(
                "No permission in user session. (Roles with this permission: {})",
                self.roles_with(i).join(", ")
            ),
        }
    }

    /// The permission labels a session with `mask`'s roles holds, as the reference puts
    /// them in `session.rbac_permissions`: the roles' names, then their permissions.
    pub fn session_permissions(&self, mask: u8) -> Vec<String> {
        let mut out: Vec<String> = ROLES
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & bit(*i) != 0)
            .map(|(_, r)| r.name.to_owned())
            .collect();
        out.extend(
            self.permissions
                .iter()
                .filter(|p| p.roles & mask != 0)
                .map(|p| p.label.clone()),
        );
        out
    }

    /// The role mask a session's `rbac_permissions` stands for: the roles it names.
    pub fn mask_of_labels<'a>(labels: impl IntoIterator<Item = &'a str>) -> u8 {
        labels
            .into_iter()
            .filter_map(role_index)
            .fold(0u8, |acc, r| acc | bit(r))
    }
}

/// The table, built on first use.
pub fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(Table::build)
}

/// Whether `class` is `task` (the one class whose operations also check who created the
/// object).
pub fn is_task(class: ClassId) -> bool {
    class == class_ids::task
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::method;

    fn perm(name: &str) -> &'static Permission {
        let t = table();
        let i = t.by_label(name).unwrap_or_else(|| panic!("no permission {name}"));
        &t.permissions[i]
    }

    fn roles_of(name: &str) -> Vec<&'static str> {
        let t = table();
        t.roles_with(t.by_label(name).unwrap())
    }

    #[test]
    fn every_message_has_its_datamodel_roles() {
        let t = table();
        assert!(t.unlisted.is_empty(), "messages without roles: {:?}", t.unlisted);
        for id in MessageId::all() {
            let p = &t.permissions[t.of_message(id).unwrap()];
            assert_eq!(p.label, id.wire_name().to_ascii_lowercase());
        }
        // Spot checks against the datamodel.
        assert_eq!(perm("vm.start").roles, at_least(VM_OPERATOR));
        assert_eq!(perm("vm.destroy").roles, at_least(VM_ADMIN));
        assert_eq!(perm("vm.set_memory_dynamic_max").roles, at_least(VM_POWER_ADMIN));
        assert_eq!(perm("vm.get_record").roles, ALL_ROLES);
        assert_eq!(perm("pool.enable_external_auth").roles, bit(POOL_ADMIN));
        assert_eq!(perm("session.logout_subject_identifier").roles, at_least(POOL_OPERATOR));
        assert_eq!(perm("subject.add_to_roles").roles, bit(POOL_ADMIN));
        // Local superuser only.
        assert_eq!(perm("session.change_password").roles, 0);
        assert_eq!(perm("host.emergency_reset_server_certificate").roles, 0);
        // Additions and the derived query.
        assert_eq!(perm("vm.set_uefi_mode").roles, bit(POOL_ADMIN));
        assert_eq!(perm("vm.get_all_records_where").roles, perm("vm.get_all_records").roles);
    }

    #[test]
    fn guarded_keys_have_their_own_permissions() {
        let t = table();
        assert_eq!(perm("vm.add_to_other_config/key:folder").roles, at_least(VM_OPERATOR));
        assert_eq!(perm("vm.remove_from_other_config/key:pci").roles, bit(POOL_ADMIN));
        assert_eq!(
            perm("vm.add_to_other_config/key:xencenter.customfields.*").name,
            "VM.add_to_other_config/key:XenCenter.CustomFields.*"
        );
        assert_eq!(perm("vm.add_to_platform/key:hvm_serial").roles, bit(POOL_ADMIN));
        assert_eq!(
            perm("task.add_to_other_config/key:applies_to").roles,
            at_least(VM_OPERATOR)
        );
        assert_eq!(
            perm("pool.add_to_other_config/key:empty_folders").roles,
            at_least(VM_OPERATOR)
        );
        for (class, field, _) in GUARDED_KEYS {
            for prefix in ["add_to_", "remove_from_"] {
                let id = method(&format!("{class}.{prefix}{field}")).unwrap().id;
                assert!(t.guarded_keys(id).is_some(), "{class}.{prefix}{field}");
            }
        }
        let id = method("VM.add_to_other_config").unwrap().id;
        let keys = t.guarded_keys(id).unwrap();
        assert!(keys.iter().any(|k| k.matches("XenCenter.CustomFields.owner")));
        assert!(!keys.iter().any(|k| k.matches("xencenter.customfields.owner")));
        assert!(keys.iter().any(|k| k.matches("folder")));
        assert!(!keys.iter().any(|k| k.matches("folders")));
    }

    #[test]
    fn http_and_extra_permissions_are_listed() {
        assert_eq!(perm("http/get_export").roles, at_least(VM_ADMIN));
        assert_eq!(perm("http/connect_console/host_console").roles, bit(POOL_ADMIN));
        assert_eq!(perm("http/post_rpc2").roles, ALL_ROLES);
        assert_eq!(perm("http/get_repository").roles, 0);
        assert_eq!(perm("task.destroy/any").roles, at_least(POOL_OPERATOR));
    }

    #[test]
    fn role_uuids_are_the_references() {
        assert_eq!(uuid_of("pool-admin"), "0165f154-ba3e-034e-6b27-5d271af109ba");
        assert_eq!(ref_of("pool-admin"), "OpaqueRef:0165f154-ba3e-034e-6b27-5d271af109ba");
        // The uuid is made from the name as the reference spells it, not the label.
        assert_ne!(uuid_of("VM.start"), uuid_of("vm.start"));
    }

    #[test]
    fn roles_nest_and_are_listed_as_the_reference_lists_them() {
        let t = table();
        let count = |r| t.of_role(r).count();
        for pair in [
            (POOL_ADMIN, POOL_OPERATOR),
            (POOL_OPERATOR, VM_POWER_ADMIN),
            (VM_POWER_ADMIN, VM_ADMIN),
            (VM_ADMIN, VM_OPERATOR),
            (VM_OPERATOR, READ_ONLY),
        ] {
            assert!(count(pair.0) > count(pair.1), "{pair:?}");
            // Every permission of a lower role is one of the higher's.
            assert!(t.of_role(pair.1).all(|p| p.roles & bit(pair.0) != 0), "{pair:?}");
        }
        assert_eq!(
            roles_of("vm.destroy"),
            vec!["vm-power-admin", "vm-admin", "pool-admin", "pool-operator"]
        );
        assert_eq!(
            roles_of("vm.get_record"),
            vec![
                "vm-power-admin",
                "vm-admin",
                "vm-operator",
                "read-only",
                "client-cert",
                "pool-admin",
                "pool-operator"
            ]
        );
        let e = t.denied(t.by_label("pool.enable_external_auth").unwrap());
        assert_eq!(
            e.params(),
            vec![
                "pool.enable_external_auth".to_owned(),
                "No permission in user session. (Roles with this permission: pool-admin)".to_owned()
            ]
        );
        assert_eq!(
            t.denied(t.by_label("session.change_password").unwrap()).params()[1],
            "No permission in user session. (Roles with this permission: )"
        );
    }

    #[test]
    fn session_permissions_name_the_roles_then_their_permissions() {
        let t = table();
        let ro = t.session_permissions(bit(READ_ONLY));
        assert_eq!(ro[0], "read-only");
        assert!(ro.iter().any(|p| p == "vm.get_record"));
        assert!(!ro.iter().any(|p| p == "vm.start"));
        assert_eq!(Table::mask_of_labels(ro.iter().map(String::as_str)), bit(READ_ONLY));
        let both = t.session_permissions(bit(VM_OPERATOR) | bit(READ_ONLY));
        assert_eq!(&both[..2], ["vm-operator", "read-only"]);
    }
}
