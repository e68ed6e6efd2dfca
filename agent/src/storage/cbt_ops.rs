//! The changed-block-tracking messages (`VDI.enable_cbt`, `disable_cbt`,
//! `list_changed_blocks`, `data_destroy`) with the reference's checks in its order, and what
//! snapshot, resize and destroy do to a tracked VDI's log (`storage/cbt.rs`).

use super::cbt::{self, Log};
use super::features::{assert_sr_op, assert_vdi_op};
use super::fsops::{self, blocking};
use super::layout::{sr_obj, vdi_file, vdi_obj};
use super::locks;
use super::measure::refresh_after;
use super::vdi::is_attached;
use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::objects::set_field;
use crate::schema::enums::{OnBoot, StorageOperations as SrOp, VdiOperations as VdiOp, VdiType};
use crate::schema::{class_ids, fields};
use crate::value::{Object, Value, NULL_REF};
use crate::Agent;
use std::sync::Arc;

pub(super) fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::VDI, "enable_cbt", |agent, _, c| {
            set_cbt(&agent, c.ref_arg(0)?, true).await.map(|()| Value::None)
        }),
        entry!(class_ids::VDI, "disable_cbt", |agent, _, c| {
            set_cbt(&agent, c.ref_arg(0)?, false).await.map(|()| Value::None)
        }),
        entry!(class_ids::VDI, "list_changed_blocks", |agent, _, c| {
            list_changed_blocks(&agent, c.ref_arg(0)?, c.ref_arg(1)?)
                .await
                .map(Value::str)
        }),
        entry!(class_ids::VDI, "data_destroy", |agent, _, c| {
            data_destroy(&agent, c.ref_arg(0)?).await.map(|()| Value::None)
        }),
    ]
}

fn sr_of(agent: &Agent, vdi: &Object) -> Result<Arc<Object>, ApiError> {
    sr_obj(agent, vdi.get(fields::VDI::SR).as_ref_str().unwrap_or(NULL_REF))
}

fn is_true(vdi: &Object, f: crate::schema::FieldId) -> bool {
    vdi.get(f) == &Value::Bool(true)
}

/// `VDI_INCOMPATIBLE_TYPE [vdi, cbt_metadata]` for a VDI whose data was destroyed (the
/// operations that need its bytes: clone, copy, snapshot, resize, set_on_boot, enable/disable).
pub fn refuse_cbt_metadata(vdi: &Object) -> Result<(), ApiError> {
    if *vdi.get(fields::VDI::r#type) == VdiType::cbt_metadata {
        return Err(ApiError::VdiIncompatibleType {
            vdi: vdi.reference.clone(),
            r#type: VdiType::cbt_metadata.name().to_owned(),
        });
    }
    Ok(())
}

/// `VDI_CBT_ENABLED [vdi]` for the operations tracking forbids (`set_on_boot`).
pub fn refuse_cbt_enabled(vdi: &Object) -> Result<(), ApiError> {
    if is_true(vdi, fields::VDI::cbt_enabled) {
        return Err(ApiError::VdiCbtEnabled {
            vdi: vdi.reference.clone(),
        });
    }
    Ok(())
}

