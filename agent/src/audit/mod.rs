//! The audit trail: who called which message on what, and with what outcome, in the
//! reference's audit record format, written to `<state dir>/audit.log` (rotated by size) and
//! served to pool administrators at `GET /audit_log`.
//!
//! A record is one line: a bracketed prefix (time, `audit`, the host's name, the record's
//! serial number and the call, `audit`) and an s-expression as the reference writes it:
//!
//! ```text
//! [20261206T08:31:11.417Z|audit|host1|7 VM.start|VM.start|audit] ('trackid=9b2…' 'LOCAL_SUPERUSER' 'root' 'ALLOWED' 'OK' 'API' 'VM.start' (('vm' 'web' '5e1…' 'OpaqueRef:…') ('start_paused' 'false' '' '') ('force' 'false' '' '')))
//! ```
//!
//! The session appears only as its track id (the MD5 of its ref, as in the reference); the
//! arguments are those [`args`] picks (descriptive ones and references), never a password.
//! Calls that only read (`.get` in their name) and a few noisy ones are not recorded, as in
//! the reference; logins and logouts of directory users are (`session.create`,
//! `session.destroy`).

pub mod args;
pub mod file;
pub mod http;
pub mod sexpr;

use crate::call::Call;
use crate::error::ApiError;
use crate::schema::class_ids;
use crate::store::Store;
use sexpr::{arg, SExpr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

pub use file::{since_of_iso8601, AuditError, DEFAULT_KEEP, DEFAULT_MAX_BYTES};

/// Actions never recorded (besides those that only read), as in the reference.
const NOT_AUDITED: &[&str] = &[
    "session.local_logout",
    "session.logout",
    "event.next",
    "event.from",
    "http/get_rrd_updates",
    "http/rrd_updates",
    "http/post_remote_db_access",
    "host.tickle_heartbeat",
];

/// Whether calls of `action` are recorded: those with side effects, less the noisy ones.
pub fn has_to_audit(action: &str) -> bool {
    !action.contains(".get") && !NOT_AUDITED.contains(&action)
}

/// The subject identifier the reference records for the local superuser.
pub const LOCAL_SUPERUSER: &str = "LOCAL_SUPERUSER";

/// How a recorded call ended.
#[derive(Clone, Copy, Debug)]
pub enum Outcome<'a> {
    /// Let through, and it succeeded.
    Ok,
    /// Let through, and it failed with this error.
    Error(&'a ApiError),
    /// Refused by the role check.
    Denied,
}

/// Whether an action is an API call or an HTTP handler's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallType {
    /// An XML-RPC or JSON-RPC message.
    Api,
    /// An HTTP handler (`http/…`).
    Http,
}

impl CallType {
    fn as_str(self) -> &'static str {
        match self {
            CallType::Api => "API",
            CallType::Http => "HTTP",
        }
    }
}

/// Who made a call, as the record names them.
#[derive(Clone, Debug)]
struct Who {
    trackid: String,
    subject: String,
    name: String,
}

impl Who {
    fn of(store: &Store, session: &str) -> Who {
        let (subject, name) = match store.get(class_ids::session, session) {
            Some(s) if s.str_field("auth_user_sid").is_empty() && is_superuser(&s) => {
                (LOCAL_SUPERUSER.to_owned(), s.str_field("auth_user_name").to_owned())
            }
            Some(s) => (
                s.str_field("auth_user_sid").to_owned(),
                s.str_field("auth_user_name").to_owned(),
            ),
            None => (String::new(), String::new()),
        };
        Who {
            trackid: trackid(session),
            subject,
            name,
        }
    }
}

fn is_superuser(s: &crate::value::Object) -> bool {
    class_ids::session
        .field_by_name("is_local_superuser")
        .and_then(|f| s.get(f).as_bool())
        .unwrap_or(false)
}

