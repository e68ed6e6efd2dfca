//! The `role` objects and the role messages. Like the reference's, the role table holds the
//! static roles and every permission a role can have (a permission is a role without
//! subroles); they are made from the permission table at start, in memory only (they are
//! the datamodel's, not the pool's), with the reference's uuids and `OpaqueRef:<uuid>` refs.

use super::check::Caller;
use super::table::{bit, ref_of, table, uuid_of, LISTING_ORDER, PERMISSION_DESCRIPTION, POOL_ADMIN, ROLES};
use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::schema::{class_ids, fields};
use crate::store::Store;
use crate::value::{default_object, Value};
use crate::Agent;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// What a role ref names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleRef {
    /// A static role (index in [`ROLES`]).
    Role(usize),
    /// A permission (index in the permission table).
    Permission(usize),
}

/// Every role ref there is: the roles, and the permissions some role has.
fn refs() -> &'static HashMap<String, RoleRef, crate::FastHash> {
    static REFS: OnceLock<HashMap<String, RoleRef, crate::FastHash>> = OnceLock::new();
    REFS.get_or_init(|| {
        let t = table();
        let mut m = HashMap::default();
        for (i, p) in t.permissions.iter().enumerate() {
            // Permissions no role has (the local superuser's alone) are not role objects.
            if p.roles != 0 {
                m.insert(ref_of(&p.name), RoleRef::Permission(i));
            }
        }
        for (i, r) in ROLES.iter().enumerate() {
            m.insert(ref_of(r.name), RoleRef::Role(i));
        }
        m
    })
}

/// What `r` names, if it is a role or permission.
pub fn lookup(r: &str) -> Option<RoleRef> {
    refs().get(r).copied()
}

/// The ref of role `i`.
pub fn role_ref(i: usize) -> String {
    ROLES.get(i).map_or_else(String::new, |r| ref_of(r.name))
}

/// The permission set (a bitset over the permission table) of the given roles and
/// permissions, and the labels a session holds for them: each role's name and its
/// permissions, each permission's label.
pub fn grant(held: &[RoleRef]) -> (Arc<[u64]>, Vec<String>) {
    let t = table();
    let mut bits = vec![0u64; t.permissions.len().div_ceil(64)];
    let mut labels = Vec::new();
    let mut mask = 0u8;
    for h in held {
        match *h {
            RoleRef::Role(r) => mask |= bit(r),
            RoleRef::Permission(i) => {
                if let Some(slot) = bits.get_mut(i / 64) {
                    *slot |= 1 << (i % 64);
                }
            }
        }
    }
    for (r, role) in ROLES.iter().enumerate() {
        if mask & bit(r) != 0 {
            labels.push(role.name.to_owned());
        }
    }
    for (i, p) in t.permissions.iter().enumerate() {
        let word = bits.get(i / 64).copied().unwrap_or(0);
        if p.roles & mask != 0 || word & (1 << (i % 64)) != 0 {
            if let Some(slot) = bits.get_mut(i / 64) {
                *slot |= 1 << (i % 64);
            }
            labels.push(p.label.clone());
        }
    }
    (Arc::from(bits), labels)
}

/// The permission set a session's `rbac_permissions` stand for.
pub fn grant_from_labels<'a>(labels: impl IntoIterator<Item = &'a str>) -> Arc<[u64]> {
    let t = table();
    let held: Vec<RoleRef> = labels
        .into_iter()
        .filter_map(|l| {
            super::table::role_index(l)
                .map(RoleRef::Role)
                .or_else(|| t.by_label(l).map(RoleRef::Permission))
        })
        .collect();
    grant(&held).0
}

