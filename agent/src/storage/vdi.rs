//! VDI messages: create, destroy, resize, clone, snapshot, copy, set_on_boot, introduce,
//! forget, update (the changed-block-tracking ones are in `cbt_ops.rs`).

use super::cbt_ops::refuse_cbt_metadata;
use super::copy::copy_bytes;
use super::features::{assert_sr_op, assert_vdi_op, vdi_allowed_operations};
use super::fsops::{self, blocking};
use super::layout::{sr_dir, sr_kind, sr_obj, vdi_file, vdi_file_name, vdi_obj, SrKind};
use super::locks;
use super::measure::refresh_after;
use crate::call::{Call, Entry};
use crate::entry;
use crate::error::ApiError;
use crate::objects::{create, destroy, new_ref, new_uuid, set_field};
use crate::schema::enums::{OnBoot, StorageOperations as SrOp, VdiOperations as VdiOp, VdiType};
use crate::schema::{class_ids, fields, FieldId, Qualifier};
use crate::store::Tx;
use crate::value::{default_object, now, Object, Value, NULL_REF};
use crate::Agent;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(super) fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::VDI, "resize", |agent, _, c| {
            resize(&agent, c.ref_arg(0)?, c.int_arg(1), VdiOp::resize)
                .await
                .map(|()| Value::None)
        }),
        entry!(class_ids::VDI, "resize_online", |agent, _, c| {
            resize(&agent, c.ref_arg(0)?, c.int_arg(1), VdiOp::resize_online)
                .await
                .map(|()| Value::None)
        }),
        entry!(class_ids::VDI, "clone", |agent, _, c| {
            duplicate(&agent, c.ref_arg(0)?, false).await.map(Value::reference)
        }),
        entry!(class_ids::VDI, "snapshot", |agent, _, c| {
            duplicate(&agent, c.ref_arg(0)?, true).await.map(Value::reference)
        }),
        entry!(class_ids::VDI, "copy", |agent, _, c| {
            copy(&agent, c.ref_arg(0)?, c.str_arg(1), c.str_arg(3))
                .await
                .map(Value::reference)
        }),
        entry!(class_ids::VDI, "introduce", |agent, _, c| introduce(&agent, &c)
            .await
            .map(Value::reference)),
        entry!(class_ids::VDI, "forget", |agent, _, c| forget(&agent, c.ref_arg(0)?)
            .await
            .map(|()| Value::None)),
        entry!(class_ids::VDI, "update", |agent, _, c| update(&agent, c.ref_arg(0)?)
            .await
            .map(|()| Value::None)),
        entry!(class_ids::VDI, "create", |agent, _, c| {
            let Some(Value::Record(rec)) = c.args.first() else {
                return Err(ApiError::field_type("args"));
            };
            create_vdi(&agent, rec).await.map(Value::reference)
        }),
        entry!(class_ids::VDI, "destroy", |agent, _, c| {
            destroy_vdi(&agent, c.ref_arg(0)?).await.map(|()| Value::None)
        }),
        entry!(class_ids::VDI, "set_on_boot", |agent, _, c| {
            set_on_boot(&agent, c.ref_arg(0)?, c.arg(1)).await.map(|()| Value::None)
        }),
    ]
}

