//! What a fresh state dir starts with: a pool, this host (with its CPUs and metrics), the
//! control domain, VM templates, a local SR, a network on a PIF. Also rebuilds the objects of
//! classes that are never written to disk (metrics) after a restart.

use crate::error::ApiError;
use crate::objects::{create, new_ref, new_uuid, set_field};
use crate::schema::enums::{DomainType, IpConfigurationMode, OnCrashBehaviour, OnNormalExit, VmPowerState};
use crate::schema::{class_ids, fields, ClassId};
use crate::storage::SrKind;
use crate::store::{Store, Tx};
use crate::value::{default_object, now, Object, Value};
use std::path::Path;

/// Host facts the first objects are built from (the backend supplies them).
#[derive(Clone, Debug)]
pub struct HostFacts {
    /// Host name.
    pub hostname: String,
    /// Logical CPUs.
    pub cpus: Vec<CpuFacts>,
    /// Total memory in bytes.
    pub memory_total: i64,
    /// Free memory in bytes.
    pub memory_free: i64,
    /// Memory the control domain holds, in bytes.
    pub dom0_memory: i64,
    /// Hypervisor version, e.g. "4.17.5".
    pub hypervisor_version: String,
    /// Which backend supplied these facts ("xen" or "simulator").
    pub backend: String,
}

impl HostFacts {
    /// Reads the facts from the backend.
    pub fn from_backend(hv: &dyn crate::hypervisor::Hypervisor) -> Result<HostFacts, crate::hypervisor::BackendError> {
        let info = hv.host_info()?;
        let dom0 = hv
            .list_domains()?
            .into_iter()
            .find(|d| d.domid == 0)
            .map_or(0, |d| d.memory_actual);
        let cpu = CpuFacts {
            vendor: info.cpu.vendor.clone(),
            modelname: info.cpu.model_name.clone(),
            speed_mhz: info.cpu.speed_mhz as i64,
            family: i64::from(info.cpu.family),
            model: i64::from(info.cpu.model),
            stepping: i64::from(info.cpu.stepping),
            flags: info.cpu.flags.join(" "),
        };
        Ok(HostFacts {
            hostname: info.hostname.clone(),
            cpus: vec![cpu; info.cpu.count.max(1) as usize],
            memory_total: info.memory_total as i64,
            memory_free: info.memory_free as i64,
            dom0_memory: dom0 as i64,
            hypervisor_version: info.hypervisor.version_string(),
            backend: hv.backend_name().to_owned(),
        })
    }
}

/// One logical CPU.
#[derive(Clone, Debug, Default)]
pub struct CpuFacts {
    /// Vendor id.
    pub vendor: String,
    /// Model name.
    pub modelname: String,
    /// Speed in MHz.
    pub speed_mhz: i64,
    /// Family.
    pub family: i64,
    /// Model.
    pub model: i64,
    /// Stepping.
    pub stepping: i64,
    /// Flags, space separated.
    pub flags: String,
}

/// The product version this daemon reports.
pub const PRODUCT_VERSION: &str = "8.4.0";
/// API version (major, minor) of the datamodel served.
pub const API_VERSION: (i64, i64) = (2, 21);

fn obj(class: ClassId, set: impl FnOnce(&mut Object)) -> Object {
    let mut o = default_object(class, &new_ref());
    if let Some(f) = class.field_by_name("uuid") {
        o.set(f, Value::str(new_uuid()));
    }
    set(&mut o);
    o
}

fn r(s: &str) -> Value {
    Value::reference(s)
}

