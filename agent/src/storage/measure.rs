//! Sizes measured from the file system: `VDI.physical_utilisation` (allocated blocks),
//! `SR.physical_size` (the file system's size), `SR.physical_utilisation` (blocks allocated
//! to the SR's VDIs) and `SR.virtual_allocation` (the sum of their virtual sizes).

use super::fsops::{self, blocking};
use super::layout::{sr_dir, sr_kind, sr_obj, vdi_file_name};
use crate::error::ApiError;
use crate::objects::set_field;
use crate::schema::{class_ids, fields};
use crate::value::Value;
use crate::Agent;

/// Re-measures every VDI of the SR and the SR itself, and records what changed.
pub async fn refresh_sr(agent: &Agent, sr_ref: &str) -> Result<(), ApiError> {
    let sr = sr_obj(agent, sr_ref)?;
    let all: Vec<String> = sr
        .get(fields::SR::VDIs)
        .as_set()
        .iter()
        .filter_map(|v| v.as_ref_str())
        .map(str::to_owned)
        .collect();
    measure(agent, sr_ref, all).await
}

/// Re-measures the files of `vdis` (those still in the SR) and the SR's file system, and
/// records them; the SR's totals are summed over all its VDIs as recorded. One file is
/// looked at, not the SR's every file: a VDI operation costs the same in an SR of ten
/// thousand VDIs as in an empty one.
async fn measure(agent: &Agent, sr_ref: &str, vdis: Vec<String>) -> Result<(), ApiError> {
    let sr = sr_obj(agent, sr_ref)?;
    let kind = sr_kind(&sr)?;
    let dir = sr_dir(agent, &sr)?;
    let vdis: Vec<(String, String)> = vdis
        .iter()
        .filter_map(|v| agent.store.get(class_ids::VDI, v))
        .filter(|v| v.get(fields::VDI::SR).as_str() == Some(sr_ref))
        .map(|v| {
            (
                v.reference.clone(),
                v.get(fields::VDI::location).as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let (space, measured) = blocking(move || {
        let space = fsops::fs_space(&dir)?;
        let measured: Vec<(String, u64)> = vdis
            .into_iter()
            .filter_map(|(r, loc)| {
                let (_, alloc) = fsops::sizes(&dir.join(vdi_file_name(kind, &loc))).ok()?;
                Some((r, alloc))
            })
            .collect();
        Ok((space, measured))
    })
    .await?;
    let sr_ref = sr_ref.to_owned();
    agent
        .store
        .write(|tx| {
            for (r, alloc) in &measured {
                if tx.get(class_ids::VDI, r).is_some() {
                    set_field(
                        tx,
                        class_ids::VDI,
                        r,
                        fields::VDI::physical_utilisation,
                        Value::Int(*alloc as i64),
                    )?;
                }
            }
            let Some(sr) = tx.get(class_ids::SR, &sr_ref) else {
                return Ok(());
            };
            let (mut used, mut virt) = (0i64, 0i64);
            for v in sr.get(fields::SR::VDIs).as_set().iter().filter_map(|v| v.as_ref_str()) {
                if let Some(v) = tx.get(class_ids::VDI, v) {
                    virt += v.get(fields::VDI::virtual_size).as_int().unwrap_or(0);
                    used += v.get(fields::VDI::physical_utilisation).as_int().unwrap_or(0);
                }
            }
            set_field(
                tx,
                class_ids::SR,
                &sr_ref,
                fields::SR::physical_size,
                Value::Int(space.0 as i64),
            )?;
            set_field(
                tx,
                class_ids::SR,
                &sr_ref,
                fields::SR::physical_utilisation,
                Value::Int(used),
            )?;
            set_field(
                tx,
                class_ids::SR,
                &sr_ref,
                fields::SR::virtual_allocation,
                Value::Int(virt),
            )
        })
        .await
}

/// Re-measures the VDIs an operation changed (`vdis`: those created, written or resized;
/// none for one that removed VDIs) and the SR's totals; failures are logged, not returned
/// (the operation that asked has already succeeded).
pub async fn refresh_after(agent: &Agent, sr_ref: &str, vdis: &[&str]) {
    let vdis = vdis.iter().map(|v| (*v).to_owned()).collect();
    if let Err(e) = measure(agent, sr_ref, vdis).await {
        tracing::warn!(sr = sr_ref, error = %e, "could not re-measure the SR");
    }
}