/// A VDI record for a file found in (or made for) an SR.
pub(super) fn new_vdi_object(sr: &str, kind: SrKind, uuid: &str, location: &str, name: &str, size: i64) -> Object {
    use fields::VDI as f;
    let mut o = default_object(class_ids::VDI, &new_ref());
    o.set(f::uuid, Value::str(uuid));
    o.set(f::name_label, Value::str(name));
    o.set(f::SR, Value::reference(sr));
    o.set(f::location, Value::str(location));
    o.set(f::virtual_size, Value::Int(size));
    o.set(f::r#type, VdiType::user.value());
    o.set(f::managed, Value::Bool(true));
    o.set(f::missing, Value::Bool(false));
    o.set(f::read_only, Value::Bool(kind == SrKind::Iso));
    o.set(f::sharable, Value::Bool(kind == SrKind::Iso));
    o.set(f::allowed_operations, vdi_allowed_operations(kind, false));
    o
}

/// Recomputes the `allowed_operations` of the VDIs behind `vbds` (in the same transaction
/// that changed their `currently_attached`).
pub fn refresh_allowed_operations<'a>(tx: &mut Tx, vbds: impl IntoIterator<Item = &'a Value>) -> Result<(), ApiError> {
    for vbd in vbds.into_iter().filter_map(Value::as_ref_str) {
        let Some(vdi) = tx
            .get(class_ids::VBD, vbd)
            .and_then(|b| b.get(fields::VBD::VDI).as_ref_str().map(str::to_owned))
        else {
            continue;
        };
        let Some(obj) = tx.get(class_ids::VDI, &vdi) else {
            continue;
        };
        let Some(kind) = obj
            .get(fields::VDI::SR)
            .as_ref_str()
            .and_then(|sr| tx.get(class_ids::SR, sr))
            .and_then(|sr| sr_kind(&sr).ok())
        else {
            continue;
        };
        let attached = obj
            .get(fields::VDI::VBDs)
            .as_set()
            .iter()
            .filter_map(Value::as_ref_str)
            .any(|b| {
                tx.get(class_ids::VBD, b)
                    .is_some_and(|b| b.get(fields::VBD::currently_attached) == &Value::Bool(true))
            });
        let now = vdi_allowed_operations(kind, attached);
        if obj.get(fields::VDI::allowed_operations) != &now {
            set_field(tx, class_ids::VDI, &vdi, fields::VDI::allowed_operations, now)?;
        }
    }
    Ok(())
}

/// Whether a VBD has the VDI attached now.
pub(super) fn is_attached(agent: &Agent, vdi: &str) -> bool {
    agent.store.all(class_ids::VBD).iter().any(|b| {
        b.get(fields::VBD::VDI).as_ref_str() == Some(vdi)
            && b.get(fields::VBD::currently_attached) == &Value::Bool(true)
    })
}

fn assert_not_attached(agent: &Agent, vdi: &str, op: &str) -> Result<(), ApiError> {
    if is_attached(agent, vdi) {
        return Err(ApiError::VdiInUse {
            vdi: vdi.to_owned(),
            operation: op.to_owned(),
        });
    }
    Ok(())
}

/// The VDI's SR, or `HANDLE_INVALID`.
fn sr_of_vdi(agent: &Agent, vdi: &Object) -> Result<Arc<Object>, ApiError> {
    sr_obj(agent, &sr_of(vdi))
}

/// Where the contents saved by `set_on_boot(reset)` live, beside the VDI's file.
pub(super) fn base_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".base");
    PathBuf::from(s)
}

/// Puts back the contents saved when `on_boot` became `reset` (called on attach).
pub(super) fn reset_from_base(path: &Path) -> Result<(), ApiError> {
    let base = base_path(path);
    if !base.is_file() {
        return Ok(());
    }
    fsops::copy_sparse_blocking(&base, path).map_err(ApiError::from)
}

fn round_up_sector(size: i64) -> i64 {
    size.saturating_add(511) / 512 * 512
}

fn sr_of(vdi: &Object) -> String {
    vdi.get(fields::VDI::SR).as_ref_str().unwrap_or(NULL_REF).to_owned()
}

