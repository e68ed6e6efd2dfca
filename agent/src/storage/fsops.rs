//! Blocking file-system helpers for SRs and VDIs. Async callers run them through
//! [`blocking`], on tokio's blocking pool, never on an async worker.

use super::StorageError;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Runs a blocking file-system job off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StorageError::Internal(format!("blocking job failed: {e}"))))
}

fn fs_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Fs {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates a new sparse file of `size` bytes (fails if it exists).
pub fn create_sparse(path: &Path, size: u64) -> Result<(), StorageError> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(fs_err("creating", path))?;
    f.set_len(size).map_err(fs_err("sizing", path))?;
    Ok(())
}

/// Reads up to `buf.len()` bytes at `offset` (fewer only at the end of the file).
pub fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> Result<usize, StorageError> {
    use std::os::unix::fs::FileExt;
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(StorageError::Fs {
                    what: "reading",
                    path: PathBuf::from("a VDI file"),
                    source,
                })
            }
        }
    }
    Ok(got)
}

/// Opens a VDI file for the I/O engine.
pub fn open(path: &Path, write: bool) -> Result<File, StorageError> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(fs_err("opening", path))
}

/// Opens a VDI file for reads that bypass the page cache (`O_DIRECT`: the device writes
/// straight into the engine's aligned buffers); `None` where the file system refuses.
pub fn open_direct(path: &Path) -> Option<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

/// Sets a file's size.
pub fn set_size(path: &Path, size: u64) -> Result<(), StorageError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(fs_err("opening", path))?;
    f.set_len(size).map_err(fs_err("resizing", path))
}

/// Deletes a file; a file already gone is fine.
pub fn remove(path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fs_err("deleting", path)(e)),
    }
}

/// Size and allocated bytes (`st_blocks * 512`) of a file.
pub fn sizes(path: &Path) -> Result<(u64, u64), StorageError> {
    let m = std::fs::metadata(path).map_err(fs_err("reading the size of", path))?;
    Ok((m.len(), m.blocks() * 512))
}

/// Total and free bytes of the file system holding `dir`.
pub fn fs_space(dir: &Path) -> Result<(u64, u64), StorageError> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(|e| StorageError::Fs {
        what: "statvfs",
        path: dir.to_path_buf(),
        source: std::io::Error::from(e),
    })?;
    let frsize = s.fragment_size() as u64;
    Ok((s.blocks() as u64 * frsize, s.blocks_available() as u64 * frsize))
}

/// The regular files in `dir` whose names end with `suffix`, sorted.
pub fn list(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>, StorageError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(fs_err("listing", dir))? {
        let e = e.map_err(fs_err("listing", dir))?;
        let p = e.path();
        let name_ok = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.to_ascii_lowercase().ends_with(suffix) && !n.starts_with('.'));
        if name_ok && e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()) && p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// `ioctl(FICLONE)`: makes `dst` share `src`'s extents (btrfs, xfs with reflink). Returns
/// whether it worked; `false` means "copy the bytes instead".
pub fn reflink(src: &File, dst: &File) -> bool {
    // _IOW(0x94, 9, int)
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE takes the source descriptor as its integer argument; both descriptors
    // stay open for the call; no memory is passed.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    r == 0
}

/// `copy_file_range` of `[offset, offset+len)` from `src` to the same offsets of `dst`, done
/// by the kernel (server-side, no bytes through user space). Returns `Ok(false)` when the
/// file system cannot do it, so the caller copies through the I/O engine.
pub fn copy_range(src: &File, dst: &File, offset: u64, len: u64) -> Result<bool, std::io::Error> {
    let mut done = 0u64;
    while done < len {
        let mut off_in = (offset + done) as libc::loff_t;
        let mut off_out = off_in;
        let chunk = (len - done).min(1 << 30) as usize;
        // SAFETY: both descriptors are open for the call; the offset pointers are live locals.
        let r = unsafe { libc::copy_file_range(src.as_raw_fd(), &mut off_in, dst.as_raw_fd(), &mut off_out, chunk, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS) if done == 0 => Ok(false),
                Some(libc::EINTR) => continue,
                _ => Err(e),
            };
        }
        if r == 0 {
            break;
        }
        done += r as u64;
    }
    Ok(true)
}

/// Copies `src` over `dst` (created or truncated to `src`'s size) keeping holes: a reflink
/// where possible, else `copy_file_range` (or plain reads and writes) per data segment. For
/// blocking contexts only.
pub fn copy_sparse_blocking(src: &Path, dst: &Path) -> Result<(), StorageError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let s = File::open(src).map_err(fs_err("opening", src))?;
    let size = s.metadata().map_err(fs_err("reading the size of", src))?.len();
    let d = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dst)
        .map_err(fs_err("creating", dst))?;
    d.set_len(size).map_err(fs_err("sizing", dst))?;
    if reflink(&s, &d) {
        return Ok(());
    }
    let mut pos = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while pos < size {
        let seek = |off: u64, whence: i32| -> Option<u64> {
            // SAFETY: lseek on a descriptor kept open by `s`; no memory is passed.
            let r = unsafe { libc::lseek(s.as_raw_fd(), off as libc::off_t, whence) };
            (r >= 0).then_some(r as u64)
        };
        let Some(start) = seek(pos, libc::SEEK_DATA) else {
            break;
        };
        let end = seek(start, libc::SEEK_HOLE).unwrap_or(size).min(size);
        let copied = copy_range(&s, &d, start, end - start).map_err(fs_err("copying into", dst))?;
        if !copied {
            let (mut sr, mut dw) = (&s, &d);
            sr.seek(SeekFrom::Start(start)).map_err(fs_err("seeking", src))?;
            dw.seek(SeekFrom::Start(start)).map_err(fs_err("seeking", dst))?;
            let mut left = end - start;
            while left > 0 {
                let n = (left as usize).min(buf.len());
                sr.read_exact(&mut buf[..n]).map_err(fs_err("reading", src))?;
                dw.write_all(&buf[..n]).map_err(fs_err("writing", dst))?;
                left -= n as u64;
            }
        }
        pos = end;
    }
    d.sync_data().map_err(fs_err("syncing", dst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_files_allocate_nothing_until_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.img");
        create_sparse(&p, 64 << 20).unwrap();
        let (size, alloc) = sizes(&p).unwrap();
        assert_eq!(size, 64 << 20);
        assert!(alloc < 1 << 20, "{alloc}");
        assert!(create_sparse(&p, 1).is_err());
        set_size(&p, 128 << 20).unwrap();
        assert_eq!(sizes(&p).unwrap().0, 128 << 20);
        let (total, free) = fs_space(dir.path()).unwrap();
        assert!(total >= free && total > 0);
        assert_eq!(list(dir.path(), ".img").unwrap(), vec![p.clone()]);
        remove(&p).unwrap();
        remove(&p).unwrap();
    }
}
