//! Network messages: `network.create` (the bridge named when the caller gives none),
//! `network.destroy` and the purposes.

use super::topology::{self, refs, text};
use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::implicit::{self, CreateHooks};
use crate::objects::set_field;
use crate::schema::enums::NetworkPurpose;
use crate::schema::{class_ids, fields};
use crate::value::{Object, Value};
use crate::Agent;

/// What the reference calls the bridges it names.
pub const BRIDGE_STEM: &str = "xapi";
/// Prefixes a caller's bridge name may not start with (the reference's list).
pub const RESERVED_BRIDGE_PREFIXES: &[&str] = &["xen", "xapi", "vif", "tap", "eth"];

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::network, "create", |agent, _, c| {
            let _g = super::attach::LOCK.lock().await;
            implicit::create(&agent, &c, &HOOKS).await
        }),
        entry!(class_ids::network, "destroy", |agent, _, c| {
            let r = c.ref_arg(0)?.to_owned();
            let n = topology::get(&agent, class_ids::network, &r)?;
            let vifs = refs(&n, fields::network::VIFs);
            let busy: Vec<String> = vifs
                .iter()
                .filter(|v| {
                    agent
                        .store
                        .get(class_ids::VIF, v)
                        .is_some_and(|v| v.get(fields::VIF::currently_attached).as_bool() == Some(true))
                })
                .cloned()
                .collect();
            if !busy.is_empty() {
                return Err(ApiError::NetworkContainsVif { vifs: busy.join(",") });
            }
            let pifs = refs(&n, fields::network::PIFs);
            if !pifs.is_empty() {
                return Err(ApiError::NetworkContainsPif { pifs: pifs.join(",") });
            }
            agent
                .store
                .write(|tx| {
                    for v in &vifs {
                        if tx.get(class_ids::VIF, v).is_some() {
                            crate::objects::destroy(tx, class_ids::VIF, v)?;
                        }
                    }
                    crate::objects::destroy(tx, class_ids::network, &r)
                })
                .await
                .map(|()| Value::None)
        }),
        entry!(class_ids::network, "add_purpose", |agent, _, c| {
            let r = c.ref_arg(0)?.to_owned();
            let n = topology::assert_network_managed(&agent, &r)?;
            let new =
                NetworkPurpose::parse(c.str_arg(1)).ok_or_else(|| ApiError::invalid_value("value", c.str_arg(1)))?;
            let mut current = n.get(fields::network::purpose).as_set().to_vec();
            if current.iter().any(|p| p.as_str() == Some(new.name())) {
                return Ok(Value::None);
            }
            let conflicting = match new {
                NetworkPurpose::nbd => NetworkPurpose::insecure_nbd,
                NetworkPurpose::insecure_nbd => NetworkPurpose::nbd,
            };
            let clash = agent.store.all(class_ids::network).iter().any(|o| {
                o.get(fields::network::purpose)
                    .as_set()
                    .iter()
                    .any(|p| p.as_str() == Some(conflicting.name()))
            });
            if clash {
                return Err(ApiError::NetworkIncompatiblePurposes {
                    new_purpose: new.name().to_owned(),
                    conflicting_purpose: conflicting.name().to_owned(),
                });
            }
            current.insert(0, new.value());
            write_purposes(&agent, &r, current).await
        }),
        entry!(class_ids::network, "remove_purpose", |agent, _, c| {
            let r = c.ref_arg(0)?.to_owned();
            let n = topology::get(&agent, class_ids::network, &r)?;
            let old = c.str_arg(1).to_owned();
            let current: Vec<Value> = n
                .get(fields::network::purpose)
                .as_set()
                .iter()
                .filter(|p| p.as_str() != Some(old.as_str()))
                .cloned()
                .collect();
            write_purposes(&agent, &r, current).await
        }),
    ]
}

/// Stores `purposes` as the network's `purpose` set.
async fn write_purposes(agent: &Agent, network: &str, purposes: Vec<Value>) -> Result<Value, ApiError> {
    agent
        .store
        .write(|tx| {
            set_field(
                tx,
                class_ids::network,
                network,
                fields::network::purpose,
                Value::set(purposes.clone()),
            )
        })
        .await
        .map(|()| Value::None)
}

const HOOKS: CreateHooks = CreateHooks {
    before: before_create,
    companions: |_, _| Ok(()),
    after: |_, _, _| Ok(()),
};

/// The reference's `network.create`: MTU 1500 unless positive; a bridge `xapiN` when none is
/// given; a given one at most 15 characters, not reserved, not taken.
fn before_create(agent: &Agent, obj: &mut Object) -> Result<(), ApiError> {
    use fields::network as f;
    if obj.get(f::MTU).as_int().unwrap_or(0) <= 0 {
        obj.set(f::MTU, Value::Int(1500));
    }
    let taken: Vec<String> = agent
        .store
        .all(class_ids::network)
        .iter()
        .map(|n| text(n, f::bridge).to_owned())
        .collect();
    let bridge = text(obj, f::bridge).to_owned();
    if bridge.is_empty() {
        let name = (0..)
            .map(|n| format!("{BRIDGE_STEM}{n}"))
            .find(|b| !taken.contains(b))
            .unwrap_or_default();
        obj.set(f::bridge, Value::str(name));
        return Ok(());
    }
    if bridge.len() > topology::IFNAME_MAX || RESERVED_BRIDGE_PREFIXES.iter().any(|p| bridge.starts_with(p)) {
        return Err(ApiError::invalid_value("bridge", bridge));
    }
    if taken.contains(&bridge) {
        return Err(ApiError::BridgeNameExists { bridge });
    }
    Ok(())
}