/// Creates the first objects if the store has no pool yet; returns (pool, host) refs. On a
/// store that has them, brings the storage drivers' SM records and the SRs' and VDIs'
/// `allowed_operations` up to this build's tables.
pub async fn ensure(store: &Store, facts: &HostFacts, state_dir: &Path) -> Result<(String, String), ApiError> {
    let pool = store.all(class_ids::pool).first().map(|o| o.reference.clone());
    if let (Some(pool), Some(host)) = (pool, own_host(store, state_dir)) {
        remember_host(store, state_dir, &host);
        crate::storage::at_start(store).await?;
        return Ok((pool, host));
    }
    if store.is_pooled() && !store.all(class_ids::host).is_empty() {
        // A pool's database without this host's record: never make a second pool in it.
        return Err(ApiError::internal(format!(
            "the pool database names no host whose uuid is in {}",
            state_dir.join(HOST_UUID_FILE).display()
        )));
    }
    let sr_dir = state_dir.join("sr");
    std::fs::create_dir_all(&sr_dir).map_err(ApiError::internal)?;
    let (phys_size, phys_free) = fs_space(&sr_dir);
    store
        .write(|tx| {
            let host = obj(class_ids::host, |o| {
                use fields::host as f;
                o.set(f::name_label, Value::str(facts.hostname.as_str()));
                o.set(f::hostname, Value::str(facts.hostname.as_str()));
                o.set(f::address, Value::str("127.0.0.1"));
                o.set(f::enabled, Value::Bool(true));
                o.set(f::API_version_major, Value::Int(API_VERSION.0));
                o.set(f::API_version_minor, Value::Int(API_VERSION.1));
                o.set(f::API_version_vendor, Value::str("XenServer"));
                o.set(f::sched_policy, Value::str("credit"));
                o.set(
                    f::software_version,
                    Value::string_map([
                        ("product_version", PRODUCT_VERSION),
                        ("product_version_text", "8"),
                        ("product_version_text_short", "8"),
                        ("platform_name", "XCP"),
                        ("platform_version", "3.4.0"),
                        ("product_brand", "xapid"),
                        ("build_number", env!("CARGO_PKG_VERSION")),
                        ("xapi", "24.0"),
                        ("xapi_build", env!("CARGO_PKG_VERSION")),
                        ("xen", facts.hypervisor_version.as_str()),
                        ("hostname", facts.hostname.as_str()),
                        ("backend", facts.backend.as_str()),
                    ]),
                );
                let c0 = facts.cpus.first().cloned().unwrap_or_default();
                let count = facts.cpus.len().to_string();
                o.set(
                    f::cpu_info,
                    Value::string_map([
                        ("cpu_count", count.as_str()),
                        ("socket_count", "1"),
                        ("vendor", c0.vendor.as_str()),
                        ("speed", &c0.speed_mhz.to_string()),
                        ("modelname", c0.modelname.as_str()),
                        ("family", &c0.family.to_string()),
                        ("model", &c0.model.to_string()),
                        ("stepping", &c0.stepping.to_string()),
                        ("flags", c0.flags.as_str()),
                    ]),
                );
                o.set(
                    f::capabilities,
                    Value::Set(
                        ["xen-3.0-x86_64", "hvm-3.0-x86_32", "hvm-3.0-x86_64"]
                            .iter()
                            .map(|s| Value::str(*s))
                            .collect(),
                    ),
                );
            });
            let h = host.reference.clone();
            create(tx, host)?;
            for (i, c) in facts.cpus.iter().enumerate() {
                create(
                    tx,
                    obj(class_ids::host_cpu, |o| {
                        use fields::host_cpu as f;
                        o.set(f::host, r(&h));
                        o.set(f::number, Value::Int(i as i64));
                        o.set(f::vendor, Value::str(c.vendor.as_str()));
                        o.set(f::modelname, Value::str(c.modelname.as_str()));
                        o.set(f::speed, Value::Int(c.speed_mhz));
                        o.set(f::family, Value::Int(c.family));
                        o.set(f::model, Value::Int(c.model));
                        o.set(f::stepping, Value::str(c.stepping.to_string()));
                        o.set(f::flags, Value::str(c.flags.as_str()));
                    }),
                )?;
            }
            // Storage: the SM records of the drivers (with their features), the default local
            // SR and its PBD.
            crate::storage::features::sync_sm_records(tx, &[])?;
            let sr = obj(class_ids::SR, |o| {
                use fields::SR as f;
                o.set(f::name_label, Value::str("Local storage"));
                o.set(f::r#type, Value::str(SrKind::File.name()));
                o.set(
                    f::allowed_operations,
                    crate::storage::features::sr_allowed_operations(SrKind::File),
                );
                o.set(f::content_type, Value::str("user"));
                o.set(f::physical_size, Value::Int(phys_size));
                o.set(f::physical_utilisation, Value::Int(phys_size - phys_free));
                o.set(f::other_config, Value::string_map([("i18n-key", "local-storage")]));
            });
            let sr_ref = sr.reference.clone();
            create(tx, sr)?;
            create(
                tx,
                obj(class_ids::PBD, |o| {
                    use fields::PBD as f;
                    o.set(f::host, r(&h));
                    o.set(f::SR, r(&sr_ref));
                    o.set(
                        f::device_config,
                        Value::string_map([("location", sr_dir.display().to_string())]),
                    );
                    o.set(f::currently_attached, Value::Bool(true));
                }),
            )?;
            // Networking: one bridge on one physical interface.
            let net = obj(class_ids::network, |o| {
                use fields::network as f;
                o.set(f::name_label, Value::str("Pool-wide network associated with eth0"));
                o.set(f::bridge, Value::str("xenbr0"));
                o.set(f::MTU, Value::Int(1500));
            });
            let net_ref = net.reference.clone();
            create(tx, net)?;
            create(
                tx,
                obj(class_ids::PIF, |o| {
                    use fields::PIF as f;
                    o.set(f::device, Value::str("eth0"));
                    o.set(f::VLAN, Value::Int(-1));
                    o.set(f::network, r(&net_ref));
                    o.set(f::host, r(&h));
                    o.set(f::MAC, Value::str(crate::lifecycle::devices::random_mac()));
                    o.set(f::MTU, Value::Int(1500));
                    o.set(f::physical, Value::Bool(true));
                    o.set(f::management, Value::Bool(true));
                    o.set(f::currently_attached, Value::Bool(true));
                    o.set(f::ip_configuration_mode, IpConfigurationMode::DHCP.value());
                    o.set(f::IP, Value::str("127.0.0.1"));
                }),
            )?;
            // The control domain.
            let dom0 = obj(class_ids::VM, |o| {
                use fields::VM as f;
                o.set(
                    f::name_label,
                    Value::str(format!("Control domain on host: {}", facts.hostname)),
                );
                o.set(f::is_control_domain, Value::Bool(true));
                o.set(f::power_state, VmPowerState::Running.value());
                o.set(f::domid, Value::Int(0));
                o.set(f::resident_on, r(&h));
                o.set(f::memory_static_max, Value::Int(facts.dom0_memory));
                o.set(f::memory_dynamic_max, Value::Int(facts.dom0_memory));
                o.set(f::memory_dynamic_min, Value::Int(facts.dom0_memory));
                o.set(f::memory_static_min, Value::Int(facts.dom0_memory));
                o.set(f::memory_target, Value::Int(facts.dom0_memory));
                let n = facts.cpus.len().max(1) as i64;
                o.set(f::VCPUs_max, Value::Int(n));
                o.set(f::VCPUs_at_startup, Value::Int(n));
                o.set(f::domain_type, DomainType::pv.value());
                o.set(f::actions_after_shutdown, OnNormalExit::destroy.value());
                o.set(f::actions_after_reboot, OnNormalExit::restart.value());
                o.set(f::actions_after_crash, OnCrashBehaviour::restart.value());
            });
            let dom0_ref = dom0.reference.clone();
            create(tx, dom0)?;
            set_field(tx, class_ids::host, &h, fields::host::control_domain, r(&dom0_ref))?;
            set_field(
                tx,
                class_ids::host,
                &h,
                fields::host::resident_VMs,
                Value::set(vec![r(&dom0_ref)]),
            )?;
            create_templates(tx)?;
            let pool = obj(class_ids::pool, |o| {
                use fields::pool as f;
                o.set(f::master, r(&h));
                o.set(f::default_SR, r(&sr_ref));
                o.set(f::suspend_image_SR, r(&sr_ref));
                o.set(f::crash_dump_SR, r(&sr_ref));
            });
            let p = pool.reference.clone();
            create(tx, pool)?;
            Ok((p, h))
        })
        .await
        .inspect(|(_, h)| remember_host(store, state_dir, h))
}

/// Creates the templates a fresh database starts with.
pub fn create_templates(tx: &mut Tx) -> Result<(), ApiError> {
    for t in TEMPLATES {
        create(tx, template(t))?;
    }
    Ok(())
}

/// The file in the state dir that names this host (its uuid): in a pool's database, which of
/// the hosts is this one.
pub const HOST_UUID_FILE: &str = "host-uuid";

/// This host's ref: the host whose uuid the state dir names, else (a state dir from before the
/// file, one host) the only host.
pub fn own_host(store: &Store, state_dir: &Path) -> Option<String> {
    if let Ok(uuid) = std::fs::read_to_string(state_dir.join(HOST_UUID_FILE)) {
        if let Some(r) = store.ref_by_uuid(class_ids::host, uuid.trim()) {
            return Some(r);
        }
    }
    let hosts = store.all(class_ids::host);
    match hosts.as_slice() {
        [only] => Some(only.reference.clone()),
        _ => None,
    }
}

/// Writes this host's uuid into the state dir (see [`HOST_UUID_FILE`]).
pub fn remember_host(store: &Store, state_dir: &Path, host: &str) {
    let Some(uuid) = store
        .get(class_ids::host, host)
        .and_then(|h| h.uuid().map(str::to_owned))
    else {
        return;
    };
    if let Err(e) = std::fs::write(state_dir.join(HOST_UUID_FILE), uuid) {
        tracing::warn!(error = %e, "could not write the host's uuid into the state dir");
    }
}

/// Recreates the in-memory objects (metrics) that persistent objects point at, and the
/// static roles.
pub async fn rebuild_ephemeral(store: &Store, facts: &HostFacts, address: &str, me: &str) -> Result<(), ApiError> {
    crate::rbac::ensure_roles(store).await?;
    // In a pool, another host's facts and objects are that host's to refresh.
    let pooled = store.is_pooled();
    store
        .write(|tx| {
            for host in tx_all(tx, store, class_ids::host) {
                if host.reference != me {
                    continue;
                }
                // What the backend says now wins over what first boot recorded (the hypervisor
                // may have been upgraded, or the backend changed).
                let count = facts.cpus.len().to_string();
                for (field, updates) in [
                    (
                        fields::host::software_version,
                        [
                            ("xen", facts.hypervisor_version.as_str()),
                            ("backend", facts.backend.as_str()),
                        ],
                    ),
                    (
                        fields::host::cpu_info,
                        [("cpu_count", count.as_str()), ("socket_count", "1")],
                    ),
                ] {
                    let map = with_keys(host.get(field), &updates);
                    set_field(tx, class_ids::host, &host.reference, field, map)?;
                }
                set_field(
                    tx,
                    class_ids::host,
                    &host.reference,
                    fields::host::address,
                    Value::str(address),
                )?;
                let m = host.get(fields::host::metrics).clone();
                ensure_metrics(tx, class_ids::host, &host.reference, fields::host::metrics, &m, |o| {
                    o.set(fields::host_metrics::memory_total, Value::Int(facts.memory_total));
                    o.set(fields::host_metrics::memory_free, Value::Int(facts.memory_free));
                    o.set(fields::host_metrics::live, Value::Bool(true));
                    o.set(fields::host_metrics::last_updated, Value::DateTime(now()));
                })?;
            }
            for vm in tx_all(tx, store, class_ids::VM) {
                if pooled && vm.get(fields::VM::resident_on).as_ref_str().is_some_and(|h| h != me) {
                    continue;
                }
                let m = vm.get(fields::VM::metrics).clone();
                let mem = vm.get(fields::VM::memory_target).as_int().unwrap_or(0);
                let vcpus = vm.get(fields::VM::VCPUs_at_startup).as_int().unwrap_or(1);
                let running = *vm.get(fields::VM::power_state) != VmPowerState::Halted;
                ensure_metrics(tx, class_ids::VM, &vm.reference, fields::VM::metrics, &m, |o| {
                    o.set(
                        fields::VM_metrics::memory_actual,
                        Value::Int(if running { mem } else { 0 }),
                    );
                    o.set(
                        fields::VM_metrics::VCPUs_number,
                        Value::Int(if running { vcpus } else { 0 }),
                    );
                    o.set(
                        fields::VM_metrics::start_time,
                        Value::DateTime(if running { now() } else { 0 }),
                    );
                    o.set(fields::VM_metrics::last_updated, Value::DateTime(now()));
                })?;
            }
            for pif in tx_all(tx, store, class_ids::PIF) {
                if pooled && pif.get(fields::PIF::host).as_ref_str() != Some(me) {
                    continue;
                }
                let m = pif.get(fields::PIF::metrics).clone();
                ensure_metrics(tx, class_ids::PIF, &pif.reference, fields::PIF::metrics, &m, |o| {
                    o.set(fields::PIF_metrics::carrier, Value::Bool(true));
                    o.set(fields::PIF_metrics::last_updated, Value::DateTime(now()));
                })?;
            }
            Ok(())
        })
        .await
}

/// `map` (a string map) with `updates` set, other keys kept in place.
fn with_keys(map: &Value, updates: &[(&str, &str)]) -> Value {
    let mut pairs = map.as_map().to_vec();
    for (k, v) in updates {
        match pairs.iter_mut().find(|(key, _)| key.as_str() == Some(*k)) {
            Some((_, old)) => *old = Value::str(*v),
            None => pairs.push((Value::str(*k), Value::str(*v))),
        }
    }
    Value::map(pairs)
}

fn tx_all(_tx: &Tx, store: &Store, class: ClassId) -> Vec<std::sync::Arc<Object>> {
    store.all(class)
}

fn ensure_metrics(
    tx: &mut Tx,
    owner_class: ClassId,
    owner: &str,
    field: crate::schema::FieldId,
    current: &Value,
    fill: impl FnOnce(&mut Object),
) -> Result<(), ApiError> {
    let Some(metrics_class) = metrics_class_of(owner_class, field) else {
        return Ok(());
    };
    let existing = current.as_ref_str().map(str::to_owned);
    if let Some(m) = &existing {
        if tx.get(metrics_class, m).is_some() {
            return Ok(());
        }
    }
    // Keep the ref the owner already holds, so clients' cached refs stay valid.
    let reference = existing.unwrap_or_else(new_ref);
    let mut o = default_object(metrics_class, &reference);
    if let Some(f) = metrics_class.field_by_name("uuid") {
        o.set(f, Value::str(new_uuid()));
    }
    fill(&mut o);
    create(tx, o)?;
    if current.as_ref_str() != Some(reference.as_str()) {
        set_field(tx, owner_class, owner, field, Value::reference(reference))?;
    }
    Ok(())
}

fn metrics_class_of(owner: ClassId, field: crate::schema::FieldId) -> Option<ClassId> {
    match owner.field(field).ty {
        crate::schema::Ty::Ref(c) => Some(*c),
        _ => None,
    }
}

fn fs_space(dir: &Path) -> (i64, i64) {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => {
            let frag = s.fragment_size() as i64;
            (s.blocks() as i64 * frag, s.blocks_available() as i64 * frag)
        }
        Err(_) => (0, 0),
    }
}

