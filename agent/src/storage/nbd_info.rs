//! `VDI.get_nbd_info`: where an NBD client reaches a VDI's blocks. One record per address of
//! every host that has the VDI's SR plugged and a plugged PIF on a network whose `purpose`
//! holds `nbd` or `insecure_nbd`, as the reference builds them: the export named
//! `/<vdi uuid>?session_id=<caller's session>`, the port the NBD server listens on, the host's
//! certificate (PEM) and the name in it a client should check.

use super::layout::vdi_obj;
use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::schema::enums::{NetworkPurpose, VdiType};
use crate::schema::{class_ids, fields};
use crate::value::{default_object, Object, Value};
use crate::Agent;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

/// The port the reference's NBD server listens on, and the one this daemon's uses by default.
pub const DEFAULT_PORT: u16 = 10809;

static PORT: AtomicU16 = AtomicU16::new(DEFAULT_PORT);

/// Records the port the daemon's NBD server listens on (the transport calls this at start).
pub fn set_port(port: u16) {
    PORT.store(port, Ordering::Relaxed);
}

/// The port `get_nbd_info` reports.
pub fn port() -> u16 {
    PORT.load(Ordering::Relaxed)
}

pub(super) fn behaviour() -> Vec<Entry> {
    vec![entry!(class_ids::VDI, "get_nbd_info", |agent, _, c| {
        let session = c.session.clone().unwrap_or_default();
        get_nbd_info(&agent, c.ref_arg(0)?, &session).await
    })]
}

/// Whether a network's `purpose` names one of the NBD purposes.
fn is_nbd_network(net: &Object) -> bool {
    net.get(fields::network::purpose)
        .as_set()
        .iter()
        .any(|p| *p == NetworkPurpose::nbd || *p == NetworkPurpose::insecure_nbd)
}

/// The addresses of `host`'s plugged PIFs on the NBD networks: each PIF's IPv4 address, then
/// its IPv6 ones, empty ones left out.
fn nbd_addresses(agent: &Agent, host: &str, nbd_networks: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for pif in agent.store.all(class_ids::PIF) {
        use fields::PIF as f;
        let on_nbd = pif
            .get(f::network)
            .as_ref_str()
            .is_some_and(|n| nbd_networks.iter().any(|x| x == n));
        if pif.get(f::host).as_ref_str() != Some(host)
            || pif.get(f::currently_attached) != &Value::Bool(true)
            || !on_nbd
        {
            continue;
        }
        if let Some(ip) = pif.get(f::IP).as_str().filter(|s| !s.is_empty()) {
            out.push(ip.to_owned());
        }
        out.extend(
            pif.get(f::IPv6)
                .as_set()
                .iter()
                .filter_map(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
    }
    out
}

async fn get_nbd_info(agent: &Arc<Agent>, vdi_ref: &str, session: &str) -> Result<Value, ApiError> {
    let vdi = vdi_obj(agent, vdi_ref)?;
    if *vdi.get(fields::VDI::r#type) == VdiType::cbt_metadata {
        return Err(ApiError::VdiIncompatibleType {
            vdi: vdi_ref.to_owned(),
            r#type: VdiType::cbt_metadata.name().to_owned(),
        });
    }
    let sr = vdi.get(fields::VDI::SR).as_ref_str().unwrap_or("").to_owned();
    let hosts: Vec<String> = agent
        .store
        .all(class_ids::PBD)
        .iter()
        .filter(|p| {
            p.get(fields::PBD::SR).as_ref_str() == Some(sr.as_str())
                && p.get(fields::PBD::currently_attached) == &Value::Bool(true)
        })
        .filter_map(|p| p.get(fields::PBD::host).as_ref_str().map(str::to_owned))
        .collect();
    let nbd_networks: Vec<String> = agent
        .store
        .all(class_ids::network)
        .iter()
        .filter(|n| is_nbd_network(n))
        .map(|n| n.reference.clone())
        .collect();
    let uuid = vdi.uuid().unwrap_or("");
    let exportname = format!("/{uuid}?session_id={session}");
    let mut out = Vec::new();
    for host in hosts {
        let ips = nbd_addresses(agent, &host, &nbd_networks);
        if ips.is_empty() {
            continue;
        }
        if host != agent.host_ref() {
            // Another host's certificate is only known to that host; this daemon serves NBD
            // for its own SRs only.
            tracing::debug!(%host, "get_nbd_info: skipping a host other than this one");
            continue;
        }
        let cert = crate::host::admin::server_certificate(&crate::host::settings::server_certificate(&agent.state_dir))
            .await?;
        let subject = subject_of(&cert).unwrap_or_else(|| {
            tracing::warn!("get_nbd_info: no DNS name in the server certificate; giving the hostname");
            agent
                .store
                .get(class_ids::host, &host)
                .and_then(|h| h.get(fields::host::hostname).as_str().map(str::to_owned))
                .unwrap_or_default()
        });
        for address in ips {
            use fields::vdi_nbd_server_info as f;
            let mut rec = default_object(class_ids::vdi_nbd_server_info, "");
            rec.set(f::exportname, Value::str(exportname.as_str()));
            rec.set(f::address, Value::str(address));
            rec.set(f::port, Value::Int(i64::from(port())));
            rec.set(f::cert, Value::str(cert.as_str()));
            rec.set(f::subject, Value::str(subject.as_str()));
            out.push(Value::Record(Arc::new(rec)));
        }
    }
    Ok(Value::Set(out.into()))
}

/// The name a client should check the certificate against: the first (by name) DNS name of
/// its subject alternative names that is not a wildcard, else the first wildcard one.
pub fn subject_of(pem: &str) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut names: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
        .collect();
    names.sort_unstable();
    names
        .iter()
        .find(|n| !n.starts_with("*."))
        .or_else(|| names.first())
        .map(|n| (*n).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_prefers_a_strict_name() {
        let c = rcgen::generate_simple_self_signed(vec![
            "*.pool.example".to_owned(),
            "zeta.example".to_owned(),
            "alpha.example".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        assert_eq!(subject_of(&c.cert.pem()).as_deref(), Some("alpha.example"));
        let w = rcgen::generate_simple_self_signed(vec!["*.pool.example".to_owned()]).unwrap();
        assert_eq!(subject_of(&w.cert.pem()).as_deref(), Some("*.pool.example"));
        assert_eq!(subject_of("not a certificate"), None);
    }
}
