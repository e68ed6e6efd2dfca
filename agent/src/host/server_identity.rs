//! The certificate this host serves HTTPS (and NBD over TLS) with, and the messages that
//! replace it: `host.install_server_certificate`, `host.reset_server_certificate` and
//! `host.emergency_reset_server_certificate`; and the host's pool-internal certificate,
//! renewed by `host.refresh_server_certificate`.
//!
//! As in the reference, a host has two: the one clients see (`Certificate` type `host`, which
//! an admin may replace with one signed by their authority), and a self-signed one the hosts
//! of a pool use between themselves (type `host_internal`), served to a TLS client that asks
//! for the server name `pool` (SNI) and pinned by the other hosts (`pool/remote.rs`). It is
//! made at the first start, kept in the state dir, and only ever replaced by a new self-signed
//! one.
//!
//! [`ServerIdentity`] holds the certificate chain and key in memory; the listeners' TLS
//! configurations ask it for them at every handshake (it is their certificate resolver), so a
//! replacement serves the next connection without a restart while open connections keep
//! theirs. A replacement is checked, written to the PEM files the daemon loads at start
//! (durably, the key readable by its owner only), swapped in, and published as the host's
//! `Certificate` record, which the other hosts of a pool pin.
//!
//! `install_server_certificate` checks what the reference checks, in its order: the private
//! key (an RSA key of 2048 to 4096 bits: `SERVER_CERTIFICATE_KEY_INVALID`,
//! `SERVER_CERTIFICATE_KEY_ALGORITHM_NOT_SUPPORTED [algorithm]`,
//! `SERVER_CERTIFICATE_KEY_RSA_LENGTH_NOT_SUPPORTED [length]`), the leaf certificate
//! (`SERVER_CERTIFICATE_INVALID`, `SERVER_CERTIFICATE_NOT_VALID_YET [now, not_before]`,
//! `SERVER_CERTIFICATE_EXPIRED [now, not_after]`), that the two belong together
//! (`SERVER_CERTIFICATE_KEY_MISMATCH`), its signature's hash (SHA-256 or SHA-512:
//! `SERVER_CERTIFICATE_SIGNATURE_NOT_SUPPORTED`), and the chain, when one is given
//! (`SERVER_CERTIFICATE_CHAIN_INVALID`). The reset messages put a new self-signed certificate
//! in place (for the host's name and address).

use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::schema::class_ids;
use crate::schema::enums::CertificateType;
use crate::value::Value;
use crate::Agent;
use parking_lot::RwLock;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The server name (SNI) under which the hosts of a pool ask each other for their
/// pool-internal certificate.
pub const POOL_SERVER_NAME: &str = "pool";

/// A certificate chain and key served, and the files they live in.
struct Served {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Served {
    fn load(cert_file: PathBuf, key_file: PathBuf) -> Result<Served, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let ck = certified(&read(&cert_file)?, &read(&key_file)?)
            .map_err(|e| format!("{} with {}: {e}", cert_file.display(), key_file.display()))?;
        Ok(Served {
            cert_file,
            key_file,
            current: RwLock::new(Arc::new(ck)),
        })
    }

    /// Writes the new chain and key to the files, then serves them from the next handshake.
    fn replace(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
        let ck = certified(cert_pem, key_pem)?;
        crate::fsutil::write_private(&self.key_file, key_pem)
            .map_err(|e| format!("{}: {e}", self.key_file.display()))?;
        crate::fsutil::write_private(&self.cert_file, cert_pem)
            .map_err(|e| format!("{}: {e}", self.cert_file.display()))?;
        *self.current.write() = Arc::new(ck);
        Ok(())
    }
}

/// The certificates this host serves: the one clients see, and the pool-internal one.
pub struct ServerIdentity {
    served: Served,
    internal: Option<Served>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("cert_file", &self.served.cert_file)
            .field("internal_cert_file", &self.internal.as_ref().map(|i| &i.cert_file))
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ServerIdentity {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match (&self.internal, hello.server_name()) {
            (Some(internal), Some(POOL_SERVER_NAME)) => Some(internal.current.read().clone()),
            _ => Some(self.served.current.read().clone()),
        }
    }
}