struct TemplateDef {
    name: &'static str,
    memory_mib: i64,
    vcpus: i64,
    hvm: bool,
    distro: &'static str,
    disk_gib: i64,
}

const TEMPLATES: &[TemplateDef] = &[
    TemplateDef {
        name: "Other install media",
        memory_mib: 512,
        vcpus: 1,
        hvm: true,
        distro: "",
        disk_gib: 10,
    },
    TemplateDef {
        name: "Debian Bookworm 12",
        memory_mib: 1024,
        vcpus: 1,
        hvm: true,
        distro: "debian",
        disk_gib: 10,
    },
    TemplateDef {
        name: "Ubuntu Jammy Jellyfish 22.04",
        memory_mib: 1024,
        vcpus: 1,
        hvm: true,
        distro: "ubuntu",
        disk_gib: 10,
    },
    TemplateDef {
        name: "Rocky Linux 9",
        memory_mib: 2048,
        vcpus: 2,
        hvm: true,
        distro: "rhel",
        disk_gib: 10,
    },
    TemplateDef {
        name: "Generic Linux PV",
        memory_mib: 256,
        vcpus: 1,
        hvm: false,
        distro: "linux",
        disk_gib: 10,
    },
];

fn template(t: &TemplateDef) -> Object {
    obj(class_ids::VM, |o| {
        use fields::VM as f;
        let mem = t.memory_mib * 1024 * 1024;
        o.set(f::name_label, Value::str(t.name));
        o.set(f::name_description, Value::str(format!("Template for {}", t.name)));
        o.set(f::is_a_template, Value::Bool(true));
        o.set(f::is_default_template, Value::Bool(true));
        o.set(f::memory_static_max, Value::Int(mem));
        o.set(f::memory_dynamic_max, Value::Int(mem));
        o.set(f::memory_dynamic_min, Value::Int(mem));
        o.set(f::memory_static_min, Value::Int(128 * 1024 * 1024));
        o.set(f::memory_target, Value::Int(mem));
        o.set(f::VCPUs_max, Value::Int(t.vcpus));
        o.set(f::VCPUs_at_startup, Value::Int(t.vcpus));
        o.set(f::actions_after_shutdown, OnNormalExit::destroy.value());
        o.set(f::actions_after_reboot, OnNormalExit::restart.value());
        o.set(f::actions_after_crash, OnCrashBehaviour::restart.value());
        o.set(f::resident_on, Value::null_ref());
        if t.hvm {
            o.set(f::HVM_boot_policy, Value::str("BIOS order"));
            o.set(f::HVM_boot_params, Value::string_map([("order", "cdn")]));
            o.set(f::domain_type, DomainType::hvm.value());
            o.set(
                f::platform,
                Value::string_map([("acpi", "1"), ("apic", "true"), ("pae", "true"), ("viridian", "false")]),
            );
        } else {
            o.set(f::PV_bootloader, Value::str("pygrub"));
            o.set(f::domain_type, DomainType::pv.value());
        }
        let disks = format!(
            "<provision><disk device=\"0\" size=\"{}\" sr=\"\" bootable=\"true\" type=\"system\"/></provision>",
            t.disk_gib * 1024 * 1024 * 1024
        );
        let mut oc = vec![
            ("default_template", "true"),
            ("install-methods", "cdrom,nfs,http,ftp"),
            ("disks", disks.as_str()),
        ];
        if !t.distro.is_empty() {
            oc.push(("linux_template", "true"));
        }
        o.set(f::other_config, Value::string_map(oc));
        o.set(f::recommendations, Value::str("<restrictions><restriction field=\"memory-static-max\" max=\"137438953472\"/><restriction field=\"vcpus-max\" max=\"32\"/></restrictions>"));
    })
}
