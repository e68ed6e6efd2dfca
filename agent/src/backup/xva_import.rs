//! An XVA import from start to end: the archive is read on a blocking thread
//! ([`super::xva_read`]); its disks are made in the SR and written through the storage layer's
//! [`ImportSink`]; the VM records are made last, in one transaction. Any failure (a corrupt
//! or truncated archive, a cancelled task) destroys the disks made so far: nothing is left.
//! A metadata import (`/import_metadata`) finds its disks instead of making them.

use super::ova_xml::{self, Ova, OvaObject};
use super::restore::{self, field_str, RestoreOptions};
use super::xva_read::{self, Item};
use super::{cancelled, BackupError};
use crate::call::CallCtx;
use crate::error::ApiError;
use crate::objects::set_field;
use crate::schema::enums::VbdType;
use crate::schema::{class_ids, fields};
use crate::storage::transfer::ImportSink;
use crate::value::{Value, NULL_REF};
use crate::Agent;
use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What an import does.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// The SR new disks go to (a ref; empty: the pool's default SR).
    pub sr: String,
    /// Keep uuids, replacing a halted VM of the same uuid.
    pub full_restore: bool,
    /// Forgive checksum mismatches (and, for metadata, disks not found).
    pub force: bool,
    /// Records only: disks are found by SR and location (or uuid), not carried.
    pub metadata_only: bool,
}

/// Reports progress and checks for cancellation.
pub trait Progress: Send {
    /// `done` of `total` bytes written.
    fn report(&mut self, done: u64, total: u64) -> impl std::future::Future<Output = ()> + Send;
    /// The task's ref (to check for cancellation), if any.
    fn task(&self) -> Option<&str>;
}

/// A disk being written.
struct Disk {
    vdi: String,
    size: u64,
    sink: Option<ImportSink>,
    last_index: Option<u64>,
    end: u64,
}

/// The import's state: disks made, records planned.
struct Import {
    agent: Arc<Agent>,
    opts: ImportOptions,
    made: Vec<String>,
    disks: HashMap<String, Disk>,
    chunk_len: Option<u64>,
    read_only: Vec<String>,
}

fn target_sr(agent: &Agent, sr: &str) -> Result<String, ApiError> {
    if !sr.is_empty() && sr != NULL_REF {
        return agent
            .resolve(class_ids::SR, sr)
            .ok_or_else(|| ApiError::handle_invalid("SR", sr));
    }
    let pool = agent
        .store
        .get(class_ids::pool, &agent.pool_ref())
        .and_then(|p| p.get(fields::pool::default_SR).as_ref_str().map(str::to_owned))
        .unwrap_or_else(|| NULL_REF.to_owned());
    if agent.store.get(class_ids::SR, &pool).is_none() {
        return Err(ApiError::DefaultSrNotFound { sr: pool });
    }
    Ok(pool)
}

/// The VDIs the archive's VMs need data for: those of their disk VBDs, and suspend images.
fn disk_ids(ova: &Ova) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for o in ova.objects.iter().filter(|o| o.class == "VBD") {
        let cd = field_str(o, "type").eq_ignore_ascii_case(VbdType::CD.name());
        let empty = o.snapshot.get("empty") == Some(&serde_json::Value::Bool(true));
        let vdi = field_str(o, "VDI");
        if !cd && !empty && !vdi.is_empty() && vdi != NULL_REF && !out.iter().any(|x| x == vdi) {
            out.push(vdi.to_owned());
        }
    }
    out
}

fn object<'a>(ova: &'a Ova, id: &str) -> Option<&'a OvaObject> {
    ova.objects.iter().find(|o| o.id == id)
}

