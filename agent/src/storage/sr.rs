//! SR messages: create, introduce, forget, destroy, scan, update, probe, get_supported_types.

use super::features::{assert_sr_op, sr_allowed_operations};
use super::fsops::{self, blocking};
use super::layout::{local_pbd, pbd_location, sr_dir, sr_dir_any, sr_kind, sr_obj, vdi_file_name, SrKind, IMG_SUFFIX};
use super::measure::refresh_sr;
use crate::call::{Call, Entry};
use crate::entry;
use crate::error::{sr_backend_failure, ApiError};
use crate::objects::{create, destroy, new_ref, new_uuid, set_field};
use crate::schema::enums::StorageOperations as SrOp;
use crate::schema::{class_ids, fields};
use crate::value::{default_object, Object, Value};
use crate::Agent;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(super) fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::SR, "create", |agent, _, c| create_sr(&agent, &c)
            .await
            .map(Value::reference)),
        entry!(class_ids::SR, "introduce", |agent, _, c| introduce(&agent, &c)
            .await
            .map(Value::reference)),
        entry!(class_ids::SR, "forget", |agent, _, c| forget(&agent, c.ref_arg(0)?)
            .await
            .map(|()| Value::None)),
        entry!(class_ids::SR, "destroy", |agent, _, c| {
            destroy_sr(&agent, c.ref_arg(0)?).await.map(|()| Value::None)
        }),
        entry!(class_ids::SR, "scan", |agent, _, c| scan(&agent, c.ref_arg(0)?)
            .await
            .map(|()| Value::None)),
        entry!(class_ids::SR, "update", |agent, _, c| {
            refresh_sr(&agent, c.ref_arg(0)?).await.map(|()| Value::None)
        }),
        entry!(class_ids::SR, "probe", |agent, _, c| probe(&agent, &c)
            .await
            .map(Value::str)),
        entry!(class_ids::SR, "get_supported_types", |_agent, _, _c| {
            Ok(Value::Set(["file", "iso"].iter().map(|t| Value::str(*t)).collect()))
        }),
    ]
}

/// `device_config:location`, required by both drivers.
fn location_of(device_config: &Value) -> Result<PathBuf, ApiError> {
    device_config
        .map_get("location")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| sr_backend_failure("1", "device_config is missing 'location'"))
}

/// Whether another SR already lives at `location` on this host.
fn location_taken(agent: &Agent, location: &Path) -> Option<String> {
    agent
        .store
        .all(class_ids::PBD)
        .iter()
        .filter(|p| p.get(fields::PBD::host).as_ref_str() == Some(agent.host.as_str()))
        .find(|p| pbd_location(p).as_deref() == Some(location))
        .and_then(|p| p.get(fields::PBD::SR).as_ref_str().map(str::to_owned))
}

/// Prepares the directory an SR of `kind` lives in: `file` creates it, `iso` needs it.
async fn prepare_dir(kind: SrKind, location: PathBuf) -> Result<(), ApiError> {
    blocking(move || match kind {
        SrKind::File => std::fs::create_dir_all(&location).map_err(|source| super::StorageError::Fs {
            what: "creating the SR directory",
            path: location.clone(),
            source,
        }),
        SrKind::Iso => {
            if location.is_dir() {
                Ok(())
            } else {
                Err(super::StorageError::Fs {
                    what: "opening the ISO library",
                    path: location.clone(),
                    source: std::io::Error::from_raw_os_error(libc::ENOENT),
                })
            }
        }
    })
    .await
    .map_err(ApiError::from)
}

