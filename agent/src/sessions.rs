//! Sessions and the root password, and who a session is: the local superuser, or a
//! directory user with the permissions of their subjects' roles (`rbac`, `auth`).
//!
//! Sessions are `session` objects in the store (a class that is never written to disk). The
//! root password lives only as an argon2 hash in the state dir.

use crate::auth::ldap::{DirError, Directory};
use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::objects::{create, destroy, new_ref, new_uuid, set_field};
use crate::rbac::roles::{caller_for, grant_from_labels, lookup as role_lookup};
use crate::rbac::Caller;
use crate::schema::{class_ids, fields};
use crate::store::Store;
use crate::value::{default_object, now, Object, Value};
use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use parking_lot::{Mutex, RwLock};
use scratch_argon2::ScratchArgon2;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

mod scratch_argon2;
#[cfg(test)]
mod tests;

/// The `session` messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::session, "login_with_password", |agent, ctx, c| login(
            &agent, &ctx, &c
        )
        .await),
        entry!(
            class_ids::session,
            "slave_local_login_with_password",
            |agent, ctx, c| { login(&agent, &ctx, &c).await }
        ),
        entry!(class_ids::session, "logout", |agent, _, c| logout(&agent, &c).await),
        entry!(class_ids::session, "local_logout", |agent, _, c| logout(&agent, &c)
            .await),
        entry!(class_ids::session, "change_password", |agent, _, c| {
            agent.sessions.change_password(c.str_arg(0), c.str_arg(1))?;
            Ok(Value::None)
        }),
        entry!(class_ids::session, "get_all_subject_identifiers", |agent, _, _c| {
            Ok(agent.sessions.all_subject_identifiers(&agent.store))
        }),
        entry!(class_ids::session, "logout_subject_identifier", |agent, _, c| {
            agent
                .sessions
                .logout_subject_identifier(&agent.store, c.session_ref(), c.str_arg(0))
                .await?;
            Ok(Value::None)
        }),
    ]
}

async fn login(agent: &crate::Agent, ctx: &crate::call::CallCtx, c: &crate::call::Call) -> Result<Value, ApiError> {
    // A password login on a pool member is the master's to answer (XenAPI clients follow
    // `HOST_IS_SLAVE` to it); `slave_local_login_with_password` is this host's.
    if c.message.name == "login_with_password" {
        crate::pool::require_master(agent)?;
    }
    // `slave_local_login_with_password` has no version or originator.
    let originator = c.str_arg(3);
    let r = agent
        .sessions
        .login(
            &agent.store,
            &agent.host,
            c.str_arg(0),
            c.str_arg(1),
            originator,
            ctx.trusted_root,
        )
        .await?;
    Ok(Value::reference(r))
}

async fn logout(agent: &crate::Agent, c: &crate::call::Call) -> Result<Value, ApiError> {
    agent.sessions.logout(&agent.store, c.session_ref()).await?;
    Ok(Value::None)
}

