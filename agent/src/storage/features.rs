//! What each SR driver can do, and which operations need what.
//!
//! Two tables of data: [`driver_features`] (what a driver does, as its SM record's `features`
//! and `capabilities` tell clients) and [`SR_OPERATION_NEEDS`] / [`VDI_OPERATION_NEEDS`]
//! (the feature an SR or VDI operation needs). The same tables refuse an operation whose
//! feature the SR's driver lacks (`SR_OPERATION_NOT_SUPPORTED [sr]`) and compute the SR's and
//! the VDI's `allowed_operations`, so the two can never disagree.

use super::layout::SrKind;
use crate::error::ApiError;
use crate::objects::{create, new_ref, new_uuid, set_field};
use crate::schema::enums::{StorageOperations as SrOp, VdiOperations as VdiOp};
use crate::schema::{class_ids, fields};
use crate::store::{Store, Tx};
use crate::value::{default_object, Object, Value};

/// A driver feature, as spelled in `SM.features`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// `SR.create` makes the SR.
    SrCreate,
    /// `SR.destroy` deletes the SR and its contents.
    SrDelete,
    /// `PBD.plug` attaches the SR.
    SrAttach,
    /// `PBD.unplug` detaches it.
    SrDetach,
    /// `SR.scan` finds VDIs.
    SrScan,
    /// `SR.probe` answers.
    SrProbe,
    /// `SR.update` re-measures.
    SrUpdate,
    /// `VDI.create`.
    VdiCreate,
    /// `VDI.destroy`.
    VdiDelete,
    /// A VM can attach the VDI.
    VdiAttach,
    /// And detach it.
    VdiDetach,
    /// `VDI.clone`.
    VdiClone,
    /// `VDI.snapshot`.
    VdiSnapshot,
    /// `VDI.resize`.
    VdiResize,
    /// `VDI.resize_online` (a VM using the VDI sees the new size).
    VdiResizeOnline,
    /// `VDI.introduce`.
    VdiIntroduce,
    /// `VDI.update`.
    VdiUpdate,
    /// `VDI.generate_config`.
    VdiGenerateConfig,
    /// `VDI.set_on_boot` (version 2: the driver puts the saved contents back on attach).
    VdiResetOnBoot,
    /// Storage migration (`VDI.pool_migrate`).
    VdiMirror,
    /// Changed-block tracking (`VDI.enable_cbt`, `data_destroy`, `list_changed_blocks`).
    VdiConfigCbt,
    /// Disk space is allocated as it is written.
    ThinProvisioning,
}

impl Feature {
    /// The wire spelling.
    pub const fn name(self) -> &'static str {
        match self {
            Feature::SrCreate => "SR_CREATE",
            Feature::SrDelete => "SR_DELETE",
            Feature::SrAttach => "SR_ATTACH",
            Feature::SrDetach => "SR_DETACH",
            Feature::SrScan => "SR_SCAN",
            Feature::SrProbe => "SR_PROBE",
            Feature::SrUpdate => "SR_UPDATE",
            Feature::VdiCreate => "VDI_CREATE",
            Feature::VdiDelete => "VDI_DELETE",
            Feature::VdiAttach => "VDI_ATTACH",
            Feature::VdiDetach => "VDI_DETACH",
            Feature::VdiClone => "VDI_CLONE",
            Feature::VdiSnapshot => "VDI_SNAPSHOT",
            Feature::VdiResize => "VDI_RESIZE",
            Feature::VdiResizeOnline => "VDI_RESIZE_ONLINE",
            Feature::VdiIntroduce => "VDI_INTRODUCE",
            Feature::VdiUpdate => "VDI_UPDATE",
            Feature::VdiGenerateConfig => "VDI_GENERATE_CONFIG",
            Feature::VdiResetOnBoot => "VDI_RESET_ON_BOOT",
            Feature::VdiMirror => "VDI_MIRROR",
            Feature::VdiConfigCbt => "VDI_CONFIG_CBT",
            Feature::ThinProvisioning => "THIN_PROVISIONING",
        }
    }
}

