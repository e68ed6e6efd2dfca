//! Storage motion: a VM's disks copied to other SRs, of this pool (`VM.migrate_send` inside
//! the pool, `VDI.pool_migrate`) or of another pool (`VM.migrate_send` across pools).
//!
//! Each disk's copy is made where its destination SR is (`VDI.create`, run by a host that has
//! the SR plugged: `pool/forward.rs`, or by the other pool), then filled through the data
//! paths: a VHD stream (`/export_raw_vdi?format=vhd`: the blocks that hold data, no more) read
//! from a host that has the disk's SR and written as it arrives into the copy
//! (`/import_raw_vdi?format=vhd`) on a host that has the destination SR. Inside the pool the
//! VM's VBDs are switched to the copies while its domain is stopped ([`Motion::at_stop`]) and
//! the originals destroyed after the move ([`Motion::finish`]); across pools the copies are
//! named in the metadata the other pool imports (`lifecycle/migrate_send.rs`).
//!
//! The simulator's guests do not write their disks, so a running VM's disks are filled while
//! it runs; a guest that writes its disks (on Xen) has them filled at the stop, after its
//! domain is saved (the downtime then includes the copy: there is no mirroring of writes).

use crate::call::CallCtx;
use crate::error::ApiError;
use crate::pool::forward::host_with_sr;
use crate::pool::remote::Remote;
use crate::schema::{class_ids, fields};
use crate::value::Value;
use crate::Agent;
use serde_json::{json, Value as Json};
use std::sync::Arc;

/// One disk that moves.
#[derive(Clone, Debug)]
pub struct Disk {
    /// The VDI that moves.
    pub vdi: String,
    /// The SR it goes to (of the destination's database).
    pub to_sr: String,
    /// Its copy there, once made.
    pub copy: Option<String>,
}

/// Where the copies go.
pub enum Target {
    /// SRs of this pool.
    Pool,
    /// SRs of another pool: its master's XenAPI, the destination host's data paths, and the
    /// session its `host.migrate_receive` gave.
    Remote {
        /// The other pool's master.
        master: Remote,
        /// The destination host.
        host: Remote,
        /// The session of the other pool.
        session: String,
    },
}

/// The disks of one migration and what was done with them.
pub struct Motion {
    /// The disks that move.
    pub disks: Vec<Disk>,
    /// Where they go.
    pub target: Target,
    /// The caller's session (of this pool).
    session: String,
    /// VBDs switched to a copy at the stop: (VBD, its VDI before).
    switched: Vec<(String, String)>,
    /// The copies are filled at the stop (the guest writes its disks while it runs).
    fill_at_stop: bool,
}

/// Text of a field (enum values in their wire spelling).
fn text(v: &Value) -> String {
    v.key_text()
}

impl Motion {
    /// A motion of `disks` to `target`, on the caller's `session`.
    pub fn new(disks: Vec<Disk>, target: Target, session: &str, fill_at_stop: bool) -> Motion {
        Motion {
            disks,
            target,
            session: session.to_owned(),
            switched: Vec::new(),
            fill_at_stop,
        }
    }

    /// (original, copy) for each disk copied.
    pub fn copies(&self) -> Vec<(String, String)> {
        self.disks
            .iter()
            .filter_map(|d| d.copy.as_ref().map(|c| (d.vdi.clone(), c.clone())))
            .collect()
    }

    /// Makes each disk's copy at its destination and fills it (or leaves it to fill at the
    /// stop). A failed stream is `MIRROR_FAILED [vdi]`; the copies made so far stay for
    /// [`Motion::abandon`].
    pub async fn copy(&mut self, agent: &Arc<Agent>) -> Result<(), ApiError> {
        for i in 0..self.disks.len() {
            let disk = self.disks[i].clone();
            let copy = self.make_copy(agent, &disk).await?;
            self.disks[i].copy = Some(copy);
        }
        if self.fill_at_stop {
            return Ok(());
        }
        self.fill_all(agent).await
    }