impl Import {
    /// Makes (or, for metadata, finds) the archive's disks; returns the archive names mapped.
    async fn prepare(&mut self, ova: &Ova) -> Result<HashMap<String, String>, BackupError> {
        let mut map = HashMap::new();
        restore::map_existing(&self.agent, ova, &mut map);
        let needed = disk_ids(ova);
        if self.opts.metadata_only {
            let mut copies = Vec::new();
            for id in &needed {
                let Some(o) = object(ova, id) else { continue };
                match self.find_vdi(ova, o) {
                    Some(r) => {
                        if restore::maps_to(o).as_deref() == Some(r.as_str()) {
                            copies.push((id.clone(), r.clone()));
                        }
                        map.insert(id.clone(), r);
                    }
                    None if self.opts.force => tracing::warn!(vdi = %id, "disk not found here: ignored (force)"),
                    None => {
                        let sr = o
                            .snapshot
                            .get("SR")
                            .and_then(|v| v.as_str())
                            .and_then(|s| map.get(s))
                            .cloned()
                            .unwrap_or_else(|| NULL_REF.to_owned());
                        return Err(BackupError::Api(ApiError::VdiLocationMissing {
                            sr,
                            location: field_str(o, "location").to_owned(),
                        }));
                    }
                }
            }
            self.mark_snapshot_copies(ova, &copies, &map).await?;
            return Ok(map);
        }
        let sr = target_sr(&self.agent, &self.opts.sr)?;
        for id in &needed {
            let Some(o) = object(ova, id) else {
                return Err(BackupError::Archive(format!(
                    "a VBD names {id}, which the archive does not hold"
                )));
            };
            let rec = restore::typed(class_ids::VDI, &o.snapshot, "");
            let mut new = crate::value::default_object(class_ids::VDI, "");
            use fields::VDI as f;
            for fld in [
                f::name_label,
                f::name_description,
                f::r#type,
                f::sharable,
                f::other_config,
                f::xenstore_data,
                f::tags,
                f::virtual_size,
            ] {
                new.set(fld, rec.get(fld).clone());
            }
            new.set(f::SR, Value::reference(sr.as_str()));
            new.set(f::read_only, Value::Bool(false));
            let size = rec.get(f::virtual_size).as_int().unwrap_or(0).max(0) as u64;
            let vdi = crate::storage::vdi::create_vdi(&self.agent, &new).await?;
            self.made.push(vdi.clone());
            if rec.get(f::read_only) == &Value::Bool(true) {
                self.read_only.push(vdi.clone());
            }
            map.insert(id.clone(), vdi.clone());
            self.disks.insert(
                id.clone(),
                Disk {
                    vdi,
                    size,
                    sink: None,
                    last_index: None,
                    end: 0,
                },
            );
        }
        Ok(map)
    }

    /// A migration's copies of snapshot disks (named by `maps_to`, made plain by `VDI.create`)
    /// become snapshots again as the archive says: `is_a_snapshot`, `snapshot_time`, and
    /// `snapshot_of` the copy of the disk they were taken from.
    async fn mark_snapshot_copies(
        &self,
        ova: &Ova,
        copies: &[(String, String)],
        map: &HashMap<String, String>,
    ) -> Result<(), BackupError> {
        use fields::VDI as f;
        let mut marks = Vec::new();
        for (id, copy) in copies {
            let Some(o) = object(ova, id) else { continue };
            let rec = restore::typed(class_ids::VDI, &o.snapshot, "");
            if rec.get(f::is_a_snapshot) != &Value::Bool(true) {
                continue;
            }
            let of = rec
                .get(f::snapshot_of)
                .as_ref_str()
                .and_then(|a| map.get(a))
                .map_or_else(Value::null_ref, |r| Value::reference(r.as_str()));
            marks.push((copy.clone(), rec.get(f::snapshot_time).clone(), of));
        }
        if marks.is_empty() {
            return Ok(());
        }
        self.agent
            .store
            .write(|tx| {
                for (copy, time, of) in &marks {
                    set_field(tx, class_ids::VDI, copy, f::is_a_snapshot, Value::Bool(true))?;
                    set_field(tx, class_ids::VDI, copy, f::snapshot_time, time.clone())?;
                    set_field(tx, class_ids::VDI, copy, f::snapshot_of, of.clone())?;
                }
                Ok(())
            })
            .await
            .map_err(BackupError::Api)
    }

    fn find_vdi(&self, ova: &Ova, o: &OvaObject) -> Option<String> {
        // A migration to this pool names the disk's copy here (`other_config:maps_to`).
        if let Some(r) = restore::maps_to(o).filter(|r| self.agent.store.get(class_ids::VDI, r).is_some()) {
            return Some(r);
        }
        let location = field_str(o, "location");
        let sr_uuid = o
            .snapshot
            .get("SR")
            .and_then(|v| v.as_str())
            .and_then(|s| object(ova, s))
            .map(|s| field_str(s, "uuid").to_owned());
        let by_location = self.agent.store.all(class_ids::VDI).iter().find_map(|v| {
            let sr = v.get(fields::VDI::SR).as_ref_str()?;
            let same_sr = sr_uuid
                .as_deref()
                .is_some_and(|u| self.agent.uuid_of(class_ids::SR, sr).as_deref() == Some(u));
            (same_sr && !location.is_empty() && v.get(fields::VDI::location).as_str() == Some(location))
                .then(|| v.reference.clone())
        });
        by_location.or_else(|| {
            let u = field_str(o, "uuid");
            (!u.is_empty())
                .then(|| self.agent.store.ref_by_uuid(class_ids::VDI, u))
                .flatten()
        })
    }