async fn set_cbt(agent: &Arc<Agent>, vdi_ref: &str, on: bool) -> Result<(), ApiError> {
    let _guard = locks::write(vdi_ref).await;
    let vdi = vdi_obj(agent, vdi_ref)?;
    let sr = sr_of(agent, &vdi)?;
    let (sr_op, vdi_op) = if on {
        (SrOp::vdi_enable_cbt, VdiOp::enable_cbt)
    } else {
        (SrOp::vdi_disable_cbt, VdiOp::disable_cbt)
    };
    assert_sr_op(&sr, sr_op)?;
    assert_vdi_op(&sr, vdi_op)?;
    refuse_cbt_metadata(&vdi)?;
    if is_true(&vdi, fields::VDI::is_a_snapshot) {
        return Err(ApiError::OperationNotAllowed {
            reason: format!("VDI is a snapshot: {vdi_ref}"),
        });
    }
    let t = vdi.get(fields::VDI::r#type);
    if *t != VdiType::user && *t != VdiType::system {
        return Err(ApiError::VdiIncompatibleType {
            vdi: vdi_ref.to_owned(),
            r#type: t.as_str().unwrap_or_default().to_owned(),
        });
    }
    if *vdi.get(fields::VDI::on_boot) == OnBoot::reset {
        return Err(ApiError::VdiOnBootModeIncompatibleWithOperation {});
    }
    if is_true(&vdi, fields::VDI::cbt_enabled) == on {
        return Ok(());
    }
    let (path, _, _) = vdi_file(agent, &vdi)?;
    let uuid = vdi.uuid().unwrap_or_default().to_owned();
    if on {
        let size = vdi.get(fields::VDI::virtual_size).as_int().unwrap_or(0).max(0) as u64;
        blocking(move || cbt::track_blocking(&uuid, &path, Log::new(size, ""))).await?;
    } else {
        // The snapshots keep their logs: changes between them can still be listed.
        if let Some(parent) = cbt::log_of(&uuid).map(|l| l.parent) {
            cbt::update(&parent, |l| l.child.clear());
        }
        blocking(move || cbt::untrack_blocking(&uuid)).await?;
        cbt::flush().await?;
    }
    let r = vdi_ref.to_owned();
    agent
        .store
        .write(|tx| set_field(tx, class_ids::VDI, &r, fields::VDI::cbt_enabled, Value::Bool(on)))
        .await
}

/// The reference's driver error for changed blocks it cannot compute.
fn changed_blocks_error(why: &str) -> ApiError {
    ApiError::SrBackendFailure {
        status: "460".into(),
        stdout: String::new(),
        stderr: format!("Failed to calculate changed blocks for given VDIs. [opterr={why}]"),
    }
}

async fn list_changed_blocks(agent: &Arc<Agent>, from_ref: &str, to_ref: &str) -> Result<String, ApiError> {
    let from = vdi_obj(agent, from_ref)?;
    let to = vdi_obj(agent, to_ref)?;
    if is_attached(agent, to_ref) {
        return Err(ApiError::VdiInUse {
            vdi: to_ref.to_owned(),
            operation: VdiOp::list_changed_blocks.name().to_owned(),
        });
    }
    let sr = sr_of(agent, &to)?;
    assert_sr_op(&sr, SrOp::vdi_list_changed_blocks)?;
    assert_vdi_op(&sr, VdiOp::list_changed_blocks)?;
    super::layout::sr_dir(agent, &sr)?;
    let from_uuid = from.uuid().unwrap_or_default();
    let to_uuid = to.uuid().unwrap_or_default();
    if from_uuid == to_uuid {
        return Err(changed_blocks_error("Source and target VDI are same"));
    }
    cbt::flush().await?;
    let unrelated = || changed_blocks_error("Source and target VDI are unrelated");
    if cbt::log_of(from_uuid).is_none() {
        return Err(unrelated());
    }
    // From `to` back through the chain to `from`: the union of the changes of every VDI after
    // `from`, `to` included.
    let mut merged: Vec<u8> = Vec::new();
    let mut cur = to_uuid.to_owned();
    let mut seen = 0usize;
    loop {
        let log = cbt::log_of(&cur).ok_or_else(unrelated)?;
        if merged.len() < log.bitmap.len() {
            merged.resize(log.bitmap.len(), 0);
        }
        for (m, b) in merged.iter_mut().zip(&log.bitmap) {
            *m |= *b;
        }
        if log.parent == from_uuid {
            break;
        }
        seen += 1;
        if log.parent.is_empty() || seen > 100_000 {
            return Err(unrelated());
        }
        cur = log.parent;
    }
    Ok(base64(&merged))
}

/// Standard base64 with padding.
pub fn base64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

async fn data_destroy(agent: &Arc<Agent>, vdi_ref: &str) -> Result<(), ApiError> {
    let _guard = locks::write(vdi_ref).await;
    let vdi = vdi_obj(agent, vdi_ref)?;
    let sr = sr_of(agent, &vdi)?;
    assert_sr_op(&sr, SrOp::vdi_data_destroy)?;
    assert_vdi_op(&sr, VdiOp::data_destroy)?;
    if !is_true(&vdi, fields::VDI::is_a_snapshot) {
        return Err(ApiError::OperationNotAllowed {
            reason: format!("VDI is not a snapshot: {vdi_ref}"),
        });
    }
    if !is_true(&vdi, fields::VDI::cbt_enabled) {
        return Err(ApiError::VdiNoCbtMetadata {
            vdi: vdi_ref.to_owned(),
        });
    }
    if is_attached(agent, vdi_ref) {
        return Err(ApiError::VdiInUse {
            vdi: vdi_ref.to_owned(),
            operation: VdiOp::data_destroy.name().to_owned(),
        });
    }
    if *vdi.get(fields::VDI::r#type) == VdiType::cbt_metadata {
        return Ok(());
    }
    let (path, sr, _) = vdi_file(agent, &vdi)?;
    // The file stays (empty) beside its log; the record says there is no data.
    blocking(move || fsops::set_size(&path, 0)).await?;
    let r = vdi_ref.to_owned();
    agent
        .store
        .write(|tx| {
            set_field(
                tx,
                class_ids::VDI,
                &r,
                fields::VDI::r#type,
                VdiType::cbt_metadata.value(),
            )
        })
        .await?;
    refresh_after(agent, &sr.reference, &[vdi_ref]).await;
    Ok(())
}

/// After `VDI.snapshot` of a tracked VDI: the snapshot takes the VDI's log (the changes since
/// the previous snapshot) and the VDI starts a new one counting from the snapshot.
pub async fn after_snapshot(agent: &Arc<Agent>, vdi: &Object, snap_ref: &str) -> Result<(), ApiError> {
    if !is_true(vdi, fields::VDI::cbt_enabled) {
        return Ok(());
    }
    let snap = vdi_obj(agent, snap_ref)?;
    let (snap_path, _, _) = vdi_file(agent, &snap)?;
    let (vdi_path, _, _) = vdi_file(agent, vdi)?;
    let uuid = vdi.uuid().unwrap_or_default().to_owned();
    let snap_uuid = snap.uuid().unwrap_or_default().to_owned();
    let size = vdi.get(fields::VDI::virtual_size).as_int().unwrap_or(0).max(0) as u64;
    let old = cbt::log_of(&uuid).unwrap_or_else(|| {
        let mut l = Log::new(size, "");
        l.bitmap.fill(0xff);
        l
    });
    let mut snap_log = old.clone();
    snap_log.child = uuid.clone();
    let parent = old.parent.clone();
    let (u2, s2) = (uuid.clone(), snap_uuid.clone());
    blocking(move || {
        cbt::track_blocking(&s2, &snap_path, snap_log)?;
        cbt::track_blocking(&u2, &vdi_path, Log::new(size, &s2))
    })
    .await?;
    if !parent.is_empty() {
        cbt::update(&parent, |l| l.child = snap_uuid.clone());
    }
    cbt::flush().await?;
    let s = snap_ref.to_owned();
    agent
        .store
        .write(|tx| set_field(tx, class_ids::VDI, &s, fields::VDI::cbt_enabled, Value::Bool(true)))
        .await
}

/// Before a tracked VDI is destroyed: its changes pass to the next VDI of its chain, which
/// then counts from the destroyed one's parent, so the chain stays whole.
pub async fn before_destroy(vdi: &Object) -> Result<(), ApiError> {
    let uuid = vdi.uuid().unwrap_or_default().to_owned();
    let Some(log) = cbt::log_of(&uuid) else {
        return Ok(());
    };
    if !log.child.is_empty() {
        let (bits, parent) = (log.bitmap.clone(), log.parent.clone());
        cbt::update(&log.child, |c| {
            if c.bitmap.len() < bits.len() {
                c.bitmap.resize(bits.len(), 0);
            }
            for (x, b) in c.bitmap.iter_mut().zip(&bits) {
                *x |= *b;
            }
            c.parent = parent;
        });
    }
    if !log.parent.is_empty() {
        let child = log.child.clone();
        cbt::update(&log.parent, |p| p.child = child);
    }
    blocking(move || cbt::untrack_blocking(&uuid)).await?;
    cbt::flush().await?;
    Ok(())
}

/// After a resize: the log grows with the VDI.
pub fn after_resize(vdi: &Object, size: i64) {
    if let Some(uuid) = vdi.uuid() {
        cbt::update(uuid, |l| l.resize(size.max(0) as u64));
    }
}

/// At start: the logs of the tracked VDIs whose SR is plugged here are read back.
pub async fn load_at_start(agent: &Arc<Agent>) {
    for vdi in agent.store.all(class_ids::VDI) {
        if !is_true(&vdi, fields::VDI::cbt_enabled) {
            continue;
        }
        let Ok((path, _, _)) = vdi_file(agent, &vdi) else {
            continue;
        };
        let uuid = vdi.uuid().unwrap_or_default().to_owned();
        let size = vdi.get(fields::VDI::virtual_size).as_int().unwrap_or(0).max(0) as u64;
        if let Err(e) = blocking(move || cbt::load_blocking(&uuid, &path, size)).await {
            tracing::warn!(vdi = %vdi.reference, error = %e, "changed-block log not loaded");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_as_python_encodes() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(&[0xff, 0x80, 0x01, 0x00]), "/4ABAA==");
    }
}
