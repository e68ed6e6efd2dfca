//! Copying a VDI's bytes at an instant (snapshot, clone, copy): a reflink where the file
//! system shares extents, else `copy_file_range` per data segment, else reads and writes
//! through the I/O engine — always skipping holes (`SEEK_DATA`/`SEEK_HOLE`), so a sparse
//! disk stays sparse.

use super::fsops::{self, blocking};
use super::io::{IoEngine, BUF_SIZE};
use super::StorageError;
use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

/// How the bytes were copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyHow {
    /// The destination shares the source's extents.
    Reflink,
    /// The kernel copied each data segment.
    CopyFileRange,
    /// The I/O engine read and wrote each data segment.
    Engine,
}

/// Writes in flight at once while copying through the engine.
const IN_FLIGHT: usize = 8;

/// Copies the first `size` bytes of `src` into `dst` (which exists and is at least `size`
/// long). `dst_fresh` says `dst` is a new sparse file: its holes need no zeroing.
pub async fn copy_bytes(src: PathBuf, dst: PathBuf, size: u64, dst_fresh: bool) -> Result<CopyHow, StorageError> {
    let (s, d) = blocking(move || Ok((fsops::open(&src, false)?, fsops::open(&dst, true)?))).await?;
    let (s, d) = (Arc::new(s), Arc::new(d));
    let src_len = s.metadata().map(|m| m.len()).unwrap_or(0);
    let dst_len = d.metadata().map(|m| m.len()).unwrap_or(0);
    if dst_fresh && src_len == size && dst_len == size {
        let (s2, d2) = (s.clone(), d.clone());
        if blocking(move || Ok(fsops::reflink(&s2, &d2))).await? {
            return Ok(CopyHow::Reflink);
        }
    }
    let engine = IoEngine::global();
    let mut how = CopyHow::CopyFileRange;
    let mut pos = 0u64;
    while pos < size {
        let (start, end) = match engine.next_data(&s, pos).await? {
            Some((a, b)) if a < size => (a, b.min(size)),
            _ => (size, size),
        };
        if start > pos && !dst_fresh {
            engine.punch_hole(&d, pos, start - pos).await?;
        }
        if start >= end {
            break;
        }
        if how == CopyHow::CopyFileRange {
            // The kernel copies these bytes, not the engine: the changed-block log is told here.
            super::cbt::note_write(&d, start, end - start);
            let (s2, d2) = (s.clone(), d.clone());
            let done = blocking(move || {
                fsops::copy_range(&s2, &d2, start, end - start).map_err(|source| StorageError::Fs {
                    what: "copy_file_range into",
                    path: PathBuf::from("the copy"),
                    source,
                })
            })
            .await?;
            if !done {
                how = CopyHow::Engine;
            }
        }
        if how == CopyHow::Engine {
            copy_segment(engine, &s, &d, start, end).await?;
        }
        pos = end;
    }
    if pos < size && !dst_fresh {
        engine.punch_hole(&d, pos, size - pos).await?;
    }
    engine.sync_data(&d).await?;
    Ok(how)
}

/// Copies `[start, end)` through the engine's registered buffers, several writes in flight.
async fn copy_segment(
    engine: &IoEngine,
    s: &Arc<File>,
    d: &Arc<File>,
    start: u64,
    end: u64,
) -> Result<(), StorageError> {
    let mut writes = VecDeque::new();
    let mut off = start;
    while off < end {
        let len = ((end - off) as usize).min(BUF_SIZE);
        let buf = engine.buffer().await;
        let buf = engine.read_at(s, off, len, buf).await?;
        let n = buf.len() as u64;
        if n == 0 {
            break;
        }
        writes.push_back(engine.write_at(d, off, buf));
        if writes.len() >= IN_FLIGHT {
            if let Some(w) = writes.pop_front() {
                w.await?;
            }
        }
        off += n;
    }
    for w in writes {
        w.await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    #[tokio::test]
    async fn copies_keep_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        let size = 16u64 << 20;
        fsops::create_sparse(&src, size).unwrap();
        {
            let mut f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
            f.seek(SeekFrom::Start(3 << 20)).unwrap();
            f.write_all(&vec![7u8; 1 << 20]).unwrap();
            f.seek(SeekFrom::Start(size - 10)).unwrap();
            f.write_all(b"0123456789").unwrap();
        }
        fsops::create_sparse(&dst, size).unwrap();
        copy_bytes(src.clone(), dst.clone(), size, true).await.unwrap();
        let mut a = Vec::new();
        let mut b = Vec::new();
        std::fs::File::open(&src).unwrap().read_to_end(&mut a).unwrap();
        std::fs::File::open(&dst).unwrap().read_to_end(&mut b).unwrap();
        assert!(a == b);
        let (_, alloc) = fsops::sizes(&dst).unwrap();
        assert!(alloc < 4 << 20, "the copy is not sparse: {alloc}");
        // Into an existing, dirty destination: its extra data is cleared.
        std::fs::write(&dst, vec![9u8; size as usize]).unwrap();
        copy_bytes(src.clone(), dst.clone(), size, false).await.unwrap();
        let mut c = Vec::new();
        std::fs::File::open(&dst).unwrap().read_to_end(&mut c).unwrap();
        assert!(a == c);
    }

    #[tokio::test]
    async fn the_engine_path_copies_too() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::write(&src, (0..3_000_000u32).map(|i| i as u8).collect::<Vec<_>>()).unwrap();
        fsops::create_sparse(&dst, 3_000_000).unwrap();
        let s = Arc::new(std::fs::File::open(&src).unwrap());
        let d = Arc::new(fsops::open(&dst, true).unwrap());
        copy_segment(IoEngine::global(), &s, &d, 0, 3_000_000).await.unwrap();
        assert!(std::fs::read(&src).unwrap() == std::fs::read(&dst).unwrap());
    }
}