/// `VDI.create`: a sparse file of `virtual_size` bytes and its record.
pub async fn create_vdi(agent: &Arc<Agent>, rec: &Object) -> Result<String, ApiError> {
    let sr_ref = rec.get(fields::VDI::SR).as_ref_str().unwrap_or("").to_owned();
    let sr = sr_obj(agent, &sr_ref)?;
    let kind = sr_kind(&sr)?;
    assert_sr_op(&sr, SrOp::vdi_create)?;
    let dir = sr_dir(agent, &sr)?;
    let size = rec.get(fields::VDI::virtual_size).as_int().unwrap_or(0);
    if size < 0 {
        return Err(ApiError::invalid_value("virtual_size", size));
    }
    let size = round_up_sector(size);
    let uuid = new_uuid();
    let mut obj = new_vdi_object(&sr_ref, kind, &uuid, &uuid, "", size);
    for (i, f) in class_ids::VDI.def().fields.iter().enumerate() {
        if f.qualifier != Qualifier::RoRuntime {
            obj.set(FieldId(i), rec.get(FieldId(i)).clone());
        }
    }
    obj.set(fields::VDI::SR, Value::reference(sr_ref.as_str()));
    obj.set(fields::VDI::virtual_size, Value::Int(size));
    let reference = obj.reference.clone();
    let path = dir.join(vdi_file_name(kind, &uuid));
    let p2 = path.clone();
    blocking(move || fsops::create_sparse(&p2, size as u64)).await?;
    if let Err(e) = agent.store.write(|tx| create(tx, obj.clone())).await {
        let _ = blocking(move || fsops::remove(&path)).await;
        return Err(e);
    }
    refresh_after(agent, &sr_ref, &[&reference]).await;
    Ok(reference)
}

/// `VDI.destroy`: deletes the file, the record and the VBDs that named it.
/// `VDI.destroy`: the file and the record (refused while a VBD has it attached).
pub async fn destroy_vdi(agent: &Arc<Agent>, vdi_ref: &str) -> Result<(), ApiError> {
    let _guard = locks::write(vdi_ref).await;
    let vdi = vdi_obj(agent, vdi_ref)?;
    assert_sr_op(&*sr_of_vdi(agent, &vdi)?, SrOp::vdi_destroy)?;
    assert_not_attached(agent, vdi_ref, "destroy")?;
    let (path, sr, _) = vdi_file(agent, &vdi)?;
    assert_vdi_op(&sr, VdiOp::destroy)?;
    super::cbt_ops::before_destroy(&vdi).await?;
    blocking(move || {
        fsops::remove(&path)?;
        fsops::remove(&base_path(&path))
    })
    .await?;
    let vbds: Vec<String> = vdi
        .get(fields::VDI::VBDs)
        .as_set()
        .iter()
        .filter_map(|v| v.as_ref_str().map(str::to_owned))
        .collect();
    let suspended: Vec<String> = agent
        .store
        .all(class_ids::VM)
        .iter()
        .filter(|vm| vm.get(fields::VM::suspend_VDI).as_ref_str() == Some(vdi_ref))
        .map(|vm| vm.reference.clone())
        .collect();
    let r = vdi_ref.to_owned();
    agent
        .store
        .write(|tx| {
            destroy(tx, class_ids::VDI, &r)?;
            for b in &vbds {
                if tx.get(class_ids::VBD, b).is_some() {
                    destroy(tx, class_ids::VBD, b)?;
                }
            }
            for vm in &suspended {
                set_field(tx, class_ids::VM, vm, fields::VM::suspend_VDI, Value::null_ref())?;
            }
            Ok(())
        })
        .await?;
    refresh_after(agent, &sr.reference, &[]).await;
    Ok(())
}

/// `VDI.resize` (`op` resize) and `VDI.resize_online`: grows the file; shrinking is refused
/// as the reference's file SR does. Checks in the reference's order: the SR's driver, the
/// SR plugged, not attached (offline resize only), the VDI operation's feature, `on_boot`.
async fn resize(agent: &Arc<Agent>, vdi_ref: &str, size: i64, op: VdiOp) -> Result<(), ApiError> {
    let _guard = locks::write(vdi_ref).await;
    let vdi = vdi_obj(agent, vdi_ref)?;
    let sr = sr_of_vdi(agent, &vdi)?;
    assert_sr_op(&sr, SrOp::vdi_resize)?;
    if op == VdiOp::resize {
        sr_dir(agent, &sr)?;
        assert_not_attached(agent, vdi_ref, op.name())?;
    }
    assert_vdi_op(&sr, op)?;
    refuse_cbt_metadata(&vdi)?;
    let (path, sr, _) = vdi_file(agent, &vdi)?;
    if *vdi.get(fields::VDI::on_boot) == OnBoot::reset {
        return Err(ApiError::VdiOnBootModeIncompatibleWithOperation {});
    }
    let current = vdi.get(fields::VDI::virtual_size).as_int().unwrap_or(0);
    let size = round_up_sector(size);
    if size < current {
        return Err(ApiError::SrBackendFailure {
            status: "79".into(),
            stdout: String::new(),
            stderr: "VDI Invalid size [opterr=shrinking not allowed]".into(),
        });
    }
    blocking(move || fsops::set_size(&path, size as u64)).await?;
    super::cbt_ops::after_resize(&vdi, size);
    let r = vdi_ref.to_owned();
    agent
        .store
        .write(|tx| set_field(tx, class_ids::VDI, &r, fields::VDI::virtual_size, Value::Int(size)))
        .await?;
    refresh_after(agent, &sr.reference, &[vdi_ref]).await;
    Ok(())
}

