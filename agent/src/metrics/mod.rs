//! The host's metrics service: round-robin databases of host, VM and SR figures (as
//! xcp-rrdd keeps them), the `message` class (alerts), `host_metrics` and `VM_metrics` kept
//! current, and what the HTTP stats paths serve (`/rrd_updates`, `/host_rrd`, `/vm_rrd`,
//! `/sr_rrd`, `/metrics`). `docs/metrics.md` lists every data source.
//!
//! Every five seconds ([`live::STEP`]) a round of readings is taken ([`sources`]) and fed to
//! the databases ([`live`], [`rrd`]); every 30 s old messages beyond the limit go; every five
//! minutes, and when a VM stops, the databases are saved under `<state dir>/rrd`.

pub mod alerts;
pub mod api;
pub mod carry;
pub mod fmt;
pub mod guest;
pub mod http;
pub mod live;
pub mod messages;
pub mod perfmon;
pub mod perfmon_config;
pub mod procfs;
pub mod prometheus;
pub mod rrd;
pub mod sources;
pub mod updates;
pub mod xmltree;

use crate::call::Entry;
use crate::schema::enums::VmPowerState;
use crate::schema::{class_ids, fields};
use crate::value::{Object, Value};
use crate::Agent;
use live::{Live, RrdInfo};
use parking_lot::Mutex;
use sources::{Owner, Plan, Round, SamplerState, SrPlan, VbdPlan, VmPlan};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The metrics service's state, owned by the agent.
#[derive(Default)]
pub struct Metrics {
    /// The databases.
    live: Mutex<Live>,
    /// What the sampler keeps between rounds.
    sampler: Arc<Mutex<SamplerState>>,
    /// The performance alarms' state.
    perfmon: Mutex<perfmon::Perfmon>,
}

/// How often the databases are saved.
const SAVE_EVERY: Duration = Duration::from_secs(300);

/// How often old messages are collected (the reference's database GC period).
const GC_EVERY: Duration = Duration::from_secs(30);

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    let mut v = messages::entries();
    v.extend(api::entries());
    v
}

/// Where the databases are saved.
fn rrd_dir(agent: &Agent) -> PathBuf {
    agent.state_dir.join("rrd")
}

/// Starts the service's background work for a started agent: the alerts, and the sampling
/// loop (which also saves the databases and collects old messages).
pub fn start(agent: &Arc<Agent>) {
    alerts::start(agent);
    let weak = Arc::downgrade(agent);
    actix::spawn(async move {
        let mut last_save = std::time::Instant::now();
        let mut last_gc = std::time::Instant::now();
        // A first round at once: the host's database exists (or is read back) from the start.
        if let Some(agent) = weak.upgrade() {
            round(&agent).await;
        }
        loop {
            // Rounds a second past each multiple of five seconds: away from the PDP
            // boundaries, so that each round falls in its own PDP.
            let now = sources::now();
            let next = (now / live::STEP as f64).floor() * live::STEP as f64 + live::STEP as f64 + 1.0;
            let wait = (next - now).clamp(0.1, live::STEP as f64 + 1.0);
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            let Some(agent) = weak.upgrade() else { break };
            round(&agent).await;
            if last_gc.elapsed() >= GC_EVERY {
                last_gc = std::time::Instant::now();
                messages::gc(&agent, messages::MESSAGE_LIMIT).await;
            }
            if last_save.elapsed() >= SAVE_EVERY {
                last_save = std::time::Instant::now();
                save_all(&agent).await;
            }
        }
    });
}

