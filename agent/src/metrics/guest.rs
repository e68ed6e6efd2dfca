//! Guest metrics: what each running guest's tools publish about it (read from the backend as
//! the guest's xenstore nodes, [`crate::hypervisor::Hypervisor::guest_agent_keys`]), turned
//! into its `VM_guest_metrics` record the way the reference reads them, and that record
//! cleared when the VM stops.
//!
//! Each metrics round reads every resident guest's nodes. The first non-empty reading
//! creates the record and sets the VM's `guest_metrics`; later readings rewrite the fields
//! that changed (and `last_updated`), and nothing when nothing changed. `memory` stays empty,
//! as in the reference: the guest's free memory goes to the VM's `memory_internal_free` data
//! source instead.
//!
//! On the simulator the toolstack's static address settings (`VIF.ipv4_configuration_mode`
//! / `ipv6_configuration_mode` `Static`) are handed to the simulated guest's tools every
//! round, which then report those addresses.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::ApiError;
use crate::hypervisor::{DomId, Hypervisor};
use crate::objects::{create, destroy, new_ref, new_uuid, set_field};
use crate::schema::enums::{TristateType, VmPowerState};
use crate::schema::{class_ids, fields};
use crate::store::Tx;
use crate::value::{Object, Value};
use crate::Agent;

type StrMap = BTreeMap<String, String>;

/// What a guest's nodes say, in `VM_guest_metrics` terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestReport {
    /// `os_version`.
    pub os_version: StrMap,
    /// `PV_drivers_version`.
    pub pv_drivers_version: StrMap,
    /// `networks`: `<vif>/ip`, `<vif>/ipv4/<n>`, `<vif>/ipv6/<n>`.
    pub networks: StrMap,
    /// `other`.
    pub other: StrMap,
    /// The guest's free and total memory, KiB (not a record field: a data source).
    pub memory: StrMap,
    /// `can_use_hotplug_vbd`.
    pub can_use_hotplug_vbd: TristateType,
    /// `can_use_hotplug_vif`.
    pub can_use_hotplug_vif: TristateType,
    /// `PV_drivers_detected`: a PV frontend has connected.
    pub pv_drivers_detected: bool,
}

/// Agent nodes mapped to `os_version` keys.
const OS_VERSION: [(&str, &str); 7] = [
    ("data/os_name", "name"),
    ("data/os_uname", "uname"),
    ("data/os_distro", "distro"),
    ("data/os_majorver", "major"),
    ("data/os_minorver", "minor"),
    ("attr/os/spmajor", "spmajor"),
    ("attr/os/spminor", "spminor"),
];

/// Agent nodes mapped to `PV_drivers_version` keys.
const PV_DRIVERS_VERSION: [(&str, &str); 5] = [
    ("attr/PVAddons/MajorVersion", "major"),
    ("attr/PVAddons/MinorVersion", "minor"),
    ("attr/PVAddons/MicroVersion", "micro"),
    ("attr/PVAddons/BuildVersion", "build"),
    ("attr/PVAddons/Application", "application"),
];

/// Agent nodes mapped to the memory keys.
const MEMORY: [(&str, &str); 2] = [("data/meminfo_free", "free"), ("data/meminfo_total", "total")];

/// Interface name prefixes of the older address layout (`attr/eth0/ip`).
const IFACE_PREFIXES: [&str; 6] = ["eth", "xenbr", "eno", "ens", "emp", "enx"];

/// The names directly below `dir` among `keys`' paths.
fn children<'a>(keys: &'a StrMap, dir: &str) -> Vec<&'a str> {
    let prefix = format!("{dir}/");
    let mut out: Vec<&str> = keys
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter_map(|(k, _)| k[prefix.len()..].split('/').next())
        .filter(|c| !c.is_empty())
        .collect();
    out.dedup();
    out
}

fn mapped(keys: &StrMap, table: &[(&str, &str)]) -> StrMap {
    table
        .iter()
        .filter_map(|(node, key)| keys.get(*node).map(|v| ((*key).to_owned(), v.clone())))
        .collect()
}

fn tristate(v: Option<&String>) -> TristateType {
    match v.map(String::as_str) {
        Some("0") => TristateType::no,
        Some("1") => TristateType::yes,
        _ => TristateType::unspecified,
    }
}

