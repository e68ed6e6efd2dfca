//! PBD messages: plug and unplug, and the checks around the implicit create and destroy.

use super::fsops::blocking;
use super::layout::{pbd_location, sr_kind, sr_obj};
use crate::call::{Call, Entry};
use crate::entry;
use crate::error::ApiError;
use crate::implicit;
use crate::objects::set_field;
use crate::schema::{class_ids, fields};
use crate::value::Value;
use crate::Agent;
use std::sync::Arc;

pub(super) fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::PBD, "plug", |agent, _, c| plug(&agent, c.ref_arg(0)?)
            .await
            .map(|()| Value::None)),
        entry!(class_ids::PBD, "unplug", |agent, _, c| {
            unplug(&agent, c.ref_arg(0)?).await.map(|()| Value::None)
        }),
        entry!(class_ids::PBD, "create", |agent, _, c| {
            refuse_second_pbd(&agent, &c)?;
            implicit::generic(&agent, c).await
        }),
        entry!(class_ids::PBD, "destroy", |agent, _, c| {
            if let Some(pbd) = agent.store.get(class_ids::PBD, c.str_arg(0)) {
                if pbd.get(fields::PBD::currently_attached) == &Value::Bool(true) {
                    return Err(ApiError::not_allowed("PBD is currently attached"));
                }
            }
            implicit::generic(&agent, c).await
        }),
    ]
}

/// `PBD.create` for a host that already has a PBD for the SR: `PBD_EXISTS`.
fn refuse_second_pbd(agent: &Agent, c: &Call) -> Result<(), ApiError> {
    let Some(Value::Record(rec)) = c.args.first() else {
        return Ok(());
    };
    let sr = rec.get(fields::PBD::SR).as_ref_str().unwrap_or("");
    let host = rec.get(fields::PBD::host).as_ref_str().unwrap_or("");
    let Some(sr_obj) = agent.store.get(class_ids::SR, sr) else {
        return Ok(());
    };
    let existing = sr_obj
        .get(fields::SR::PBDs)
        .as_set()
        .iter()
        .filter_map(|p| p.as_ref_str())
        .filter_map(|p| agent.store.get(class_ids::PBD, p))
        .find(|p| p.get(fields::PBD::host).as_ref_str() == Some(host));
    match existing {
        Some(existing) => Err(ApiError::PbdExists {
            sr: sr.to_owned(),
            host: host.to_owned(),
            pbd: existing.reference.clone(),
        }),
        None => Ok(()),
    }
}

fn pbd_obj(agent: &Agent, pbd: &str) -> Result<Arc<crate::value::Object>, ApiError> {
    agent
        .store
        .get(class_ids::PBD, pbd)
        .ok_or_else(|| ApiError::handle_invalid("PBD", pbd))
}

async fn set_attached(agent: &Agent, pbd: &str, v: bool) -> Result<(), ApiError> {
    let pbd = pbd.to_owned();
    agent
        .store
        .write(|tx| {
            set_field(
                tx,
                class_ids::PBD,
                &pbd,
                fields::PBD::currently_attached,
                Value::Bool(v),
            )
        })
        .await
}

/// `PBD.plug`: the SR's directory must be there; then the SR is scanned.
async fn plug(agent: &Arc<Agent>, pbd_ref: &str) -> Result<(), ApiError> {
    let pbd = pbd_obj(agent, pbd_ref)?;
    if pbd.get(fields::PBD::currently_attached) == &Value::Bool(true) {
        return Ok(());
    }
    let sr_ref = pbd.get(fields::PBD::SR).as_ref_str().unwrap_or("").to_owned();
    let sr = sr_obj(agent, &sr_ref)?;
    sr_kind(&sr)?;
    let location = pbd_location(&pbd).ok_or_else(|| ApiError::SrBackendFailure {
        status: "1".into(),
        stdout: String::new(),
        stderr: "device_config is missing 'location'".into(),
    })?;
    let loc2 = location.clone();
    if !blocking(move || Ok(loc2.is_dir())).await? {
        return Err(ApiError::SrBackendFailure {
            status: "1".into(),
            stdout: String::new(),
            stderr: format!("the SR directory {} does not exist", location.display()),
        });
    }
    set_attached(agent, pbd_ref, true).await?;
    if pbd.get(fields::PBD::host).as_ref_str() == Some(agent.host.as_str()) {
        super::sr::scan(agent, &sr_ref).await?;
    }
    Ok(())
}

/// `PBD.unplug`: refused while a VBD has one of the SR's VDIs attached.
async fn unplug(agent: &Arc<Agent>, pbd_ref: &str) -> Result<(), ApiError> {
    let pbd = pbd_obj(agent, pbd_ref)?;
    if pbd.get(fields::PBD::currently_attached) != &Value::Bool(true) {
        return Ok(());
    }
    let sr_ref = pbd.get(fields::PBD::SR).as_ref_str().unwrap_or("").to_owned();
    if let Some(sr) = agent.store.get(class_ids::SR, &sr_ref) {
        let vdis: Vec<String> = sr
            .get(fields::SR::VDIs)
            .as_set()
            .iter()
            .filter_map(|v| v.as_ref_str().map(str::to_owned))
            .collect();
        if let Some(v) = super::sr::attached_vdi(agent, &vdis) {
            return Err(ApiError::VdiInUse {
                vdi: v,
                operation: "unplug".into(),
            });
        }
    }
    set_attached(agent, pbd_ref, false).await
}
