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
    let kind = sr_kind(&sr)?;
    let dir = sr_dir(agent, &sr)?;
    let vdis: Vec<(String, String)> = sr
        .get(fields::SR::VDIs)
        .as_set()
        .iter()
        .filter_map(|v| v.as_ref_str())
        .filter_map(|v| agent.store.get(class_ids::VDI, v))
        .map(|v| {
            (
                v.reference.clone(),
                v.get(fields::VDI::location).as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let dir2 = dir.clone();
    let (space, measured) = blocking(move || {
        let space = fsops::fs_space(&dir2)?;
        let measured: Vec<(String, Option<(u64, u64)>)> = vdis
            .into_iter()
            .map(|(r, loc)| {
                let sizes = fsops::sizes(&dir2.join(vdi_file_name(kind, &loc))).ok();
                (r, sizes)
            })
            .collect();
        Ok((space, measured))
    })
    .await?;
    let sr_ref = sr_ref.to_owned();
    agent
        .store
        .write(|tx| {
            let mut used = 0i64;
            let mut virt = 0i64;
            for (r, sizes) in &measured {
                let Some(v) = tx.get(class_ids::VDI, r) else {
                    continue;
                };
                virt += v.get(fields::VDI::virtual_size).as_int().unwrap_or(0);
                if let Some((_, alloc)) = sizes {
                    used += *alloc as i64;
                    set_field(
                        tx,
                        class_ids::VDI,
                        r,
                        fields::VDI::physical_utilisation,
                        Value::Int(*alloc as i64),
                    )?;
                }
            }
            if tx.get(class_ids::SR, &sr_ref).is_none() {
                return Ok(());
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

/// Re-measures the SR a VDI belongs to; failures are logged, not returned (the operation that
/// asked has already succeeded).
pub async fn refresh_after(agent: &Agent, sr_ref: &str) {
    if let Err(e) = refresh_sr(agent, sr_ref).await {
        tracing::warn!(sr = sr_ref, error = %e, "could not re-measure the SR");
    }
}