/// How the reference names a session in errors and logs without giving the session away:
/// `trackid=` and the MD5 of its ref, in hex.
pub fn trackid(session: &str) -> String {
    use md5::{Digest, Md5};
    let digest = Md5::digest(session.as_bytes());
    let mut out = String::with_capacity(8 + 32);
    out.push_str("trackid=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Sessions one originator may hold before its oldest is evicted.
pub const MAX_SESSIONS_PER_ORIGINATOR: usize = 500;
/// Sessions idle this long (seconds) are destroyed.
pub const SESSION_IDLE_TIMEOUT: i64 = 24 * 3600;
/// A directory user's session is checked against the directory again this long (seconds)
/// after its last check (the reference's 30 minutes)…
pub const DIRECTORY_REVALIDATION: i64 = 30 * 60;
/// …plus up to this long, drawn per session.
pub const DIRECTORY_REVALIDATION_SPREAD: i64 = 10 * 60;

/// Failed logins within [`FAILED_LOGIN_WINDOW`] before each further failure is delayed.
pub const FAILED_LOGINS_BEFORE_DELAY: usize = 10;
/// How far back failed logins count.
pub const FAILED_LOGIN_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// The delay added to a failed login once there were too many.
pub const FAILED_LOGIN_DELAY: std::time::Duration = std::time::Duration::from_secs(2);

/// Failures setting up authentication.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A file could not be read or written.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Hashing failed.
    #[error("hashing the password: {0}")]
    Hash(String),
    /// The given password file is empty.
    #[error("the root password file {0} is empty")]
    EmptyPassword(String),
}

/// Checks passwords on one dedicated thread: argon2 is deliberately slow and memory-hungry
/// (19 MiB per check), so checks run one at a time, off the async workers; each check maps its
/// working memory and unmaps it when done (see [`ScratchArgon2`]), so none stays resident.
///
/// After a password has passed argon2 once, a keyed BLAKE2 tag of it (key random per process,
/// never written anywhere) lets the same password pass again in microseconds: clients that log
/// in for every task do not pay argon2 each time, while the stored hash stays argon2.
struct Verifier {
    tx: crossbeam_channel::Sender<(String, String, tokio::sync::oneshot::Sender<bool>)>,
    key: [u8; 32],
    accepted: Mutex<Option<(String, Vec<u8>)>>,
}

impl Verifier {
    fn start() -> Result<Verifier, AuthError> {
        let (tx, rx) = crossbeam_channel::unbounded::<(String, String, tokio::sync::oneshot::Sender<bool>)>();
        std::thread::Builder::new()
            .name("password-check".into())
            .spawn(move || {
                for (hash, pw, reply) in rx {
                    let ok = PasswordHash::new(&hash)
                        .map(|parsed| ScratchArgon2.verify_password(pw.as_bytes(), &parsed).is_ok())
                        .unwrap_or(false);
                    let _ = reply.send(ok);
                }
            })
            .map_err(|e| AuthError::Io {
                what: "starting the password checker",
                path: String::new(),
                source: e,
            })?;
        use rand::RngCore;
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Ok(Verifier {
            tx,
            key,
            accepted: Mutex::new(None),
        })
    }

    fn tag(&self, pw: &str) -> Vec<u8> {
        use blake2::digest::{KeyInit, Mac};
        match <blake2::Blake2bMac512 as KeyInit>::new_from_slice(&self.key) {
            Ok(mut mac) => {
                mac.update(pw.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        }
    }

    async fn verify(&self, hash: String, pw: String) -> bool {
        let tag = self.tag(&pw);
        if let Some((h, t)) = self.accepted.lock().as_ref() {
            if *h == hash && !tag.is_empty() && constant_time_eq(t, &tag) {
                return true;
            }
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        if self.tx.send((hash.clone(), pw, reply)).is_err() {
            return false;
        }
        let ok = rx.await.unwrap_or(false);
        if ok && !tag.is_empty() {
            *self.accepted.lock() = Some((hash, tag));
        }
        ok
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A live session: its activity, who it is, and (for a directory user) the subject
/// identifiers it logged in through (the user's and its groups').
struct Live {
    last_active: AtomicI64,
    caller: Caller,
    sids: Arc<[String]>,
}

impl Live {
    fn new(t: i64, caller: Caller, sids: Vec<String>) -> Live {
        Live {
            last_active: AtomicI64::new(t),
            caller,
            sids: Arc::from(sids),
        }
    }
}

/// Tasks remembered beyond this many are pruned of those that are gone.
const TASK_OWNERS_PRUNE_AT: usize = 4096;

/// The file the directory service account's password is kept in (mode 0600).
const DIRECTORY_PASSWORD_FILE: &str = "external-auth-password";

/// Who may log in, and the live sessions' activity.
pub struct Sessions {
    verifier: Verifier,
    hash_path: PathBuf,
    state_dir: PathBuf,
    hash: RwLock<String>,
    live: RwLock<HashMap<String, Live, crate::FastHash>>,
    login_lock: Mutex<()>,
    failures: Mutex<std::collections::VecDeque<std::time::Instant>>,
    /// The directory in use, once built from the host's record.
    directory: RwLock<Option<Arc<Directory>>>,
    /// Enabling and disabling external authentication, one at a time.
    pub(crate) auth_change: tokio::sync::Mutex<()>,
    /// Who created each task made through the API (subject identifier; empty for root).
    task_owners: Mutex<HashMap<String, Arc<str>, crate::FastHash>>,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AuthError + 'a {
    move |source| AuthError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// argon2id cost of new hashes: 7 MiB, 5 passes, 1 lane — one of the settings OWASP's password
/// storage guidance lists as equal in strength to 19 MiB × 2 passes, chosen for the smaller
/// memory spike per check on a dom0, whose memory is scarce. Hashes made with other
/// parameters (they are in the stored string) still verify.
const NEW_HASH_COST: (u32, u32, u32) = (7 * 1024, 5, 1);

fn hash_password(pw: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    let (m, t, p) = NEW_HASH_COST;
    let params = argon2::Params::new(m, t, p, None).map_err(|e| AuthError::Hash(e.to_string()))?;
    ScratchArgon2
        .hash_password_customized(pw.as_bytes(), None, None, params, &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

fn write_private(path: &Path, contents: &str) -> Result<(), AuthError> {
    crate::fsutil::write_private(path, contents.as_bytes()).map_err(io_err("writing", path))
}

impl Sessions {
    /// Loads the root password hash from `state_dir`, creating it on first start from
    /// `password_file` or, without one, from a generated password written to
    /// `<state_dir>/root-password` (mode 0600).
    pub fn open(state_dir: &Path, password_file: Option<&Path>) -> Result<Sessions, AuthError> {
        let hash_path = state_dir.join("root-password.hash");
        let hash = match std::fs::read_to_string(&hash_path) {
            Ok(h) => h.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pw = match password_file {
                    Some(p) => {
                        let text = std::fs::read_to_string(p).map_err(io_err("reading", p))?;
                        let pw = text.lines().next().unwrap_or("").to_owned();
                        if pw.is_empty() {
                            return Err(AuthError::EmptyPassword(p.display().to_string()));
                        }
                        pw
                    }
                    None => {
                        use rand::Rng;
                        let pw: String = rand::thread_rng()
                            .sample_iter(&rand::distributions::Alphanumeric)
                            .take(20)
                            .map(char::from)
                            .collect();
                        let path = state_dir.join("root-password");
                        write_private(&path, &format!("{pw}\n"))?;
                        tracing::info!(path = %path.display(), "generated a root password");
                        pw
                    }
                };
                let h = hash_password(&pw)?;
                write_private(&hash_path, &format!("{h}\n"))?;
                h
            }
            Err(e) => return Err(io_err("reading", &hash_path)(e)),
        };
        Ok(Sessions {
            verifier: Verifier::start()?,
            hash_path,
            state_dir: state_dir.to_path_buf(),
            hash: RwLock::new(hash),
            live: RwLock::new(HashMap::default()),
            login_lock: Mutex::new(()),
            failures: Mutex::new(std::collections::VecDeque::new()),
            directory: RwLock::new(None),
            auth_change: tokio::sync::Mutex::new(()),
            task_owners: Mutex::new(HashMap::default()),
        })
    }

    fn password_ok(&self, pw: &str) -> bool {
        let hash = self.hash.read().clone();
        match PasswordHash::new(&hash) {
            Ok(parsed) => ScratchArgon2.verify_password(pw.as_bytes(), &parsed).is_ok(),
            Err(_) => false,
        }
    }

    /// Checks credentials and opens a session. `trusted_root` is a uid-0 peer on the unix
    /// socket, which logs in as root whatever the password. With external authentication
    /// enabled, a name other than root (or root with a password that is not root's) is a
    /// directory user's.
    pub async fn login(
        &self,
        store: &Store,
        host: &str,
        user: &str,
        password: &str,
        originator: &str,
        trusted_root: bool,
    ) -> Result<String, ApiError> {
        if !trusted_root {
            let root_ok = user == "root" && {
                let hash = self.hash.read().clone();
                self.verifier.verify(hash, password.to_owned()).await
            };
            if !root_ok {
                let auth_type = host_auth_type(store, host);
                if auth_type.is_empty() {
                    return Err(self
                        .refuse(user, originator, ApiError::SessionAuthenticationFailed {})
                        .await);
                }
                return match self.login_external(store, host, user, password, originator).await {
                    Ok(r) => Ok(r),
                    Err(e) => Err(self.refuse(user, originator, e).await),
                };
            }
        }
        let t = now();
        let mut s = self.session_object(host, originator, t);
        s.set(fields::session::is_local_superuser, Value::Bool(true));
        s.set(fields::session::auth_user_name, Value::str("root"));
        self.open_session(store, s, Live::new(t, Caller::superuser(), Vec::new()))
            .await
    }

    /// Opens a new session for the same user as `session` (its subject, roles and identity),
    /// without a password: `host.migrate_receive` hands one to the migrating host, as the
    /// reference does.
    pub async fn login_like(
        &self,
        store: &Store,
        host: &str,
        session: &str,
        originator: &str,
    ) -> Result<String, ApiError> {
        let caller = self.validate_caller(store, session)?;
        let Some(old) = store.get(class_ids::session, session) else {
            return Err(ApiError::SessionInvalid {
                handle: session.to_owned(),
            });
        };
        let sids = self
            .live
            .read()
            .get(session)
            .map(|l| l.sids.to_vec())
            .unwrap_or_default();
        let t = now();
        let mut s = self.session_object(host, originator, t);
        use fields::session as f;
        for field in [
            f::is_local_superuser,
            f::subject,
            f::auth_user_sid,
            f::auth_user_name,
            f::rbac_permissions,
        ] {
            s.set(field, old.get(field).clone());
        }
        self.open_session(store, s, Live::new(t, caller, sids)).await
    }

    /// Notes a refused login (slowing down guessing) and hands back its error.
    async fn refuse(&self, user: &str, originator: &str, e: ApiError) -> ApiError {
        let recent = self.note_failure();
        tracing::warn!(
            user,
            originator,
            recent_failures = recent,
            code = e.code(),
            "failed login"
        );
        if recent > FAILED_LOGINS_BEFORE_DELAY {
            // Slow down password guessing; the wait holds no thread.
            tokio::time::sleep(FAILED_LOGIN_DELAY).await;
        }
        e
    }

    /// A new session record of this host, not yet stored.
    fn session_object(&self, host: &str, originator: &str, t: i64) -> Object {
        let reference = new_ref();
        let mut s = default_object(class_ids::session, &reference);
        s.set(fields::session::uuid, Value::str(new_uuid()));
        s.set(fields::session::this_host, Value::reference(host));
        s.set(fields::session::this_user, Value::null_ref());
        s.set(fields::session::last_active, Value::DateTime(t));
        s.set(fields::session::validation_time, Value::DateTime(t));
        s.set(fields::session::originator, Value::str(originator));
        s
    }

    /// Stores a new session (evicting its originator's oldest beyond the limit).
    async fn open_session(&self, store: &Store, s: Object, live: Live) -> Result<String, ApiError> {
        let reference = s.reference.clone();
        let originator = s.str_field("originator").to_owned();
        let _serial = self.login_lock.lock();
        let mut mine: Vec<(i64, String)> = store
            .all(class_ids::session)
            .iter()
            .filter(|o| o.str_field("originator") == originator)
            .map(|o| (self.last_active_of(o), o.reference.clone()))
            .collect();
        mine.sort();
        let evict: Vec<String> = if mine.len() >= MAX_SESSIONS_PER_ORIGINATOR {
            mine.iter()
                .take(mine.len() + 1 - MAX_SESSIONS_PER_ORIGINATOR)
                .map(|(_, r)| r.clone())
                .collect()
        } else {
            Vec::new()
        };
        drop(_serial);
        store
            .write(|tx| {
                for r in &evict {
                    destroy(tx, class_ids::session, r)?;
                }
                create(tx, s.clone())
            })
            .await?;
        {
            let mut la = self.live.write();
            for r in &evict {
                la.remove(r);
            }
            la.insert(reference.clone(), live);
        }
        Ok(reference)
    }

    /// A directory user's login: the password is the directory's to check; the user (or a
    /// group they are in) must be a subject of the pool, and their subjects' roles must give
    /// them some permission.
    async fn login_external(
        &self,
        store: &Store,
        host: &str,
        user: &str,
        password: &str,
        originator: &str,
    ) -> Result<String, ApiError> {
        let authz = |msg: String| ApiError::SessionAuthorizationFailed {
            username: user.to_owned(),
            msg,
        };
        let dir = self.directory(store, host).map_err(|e| authz(e.to_string()))?;
        let login = match dir.login(user, password).await {
            Ok(l) => l,
            Err(DirError::AuthFailure(why)) => {
                tracing::info!(user, why, "directory login refused");
                return Err(ApiError::SessionAuthenticationFailed {});
            }
            Err(DirError::NotFound) => {
                return Err(authz(format!("user {user} not found in external directory")));
            }
            Err(e) => return Err(authz(e.to_string())),
        };
        let (sid, info, groups) = (login.id, login.information, login.groups);
        if suspended(&info) {
            return Err(authz(format!(
                "User {user} (subject_id {sid}) suspended in external directory"
            )));
        }
        let mut closure = vec![sid.clone()];
        closure.extend(groups);
        let subjects: Vec<Arc<Object>> = store
            .all(class_ids::subject)
            .into_iter()
            .filter(|s| closure.iter().any(|id| id == s.str_field("subject_identifier")))
            .collect();
        let Some(first) = subjects.first() else {
            return Err(authz(format!(
                "Subject {user} (identifier {sid}) has no access rights in this pool"
            )));
        };
        let held: Vec<_> = subjects
            .iter()
            .flat_map(|s| s.get(fields::subject::roles).as_set().to_vec())
            .filter_map(|r| r.as_ref_str().and_then(role_lookup))
            .collect();
        let (caller, labels) = caller_for(&held, &sid);
        if labels.is_empty() {
            return Err(ApiError::RbacPermissionDenied {
                permission: "session.login_with_password".into(),
                message: format!("Subject {user} (identifier {sid}) has no roles in this pool"),
            });
        }
        let name = info
            .iter()
            .find(|(k, _)| k == "subject-name")
            .map_or(user, |(_, v)| v.as_str());
        let t = now();
        let mut s = self.session_object(host, originator, t);
        s.set(fields::session::is_local_superuser, Value::Bool(false));
        s.set(fields::session::subject, Value::reference(first.reference.as_str()));
        s.set(fields::session::auth_user_sid, Value::str(sid.as_str()));
        s.set(fields::session::auth_user_name, Value::str(name));
        s.set(
            fields::session::rbac_permissions,
            Value::set(labels.into_iter().map(Value::str).collect()),
        );
        tracing::info!(user, sid, originator, "directory user logged in");
        self.open_session(store, s, Live::new(t, caller, closure)).await
    }

    /// Records a failed login; returns how many happened within the window.
    fn note_failure(&self) -> usize {
        let now = std::time::Instant::now();
        let mut f = self.failures.lock();
        while f.front().is_some_and(|t| now.duration_since(*t) > FAILED_LOGIN_WINDOW) {
            f.pop_front();
        }
        f.push_back(now);
        f.len()
    }

    fn last_active_of(&self, o: &crate::value::Object) -> i64 {
        self.live
            .read()
            .get(&o.reference)
            .map(|a| a.last_active.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Checks a session and notes its activity.
    pub fn validate(&self, store: &Store, session: &str) -> Result<(), ApiError> {
        self.validate_caller(store, session).map(|_| ())
    }

    /// Checks a session, notes its activity, and says who it is.
    pub fn validate_caller(&self, store: &Store, session: &str) -> Result<Caller, ApiError> {
        let Some(obj) = store.get(class_ids::session, session) else {
            return Err(ApiError::SessionInvalid {
                handle: session.to_owned(),
            });
        };
        if let Some(l) = self.live.read().get(session) {
            l.last_active.store(now(), Ordering::Relaxed);
            return Ok(l.caller.clone());
        }
        // A session this process did not open itself: who it is, from its record.
        if obj.get(fields::session::is_local_superuser).as_bool() == Some(true) {
            return Ok(Caller::superuser());
        }
        let labels = obj.get(fields::session::rbac_permissions).as_set();
        Ok(Caller {
            superuser: false,
            perms: grant_from_labels(labels.iter().filter_map(Value::as_str)),
            sid: Arc::from(obj.str_field("auth_user_sid")),
        })
    }

    /// Ends a session.
    pub async fn logout(&self, store: &Store, session: &str) -> Result<(), ApiError> {
        self.end(store, &[session.to_owned()]).await
    }

    /// Ends sessions (those already gone are skipped).
    async fn end(&self, store: &Store, sessions: &[String]) -> Result<(), ApiError> {
        {
            let mut live = self.live.write();
            for s in sessions {
                live.remove(s);
            }
        }
        store
            .write(|tx| {
                for s in sessions {
                    if tx.get(class_ids::session, s).is_some() {
                        destroy(tx, class_ids::session, s)?;
                    }
                }
                Ok(())
            })
            .await
    }

    /// Destroys sessions idle for longer than the timeout, and the directory users' sessions
    /// the directory no longer lets in (see [`Sessions::revalidate_directory_sessions`]);
    /// returns how many.
    pub async fn expire_idle(&self, store: &Store) -> usize {
        let revoked = self.revalidate_directory_sessions(store, now()).await;
        revoked + self.expire_idle_only(store).await
    }

    async fn expire_idle_only(&self, store: &Store) -> usize {
        let cutoff = now() - SESSION_IDLE_TIMEOUT;
        let stale: Vec<String> = self
            .live
            .read()
            .iter()
            .filter(|(_, a)| a.last_active.load(Ordering::Relaxed) < cutoff)
            .map(|(r, _)| r.clone())
            .collect();
        for r in &stale {
            let _ = self.logout(store, r).await;
        }
        stale.len()
    }

    /// Checks the directory users' sessions against the directory again once they are
    /// [`DIRECTORY_REVALIDATION`] old (plus up to [`DIRECTORY_REVALIDATION_SPREAD`], so the
    /// directory is not asked about every session at once), as the reference does: a user
    /// the directory no longer knows, whose account is suspended, or whom no subject of the
    /// pool lets in any more (removed from a group) loses the session; the others' are
    /// revalidated (`validation_time`, and `subject` if another subject now lets them in).
    /// With external authentication disabled every directory session ends. A directory that
    /// cannot be asked leaves the sessions as they are, to be checked at the next round.
    /// Returns how many sessions ended.
    pub async fn revalidate_directory_sessions(&self, store: &Store, at: i64) -> usize {
        use rand::Rng;
        let external = Self::external_sessions(store);
        if external.is_empty() {
            return 0;
        }
        let Some(host) = store.all(class_ids::host).first().map(|h| h.reference.clone()) else {
            return 0;
        };
        if host_auth_type(store, &host).is_empty() {
            return self.end_external(store).await.unwrap_or(0);
        }
        let dir = match self.directory(store, &host) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot revalidate directory sessions");
                return 0;
            }
        };
        // One question to the directory per user, whatever their number of sessions.
        let mut verdicts: HashMap<String, Option<(Vec<String>, String)>> = HashMap::new();
        let mut doomed = Vec::new();
        let mut renewed = Vec::new();
        for s in external {
            let validated = match s.get(fields::session::validation_time) {
                Value::DateTime(t) => *t,
                _ => 0,
            };
            let spread = rand::thread_rng().gen_range(0..DIRECTORY_REVALIDATION_SPREAD);
            if at <= validated + DIRECTORY_REVALIDATION + spread {
                continue;
            }
            let sid = s.str_field("auth_user_sid").to_owned();
            let verdict = match verdicts.get(&sid) {
                Some(v) => v.clone(),
                None => match self.recheck(&dir, store, &sid).await {
                    Ok(v) => {
                        verdicts.insert(sid.clone(), v.clone());
                        v
                    }
                    Err(e) => {
                        tracing::warn!(sid, error = %e, "cannot revalidate a directory session");
                        continue;
                    }
                },
            };
            match verdict {
                None => doomed.push(s.reference.clone()),
                Some((closure, subject)) => renewed.push((s.reference.clone(), closure, subject)),
            }
        }
        if !renewed.is_empty() {
            let written = store
                .write(|tx| {
                    for (s, _, subject) in &renewed {
                        if tx.get(class_ids::session, s).is_some() {
                            set_field(
                                tx,
                                class_ids::session,
                                s,
                                fields::session::validation_time,
                                Value::DateTime(at),
                            )?;
                            set_field(
                                tx,
                                class_ids::session,
                                s,
                                fields::session::subject,
                                Value::reference(subject.as_str()),
                            )?;
                        }
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = written {
                tracing::warn!(error = %e, "could not record revalidated sessions");
            }
            let mut live = self.live.write();
            for (s, closure, _) in renewed {
                if let Some(l) = live.get_mut(&s) {
                    l.sids = Arc::from(closure);
                }
            }
        }
        if !doomed.is_empty() {
            tracing::info!(
                sessions = doomed.len(),
                "the directory no longer lets these sessions' users in"
            );
        }
        match self.end(store, &doomed).await {
            Ok(()) => doomed.len(),
            Err(_) => 0,
        }
    }

    /// What the directory says of a user now: `None` when they may not stay (unknown,
    /// suspended, no subject lets them in), else their identifiers and the subject that
    /// lets them in; an error when the directory could not be asked.
    async fn recheck(
        &self,
        dir: &Directory,
        store: &Store,
        sid: &str,
    ) -> Result<Option<(Vec<String>, String)>, DirError> {
        let info = match dir.subject_information(sid).await {
            Ok(i) => i,
            Err(DirError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        if suspended(&info) {
            return Ok(None);
        }
        let groups = match dir.group_membership(sid).await {
            Ok(g) => g,
            Err(DirError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut closure = vec![sid.to_owned()];
        closure.extend(groups);
        let subject = store
            .all(class_ids::subject)
            .into_iter()
            .find(|s| closure.iter().any(|id| id == s.str_field("subject_identifier")));
        Ok(subject.map(|s| (closure, s.reference.clone())))
    }

    /// The directory users' sessions: `(ref, record)`.
    fn external_sessions(store: &Store) -> Vec<Arc<Object>> {
        store
            .all(class_ids::session)
            .into_iter()
            .filter(|s| s.get(fields::session::is_local_superuser).as_bool() != Some(true))
            .collect()
    }

    /// The subject identifier of a session's subject, if that subject still exists.
    fn subject_identifier_of(store: &Store, session: &Object) -> Option<String> {
        let subject = session.get(fields::session::subject).as_ref_str()?;
        store
            .get(class_ids::subject, subject)
            .map(|s| s.str_field("subject_identifier").to_owned())
    }

    /// `session.get_all_subject_identifiers`: the subject identifiers of the directory
    /// users logged in, and those of the subjects they logged in through.
    pub fn all_subject_identifiers(&self, store: &Store) -> Value {
        let mut ids: Vec<String> = Vec::new();
        let sessions = Self::external_sessions(store);
        for s in &sessions {
            ids.push(s.str_field("auth_user_sid").to_owned());
        }
        for s in &sessions {
            if let Some(id) = Self::subject_identifier_of(store, s).filter(|i| !i.is_empty()) {
                ids.push(id);
            }
        }
        let mut seen = std::collections::HashSet::new();
        ids.retain(|i| seen.insert(i.clone()));
        Value::set(ids.into_iter().map(Value::str).collect())
    }

    /// `session.logout_subject_identifier`: ends every directory user's session that
    /// authenticated as the subject or through it, but the caller's own.
    pub async fn logout_subject_identifier(&self, store: &Store, current: &str, sid: &str) -> Result<(), ApiError> {
        let doomed: Vec<String> = Self::external_sessions(store)
            .iter()
            .filter(|s| s.reference != current)
            .filter(|s| {
                s.str_field("auth_user_sid") == sid || Self::subject_identifier_of(store, s).as_deref() == Some(sid)
            })
            .map(|s| s.reference.clone())
            .collect();
        tracing::info!(sessions = doomed.len(), "logging out a subject identifier's sessions");
        self.end(store, &doomed).await
    }

    /// Ends the directory users' sessions that no subject of the pool lets in any more (after
    /// a subject is removed); those still let in through another subject now name it.
    pub async fn end_unbacked(&self, store: &Store) -> Result<usize, ApiError> {
        let subjects = store.all(class_ids::subject);
        let mut doomed = Vec::new();
        let mut renamed = Vec::new();
        for s in Self::external_sessions(store) {
            let sids: Vec<String> = match self.live.read().get(&s.reference) {
                Some(l) => l.sids.to_vec(),
                None => vec![s.str_field("auth_user_sid").to_owned()],
            };
            let backing = subjects
                .iter()
                .find(|subj| sids.iter().any(|id| id == subj.str_field("subject_identifier")));
            match backing {
                None => doomed.push(s.reference.clone()),
                Some(b) if s.get(fields::session::subject).as_ref_str() != Some(b.reference.as_str()) => {
                    renamed.push((s.reference.clone(), b.reference.clone()));
                }
                Some(_) => {}
            }
        }
        if !renamed.is_empty() {
            store
                .write(|tx| {
                    for (s, subj) in &renamed {
                        if tx.get(class_ids::session, s).is_some() {
                            set_field(
                                tx,
                                class_ids::session,
                                s,
                                fields::session::subject,
                                Value::reference(subj.as_str()),
                            )?;
                        }
                    }
                    Ok(())
                })
                .await?;
        }
        self.end(store, &doomed).await?;
        Ok(doomed.len())
    }

    /// Ends every directory user's session (external authentication was disabled).
    pub async fn end_external(&self, store: &Store) -> Result<usize, ApiError> {
        let doomed: Vec<String> = Self::external_sessions(store)
            .iter()
            .map(|s| s.reference.clone())
            .collect();
        self.end(store, &doomed).await?;
        Ok(doomed.len())
    }

    /// The directory the host is configured for: `AUTH_IS_DISABLED` without one,
    /// `AUTH_UNKNOWN_TYPE` for a type this daemon has no directory for.
    pub(crate) fn directory(&self, store: &Store, host: &str) -> Result<Arc<Directory>, ApiError> {
        let h = store
            .get(class_ids::host, host)
            .ok_or_else(|| ApiError::handle_invalid("host", host))?;
        let auth_type = h.str_field("external_auth_type");
        if auth_type.is_empty() {
            return Err(ApiError::AuthIsDisabled {});
        }
        if auth_type != crate::auth::ldap::AUTH_TYPE {
            return Err(ApiError::AuthUnknownType {
                r#type: auth_type.to_owned(),
            });
        }
        if let Some(d) = self.directory.read().as_ref() {
            return Ok(d.clone());
        }
        let mut config: std::collections::BTreeMap<String, String> = h
            .get(fields::host::external_auth_configuration)
            .as_map()
            .iter()
            .map(|(k, v)| (k.key_text(), v.key_text()))
            .collect();
        if let Some(pw) = self.directory_password()? {
            config.insert("pass".into(), pw);
        }
        let settings = crate::auth::ldap::Settings::parse(h.str_field("external_auth_service_name"), &config)
            .map_err(|e| ApiError::AuthServiceError { message: e.to_string() })?;
        let d = Arc::new(Directory::new(settings).map_err(crate::auth::service_error)?);
        *self.directory.write() = Some(d.clone());
        Ok(d)
    }

    /// Puts a directory in use (after enabling it) or none (after disabling), keeping or
    /// removing the service account's password.
    pub(crate) fn set_directory(&self, d: Option<(Arc<Directory>, String)>) -> Result<(), ApiError> {
        let path = self.state_dir.join(DIRECTORY_PASSWORD_FILE);
        match &d {
            Some((_, pw)) if !pw.is_empty() => {
                write_private(&path, &format!("{pw}\n")).map_err(ApiError::internal)?;
            }
            _ => match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ApiError::internal(format!("removing {}: {e}", path.display()))),
            },
        }
        *self.directory.write() = d.map(|(dir, _)| dir);
        Ok(())
    }

    fn directory_password(&self) -> Result<Option<String>, ApiError> {
        let path = self.state_dir.join(DIRECTORY_PASSWORD_FILE);
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(Some(t.strip_suffix('\n').unwrap_or(&t).to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ApiError::internal(format!("reading {}: {e}", path.display()))),
        }
    }

    /// Remembers who created a task made through the API.
    pub fn note_task_owner(&self, store: &Store, task: &str, sid: &str) {
        let mut owners = self.task_owners.lock();
        if owners.len() >= TASK_OWNERS_PRUNE_AT {
            owners.retain(|t, _| store.get(class_ids::task, t).is_some());
        }
        owners.insert(task.to_owned(), Arc::from(sid));
    }

    /// Who created a task (the subject identifier; empty for root), if it was made through
    /// the API.
    pub fn task_owner(&self, task: &str) -> Option<Arc<str>> {
        self.task_owners.lock().get(task).cloned()
    }

    /// Forgets a destroyed task's owner.
    pub fn forget_task(&self, task: &str) {
        self.task_owners.lock().remove(task);
    }

    /// Changes the root password after checking the old one.
    pub fn change_password(&self, old: &str, new: &str) -> Result<(), ApiError> {
        if !self.password_ok(old) {
            return Err(ApiError::SessionAuthenticationFailed {});
        }
        if new.is_empty() {
            return Err(ApiError::invalid_value("new_pwd", ""));
        }
        let h = hash_password(new).map_err(ApiError::internal)?;
        write_private(&self.hash_path, &format!("{h}\n")).map_err(ApiError::internal)?;
        *self.hash.write() = h;
        Ok(())
    }
}

/// The host's `external_auth_type` (empty: disabled).
pub(crate) fn host_auth_type(store: &Store, host: &str) -> String {
    store
        .get(class_ids::host, host)
        .map(|h| h.str_field("external_auth_type").to_owned())
        .unwrap_or_default()
}

/// Whether a directory user's information says they may not log in: any suspension flag
/// that is not explicitly false (a missing one counts as set, as in the reference).
fn suspended(info: &[(String, String)]) -> bool {
    [
        "subject-account-disabled",
        "subject-account-expired",
        "subject-account-locked",
        "subject-password-expired",
    ]
    .iter()
    .any(|k| {
        info.iter()
            .find(|(key, _)| key == k)
            .is_none_or(|(_, v)| !v.eq_ignore_ascii_case("false"))
    })
}