/// The addresses below `root/<kind>` (`attr/vif/0/ipv4/1` → `0/ipv4/1`; the first IPv4
/// address also as `0/ip`). An interface whose address indices are not all numbers
/// contributes nothing for that address family.
fn vif_addresses(keys: &StrMap, root: &str, out: &mut StrMap) {
    for vif in children(keys, root) {
        for family in ["ipv4", "ipv6"] {
            let dir = format!("{root}/{vif}/{family}");
            let ids = children(keys, &dir);
            let Ok(mut numbered) = ids
                .iter()
                .map(|i| i.parse::<u64>().map(|n| (n, *i)))
                .collect::<Result<Vec<_>, _>>()
            else {
                continue;
            };
            numbered.sort();
            for (k, (_, id)) in numbered.iter().enumerate() {
                let Some(addr) = keys.get(&format!("{dir}/{id}")) else {
                    continue;
                };
                if family == "ipv4" && k == 0 {
                    out.insert(format!("{vif}/ip"), addr.clone());
                }
                out.insert(format!("{vif}/{family}/{id}"), addr.clone());
            }
        }
    }
}

/// The addresses of the older layout: `attr/eth0/ip` → `0/ip` and `0/ipv4/0`,
/// `attr/eth0/ipv6/1/addr` → `0/ipv6/1`.
fn iface_addresses(keys: &StrMap, out: &mut StrMap) {
    for iface in children(keys, "attr") {
        let Some(n) = IFACE_PREFIXES.iter().find_map(|p| iface.strip_prefix(p)) else {
            continue;
        };
        if let Some(ip) = keys.get(&format!("attr/{iface}/ip")) {
            out.insert(format!("{n}/ip"), ip.clone());
            out.insert(format!("{n}/ipv4/0"), ip.clone());
        }
        for i in children(keys, &format!("attr/{iface}/ipv6")) {
            if let Some(a) = keys.get(&format!("attr/{iface}/ipv6/{i}/addr")) {
                out.insert(format!("{n}/ipv6/{i}"), a.clone());
            }
        }
    }
}

/// Reads a guest's nodes as the reference reads them.
pub fn parse(keys: &StrMap) -> GuestReport {
    let mut pv = mapped(keys, &PV_DRIVERS_VERSION);
    // Windows drivers list themselves as `drivers/<n> = "<vendor> <NAME> <version> <attr>"`.
    for n in children(keys, "drivers") {
        if n.parse::<u64>().is_err() {
            continue;
        }
        let Some(line) = keys.get(&format!("drivers/{n}")) else {
            continue;
        };
        let words: Vec<&str> = line.splitn(4, ' ').collect();
        if let [vendor, name, version, rest @ ..] = words.as_slice() {
            let attr = rest.first().map_or("", |a| a.trim_end_matches('\n'));
            pv.insert(name.to_lowercase(), format!("{vendor} {version} {attr}"));
        }
    }
    if !pv.is_empty() && !pv.contains_key("micro") {
        pv.insert("micro".into(), "-1".into());
    }
    let mut networks = StrMap::new();
    if children(keys, "attr/vif").is_empty() {
        iface_addresses(keys, &mut networks);
    } else {
        vif_addresses(keys, "attr/vif", &mut networks);
    }
    vif_addresses(keys, "xenserver/attr/net-sriov-vf", &mut networks);
    let cant_suspend = keys.get("data/cant_suspend_reason");
    let mut other = StrMap::new();
    for c in children(keys, "control") {
        let Some(v) = keys.get(&format!("control/{c}")) else {
            continue;
        };
        match (c, cant_suspend) {
            ("feature-suspend", Some(reason)) => other.insert("data-cant-suspend-reason".into(), reason.clone()),
            _ => other.insert(c.to_owned(), v.clone()),
        };
    }
    if let Some(ts) = keys.get("data/ts") {
        other.insert("data-ts".into(), ts.clone());
    }
    let pv_drivers_detected = keys.iter().any(|(k, v)| {
        let parts: Vec<&str> = k.split('/').collect();
        matches!(parts.as_slice(), ["device", _, _, "state"]) && v == "4"
    });
    GuestReport {
        os_version: mapped(keys, &OS_VERSION),
        pv_drivers_version: pv,
        networks,
        other,
        memory: mapped(keys, &MEMORY),
        can_use_hotplug_vbd: tristate(keys.get("feature/hotplug/vbd")),
        can_use_hotplug_vif: tristate(keys.get("feature/hotplug/vif")),
        pv_drivers_detected,
    }
}

