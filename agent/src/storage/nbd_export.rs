//! What the NBD server asks of storage: whether and how it may serve (the networks'
//! `purpose`), a VDI opened as an export for a session, its bytes read through the I/O engine
//! (several 1 MiB reads in flight), and its allocation (`SEEK_DATA`/`SEEK_HOLE`) for
//! `base:allocation`. Read-only, as the reference's NBD server.

use super::io::{Completion, IoBuf, IoEngine, BUF_SIZE};
use super::layout::{vdi_file, vdi_obj};
use super::locks;
use crate::error::{vdi_io_error, ApiError};
use crate::schema::enums::{NetworkPurpose, VdiType};
use crate::schema::{class_ids, fields};
use crate::Agent;
use std::collections::VecDeque;
use std::fs::File;
use std::sync::Arc;
use tokio::sync::OwnedRwLockReadGuard;

/// Reads in flight per request.
const READS_IN_FLIGHT: usize = 8;

/// Whether the NBD server serves connections now, from the networks' `purpose`s (as the
/// reference's server decides for each connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdPolicy {
    /// A network has purpose `nbd`: TLS is required.
    Tls,
    /// A network has purpose `insecure_nbd`: plain connections.
    Plain,
    /// No connection is served, and why.
    Refuse(&'static str),
}

/// The policy the networks' purposes set now.
pub fn policy(agent: &Agent) -> NbdPolicy {
    let nets = agent.store.all(class_ids::network);
    let has = |want: NetworkPurpose| {
        nets.iter()
            .any(|n| n.get(fields::network::purpose).as_set().iter().any(|p| *p == want))
    };
    match (has(NetworkPurpose::nbd), has(NetworkPurpose::insecure_nbd)) {
        (true, true) => NbdPolicy::Refuse("networks have both the nbd and the insecure_nbd purpose"),
        (true, false) => NbdPolicy::Tls,
        (false, true) => NbdPolicy::Plain,
        (false, false) => NbdPolicy::Refuse("no network has the nbd or insecure_nbd purpose"),
    }
}

/// A VDI opened for an NBD client.
pub struct NbdExport {
    vdi: String,
    file: Arc<File>,
    size: u64,
}

impl NbdExport {
    /// Opens the VDI with this uuid for `session`, which must be valid. The VDI must have data
    /// (not `cbt_metadata`) in an SR plugged here.
    pub async fn open(agent: &Arc<Agent>, vdi_uuid: &str, session: &str) -> Result<NbdExport, ApiError> {
        agent.validate_session(session)?;
        let vdi_ref = agent
            .store
            .ref_by_uuid(class_ids::VDI, vdi_uuid)
            .ok_or_else(|| ApiError::UuidInvalid {
                r#type: "VDI".into(),
                uuid: vdi_uuid.to_owned(),
            })?;
        let _lock = locks::read(&vdi_ref).await;
        let vdi = vdi_obj(agent, &vdi_ref)?;
        if *vdi.get(fields::VDI::r#type) == VdiType::cbt_metadata {
            return Err(ApiError::VdiIncompatibleType {
                vdi: vdi_ref,
                r#type: VdiType::cbt_metadata.name().to_owned(),
            });
        }
        let (path, _, _) = vdi_file(agent, &vdi)?;
        let size = vdi.get(fields::VDI::virtual_size).as_int().unwrap_or(0).max(0) as u64;
        let file = super::fsops::blocking(move || super::fsops::open(&path, false))
            .await
            .map_err(ApiError::from)?;
        Ok(NbdExport {
            vdi: vdi_ref,
            file: Arc::new(file),
            size,
        })
    }

    /// The export's size (the VDI's virtual size).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The VDI's ref.
    pub fn vdi(&self) -> &str {
        &self.vdi
    }

    /// The bytes `[offset, offset + len)`, in order, as 1 MiB (or shorter) pieces. The VDI's
    /// shared lock is held while they are read. The range must lie within the export.
    pub async fn read(&self, offset: u64, len: u64) -> ExportRead {
        ExportRead {
            file: self.file.clone(),
            next: offset,
            end: offset.saturating_add(len).min(self.size),
            pending: VecDeque::new(),
            _lock: locks::read(&self.vdi).await,
        }
    }

    /// The allocation of `[offset, offset + len)` as extents `(length, is_hole)`, at most
    /// `max` of them, covering the range from `offset` (the last may stop short of its end).
    pub async fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<(u32, bool)>, ApiError> {
        let engine = IoEngine::global();
        let end = offset.saturating_add(len).min(self.size);
        let mut pos = offset;
        let mut out: Vec<(u32, bool)> = Vec::new();
        // Extents are kept below 4 GiB (a u32 on the wire), in whole 512-byte sectors.
        const MAX_EXTENT: u64 = (u32::MAX as u64) & !511;
        let push = |out: &mut Vec<(u32, bool)>, n: u64, hole: bool| {
            let mut n = n;
            while n > 0 && out.len() < max {
                let piece = n.min(MAX_EXTENT);
                out.push((piece as u32, hole));
                n -= piece;
            }
        };
        while pos < end && out.len() < max {
            let (start, stop) = match engine.next_data(&self.file, pos).await.map_err(vdi_io_error)? {
                Some((s, e)) => (s.min(end), e.min(end)),
                None => (end, end),
            };
            if start > pos {
                push(&mut out, start - pos, true);
            }
            if stop > start {
                push(&mut out, stop - start, false);
            }
            let next = stop.max(start);
            if next <= pos {
                // A file system answering a data segment that does not advance: call the
                // rest data.
                push(&mut out, end - pos, false);
                break;
            }
            pos = next;
        }
        Ok(out)
    }
}

/// The pieces of one read, several in flight.
pub struct ExportRead {
    file: Arc<File>,
    next: u64,
    end: u64,
    pending: VecDeque<(Completion<IoBuf>, usize)>,
    _lock: OwnedRwLockReadGuard<()>,
}

impl ExportRead {
    /// The next piece, or `None` when the range is done.
    pub async fn next_piece(&mut self) -> Option<Result<IoBuf, ApiError>> {
        let engine = IoEngine::global();
        while self.pending.len() < READS_IN_FLIGHT && self.next < self.end {
            let n = (self.end - self.next).min(BUF_SIZE as u64) as usize;
            // Wait for a buffer only while holding none: requests that each held some and
            // waited for more could otherwise take the whole pool between them.
            let buf = if self.pending.is_empty() {
                engine.buffer().await
            } else {
                match engine.try_buffer() {
                    Some(b) => b,
                    None => break,
                }
            };
            self.pending
                .push_back((engine.read_at(&self.file, self.next, n, buf), n));
            self.next += n as u64;
        }
        let (c, n) = self.pending.pop_front()?;
        Some(match c.await {
            Ok(mut buf) => {
                // A file shorter than its VDI reads as zeros past its end.
                if buf.len() < n {
                    let from = buf.len();
                    buf.set_len(n);
                    buf.as_full_mut()[from..n].fill(0);
                }
                Ok(buf)
            }
            Err(e) => Err(vdi_io_error(e)),
        })
    }
}
