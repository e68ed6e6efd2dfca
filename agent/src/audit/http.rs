//! The role check of the HTTP handlers (the reference's `http/<action>` permissions) with
//! its audit record, and the audit log's own handler (`GET /audit_log`).

use super::{since_of_iso8601, Outcome};
use crate::error::ApiError;
use crate::rbac::table::{self, table};
use crate::rbac::Caller;
use crate::schema::{class_ids, fields};
use crate::Agent;

/// The audit log's HTTP permission.
pub const GET_AUDIT_LOG: &str = "get_audit_log";

impl Agent {
    /// Checks that `session` may use the HTTP handler `action` (the datamodel's name of an
    /// HTTP action, `get_export_raw_vdi`, or a keyed one, `connect_console/host_console`):
    /// `RBAC_PERMISSION_DENIED [http/<action>, message]` when it may not. The check is
    /// recorded in the audit log with the request's parameters (`params`: query and
    /// cookies; the session is never written).
    pub fn authorize_http(&self, session: &str, action: &str, params: &[(String, String)]) -> Result<(), ApiError> {
        self.authorize_http_with(session, action, params, |_| Ok(()))
    }

    /// [`Agent::authorize_http`] with a further check of the caller.
    fn authorize_http_with(
        &self,
        session: &str,
        action: &str,
        params: &[(String, String)],
        further: impl FnOnce(&Caller) -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        let caller = self.sessions.validate_caller(&self.store, session)?;
        let label = format!("http/{}", action.to_ascii_lowercase());
        let pending = self.audit.pending_http(&self.store, session, &label, params);
        let r = check(&caller, &label).and_then(|()| further(&caller));
        if let Some(p) = pending {
            let outcome = if r.is_ok() { Outcome::Ok } else { Outcome::Denied };
            self.audit.finish(&self.store, &self.host, p, outcome);
        }
        r
    }

    /// Whether the console belongs to a control domain (its connection then needs
    /// `http/connect_console/host_console` as well).
    pub fn console_of_control_domain(&self, console: &str) -> bool {
        self.store
            .get(class_ids::console, console)
            .and_then(|c| c.get(fields::console::VM).as_ref_str().map(str::to_owned))
            .and_then(|vm| self.store.get(class_ids::VM, &vm))
            .is_some_and(|vm| vm.get(fields::VM::is_control_domain).as_bool() == Some(true))
    }

    /// `GET /audit_log[?since=<ISO 8601 time>]`: the audit records from `since` on, oldest
    /// first. The session needs `http/get_audit_log` (as in the reference, where every role
    /// has it) and, beyond the reference, the `pool-admin` role (or to be the local
    /// superuser): the records say who did what.
    pub fn audit_log(&self, session: &str, params: &[(String, String)]) -> Result<Vec<String>, ApiError> {
        self.authorize_http_with(session, GET_AUDIT_LOG, params, |caller| {
            if is_pool_admin(caller) {
                return Ok(());
            }
            Err(ApiError::RbacPermissionDenied {
                permission: format!("http/{GET_AUDIT_LOG}"),
                message: "No permission in user session. (Roles with this permission: pool-admin)".to_owned(),
            })
        })?;
        let since = params
            .iter()
            .find(|(k, _)| k == "since")
            .map(|(_, v)| since_of_iso8601(v))
            .unwrap_or_default();
        Ok(self.audit.lines_since(&since))
    }
}

fn check(caller: &Caller, label: &str) -> Result<(), ApiError> {
    if caller.superuser {
        return Ok(());
    }
    let t = table();
    match t.by_label(label) {
        Some(p) if caller.holds(p) => Ok(()),
        Some(p) => Err(t.denied(p)),
        None => Err(ApiError::internal(format!("{label} is no permission"))),
    }
}

/// The local superuser, or a session holding every permission of `pool-admin`.
fn is_pool_admin(caller: &Caller) -> bool {
    caller.superuser
        || table()
            .permissions
            .iter()
            .enumerate()
            .filter(|(_, p)| p.roles & table::bit(table::POOL_ADMIN) != 0)
            .all(|(i, _)| caller.holds(i))
}
