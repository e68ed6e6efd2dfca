//! Changed-block tracking: one log per VDI with `cbt_enabled`, a file beside the VDI's
//! (`<file>.cbt`) holding its size, the uuids of its neighbours in the VDI's chain of
//! snapshots (`parent`: the snapshot its bitmap counts changes since; `child`: the next VDI of
//! the chain) and a bitmap with one bit per 64 KiB block (most significant bit first, as
//! `VDI.list_changed_blocks` returns it).
//!
//! Every write and hole punch the I/O engine carries out on a tracked VDI's file sets the bits
//! of the blocks it touches ([`note_write`], called from `IoEngine::write_at`/`punch_hole`):
//! every writer of VDI bytes goes through the engine, so all of them are tracked. The logs live
//! in memory and are written to their files when a writer finishes (`fdatasync`), on snapshot,
//! on disable and on `list_changed_blocks`, so they outlive restarts.

use super::fsops::{self, blocking};
use super::StorageError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Bytes one bit of a bitmap stands for.
pub const BLOCK: u64 = 64 * 1024;
const MAGIC: &[u8; 8] = b"XAPIDCBT";
const VERSION: u32 = 1;
const UUID_LEN: usize = 36;
const HEADER: usize = 8 + 4 + 8 + 2 * UUID_LEN;

/// One VDI's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    /// The VDI's virtual size when the log was last sized.
    pub size: u64,
    /// The snapshot whose contents the bitmap counts changes since ("" for none).
    pub parent: String,
    /// The next VDI of the chain ("" for none).
    pub child: String,
    /// One bit per block, most significant bit first.
    pub bitmap: Vec<u8>,
}

/// Bytes of a bitmap for `size` bytes.
pub fn bitmap_len(size: u64) -> usize {
    size.div_ceil(BLOCK).div_ceil(8) as usize
}

impl Log {
    /// An empty log for a VDI of `size` bytes.
    pub fn new(size: u64, parent: &str) -> Log {
        Log {
            size,
            parent: parent.to_owned(),
            child: String::new(),
            bitmap: vec![0; bitmap_len(size)],
        }
    }

    /// Marks the blocks `[offset, offset + len)` touches.
    pub fn mark(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / BLOCK;
        let last = (offset.saturating_add(len) - 1) / BLOCK;
        for b in first..=last {
            let (byte, bit) = ((b / 8) as usize, (b % 8) as u8);
            if let Some(x) = self.bitmap.get_mut(byte) {
                *x |= 0x80 >> bit;
            }
        }
    }

    /// Grows (never shrinks) the log to a VDI of `size` bytes.
    pub fn resize(&mut self, size: u64) {
        if size > self.size {
            self.size = size;
            self.bitmap.resize(bitmap_len(size), 0);
        }
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + self.bitmap.len());
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&VERSION.to_be_bytes());
        v.extend_from_slice(&self.size.to_be_bytes());
        for u in [&self.parent, &self.child] {
            let mut b = [0u8; UUID_LEN];
            let n = u.len().min(UUID_LEN);
            b[..n].copy_from_slice(&u.as_bytes()[..n]);
            v.extend_from_slice(&b);
        }
        v.extend_from_slice(&self.bitmap);
        v
    }

    /// Reads a log file's bytes; `None` when they are not one.
    pub fn decode(b: &[u8]) -> Option<Log> {
        if b.len() < HEADER || &b[..8] != MAGIC || b[8..12] != VERSION.to_be_bytes() {
            return None;
        }
        let size = u64::from_be_bytes(b[12..20].try_into().ok()?);
        let uuid = |at: usize| -> Option<String> {
            let raw = &b[at..at + UUID_LEN];
            let end = raw.iter().position(|c| *c == 0).unwrap_or(UUID_LEN);
            String::from_utf8(raw[..end].to_vec()).ok()
        };
        let parent = uuid(20)?;
        let child = uuid(20 + UUID_LEN)?;
        let bitmap = b[HEADER..].to_vec();
        if bitmap.len() != bitmap_len(size) {
            return None;
        }
        Some(Log {
            size,
            parent,
            child,
            bitmap,
        })
    }
}

/// A tracked VDI: its log, where the log is kept, and whether it changed since written.
struct Tracked {
    log: Log,
    path: PathBuf,
    dirty: bool,
}

#[derive(Default)]
struct Registry {
    /// By VDI uuid.
    logs: HashMap<String, Tracked>,
    /// The VDI files' (device, inode), to the uuid of their VDI.
    files: HashMap<(u64, u64), String>,
}

static ANY: AtomicBool = AtomicBool::new(false);

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Registry::default()))
}