/// Fields a copy takes from its source.
const COPIED: &[FieldId] = &[
    fields::VDI::name_label,
    fields::VDI::name_description,
    fields::VDI::r#type,
    fields::VDI::sharable,
    fields::VDI::other_config,
    fields::VDI::xenstore_data,
    fields::VDI::sm_config,
    fields::VDI::tags,
];

/// Makes a new file VDI in `dst_sr` holding `src`'s bytes now; returns its ref.
async fn new_copy(
    agent: &Arc<Agent>,
    src: &Object,
    src_path: PathBuf,
    dst_sr: &Object,
    snapshot: bool,
) -> Result<String, ApiError> {
    let kind = sr_kind(dst_sr)?;
    let dir = sr_dir(agent, dst_sr)?;
    let size = src.get(fields::VDI::virtual_size).as_int().unwrap_or(0).max(0);
    let uuid = new_uuid();
    let mut obj = new_vdi_object(&dst_sr.reference, kind, &uuid, &uuid, "", size);
    for f in COPIED {
        obj.set(*f, src.get(*f).clone());
    }
    obj.set(fields::VDI::read_only, Value::Bool(false));
    if snapshot {
        obj.set(fields::VDI::is_a_snapshot, Value::Bool(true));
        obj.set(fields::VDI::snapshot_of, Value::reference(src.reference.as_str()));
        obj.set(fields::VDI::snapshot_time, Value::DateTime(now()));
        obj.set(fields::VDI::read_only, src.get(fields::VDI::read_only).clone());
    }
    let dst_path = dir.join(vdi_file_name(kind, &uuid));
    let d2 = dst_path.clone();
    blocking(move || fsops::create_sparse(&d2, size as u64)).await?;
    let copied = copy_bytes(src_path, dst_path.clone(), size as u64, true).await;
    let how = match copied {
        Ok(how) => how,
        Err(e) => {
            let _ = blocking(move || fsops::remove(&dst_path)).await;
            return Err(e.into());
        }
    };
    tracing::debug!(src = %src.reference, ?how, "VDI bytes copied");
    let reference = obj.reference.clone();
    if let Err(e) = agent.store.write(|tx| create(tx, obj.clone())).await {
        let _ = blocking(move || fsops::remove(&dst_path)).await;
        return Err(e);
    }
    refresh_after(agent, &dst_sr.reference, &[&reference]).await;
    Ok(reference)
}

/// `VDI.snapshot` / `VDI.clone`: a new VDI in the same SR with the bytes as they are now.
/// `VDI.clone` (`snapshot` false) or `VDI.snapshot`: a new VDI holding the bytes as they are.
pub async fn duplicate(agent: &Arc<Agent>, vdi_ref: &str, snapshot: bool) -> Result<String, ApiError> {
    let _guard = locks::read(vdi_ref).await;
    let vdi = vdi_obj(agent, vdi_ref)?;
    let sr = sr_of_vdi(agent, &vdi)?;
    if snapshot {
        assert_sr_op(&sr, SrOp::vdi_snapshot)?;
    }
    assert_vdi_op(&sr, if snapshot { VdiOp::snapshot } else { VdiOp::clone })?;
    refuse_cbt_metadata(&vdi)?;
    let (path, sr, _) = vdi_file(agent, &vdi)?;
    let made = new_copy(agent, &vdi, path, &sr, snapshot).await?;
    if snapshot {
        super::cbt_ops::after_snapshot(agent, &vdi, &made).await?;
    }
    Ok(made)
}

