//! Sessions and the root password.
//!
//! Sessions are `session` objects in the store (a class that is never written to disk). The
//! root password lives only as an argon2 hash in the state dir.

use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::objects::{create, destroy, new_ref, new_uuid};
use crate::schema::{class_ids, fields};
use crate::store::Store;
use crate::value::{default_object, now, Value};
use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use parking_lot::{Mutex, RwLock};
use scratch_argon2::ScratchArgon2;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};

mod scratch_argon2;

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
        entry!(class_ids::session, "get_all_subject_identifiers", |_agent, _, _c| {
            Ok(Value::set(Vec::new()))
        }),
    ]
}

async fn login(agent: &crate::Agent, ctx: &crate::call::CallCtx, c: &crate::call::Call) -> Result<Value, ApiError> {
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

/// Who may log in, and the live sessions' activity.
pub struct Sessions {
    verifier: Verifier,
    hash_path: PathBuf,
    hash: RwLock<String>,
    last_active: RwLock<HashMap<String, AtomicI64, crate::FastHash>>,
    login_lock: Mutex<()>,
    failures: Mutex<std::collections::VecDeque<std::time::Instant>>,
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
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("writing", &tmp))?;
    f.write_all(contents.as_bytes()).map_err(io_err("writing", &tmp))?;
    f.sync_all().map_err(io_err("syncing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("renaming", path))
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
            hash: RwLock::new(hash),
            last_active: RwLock::new(HashMap::default()),
            login_lock: Mutex::new(()),
            failures: Mutex::new(std::collections::VecDeque::new()),
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
    /// socket, which logs in as root whatever the password.
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
            let ok = user == "root" && {
                let hash = self.hash.read().clone();
                self.verifier.verify(hash, password.to_owned()).await
            };
            if !ok {
                let recent = self.note_failure();
                tracing::warn!(user, originator, recent_failures = recent, "failed login");
                if recent > FAILED_LOGINS_BEFORE_DELAY {
                    // Slow down password guessing; the wait holds no thread.
                    tokio::time::sleep(FAILED_LOGIN_DELAY).await;
                }
                return Err(ApiError::SessionAuthenticationFailed {});
            }
        }
        let reference = new_ref();
        let t = now();
        let mut s = default_object(class_ids::session, &reference);
        s.set(fields::session::uuid, Value::str(new_uuid()));
        s.set(fields::session::this_host, Value::reference(host));
        s.set(fields::session::this_user, Value::null_ref());
        s.set(fields::session::last_active, Value::DateTime(t));
        s.set(fields::session::validation_time, Value::DateTime(t));
        s.set(fields::session::is_local_superuser, Value::Bool(true));
        s.set(fields::session::auth_user_name, Value::str("root"));
        s.set(fields::session::originator, Value::str(originator));
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
                create(tx, s)
            })
            .await?;
        {
            let mut la = self.last_active.write();
            for r in &evict {
                la.remove(r);
            }
            la.insert(reference.clone(), AtomicI64::new(t));
        }
        Ok(reference)
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
        self.last_active
            .read()
            .get(&o.reference)
            .map(|a| a.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Checks a session and notes its activity.
    pub fn validate(&self, store: &Store, session: &str) -> Result<(), ApiError> {
        if store.get(class_ids::session, session).is_none() {
            return Err(ApiError::SessionInvalid {
                handle: session.to_owned(),
            });
        }
        if let Some(a) = self.last_active.read().get(session) {
            a.store(now(), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Ends a session.
    pub async fn logout(&self, store: &Store, session: &str) -> Result<(), ApiError> {
        self.last_active.write().remove(session);
        store
            .write(|tx| {
                if tx.get(class_ids::session, session).is_some() {
                    destroy(tx, class_ids::session, session)?;
                }
                Ok(())
            })
            .await
    }

    /// Destroys sessions idle for longer than the timeout; returns how many.
    pub async fn expire_idle(&self, store: &Store) -> usize {
        let cutoff = now() - SESSION_IDLE_TIMEOUT;
        let stale: Vec<String> = self
            .last_active
            .read()
            .iter()
            .filter(|(_, a)| a.load(Ordering::Relaxed) < cutoff)
            .map(|(r, _)| r.clone())
            .collect();
        for r in &stale {
            let _ = self.logout(store, r).await;
        }
        stale.len()
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
