//! Tunnels: `tunnel.create`/`destroy`. A tunnel is an access PIF (device `tunnelN`) on the
//! tunnel's network over a transport PIF; on the host, a gretap or vxlan device in the
//! network's bridge, carried over the transport PIF's network. The far end is
//! `tunnel.other_config:remote_ip`, the key (VXLAN identifier, GRE key) `other_config:key` or
//! one derived from the network's uuid.
//!
//! The reference makes tunnels only with Open vSwitch and its controller (it answers
//! `OPENVSWITCH_NOT_ACTIVE` on a Linux-bridge host); this daemon makes them with the
//! kernel's own devices on Linux bridges.

use super::attach::LOCK;
use super::topology::{self, refs, text, PifKind};
use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::objects::{self, new_ref, new_uuid};
use crate::schema::enums::{IpConfigurationMode, Ipv6ConfigurationMode, PifIgmpStatus, TunnelProtocol};
use crate::schema::{class_ids, fields};
use crate::value::{default_object, Value};
use crate::Agent;

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::tunnel, "create", |agent, _, c| {
            let _g = LOCK.lock().await;
            let protocol =
                TunnelProtocol::parse(c.str_arg(2)).ok_or_else(|| ApiError::invalid_value("protocol", c.str_arg(2)))?;
            create(&agent, c.ref_arg(0)?, c.ref_arg(1)?, protocol)
                .await
                .map(Value::reference)
        }),
        entry!(class_ids::tunnel, "destroy", |agent, _, c| {
            let _g = LOCK.lock().await;
            destroy(&agent, c.ref_arg(0)?).await.map(|()| Value::None)
        }),
    ]
}

/// The first free `tunnelN` among the host's access PIFs.
fn tunnel_device(agent: &Agent, host: &str) -> String {
    let taken: Vec<String> = agent
        .store
        .all(class_ids::PIF)
        .iter()
        .filter(|p| topology::reference(p, fields::PIF::host) == Some(host))
        .filter(|p| !refs(p, fields::PIF::tunnel_access_PIF_of).is_empty())
        .map(|p| text(p, fields::PIF::device).to_owned())
        .collect();
    (0..)
        .map(|n| format!("tunnel{n}"))
        .find(|d| !taken.contains(d))
        .unwrap_or_default()
}

/// `tunnel.create`: checks, records the tunnel and its access PIF, and plugs it.
pub async fn create(
    agent: &Agent,
    transport: &str,
    network: &str,
    protocol: TunnelProtocol,
) -> Result<String, ApiError> {
    use fields::PIF as f;
    let tp = topology::get(agent, class_ids::PIF, transport)?;
    topology::assert_network_managed(agent, network)?;
    let host = topology::reference(&tp, f::host).unwrap_or_default().to_owned();
    topology::assert_no_other_local_pifs(agent, &host, network)?;
    topology::assert_pif_managed(&tp)?;
    match topology::topology(agent, tp.clone()).first() {
        Some((PifKind::Physical, p)) if topology::reference(p, f::bond_slave_of).is_some() => {
            return Err(ApiError::CannotAddTunnelToBondSlave {
                pif: transport.to_owned(),
            })
        }
        Some((PifKind::TunnelAccess(_), _)) => {
            return Err(ApiError::IsTunnelAccessPif {
                pif: transport.to_owned(),
            })
        }
        _ => {}
    }
    if text(&tp, f::ip_configuration_mode) == IpConfigurationMode::None.name() {
        // The reference records the tunnel and then fails to plug it; refused before
        // anything is recorded here.
        return Err(ApiError::TransportPifNotConfigured {
            pif: transport.to_owned(),
        });
    }
    let tunnel = new_ref();
    let access = new_ref();
    let device = tunnel_device(agent, &host);
    let (transport, network) = (transport.to_owned(), network.to_owned());
    agent
        .store
        .write(|tx| {
            let mut p = default_object(class_ids::PIF, &access);
            p.set(f::uuid, Value::str(new_uuid()));
            p.set(f::device, Value::str(device.as_str()));
            p.set(f::network, Value::reference(network.as_str()));
            p.set(f::host, Value::reference(host.as_str()));
            p.set(f::MAC, Value::str(crate::lifecycle::devices::random_mac()));
            p.set(f::MTU, Value::Int(-1));
            p.set(f::VLAN, Value::Int(-1));
            p.set(f::metrics, tp.get(f::metrics).clone());
            p.set(f::physical, Value::Bool(false));
            p.set(f::currently_attached, Value::Bool(false));
            p.set(f::ip_configuration_mode, IpConfigurationMode::None.value());
            p.set(f::ipv6_configuration_mode, Ipv6ConfigurationMode::None.value());
            p.set(f::primary_address_type, tp.get(f::primary_address_type).clone());
            p.set(f::managed, Value::Bool(true));
            p.set(f::igmp_snooping_status, PifIgmpStatus::unknown.value());
            objects::create(tx, p)?;
            let mut t = default_object(class_ids::tunnel, &tunnel);
            t.set(fields::tunnel::uuid, Value::str(new_uuid()));
            t.set(fields::tunnel::access_PIF, Value::reference(access.as_str()));
            t.set(fields::tunnel::transport_PIF, Value::reference(transport.as_str()));
            t.set(fields::tunnel::status, Value::string_map([("active", "false")]));
            t.set(fields::tunnel::protocol, protocol.value());
            objects::create(tx, t)
        })
        .await?;
    if let Err(e) = super::pif::plug(agent, &access).await {
        // The host refused the device: forget the records rather than leave a tunnel that
        // never came up.
        let forgotten = agent
            .store
            .write(|tx| {
                objects::destroy(tx, class_ids::tunnel, &tunnel)?;
                objects::destroy(tx, class_ids::PIF, &access)
            })
            .await;
        if let Err(f) = forgotten {
            tracing::warn!(tunnel, error = %f, "forgetting a tunnel that did not come up");
        }
        return Err(e);
    }
    if super::pif::on_this_host(agent, &*topology::get(agent, class_ids::PIF, &access)?) {
        let t = tunnel.clone();
        agent
            .store
            .write(|tx| {
                objects::set_field(
                    tx,
                    class_ids::tunnel,
                    &t,
                    fields::tunnel::status,
                    Value::string_map([("active", "true")]),
                )
            })
            .await?;
    }
    Ok(tunnel)
}

/// `tunnel.destroy`: unplugs and forgets the access PIF, then the tunnel.
pub async fn destroy(agent: &Agent, tunnel: &str) -> Result<(), ApiError> {
    let t = topology::get(agent, class_ids::tunnel, tunnel)?;
    let access = topology::reference(&t, fields::tunnel::access_PIF).map(str::to_owned);
    if let Some(a) = &access {
        if agent.store.get(class_ids::PIF, a).is_some() {
            super::pif::unplug(agent, a).await?;
        }
    }
    agent
        .store
        .write(|tx| {
            objects::destroy(tx, class_ids::tunnel, tunnel)?;
            if let Some(a) = &access {
                if tx.get(class_ids::PIF, a).is_some() {
                    objects::destroy(tx, class_ids::PIF, a)?;
                }
            }
            Ok(())
        })
        .await
}