/// Creates the role objects (once per start; they live in memory only).
pub async fn ensure_roles(store: &Store) -> Result<(), ApiError> {
    let t = table();
    let permission_refs: Vec<Vec<Value>> = (0..ROLES.len())
        .map(|r| {
            t.permissions
                .iter()
                .filter(|p| p.roles & bit(r) != 0)
                .map(|p| Value::reference(ref_of(&p.name)))
                .collect()
        })
        .collect();
    store
        .write_volatile(|tx| {
            use fields::role as f;
            // The reference's order: the permissions (those pool-admin has, which is every
            // permission a role has), then the roles.
            for p in t.permissions.iter().filter(|p| p.roles & bit(POOL_ADMIN) != 0) {
                let r = ref_of(&p.name);
                if tx.get(class_ids::role, &r).is_some() {
                    continue;
                }
                let mut o = default_object(class_ids::role, &r);
                o.set(f::uuid, Value::str(uuid_of(&p.name)));
                o.set(f::name_label, Value::str(p.label.as_str()));
                o.set(f::name_description, Value::str(PERMISSION_DESCRIPTION));
                o.set(f::subroles, Value::set(Vec::new()));
                o.set(f::is_internal, Value::Bool(true));
                tx.put(o);
            }
            for &i in &LISTING_ORDER {
                let role = &ROLES[i];
                let r = ref_of(role.name);
                if tx.get(class_ids::role, &r).is_some() {
                    continue;
                }
                let mut o = default_object(class_ids::role, &r);
                o.set(f::uuid, Value::str(uuid_of(role.name)));
                o.set(f::name_label, Value::str(role.name));
                o.set(f::name_description, Value::str(role.description));
                o.set(
                    f::subroles,
                    Value::set(permission_refs.get(i).cloned().unwrap_or_default()),
                );
                o.set(f::is_internal, Value::Bool(role.internal));
                tx.put(o);
            }
            Ok(())
        })
        .await
}

/// The permissions of a role ref: a role's, or a permission itself.
fn permissions_of(r: RoleRef) -> Vec<usize> {
    let t = table();
    match r {
        RoleRef::Role(i) => t
            .permissions
            .iter()
            .enumerate()
            .filter(|(_, p)| p.roles & bit(i) != 0)
            .map(|(j, _)| j)
            .collect(),
        RoleRef::Permission(j) => vec![j],
    }
}

fn must_lookup(r: &str) -> Result<RoleRef, ApiError> {
    lookup(r).ok_or_else(|| ApiError::handle_invalid("role", r))
}

fn permission_refs(ps: &[usize]) -> Value {
    let t = table();
    Value::set(
        ps.iter()
            .filter_map(|&i| t.get(i))
            .map(|p| Value::reference(ref_of(&p.name)))
            .collect(),
    )
}

fn permission_labels(ps: &[usize]) -> Value {
    let t = table();
    Value::set(
        ps.iter()
            .filter_map(|&i| t.get(i))
            .map(|p| Value::str(p.label.as_str()))
            .collect(),
    )
}

/// The roles (not permissions) that have permission `i`, in the reference's order.
fn roles_with(i: Option<usize>) -> Value {
    let t = table();
    let mask = i.and_then(|i| t.get(i)).map_or(0, |p| p.roles);
    Value::set(
        LISTING_ORDER
            .iter()
            .filter(|&&r| mask & bit(r) != 0)
            .map(|&r| Value::reference(role_ref(r)))
            .collect(),
    )
}

/// The labels of the permissions of every role a subject has.
fn subject_permission_labels(agent: &Agent, subject: &str) -> Result<Value, ApiError> {
    let s = agent
        .store
        .get(class_ids::subject, subject)
        .ok_or_else(|| ApiError::handle_invalid("subject", subject))?;
    let mut held: Vec<usize> = Vec::new();
    for r in s.get(fields::subject::roles).as_set() {
        // A role that disappeared gives nothing.
        if let Some(rr) = r.as_ref_str().and_then(lookup) {
            held.extend(permissions_of(rr));
        }
    }
    held.sort_unstable();
    held.dedup();
    Ok(permission_labels(&held))
}

/// The `role` messages, and `subject`'s role messages.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::role, "get_permissions", |_agent, _, c| {
            Ok(permission_refs(&permissions_of(must_lookup(c.ref_arg(0)?)?)))
        }),
        entry!(class_ids::role, "get_permissions_name_label", |_agent, _, c| {
            Ok(permission_labels(&permissions_of(must_lookup(c.ref_arg(0)?)?)))
        }),
        entry!(class_ids::role, "get_by_permission", |_agent, _, c| {
            let p = match lookup(c.str_arg(0)) {
                Some(RoleRef::Permission(i)) => Some(i),
                _ => None,
            };
            Ok(roles_with(p))
        }),
        entry!(class_ids::role, "get_by_permission_name_label", |_agent, _, c| {
            Ok(roles_with(table().by_label(c.str_arg(0))))
        }),
        entry!(class_ids::subject, "get_permissions_name_label", |agent, _, c| {
            subject_permission_labels(&agent, c.ref_arg(0)?)
        }),
        entry!(class_ids::subject, "add_to_roles", |agent, _, c| {
            change_roles(&agent, c.ref_arg(0)?, c.str_arg(1), true).await
        }),
        entry!(class_ids::subject, "remove_from_roles", |agent, _, c| {
            change_roles(&agent, c.ref_arg(0)?, c.str_arg(1), false).await
        }),
    ]
}

