//! The I/O engine: one thread that owns an io_uring instance (or, where io_uring cannot be
//! used, does plain `pread`/`pwrite`), fed by a crossbeam channel and answering each request
//! through a tokio oneshot, so async tasks never block on disk.

use super::buffers::{BufferPool, IoBuf};
use std::fs::File;
use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::sync::oneshot;

/// Buffers in the engine's registered pool.
pub const POOL_BUFFERS: usize = 64;

/// A failed I/O request.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The system call failed.
    #[error("{op} at offset {offset}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// Where in the file.
        offset: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The engine thread is gone.
    #[error("the I/O engine has stopped")]
    Stopped,
}

impl IoError {
    /// The errno behind the failure, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            IoError::Os { source, .. } => source.raw_os_error(),
            IoError::Stopped => None,
        }
    }
}

/// How the engine does its I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring with the buffer pool registered (fixed buffers).
    UringFixed,
    /// io_uring with ordinary buffers (registration was refused).
    Uring,
    /// `pread`/`pwrite` on the engine thread (io_uring unavailable).
    Fallback,
}

impl EngineKind {
    /// A short name for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::UringFixed => "io_uring (registered buffers)",
            EngineKind::Uring => "io_uring",
            EngineKind::Fallback => "pread/pwrite",
        }
    }
}

/// Reply channel of one request.
pub(super) type Reply<T> = oneshot::Sender<Result<T, IoError>>;

/// Where `lseek` should look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SeekTo {
    Data,
    Hole,
}

/// One request to the engine thread.
pub(super) enum Request {
    /// Fill `buf` (up to `len` bytes) from `offset`; short only at end of file.
    Read {
        file: Arc<File>,
        offset: u64,
        len: usize,
        buf: IoBuf,
        reply: Reply<IoBuf>,
    },
    /// Write all of `buf`'s data at `offset`.
    Write {
        file: Arc<File>,
        offset: u64,
        buf: IoBuf,
        reply: Reply<IoBuf>,
    },
    /// Deallocate `[offset, offset+len)` (it reads back as zeros); the size is kept.
    PunchHole {
        file: Arc<File>,
        offset: u64,
        len: u64,
        reply: Reply<()>,
    },
    /// `fdatasync`.
    Sync { file: Arc<File>, reply: Reply<()> },
    /// `posix_fadvise(WILLNEED)`: start reading `[offset, offset+len)` into the page cache.
    Prefetch { file: Arc<File>, offset: u64, len: u64 },
    /// `lseek(SEEK_DATA | SEEK_HOLE)`; `None` when there is no more data.
    Seek {
        file: Arc<File>,
        offset: u64,
        to: SeekTo,
        reply: Reply<Option<u64>>,
    },
}

/// The answer to a request, awaited by the task that made it.
pub struct Completion<T> {
    rx: oneshot::Receiver<Result<T, IoError>>,
}

impl<T> Future for Completion<T> {
    type Output = Result<T, IoError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(IoError::Stopped)))
    }
}

/// The engine: submit requests from any thread or task; each returns a [`Completion`].
pub struct IoEngine {
    tx: Option<crossbeam_channel::Sender<Request>>,
    wake: Option<Arc<OwnedFd>>,
    pool: Arc<BufferPool>,
    kind: EngineKind,
    /// Why io_uring is not in use (`None` when it is).
    fallback_reason: Option<String>,
    /// Operations the io_uring loop has completed (reads, writes, hole punches, syncs).
    ring_completions: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Which engine to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineChoice {
    /// io_uring where the kernel allows it, else the fallback.
    Auto,
    /// Always the `pread`/`pwrite` fallback.
    Fallback,
}

impl IoEngine {
    /// The process-wide engine, started on first use. `XAPID_IO_ENGINE=fallback` forces the
    /// `pread`/`pwrite` engine.
    pub fn global() -> &'static IoEngine {
        static ENGINE: OnceLock<IoEngine> = OnceLock::new();
        ENGINE.get_or_init(|| {
            let choice = match std::env::var("XAPID_IO_ENGINE").as_deref() {
                Ok("fallback") => EngineChoice::Fallback,
                _ => EngineChoice::Auto,
            };
            IoEngine::start(choice, POOL_BUFFERS)
        })
    }

