//! VBDs and VIFs: attached through the backend when their VM starts, hot-plugged on a running
//! VM, CD media inserted and ejected.

use super::{blocking, blocking_for, rules};
use crate::error::ApiError;
use crate::hypervisor::{
    BackendError, BlockDevice, BlockMode, DevId, DomId, Hypervisor, MacAddr, NetDevice, UnplugMode, VifIpSetting,
};
use crate::objects::set_field;
use crate::schema::{class_ids, fields};
use crate::store::Tx;
use crate::value::{Object, Value, NULL_REF};
use crate::Agent;
use std::path::PathBuf;
use std::sync::Arc;

/// Highest VBD position a VM may use.
pub const MAX_VBD_DEVICES: u32 = 16;
/// Highest VIF position a VM may use.
pub const MAX_VIF_DEVICES: u32 = 7;

fn devid(s: &str) -> Result<DevId, ApiError> {
    s.trim()
        .parse::<DevId>()
        .map_err(|_| ApiError::InvalidDevice { device: s.to_owned() })
}

/// The dom0 path backing a VDI (the storage layer's layout).
pub fn vdi_backing(agent: &Agent, vdi: &str) -> Result<Option<PathBuf>, ApiError> {
    if agent.store.get(class_ids::VDI, vdi).is_none() {
        return Ok(None);
    }
    crate::storage::vdi_path(agent, vdi).map(Some)
}

