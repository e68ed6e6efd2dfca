//! The disk formats of `/export_raw_vdi` and `/import_raw_vdi` beyond raw: a VHD export (the
//! blocks that hold data, or with a base VDI only those that differ from it), a qcow2 export
//! (the clusters that hold data), and a VHD import applied onto a VDI through the storage
//! layer's [`ImportSink`]. Reads go through [`BlockReader`] (the I/O engine, shared locks).

use super::qcow2;
use super::vhd::{self, Layout, Target, BLOCK_SIZE};
use super::BackupError;
use crate::error::ApiError;
use crate::schema::class_ids;
use crate::storage::block_read::BlockReader;
use crate::storage::transfer::ImportSink;
use crate::Agent;
use bytes::Bytes;
use std::sync::Arc;

fn uuid_bytes(u: &str) -> [u8; 16] {
    uuid::Uuid::parse_str(u).map(|u| *u.as_bytes()).unwrap_or([0; 16])
}

/// Unit numbers (blocks or clusters of `unit` bytes) that hold allocated data.
fn units_with_data(ranges: &[(u64, u64)], unit: u64) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for (s, e) in ranges {
        if e <= s {
            continue;
        }
        let (first, last) = (s / unit, (e - 1) / unit);
        for u in first..=last {
            if out.last() != Some(&u) {
                out.push(u);
            }
        }
    }
    out.dedup();
    out
}

/// What a format export streams: a head, then units of the disk read in order, then a tail.
pub struct DiskExport {
    reader: BlockReader,
    head: Option<Bytes>,
    /// The units (block or cluster numbers) still to send.
    units: std::collections::VecDeque<u64>,
    unit: u64,
    prefix: Bytes,
    tail: Option<Bytes>,
    size: u64,
    file_size: u64,
    sent_units: u64,
    total_units: u64,
}

impl DiskExport {
    /// A dynamic VHD of `vdi`, or with `base` a differencing VHD of the blocks that differ.
    pub async fn vhd(agent: &Arc<Agent>, vdi: &str, base: Option<&str>) -> Result<DiskExport, ApiError> {
        let reader = BlockReader::open(agent, vdi).await?;
        let size = reader.size();
        let bs = u64::from(BLOCK_SIZE);
        let uuid = agent.uuid_of(class_ids::VDI, vdi).unwrap_or_default();
        let (blocks, parent) = match base {
            None => (units_with_data(&reader.data_ranges().await?, bs), None),
            Some(b) => {
                let base_reader = BlockReader::open(agent, b).await?;
                let base_uuid = agent.uuid_of(class_ids::VDI, b).unwrap_or_default();
                let mine = units_with_data(&reader.data_ranges().await?, bs);
                let theirs = units_with_data(&base_reader.data_ranges().await?, bs);
                let mut candidates: Vec<u64> = mine.iter().chain(theirs.iter()).copied().collect();
                candidates.sort_unstable();
                candidates.dedup();
                let mut a = vec![0u8; bs as usize];
                let mut b2 = vec![0u8; bs as usize];
                let mut differ = Vec::new();
                for blk in candidates {
                    let at = blk * bs;
                    if at >= size {
                        break;
                    }
                    reader.read_into(at, &mut a).await?;
                    if at < base_reader.size() {
                        base_reader.read_into(at, &mut b2).await?;
                        let valid = (base_reader.size() - at).min(bs) as usize;
                        if let Some(rest) = b2.get_mut(valid..) {
                            rest.fill(0);
                        }
                    } else {
                        b2.fill(0);
                    }
                    if a != b2 {
                        differ.push(blk);
                    }
                }
                (differ, Some((uuid_bytes(&base_uuid), format!("{base_uuid}.vhd"))))
            }
        };
        let blocks32: Vec<u32> = blocks.iter().map(|b| *b as u32).collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let layout = Layout::new(size, blocks32, uuid_bytes(&uuid), parent, now);
        let head = Bytes::from(layout.head());
        let tail = Bytes::copy_from_slice(&layout.footer.encode());
        let total_units = blocks.len() as u64;
        Ok(DiskExport {
            reader,
            head: Some(head),
            units: blocks.into(),
            unit: bs,
            prefix: Bytes::from(layout.bitmap()),
            tail: Some(tail),
            size,
            file_size: layout.file_size(),
            sent_units: 0,
            total_units,
        })
    }