fn vm_plan(agent: &Agent, vm: &Object) -> Option<VmPlan> {
    let power = vm.get(fields::VM::power_state);
    let paused = *power == VmPowerState::Paused;
    if *power != VmPowerState::Running && !paused {
        return None;
    }
    let domid = u32::try_from(vm.get(fields::VM::domid).as_int()?).ok()?;
    let uuid = vm.uuid()?.to_owned();
    let mut vbds = Vec::new();
    for v in vm.get(fields::VM::VBDs).as_set() {
        let Some(vbd) = v.as_ref_str().and_then(|r| agent.store.get(class_ids::VBD, r)) else {
            continue;
        };
        if vbd.get(fields::VBD::currently_attached) != &Value::Bool(true) {
            continue;
        }
        let Ok(pos) = vbd.str_field("userdevice").parse::<u32>() else {
            continue;
        };
        let Some(vdev) = crate::hypervisor::vbd_vdev(pos) else {
            continue;
        };
        let device = match vbd.str_field("device") {
            "" => crate::hypervisor::vbd_name(pos),
            d => d.to_owned(),
        };
        let sr = vbd
            .get(fields::VBD::VDI)
            .as_ref_str()
            .and_then(|r| agent.store.get(class_ids::VDI, r))
            .and_then(|vdi| vdi.get(fields::VDI::SR).as_ref_str().map(str::to_owned))
            .and_then(|sr| agent.uuid_of(class_ids::SR, &sr))
            .unwrap_or_default();
        vbds.push(VbdPlan {
            device,
            vdev,
            sr,
            key: format!("{uuid}/vbd/{}", vbd.uuid().unwrap_or("")),
        });
    }
    let mut vifs = Vec::new();
    for v in vm.get(fields::VM::VIFs).as_set() {
        let Some(vif) = v.as_ref_str().and_then(|r| agent.store.get(class_ids::VIF, r)) else {
            continue;
        };
        if vif.get(fields::VIF::currently_attached) != &Value::Bool(true) {
            continue;
        }
        let Ok(devid) = vif.str_field("device").parse::<u32>() else {
            continue;
        };
        vifs.push((devid, format!("{uuid}/vif/{}", vif.uuid().unwrap_or(""))));
    }
    Some(VmPlan {
        reference: vm.reference.clone(),
        uuid,
        domid,
        paused,
        control_domain: vm.get(fields::VM::is_control_domain) == &Value::Bool(true),
        vbds,
        vifs,
    })
}

/// What a round measures, from the store.
fn plan(agent: &Agent) -> Plan {
    let vms = agent
        .store
        .all(class_ids::VM)
        .iter()
        .filter(|v| {
            v.get(fields::VM::resident_on).as_ref_str() == Some(agent.host.as_str())
                || v.get(fields::VM::is_control_domain) == &Value::Bool(true)
        })
        .filter_map(|v| vm_plan(agent, v))
        .collect();
    let attached: std::collections::HashSet<String> = agent
        .store
        .all(class_ids::PBD)
        .iter()
        .filter(|p| p.get(fields::PBD::currently_attached) == &Value::Bool(true))
        .filter_map(|p| p.get(fields::PBD::SR).as_ref_str().map(str::to_owned))
        .collect();
    let int = |o: &Object, f| o.get(f).as_int().unwrap_or(0);
    let srs = agent
        .store
        .all(class_ids::SR)
        .iter()
        .filter(|s| attached.contains(&s.reference))
        .filter_map(|s| {
            Some(SrPlan {
                uuid: s.uuid()?.to_owned(),
                physical_size: int(s, fields::SR::physical_size),
                physical_utilisation: int(s, fields::SR::physical_utilisation),
                virtual_allocation: int(s, fields::SR::virtual_allocation),
            })
        })
        .collect();
    let pifs = agent
        .store
        .all(class_ids::PIF)
        .iter()
        .filter(|p| p.get(fields::PIF::host).as_ref_str() == Some(agent.host.as_str()))
        .map(|p| p.str_field("device").to_owned())
        .collect();
    Plan {
        vms,
        srs,
        pifs,
        sessions: agent.store.count(class_ids::session) as u64,
        tasks: agent.store.count(class_ids::task) as u64,
        simulated_devices: agent.hypervisor.backend_name() != "xen",
    }
}

/// Whether new VM and SR databases get MIN and MAX archives (the pool's
/// `other_config:create_min_max_in_new_VM_RRDs`).
fn vm_min_max(agent: &Agent) -> bool {
    agent.store.get(class_ids::pool, &agent.pool_ref()).is_some_and(|p| {
        p.get(fields::pool::other_config)
            .as_map()
            .iter()
            .any(|(k, v)| k.as_str() == Some("create_min_max_in_new_VM_RRDs") && v.as_str() == Some("true"))
    })
}

/// The host's uuid.
fn host_uuid(agent: &Agent) -> String {
    agent.uuid_of(class_ids::host, &agent.host).unwrap_or_default()
}

