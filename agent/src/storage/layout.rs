//! Where an SR's and a VDI's bytes live: the SR's directory comes from this host's PBD
//! (`device_config:location`); a `file` VDI is `<dir>/<location>.img` (its location is its
//! uuid), an `iso` VDI is `<dir>/<location>` (the file name).

use crate::error::ApiError;
use crate::schema::enums::OnBoot;
use crate::schema::{class_ids, fields};
use crate::value::{Object, Value, NULL_REF};
use crate::Agent;
use std::path::PathBuf;
use std::sync::Arc;

/// Suffix of a `file` SR's VDI files.
pub const IMG_SUFFIX: &str = ".img";

/// The SR types this build has drivers for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrKind {
    /// VDIs are sparse files in a directory.
    File,
    /// A read-only library of `.iso` files.
    Iso,
}

impl SrKind {
    /// The driver for an SR type name.
    pub fn from_type(t: &str) -> Option<SrKind> {
        match t.to_ascii_lowercase().as_str() {
            "file" => Some(SrKind::File),
            "iso" => Some(SrKind::Iso),
            _ => None,
        }
    }
    /// The type name.
    pub fn name(self) -> &'static str {
        match self {
            SrKind::File => "file",
            SrKind::Iso => "iso",
        }
    }
}

/// The SR record or `HANDLE_INVALID`.
pub fn sr_obj(agent: &Agent, sr: &str) -> Result<Arc<Object>, ApiError> {
    agent
        .store
        .get(class_ids::SR, sr)
        .ok_or_else(|| ApiError::handle_invalid("SR", sr))
}

/// The VDI record or `HANDLE_INVALID`.
pub fn vdi_obj(agent: &Agent, vdi: &str) -> Result<Arc<Object>, ApiError> {
    agent
        .store
        .get(class_ids::VDI, vdi)
        .ok_or_else(|| ApiError::handle_invalid("VDI", vdi))
}

/// The SR's driver, or `SR_UNKNOWN_DRIVER`.
pub fn sr_kind(sr: &Object) -> Result<SrKind, ApiError> {
    let t = sr.get(fields::SR::r#type).as_str().unwrap_or("");
    SrKind::from_type(t).ok_or_else(|| ApiError::SrUnknownDriver { driver: t.to_owned() })
}

/// This host's PBD for the SR, if any.
pub fn local_pbd(agent: &Agent, sr: &Object) -> Option<Arc<Object>> {
    sr.get(fields::SR::PBDs)
        .as_set()
        .iter()
        .filter_map(|p| p.as_ref_str())
        .filter_map(|p| agent.store.get(class_ids::PBD, p))
        .find(|p| p.get(fields::PBD::host).as_ref_str() == Some(agent.host.as_str()))
}

/// The directory in a PBD's `device_config:location`.
pub fn pbd_location(pbd: &Object) -> Option<PathBuf> {
    pbd.get(fields::PBD::device_config)
        .map_get("location")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

/// The SR's directory on this host, whether or not the PBD is plugged (for destroy).
pub fn sr_dir_any(agent: &Agent, sr: &Object) -> Result<PathBuf, ApiError> {
    local_pbd(agent, sr)
        .as_deref()
        .and_then(pbd_location)
        .ok_or_else(|| ApiError::SrHasNoPbds {
            sr: sr.reference.clone(),
        })
}

/// The SR's directory on this host; the PBD must be plugged (`SR_HAS_NO_PBDS` otherwise, as
/// the reference says when no PBD is attached).
pub fn sr_dir(agent: &Agent, sr: &Object) -> Result<PathBuf, ApiError> {
    let pbd = local_pbd(agent, sr).ok_or_else(|| ApiError::SrHasNoPbds {
        sr: sr.reference.clone(),
    })?;
    if pbd.get(fields::PBD::currently_attached) != &Value::Bool(true) {
        return Err(ApiError::SrHasNoPbds {
            sr: sr.reference.clone(),
        });
    }
    pbd_location(&pbd).ok_or_else(|| ApiError::SrHasNoPbds {
        sr: sr.reference.clone(),
    })
}

/// A VDI's file name inside its SR's directory.
pub fn vdi_file_name(kind: SrKind, location: &str) -> String {
    match kind {
        SrKind::File => format!("{location}{IMG_SUFFIX}"),
        SrKind::Iso => location.to_owned(),
    }
}

/// A VDI's backing file, with its SR and the SR's driver. The SR must be plugged here.
pub fn vdi_file(agent: &Agent, vdi: &Object) -> Result<(PathBuf, Arc<Object>, SrKind), ApiError> {
    let sr_ref = vdi.get(fields::VDI::SR).as_ref_str().unwrap_or(NULL_REF).to_owned();
    let sr = sr_obj(agent, &sr_ref)?;
    let kind = sr_kind(&sr)?;
    let dir = sr_dir(agent, &sr)?;
    let location = vdi.get(fields::VDI::location).as_str().unwrap_or("");
    if location.is_empty() || location.contains('/') || location.starts_with('.') {
        return Err(ApiError::VdiMissing {
            sr: sr_ref,
            vdi: vdi.reference.clone(),
        });
    }
    Ok((dir.join(vdi_file_name(kind, location)), sr, kind))
}

/// The file a VDI's bytes live in, for the VM lifecycle to hand to `plug_block` on VM start.
///
/// Checks that the VDI exists, that its SR is plugged on this host and that the file is there
/// (`VDI_MISSING` otherwise). For a VDI with `on_boot = reset` it first puts back the contents
/// saved when `set_on_boot` was called; that copy can take a while on file systems without
/// reflinks, so call this where blocking is fine (as the backend calls are).
pub fn vdi_path(agent: &Agent, vdi_ref: &str) -> Result<PathBuf, ApiError> {
    let vdi = vdi_obj(agent, vdi_ref)?;
    let (path, sr, _) = vdi_file(agent, &vdi)?;
    if !path.is_file() {
        return Err(ApiError::VdiMissing {
            sr: sr.reference.clone(),
            vdi: vdi_ref.to_owned(),
        });
    }
    if *vdi.get(fields::VDI::on_boot) == OnBoot::reset {
        super::vdi::reset_from_base(&path)?;
    }
    Ok(path)
}
