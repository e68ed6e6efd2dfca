//! One disk as a tar of checksummed chunks: `GET /export_raw_vdi?format=tar` and
//! `PUT /import_raw_vdi?format=tar`. The stream is an XVA's disk part alone, as the reference
//! writes it for these paths: numbered 1 MiB chunks under the prefix `vdi`
//! (`vdi/00000000`, …), each followed by its checksum file (`.xxhash`, or `.checksum` from older
//! writers), blank chunks left out but the first and the last, no `ova.xml`.
//!
//! An import checks every checksum (`IMPORT_ERROR` on a mismatch), writes each chunk where its
//! number says, and clears what lies between chunks (the VDI may hold older data there); a
//! stream whose last chunk never comes fails with `IMPORT_ERROR_PREMATURE_EOF`, one with a
//! chunk out of order, of another prefix or beyond the disk's end with `IMPORT_ERROR`.

use super::metadata::ExportDisk;
use super::xva_read::{self, Item};
use super::xva_write::{XvaWriter, CHUNK};
use super::BackupError;
use crate::error::ApiError;
use crate::schema::{class_ids, fields};
use crate::storage::transfer::{ImportSink, TransferTask};
use crate::Agent;
use std::io::Read;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The prefix of the chunks' names (the reference's `vdi_tar_export_dir`).
pub const PREFIX: &str = "vdi";

/// The tar stream of `vdi` (its whole virtual size).
pub fn export(agent: &Arc<Agent>, vdi: &str) -> Result<XvaWriter, ApiError> {
    let size = agent
        .store
        .get(class_ids::VDI, vdi)
        .ok_or_else(|| ApiError::handle_invalid("VDI", vdi))?
        .get(fields::VDI::virtual_size)
        .as_int()
        .unwrap_or(0)
        .max(0) as u64;
    Ok(XvaWriter::disks_only(
        agent,
        vec![ExportDisk {
            id: PREFIX.to_owned(),
            vdi: vdi.to_owned(),
            size,
        }],
    ))
}

/// Writes the tar stream `open` returns onto `vdi` (read on a blocking thread); returns the
/// bytes the disk holds.
pub async fn import<F, R>(agent: &Arc<Agent>, vdi: &str, open: F, task: &mut TransferTask) -> Result<u64, ApiError>
where
    F: FnOnce() -> Result<R, BackupError> + Send + 'static,
    R: Read + Send + 'static,
{
    let (reader, mut rx) = xva_read::spawn(open, xva_read::Stream::DiskChunks, false);
    let mut sink = ImportSink::open(agent, vdi).await?;
    let r = write_chunks(&mut sink, &mut rx, task).await;
    drop(rx);
    if let Err(e) = reader.await {
        tracing::warn!(error = %e, "the disk tar reader ended abnormally");
    }
    match r {
        Ok(()) => sink.finish().await,
        Err(e) => {
            sink.abandon().await;
            Err(e.api_error())
        }
    }
}

async fn write_chunks(
    sink: &mut ImportSink,
    rx: &mut mpsc::Receiver<Result<Item, BackupError>>,
    task: &mut TransferTask,
) -> Result<(), BackupError> {
    let size = sink.capacity();
    let mut end = 0u64;
    let mut last: Option<u64> = None;
    while let Some(item) = rx.recv().await {
        let Item::Chunk { prefix, index, data } = item? else {
            return Err(BackupError::Archive("ova.xml in a disk's tar stream".into()));
        };
        let name = format!("{prefix}/{index:08}");
        if prefix != PREFIX {
            return Err(BackupError::Archive(format!(
                "chunk {name}: a disk's tar stream holds chunks under {PREFIX}/"
            )));
        }
        if last.is_some_and(|l| index <= l) {
            return Err(BackupError::Archive(format!("chunk {name} is out of order")));
        }
        last = Some(index);
        if data.len() as u64 > CHUNK {
            return Err(BackupError::Archive(format!(
                "chunk {name} holds more than {CHUNK} bytes"
            )));
        }
        let at = index
            .checked_mul(CHUNK)
            .filter(|a| a.saturating_add(data.len() as u64) <= size)
            .ok_or_else(|| BackupError::Archive(format!("chunk {name} lies beyond the disk's end ({size} bytes)")))?;
        // What lies between the chunks is blank.
        sink.zero(end, at - end).await?;
        sink.seek(at).await?;
        sink.write(&data).await?;
        end = at + data.len() as u64;
        task.progress(end, size).await;
    }
    if end < size {
        // The writer always sends the last chunk, which gives the disk its extent.
        return Err(BackupError::PrematureEof);
    }
    Ok(())
}