fn block_device(agent: &Agent, vbd: &Object) -> Result<BlockDevice, ApiError> {
    use fields::VBD as f;
    let cd = vbd.get(f::r#type) == &crate::schema::enums::VbdType::CD.value();
    let empty = vbd.get(f::empty) == &Value::Bool(true);
    let backing = match vbd.get(f::VDI).as_ref_str() {
        Some(vdi) if !empty => vdi_backing(agent, vdi)?,
        _ => None,
    };
    if backing.is_none() && !cd {
        return Err(ApiError::internal(format!("disk VBD {} has no VDI", vbd.reference)));
    }
    let mode = if cd || vbd.get(f::mode) == &crate::schema::enums::VbdMode::RO.value() {
        BlockMode::ReadOnly
    } else {
        BlockMode::ReadWrite
    };
    Ok(BlockDevice {
        devid: devid(vbd.str_field("userdevice"))?,
        backing,
        mode,
        cd,
    })
}

fn net_device(agent: &Agent, vif: &Object) -> Result<NetDevice, ApiError> {
    use fields::VIF as f;
    let mac: MacAddr = vif
        .str_field("MAC")
        .parse()
        .map_err(|_| ApiError::invalid_value("MAC", vif.str_field("MAC")))?;
    let bridge = vif
        .get(f::network)
        .as_ref_str()
        .and_then(|n| agent.store.get(class_ids::network, n))
        .map(|n| n.str_field("bridge").to_owned())
        .unwrap_or_default();
    let mtu = vif.get(f::MTU).as_int().filter(|m| *m > 0).unwrap_or(1500);
    Ok(NetDevice {
        devid: devid(vif.str_field("device"))?,
        mac,
        mtu: mtu as u32,
        bridge,
    })
}

/// The VBDs and VIFs of a VM as devices, in position order (what a PV guest's backends serve
/// and an HVM guest's device model emulates).
pub fn emulated(agent: &Agent, vm: &Object) -> Result<(Vec<BlockDevice>, Vec<NetDevice>), ApiError> {
    let mut blocks = Vec::new();
    for r in vm.get(fields::VM::VBDs).as_set() {
        if let Some(vbd) = r.as_ref_str().and_then(|r| agent.store.get(class_ids::VBD, r)) {
            blocks.push(block_device(agent, &vbd)?);
        }
    }
    let mut nets = Vec::new();
    for r in vm.get(fields::VM::VIFs).as_set() {
        if let Some(vif) = r.as_ref_str().and_then(|r| agent.store.get(class_ids::VIF, r)) {
            nets.push(net_device(agent, &vif)?);
        }
    }
    blocks.sort_by_key(|b| b.devid);
    nets.sort_by_key(|n| n.devid);
    Ok((blocks, nets))
}

/// Plugs every VBD and VIF of a VM into its new domain (each VIF with its address settings
/// for the guest's tools); on failure unplugs what it plugged.
pub async fn attach_all(agent: &Arc<Agent>, vm: &Object, domid: DomId) -> Result<(), ApiError> {
    let (blocks, nets) = emulated(agent, vm)?;
    let settings = ip_settings(agent, vm);
    let hv = agent.hypervisor.clone();
    blocking_for(agent, &vm.reference, move || {
        for b in &blocks {
            hv.plug_block(domid, b)?;
        }
        for n in &nets {
            hv.plug_net(domid, n)?;
            if let Some(setting) = settings.get(&n.devid) {
                hand_over(hv.as_ref(), domid, n, setting)?;
            }
        }
        Ok(())
    })
    .await
}

/// The address settings of a VM's VIFs that ask the guest's tools for static addresses, by
/// position (the others need nothing written: the tools' default is the guest's own choice).
fn ip_settings(agent: &Agent, vm: &Object) -> std::collections::BTreeMap<DevId, VifIpSetting> {
    vm.get(fields::VM::VIFs)
        .as_set()
        .iter()
        .filter_map(|r| r.as_ref_str().and_then(|r| agent.store.get(class_ids::VIF, r)))
        .filter_map(|vif| {
            let setting = crate::network::vif::ip_setting(&vif);
            let id = devid(vif.str_field("device")).ok()?;
            (setting != VifIpSetting::default()).then_some((id, setting))
        })
        .collect()
}

/// Hands a plugged interface's address settings to the guest's tools; a backend with no
/// way to reach them is passed over.
fn hand_over(hv: &dyn Hypervisor, domid: DomId, n: &NetDevice, setting: &VifIpSetting) -> Result<(), BackendError> {
    match hv.set_vif_ip_setting(domid, n.devid, &n.mac, setting) {
        Err(BackendError::Unsupported { what, .. }) => {
            tracing::debug!(domid, devid = n.devid, %what, "no address settings for guest tools here");
            Ok(())
        }
        other => other,
    }
}

/// `VIF.configure_ipv4`/`configure_ipv6` on a plugged VIF: its new settings go to the guest's
/// tools at once (an unplugged VIF gets them when it is plugged).
pub async fn publish_ip_setting(agent: &Arc<Agent>, vif_ref: &str) -> Result<(), ApiError> {
    let vif = agent
        .store
        .get(class_ids::VIF, vif_ref)
        .ok_or_else(|| ApiError::handle_invalid("VIF", vif_ref))?;
    if vif.get(fields::VIF::currently_attached).as_bool() != Some(true) {
        return Ok(());
    }
    let vm = vif.get(fields::VIF::VM).key_text();
    let Ok(domid) = running_domid(agent, &vm) else {
        return Ok(());
    };
    let n = net_device(agent, &vif)?;
    let setting = crate::network::vif::ip_setting(&vif);
    let hv = agent.hypervisor.clone();
    blocking_for(agent, &vm, move || hand_over(hv.as_ref(), domid, &n, &setting)).await
}

/// Sets `currently_attached` on every device of a VM (in a transaction).
pub fn mark_attached(tx: &mut Tx, vm: &Object, attached: bool) -> Result<(), ApiError> {
    for r in vm.get(fields::VM::VBDs).as_set() {
        if let Some(r) = r.as_ref_str() {
            if tx.get(class_ids::VBD, r).is_some() {
                set_field(
                    tx,
                    class_ids::VBD,
                    r,
                    fields::VBD::currently_attached,
                    Value::Bool(attached),
                )?;
            }
        }
    }
    crate::storage::vdi::refresh_allowed_operations(tx, vm.get(fields::VM::VBDs).as_set())?;
    for r in vm.get(fields::VM::VIFs).as_set() {
        if let Some(r) = r.as_ref_str() {
            if tx.get(class_ids::VIF, r).is_some() {
                set_field(
                    tx,
                    class_ids::VIF,
                    r,
                    fields::VIF::currently_attached,
                    Value::Bool(attached),
                )?;
            }
        }
    }
    Ok(())
}

/// Device positions still free on a VM.
pub fn free_devices(agent: &Agent, vm: &Object, vbd: bool) -> Value {
    let (list, class, field, max) = if vbd {
        (fields::VM::VBDs, class_ids::VBD, "userdevice", MAX_VBD_DEVICES)
    } else {
        (fields::VM::VIFs, class_ids::VIF, "device", MAX_VIF_DEVICES)
    };
    let used: Vec<String> = vm
        .get(list)
        .as_set()
        .iter()
        .filter_map(|r| r.as_ref_str().and_then(|r| agent.store.get(class, r)))
        .map(|o| o.str_field(field).to_owned())
        .collect();
    Value::Set(
        (0..max)
            .map(|i| i.to_string())
            .filter(|d| !used.contains(d))
            .map(Value::str)
            .collect(),
    )
}

fn running_domid(agent: &Agent, vm: &str) -> Result<DomId, ApiError> {
    let v = agent
        .store
        .get(class_ids::VM, vm)
        .ok_or_else(|| ApiError::handle_invalid("VM", vm))?;
    match v.get(fields::VM::domid).as_int() {
        Some(d) if d >= 0 => Ok(d as DomId),
        _ => Err(ApiError::VmBadPowerState {
            vm: vm.to_owned(),
            expected: "running".into(),
            actual: v.get(fields::VM::power_state).key_text().to_ascii_lowercase(),
        }),
    }
}

/// Carries out a VBD operation (in the VBD's actor).
pub async fn vbd(agent: &Arc<Agent>, r: &str, op: &str, args: &[Value]) -> Result<Value, ApiError> {
    use fields::VBD as f;
    let vbd = agent
        .store
        .get(class_ids::VBD, r)
        .ok_or_else(|| ApiError::handle_invalid("VBD", r))?;
    let vm = vbd.get(f::VM).key_text();
    let attached = vbd.get(f::currently_attached) == &Value::Bool(true);
    match op {
        "plug" => {
            let d = running_domid(agent, &vm)?;
            let dev = block_device(agent, &vbd)?;
            let hv = agent.hypervisor.clone();
            blocking_for(agent, &vm, move || hv.plug_block(d, &dev)).await?;
            set_attached(agent, class_ids::VBD, r, &vm, true).await
        }
        "unplug" | "unplug_force" => {
            let d = running_domid(agent, &vm)?;
            let id = devid(vbd.str_field("userdevice"))?;
            let mode = if op == "unplug" {
                UnplugMode::Clean
            } else {
                UnplugMode::Force
            };
            let hv = agent.hypervisor.clone();
            blocking_for(agent, &vm, move || hv.unplug_block(d, id, mode)).await?;
            set_attached(agent, class_ids::VBD, r, &vm, false).await
        }
        "insert" | "eject" => {
            let vdi = if op == "insert" {
                let v = args.first().and_then(Value::as_str).unwrap_or(NULL_REF).to_owned();
                if agent.store.get(class_ids::VDI, &v).is_none() {
                    return Err(ApiError::handle_invalid("VDI", &v));
                }
                v
            } else {
                NULL_REF.to_owned()
            };
            let vm2 = vm.clone();
            agent
                .store
                .write(|tx| {
                    set_field(tx, class_ids::VBD, r, f::VDI, Value::reference(vdi.as_str()))?;
                    set_field(tx, class_ids::VBD, r, f::empty, Value::Bool(op == "eject"))?;
                    rules::refresh_vm_and_devices(tx, &vm2)
                })
                .await?;
            if attached {
                // Swap the medium in the running guest's drive.
                let d = running_domid(agent, &vm)?;
                let updated = agent
                    .store
                    .get(class_ids::VBD, r)
                    .ok_or_else(|| ApiError::handle_invalid("VBD", r))?;
                let dev = block_device(agent, &updated)?;
                let hv = agent.hypervisor.clone();
                blocking(agent, move || {
                    hv.unplug_block(d, dev.devid, UnplugMode::Force)?;
                    hv.plug_block(d, &dev)
                })
                .await?;
            }
            Ok(Value::None)
        }
        other => Err(ApiError::not_implemented(&format!("VBD.{other}"))),
    }
}

/// Carries out a VIF operation (in the VIF's actor).
pub async fn vif(agent: &Arc<Agent>, r: &str, op: &str, _args: &[Value]) -> Result<Value, ApiError> {
    let vif = agent
        .store
        .get(class_ids::VIF, r)
        .ok_or_else(|| ApiError::handle_invalid("VIF", r))?;
    let vm = vif.get(fields::VIF::VM).key_text();
    let d = running_domid(agent, &vm)?;
    match op {
        "plug" => {
            let dev = net_device(agent, &vif)?;
            let hv = agent.hypervisor.clone();
            let setting = crate::network::vif::ip_setting(&vif);
            blocking_for(agent, &vm, move || {
                hv.plug_net(d, &dev)?;
                hand_over(hv.as_ref(), d, &dev, &setting)
            })
            .await?;
            set_attached(agent, class_ids::VIF, r, &vm, true).await
        }
        "unplug" | "unplug_force" => {
            let id = devid(vif.str_field("device"))?;
            let mode = if op == "unplug" {
                UnplugMode::Clean
            } else {
                UnplugMode::Force
            };
            let hv = agent.hypervisor.clone();
            blocking_for(agent, &vm, move || hv.unplug_net(d, id, mode)).await?;
            set_attached(agent, class_ids::VIF, r, &vm, false).await
        }
        other => Err(ApiError::not_implemented(&format!("VIF.{other}"))),
    }
}

async fn set_attached(
    agent: &Arc<Agent>,
    class: crate::schema::ClassId,
    r: &str,
    vm: &str,
    on: bool,
) -> Result<Value, ApiError> {
    let f = class
        .field_by_name("currently_attached")
        .ok_or_else(|| ApiError::internal("no currently_attached"))?;
    agent
        .store
        .write(|tx| {
            set_field(tx, class, r, f, Value::Bool(on))?;
            if class == class_ids::VBD {
                crate::storage::vdi::refresh_allowed_operations(tx, [&Value::reference(r)])?;
            }
            rules::refresh_vm_and_devices(tx, vm)
        })
        .await?;
    Ok(Value::None)
}

/// Checks a new VBD or VIF's device position before `create` stores it.
pub fn check_new_device(agent: &Agent, obj: &mut Object) -> Result<(), ApiError> {
    let (vm_field, dev_field, list, class, max) = if obj.class == class_ids::VBD {
        (
            fields::VBD::VM,
            fields::VBD::userdevice,
            fields::VM::VBDs,
            class_ids::VBD,
            MAX_VBD_DEVICES,
        )
    } else {
        (
            fields::VIF::VM,
            fields::VIF::device,
            fields::VM::VIFs,
            class_ids::VIF,
            MAX_VIF_DEVICES,
        )
    };
    let Some(vm) = obj
        .get(vm_field)
        .as_ref_str()
        .and_then(|v| agent.store.get(class_ids::VM, v))
    else {
        return Ok(());
    };
    let requested = obj.get(dev_field).as_str().unwrap_or("").to_owned();
    if requested == "autodetect" || requested.is_empty() {
        let free = free_devices(agent, &vm, obj.class == class_ids::VBD);
        let first = free
            .as_set()
            .first()
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::InvalidDevice {
                device: requested.clone(),
            })?
            .to_owned();
        obj.set(dev_field, Value::str(first));
        return Ok(());
    }
    let n = devid(&requested)?;
    if n >= max {
        return Err(ApiError::InvalidDevice { device: requested });
    }
    let taken = vm
        .get(list)
        .as_set()
        .iter()
        .filter_map(|r| r.as_ref_str().and_then(|r| agent.store.get(class, r)))
        .any(|o| o.get(dev_field).as_str() == Some(requested.as_str()));
    if taken {
        return Err(ApiError::DeviceAlreadyExists { device: requested });
    }
    Ok(())
}