    /// Starts an engine with its own thread and a pool of `buffers` buffers.
    pub fn start(choice: EngineChoice, buffers: usize) -> IoEngine {
        let pool = match BufferPool::new(buffers) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "allocating the I/O buffers; using one buffer");
                match BufferPool::new(1) {
                    Ok(p) => p,
                    Err(_) => std::process::abort(),
                }
            }
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let ring_completions = Arc::new(AtomicU64::new(0));
        let started = match choice {
            EngineChoice::Auto => super::uring::start(rx, pool.clone(), ring_completions.clone()),
            EngineChoice::Fallback => Err((rx, "the fallback engine was asked for".to_owned())),
        };
        let (kind, wake, thread, fallback_reason) = match started {
            Ok((kind, wake, thread)) => (kind, Some(wake), Some(thread), None),
            Err((rx, why)) => {
                log_fallback_once(&why);
                let thread = std::thread::Builder::new()
                    .name("io-engine".into())
                    .spawn(move || super::fallback::run(rx))
                    .map_err(|e| tracing::error!(error = %e, "starting the I/O thread"))
                    .ok();
                (EngineKind::Fallback, None, thread, Some(why))
            }
        };
        tracing::info!(engine = kind.name(), buffers = pool.count(), "disk I/O engine started");
        IoEngine {
            tx: Some(tx),
            wake,
            pool,
            kind,
            fallback_reason,
            ring_completions,
            thread,
        }
    }

    /// How this engine does its I/O.
    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// Why the engine is not using io_uring (`None` when it is).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// How many operations (reads, writes, hole punches, syncs) the io_uring loop has
    /// completed so far; always 0 for the fallback engine. Seeks and prefetch hints are not
    /// counted: they are plain system calls on either engine.
    pub fn ring_completions(&self) -> u64 {
        self.ring_completions.load(Ordering::Relaxed)
    }

    /// A buffer from the registered pool (waits while all are in use).
    pub async fn buffer(&self) -> IoBuf {
        self.pool.acquire().await
    }

    /// A buffer from the pool if one is free now (for a caller that already holds some and
    /// must not wait while holding them).
    pub fn try_buffer(&self) -> Option<IoBuf> {
        self.pool.try_acquire()
    }

    fn send<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Completion<T> {
        let (reply, rx) = oneshot::channel();
        if let Some(tx) = &self.tx {
            // A send error drops the request and with it `reply`: the completion reports
            // `Stopped`.
            let _ = tx.send(make(reply));
            if let Some(w) = &self.wake {
                super::uring::wake(w);
            }
        }
        Completion { rx }
    }

    /// Reads up to `len` bytes at `offset` into `buf` (whose old data is discarded). The
    /// result is short only at end of file.
    pub fn read_at(&self, file: &Arc<File>, offset: u64, len: usize, buf: IoBuf) -> Completion<IoBuf> {
        let len = len.min(super::buffers::BUF_SIZE);
        self.send(|reply| Request::Read {
            file: file.clone(),
            offset,
            len,
            buf,
            reply,
        })
    }

    /// Writes all of `buf`'s data at `offset`; gives the buffer back. The blocks written are
    /// marked in the file's changed-block log when its VDI is tracked (`storage/cbt.rs`).
    pub fn write_at(&self, file: &Arc<File>, offset: u64, buf: IoBuf) -> Completion<IoBuf> {
        crate::storage::cbt::note_write(file, offset, buf.len() as u64);
        self.send(|reply| Request::Write {
            file: file.clone(),
            offset,
            buf,
            reply,
        })
    }

    /// [`IoEngine::write_at`] for a writer that records the changed blocks itself (an
    /// import that compares with what is there, `storage/transfer.rs`).
    pub fn write_at_untracked(&self, file: &Arc<File>, offset: u64, buf: IoBuf) -> Completion<IoBuf> {
        self.send(|reply| Request::Write {
            file: file.clone(),
            offset,
            buf,
            reply,
        })
    }

    /// [`IoEngine::punch_hole`] for a writer that records the changed blocks itself.
    pub fn punch_hole_untracked(&self, file: &Arc<File>, offset: u64, len: u64) -> Completion<()> {
        self.send(|reply| Request::PunchHole {
            file: file.clone(),
            offset,
            len,
            reply,
        })
    }

    /// Deallocates a range so it reads back as zeros, keeping the file size (a change the
    /// file's changed-block log records, as for writes).
    pub fn punch_hole(&self, file: &Arc<File>, offset: u64, len: u64) -> Completion<()> {
        crate::storage::cbt::note_write(file, offset, len);
        self.send(|reply| Request::PunchHole {
            file: file.clone(),
            offset,
            len,
            reply,
        })
    }

    /// Asks the kernel to start reading a range ahead of the reads that will want it (no
    /// answer: it is only a hint).
    pub fn prefetch(&self, file: &Arc<File>, offset: u64, len: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Request::Prefetch {
                file: file.clone(),
                offset,
                len,
            });
            if let Some(w) = &self.wake {
                super::uring::wake(w);
            }
        }
    }

    /// Flushes the file's data to stable storage (`fdatasync`).
    pub fn sync_data(&self, file: &Arc<File>) -> Completion<()> {
        self.send(|reply| Request::Sync {
            file: file.clone(),
            reply,
        })
    }

    /// The next data segment at or after `offset`, as `[start, end)`; `None` past the last
    /// data. On file systems without `SEEK_DATA` the whole file is one segment.
    pub async fn next_data(&self, file: &Arc<File>, offset: u64) -> Result<Option<(u64, u64)>, IoError> {
        let start = self
            .send(|reply| Request::Seek {
                file: file.clone(),
                offset,
                to: SeekTo::Data,
                reply,
            })
            .await?;
        let Some(start) = start else {
            return Ok(None);
        };
        let end = self
            .send(|reply| Request::Seek {
                file: file.clone(),
                offset: start,
                to: SeekTo::Hole,
                reply,
            })
            .await?;
        Ok(end.map(|end| (start, end)))
    }
}