/// `subject.add_to_roles` / `remove_from_roles`. Sessions keep the permissions they logged in
/// with; the change applies from the subject's next login.
async fn change_roles(agent: &Agent, subject: &str, role: &str, add: bool) -> Result<Value, ApiError> {
    let subject = subject.to_owned();
    let role = role.to_owned();
    agent
        .store
        .write(|tx| {
            let s = tx.must_get(class_ids::subject, &subject)?;
            let mut roles = s.get(fields::subject::roles).as_set().to_vec();
            let has = roles.iter().any(|r| r.as_ref_str() == Some(role.as_str()));
            if add {
                if lookup(&role).is_none() {
                    return Err(ApiError::RoleNotFound {});
                }
                if has {
                    return Err(ApiError::RoleAlreadyExists {});
                }
                roles.push(Value::reference(role.as_str()));
            } else {
                if !has {
                    return Err(ApiError::RoleNotFound {});
                }
                roles.retain(|r| r.as_ref_str() != Some(role.as_str()));
            }
            crate::objects::set_field(
                tx,
                class_ids::subject,
                &subject,
                fields::subject::roles,
                Value::set(roles),
            )
        })
        .await?;
    Ok(Value::None)
}

/// The permission set of a caller holding the given role refs.
pub fn caller_for(held: &[RoleRef], sid: &str) -> (Caller, Vec<String>) {
    let (perms, labels) = grant(held);
    (
        Caller {
            superuser: false,
            perms,
            sid: Arc::from(sid),
        },
        labels,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn role_objects_are_the_roles_and_their_permissions() {
        let store = Store::open(None).unwrap();
        ensure_roles(&store).await.unwrap();
        // Idempotent.
        ensure_roles(&store).await.unwrap();
        let t = table();
        let pool_admin_perms = t.permissions.iter().filter(|p| p.roles & bit(POOL_ADMIN) != 0).count();
        assert_eq!(store.count(class_ids::role), pool_admin_perms + ROLES.len());
        let pa = store
            .get(class_ids::role, "OpaqueRef:0165f154-ba3e-034e-6b27-5d271af109ba")
            .unwrap();
        assert_eq!(pa.str_field("name_label"), "pool-admin");
        assert_eq!(pa.get(fields::role::subroles).as_set().len(), pool_admin_perms);
        let start = store.get(class_ids::role, &ref_of("VM.start")).unwrap();
        assert_eq!(start.str_field("name_label"), "vm.start");
        assert_eq!(start.str_field("name_description"), "A basic permission");
        assert!(start.get(fields::role::subroles).as_set().is_empty());
        assert_eq!(start.get(fields::role::is_internal), &Value::Bool(true));
        // The local superuser's own permissions are no role objects.
        assert!(store.get(class_ids::role, &ref_of("session.change_password")).is_none());
        let cc = store.get(class_ids::role, &ref_of("client-cert")).unwrap();
        assert_eq!(cc.get(fields::role::is_internal), &Value::Bool(true));
    }

    #[test]
    fn a_grant_holds_its_roles_permissions_and_single_permissions() {
        let t = table();
        let vo = super::super::table::role_index("vm-operator").unwrap();
        let (caller, labels) = caller_for(&[RoleRef::Role(vo)], "sid-1");
        assert!(caller.holds(t.by_label("vm.start").unwrap()));
        assert!(!caller.holds(t.by_label("vm.destroy").unwrap()));
        assert!(labels.contains(&"vm-operator".to_owned()));
        let destroy = t.by_label("vm.destroy").unwrap();
        let (caller, labels) = caller_for(&[RoleRef::Permission(destroy)], "sid-1");
        assert!(caller.holds(destroy));
        assert!(!caller.holds(t.by_label("vm.start").unwrap()));
        assert_eq!(labels, vec!["vm.destroy".to_owned()]);
        let again = grant_from_labels(labels.iter().map(String::as_str));
        assert_eq!(&*again, &*caller.perms);
    }
}