/// A resident guest whose tools are read this round.
#[derive(Clone, Debug)]
pub struct GuestPlan {
    /// The VM's ref.
    pub vm: String,
    /// Its domain.
    pub domid: DomId,
}

/// The guests to read: every resident VM but the control domain.
///
/// (A VIF's static address settings reach the guest's tools when it is plugged and when
/// `VIF.configure_ipv4`/`configure_ipv6` change them: `lifecycle/devices.rs`.)
pub fn plan(vms: &[super::sources::VmPlan]) -> Vec<GuestPlan> {
    vms.iter()
        .filter(|v| !v.control_domain)
        .map(|v| GuestPlan {
            vm: v.reference.clone(),
            domid: v.domid,
        })
        .collect()
}

/// Reads the guests' nodes (on a blocking thread). Guests with nothing to say are left out.
pub fn read(hv: &dyn Hypervisor, plans: &[GuestPlan]) -> Vec<(String, DomId, GuestReport)> {
    let mut out = Vec::new();
    for p in plans {
        match hv.guest_agent_keys(p.domid) {
            Ok(keys) if keys.is_empty() => {}
            Ok(keys) => out.push((p.vm.clone(), p.domid, parse(&keys))),
            Err(e) => tracing::debug!(vm = p.vm, error = %e, "reading the guest agent's nodes"),
        }
    }
    out
}