/// One round: readings taken, fed to the databases, the metrics records updated, the
/// databases of VMs that stopped saved and put away.
pub async fn round(agent: &Arc<Agent>) {
    round_shifted(agent, 0.0).await;
}

/// [`round`] with the readings stamped `offset` seconds from now (tests: rounds of a
/// simulated clock).
pub async fn round_shifted(agent: &Arc<Agent>, offset: f64) {
    let plan = plan(agent);
    let hv = agent.hypervisor.clone();
    let state = agent.metrics.sampler.clone();
    let dir = rrd_dir(agent);
    let host_uuid = host_uuid(agent);
    // Databases to load first: the host's, and those of VMs and SRs now measured that are not
    // in memory (saved before a restart, or when the VM last stopped).
    let to_load: Vec<(Owner, String)> = {
        let live = agent.metrics.live.lock();
        let mut v = Vec::new();
        if live.host.is_none() {
            v.push((Owner::Host, host_uuid.clone()));
        }
        v.extend(
            plan.vms
                .iter()
                .filter(|p| !live.vms.contains_key(&p.uuid))
                .map(|p| (Owner::Vm(p.uuid.clone()), p.uuid.clone())),
        );
        v.extend(
            plan.srs
                .iter()
                .filter(|p| !live.srs.contains_key(&p.uuid))
                .map(|p| (Owner::Sr(p.uuid.clone()), p.uuid.clone())),
        );
        v
    };
    let plan2 = plan.clone();
    let guests = guest::plan(&plan.vms);
    let work = move || {
        let loaded: Vec<(Owner, rrd::Rrd)> = to_load
            .into_iter()
            .filter_map(|(o, u)| live::load(&dir, &u).map(|r| (o, r)))
            .collect();
        let mut st = state.lock();
        let stamped = move || sources::now() + offset;
        let mut round = sources::collect(hv.as_ref(), &plan2, &mut st, &stamped);
        drop(st);
        let reports = guest::read(hv.as_ref(), &guests);
        sources::add_guest_memory(&mut round, &plan2, &reports);
        (loaded, round, reports)
    };
    let (loaded, round, reports) = match tokio::task::spawn_blocking(work).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "a metrics round did not finish");
            return;
        }
    };
    let min_max = vm_min_max(agent);
    let gone: Vec<(String, RrdInfo)> = {
        let mut live = agent.metrics.live.lock();
        for (owner, rrd) in loaded {
            let domid = round.owners.iter().find(|o| o.owner == owner).map_or(0, |o| o.domid);
            live.put(owner, RrdInfo::loaded(rrd, domid));
        }
        let missing_at = sources::now() + offset;
        for r in &round.owners {
            // A VM that left while the readings were taken: its database went with it.
            if let Owner::Vm(u) = &r.owner {
                if !still_measured_here(agent, u) {
                    continue;
                }
            }
            let info = live.take(&r.owner);
            let mm = matches!(r.owner, Owner::Host) || min_max;
            live.put(r.owner.clone(), RrdInfo::apply(info, r, mm, missing_at));
        }
        // VMs no longer resident and SRs no longer attached: put away (and saved below).
        let vms: std::collections::HashSet<&str> = plan.vms.iter().map(|v| v.uuid.as_str()).collect();
        let srs: std::collections::HashSet<&str> = plan.srs.iter().map(|s| s.uuid.as_str()).collect();
        let old_vms: Vec<String> = live.vms.keys().filter(|u| !vms.contains(u.as_str())).cloned().collect();
        let old_srs: Vec<String> = live.srs.keys().filter(|u| !srs.contains(u.as_str())).cloned().collect();
        let mut gone = Vec::new();
        for u in old_vms {
            if let Some(i) = live.vms.remove(&u) {
                gone.push((u, i));
            }
        }
        for u in old_srs {
            if let Some(i) = live.srs.remove(&u) {
                gone.push((u, i));
            }
        }
        gone
    };
    if !gone.is_empty() {
        let dir = rrd_dir(agent);
        let _ = tokio::task::spawn_blocking(move || {
            for (u, info) in gone {
                if let Err(e) = live::save(&dir, &u, &info.rrd) {
                    tracing::warn!(uuid = u, error = %e, "saving an RRD");
                }
            }
        })
        .await;
    }
    update_records(agent, &round).await;
    guest::update(agent, &reports).await;
    perfmon::check(agent).await;
}