    /// Fills every copy.
    async fn fill_all(&self, agent: &Arc<Agent>) -> Result<(), ApiError> {
        for (vdi, copy) in self.copies() {
            let t = std::time::Instant::now();
            let bytes = self.fill(agent, &vdi, &copy).await.map_err(|reason| {
                tracing::warn!(vdi = %vdi, %reason, "storage motion: the copy failed");
                ApiError::MirrorFailed { vdi: vdi.clone() }
            })?;
            tracing::info!(
                vdi = %vdi,
                copy = %copy,
                stream_bytes = bytes,
                ms = t.elapsed().as_millis() as u64,
                "storage motion: disk copied"
            );
        }
        Ok(())
    }

    /// `VDI.create` of the copy of `disk` on its destination SR.
    async fn make_copy(&self, agent: &Arc<Agent>, disk: &Disk) -> Result<String, ApiError> {
        let rec = agent
            .store
            .get(class_ids::VDI, &disk.vdi)
            .ok_or_else(|| ApiError::handle_invalid("VDI", &disk.vdi))?;
        use fields::VDI as f;
        let map = |field| -> Json {
            let pairs: serde_json::Map<String, Json> = rec
                .get(field)
                .as_map()
                .iter()
                .filter(|(k, _)| k.as_str() != Some(super::migrate_send::MAPS_TO))
                .map(|(k, v)| (text(k), Json::String(text(v))))
                .collect();
            Json::Object(pairs)
        };
        let record = json!({
            "name_label": text(rec.get(f::name_label)),
            "name_description": text(rec.get(f::name_description)),
            "SR": disk.to_sr,
            "virtual_size": text(rec.get(f::virtual_size)),
            "type": text(rec.get(f::r#type)),
            "sharable": rec.get(f::sharable).as_bool().unwrap_or(false),
            "read_only": rec.get(f::read_only).as_bool().unwrap_or(false),
            "other_config": map(f::other_config),
            "xenstore_data": map(f::xenstore_data),
            "sm_config": {},
            "tags": rec.get(f::tags).as_set().iter().map(text).collect::<Vec<_>>(),
        });
        match &self.target {
            Target::Pool => {
                let v = crate::dispatch::call(
                    agent,
                    &CallCtx::default(),
                    "VDI.create",
                    &[Json::String(self.session.clone()), record],
                )
                .await?;
                v.as_ref_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::internal("VDI.create gave no ref"))
            }
            Target::Remote { master, session, .. } => master
                .call_str("VDI.create", &[Json::String(session.clone()), record])
                .await
                .map_err(|e| e.into_api()),
        }
    }

    /// Streams `vdi` into `copy`; the bytes of the stream.
    async fn fill(&self, agent: &Arc<Agent>, vdi: &str, copy: &str) -> Result<u64, String> {
        let sr = agent
            .store
            .get(class_ids::VDI, vdi)
            .and_then(|v| v.get(fields::VDI::SR).as_ref_str().map(str::to_owned))
            .ok_or_else(|| format!("VDI {vdi} is gone"))?;
        let from = host_with_sr(agent, &sr).ok_or_else(|| format!("no live host has SR {sr} plugged"))?;
        let source = Remote::to_host(agent, &from).map_err(|e| e.description().join(" "))?;
        let resp = source
            .get_stream(&format!(
                "/export_raw_vdi?vdi={vdi}&format=vhd&session_id={}",
                self.session
            ))
            .await
            .map_err(|e| e.to_string())?;
        let len = resp.content_length().ok_or("the export gave no Content-Length")?;
        let body = reqwest::Body::wrap_stream(resp.bytes_stream());
        let owned;
        let (dest, session) = match &self.target {
            Target::Pool => {
                let to_sr = agent
                    .store
                    .get(class_ids::VDI, copy)
                    .and_then(|v| v.get(fields::VDI::SR).as_ref_str().map(str::to_owned))
                    .ok_or_else(|| format!("the copy {copy} is gone"))?;
                let host = host_with_sr(agent, &to_sr).ok_or_else(|| format!("no live host has SR {to_sr} plugged"))?;
                owned = Remote::to_host(agent, &host).map_err(|e| e.description().join(" "))?;
                (&owned, self.session.as_str())
            }
            Target::Remote { host, session, .. } => (host, session.as_str()),
        };
        dest.put_stream(
            &format!("/import_raw_vdi?vdi={copy}&format=vhd&session_id={session}"),
            body,
            len,
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(len)
    }

    /// At the stop (the guest's domain saved, or a halted VM): the copies filled if they are
    /// filled at the stop; then, inside the pool, every VBD of a moving disk (the VM's and its
    /// snapshots') points at the disk's copy, in one transaction (across pools the other
    /// pool's records name the copies).
    pub async fn at_stop(&mut self, agent: &Arc<Agent>) -> Result<(), ApiError> {
        if self.fill_at_stop {
            self.fill_all(agent).await?;
        }
        if !matches!(self.target, Target::Pool) {
            return Ok(());
        }
        let copies = self.copies();
        let switched = agent
            .store
            .write(|tx| {
                let mut switched = Vec::new();
                for (vdi, copy) in &copies {
                    let vbds: Vec<String> = tx
                        .get(class_ids::VDI, vdi)
                        .map(|v| {
                            v.get(fields::VDI::VBDs)
                                .as_set()
                                .iter()
                                .filter_map(|r| r.as_ref_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    for vbd in vbds {
                        crate::objects::set_field(
                            tx,
                            class_ids::VBD,
                            &vbd,
                            fields::VBD::VDI,
                            Value::reference(copy.as_str()),
                        )?;
                        switched.push((vbd, vdi.clone()));
                    }
                }
                Ok(switched)
            })
            .await?;
        self.switched = switched;
        Ok(())
    }

    /// Puts back the VBDs [`Motion::at_stop`] switched.
    pub async fn undo_stop(&mut self, agent: &Arc<Agent>) {
        let switched = std::mem::take(&mut self.switched);
        let r = agent
            .store
            .write(|tx| {
                for (vbd, vdi) in &switched {
                    if tx.get(class_ids::VBD, vbd).is_some() {
                        crate::objects::set_field(
                            tx,
                            class_ids::VBD,
                            vbd,
                            fields::VBD::VDI,
                            Value::reference(vdi.as_str()),
                        )?;
                    }
                }
                Ok(())
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "storage motion: could not put the VBDs back on their disks");
        }
    }

    /// After the move: the originals destroyed (each by a host that has its SR).
    pub async fn finish(&mut self, agent: &Arc<Agent>) {
        for d in &self.disks {
            if let Err(e) = self.destroy_here(agent, &d.vdi).await {
                tracing::warn!(vdi = %d.vdi, error = %e, "storage motion: the original disk could not be destroyed");
            }
        }
    }

    /// After a failure: the copies destroyed.
    pub async fn abandon(&mut self, agent: &Arc<Agent>) {
        for copy in self.disks.iter().filter_map(|d| d.copy.clone()) {
            let r = match &self.target {
                Target::Pool => self.destroy_here(agent, &copy).await,
                Target::Remote { master, session, .. } => master
                    .call(
                        "VDI.destroy",
                        &[Json::String(session.clone()), Json::String(copy.clone())],
                    )
                    .await
                    .map(drop)
                    .map_err(|e| e.into_api()),
            };
            if let Err(e) = r {
                tracing::warn!(vdi = %copy, error = %e, "storage motion: a copy could not be destroyed");
            }
        }
    }

    /// `VDI.destroy` in this pool, on the caller's session.
    async fn destroy_here(&self, agent: &Arc<Agent>, vdi: &str) -> Result<(), ApiError> {
        crate::dispatch::call(
            agent,
            &CallCtx::default(),
            "VDI.destroy",
            &[Json::String(self.session.clone()), Json::String(vdi.to_owned())],
        )
        .await
        .map(drop)
    }
}
