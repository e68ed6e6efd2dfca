//! Streaming a VDI's bytes in (`/import_raw_vdi`) and out (`/export_raw_vdi`) through the
//! I/O engine, with the task that reports progress. Transport-agnostic: the HTTP layer feeds
//! an [`ImportSink`] with body chunks and drains an [`ExportSource`] into a response.
//!
//! Never the whole disk in memory: at most a few registered 1 MiB buffers per transfer.

use super::io::{Completion, IoBuf, IoEngine, BUF_SIZE};
use super::layout::{vdi_file, vdi_obj, SrKind};
use super::locks;
use super::measure::refresh_after;
use crate::error::{vdi_io_error, ApiError};

use crate::schema::{class_ids, fields};
use crate::value::Value;
use crate::Agent;
use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::sync::Arc;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard};

/// Writes in flight per import.
const IN_FLIGHT: usize = 8;
/// Reads in flight per export (direct reads go straight to the device: keep its queue busy).
const READS_IN_FLIGHT: usize = 16;
/// Alignment of offsets and lengths read with `O_DIRECT`.
const DIRECT_ALIGN: u64 = 4096;
/// How far ahead of the reads an export asks the kernel to read.
const PREFETCH: u64 = 64 << 20;

/// Disk image formats the reference's data paths name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Plain bytes.
    Raw,
    /// VHD (not yet).
    Vhd,
    /// qcow2 (not yet).
    Qcow2,
    /// tar with checksums (not yet).
    Tar,
}

impl Format {
    /// From the `format` query parameter (absent: raw); `Err` carries an unknown name.
    pub fn parse(v: Option<&str>) -> Result<Format, String> {
        match v.map(str::to_ascii_lowercase).as_deref() {
            None | Some("raw") => Ok(Format::Raw),
            Some("vhd") => Ok(Format::Vhd),
            Some("qcow2") => Ok(Format::Qcow2),
            Some("tar") => Ok(Format::Tar),
            Some(_) => Err(v.unwrap_or("").to_owned()),
        }
    }
    /// The name as the parameter spells it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Vhd => "vhd",
            Format::Qcow2 => "qcow2",
            Format::Tar => "tar",
        }
    }
}

/// The task a transfer reports to: the caller's (`task_id`) or one made for it.
pub struct TransferTask {
    agent: Arc<Agent>,
    task: String,
    reported: f64,
}

impl TransferTask {
    /// Adopts `task_id` (which must be a pending task) or creates a task named `label`.
    pub async fn begin(agent: &Arc<Agent>, task_id: Option<&str>, label: &str) -> Result<TransferTask, ApiError> {
        let task = match task_id.filter(|t| !t.is_empty()) {
            Some(t) => {
                agent
                    .store
                    .get(class_ids::task, t)
                    .ok_or_else(|| ApiError::handle_invalid("task", t))?;
                t.to_owned()
            }
            None => crate::tasks::create_task(agent, "", label, "").await?,
        };
        Ok(TransferTask {
            agent: agent.clone(),
            task,
            reported: 0.0,
        })
    }

    /// The task's ref.
    pub fn reference(&self) -> &str {
        &self.task
    }

    /// Advances `progress` (recorded in steps of at least 1%).
    pub async fn progress(&mut self, done: u64, total: u64) {
        if total == 0 {
            return;
        }
        let p = (done as f64 / total as f64).clamp(0.0, 0.99);
        if p - self.reported < 0.01 {
            return;
        }
        self.reported = p;
        if let Err(e) = crate::tasks::progress(&self.agent, &self.task, p).await {
            tracing::debug!(task = %self.task, error = %e, "task progress not recorded");
        }
    }

    /// Ends the task with `result` (an XML-RPC value fragment, as for Async calls).
    pub async fn succeed(self, result: &Value) {
        crate::tasks::finish(&self.agent, &self.task, Ok(result)).await;
    }

    /// Ends the task with `err`.
    pub async fn fail(self, err: &ApiError) {
        crate::tasks::finish(&self.agent, &self.task, Err(err)).await;
    }
}

/// Fails a task by ref (for failures before a transfer began, e.g. authentication).
pub async fn fail_task(agent: &Agent, task: &str, err: &ApiError) {
    crate::tasks::finish(agent, task, Err(err)).await;
}

async fn open_file(path: std::path::PathBuf, write: bool) -> Result<Arc<File>, ApiError> {
    super::fsops::blocking(move || super::fsops::open(&path, write))
        .await
        .map(Arc::new)
        .map_err(ApiError::from)
}