/// The certificates of a PEM text, in order.
fn pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    rustls_pemfile::certs(&mut &*pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// The private key of a PEM text.
fn pem_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    rustls_pemfile::private_key(&mut &*pem)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no private key".to_owned())
}

/// A chain and its key as rustls serves them, if the key is the leaf's.
fn certified(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let certs = pem_certs(cert_pem)?;
    if certs.is_empty() {
        return Err("no certificate".to_owned());
    }
    let key = pem_key(key_pem)?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(certs, key, &provider).map_err(|e| e.to_string())
}

impl ServerIdentity {
    /// The chain and key in these PEM files (no pool-internal certificate).
    pub fn load(cert_file: PathBuf, key_file: PathBuf) -> Result<ServerIdentity, String> {
        Ok(ServerIdentity {
            served: Served::load(cert_file, key_file)?,
            internal: None,
        })
    }

    /// Adds the pool-internal certificate kept in these files.
    pub fn with_internal(mut self, cert_file: PathBuf, key_file: PathBuf) -> Result<Self, String> {
        self.internal = Some(Served::load(cert_file, key_file)?);
        Ok(self)
    }

    /// The PEM file of the chain served to clients.
    pub fn cert_file(&self) -> &Path {
        &self.served.cert_file
    }

    /// The PEM file of the pool-internal certificate, if this host has one.
    pub fn internal_cert_file(&self) -> Option<&Path> {
        self.internal.as_ref().map(|i| i.cert_file.as_path())
    }

    /// Writes the new chain and key to the files, then serves them from the next handshake.
    fn replace(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
        self.served.replace(cert_pem, key_pem)
    }
}

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::host, "install_server_certificate", |agent, _, c| {
            super::this_host(&agent, c.ref_arg(0)?)?;
            crate::pool::rotate::refuse_with_ha(&agent)?;
            let cert_pem = checked_install(c.str_arg(1), c.str_arg(2), c.str_arg(3), chrono::Utc::now().timestamp())?;
            put_in_place(&agent, cert_pem.as_bytes(), c.str_arg(2).as_bytes()).await
        }),
        entry!(class_ids::host, "reset_server_certificate", |agent, _, c| {
            super::this_host(&agent, c.ref_arg(0)?)?;
            let (cert, key) = self_signed(&agent)?;
            put_in_place(&agent, cert.as_bytes(), key.as_bytes()).await
        }),
        entry!(class_ids::host, "emergency_reset_server_certificate", |agent, _, _c| {
            let (cert, key) = self_signed(&agent)?;
            put_in_place(&agent, cert.as_bytes(), key.as_bytes()).await
        }),
        entry!(class_ids::host, "refresh_server_certificate", |agent, _, c| {
            super::this_host(&agent, c.ref_arg(0)?)?;
            refresh_internal(&agent).await
        }),
    ]
}

/// `host.refresh_server_certificate` (run on the host named): a new self-signed pool-internal
/// certificate, served from the next handshake that asks for it and recorded (type
/// `host_internal`) for the other hosts to pin, the old record removed.
async fn refresh_internal(agent: &Agent) -> Result<Value, ApiError> {
    let internal = serving(agent)?
        .internal
        .as_ref()
        .ok_or_else(|| ApiError::internal("this host has no pool-internal certificate (it serves no HTTPS)"))?;
    let (cert, key) = self_signed(agent)?;
    internal.replace(cert.as_bytes(), key.as_bytes()).map_err(|e| {
        tracing::error!(error = %e, "the new pool-internal certificate could not be put in place");
        ApiError::internal(format!(
            "the new pool-internal certificate could not be put in place: {e}"
        ))
    })?;
    tracing::warn!(cert = %internal.cert_file.display(), "the pool-internal certificate was renewed");
    crate::host::certificates::publish(agent, CertificateType::host_internal, Some(&internal.cert_file)).await?;
    Ok(Value::None)
}

fn serving(agent: &Agent) -> Result<&ServerIdentity, ApiError> {
    agent
        .server_identity
        .as_deref()
        .ok_or_else(|| ApiError::internal("this host serves no HTTPS (start it with --tls-listen)"))
}

