//! The check every call with a session passes before its handler runs (dispatch calls
//! [`authorize`] once the call's arguments are typed, for `Async.` forms before the task is
//! made): the permission its message needs — or, for a guarded key of a map, the key's —
//! must belong to one of the session's roles. The local superuser passes every check.
//!
//! Two checks look further than the message, as the reference's do: `set_<map>` of the maps
//! with guarded keys needs the key permission of every guarded entry it adds, changes or
//! removes; and an operation on a task another subject created needs `task.destroy/any`.

use super::table::{self, table, TASK_DESTROY_ANY};
use crate::call::Call;
use crate::error::ApiError;
use crate::schema::{class_ids, MessageKind};
use crate::value::Value;
use crate::Agent;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Who a session is, for the checks.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The local superuser (root, or a trusted local peer): every check passes.
    pub superuser: bool,
    /// The permissions the session holds: a bitset over the permission table.
    pub perms: Arc<[u64]>,
    /// The subject identifier the session authenticated as (empty for root).
    pub sid: Arc<str>,
}

impl Caller {
    /// The local superuser.
    pub fn superuser() -> Caller {
        Caller {
            superuser: true,
            perms: Arc::from(Vec::new()),
            sid: Arc::from(""),
        }
    }

    /// Whether the session holds permission `i`.
    pub fn holds(&self, i: usize) -> bool {
        self.superuser || self.perms.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// The messages on a task that check who created it (the reference's `assert_op_valid`).
const TASK_OWNED: &[&str] = &[
    "destroy",
    "cancel",
    "set_status",
    "set_progress",
    "set_result",
    "set_error_info",
    "set_resident_on",
    "add_to_other_config",
    "remove_from_other_config",
    "set_other_config",
];

/// The permission `c` needs: its message's, or the guarded key's when its `key` argument is
/// one.
pub fn permission_of(c: &Call) -> Option<usize> {
    let t = table();
    let base = t.of_message(c.id)?;
    let Some(keys) = t.guarded_keys(c.id) else {
        return Some(base);
    };
    let key_at = c.message.params.iter().skip(1).position(|p| p.name == "key");
    let key = key_at.map(|i| c.str_arg(i)).unwrap_or("");
    Some(keys.iter().find(|k| k.matches(key)).map_or(base, |k| k.permission))
}

/// Checks that `caller` may make call `c`; `RBAC_PERMISSION_DENIED [permission, message]`
/// when not.
pub fn authorize(agent: &Agent, caller: &Caller, c: &Call) -> Result<(), ApiError> {
    if caller.superuser {
        return Ok(());
    }
    let t = table();
    let Some(p) = permission_of(c) else {
        return Err(ApiError::internal(format!("{} has no permission", c.wire_name())));
    };
    if !caller.holds(p) {
        return Err(t.denied(p));
    }
    if matches!(
        c.message.kind,
        MessageKind::Set(_) | MessageKind::ExplicitSet(_) | MessageKind::Custom
    ) {
        check_set_map(agent, caller, c)?;
    }
    if table::is_task(c.class) && TASK_OWNED.contains(&c.message.name) {
        check_task_owner(agent, caller, c)?;
    }
    Ok(())
}

/// `set_<map>` of a map with guarded keys: every guarded entry the new value adds, changes
/// or drops needs the key permission of `add_to_<map>` or `remove_from_<map>`.
fn check_set_map(agent: &Agent, caller: &Caller, c: &Call) -> Result<(), ApiError> {
    let Some(field) = c.message.name.strip_prefix("set_") else {
        return Ok(());
    };
    let class = c.class.name();
    if !table::SET_MAP_CHECKED.contains(&(class, field)) {
        return Ok(());
    }
    let t = table();
    let (Some(add), Some(remove)) = (
        c.class.message_by_name(&format!("add_to_{field}")),
        c.class.message_by_name(&format!("remove_from_{field}")),
    ) else {
        return Ok(());
    };
    let (Some(add_keys), Some(remove_keys), Some(fid)) = (
        t.guarded_keys(add),
        t.guarded_keys(remove),
        c.class.field_by_name(field),
    ) else {
        return Ok(());
    };
    let Ok(self_ref) = c.ref_arg(0) else {
        return Ok(());
    };
    // An object that is not there is the handler's to report.
    let Some(obj) = agent.store.get(c.class, self_ref) else {
        return Ok(());
    };
    let old = obj.get(fid).as_map();
    let new_value = c.arg(1);
    let new = new_value.as_map();
    let lookup =
        |pairs: &[(Value, Value)], k: &str| pairs.iter().find(|(a, _)| a.key_cow() == k).map(|(_, v)| v.clone());
    let old_keys: BTreeSet<String> = old.iter().map(|(k, _)| k.key_text()).collect();
    let new_keys: BTreeSet<String> = new.iter().map(|(k, _)| k.key_text()).collect();
    let removed = old_keys.difference(&new_keys);
    let added = new_keys
        .iter()
        .filter(|k| !old_keys.contains(*k) || lookup(old, k) != lookup(new, k));
    let mut needed = Vec::new();
    for k in added {
        if let Some(g) = add_keys.iter().find(|g| g.matches(k)) {
            needed.push(g.permission);
        }
    }
    for k in removed {
        if let Some(g) = remove_keys.iter().find(|g| g.matches(k)) {
            needed.push(g.permission);
        }
    }
    match needed.into_iter().find(|p| !caller.holds(*p)) {
        Some(p) => Err(t.denied(p)),
        None => Ok(()),
    }
}

/// An operation on a task another subject's session created needs `task.destroy/any`.
fn check_task_owner(agent: &Agent, caller: &Caller, c: &Call) -> Result<(), ApiError> {
    let Ok(task) = c.ref_arg(0) else {
        return Ok(());
    };
    if agent.sessions.task_owner(task).as_deref() == Some(&*caller.sid) {
        return Ok(());
    }
    let t = table();
    match t.by_label(TASK_DESTROY_ANY) {
        Some(p) if caller.holds(p) => Ok(()),
        Some(p) => Err(t.denied(p)),
        None => Err(ApiError::internal("no task.destroy/any permission")),
    }
}

/// Whether a call returns a task its caller then owns (`task.create`; `Async.` forms too).
pub fn creates_task(c: &Call) -> bool {
    c.class == class_ids::task && c.message.name == "create"
}

/// The task a call destroys, if it is `task.destroy`.
pub fn destroys_task(c: &Call) -> Option<&str> {
    (c.class == class_ids::task && c.message.name == "destroy")
        .then(|| c.ref_arg(0).ok())
        .flatten()
}