/// The writing end of an import: chunks in, written at increasing offsets, several writes in
/// flight. Holds the VDI's exclusive lock until dropped.
pub struct ImportSink {
    agent: Arc<Agent>,
    vdi: String,
    sr: String,
    file: Arc<File>,
    capacity: u64,
    offset: u64,
    current: Option<IoBuf>,
    writes: VecDeque<Pending>,
    /// The VDI's uuid when its changed blocks are tracked.
    tracked: Option<String>,
    _lock: OwnedRwLockWriteGuard<()>,
}

impl ImportSink {
    /// Opens a VDI for writing: it must be writable and in a `file` SR plugged here.
    pub async fn open(agent: &Arc<Agent>, vdi_ref: &str) -> Result<ImportSink, ApiError> {
        let lock = locks::write(vdi_ref).await;
        let vdi = vdi_obj(agent, vdi_ref)?;
        let (path, sr, kind) = vdi_file(agent, &vdi)?;
        if kind != SrKind::File || vdi.get(fields::VDI::read_only) == &Value::Bool(true) {
            return Err(ApiError::VdiReadonly {
                vdi: vdi_ref.to_owned(),
            });
        }
        let capacity = vdi.get(fields::VDI::virtual_size).as_int().unwrap_or(0).max(0) as u64;
        let file = open_file(path, true).await?;
        let tracked = super::cbt::tracked_uuid(&file);
        Ok(ImportSink {
            tracked,
            agent: agent.clone(),
            vdi: vdi_ref.to_owned(),
            sr: sr.reference.clone(),
            file,
            capacity,
            offset: 0,
            current: None,
            writes: VecDeque::new(),
            _lock: lock,
        })
    }

    /// The VDI's size: the most an upload may carry.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes accepted so far.
    pub fn received(&self) -> u64 {
        self.offset + self.current.as_ref().map_or(0, |b| b.len() as u64)
    }

    fn too_large(&self, needed: u64) -> ApiError {
        ApiError::VdiTooSmall {
            vdi: self.vdi.clone(),
            minimum_size: needed.to_string(),
        }
    }