    async fn chunk(&mut self, prefix: &str, index: u64, data: &[u8]) -> Result<(), BackupError> {
        let chunk_len = *self.chunk_len.get_or_insert(data.len().max(1) as u64);
        let Some(d) = self.disks.get_mut(prefix) else {
            return Err(BackupError::Archive(format!(
                "chunk {prefix}/{index:08} belongs to no disk of the archive"
            )));
        };
        if d.last_index.is_some_and(|l| index <= l) {
            return Err(BackupError::Archive(format!(
                "Invalid XVA file: chunk {prefix}/{index:08} is out of order"
            )));
        }
        d.last_index = Some(index);
        let at = index
            .checked_mul(chunk_len)
            .filter(|a| a.saturating_add(data.len() as u64) <= d.size)
            .ok_or_else(|| BackupError::Archive(format!("chunk {prefix}/{index:08} lies beyond the disk's end")))?;
        if d.sink.is_none() {
            d.sink = Some(ImportSink::open(&self.agent, &d.vdi).await?);
        }
        if let Some(sink) = d.sink.as_mut() {
            sink.seek(at).await?;
            sink.write(data).await?;
        }
        d.end = at + data.len() as u64;
        Ok(())
    }

    fn done(&self) -> u64 {
        self.disks.values().map(|d| d.end).sum()
    }

    fn total(&self) -> u64 {
        self.disks.values().map(|d| d.size).sum()
    }

    /// Flushes every disk; a disk whose last chunk never came means the archive was cut short.
    async fn finish_disks(&mut self) -> Result<(), BackupError> {
        let mut short = false;
        for d in self.disks.values_mut() {
            if let Some(s) = d.sink.take() {
                s.finish().await?;
            }
            if d.end < d.size {
                short = true;
            }
        }
        if short {
            return Err(BackupError::PrematureEof);
        }
        Ok(())
    }

    /// Undoes everything: pending writes waited for, disks destroyed.
    async fn undo(&mut self) {
        for d in self.disks.values_mut() {
            if let Some(s) = d.sink.take() {
                s.abandon().await;
            }
        }
        for vdi in self.made.drain(..) {
            if let Err(e) = crate::storage::vdi::destroy_vdi(&self.agent, &vdi).await {
                tracing::warn!(vdi = %vdi, error = %e, "could not remove a disk of a failed import");
            }
        }
    }
}

/// Runs an import of the archive `open` returns (called on a blocking thread).
pub async fn import<F, R, P>(
    agent: &Arc<Agent>,
    open: F,
    opts: ImportOptions,
    progress: &mut P,
) -> Result<Vec<String>, ApiError>
where
    F: FnOnce() -> Result<R, BackupError> + Send + 'static,
    R: Read + Send + 'static,
    P: Progress,
{
    let (reader, mut rx) = xva_read::spawn(open, xva_read::Stream::Archive, opts.force);
    let mut imp = Import {
        agent: agent.clone(),
        opts,
        made: Vec::new(),
        disks: HashMap::new(),
        chunk_len: None,
        read_only: Vec::new(),
    };
    let r = run(&mut imp, &mut rx, progress).await;
    // Stop the reader (it sees the channel closed) before anything is undone.
    drop(rx);
    if let Err(e) = reader.await {
        tracing::warn!(error = %e, "the archive reader ended abnormally");
    }
    match r {
        Ok(vms) => Ok(vms),
        Err(e) => {
            imp.undo().await;
            Err(e.api_error())
        }
    }
}