/// `VDI.copy`: into a new VDI of `sr`, or over `into_vdi` when that is given.
/// `VDI.copy(vdi, sr, base, into)`: the bytes into a new VDI on `sr` (or into `into`).
pub async fn copy(agent: &Arc<Agent>, vdi_ref: &str, sr_ref: &str, into: &str) -> Result<String, ApiError> {
    let _guard = locks::read(vdi_ref).await;
    let vdi = vdi_obj(agent, vdi_ref)?;
    refuse_cbt_metadata(&vdi)?;
    let (path, _, _) = vdi_file(agent, &vdi)?;
    let size = vdi.get(fields::VDI::virtual_size).as_int().unwrap_or(0).max(0);
    if into.is_empty() || into == NULL_REF {
        let dst_sr = sr_obj(agent, sr_ref)?;
        assert_sr_op(&dst_sr, SrOp::vdi_create)?;
        return new_copy(agent, &vdi, path, &dst_sr, false).await;
    }
    if into == vdi_ref {
        return Err(ApiError::invalid_value("into_vdi", into));
    }
    let _into_guard = locks::write(into).await;
    let target = vdi_obj(agent, into)?;
    if target.get(fields::VDI::read_only) == &Value::Bool(true) {
        return Err(ApiError::VdiReadonly { vdi: into.to_owned() });
    }
    if target.get(fields::VDI::virtual_size).as_int().unwrap_or(0) < size {
        return Err(ApiError::VdiTooSmall {
            vdi: into.to_owned(),
            minimum_size: size.to_string(),
        });
    }
    let (dst_path, dst_sr, kind) = vdi_file(agent, &target)?;
    if kind == SrKind::Iso {
        // The iso driver's library is read-only, whatever the record says.
        return Err(ApiError::VdiReadonly { vdi: into.to_owned() });
    }
    copy_bytes(path, dst_path, size as u64, false).await?;
    refresh_after(agent, &dst_sr.reference, &[into]).await;
    Ok(into.to_owned())
}

/// `VDI.set_on_boot`: `reset` saves the current contents, put back on every attach;
/// `persist` drops them.
async fn set_on_boot(agent: &Arc<Agent>, vdi_ref: &str, value: Value) -> Result<(), ApiError> {
    let _guard = locks::write(vdi_ref).await;
    let vdi = vdi_obj(agent, vdi_ref)?;
    let sr = sr_of_vdi(agent, &vdi)?;
    assert_sr_op(&sr, SrOp::vdi_set_on_boot)?;
    assert_not_attached(agent, vdi_ref, "set_on_boot")?;
    assert_vdi_op(&sr, VdiOp::set_on_boot)?;
    refuse_cbt_metadata(&vdi)?;
    super::cbt_ops::refuse_cbt_enabled(&vdi)?;
    let (path, _, _) = vdi_file(agent, &vdi)?;
    let reset = value == OnBoot::reset;
    let base = base_path(&path);
    if reset {
        let size = vdi.get(fields::VDI::virtual_size).as_int().unwrap_or(0).max(0) as u64;
        let b2 = base.clone();
        blocking(move || {
            fsops::remove(&b2)?;
            fsops::create_sparse(&b2, size)
        })
        .await?;
        if let Err(e) = copy_bytes(path, base.clone(), size, true).await {
            let _ = blocking(move || fsops::remove(&base)).await;
            return Err(e.into());
        }
    } else {
        blocking(move || fsops::remove(&base)).await?;
    }
    let r = vdi_ref.to_owned();
    agent
        .store
        .write(|tx| {
            set_field(
                tx,
                class_ids::VDI,
                &r,
                fields::VDI::on_boot,
                if reset { OnBoot::reset } else { OnBoot::persist }.value(),
            )
        })
        .await
}