/// A new VBD or VIF: its device checked and its record completed before the write, and its
/// VM's (and its disks') allowed operations refreshed in the same write.
pub const DEVICE_CREATE: crate::implicit::CreateHooks = crate::implicit::CreateHooks {
    before: before_create,
    companions: |_, _| Ok(()),
    after: after_create,
};

fn before_create(agent: &Agent, obj: &mut crate::value::Object) -> Result<(), ApiError> {
    check_new_device(agent, obj)?;
    if obj.class == class_ids::VBD && obj.get(fields::VBD::r#type) == &crate::schema::enums::VbdType::CD.value() {
        obj.set(fields::VBD::mode, crate::schema::enums::VbdMode::RO.value());
    }
    if obj.class == class_ids::VIF && obj.get(fields::VIF::MAC).as_str() == Some("") {
        obj.set(fields::VIF::MAC, Value::str(random_mac()));
        obj.set(fields::VIF::MAC_autogenerated, Value::Bool(true));
    }
    Ok(())
}

fn after_create(tx: &mut Tx, class: crate::schema::ClassId, reference: &str) -> Result<(), ApiError> {
    let vm_field = if class == class_ids::VBD {
        fields::VBD::VM
    } else {
        fields::VIF::VM
    };
    if let Some(vm) = tx
        .get(class, reference)
        .and_then(|o| o.get(vm_field).as_ref_str().map(str::to_owned))
    {
        super::rules::refresh_vm_and_devices(tx, &vm)?;
    }
    Ok(())
}

/// `VBD.destroy`/`VIF.destroy` of an attached device: `OPERATION_NOT_ALLOWED`.
pub fn refuse_if_attached(agent: &Agent, c: &crate::call::Call) -> Result<(), ApiError> {
    let r = c.str_arg(0);
    let f = if c.class == class_ids::VBD {
        fields::VBD::currently_attached
    } else {
        fields::VIF::currently_attached
    };
    if agent
        .store
        .get(c.class, r)
        .is_some_and(|o| o.get(f) == &Value::Bool(true))
    {
        return Err(ApiError::not_allowed(format!(
            "{} {r} is currently attached",
            c.class.name()
        )));
    }
    Ok(())
}

/// A locally administered unicast MAC address.
pub fn random_mac() -> String {
    use rand::Rng;
    let mut b: [u8; 6] = rand::thread_rng().gen();
    b[0] = (b[0] & 0xfe) | 0x02;
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5]
    )
}