/// A session's track id: `trackid=` and the MD5 of its ref, in hex (the ref itself is a
/// credential and is never written).
pub fn trackid(session: &str) -> String {
    use md5::{Digest, Md5};
    let d = Md5::digest(session.as_bytes());
    let mut s = String::with_capacity(40);
    s.push_str("trackid=");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A call whose record is written once its outcome is known.
pub struct Pending {
    who: Who,
    action: String,
    kind: CallType,
    args: Vec<SExpr>,
    /// A call whose arguments are described once it has run (as the reference does, so a
    /// renamed object shows its new name); a `destroy`'s are described before.
    after: Option<Call>,
}

/// The audit log.
pub struct AuditLog {
    file: file::LogFile,
    serial: AtomicU64,
}

impl AuditLog {
    /// Opens (or creates) `audit.log` in `dir`, rotated at `max_bytes`, `keep` old files
    /// kept.
    pub fn open(dir: &Path, max_bytes: u64, keep: u32) -> Result<AuditLog, AuditError> {
        Ok(AuditLog {
            file: file::LogFile::open(dir, max_bytes, keep)?,
            serial: AtomicU64::new(0),
        })
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// A typed call by `session`, about to be checked and run; `None` when calls of its
    /// message are not recorded. Its arguments are read now (before a `destroy` removes what
    /// they name).
    pub fn pending_call(&self, store: &Store, session: &str, c: &Call) -> Option<Pending> {
        let action = c.wire_name();
        if !has_to_audit(&action) {
            return None;
        }
        let destroys = action.contains(".destroy");
        Some(Pending {
            who: Who::of(store, session),
            args: if destroys { args::of_call(store, c) } else { Vec::new() },
            after: (!destroys).then(|| Call {
                id: c.id,
                class: c.class,
                message: c.message,
                session: None,
                args: c.args.clone(),
            }),
            action,
            kind: CallType::Api,
        })
    }

    /// An HTTP handler's action (`http/<name>`) by `session`; `None` when not recorded.
    pub fn pending_http(
        &self,
        store: &Store,
        session: &str,
        action: &str,
        params: &[(String, String)],
    ) -> Option<Pending> {
        if !has_to_audit(action) {
            return None;
        }
        Some(Pending {
            who: Who::of(store, session),
            args: args::of_http(store, action, params),
            action: action.to_owned(),
            kind: CallType::Http,
            after: None,
        })
    }

    /// A directory user's new session (the local superuser's are not recorded, as in the
    /// reference): `session.create` with the user name and originator.
    pub fn session_created(&self, store: &Store, host: &str, session: &str, uname: &str) {
        let Some(s) = store.get(class_ids::session, session) else {
            return;
        };
        if is_superuser(&s) {
            return;
        }
        let p = Pending {
            who: Who::of(store, session),
            action: "session.create".to_owned(),
            kind: CallType::Api,
            args: vec![
                arg("uname", uname, "", ""),
                arg("originator", s.str_field("originator"), "", ""),
            ],
            after: None,
        };
        self.finish(store, host, p, Outcome::Ok);
    }

    /// A directory user's session about to end: `session.destroy` with its originator, once
    /// [`AuditLog::finish`]ed.
    pub fn pending_session_destroy(&self, store: &Store, session: &str) -> Option<Pending> {
        let s = store.get(class_ids::session, session)?;
        if is_superuser(&s) {
            return None;
        }
        Some(Pending {
            who: Who::of(store, session),
            action: "session.destroy".to_owned(),
            kind: CallType::Api,
            args: vec![arg("originator", s.str_field("originator"), "", "")],
            after: None,
        })
    }

    /// Writes the record of a call with its outcome. A record that cannot be written is
    /// reported in the daemon's log; the call is not failed for it.
    pub fn finish(&self, store: &Store, host: &str, mut p: Pending, outcome: Outcome<'_>) {
        if let Some(c) = p.after.take() {
            p.args = args::of_call(store, &c);
        }
        let hostname = store
            .get(class_ids::host, host)
            .map(|h| h.str_field("hostname").to_owned())
            .unwrap_or_default();
        let line = self.line(&hostname, &p, outcome, chrono::Utc::now());
        if let Err(e) = self.file.append(&line) {
            tracing::warn!(error = %e, action = %p.action, "audit record not written");
        }
    }

    fn line(&self, hostname: &str, p: &Pending, outcome: Outcome<'_>, at: chrono::DateTime<chrono::Utc>) -> String {
        let (allowed, result) = match outcome {
            Outcome::Ok => ("ALLOWED", "OK".to_owned()),
            Outcome::Error(e) => ("ALLOWED", format!("ERROR:{}: [ {} ]", e.code(), e.params().join("; "))),
            Outcome::Denied => ("DENIED", String::new()),
        };
        let record = SExpr::List(vec![
            SExpr::str(p.who.trackid.as_str()),
            SExpr::str(p.who.subject.as_str()),
            SExpr::str(p.who.name.as_str()),
            SExpr::str(allowed),
            SExpr::str(result),
            SExpr::str(p.kind.as_str()),
            SExpr::str(p.action.as_str()),
            SExpr::List(p.args.clone()),
        ]);
        let serial = self.serial.fetch_add(1, Ordering::Relaxed) + 1;
        let prefix = format!(
            "[{}|audit|{}|{serial} {}|{}|audit] ",
            at.format("%Y%m%dT%H:%M:%S%.3fZ"),
            clean(hostname),
            clean(&p.action),
            clean(&p.action),
        );
        let mut line = prefix;
        line.push_str(&record.text());
        line.replace(['\n', '\r'], " ")
    }

    /// The records at or after `since` (the log's timestamp form, see
    /// [`since_of_iso8601`]), oldest first.
    pub fn lines_since(&self, since: &str) -> Vec<String> {
        self.file.lines_since(since)
    }
}

/// A prefix field: no `|`, `]` or line breaks.
fn clean(s: &str) -> String {
    s.replace(['|', ']', '\n', '\r'], "_")
}

#[cfg(test)]
mod tests;
