//! PBD messages: plug and unplug, and the checks around the implicit create and destroy.

use super::fsops::blocking;
use super::layout::{pbd_location, sr_kind, sr_obj};
use super::str_arg;
use crate::api::Call;
use crate::error::ApiError;
use crate::objects::set_field;
use crate::schema::{class_ids, fields};
use crate::value::Value;
use crate::Agent;
use std::sync::Arc;

pub(super) async fn custom(agent: &Arc<Agent>, c: &Call) -> Option<Result<Value, ApiError>> {
    let r = match c.message.name {
        "plug" => plug(agent, str_arg(c, 0)).await,
        "unplug" => unplug(agent, str_arg(c, 0)).await,
        _ => return None,
    };
    Some(r.map(|()| Value::None))
}

pub(super) async fn special(agent: &Arc<Agent>, c: &Call) -> Option<Result<Value, ApiError>> {
    match c.message.name {
        "create" => {
            let Some(Value::Record(rec)) = c.args.first() else {
                return None;
            };
            let sr = rec.get(fields::PBD::SR).as_ref_str().unwrap_or("");
            let host = rec.get(fields::PBD::host).as_ref_str().unwrap_or("");
            let existing = agent
                .store
                .get(class_ids::SR, sr)?
                .get(fields::SR::PBDs)
                .as_set()
                .iter()
                .filter_map(|p| p.as_ref_str())
                .filter_map(|p| agent.store.get(class_ids::PBD, p))
                .find(|p| p.get(fields::PBD::host).as_ref_str() == Some(host))?;
            Some(Err(ApiError::PbdExists {
                sr: sr.to_owned(),
                host: host.to_owned(),
                pbd: existing.reference.clone(),
            }))
        }
        "destroy" => {
            let pbd = agent.store.get(class_ids::PBD, str_arg(c, 0))?;
            if pbd.get(fields::PBD::currently_attached) == &Value::Bool(true) {
                return Some(Err(ApiError::not_allowed("PBD is currently attached")));
            }
            None
        }
        _ => None,
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
