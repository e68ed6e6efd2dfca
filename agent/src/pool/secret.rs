//! The pool secret: what hosts of one pool prove to each other on their private calls
//! (`xapid.pool.*`) and on calls forwarded to the host that must run them. It is never in the
//! pool database (any session could read it there): each host keeps it in
//! `<state dir>/pool-secret` (mode 0600). The master makes it when its database first goes into
//! etcd and hands it to each joining host; `pool.rotate_secret` replaces it on every host in three
//! phases: every host *accepts* the new one besides the old, then every host *sends* the new one
//! (still accepting the old), then every host *drops* the old; no host ever refuses a peer that
//! is one phase ahead or behind, and each phase can be run again (a rotation cut short is
//! finished by the next `pool.rotate_secret`).

use rand::RngCore;
use std::path::{Path, PathBuf};

/// The file holding the secret this host sends and accepts.
const CURRENT: &str = "pool-secret";
/// The file holding a second secret accepted during a rotation (the new one, then the old one).
const STAGED: &str = "pool-secret.also-accepted";

/// The HTTP header a forwarded call carries the pool secret in.
pub const HEADER: &str = "x-xapid-pool-secret";

/// Why the secret could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A file of the state dir.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

fn read(p: &Path) -> Result<Option<String>, SecretError> {
    match std::fs::read_to_string(p) {
        Ok(s) => Ok(Some(s.trim().to_owned()).filter(|s| !s.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SecretError::Io(p.to_owned(), e)),
    }
}

/// Writes `secret` to `name` under `dir` (0600, durably).
fn write(dir: &Path, name: &str, secret: &str) -> Result<(), SecretError> {
    let target = path(dir, name);
    crate::fsutil::write_private(&target, secret.as_bytes()).map_err(|e| SecretError::Io(target, e))
}

fn remove(dir: &Path, name: &str) -> Result<(), SecretError> {
    let p = path(dir, name);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SecretError::Io(p, e)),
    }
}

/// A new secret: 32 random bytes, as hex.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The secret this host sends to its peers, if it is in a pool.
pub fn current(dir: &Path) -> Result<Option<String>, SecretError> {
    read(&path(dir, CURRENT))
}

/// The secret being rotated to, while a rotation is under way.
pub fn staged(dir: &Path) -> Result<Option<String>, SecretError> {
    read(&path(dir, STAGED))
}

/// This host's secret, made if it has none yet (the master of a new pool).
pub fn ensure(dir: &Path) -> Result<String, SecretError> {
    if let Some(s) = current(dir)? {
        return Ok(s);
    }
    let s = generate();
    write(dir, CURRENT, &s)?;
    Ok(s)
}

/// Takes `secret` as this host's (a host joining a pool); any staged one is dropped.
pub fn install(dir: &Path, secret: &str) -> Result<(), SecretError> {
    write(dir, CURRENT, secret)?;
    remove(dir, STAGED)
}

/// Phase one of a rotation: `new` is accepted from now on, besides the current secret.
pub fn stage(dir: &Path, new: &str) -> Result<(), SecretError> {
    if current(dir)?.as_deref() == Some(new) {
        return Ok(());
    }
    write(dir, STAGED, new)
}

/// Phase two: `new` becomes the secret sent; the old one is still accepted.
pub fn send_new(dir: &Path, new: &str) -> Result<(), SecretError> {
    let old = current(dir)?;
    if old.as_deref() == Some(new) {
        return Ok(());
    }
    if let Some(old) = old {
        write(dir, STAGED, &old)?;
    }
    write(dir, CURRENT, new)
}

/// Phase three: only the secret sent is accepted.
pub fn drop_old(dir: &Path) -> Result<(), SecretError> {
    remove(dir, STAGED)
}

/// The master's note of a rotation under way: the new secret, kept until every host has
/// finished, so that a rotation cut short is finished with the same secret.
const ROTATING: &str = "pool-secret.rotating";

/// The new secret of the rotation under way, made now if none is.
pub fn rotation_begin(dir: &Path) -> Result<String, SecretError> {
    if let Some(s) = read(&path(dir, ROTATING))? {
        return Ok(s);
    }
    let s = generate();
    write(dir, ROTATING, &s)?;
    Ok(s)
}

/// The rotation is over on every host.
pub fn rotation_end(dir: &Path) -> Result<(), SecretError> {
    remove(dir, ROTATING)
}

/// A host leaving its pool forgets the pool's secret.
pub fn forget(dir: &Path) -> Result<(), SecretError> {
    remove(dir, ROTATING)?;
    remove(dir, STAGED)?;
    remove(dir, CURRENT)
}

/// Whether `presented` is this host's pool secret (current or staged).
pub fn accepted_by(agent: &crate::Agent, presented: &str) -> bool {
    accepts(&agent.state_dir, presented)
}

/// Whether `presented` is the current or the staged secret (compared in constant time).
pub fn accepts(dir: &Path, presented: &str) -> bool {
    if presented.is_empty() {
        return false;
    }
    [current(dir), staged(dir)]
        .into_iter()
        .filter_map(|s| s.ok().flatten())
        .any(|s| same(s.as_bytes(), presented.as_bytes()))
}

/// Equality whose time does not depend on where the two differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_accepts_both_secrets_until_its_last_phase() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(current(d).unwrap(), None);
        assert!(!accepts(d, ""));
        let old = ensure(d).unwrap();
        assert_eq!(old.len(), 64);
        assert_eq!(ensure(d).unwrap(), old, "ensure keeps an existing secret");
        assert!(accepts(d, &old));
        assert!(!accepts(d, "not-the-secret"));
        let new = generate();
        assert_ne!(new, old);
        for _ in 0..2 {
            stage(d, &new).unwrap();
            assert!(accepts(d, &old) && accepts(d, &new));
            assert_eq!(
                current(d).unwrap().as_deref(),
                Some(old.as_str()),
                "accepted, not sent yet"
            );
        }
        for _ in 0..2 {
            send_new(d, &new).unwrap();
            assert_eq!(current(d).unwrap().as_deref(), Some(new.as_str()));
            assert!(accepts(d, &old) && accepts(d, &new), "the old one is still accepted");
        }
        // A rotation run again after its last phase changes nothing but what it accepts.
        stage(d, &new).unwrap();
        for _ in 0..2 {
            drop_old(d).unwrap();
            assert_eq!(current(d).unwrap().as_deref(), Some(new.as_str()));
            assert!(!accepts(d, &old), "the old secret is refused after the last phase");
            assert_eq!(staged(d).unwrap(), None);
        }
        let mode = std::fs::metadata(d.join(CURRENT)).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        forget(d).unwrap();
        assert_eq!(current(d).unwrap(), None);
        assert!(!accepts(d, &new));
    }
}