/// Writes, serves and publishes a new chain and key.
async fn put_in_place(agent: &Agent, cert_pem: &[u8], key_pem: &[u8]) -> Result<Value, ApiError> {
    let identity = serving(agent)?;
    identity.replace(cert_pem, key_pem).map_err(|e| {
        tracing::error!(error = %e, "the new server certificate could not be put in place");
        ApiError::internal(format!("the new server certificate could not be put in place: {e}"))
    })?;
    tracing::warn!(cert = %identity.cert_file().display(), "the server certificate was replaced");
    // A host that serves HTTPS on the pool's port has its certificate recorded (certificates.rs):
    // the record follows the replacement.
    if crate::host::certificates::recorded(agent, &agent.host, CertificateType::host) {
        crate::host::certificates::publish(agent, CertificateType::host, Some(identity.cert_file())).await?;
    }
    Ok(Value::None)
}

/// A new self-signed chain and key for this host's name and address.
fn self_signed(agent: &Agent) -> Result<(String, String), ApiError> {
    let mut names: Vec<String> = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .into_iter()
        .collect();
    names.extend([agent.host_address.clone(), "localhost".to_owned()]);
    names.retain(|n| !n.is_empty());
    names.dedup();
    let made = rcgen::generate_simple_self_signed(names).map_err(ApiError::internal)?;
    Ok((made.cert.pem(), made.signing_key.serialize_pem()))
}

/// Times as the reference writes them in its refusals (RFC 3339, UTC).
fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// The reference's checks of an installed certificate; the PEM the certificate file gets (the
/// leaf, then the chain).
pub fn checked_install(certificate: &str, private_key: &str, chain: &str, now: i64) -> Result<String, ApiError> {
    // The private key: RSA, 2048 to 4096 bits.
    let key = pem_key(private_key.as_bytes()).map_err(|_| ApiError::ServerCertificateKeyInvalid {})?;
    let rsa = match &key {
        PrivateKeyDer::Pkcs1(k) => ring::rsa::KeyPair::from_der(k.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(k) => ring::rsa::KeyPair::from_pkcs8(k.secret_pkcs8_der()),
        PrivateKeyDer::Sec1(_) => {
            return Err(ApiError::ServerCertificateKeyAlgorithmNotSupported {
                algorithm_oid: "ec".into(),
            });
        }
        _ => return Err(ApiError::ServerCertificateKeyInvalid {}),
    };
    let leaf_der = pem_certs(certificate.as_bytes())
        .ok()
        .and_then(|c| c.into_iter().next())
        .ok_or(ApiError::ServerCertificateInvalid {});
    match rsa {
        Ok(pair) => {
            let bits = pair.public().modulus_len() * 8;
            if !(2048..=4096).contains(&bits) {
                return Err(ApiError::ServerCertificateKeyRsaLengthNotSupported {
                    length: bits.to_string(),
                });
            }
        }
        Err(rejected) => {
            if let PrivateKeyDer::Pkcs8(k) = &key {
                if let Some(alg) = pkcs8_algorithm(k.secret_pkcs8_der()) {
                    return Err(ApiError::ServerCertificateKeyAlgorithmNotSupported {
                        algorithm_oid: alg.into(),
                    });
                }
            }
            // ring refuses RSA keys below 2048 bits (and above 8192): the length, from the
            // certificate's key.
            let why = rejected.to_string();
            if why == "TooSmall" || why == "TooLarge" {
                let bits = leaf_der
                    .as_ref()
                    .ok()
                    .and_then(|d| rsa_bits_of_certificate(d))
                    .map_or_else(|| why.clone(), |b| b.to_string());
                return Err(ApiError::ServerCertificateKeyRsaLengthNotSupported { length: bits });
            }
            return Err(ApiError::ServerCertificateKeyInvalid {});
        }
    }
    // The leaf: readable, valid now.
    let leaf_der = leaf_der?;
    let (_, leaf) =
        x509_parser::parse_x509_certificate(&leaf_der).map_err(|_| ApiError::ServerCertificateInvalid {})?;
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    if now < not_before {
        return Err(ApiError::ServerCertificateNotValidYet {
            now: rfc3339(now),
            not_before: rfc3339(not_before),
        });
    }
    if now > not_after {
        return Err(ApiError::ServerCertificateExpired {
            now: rfc3339(now),
            not_after: rfc3339(not_after),
        });
    }
    // The key is the leaf's.
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(vec![leaf_der.clone()], key.clone_key(), &provider)
        .map_err(|_| ApiError::ServerCertificateKeyMismatch {})?;
    // Signed with SHA-256 or SHA-512.
    const SHA256_RSA: &str = "1.2.840.113549.1.1.11";
    const SHA512_RSA: &str = "1.2.840.113549.1.1.13";
    let sig = leaf.signature_algorithm.algorithm.to_id_string();
    if sig != SHA256_RSA && sig != SHA512_RSA {
        return Err(ApiError::ServerCertificateSignatureNotSupported {});
    }
    // The chain, when given: one certificate or more.
    let mut pem = pem_of("CERTIFICATE", &leaf_der);
    if !chain.is_empty() {
        let certs = pem_certs(chain.as_bytes()).map_err(|_| ApiError::ServerCertificateChainInvalid {})?;
        if certs.is_empty() || certs.iter().any(|c| x509_parser::parse_x509_certificate(c).is_err()) {
            return Err(ApiError::ServerCertificateChainInvalid {});
        }
        for c in &certs {
            pem.push_str(&pem_of("CERTIFICATE", c));
        }
    }
    Ok(pem)
}

/// The bits of a certificate's RSA key, if it has one.
fn rsa_bits_of_certificate(der: &[u8]) -> Option<usize> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    match cert.public_key().parsed().ok()? {
        x509_parser::public_key::PublicKey::RSA(k) => Some(k.key_size()),
        _ => None,
    }
}