    /// Takes the next bytes of the upload.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), ApiError> {
        let after = self.received() + data.len() as u64;
        if after > self.capacity {
            return Err(self.too_large(after));
        }
        let engine = IoEngine::global();
        while !data.is_empty() {
            let mut buf = match self.current.take() {
                Some(b) => b,
                None => engine.buffer().await,
            };
            let n = buf.fill_from(data);
            data = &data[n..];
            if buf.remaining() == 0 {
                self.submit(buf).await?;
            } else {
                self.current = Some(buf);
            }
        }
        Ok(())
    }

    /// Moves the write position to `to` (within the VDI): what is buffered is written where it
    /// belongs first. Bytes skipped over are left as they are; [`ImportSink::zero`] clears a
    /// range. For formats that carry only some of a disk's blocks (XVA chunks, VHD blocks).
    pub async fn seek(&mut self, to: u64) -> Result<(), ApiError> {
        if to > self.capacity {
            return Err(self.too_large(to));
        }
        if let Some(b) = self.current.take() {
            if !b.is_empty() {
                self.submit(b).await?;
            }
        }
        self.offset = to;
        Ok(())
    }

    /// Makes `len` bytes from `at` read as zeros (a hole), without moving the write position.
    pub async fn zero(&mut self, at: u64, len: u64) -> Result<(), ApiError> {
        if at.saturating_add(len) > self.capacity {
            return Err(self.too_large(at.saturating_add(len)));
        }
        if len == 0 {
            return Ok(());
        }
        let c = IoEngine::global().punch_hole(&self.file, at, len);
        self.writes.push_back(Pending::Hole(c));
        while self.writes.len() >= IN_FLIGHT {
            if let Some(w) = self.writes.pop_front() {
                w.wait().await?;
            }
        }
        Ok(())
    }

    /// Queues one full (or final) buffer: zeros become a hole, anything else a write. On a
    /// VDI with changed-block tracking the bytes there are read first: only the 64 KiB blocks
    /// that differ count as changed, and a buffer that changes nothing is not written.
    async fn submit(&mut self, buf: IoBuf) -> Result<(), ApiError> {
        let engine = IoEngine::global();
        let len = buf.len() as u64;
        let at = self.offset;
        let tracked = match self.tracked.as_ref() {
            Some(uuid) => {
                let (file, n) = (self.file.clone(), buf.len());
                let old = super::fsops::blocking(move || {
                    let mut v = vec![0u8; n];
                    let got = super::fsops::read_at_most(&file, &mut v, at)?;
                    v.truncate(got);
                    Ok(v)
                })
                .await?;
                let changed = super::cbt::changed(&old, buf.as_slice());
                if !changed.contains(&true) {
                    self.offset += len;
                    return Ok(());
                }
                Some((uuid.clone(), changed))
            }
            None => None,
        };
        let pending = match (buf.is_all_zero(), &tracked) {
            (true, None) => Pending::Hole(engine.punch_hole(&self.file, at, len)),
            (true, Some(_)) => Pending::Hole(engine.punch_hole_untracked(&self.file, at, len)),
            (false, None) => Pending::Write(engine.write_at(&self.file, at, buf)),
            (false, Some(_)) => Pending::Write(engine.write_at_untracked(&self.file, at, buf)),
        };
        if let Some((uuid, changed)) = tracked {
            super::cbt::mark_blocks(&uuid, at, &changed);
        }
        self.writes.push_back(pending);
        self.offset += len;
        while self.writes.len() >= IN_FLIGHT {
            if let Some(w) = self.writes.pop_front() {
                w.wait().await?;
            }
        }
        Ok(())
    }

    /// Writes what is buffered, waits for every write, flushes the file to disk
    /// (`fdatasync`) and re-measures the SR. Returns the bytes imported.
    pub async fn finish(mut self) -> Result<u64, ApiError> {
        if let Some(b) = self.current.take() {
            if !b.is_empty() {
                self.submit(b).await?;
            }
        }
        while let Some(w) = self.writes.pop_front() {
            w.wait().await?;
        }
        IoEngine::global().sync_data(&self.file).await.map_err(vdi_io_error)?;
        // The blocks written are in the VDI's changed-block log: it reaches the disk too.
        super::cbt::flush().await?;
        refresh_after(&self.agent, &self.sr, &[&self.vdi]).await;
        Ok(self.offset)
    }

    /// Waits for the writes already queued (after a failure), so the VDI is quiescent when
    /// the lock is released.
    pub async fn abandon(mut self) {
        self.current = None;
        while let Some(w) = self.writes.pop_front() {
            let _ = w.wait().await;
        }
        if let Err(e) = super::cbt::flush().await {
            tracing::warn!(vdi = %self.vdi, error = %e, "changed-block log not written");
        }
        refresh_after(&self.agent, &self.sr, &[&self.vdi]).await;
    }
}

/// A queued write or hole punch of an import.
enum Pending {
    Write(Completion<IoBuf>),
    Hole(Completion<()>),
}

impl Pending {
    async fn wait(self) -> Result<(), ApiError> {
        match self {
            Pending::Write(c) => c.await.map(drop),
            Pending::Hole(c) => c.await,
        }
        .map_err(vdi_io_error)
    }
}

enum Piece {
    Zeros(usize),
    Read(Completion<IoBuf>, usize, u64),
}

/// A stretch of an exported disk.
#[derive(Debug)]
pub enum Span {
    /// Bytes read from the disk.
    Data(Bytes),
    /// This many bytes of a hole (zeros, not read).
    Hole(usize),
}

impl Span {
    /// Its bytes (a hole's zeros shared, not allocated).
    pub fn into_bytes(self) -> Bytes {
        match self {
            Span::Data(b) => b,
            Span::Hole(n) => Bytes::from_static(&ZEROS[..n]),
        }
    }