impl Drop for IoEngine {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(w) = &self.wake {
            super::uring::wake(w);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn log_fallback_once(why: &str) {
    static LOGGED: std::sync::Once = std::sync::Once::new();
    LOGGED.call_once(|| {
        tracing::warn!(
            reason = why,
            "io_uring is unavailable: disk I/O uses pread/pwrite on the engine thread"
        );
    });
}

/// `lseek(SEEK_DATA/SEEK_HOLE)`, done synchronously on the engine thread (a metadata lookup).
pub(super) fn seek(file: &File, offset: u64, to: SeekTo) -> Result<Option<u64>, IoError> {
    let whence = match to {
        SeekTo::Data => libc::SEEK_DATA,
        SeekTo::Hole => libc::SEEK_HOLE,
    };
    let Ok(off) = libc::off_t::try_from(offset) else {
        return Ok(None);
    };
    // SAFETY: lseek on a file descriptor kept open by `file` for the duration of the call; it
    // touches no memory of ours.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        // No SEEK_DATA support: everything up to the end is data.
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            Ok(match to {
                SeekTo::Data if offset < len => Some(offset),
                SeekTo::Data => None,
                SeekTo::Hole => Some(len),
            })
        }
        _ => Err(IoError::Os {
            op: "lseek",
            offset,
            source: err,
        }),
    }
}

/// `posix_fadvise(WILLNEED)` on the engine thread: queues readahead, does not wait for it.
pub(super) fn prefetch(file: &File, offset: u64, len: u64) {
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: posix_fadvise on a descriptor kept open by `file`; no memory is passed.
    let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), off, l, libc::POSIX_FADV_WILLNEED) };
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)`, for the fallback engine.
pub(super) fn punch_hole(file: &File, offset: u64, len: u64) -> Result<(), IoError> {
    let os = |source| IoError::Os {
        op: "fallocate(punch hole)",
        offset,
        source,
    };
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(os(std::io::Error::from_raw_os_error(libc::EINVAL)));
    };
    // SAFETY: fallocate on a descriptor kept open by `file`; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            l,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(os(std::io::Error::last_os_error()))
    }
}