/// Keeps `host_metrics` (memory) and each resident VM's `VM_metrics` (memory, vCPU
/// utilisation) current, writing only what changed.
async fn update_records(agent: &Agent, round: &Round) {
    let now = crate::value::now();
    let host_metrics = agent
        .store
        .get(class_ids::host, &agent.host)
        .and_then(|h| h.get(fields::host::metrics).as_ref_str().map(str::to_owned));
    let r = agent
        .store
        .write(|tx| {
            if let (Some(m), Some((total, free))) = (&host_metrics, round.host_memory) {
                if let Some(cur) = tx.get(class_ids::host_metrics, m) {
                    use fields::host_metrics as f;
                    if cur.get(f::memory_total) != &Value::Int(total) || cur.get(f::memory_free) != &Value::Int(free) {
                        tx.modify(class_ids::host_metrics, m, |o| {
                            o.set(f::memory_total, Value::Int(total));
                            o.set(f::memory_free, Value::Int(free));
                            o.set(f::last_updated, Value::DateTime(now));
                        })?;
                    }
                }
            }
            for (vm, domid, memory, utilisation) in &round.vm_records {
                let Some(rec) = tx.get(class_ids::VM, vm) else { continue };
                // Only if the VM still runs in the domain that was read.
                let power = rec.get(fields::VM::power_state);
                if (*power != VmPowerState::Running && *power != VmPowerState::Paused)
                    || rec.get(fields::VM::domid).as_int() != Some(i64::from(*domid))
                {
                    continue;
                }
                let Some(m) = rec.get(fields::VM::metrics).as_ref_str().map(str::to_owned) else {
                    continue;
                };
                let Some(cur) = tx.get(class_ids::VM_metrics, &m) else {
                    continue;
                };
                use fields::VM_metrics as f;
                let util = Value::map(
                    utilisation
                        .iter()
                        .enumerate()
                        .map(|(i, u)| (Value::Int(i as i64), Value::Float((u * 1e4).round() / 1e4)))
                        .collect(),
                );
                let mem_changed = memory.is_some_and(|m| cur.get(f::memory_actual) != &Value::Int(m));
                let util_changed = !utilisation.is_empty() && cur.get(f::VCPUs_utilisation) != &util;
                if mem_changed || util_changed {
                    tx.modify(class_ids::VM_metrics, &m, |o| {
                        if let Some(mem) = memory {
                            o.set(f::memory_actual, Value::Int(*mem));
                        }
                        if !utilisation.is_empty() {
                            o.set(f::VCPUs_utilisation, util);
                        }
                        o.set(f::last_updated, Value::DateTime(now));
                    })?;
                }
            }
            Ok(())
        })
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "updating the metrics records");
    }
}

/// The VM whose uuid is `uuid`.
fn vm_by_uuid(agent: &Agent, uuid: &str) -> Option<Arc<Object>> {
    let r = agent.store.ref_by_uuid(class_ids::VM, uuid)?;
    agent.store.get(class_ids::VM, &r)
}

/// Whether the VM `uuid` is still one this host measures (resident here, or a control domain).
fn still_measured_here(agent: &Agent, uuid: &str) -> bool {
    vm_by_uuid(agent, uuid).is_some_and(|v| {
        v.get(fields::VM::resident_on).as_ref_str() == Some(agent.host.as_str())
            || v.get(fields::VM::is_control_domain) == &Value::Bool(true)
    })
}

/// Saves every database in memory (blocking thread).
pub async fn save_all(agent: &Arc<Agent>) {
    let dir = rrd_dir(agent);
    let host_uuid = host_uuid(agent);
    let copies: Vec<(String, rrd::Rrd)> = {
        let live = agent.metrics.live.lock();
        live.host
            .iter()
            .map(|i| (host_uuid.clone(), i.rrd.clone()))
            .chain(live.vms.iter().map(|(u, i)| (u.clone(), i.rrd.clone())))
            .chain(live.srs.iter().map(|(u, i)| (u.clone(), i.rrd.clone())))
            .collect()
    };
    let _ = tokio::task::spawn_blocking(move || {
        for (u, rrd) in copies {
            if let Err(e) = live::save(&dir, &u, &rrd) {
                tracing::warn!(uuid = u, error = %e, "saving an RRD");
            }
        }
    })
    .await;
}

