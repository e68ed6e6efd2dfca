//! `VDI.pool_migrate(vdi, sr, options)`: one disk of a running VM moves to another SR of the
//! pool while the VM runs: a `VM.migrate_send` (`lifecycle/migrate_send.rs`) of the VM that has
//! the disk attached, to the host it runs on, its other disks mapped to where they are (as the
//! reference's does it); the answer is the copy, which the VM's VBD names now.

use super::migrate_send::{disk_vdis, sr_of};
use super::vm_power::vm_of;
use crate::call::{Call, CallCtx, Entry};
use crate::entry;
use crate::error::ApiError;
use crate::schema::{class_ids, fields};
use crate::value::Value;
use crate::Agent;
use serde_json::Value as Json;
use std::sync::Arc;

/// The message of this module.
pub fn behaviour() -> Vec<Entry> {
    vec![entry!(class_ids::VDI, "pool_migrate", |agent, ctx, c| {
        vdi_pool_migrate(&agent, &ctx, &c).await
    })]
}

/// `VDI.pool_migrate`: one disk of a running VM to another SR of the pool.
async fn vdi_pool_migrate(agent: &Arc<Agent>, ctx: &CallCtx, c: &Call) -> Result<Value, ApiError> {
    let vdi = c.ref_arg(0)?.to_owned();
    let sr = c.ref_arg(1)?.to_owned();
    let rec = agent
        .store
        .get(class_ids::VDI, &vdi)
        .ok_or_else(|| ApiError::handle_invalid("VDI", &vdi))?;
    if agent.store.get(class_ids::SR, &sr).is_none() {
        return Err(ApiError::handle_invalid("SR", &sr));
    }
    if rec.get(fields::VDI::r#type).key_text() == "cbt_metadata" {
        return Err(ApiError::VdiIncompatibleType {
            vdi: vdi.clone(),
            r#type: "cbt_metadata".into(),
        });
    }
    if rec.get(fields::VDI::cbt_enabled) == &Value::Bool(true) {
        return Err(ApiError::VdiCbtEnabled { vdi: vdi.clone() });
    }
    // The VM that has it attached, as the reference's forwarding finds it.
    let vm = rec
        .get(fields::VDI::VBDs)
        .as_set()
        .iter()
        .filter_map(|b| b.as_ref_str().and_then(|b| agent.store.get(class_ids::VBD, b)))
        .find(|b| b.get(fields::VBD::currently_attached) == &Value::Bool(true))
        .and_then(|b| b.get(fields::VBD::VM).as_ref_str().map(str::to_owned))
        .ok_or_else(|| ApiError::VdiNeedsVmForMigrate { vdi: vdi.clone() })?;
    let vm_rec = vm_of(agent, &vm)?;
    let vbd = vm_rec
        .get(fields::VM::VBDs)
        .as_set()
        .iter()
        .filter_map(Value::as_ref_str)
        .find(|b| {
            agent
                .store
                .get(class_ids::VBD, b)
                .is_some_and(|b| b.get(fields::VBD::VDI).as_ref_str() == Some(vdi.as_str()))
        })
        .map(str::to_owned)
        .ok_or(ApiError::VbdMissing {})?;
    let host = vm_rec.get(fields::VM::resident_on).key_text();
    let mut vdi_map = serde_json::Map::new();
    vdi_map.insert(vdi.clone(), Json::String(sr.clone()));
    for other in disk_vdis(agent, &vm_rec).into_iter().filter(|v| *v != vdi) {
        let at = sr_of(agent, &other).unwrap_or_default();
        vdi_map.insert(other, Json::String(at));
    }
    let session = Json::String(c.session_ref().to_owned());
    // The destination: the host the VM runs on, on its management network.
    let network = crate::network::management::management_pif(
        agent,
        &*agent
            .store
            .get(class_ids::host, &host)
            .ok_or_else(|| ApiError::handle_invalid("host", &host))?,
    )
    .and_then(|p| p.get(fields::PIF::network).as_ref_str().map(str::to_owned))
    .ok_or(ApiError::HostHasNoManagementIp {})?;
    let dest = crate::dispatch::call(
        agent,
        ctx,
        "host.migrate_receive",
        &[
            session.clone(),
            Json::String(host),
            Json::String(network),
            Json::Object(Default::default()),
        ],
    )
    .await?;
    let dest = Json::Object(
        dest.as_map()
            .iter()
            .map(|(k, v)| (k.key_text(), Json::String(v.key_text())))
            .collect(),
    );
    crate::dispatch::call(
        agent,
        ctx,
        "VM.migrate_send",
        &[
            session,
            Json::String(vm.clone()),
            dest,
            Json::Bool(true),
            Json::Object(vdi_map),
            Json::Object(Default::default()),
            Json::Object(Default::default()),
            Json::Object(Default::default()),
        ],
    )
    .await?;
    // The copy is what the VM's VBD names now.
    agent
        .store
        .get(class_ids::VBD, &vbd)
        .and_then(|b| b.get(fields::VBD::VDI).as_ref_str().map(Value::reference))
        .ok_or(ApiError::VbdMissing {})
}