fn new_sr_object(
    uuid: String,
    name_label: &str,
    name_description: &str,
    kind: SrKind,
    content_type: &str,
    shared: bool,
    sm_config: Value,
) -> Object {
    use fields::SR as f;
    let mut o = default_object(class_ids::SR, &new_ref());
    o.set(f::uuid, Value::str(uuid));
    o.set(f::name_label, Value::str(name_label));
    o.set(f::name_description, Value::str(name_description));
    o.set(f::r#type, Value::str(kind.name()));
    let ct = if content_type.is_empty() && kind == SrKind::Iso {
        "iso"
    } else {
        content_type
    };
    o.set(f::content_type, Value::str(ct));
    o.set(f::shared, Value::Bool(shared));
    o.set(
        f::sm_config,
        if matches!(sm_config, Value::Map(_)) {
            sm_config
        } else {
            Value::map(Vec::new())
        },
    );
    o.set(f::other_config, Value::map(Vec::new()));
    o.set(f::physical_size, Value::Int(-1));
    o.set(f::physical_utilisation, Value::Int(-1));
    o.set(f::allowed_operations, sr_allowed_operations(kind));
    o
}

/// `SR.create`: makes the directory, the SR and a plugged PBD for this host, then scans.
async fn create_sr(agent: &Arc<Agent>, c: &Call) -> Result<String, ApiError> {
    let host = c.str_arg(0).to_owned();
    let device_config = c.arg(1);
    let (name_label, name_description) = (c.str_arg(3), c.str_arg(4));
    let ty = c.str_arg(5);
    let content_type = c.str_arg(6);
    let shared = c.bool_arg(7);
    let sm_config = c.arg(8);
    let kind = SrKind::from_type(ty).ok_or_else(|| ApiError::SrUnknownDriver { driver: ty.to_owned() })?;
    if agent.store.get(class_ids::host, &host).is_none() {
        return Err(ApiError::handle_invalid("host", &host));
    }
    let location = location_of(&device_config)?;
    if !location.is_absolute() {
        return Err(sr_backend_failure(
            "1",
            format!("location {} is not an absolute path", location.display()),
        ));
    }
    if let Some(other) = location_taken(agent, &location) {
        return Err(sr_backend_failure(
            "1",
            format!("SR {other} already lives at {}", location.display()),
        ));
    }
    prepare_dir(kind, location.clone()).await?;
    let sr = new_sr_object(
        new_uuid(),
        name_label,
        name_description,
        kind,
        content_type,
        shared,
        sm_config,
    );
    let sr_ref = sr.reference.clone();
    // A shared SR is seen by every host of the pool: a PBD for each (its directory is one all
    // hosts reach); a local one by its host alone.
    let hosts: Vec<String> = if shared {
        let mut all: Vec<String> = agent
            .store
            .all(class_ids::host)
            .iter()
            .map(|h| h.reference.clone())
            .collect();
        all.sort_by_key(|h| *h != host);
        all
    } else {
        vec![host.clone()]
    };
    let pbds: Vec<Object> = hosts
        .iter()
        .map(|h| shared_pbd(h, &sr_ref, device_config.clone(), true))
        .collect();
    agent
        .store
        .write(|tx| {
            create(tx, sr.clone())?;
            for pbd in &pbds {
                create(tx, pbd.clone())?;
            }
            Ok(())
        })
        .await?;
    scan(agent, &sr_ref).await?;
    tracing::info!(sr = %sr_ref, r#type = kind.name(), location = %location.display(), "SR created");
    Ok(sr_ref)
}

/// A PBD of `sr` for `host`.
fn shared_pbd(host: &str, sr: &str, device_config: Value, attached: bool) -> Object {
    let mut pbd = default_object(class_ids::PBD, &new_ref());
    pbd.set(fields::PBD::uuid, Value::str(new_uuid()));
    pbd.set(fields::PBD::host, Value::reference(host));
    pbd.set(fields::PBD::SR, Value::reference(sr));
    pbd.set(fields::PBD::device_config, device_config);
    pbd.set(fields::PBD::currently_attached, Value::Bool(attached));
    pbd
}

/// The PBDs a host joining a pool gets: one for each shared SR of the pool it has none of,
/// with the device configuration the SR's other PBDs have, plugged when its directory is
/// there on this host.
pub fn pbds_for_new_host(agent: &Agent, host: &str) -> Vec<Object> {
    let mut out = Vec::new();
    for sr in agent.store.all(class_ids::SR) {
        if sr.get(fields::SR::shared) != &Value::Bool(true) {
            continue;
        }
        let pbds: Vec<_> = refs(sr.get(fields::SR::PBDs))
            .iter()
            .filter_map(|p| agent.store.get(class_ids::PBD, p))
            .collect();
        if pbds.iter().any(|p| p.get(fields::PBD::host).as_ref_str() == Some(host)) {
            continue;
        }
        let Some(model) = pbds.first() else { continue };
        let attached = pbd_location(model).is_some_and(|l| l.is_dir());
        out.push(shared_pbd(
            host,
            &sr.reference,
            model.get(fields::PBD::device_config).clone(),
            attached,
        ));
    }
    out
}

/// `SR.introduce`: a record for an SR that exists elsewhere; PBDs come later.
async fn introduce(agent: &Arc<Agent>, c: &Call) -> Result<String, ApiError> {
    let uuid = match c.str_arg(0) {
        "" => new_uuid(),
        u => u.to_owned(),
    };
    let ty = c.str_arg(3);
    let kind = SrKind::from_type(ty).ok_or_else(|| ApiError::SrUnknownDriver { driver: ty.to_owned() })?;
    if agent.store.ref_by_uuid(class_ids::SR, &uuid).is_some() {
        return Err(ApiError::SrUuidExists { uuid });
    }
    let sr = new_sr_object(
        uuid.clone(),
        c.str_arg(1),
        c.str_arg(2),
        kind,
        c.str_arg(4),
        c.bool_arg(5),
        c.arg(6),
    );
    let r = sr.reference.clone();
    agent
        .store
        .write(|tx| {
            if tx.uuid_taken(class_ids::SR, &uuid) {
                return Err(ApiError::SrUuidExists { uuid: uuid.clone() });
            }
            create(tx, sr.clone())
        })
        .await?;
    Ok(r)
}

fn refs(v: &Value) -> Vec<String> {
    v.as_set()
        .iter()
        .filter_map(|x| x.as_ref_str())
        .map(str::to_owned)
        .collect()
}

fn assert_all_pbds_unplugged(agent: &Agent, sr: &Object) -> Result<(), ApiError> {
    let plugged = refs(sr.get(fields::SR::PBDs))
        .iter()
        .filter_map(|p| agent.store.get(class_ids::PBD, p))
        .any(|p| p.get(fields::PBD::currently_attached) == &Value::Bool(true));
    if plugged {
        return Err(ApiError::SrHasPbd {
            sr: sr.reference.clone(),
        });
    }
    Ok(())
}

/// A VDI of the SR that a VBD has attached now, if any.
pub(super) fn attached_vdi(agent: &Agent, vdis: &[String]) -> Option<String> {
    vdis.iter().find(|v| super::vdi::is_attached(agent, v)).cloned()
}

/// Removes the SR's records: its PBDs, VDIs and itself; clears pool fields that named it.
async fn drop_records(agent: &Agent, sr: &Object) -> Result<(), ApiError> {
    let sr_ref = sr.reference.clone();
    let pbds = refs(sr.get(fields::SR::PBDs));
    let vdis = refs(sr.get(fields::SR::VDIs));
    let pool = agent.pool_ref();
    agent
        .store
        .write(|tx| {
            for p in &pbds {
                if tx.get(class_ids::PBD, p).is_some() {
                    destroy(tx, class_ids::PBD, p)?;
                }
            }
            for v in &vdis {
                if tx.get(class_ids::VDI, v).is_some() {
                    destroy(tx, class_ids::VDI, v)?;
                }
            }
            if let Some(p) = tx.get(class_ids::pool, &pool) {
                for f in [
                    fields::pool::default_SR,
                    fields::pool::suspend_image_SR,
                    fields::pool::crash_dump_SR,
                ] {
                    if p.get(f).as_ref_str() == Some(sr_ref.as_str()) {
                        set_field(tx, class_ids::pool, &pool, f, Value::null_ref())?;
                    }
                }
            }
            destroy(tx, class_ids::SR, &sr_ref)
        })
        .await
}

/// `SR.forget`: drops the records, keeps the files.
async fn forget(agent: &Arc<Agent>, sr_ref: &str) -> Result<(), ApiError> {
    let sr = sr_obj(agent, sr_ref)?;
    assert_all_pbds_unplugged(agent, &sr)?;
    drop_records(agent, &sr).await
}

/// `SR.destroy`: deletes the VDIs' files and the (then empty) directory, then the records.
async fn destroy_sr(agent: &Arc<Agent>, sr_ref: &str) -> Result<(), ApiError> {
    let sr = sr_obj(agent, sr_ref)?;
    assert_sr_op(&sr, SrOp::destroy)?;
    let kind = sr_kind(&sr)?;
    assert_all_pbds_unplugged(agent, &sr)?;
    let vdis = refs(sr.get(fields::SR::VDIs));
    if let Some(v) = attached_vdi(agent, &vdis) {
        return Err(ApiError::VdiInUse {
            vdi: v,
            operation: "destroy".into(),
        });
    }
    let dir = sr_dir_any(agent, &sr)?;
    let files: Vec<PathBuf> = vdis
        .iter()
        .filter_map(|v| agent.store.get(class_ids::VDI, v))
        .map(|v| dir.join(vdi_file_name(kind, v.get(fields::VDI::location).as_str().unwrap_or(""))))
        .collect();
    let dir2 = dir.clone();
    blocking(move || {
        for f in &files {
            if f.parent() == Some(dir2.as_path()) && f.file_name().is_some() {
                fsops::remove(f)?;
                fsops::remove(&super::vdi::base_path(f))?;
            }
        }
        // Other files (not VDIs of this SR) keep the directory; that is not an error.
        if let Err(e) = std::fs::remove_dir(&dir2) {
            tracing::info!(dir = %dir2.display(), error = %e, "SR directory kept");
        }
        Ok(())
    })
    .await?;
    drop_records(agent, &sr).await?;
    tracing::info!(sr = sr_ref, dir = %dir.display(), "SR destroyed");
    Ok(())
}

/// What a scan found on disk: (location, size).
type Found = Vec<(String, u64)>;

async fn list_dir(kind: SrKind, dir: PathBuf) -> Result<Found, ApiError> {
    blocking(move || {
        let suffix = match kind {
            SrKind::File => IMG_SUFFIX,
            SrKind::Iso => ".iso",
        };
        let mut out = Vec::new();
        for p in fsops::list(&dir, suffix)? {
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let location = match kind {
                SrKind::File => name.strip_suffix(IMG_SUFFIX).unwrap_or(name).to_owned(),
                SrKind::Iso => name.to_owned(),
            };
            let size = fsops::sizes(&p).map(|s| s.0).unwrap_or(0);
            out.push((location, size));
        }
        Ok(out)
    })
    .await
    .map_err(ApiError::from)
}

/// `SR.scan`: VDI records for files that appeared, none for files that went away (unless
/// attached: those are marked missing), then the sizes.
pub(super) async fn scan(agent: &Arc<Agent>, sr_ref: &str) -> Result<(), ApiError> {
    let sr = sr_obj(agent, sr_ref)?;
    let kind = sr_kind(&sr)?;
    let dir = sr_dir(agent, &sr)?;
    let found = list_dir(kind, dir).await?;
    let sr_ref = sr_ref.to_owned();
    let attached: Vec<String> = refs(sr.get(fields::SR::VDIs))
        .into_iter()
        .filter(|v| super::vdi::is_attached(agent, v))
        .collect();
    agent
        .store
        .write(|tx| {
            let sr = tx.must_get(class_ids::SR, &sr_ref)?;
            let known: Vec<(String, String)> = refs(sr.get(fields::SR::VDIs))
                .into_iter()
                .filter_map(|v| tx.get(class_ids::VDI, &v))
                .map(|v| {
                    (
                        v.reference.clone(),
                        v.get(fields::VDI::location).as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            for (r, loc) in &known {
                let present = found.iter().any(|(l, _)| l == loc);
                if present {
                    if let Some((_, size)) = found.iter().find(|(l, _)| l == loc) {
                        if kind == SrKind::Iso {
                            set_field(
                                tx,
                                class_ids::VDI,
                                r,
                                fields::VDI::virtual_size,
                                Value::Int(*size as i64),
                            )?;
                        }
                    }
                    set_field(tx, class_ids::VDI, r, fields::VDI::missing, Value::Bool(false))?;
                } else if attached.contains(r) {
                    set_field(tx, class_ids::VDI, r, fields::VDI::missing, Value::Bool(true))?;
                } else {
                    destroy(tx, class_ids::VDI, r)?;
                }
            }
            for (loc, size) in &found {
                if known.iter().any(|(_, l)| l == loc) {
                    continue;
                }
                let uuid = match kind {
                    SrKind::File if uuid::Uuid::parse_str(loc).is_ok() && !tx.uuid_taken(class_ids::VDI, loc) => {
                        loc.clone()
                    }
                    _ => new_uuid(),
                };
                let name = match kind {
                    SrKind::File => String::new(),
                    SrKind::Iso => loc.clone(),
                };
                let v = super::vdi::new_vdi_object(&sr_ref, kind, &uuid, loc, &name, *size as i64);
                create(tx, v)?;
            }
            Ok(())
        })
        .await?;
    refresh_sr(agent, &sr_ref).await
}

/// `SR.probe`: the SRs this host already knows at `device_config:location`, in the
/// reference's XML form.
async fn probe(agent: &Arc<Agent>, c: &Call) -> Result<String, ApiError> {
    let ty = c.str_arg(2);
    let kind = SrKind::from_type(ty).ok_or_else(|| ApiError::SrUnknownDriver { driver: ty.to_owned() })?;
    let location = location_of(&c.arg(1))?;
    let loc2 = location.clone();
    let exists = blocking(move || Ok(loc2.is_dir())).await?;
    if !exists && kind == SrKind::Iso {
        return Err(sr_backend_failure(
            "1",
            format!("no directory at {}", location.display()),
        ));
    }
    let mut out = String::from("<?xml version=\"1.0\" ?>\n<SRlist>\n");
    for sr in agent.store.all(class_ids::SR) {
        let Some(pbd) = local_pbd(agent, &sr) else {
            continue;
        };
        if pbd_location(&pbd).as_deref() == Some(location.as_path()) {
            out.push_str(&format!(
                "\t<SR>\n\t\t<UUID>{}</UUID>\n\t</SR>\n",
                sr.uuid().unwrap_or("")
            ));
        }
    }
    out.push_str("</SRlist>\n");
    Ok(out)
}