    /// A qcow2 image of `vdi`.
    pub async fn qcow2(agent: &Arc<Agent>, vdi: &str) -> Result<DiskExport, ApiError> {
        let reader = BlockReader::open(agent, vdi).await?;
        let size = reader.size();
        let clusters = units_with_data(&reader.data_ranges().await?, qcow2::CLUSTER);
        let layout = qcow2::Layout::new(size, clusters.clone());
        let total_units = clusters.len() as u64;
        Ok(DiskExport {
            reader,
            head: Some(Bytes::from(layout.head())),
            units: clusters.into(),
            unit: qcow2::CLUSTER,
            prefix: Bytes::new(),
            tail: None,
            size,
            file_size: layout.file_size(),
            sent_units: 0,
            total_units,
        })
    }

    /// The bytes the export sends.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// Units sent, and in all.
    pub fn progress(&self) -> (u64, u64) {
        (self.sent_units, self.total_units)
    }

    /// The next piece, or `None` at the end.
    pub async fn next_piece(&mut self) -> Option<Result<Bytes, ApiError>> {
        if let Some(h) = self.head.take() {
            return Some(Ok(h));
        }
        // Several units per piece (at least 2 MiB) to keep per-piece costs small.
        let per_piece = ((4u64 << 20) / self.unit).max(1);
        let mut out = Vec::new();
        for _ in 0..per_piece {
            let Some(u) = self.units.pop_front() else { break };
            let at = u * self.unit;
            let mut data = vec![0u8; self.unit as usize];
            let valid = self.size.saturating_sub(at).min(self.unit) as usize;
            if let Some(d) = data.get_mut(..valid) {
                if let Err(e) = self.reader.read_into(at, d).await {
                    return Some(Err(e));
                }
            }
            out.extend_from_slice(&self.prefix);
            out.extend_from_slice(&data);
            self.sent_units += 1;
        }
        if !out.is_empty() {
            return Some(Ok(Bytes::from(out)));
        }
        self.tail.take().map(Ok)
    }
}

/// An [`ImportSink`] as the target of a VHD import.
pub struct SinkTarget {
    sink: ImportSink,
}

impl SinkTarget {
    /// Writes into `vdi` (its exclusive lock held until [`SinkTarget::finish`]).
    pub async fn open(agent: &Arc<Agent>, vdi: &str) -> Result<SinkTarget, ApiError> {
        Ok(SinkTarget {
            sink: ImportSink::open(agent, vdi).await?,
        })
    }

    /// Flushes and syncs.
    pub async fn finish(self) -> Result<u64, ApiError> {
        self.sink.finish().await
    }

    /// Waits for what was queued, after a failure.
    pub async fn abandon(self) {
        self.sink.abandon().await
    }
}

impl Target for SinkTarget {
    fn capacity(&self) -> u64 {
        self.sink.capacity()
    }
    async fn write_at(&mut self, at: u64, data: &[u8]) -> Result<(), BackupError> {
        self.sink.seek(at).await?;
        self.sink.write(data).await?;
        Ok(())
    }
    async fn zero(&mut self, at: u64, len: u64) -> Result<(), BackupError> {
        self.sink.zero(at, len).await?;
        Ok(())
    }
}

/// Applies a VHD (dynamic, or differencing onto what the VDI holds) from `src` to `vdi`.
pub async fn import_vhd<S: vhd::Source>(agent: &Arc<Agent>, vdi: &str, src: &mut S) -> Result<u64, ApiError> {
    let mut t = SinkTarget::open(agent, vdi).await?;
    match vhd::apply(src, &mut t).await {
        Ok(n) => {
            t.finish().await?;
            Ok(n)
        }
        Err(e) => {
            t.abandon().await;
            Err(e.api_error())
        }
    }
}

/// A new file to spool an upload into (under the state dir; the caller removes it).
pub fn spool_path(agent: &Agent) -> Result<std::path::PathBuf, ApiError> {
    let dir = agent.state_dir.join("spool");
    std::fs::create_dir_all(&dir).map_err(|e| ApiError::internal(format!("creating {}: {e}", dir.display())))?;
    Ok(dir.join(format!("upload-{}", uuid::Uuid::new_v4())))
}

/// Applies the qcow2 image spooled at `path` to `vdi` (a qcow2's tables may come after its
/// data, so it is read whole first). The image's file is read directly; the VDI is written
/// through the storage layer.
pub async fn import_qcow2_file(agent: &Arc<Agent>, vdi: &str, path: &std::path::Path) -> Result<u64, ApiError> {
    let file = std::fs::File::open(path).map_err(|e| ApiError::internal(format!("opening the spooled upload: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| ApiError::internal(format!("the spooled upload: {e}")))?
        .len();
    let m = qcow2::map(&file, len)?;
    let mut t = SinkTarget::open(agent, vdi).await?;
    match qcow2::apply(&file, &m, &mut t).await {
        Ok(n) => {
            t.finish().await?;
            Ok(n)
        }
        Err(e) => {
            t.abandon().await;
            Err(e.api_error())
        }
    }
}