/// `VDI.introduce`: a record for a file already in the SR.
async fn introduce(agent: &Arc<Agent>, c: &Call) -> Result<String, ApiError> {
    let sr_ref = c.str_arg(3).to_owned();
    let sr = sr_obj(agent, &sr_ref)?;
    assert_sr_op(&sr, SrOp::vdi_introduce)?;
    let kind = sr_kind(&sr)?;
    let dir = sr_dir(agent, &sr)?;
    let location = c.str_arg(8).to_owned();
    let missing = || ApiError::VdiLocationMissing {
        sr: sr_ref.clone(),
        location: location.clone(),
    };
    if location.is_empty() || location.contains('/') || location.starts_with('.') {
        return Err(missing());
    }
    let taken = sr
        .get(fields::SR::VDIs)
        .as_set()
        .iter()
        .filter_map(|v| v.as_ref_str())
        .filter_map(|v| agent.store.get(class_ids::VDI, v))
        .any(|v| v.get(fields::VDI::location).as_str() == Some(location.as_str()));
    if taken {
        return Err(ApiError::LocationNotUnique {
            sr: sr_ref.clone(),
            location: location.clone(),
        });
    }
    let path = dir.join(vdi_file_name(kind, &location));
    let size = blocking(move || fsops::sizes(&path).map(|s| s.0))
        .await
        .map_err(|_| missing())?;
    let uuid = match c.str_arg(0) {
        "" => new_uuid(),
        u => u.to_owned(),
    };
    let mut obj = new_vdi_object(&sr_ref, kind, &uuid, &location, c.str_arg(1), size as i64);
    use fields::VDI as f;
    obj.set(f::name_description, Value::str(c.str_arg(2)));
    if let Value::Enum(t) = c.arg(4) {
        obj.set(f::r#type, Value::Enum(t));
    }
    obj.set(f::sharable, Value::Bool(c.bool_arg(5)));
    obj.set(f::read_only, Value::Bool(c.bool_arg(6) || kind == SrKind::Iso));
    for (i, fid) in [(7, f::other_config), (9, f::xenstore_data), (10, f::sm_config)] {
        if let Value::Map(m) = c.arg(i) {
            obj.set(fid, Value::Map(m));
        }
    }
    obj.set(f::managed, Value::Bool(c.bool_arg(11)));
    obj.set(f::is_a_snapshot, Value::Bool(c.bool_arg(15)));
    if let Value::DateTime(t) = c.arg(16) {
        obj.set(f::snapshot_time, Value::DateTime(t));
    }
    let snap_of = c.str_arg(17);
    if !snap_of.is_empty() && snap_of != NULL_REF && agent.store.get(class_ids::VDI, snap_of).is_some() {
        obj.set(f::snapshot_of, Value::reference(snap_of));
    }
    let reference = obj.reference.clone();
    agent.store.write(|tx| create(tx, obj.clone())).await?;
    refresh_after(agent, &sr_ref, &[&reference]).await;
    Ok(reference)
}

/// `VDI.forget`: drops the record, keeps the file.
async fn forget(agent: &Arc<Agent>, vdi_ref: &str) -> Result<(), ApiError> {
    let vdi = vdi_obj(agent, vdi_ref)?;
    assert_not_attached(agent, vdi_ref, "forget")?;
    let r = vdi_ref.to_owned();
    agent.store.write(|tx| destroy(tx, class_ids::VDI, &r)).await?;
    refresh_after(agent, &sr_of(&vdi), &[]).await;
    Ok(())
}

/// `VDI.update`: re-measures the VDI (and its SR).
async fn update(agent: &Arc<Agent>, vdi_ref: &str) -> Result<(), ApiError> {
    let vdi = vdi_obj(agent, vdi_ref)?;
    assert_vdi_op(&*sr_of_vdi(agent, &vdi)?, VdiOp::update)?;
    let (_, sr, _) = vdi_file(agent, &vdi)?;
    super::measure::refresh_sr(agent, &sr.reference).await
}