fn str_map(m: &StrMap) -> Value {
    Value::string_map(m.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

fn as_str_map(v: &Value) -> StrMap {
    v.as_map().iter().map(|(k, v)| (k.key_text(), v.key_text())).collect()
}

/// Writes one guest's report: creates its record on the first, rewrites what changed later.
fn apply_tx(tx: &mut Tx, vm: &str, domid: DomId, r: &GuestReport) -> Result<(), ApiError> {
    use fields::VM_guest_metrics as f;
    let Some(rec) = tx.get(class_ids::VM, vm) else {
        return Ok(());
    };
    // Only if the VM still runs in the domain that was read.
    let power = rec.get(fields::VM::power_state);
    if (*power != VmPowerState::Running && *power != VmPowerState::Paused)
        || rec.get(fields::VM::domid).as_int() != Some(i64::from(domid))
    {
        return Ok(());
    }
    let now = Value::DateTime(crate::value::now());
    let existing = rec
        .get(fields::VM::guest_metrics)
        .as_ref_str()
        .filter(|g| tx.get(class_ids::VM_guest_metrics, g).is_some())
        .map(str::to_owned);
    let Some(gm) = existing else {
        let gm = new_ref();
        let mut o = crate::value::default_object(class_ids::VM_guest_metrics, &gm);
        o.set(f::uuid, Value::str(new_uuid()));
        o.set(f::os_version, str_map(&r.os_version));
        o.set(f::PV_drivers_version, str_map(&r.pv_drivers_version));
        o.set(f::PV_drivers_up_to_date, Value::Bool(r.pv_drivers_detected));
        o.set(f::PV_drivers_detected, Value::Bool(r.pv_drivers_detected));
        o.set(f::networks, str_map(&r.networks));
        o.set(f::other, str_map(&r.other));
        o.set(f::live, Value::Bool(true));
        o.set(f::can_use_hotplug_vbd, r.can_use_hotplug_vbd.value());
        o.set(f::can_use_hotplug_vif, r.can_use_hotplug_vif.value());
        o.set(f::last_updated, now);
        create(tx, o)?;
        return set_field(tx, class_ids::VM, vm, fields::VM::guest_metrics, Value::reference(gm));
    };
    let Some(cur) = tx.get(class_ids::VM_guest_metrics, &gm) else {
        return Ok(());
    };
    let maps = [
        (f::os_version, &r.os_version),
        (f::PV_drivers_version, &r.pv_drivers_version),
        (f::networks, &r.networks),
        (f::other, &r.other),
    ];
    let scalars = [
        (f::PV_drivers_detected, Value::Bool(r.pv_drivers_detected)),
        (f::PV_drivers_up_to_date, Value::Bool(r.pv_drivers_detected)),
        (f::can_use_hotplug_vbd, r.can_use_hotplug_vbd.value()),
        (f::can_use_hotplug_vif, r.can_use_hotplug_vif.value()),
        (f::live, Value::Bool(true)),
    ];
    let mut changed = false;
    for (field, m) in maps {
        if as_str_map(cur.get(field)) != *m {
            set_field(tx, class_ids::VM_guest_metrics, &gm, field, str_map(m))?;
            changed = true;
        }
    }
    for (field, v) in scalars {
        if cur.get(field) != &v {
            set_field(tx, class_ids::VM_guest_metrics, &gm, field, v)?;
            changed = true;
        }
    }
    if changed {
        set_field(tx, class_ids::VM_guest_metrics, &gm, f::last_updated, now)?;
    }
    Ok(())
}

/// Writes the round's guest reports (one transaction, nothing when nothing changed).
pub async fn update(agent: &Arc<Agent>, reports: &[(String, DomId, GuestReport)]) {
    if reports.is_empty() {
        return;
    }
    let r = agent
        .store
        .write(|tx| {
            for (vm, domid, report) in reports {
                apply_tx(tx, vm, *domid, report)?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "updating the guest metrics");
    }
}

/// A stopped VM's guest metrics go (in the transaction that stops it): the record is
/// destroyed and the VM's `guest_metrics` cleared.
pub fn clear_tx(tx: &mut Tx, vm: &Object) -> Result<(), ApiError> {
    let Some(gm) = vm.get(fields::VM::guest_metrics).as_ref_str().map(str::to_owned) else {
        return Ok(());
    };
    set_field(
        tx,
        class_ids::VM,
        &vm.reference,
        fields::VM::guest_metrics,
        Value::null_ref(),
    )?;
    if tx.get(class_ids::VM_guest_metrics, &gm).is_some() {
        destroy(tx, class_ids::VM_guest_metrics, &gm)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, &str)]) -> StrMap {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn vif_layout_gives_both_key_forms() {
        let r = parse(&keys(&[
            ("attr/vif/0/ipv4/0", "10.0.0.2"),
            ("attr/vif/0/ipv4/1", "10.0.0.3"),
            ("attr/vif/0/ipv6/0", "fd00::2"),
            ("attr/vif/1/ipv4/10", "10.1.0.9"),
            ("attr/vif/1/ipv4/2", "10.1.0.2"),
            ("attr/vif/2/ipv4/x", "10.2.0.2"),
            ("attr/vif/2/ipv6/0", "fd00::22"),
            ("attr/eth0/ip", "192.0.2.1"),
        ]));
        let want = keys(&[
            ("0/ip", "10.0.0.2"),
            ("0/ipv4/0", "10.0.0.2"),
            ("0/ipv4/1", "10.0.0.3"),
            ("0/ipv6/0", "fd00::2"),
            ("1/ip", "10.1.0.2"),
            ("1/ipv4/2", "10.1.0.2"),
            ("1/ipv4/10", "10.1.0.9"),
            ("2/ipv6/0", "fd00::22"),
        ]);
        assert_eq!(r.networks, want);
    }

    #[test]
    fn older_interface_layout() {
        let r = parse(&keys(&[
            ("attr/eth0/ip", "192.0.2.1"),
            ("attr/eth0/ipv6/0/addr", "2001:db8::1"),
            ("attr/xenbr1/ip", "192.0.2.9"),
            ("attr/lo/ip", "127.0.0.1"),
        ]));
        let want = keys(&[
            ("0/ip", "192.0.2.1"),
            ("0/ipv4/0", "192.0.2.1"),
            ("0/ipv6/0", "2001:db8::1"),
            ("1/ip", "192.0.2.9"),
            ("1/ipv4/0", "192.0.2.9"),
        ]);
        assert_eq!(r.networks, want);
    }

    #[test]
    fn versions_other_and_features() {
        let r = parse(&keys(&[
            ("data/os_name", "Debian 12"),
            ("data/os_majorver", "12"),
            ("attr/PVAddons/MajorVersion", "8"),
            ("attr/PVAddons/MinorVersion", "4"),
            ("drivers/0", "XenServer XENBUS 9.1.9.105 "),
            ("drivers/x", "ignored"),
            ("control/feature-suspend", "1"),
            ("control/feature-reboot", "1"),
            ("data/cant_suspend_reason", "busy"),
            ("data/ts", "1"),
            ("data/meminfo_free", "1000"),
            ("feature/hotplug/vbd", "1"),
            ("feature/hotplug/vif", "0"),
            ("device/vif/0/state", "4"),
        ]));
        assert_eq!(r.os_version, keys(&[("name", "Debian 12"), ("major", "12")]));
        assert_eq!(
            r.pv_drivers_version,
            keys(&[
                ("major", "8"),
                ("minor", "4"),
                ("micro", "-1"),
                ("xenbus", "XenServer 9.1.9.105 "),
            ])
        );
        assert_eq!(
            r.other,
            keys(&[
                ("data-cant-suspend-reason", "busy"),
                ("feature-reboot", "1"),
                ("data-ts", "1"),
            ])
        );
        assert_eq!(r.memory, keys(&[("free", "1000")]));
        assert_eq!(r.can_use_hotplug_vbd, TristateType::yes);
        assert_eq!(r.can_use_hotplug_vif, TristateType::no);
        assert!(r.pv_drivers_detected);
        let none = parse(&keys(&[("device/vbd/768/state", "1")]));
        assert!(!none.pv_drivers_detected);
        assert!(none.pv_drivers_version.is_empty());
        assert_eq!(none.can_use_hotplug_vbd, TristateType::unspecified);
    }

    /// Through the agent: the record appears once the simulated agent has reported, follows
    /// a static address setting, feeds `memory_internal_free`, and goes when the VM stops.
    #[actix::test]
    async fn a_running_guest_reports_and_a_stopped_one_is_cleared() {
        use crate::storage::tests::env;
        use serde_json::json;
        let e = env().await;
        let vm = crate::metrics::tests::running_vm_with(&e, "gm", true).await;
        let gm_of = || {
            e.agent
                .store
                .get(class_ids::VM, &vm)
                .and_then(|v| v.get(fields::VM::guest_metrics).as_ref_str().map(str::to_owned))
        };
        crate::metrics::round(&e.agent).await;
        assert_eq!(gm_of(), None, "the agent reports only a few seconds after boot");
        tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
        crate::metrics::round(&e.agent).await;
        let gm = gm_of().expect("guest metrics after the agent reported");
        let rec = e.agent.store.get(class_ids::VM_guest_metrics, &gm).unwrap();
        use fields::VM_guest_metrics as f;
        let nets = as_str_map(rec.get(f::networks));
        let ip = nets.get("0/ip").cloned().unwrap_or_default();
        assert!(ip.starts_with("10."), "{nets:?}");
        assert_eq!(nets.get("0/ipv4/0"), Some(&ip));
        assert!(
            nets.get("0/ipv6/0").is_some_and(|a| a.starts_with("fd00::")),
            "{nets:?}"
        );
        assert_eq!(
            as_str_map(rec.get(f::os_version)).get("uname").map(String::as_str),
            Some("6.1.0-xapid-sim")
        );
        assert_eq!(rec.get(f::PV_drivers_detected), &Value::Bool(true));
        assert_eq!(rec.get(f::can_use_hotplug_vif), &TristateType::yes.value());
        assert!(as_str_map(rec.get(f::memory)).is_empty());
        let stamp = rec.get(f::last_updated).clone();
        // Nothing changed: nothing written.
        crate::metrics::round(&e.agent).await;
        let again = e.agent.store.get(class_ids::VM_guest_metrics, &gm).unwrap();
        assert_eq!(again.get(f::last_updated), &stamp);
        // A static setting on the VIF (its tools say feature-static-ip-setting): the guest
        // takes it and reports it from the next round.
        let vif = e
            .agent
            .store
            .get(class_ids::VM, &vm)
            .unwrap()
            .get(fields::VM::VIFs)
            .as_set()[0]
            .as_ref_str()
            .unwrap()
            .to_owned();
        e.ok(
            "VIF.configure_ipv4",
            vec![json!(vif), json!("Static"), json!("192.0.2.44/24"), json!("")],
        )
        .await;
        crate::metrics::round(&e.agent).await;
        let rec = e.agent.store.get(class_ids::VM_guest_metrics, &gm).unwrap();
        assert_eq!(
            as_str_map(rec.get(f::networks)).get("0/ip").map(String::as_str),
            Some("192.0.2.44")
        );
        // The guest's free memory is a data source.
        let uuid = e
            .agent
            .store
            .get(class_ids::VM, &vm)
            .unwrap()
            .uuid()
            .unwrap()
            .to_owned();
        assert!(e.agent.metrics.live.lock().vms[&uuid]
            .rrd
            .ds_index("memory_internal_free")
            .is_some());
        e.ok("VM.hard_shutdown", vec![json!(vm)]).await;
        assert_eq!(gm_of(), None);
        assert!(e.agent.store.get(class_ids::VM_guest_metrics, &gm).is_none());
    }
}