/// Where a VDI file's log lives.
pub fn log_path(vdi_file: &Path) -> PathBuf {
    let mut s = vdi_file.as_os_str().to_owned();
    s.push(".cbt");
    PathBuf::from(s)
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Called by the I/O engine for every write and hole punch: marks the blocks when the file is
/// a tracked VDI's. Costs one `fstat` per call while any VDI is tracked, nothing otherwise.
pub fn note_write(file: &File, offset: u64, len: u64) {
    if !ANY.load(Ordering::Relaxed) {
        return;
    }
    let Ok(meta) = file.metadata() else {
        return;
    };
    let mut r = registry().lock();
    let Some(uuid) = r.files.get(&(meta.dev(), meta.ino())).cloned() else {
        return;
    };
    if let Some(t) = r.logs.get_mut(&uuid) {
        t.log.mark(offset, len);
        t.dirty = true;
    }
}

/// The uuid of the tracked VDI whose bytes `file` holds, if any.
pub fn tracked_uuid(file: &File) -> Option<String> {
    if !ANY.load(Ordering::Relaxed) {
        return None;
    }
    let meta = file.metadata().ok()?;
    registry().lock().files.get(&(meta.dev(), meta.ino())).cloned()
}

/// Marks, in `uuid`'s log, the blocks flagged in `changed` (one flag per block from `offset`,
/// which is block-aligned).
pub fn mark_blocks(uuid: &str, offset: u64, changed: &[bool]) {
    update(uuid, |l| {
        for (i, c) in changed.iter().enumerate() {
            if *c {
                l.mark(offset + i as u64 * BLOCK, 1);
            }
        }
    });
}

/// Which blocks of `new` (bytes to be written at the block-aligned `offset`) differ from
/// `old` (what is there now; holes read as zeros).
pub fn changed(old: &[u8], new: &[u8]) -> Vec<bool> {
    new.chunks(BLOCK as usize)
        .enumerate()
        .map(|(i, n)| {
            let from = i * BLOCK as usize;
            let o = old.get(from..(from + n.len()).min(old.len())).unwrap_or(&[]);
            o != n && !(o.len() < n.len() && n[o.len()..].iter().all(|b| *b == 0) && o == &n[..o.len()])
        })
        .collect()
}

/// Starts tracking the VDI `uuid` whose bytes are in `vdi_file`, with `log` (blocking: writes
/// the log file).
pub fn track_blocking(uuid: &str, vdi_file: &Path, log: Log) -> Result<(), StorageError> {
    let path = log_path(vdi_file);
    write_log(&path, &log)?;
    let mut r = registry().lock();
    if let Some(id) = file_id(vdi_file) {
        r.files.insert(id, uuid.to_owned());
    }
    r.logs.insert(
        uuid.to_owned(),
        Tracked {
            log,
            path,
            dirty: false,
        },
    );
    ANY.store(true, Ordering::Relaxed);
    Ok(())
}

/// Loads a tracked VDI's log from its file (at start). A missing or unreadable log is replaced
/// by one with every block marked: what changed is unknown, so all of it may have.
pub fn load_blocking(uuid: &str, vdi_file: &Path, size: u64) -> Result<(), StorageError> {
    let path = log_path(vdi_file);
    let log = match std::fs::read(&path).ok().and_then(|b| Log::decode(&b)) {
        Some(l) => l,
        None => {
            tracing::warn!(vdi = uuid, path = %path.display(), "changed-block log missing or damaged: every block counts as changed");
            let mut l = Log::new(size, "");
            l.bitmap.fill(0xff);
            l
        }
    };
    track_blocking(uuid, vdi_file, log)
}

/// Stops tracking a VDI and deletes its log file (blocking).
pub fn untrack_blocking(uuid: &str) -> Result<(), StorageError> {
    let t = {
        let mut r = registry().lock();
        r.files.retain(|_, u| u != uuid);
        let t = r.logs.remove(uuid);
        ANY.store(!r.logs.is_empty(), Ordering::Relaxed);
        t
    };
    match t {
        Some(t) => fsops::remove(&t.path),
        None => Ok(()),
    }
}

/// A copy of a VDI's log, if it is tracked.
pub fn log_of(uuid: &str) -> Option<Log> {
    registry().lock().logs.get(uuid).map(|t| t.log.clone())
}

/// Changes a tracked VDI's log in place (marking it for writing).
pub fn update(uuid: &str, f: impl FnOnce(&mut Log)) -> bool {
    let mut r = registry().lock();
    match r.logs.get_mut(uuid) {
        Some(t) => {
            f(&mut t.log);
            t.dirty = true;
            true
        }
        None => false,
    }
}

fn write_log(path: &Path, log: &Log) -> Result<(), StorageError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let fs = |what: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| StorageError::Fs { what, path: p, source }
    };
    std::fs::write(&tmp, log.encode()).map_err(fs("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(fs("renaming", path))
}

/// Writes every log changed since it was last written (blocking).
pub fn flush_blocking() -> Result<(), StorageError> {
    let pending: Vec<(PathBuf, Log)> = {
        let mut r = registry().lock();
        r.logs
            .values_mut()
            .filter(|t| t.dirty)
            .map(|t| {
                t.dirty = false;
                (t.path.clone(), t.log.clone())
            })
            .collect()
    };
    for (path, log) in pending {
        write_log(&path, &log)?;
    }
    Ok(())
}

/// [`flush_blocking`] off the async workers.
pub async fn flush() -> Result<(), StorageError> {
    if !ANY.load(Ordering::Relaxed) {
        return Ok(());
    }
    blocking(flush_blocking).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_msb_first_per_64k_block() {
        let mut l = Log::new(20 * BLOCK + 1, "p");
        assert_eq!(l.bitmap.len(), 3);
        l.mark(0, 1);
        l.mark(9 * BLOCK - 1, 2); // blocks 8 and 9
        l.mark(20 * BLOCK, 1); // the last, partial block
        assert_eq!(l.bitmap, vec![0x80, 0xc0, 0x08]);
        let back = Log::decode(&l.encode()).unwrap();
        assert_eq!(back, l);
        assert!(Log::decode(&l.encode()[..HEADER + 1]).is_none());
        l.resize(64 * BLOCK);
        assert_eq!(l.bitmap.len(), 8);
    }

    #[test]
    fn only_blocks_whose_bytes_differ_change() {
        let b = BLOCK as usize;
        let old = vec![7u8; 3 * b];
        let mut new = old.clone();
        new[b + 5] = 8;
        assert_eq!(changed(&old, &new), vec![false, true, false]);
        // Past the end of the old bytes (a hole or the file's end) reads as zeros.
        assert_eq!(changed(&old[..b], &vec![0u8; 2 * b]), vec![true, false]);
        assert_eq!(
            changed(&old[..b], &[vec![7u8; b], vec![1u8; 2]].concat()),
            vec![false, true]
        );
    }
}
