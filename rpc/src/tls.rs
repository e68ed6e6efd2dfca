//! HTTPS: a configured certificate and key, or a self-signed pair generated on first start
//! and kept in the state dir (as a XenServer host does for its own certificate).

use agent::host::server_identity::ServerIdentity;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
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
    /// The PEM files hold no usable certificate or key.
    #[error("{0}")]
    Pem(String),
    /// Generating the self-signed certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
    /// rustls refused the pair.
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TlsError + 'a {
    move |source| TlsError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// Where the certificate and key come from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The self-signed pair kept in the state dir.
    pub fn in_state_dir(state_dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: state_dir.join("tls").join("xapid-cert.pem"),
            key: state_dir.join("tls").join("xapid-key.pem"),
        }
    }

    /// The pool-internal pair kept in the state dir (made at the first start,
    /// `agent::host::server_identity`).
    pub fn internal_in_state_dir(state_dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: state_dir.join("tls").join("xapid-pool-cert.pem"),
            key: state_dir.join("tls").join("xapid-pool-key.pem"),
        }
    }
}

/// Creates a self-signed certificate for `hostname` (and localhost) at `files` unless both
/// files exist already. Returns whether it generated one.
pub fn ensure_self_signed(files: &TlsFiles, hostname: &str) -> Result<bool, TlsError> {
    if files.cert.exists() && files.key.exists() {
        return Ok(false);
    }
    let mut names = vec![hostname.to_owned(), "localhost".to_owned(), "127.0.0.1".to_owned()];
    names.dedup();
    let certified = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    if let Some(dir) = files.key.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    write_private(&files.key, certified.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&files.cert, certified.cert.pem()).map_err(io("writing", &files.cert))?;
    Ok(true)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("writing", path))?;
    f.write_all(bytes).map_err(io("writing", path))
}

/// The certificate and key in PEM files, as the listeners serve them: the agent replaces them
/// in place (`host.install_server_certificate`), and each handshake asks for the current ones.
pub fn identity(files: &TlsFiles) -> Result<Arc<ServerIdentity>, TlsError> {
    ServerIdentity::load(files.cert.clone(), files.key.clone())
        .map(Arc::new)
        .map_err(TlsError::Pem)
}

/// [`identity`] with the host's pool-internal certificate in `internal` (made by
/// [`ensure_self_signed`]), served to clients asking for the server name `pool`.
pub fn identity_with_internal(files: &TlsFiles, internal: &TlsFiles) -> Result<Arc<ServerIdentity>, TlsError> {
    ServerIdentity::load(files.cert.clone(), files.key.clone())
        .and_then(|i| i.with_internal(internal.cert.clone(), internal.key.clone()))
        .map(Arc::new)
        .map_err(TlsError::Pem)
}

/// A rustls server configuration serving `identity`.
pub fn serving(identity: Arc<ServerIdentity>) -> Result<rustls::ServerConfig, TlsError> {
    Ok(
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(identity),
    )
}

/// A rustls server configuration from PEM files.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    serving(identity(files)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_pair_is_made_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::in_state_dir(dir.path());
        assert!(ensure_self_signed(&files, "host.example").unwrap());
        let first = std::fs::read(&files.cert).unwrap();
        assert!(!ensure_self_signed(&files, "host.example").unwrap());
        assert_eq!(
            std::fs::read(&files.cert).unwrap(),
            first,
            "reused after the first start"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        server_config(&files).unwrap();
    }

    #[test]
    fn garbage_pem_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("c.pem"),
            key: dir.path().join("k.pem"),
        };
        std::fs::write(&files.cert, "not a cert").unwrap();
        std::fs::write(&files.key, "not a key").unwrap();
        let e = server_config(&files).unwrap_err().to_string();
        assert!(e.contains("c.pem"), "{e}");
    }
}