    /// Its length.
    pub fn len(&self) -> usize {
        match self {
            Span::Data(b) => b.len(),
            Span::Hole(n) => *n,
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The reading end of an export: the VDI's bytes in order, holes sent as zeros without
/// reading them, several reads in flight. Holds the VDI's shared lock until dropped.
pub struct ExportSource {
    file: Arc<File>,
    /// The same file opened `O_DIRECT`, used for block-aligned reads when available.
    direct: Option<Arc<File>>,
    size: u64,
    planned: u64,
    prefetched: u64,
    segment: Option<(u64, u64)>,
    pieces: VecDeque<Piece>,
    _lock: OwnedRwLockReadGuard<()>,
}

static ZEROS: [u8; BUF_SIZE] = [0; BUF_SIZE];

impl ExportSource {
    /// Opens a VDI for reading.
    pub async fn open(agent: &Arc<Agent>, vdi_ref: &str) -> Result<ExportSource, ApiError> {
        let lock = locks::read(vdi_ref).await;
        let vdi = vdi_obj(agent, vdi_ref)?;
        let (path, _, _) = vdi_file(agent, &vdi)?;
        let size = vdi.get(fields::VDI::virtual_size).as_int().unwrap_or(0).max(0) as u64;
        let p2 = path.clone();
        let direct = super::fsops::blocking(move || Ok(super::fsops::open_direct(&p2)))
            .await
            .ok()
            .flatten()
            .map(Arc::new);
        let file = open_file(path, false).await?;
        Ok(ExportSource {
            file,
            direct,
            size,
            planned: 0,
            prefetched: 0,
            segment: None,
            pieces: VecDeque::new(),
            _lock: lock,
        })
    }

    /// Bytes the export will send (the VDI's virtual size).
    pub fn size(&self) -> u64 {
        self.size
    }

    async fn plan(&mut self) -> Result<(), ApiError> {
        let engine = IoEngine::global();
        while self.pieces.len() < READS_IN_FLIGHT && self.planned < self.size {
            let pos = self.planned;
            let seg = match self.segment {
                Some((s, e)) if pos < e => (s, e),
                _ => {
                    let next = engine.next_data(&self.file, pos).await.map_err(vdi_io_error)?;
                    let seg = next.unwrap_or((self.size, self.size));
                    self.segment = Some(seg);
                    seg
                }
            };
            let (start, end) = (seg.0.min(self.size), seg.1.min(self.size));
            // Keep the kernel reading ahead of buffered reads.
            if self.direct.is_none() && pos >= start && self.prefetched < (pos + PREFETCH / 2).min(end) {
                let from = self.prefetched.max(pos);
                let to = (pos + PREFETCH).min(end);
                engine.prefetch(&self.file, from, to - from);
                self.prefetched = to;
            }
            let piece = if pos < start {
                Piece::Zeros((start - pos).min(BUF_SIZE as u64) as usize)
            } else {
                let n = (end - pos).min(BUF_SIZE as u64) as usize;
                let buf = engine.buffer().await;
                // Direct I/O needs block-aligned offsets and lengths (buffers are page-aligned).
                let aligned = (pos | n as u64) & (DIRECT_ALIGN - 1) == 0;
                let file = match &self.direct {
                    Some(d) if aligned => d,
                    _ => &self.file,
                };
                Piece::Read(engine.read_at(file, pos, n, buf), n, pos)
            };
            self.planned += match &piece {
                Piece::Zeros(n) | Piece::Read(_, n, _) => *n as u64,
            };
            self.pieces.push_back(piece);
        }
        Ok(())
    }

    /// The next chunk, or `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ApiError>> {
        self.next_span().await.map(|r| r.map(Span::into_bytes))
    }

    /// The next span: bytes read, or a hole's length (none of it read: what skips blank
    /// chunks needs no scan of it). `None` at the end.
    pub async fn next_span(&mut self) -> Option<Result<Span, ApiError>> {
        if let Err(e) = self.plan().await {
            return Some(Err(e));
        }
        let piece = self.pieces.pop_front()?;
        Some(match piece {
            Piece::Zeros(n) => Ok(Span::Hole(n)),
            Piece::Read(c, n, pos) => match c.await {
                // A file system that took O_DIRECT at open but refuses it on read: go buffered.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::info!("direct reads refused; exporting through the page cache");
                    self.direct = None;
                    let engine = IoEngine::global();
                    let buf = engine.buffer().await;
                    match engine.read_at(&self.file, pos, n, buf).await {
                        Ok(buf) if buf.len() == n => Ok(Span::Data(Bytes::from_owner(buf))),
                        Ok(_) => Err(ApiError::VdiIoError {
                            message: "Device I/O errors: short read".into(),
                        }),
                        Err(e) => Err(vdi_io_error(e)),
                    }
                }
                Ok(buf) if buf.len() == n => Ok(Span::Data(Bytes::from_owner(buf))),
                // A file shorter than its VDI (it should not be) reads as zeros past its end.
                Ok(buf) => {
                    let mut v = buf.as_slice().to_vec();
                    v.resize(n, 0);
                    Ok(Span::Data(Bytes::from(v)))
                }
                Err(e) => Err(vdi_io_error(e)),
            },
        })
    }
}
