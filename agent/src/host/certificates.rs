//! This host's `Certificate` records, as the reference lists them (`type`, validity, SHA-256
//! fingerprint): the certificate it serves HTTPS with on the reference's port (443), type
//! `host`, and its pool-internal one, type `host_internal` (served to a client asking for the
//! server name `pool`, [`crate::host::server_identity`]). Other hosts of the pool pin the
//! internal one (or, for a host that has none recorded, the served one): their calls to this
//! host go over HTTPS and accept exactly the certificate whose fingerprint the pool database
//! holds ([`crate::pool::remote`]).

use crate::error::ApiError;
use crate::schema::{class_ids, enums::CertificateType, fields};
use crate::value::Value;
use crate::Agent;
use std::path::Path;

/// The port hosts of a pool reach each other's HTTPS on, as in the reference.
pub const POOL_HTTPS_PORT: u16 = 443;

/// A certificate's SHA-256 fingerprint in the reference's spelling (`AB:CD:…`, upper case).
pub fn fingerprint_sha256(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What the record says of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// SHA-256 of its DER form.
    pub fingerprint: String,
    /// Validity start, seconds since the epoch.
    pub not_before: i64,
    /// Validity end, seconds since the epoch.
    pub not_after: i64,
}

/// The first certificate of a PEM text.
pub fn facts(pem: &[u8]) -> Result<CertFacts, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("no PEM certificate: {e}"))?;
    let cert = pem.parse_x509().map_err(|e| format!("unreadable certificate: {e}"))?;
    let validity = cert.validity();
    Ok(CertFacts {
        fingerprint: fingerprint_sha256(&pem.contents),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

/// `host`'s `Certificate` records of type `kind` (one, or none).
fn host_certificates(agent: &Agent, host: &str, kind: CertificateType) -> Vec<std::sync::Arc<crate::value::Object>> {
    agent
        .store
        .all(class_ids::Certificate)
        .into_iter()
        .filter(|c| {
            c.get(fields::Certificate::host).as_ref_str() == Some(host)
                && c.get(fields::Certificate::r#type).as_str() == Some(kind.name())
        })
        .collect()
}

/// Whether `host` has a certificate of type `kind` recorded.
pub fn recorded(agent: &Agent, host: &str, kind: CertificateType) -> bool {
    !host_certificates(agent, host, kind).is_empty()
}

/// The certificate another host pins when it calls `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// Its SHA-256 fingerprint.
    pub fingerprint: String,
    /// Whether it is the pool-internal one (asked for with the server name `pool`).
    pub internal: bool,
}

/// What the other hosts pin when they call `host`: its pool-internal certificate, else its
/// served one; `None` when it has neither recorded (it serves no HTTPS on the pool's port).
pub fn pinned(agent: &Agent, host: &str) -> Option<Pin> {
    let fingerprint = |kind| {
        host_certificates(agent, host, kind)
            .first()
            .and_then(|c| c.get(fields::Certificate::fingerprint).as_str().map(str::to_owned))
    };
    if let Some(fingerprint) = fingerprint(CertificateType::host_internal) {
        return Some(Pin {
            fingerprint,
            internal: true,
        });
    }
    fingerprint(CertificateType::host).map(|fingerprint| Pin {
        fingerprint,
        internal: false,
    })
}

/// Records the certificate in `pem_file` as this host's of type `kind` (replacing an older
/// one), or, with `None`, removes this host's record of that type.
pub async fn publish(agent: &Agent, kind: CertificateType, pem_file: Option<&Path>) -> Result<(), ApiError> {
    let facts = match pem_file {
        Some(p) => {
            let pem = std::fs::read(p).map_err(|e| ApiError::internal(format!("{}: {e}", p.display())))?;
            Some(facts(&pem).map_err(|e| ApiError::internal(format!("{}: {e}", p.display())))?)
        }
        None => None,
    };
    let host = agent.host.clone();
    let mine = host_certificates(agent, &host, kind);
    agent
        .store
        .write(|tx| {
            let same = |c: &std::sync::Arc<crate::value::Object>, f: &CertFacts| {
                c.get(fields::Certificate::fingerprint).as_str() == Some(f.fingerprint.as_str())
            };
            if let (Some(f), [only]) = (&facts, mine.as_slice()) {
                if same(only, f) {
                    return Ok(());
                }
            }
            for c in &mine {
                if tx.get(class_ids::Certificate, &c.reference).is_some() {
                    crate::objects::destroy(tx, class_ids::Certificate, &c.reference)?;
                }
            }
            if let Some(f) = &facts {
                let mut c = crate::value::default_object(class_ids::Certificate, &crate::objects::new_ref());
                c.set(fields::Certificate::uuid, Value::str(crate::objects::new_uuid()));
                c.set(fields::Certificate::r#type, kind.value());
                c.set(fields::Certificate::host, Value::reference(host.as_str()));
                c.set(fields::Certificate::not_before, Value::DateTime(f.not_before));
                c.set(fields::Certificate::not_after, Value::DateTime(f.not_after));
                c.set(fields::Certificate::fingerprint, Value::str(f.fingerprint.clone()));
                crate::objects::create(tx, c)?;
            }
            Ok(())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_reads_as_the_reference_lists_it() {
        let cert = rcgen::generate_simple_self_signed(vec!["pool-host".into()]).unwrap();
        let f = facts(cert.cert.pem().as_bytes()).unwrap();
        assert_eq!(f.fingerprint, fingerprint_sha256(cert.cert.der()));
        assert_eq!(f.fingerprint.len(), 32 * 3 - 1);
        assert!(f
            .fingerprint
            .chars()
            .all(|c| c == ':' || c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
        assert!(f.not_before < f.not_after);
        assert!(facts(b"not a certificate").is_err());
    }
}