async fn run<P: Progress>(
    imp: &mut Import,
    rx: &mut mpsc::Receiver<Result<Item, BackupError>>,
    progress: &mut P,
) -> Result<Vec<String>, BackupError> {
    let ova = match rx.recv().await {
        Some(Ok(Item::OvaXml(s))) => ova_xml::parse(&s)?,
        Some(Ok(Item::Chunk { .. })) => {
            return Err(BackupError::Archive("the archive does not begin with ova.xml".into()))
        }
        Some(Err(e)) => return Err(e),
        None => return Err(BackupError::PrematureEof),
    };
    let map = imp.prepare(&ova).await?;
    let planned = restore::plan(
        &imp.agent,
        &ova,
        &map,
        RestoreOptions {
            full_restore: imp.opts.full_restore,
        },
    )?;
    while let Some(item) = rx.recv().await {
        if let Some(t) = progress.task() {
            if cancelled(&imp.agent, t) {
                return Err(BackupError::Api(ApiError::TaskCancelled { task: t.to_owned() }));
            }
        }
        match item? {
            Item::OvaXml(_) => return Err(BackupError::Archive("a second ova.xml in the archive".into())),
            Item::Chunk { prefix, index, data } => {
                if imp.opts.metadata_only {
                    return Err(BackupError::Archive("a metadata archive carries disk chunks".into()));
                }
                imp.chunk(&prefix, index, &data).await?;
                progress.report(imp.done(), imp.total()).await;
            }
        }
    }
    imp.finish_disks().await?;
    if let Some(t) = progress.task() {
        if cancelled(&imp.agent, t) {
            return Err(BackupError::Api(ApiError::TaskCancelled { task: t.to_owned() }));
        }
    }
    let vms = restore::commit(&imp.agent, &planned).await?;
    // The disks are the VM's now: a later failure must not remove them.
    imp.made.clear();
    for vdi in std::mem::take(&mut imp.read_only) {
        let r = imp
            .agent
            .store
            .write(|tx| set_field(tx, class_ids::VDI, &vdi, fields::VDI::read_only, Value::Bool(true)))
            .await;
        if let Err(e) = r {
            tracing::warn!(vdi = %vdi, error = %e, "could not mark an imported disk read-only");
        }
    }
    Ok(vms)
}

/// Progress recorded in a task (in steps of 1%), when there is one.
pub struct TaskProgress {
    agent: Arc<Agent>,
    task: Option<String>,
    reported: f64,
}

impl TaskProgress {
    /// Reports to `task`.
    pub fn new(agent: &Arc<Agent>, task: Option<String>) -> TaskProgress {
        TaskProgress {
            agent: agent.clone(),
            task,
            reported: 0.0,
        }
    }
}

impl Progress for TaskProgress {
    async fn report(&mut self, done: u64, total: u64) {
        let Some(t) = &self.task else { return };
        if total == 0 {
            return;
        }
        let p = (done as f64 / total as f64).clamp(0.0, 0.99);
        if p - self.reported >= 0.01 {
            self.reported = p;
            let _ = crate::tasks::progress(&self.agent, t, p).await;
        }
    }
    fn task(&self) -> Option<&str> {
        self.task.as_deref()
    }
}

/// `VM.import(url, sr, full_restore, force)`: fetches the archive over HTTP from `url`.
pub async fn import_from_url(
    agent: &Arc<Agent>,
    ctx: &CallCtx,
    _session: &str,
    url: &str,
    sr: &str,
    full_restore: bool,
    force: bool,
) -> Result<Vec<String>, ApiError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ApiError::ImportError {
            msg: format!("unsupported URL scheme in {url}"),
        });
    }
    let url = url.to_owned();
    crate::ensure_tls_provider();
    let open = move || -> Result<reqwest::blocking::Response, BackupError> {
        let resp = reqwest::blocking::Client::builder()
            .timeout(None)
            .build()
            .and_then(|c| c.get(&url).send())
            .map_err(|e| BackupError::Archive(format!("fetching {url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(BackupError::Archive(format!("fetching {url}: HTTP {}", resp.status())));
        }
        Ok(resp)
    };
    let mut p = TaskProgress::new(agent, ctx.task.clone());
    let opts = ImportOptions {
        sr: sr.to_owned(),
        full_restore,
        force,
        metadata_only: false,
    };
    import(agent, open, opts, &mut p).await
}

impl Progress for crate::storage::transfer::TransferTask {
    async fn report(&mut self, done: u64, total: u64) {
        self.progress(done, total).await;
    }
    fn task(&self) -> Option<&str> {
        Some(self.reference())
    }
}