/// Forgets the database of an owner that was destroyed, in memory and on disk.
fn forget_owner(agent: &Agent, owner: &Owner) {
    agent.metrics.live.lock().take(owner);
    let uuid = match owner {
        Owner::Vm(u) | Owner::Sr(u) => u,
        Owner::Host => return,
    };
    live::remove(&rrd_dir(agent), uuid);
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::schema::{class_ids, fields};
    use crate::storage::tests::Env;
    use serde_json::json;
    use std::io::{Seek, SeekFrom, Write};

    /// A running VM (a provisioned "Generic Linux PV" clone with a bootable disk) and its
    /// ref.
    pub(crate) async fn running_vm(e: &Env, name: &str) -> String {
        running_vm_with(e, name, false).await
    }

    /// [`running_vm`], with a VIF (device 0) on the first network when `vif`.
    pub(crate) async fn running_vm_with(e: &Env, name: &str, vif: bool) -> String {
        let tpl = e
            .agent
            .store
            .all(class_ids::VM)
            .into_iter()
            .find(|v| v.str_field("name_label") == "Generic Linux PV")
            .unwrap();
        let vm = e
            .new_ref("VM.clone", vec![json!(tpl.reference.as_str()), json!(name)])
            .await;
        e.ok("VM.provision", vec![json!(vm)]).await;
        e.ok("VM.set_is_a_template", vec![json!(vm), json!(false)]).await;
        let rec = e.agent.store.get(class_ids::VM, &vm).unwrap();
        let vbd = rec.get(fields::VM::VBDs).as_set()[0].as_str().unwrap().to_owned();
        let vdi = e
            .agent
            .store
            .get(class_ids::VBD, &vbd)
            .unwrap()
            .get(fields::VBD::VDI)
            .as_str()
            .unwrap()
            .to_owned();
        let path = crate::storage::vdi_path(&e.agent, &vdi).unwrap();
        let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::Start(510)).unwrap();
        f.write_all(&[0x55, 0xaa]).unwrap();
        if vif {
            let net = e.agent.store.all(class_ids::network)[0].reference.clone();
            e.ok(
                "VIF.create",
                vec![json!({
                    "VM": vm, "network": net, "device": "0", "MAC": "", "MTU": 1500,
                    "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}
                })],
            )
            .await;
        }
        e.ok("VM.start", vec![json!(vm), json!(false), json!(false)]).await;
        vm
    }

    /// The databases outlive a restart: saved, read back at the next start and continued.
    #[actix::test]
    async fn databases_are_read_back_after_a_restart() {
        use crate::hypervisor::{SimConfig, SimulatorBackend};
        use crate::{Agent, AgentConfig};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let start = || {
            Agent::start(AgentConfig {
                state_dir: dir.path().join("state"),
                root_password_file: None,
                hypervisor: Arc::new(SimulatorBackend::new(SimConfig::small_host())),
                host_address: "127.0.0.1".into(),
                server_identity: None,
            })
        };
        let agent = start().await.unwrap();
        for k in 0..4 {
            super::round_shifted(&agent, 5.0 * f64::from(k)).await;
        }
        let before = agent.metrics.live.lock().host.as_ref().unwrap().rrd.clone();
        assert!(before.last_updated > 0.0);
        let mem = before.ds_index("memory_total_kib").unwrap();
        let row = before.rras[0].data[mem].peek(0);
        assert!(row > 0.0, "{row}");
        super::save_all(&agent).await;
        let host_uuid = super::host_uuid(&agent);
        drop(agent);
        // Wait for the first agent's background work to let go of the store.
        let mut agent = None;
        for _ in 0..100 {
            match start().await {
                Ok(a) => {
                    agent = Some(a);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
        let agent = agent.unwrap();
        assert!(agent.state_dir.join("rrd").join(format!("{host_uuid}.gz")).exists());
        super::round_shifted(&agent, 20.0).await;
        let live = agent.metrics.live.lock();
        let after = &live.host.as_ref().unwrap().rrd;
        // The rows saved are there, behind the new ones.
        let i = after.ds_index("memory_total_kib").unwrap();
        let kept = (0..10).map(|k| after.rras[0].data[i].peek(k)).any(|v| v == row);
        assert!(kept, "the saved rows were not read back");
        assert!(after.last_updated > before.last_updated);
    }
}
