//! `host.migrate_receive(host, network, options)`: the destination of a migration hands out
//! where to send and on which session, as the reference's map (`SM`, `xenops`, `host`,
//! `session_id`, `master`); [`Dest`] reads that map back on the sending side
//! (`lifecycle/migrate_send.rs`).
//!
//! It runs on `host` (a `host.*` message about a host). The URLs name the address of the
//! host's PIF on `network` (for its management PIF, the host's `address`, where this daemon
//! listens), with a new session of the caller's user (`Sessions::login_like`), over `http` as
//! the reference writes them; `master` is the URL of the host's pool master.

use crate::call::{Call, Entry};
use crate::entry;
use crate::error::ApiError;
use crate::schema::{class_ids, fields};
use crate::value::Value;
use crate::Agent;
use std::sync::Arc;

/// Keys of `host.migrate_receive`'s map.
const SM: &str = "SM";
const XENOPS: &str = "xenops";
const HOST: &str = "host";
const SESSION_ID: &str = "session_id";
const MASTER: &str = "master";

/// The message of this module.
pub fn behaviour() -> Vec<Entry> {
    vec![entry!(class_ids::host, "migrate_receive", |agent, _ctx, c| {
        migrate_receive(&agent, &c).await
    })]
}

/// `address` as the host part of a URL.
fn url_host(address: &str) -> String {
    if address.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{address}]")
    } else {
        address.to_owned()
    }
}

/// `host.migrate_receive`.
async fn migrate_receive(agent: &Arc<Agent>, c: &Call) -> Result<Value, ApiError> {
    use fields::PIF as f;
    let host = c.ref_arg(0)?.to_owned();
    let network = c.ref_arg(1)?.to_owned();
    let host_rec = agent
        .store
        .get(class_ids::host, &host)
        .ok_or_else(|| ApiError::handle_invalid("host", &host))?;
    if agent.store.get(class_ids::network, &network).is_none() {
        return Err(ApiError::handle_invalid("network", &network));
    }
    let pif = agent
        .store
        .all(class_ids::PIF)
        .into_iter()
        .find(|p| {
            p.get(f::network).as_ref_str() == Some(network.as_str())
                && p.get(f::host).as_ref_str() == Some(host.as_str())
        })
        .ok_or_else(|| ApiError::HostCannotAttachNetwork {
            host: host.clone(),
            network: network.clone(),
        })?;
    let v6 = pif.get(f::primary_address_type).key_text() == "IPv6";
    let (ip, mode) = if v6 {
        let ip = pif
            .get(f::IPv6)
            .as_set()
            .iter()
            .filter_map(Value::as_str)
            .map(|a| a.split('/').next().unwrap_or(a))
            .find(|a| !a.to_ascii_lowercase().starts_with("fe80"))
            .unwrap_or("")
            .to_owned();
        (ip, pif.get(f::ipv6_configuration_mode).key_text())
    } else {
        (pif.get(f::IP).key_text(), pif.get(f::ip_configuration_mode).key_text())
    };
    // The management interface's address is the host's `address` (where this daemon listens).
    let ip = if pif.get(f::management).as_bool() == Some(true) {
        host_rec.get(fields::host::address).key_text()
    } else {
        ip
    };
    if ip.is_empty() {
        return Err(if mode == "None" {
            ApiError::PifHasNoNetworkConfiguration {
                pif: pif.reference.clone(),
            }
        } else {
            ApiError::InterfaceHasNoIp {
                interface: pif.reference.clone(),
            }
        });
    }
    let session = agent
        .sessions
        .login_like(&agent.store, &host, c.session_ref(), "")
        .await?;
    let master = crate::pool::master_address(agent).unwrap_or_else(|| ip.clone());
    let at = url_host(&ip);
    Ok(Value::string_map([
        (SM, format!("http://{at}/services/SM?session_id={session}")),
        (HOST, host.clone()),
        (XENOPS, format!("http://{at}/services/xenops?session_id={session}")),
        (SESSION_ID, session.clone()),
        (MASTER, format!("http://{}/", url_host(&master))),
    ]))
}

/// The host part of a URL (`http://host[:port]/…`).
fn url_address(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map(|(a, _)| a.to_owned());
    }
    let host = authority.split(':').next().unwrap_or("");
    (!host.is_empty()).then(|| host.to_owned())
}

/// What `dest` (the map `host.migrate_receive` answered) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    /// The destination host (a ref of its pool's database).
    pub host: String,
    /// The session to use there.
    pub session: String,
    /// The destination host's address.
    pub address: String,
    /// Its pool master's address.
    pub master: String,
}

impl Dest {
    /// Reads `dest`; a key missing or unreadable is `INVALID_VALUE`.
    pub fn parse(dest: &Value) -> Result<Dest, ApiError> {
        let get = |k: &str| -> Result<String, ApiError> {
            dest.map_get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| ApiError::InvalidValue {
                    field: "dest".into(),
                    value: format!("no {k} key"),
                })
        };
        let address = url_address(&get(XENOPS)?).ok_or_else(|| ApiError::InvalidValue {
            field: "dest".into(),
            value: "xenops".into(),
        })?;
        let master = url_address(&get(MASTER)?).ok_or_else(|| ApiError::InvalidValue {
            field: "dest".into(),
            value: "master".into(),
        })?;
        Ok(Dest {
            host: get(HOST)?,
            session: get(SESSION_ID)?,
            address,
            master,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dest_maps_are_read_as_the_reference_writes_them() {
        let dest = Value::string_map([
            (SM, "http://127.0.0.5/services/SM?session_id=OpaqueRef:s"),
            (HOST, "OpaqueRef:h"),
            (XENOPS, "http://127.0.0.5/services/xenops?session_id=OpaqueRef:s"),
            (SESSION_ID, "OpaqueRef:s"),
            (MASTER, "http://127.0.0.4/"),
        ]);
        assert_eq!(
            Dest::parse(&dest).unwrap(),
            Dest {
                host: "OpaqueRef:h".into(),
                session: "OpaqueRef:s".into(),
                address: "127.0.0.5".into(),
                master: "127.0.0.4".into(),
            }
        );
        let v6 = Value::string_map([
            (HOST, "OpaqueRef:h"),
            (XENOPS, "http://[fd00::1]:80/services/xenops"),
            (SESSION_ID, "OpaqueRef:s"),
            (MASTER, "https://[fd00::2]/"),
        ]);
        let d = Dest::parse(&v6).unwrap();
        assert_eq!((d.address.as_str(), d.master.as_str()), ("fd00::1", "fd00::2"));
        let missing = Value::string_map([(HOST, "OpaqueRef:h")]);
        assert!(matches!(Dest::parse(&missing), Err(ApiError::InvalidValue { .. })));
    }
}