use Feature as F;

/// What the `file` driver does (feature, version), in the order of the names.
/// `VDI_CONFIG_CBT` only where every write to its VDIs is seen (see [`set_cbt_tracked`]).
const FILE_FEATURES: &[(Feature, i64)] = &[
    (F::SrAttach, 1),
    (F::SrCreate, 1),
    (F::SrDelete, 1),
    (F::SrDetach, 1),
    (F::SrProbe, 1),
    (F::SrScan, 1),
    (F::SrUpdate, 1),
    (F::ThinProvisioning, 1),
    (F::VdiAttach, 1),
    (F::VdiClone, 1),
    (F::VdiConfigCbt, 1),
    (F::VdiCreate, 1),
    (F::VdiDelete, 1),
    (F::VdiDetach, 1),
    (F::VdiIntroduce, 1),
    (F::VdiResetOnBoot, 2),
    (F::VdiResize, 1),
    (F::VdiSnapshot, 1),
    (F::VdiUpdate, 1),
];

static CBT_TRACKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether every write to a `file` VDI passes through this daemon (set at start from the
/// backend): only then does the `file` driver have `VDI_CONFIG_CBT`.
pub fn set_cbt_tracked(tracked: bool) {
    CBT_TRACKED.store(tracked, std::sync::atomic::Ordering::Relaxed);
}

/// What the `iso` driver does: a read-only library, so no VDI is made, changed or deleted.
const ISO_FEATURES: &[(Feature, i64)] = &[
    (F::SrAttach, 1),
    (F::SrCreate, 1),
    (F::SrDetach, 1),
    (F::SrProbe, 1),
    (F::SrScan, 1),
    (F::SrUpdate, 1),
    (F::VdiAttach, 1),
    (F::VdiDetach, 1),
    (F::VdiIntroduce, 1),
    (F::VdiUpdate, 1),
];

/// The features of a driver, with their versions.
pub fn driver_features(kind: SrKind) -> Vec<(Feature, i64)> {
    let cbt = CBT_TRACKED.load(std::sync::atomic::Ordering::Relaxed);
    let all = match kind {
        SrKind::File => FILE_FEATURES,
        SrKind::Iso => ISO_FEATURES,
    };
    all.iter()
        .copied()
        .filter(|(f, _)| cbt || *f != F::VdiConfigCbt)
        .collect()
}

/// The SR operations that need a feature of the SR's driver. The reference's table, plus
/// `destroy` → `SR_DELETE` (the `iso` driver never deletes a library). Operations not listed
/// need none (`vdi_clone` included: its VDI operation needs `VDI_CLONE`).
pub const SR_OPERATION_NEEDS: &[(SrOp, Feature)] = &[
    (SrOp::destroy, F::SrDelete),
    (SrOp::vdi_create, F::VdiCreate),
    (SrOp::vdi_destroy, F::VdiDelete),
    (SrOp::vdi_resize, F::VdiResize),
    (SrOp::vdi_introduce, F::VdiIntroduce),
    (SrOp::vdi_mirror, F::VdiMirror),
    (SrOp::vdi_enable_cbt, F::VdiConfigCbt),
    (SrOp::vdi_disable_cbt, F::VdiConfigCbt),
    (SrOp::vdi_data_destroy, F::VdiConfigCbt),
    (SrOp::vdi_list_changed_blocks, F::VdiConfigCbt),
    (SrOp::vdi_set_on_boot, F::VdiResetOnBoot),
    (SrOp::update, F::SrUpdate),
    (SrOp::vdi_snapshot, F::VdiSnapshot),
];

/// The VDI operations that need a feature of their SR's driver (the reference's table).
/// `copy`, `forget`, `force_unlock` and `blocked` need none.
pub const VDI_OPERATION_NEEDS: &[(VdiOp, Feature)] = &[
    (VdiOp::snapshot, F::VdiSnapshot),
    (VdiOp::destroy, F::VdiDelete),
    (VdiOp::resize, F::VdiResize),
    (VdiOp::update, F::VdiUpdate),
    (VdiOp::resize_online, F::VdiResizeOnline),
    (VdiOp::generate_config, F::VdiGenerateConfig),
    (VdiOp::clone, F::VdiClone),
    (VdiOp::mirror, F::VdiMirror),
    (VdiOp::enable_cbt, F::VdiConfigCbt),
    (VdiOp::disable_cbt, F::VdiConfigCbt),
    (VdiOp::data_destroy, F::VdiConfigCbt),
    (VdiOp::list_changed_blocks, F::VdiConfigCbt),
    (VdiOp::set_on_boot, F::VdiResetOnBoot),
];

/// The VDI operations `VDI.allowed_operations` reports on (as the reference: `set_on_boot`,
/// the CBT operations, `mirror`, `force_unlock` and `blocked` are never listed).
const VDI_REPORTED: &[VdiOp] = &[
    VdiOp::clone,
    VdiOp::copy,
    VdiOp::resize,
    VdiOp::resize_online,
    VdiOp::snapshot,
    VdiOp::destroy,
    VdiOp::forget,
    VdiOp::update,
    VdiOp::generate_config,
];

/// The VDI operations refused (`VDI_IN_USE`) while a VBD has the VDI attached.
pub const VDI_REFUSED_WHILE_ATTACHED: &[VdiOp] = &[VdiOp::destroy, VdiOp::forget, VdiOp::resize];

/// The features of an SR's driver; none for a type without a driver.
fn features_of_sr(sr: &Object) -> Vec<(Feature, i64)> {
    sr.get(fields::SR::r#type)
        .as_str()
        .and_then(SrKind::from_type)
        .map_or_else(Vec::new, driver_features)
}

fn has(features: &[(Feature, i64)], f: Feature) -> bool {
    features.iter().any(|(g, _)| *g == f)
}

fn sr_op_supported(features: &[(Feature, i64)], op: SrOp) -> bool {
    SR_OPERATION_NEEDS
        .iter()
        .filter(|(o, _)| *o == op)
        .all(|(_, f)| has(features, *f))
}

fn vdi_op_supported(features: &[(Feature, i64)], op: VdiOp) -> bool {
    VDI_OPERATION_NEEDS
        .iter()
        .filter(|(o, _)| *o == op)
        .all(|(_, f)| has(features, *f))
}

/// `SR_OPERATION_NOT_SUPPORTED [sr]` unless the SR's driver has what the SR operation needs.
pub fn assert_sr_op(sr: &Object, op: SrOp) -> Result<(), ApiError> {
    if sr_op_supported(&features_of_sr(sr), op) {
        Ok(())
    } else {
        Err(ApiError::SrOperationNotSupported {
            sr: sr.reference.clone(),
        })
    }
}

/// `SR_OPERATION_NOT_SUPPORTED [sr]` unless the driver of the VDI's SR (`sr`) has what the
/// VDI operation needs.
pub fn assert_vdi_op(sr: &Object, op: VdiOp) -> Result<(), ApiError> {
    if vdi_op_supported(&features_of_sr(sr), op) {
        Ok(())
    } else {
        Err(ApiError::SrOperationNotSupported {
            sr: sr.reference.clone(),
        })
    }
}

/// An SR's `allowed_operations`: every storage operation its driver supports.
pub fn sr_allowed_operations(kind: SrKind) -> Value {
    let features = driver_features(kind);
    Value::set(
        SrOp::ALL
            .iter()
            .filter(|op| sr_op_supported(&features, **op))
            .map(|op| op.value())
            .collect(),
    )
}

/// A VDI's `allowed_operations` in an SR of `kind`, with or without a VBD that has it
/// attached now.
pub fn vdi_allowed_operations(kind: SrKind, attached: bool) -> Value {
    let features = driver_features(kind);
    Value::set(
        VDI_REPORTED
            .iter()
            .filter(|op| vdi_op_supported(&features, **op))
            .filter(|op| !(attached && VDI_REFUSED_WHILE_ATTACHED.contains(op)))
            .map(|op| op.value())
            .collect(),
    )
}

/// `SM.features`: feature name → version.
fn features_value(kind: SrKind) -> Value {
    Value::map(
        driver_features(kind)
            .iter()
            .map(|(f, v)| (Value::str(f.name()), Value::Int(*v)))
            .collect(),
    )
}

/// `SM.capabilities` (deprecated): the names of the features.
fn capabilities_value(kind: SrKind) -> Value {
    Value::set(
        driver_features(kind)
            .iter()
            .map(|(f, _)| Value::str(f.name()))
            .collect(),
    )
}

/// The drivers this build has, with their SM records' names.
const DRIVERS: &[(SrKind, &str)] = &[(SrKind::File, "Local file SR"), (SrKind::Iso, "ISO library")];

/// Makes the SM record of every driver, or brings an existing one up to date (a store written
/// by an older build gets the features of this one).
pub fn sync_sm_records(tx: &mut Tx, existing: &[std::sync::Arc<Object>]) -> Result<(), ApiError> {
    use fields::SM as f;
    for (kind, name) in DRIVERS {
        let wanted = [
            (f::name_label, Value::str(*name)),
            (f::vendor, Value::str("xapid")),
            (f::version, Value::str("1.0")),
            (f::required_api_version, Value::str("1.0")),
            (f::features, features_value(*kind)),
            (f::capabilities, capabilities_value(*kind)),
        ];
        let found = existing
            .iter()
            .find(|o| o.get(f::r#type).as_str() == Some(kind.name()))
            .map(|o| o.reference.clone());
        match found.and_then(|r| tx.get(class_ids::SM, &r)) {
            Some(sm) => {
                for (field, v) in wanted {
                    if sm.get(field) != &v {
                        set_field(tx, class_ids::SM, &sm.reference, field, v)?;
                    }
                }
            }
            None => {
                let mut o = default_object(class_ids::SM, &new_ref());
                o.set(f::uuid, Value::str(new_uuid()));
                o.set(f::r#type, Value::str(kind.name()));
                for (field, v) in wanted {
                    o.set(field, v);
                }
                create(tx, o)?;
            }
        }
    }
    Ok(())
}

/// At start: the SM records, and every SR's and VDI's `allowed_operations`, as this build's
/// tables say (a store written by an older build may hold other lists).
pub async fn at_start(store: &Store) -> Result<(), ApiError> {
    let sms = store.all(class_ids::SM);
    let srs = store.all(class_ids::SR);
    let vdis = store.all(class_ids::VDI);
    let attached: std::collections::HashSet<String> = store
        .all(class_ids::VBD)
        .iter()
        .filter(|b| b.get(fields::VBD::currently_attached) == &Value::Bool(true))
        .filter_map(|b| b.get(fields::VBD::VDI).as_ref_str().map(str::to_owned))
        .collect();
    let kinds: std::collections::HashMap<&str, SrKind> = srs
        .iter()
        .filter_map(|sr| {
            let kind = sr.get(fields::SR::r#type).as_str().and_then(SrKind::from_type)?;
            Some((sr.reference.as_str(), kind))
        })
        .collect();
    store
        .write(|tx| {
            sync_sm_records(tx, &sms)?;
            for sr in &srs {
                let Some(kind) = kinds.get(sr.reference.as_str()) else {
                    continue;
                };
                let ops = sr_allowed_operations(*kind);
                if sr.get(fields::SR::allowed_operations) != &ops {
                    set_field(tx, class_ids::SR, &sr.reference, fields::SR::allowed_operations, ops)?;
                }
            }
            for vdi in &vdis {
                let Some(kind) = vdi.get(fields::VDI::SR).as_ref_str().and_then(|sr| kinds.get(sr)) else {
                    continue;
                };
                let ops = vdi_allowed_operations(*kind, attached.contains(vdi.reference.as_str()));
                if vdi.get(fields::VDI::allowed_operations) != &ops {
                    set_field(tx, class_ids::VDI, &vdi.reference, fields::VDI::allowed_operations, ops)?;
                }
            }
            Ok(())
        })
        .await
}