/// The reference's name for a PKCS #8 key's algorithm, when it is not RSA.
fn pkcs8_algorithm(der: &[u8]) -> Option<&'static str> {
    let rng = ring::rand::SystemRandom::new();
    if ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).is_ok() {
        return Some("ed25519");
    }
    if ring::signature::EcdsaKeyPair::from_pkcs8(&ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng).is_ok() {
        return Some("p256");
    }
    if ring::signature::EcdsaKeyPair::from_pkcs8(&ring::signature::ECDSA_P384_SHA384_ASN1_SIGNING, der, &rng).is_ok() {
        return Some("p384");
    }
    None
}

/// A DER object as PEM text.
fn pem_of(label: &str, der: &[u8]) -> String {
    let b64 = crate::storage::cbt_ops::base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RSA certificate and key made by openssl (rcgen cannot make RSA keys with ring).
    fn openssl_rsa(dir: &Path, days: &str) -> (String, String) {
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        let out = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-subj", "/CN=t", "-days", days,
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl runs (Debian's openssl package)");
        assert!(out.status.success(), "{out:?}");
        (
            std::fs::read_to_string(cert).unwrap(),
            std::fs::read_to_string(key).unwrap(),
        )
    }

    #[test]
    fn the_reference_checks_in_its_order() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = openssl_rsa(dir.path(), "10");
        let (_, leaf) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
        let leaf = leaf.parse_x509().unwrap();
        let (nb, na) = (
            leaf.validity().not_before.timestamp(),
            leaf.validity().not_after.timestamp(),
        );
        let now = nb + 60;
        let pem = checked_install(&cert, &key, "", now).unwrap();
        assert_eq!(pem_certs(pem.as_bytes()).unwrap(), pem_certs(cert.as_bytes()).unwrap());
        assert!(certified(pem.as_bytes(), key.as_bytes()).is_ok());
        assert_eq!(
            checked_install(&cert, &key, "", nb - 1).unwrap_err(),
            ApiError::ServerCertificateNotValidYet {
                now: rfc3339(nb - 1),
                not_before: rfc3339(nb)
            }
        );
        assert_eq!(
            checked_install(&cert, &key, "", na + 1).unwrap_err(),
            ApiError::ServerCertificateExpired {
                now: rfc3339(na + 1),
                not_after: rfc3339(na)
            }
        );
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        // The key is checked before the certificate.
        assert_eq!(
            checked_install("garbage", "garbage", "", now).unwrap_err(),
            ApiError::ServerCertificateKeyInvalid {}
        );
        let ec = rcgen::generate_simple_self_signed(vec!["t".into()]).unwrap();
        assert_eq!(
            checked_install(&ec.cert.pem(), &ec.signing_key.serialize_pem(), "", now).unwrap_err(),
            ApiError::ServerCertificateKeyAlgorithmNotSupported {
                algorithm_oid: "p256".into()
            }
        );
        // The RSA key with another certificate.
        assert_eq!(
            checked_install(&ec.cert.pem(), &key, "", now).unwrap_err(),
            ApiError::ServerCertificateKeyMismatch {}
        );
        assert_eq!(
            checked_install("not a certificate", &key, "", now).unwrap_err(),
            ApiError::ServerCertificateInvalid {}
        );
        // A chain of two certificates follows the leaf in the file.
        let with_chain = checked_install(&cert, &key, &format!("{}{}", ec.cert.pem(), ec.cert.pem()), now).unwrap();
        assert_eq!(pem_certs(with_chain.as_bytes()).unwrap().len(), 3);
        assert_eq!(
            checked_install(
                &cert,
                &key,
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                now
            )
            .unwrap_err(),
            ApiError::ServerCertificateChainInvalid {}
        );
    }

    #[test]
    fn a_replacement_is_served_and_written() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = openssl_rsa(dir.path(), "10");
        let (cf, kf) = (dir.path().join("served-cert.pem"), dir.path().join("served-key.pem"));
        let first = rcgen::generate_simple_self_signed(vec!["first".into()]).unwrap();
        std::fs::write(&cf, first.cert.pem()).unwrap();
        std::fs::write(&kf, first.signing_key.serialize_pem()).unwrap();
        let id = ServerIdentity::load(cf.clone(), kf.clone()).unwrap();
        assert_eq!(id.served.current.read().cert[0].as_ref(), first.cert.der().as_ref());
        // A key that is not the certificate's changes nothing.
        assert!(id
            .replace(cert.as_bytes(), first.signing_key.serialize_pem().as_bytes())
            .is_err());
        assert_eq!(std::fs::read_to_string(&cf).unwrap(), first.cert.pem());
        id.replace(cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(id.served.current.read().cert, pem_certs(cert.as_bytes()).unwrap());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&kf).unwrap().permissions().mode() & 0o777, 0o600);
        // What a restart loads is what was put in place.
        let again = ServerIdentity::load(cf, kf).unwrap();
        assert_eq!(again.served.current.read().cert, pem_certs(cert.as_bytes()).unwrap());
    }

    #[test]
    fn the_internal_certificate_is_served_apart_and_renewed_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, who: &str| {
            let made = rcgen::generate_simple_self_signed(vec![who.into()]).unwrap();
            let (c, k) = (
                dir.path().join(format!("{name}-c.pem")),
                dir.path().join(format!("{name}-k.pem")),
            );
            std::fs::write(&c, made.cert.pem()).unwrap();
            std::fs::write(&k, made.signing_key.serialize_pem()).unwrap();
            (c, k)
        };
        let (cf, kf) = write("served", "served");
        let (icf, ikf) = write("internal", "pool");
        let id = ServerIdentity::load(cf, kf)
            .unwrap()
            .with_internal(icf.clone(), ikf.clone())
            .unwrap();
        let internal = id.internal.as_ref().unwrap();
        let made = internal.current.read().cert.clone();
        assert_ne!(made, id.served.current.read().cert);
        assert_eq!(made, pem_certs(&std::fs::read(&icf).unwrap()).unwrap());
        assert_eq!(id.internal_cert_file(), Some(icf.as_path()));
        // A renewal is written to the internal files and served; the served pair stays.
        let served = id.served.current.read().cert.clone();
        let next = rcgen::generate_simple_self_signed(vec!["pool".into()]).unwrap();
        internal
            .replace(next.cert.pem().as_bytes(), next.signing_key.serialize_pem().as_bytes())
            .unwrap();
        assert_eq!(internal.current.read().cert[0].as_ref(), next.cert.der().as_ref());
        assert_eq!(std::fs::read_to_string(&icf).unwrap(), next.cert.pem());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&ikf).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(id.served.current.read().cert, served);
    }
}
