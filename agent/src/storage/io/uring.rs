//! The io_uring side of the engine: a probe at start, buffer registration, and the loop that
//! keeps many requests in flight on one thread.
//!
//! The loop sleeps in `io_uring_enter` waiting for any completion. New requests wake it
//! through an eventfd that has a `POLL_ADD` armed on the same ring, so a request never waits
//! behind a slow one.

use super::buffers::{BufferPool, IoBuf};
use super::engine::{prefetch, seek, EngineKind, IoError, Reply, Request};
use io_uring::{opcode, squeue, types, IoUring};
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Submission queue entries.
const RING_ENTRIES: u32 = 256;
/// Operations in flight at once (the completion queue holds twice the ring entries).
const MAX_IN_FLIGHT: usize = 128;
/// `user_data` of the wake-up poll.
const WAKE: u64 = u64::MAX;

type Started = (EngineKind, Arc<OwnedFd>, std::thread::JoinHandle<()>);
type NotStarted = (crossbeam_channel::Receiver<Request>, String);

/// Probes io_uring and starts the engine thread; gives the receiver back when io_uring cannot
/// be used, so the caller can start the fallback. Every operation the ring completes adds one
/// to `completions`.
pub(super) fn start(
    rx: crossbeam_channel::Receiver<Request>,
    pool: Arc<BufferPool>,
    completions: Arc<AtomicU64>,
) -> Result<Started, NotStarted> {
    let ring = match probe() {
        Ok(r) => r,
        Err(e) => return Err((rx, format!("io_uring_setup or a no-op failed: {e}"))),
    };
    // SAFETY: eventfd takes no pointers; the result is checked before use.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if efd < 0 {
        let e = std::io::Error::last_os_error();
        return Err((rx, format!("eventfd: {e}")));
    }
    // SAFETY: `efd` is a fresh descriptor owned by nothing else; OwnedFd takes it over at once.
    let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
    let iovecs = pool.iovecs();
    // SAFETY: every iovec points into the pool's single allocation, which stays alive as long
    // as the `Arc<BufferPool>` moved into the engine thread below, i.e. longer than the ring
    // (dropped at the end of that thread). The kernel only touches a region while an
    // operation that owns its `IoBuf` is in flight.
    let fixed = match unsafe { ring.submitter().register_buffers(&iovecs) } {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "io_uring refused to register the buffers; using ordinary reads and writes");
            false
        }
    };
    let kind = if fixed {
        EngineKind::UringFixed
    } else {
        EngineKind::Uring
    };
    let wake2 = wake.clone();
    let thread = std::thread::Builder::new().name("io-uring".into()).spawn(move || {
        let mut lp = Loop {
            ring,
            rx,
            wake: wake2,
            fixed,
            ops: Vec::new(),
            free: Vec::new(),
            backlog: VecDeque::new(),
            in_flight: 0,
            wake_armed: false,
            closing: false,
            completions,
        };
        lp.run();
        // The pool must outlive the ring that registered it.
        drop(lp);
        drop(pool);
    });
    match thread {
        Ok(t) => Ok((kind, wake, t)),
        Err(e) => {
            tracing::error!(error = %e, "starting the io_uring thread");
            // The receiver went down with the closure that could not be spawned; the fallback
            // thread would fail to spawn the same way, so the engine reports every request as
            // stopped.
            let (_tx, rx) = crossbeam_channel::unbounded();
            Err((rx, format!("spawning the engine thread: {e}")))
        }
    }
}

/// Sets up a ring and checks that a no-op completes (seccomp or a disabled io_uring fails
/// here).
fn probe() -> std::io::Result<IoUring> {
    let mut ring = IoUring::new(RING_ENTRIES)?;
    let nop = opcode::Nop::new().build().user_data(7);
    // SAFETY: a no-op carries no buffers.
    unsafe { ring.submission().push(&nop) }.map_err(|_| std::io::Error::other("submission queue full"))?;
    ring.submit_and_wait(1)?;
    let res = ring.completion().next().map(|c| c.result());
    match res {
        Some(r) if r >= 0 => Ok(ring),
        Some(r) => Err(std::io::Error::from_raw_os_error(-r)),
        None => Err(std::io::Error::other("no completion for a no-op")),
    }
}

/// Wakes the engine thread (after a request was queued or the engine is closing).
pub(super) fn wake(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local to an eventfd we own.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

fn drain_eventfd(fd: &OwnedFd) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live local from a non-blocking eventfd we own.
    let _ = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
}

enum Kind {
    Read(Reply<IoBuf>),
    Write(Reply<IoBuf>),
    Punch(Reply<()>, u64),
    Sync(Reply<()>),
}

/// One operation in flight; owns its file and buffer until the kernel is done with them.
struct Op {
    kind: Kind,
    file: Arc<File>,
    offset: u64,
    want: usize,
    done: usize,
    buf: Option<IoBuf>,
}

struct Loop {
    ring: IoUring,
    rx: crossbeam_channel::Receiver<Request>,
    wake: Arc<OwnedFd>,
    fixed: bool,
    ops: Vec<Option<Op>>,
    free: Vec<usize>,
    backlog: VecDeque<Request>,
    in_flight: usize,
    wake_armed: bool,
    closing: bool,
    /// Operations completed (see [`super::IoEngine::ring_completions`]).
    completions: Arc<AtomicU64>,
}

impl Loop {
    fn run(&mut self) {
        loop {
            if !self.wake_armed && !self.closing {
                let poll = opcode::PollAdd::new(types::Fd(self.wake.as_raw_fd()), libc::POLLIN as u32)
                    .build()
                    .user_data(WAKE);
                self.push(&poll);
                self.wake_armed = true;
            }
            loop {
                match self.rx.try_recv() {
                    Ok(r) => self.backlog.push_back(r),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        self.closing = true;
                        break;
                    }
                }
            }
            while self.in_flight < MAX_IN_FLIGHT {
                let Some(r) = self.backlog.pop_front() else {
                    break;
                };
                self.begin(r);
            }
            if self.closing && self.in_flight == 0 && self.backlog.is_empty() {
                return;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) || e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    tracing::error!(error = %e, "io_uring_enter failed; failing what is in flight");
                    self.fail_all(&e);
                    return;
                }
            }
            let done: Vec<(u64, i32)> = self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
            for (ud, res) in done {
                if ud == WAKE {
                    drain_eventfd(&self.wake);
                    self.wake_armed = false;
                } else {
                    self.complete(ud as usize, res);
                }
            }
        }
    }

    /// Pushes an entry, submitting first when the queue is full.
    fn push(&mut self, e: &squeue::Entry) {
        loop {
            // SAFETY: every entry built here refers to memory owned by an `Op` stored in
            // `self.ops` (buffers, files) or to the eventfd owned by `self.wake`; all outlive
            // the operation, because an `Op` is removed only when its completion arrives.
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                return;
            }
            if let Err(err) = self.ring.submit() {
                tracing::warn!(error = %err, "io_uring submit while the queue was full");
            }
        }
    }

    fn begin(&mut self, r: Request) {
        let op = match r {
            Request::Seek {
                file,
                offset,
                to,
                reply,
            } => {
                let _ = reply.send(seek(&file, offset, to));
                return;
            }
            Request::Prefetch { file, offset, len } => {
                prefetch(&file, offset, len);
                return;
            }
            Request::Read {
                file,
                offset,
                len,
                buf,
                reply,
            } => Op {
                kind: Kind::Read(reply),
                file,
                offset,
                want: len,
                done: 0,
                buf: Some(buf),
            },
            Request::Write {
                file,
                offset,
                buf,
                reply,
            } => Op {
                kind: Kind::Write(reply),
                file,
                offset,
                want: buf.len(),
                done: 0,
                buf: Some(buf),
            },
            Request::PunchHole {
                file,
                offset,
                len,
                reply,
            } => Op {
                kind: Kind::Punch(reply, len),
                file,
                offset,
                want: 0,
                done: 0,
                buf: None,
            },
            Request::Sync { file, reply } => Op {
                kind: Kind::Sync(reply),
                file,
                offset: 0,
                want: 0,
                done: 0,
                buf: None,
            },
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.ops[s] = Some(op);
                s
            }
            None => {
                self.ops.push(Some(op));
                self.ops.len() - 1
            }
        };
        self.in_flight += 1;
        self.submit_op(slot);
    }

    /// Queues the (rest of the) operation in `slot`.
    fn submit_op(&mut self, slot: usize) {
        let fixed = self.fixed;
        let Some(op) = self.ops.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let fd = types::Fd(op.file.as_raw_fd());
        let off = op.offset + op.done as u64;
        let left = (op.want - op.done) as u32;
        let entry = match &op.kind {
            Kind::Read(_) | Kind::Write(_) => {
                let Some(buf) = op.buf.as_mut() else {
                    return;
                };
                let idx = buf.index();
                // SAFETY: `done <= want <= BUF_SIZE`, so the pointer stays in this buffer.
                let ptr = unsafe { buf.as_mut_ptr().add(op.done) };
                match (&op.kind, fixed) {
                    (Kind::Read(_), true) => opcode::ReadFixed::new(fd, ptr, left, idx).offset(off).build(),
                    (Kind::Read(_), false) => opcode::Read::new(fd, ptr, left).offset(off).build(),
                    (_, true) => opcode::WriteFixed::new(fd, ptr, left, idx).offset(off).build(),
                    (_, false) => opcode::Write::new(fd, ptr, left).offset(off).build(),
                }
            }
            Kind::Punch(_, len) => opcode::Fallocate::new(fd, *len)
                .offset(op.offset)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            Kind::Sync(_) => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(),
        };
        let entry = entry.user_data(slot as u64);
        self.push(&entry);
    }

    fn complete(&mut self, slot: usize, res: i32) {
        let partial = {
            let Some(op) = self.ops.get_mut(slot).and_then(Option::as_mut) else {
                return;
            };
            match op.kind {
                Kind::Read(_) if res > 0 => {
                    op.done += res as usize;
                    op.done < op.want
                }
                Kind::Write(_) if res > 0 => {
                    op.done += res as usize;
                    op.done < op.want
                }
                _ => false,
            }
        };
        if partial {
            self.submit_op(slot);
            return;
        }
        let Some(mut op) = self.ops.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.completions.fetch_add(1, Ordering::Relaxed);
        self.free.push(slot);
        self.in_flight -= 1;
        let at = op.offset + op.done as u64;
        let err = |op: &'static str, code: i32| IoError::Os {
            op,
            offset: at,
            source: std::io::Error::from_raw_os_error(code),
        };
        match op.kind {
            Kind::Read(reply) => {
                let r = if res < 0 {
                    Err(err("read", -res))
                } else {
                    // res == 0 is end of file: the buffer holds what was read.
                    let mut buf = op.buf.take();
                    if let Some(b) = buf.as_mut() {
                        b.set_len(op.done);
                    }
                    buf.ok_or(IoError::Stopped)
                };
                let _ = reply.send(r);
            }
            Kind::Write(reply) => {
                let r = if res < 0 {
                    Err(err("write", -res))
                } else if op.done < op.want {
                    Err(err("write", libc::EIO))
                } else {
                    op.buf.take().ok_or(IoError::Stopped)
                };
                let _ = reply.send(r);
            }
            Kind::Punch(reply, _) => {
                let _ = reply.send(if res < 0 {
                    Err(err("fallocate(punch hole)", -res))
                } else {
                    Ok(())
                });
            }
            Kind::Sync(reply) => {
                let _ = reply.send(if res < 0 { Err(err("fdatasync", -res)) } else { Ok(()) });
            }
        }
    }

    /// After a fatal ring error: waits for the kernel to finish with every buffer, then
    /// answers every request with the error.
    fn fail_all(&mut self, e: &std::io::Error) {
        let code = e.raw_os_error().unwrap_or(libc::EIO);
        // Cancel-and-wait is not possible once io_uring_enter fails; keep the operations
        // (and so their buffers) alive by leaking them rather than letting the kernel write
        // into freed memory.
        for op in self.ops.drain(..).flatten() {
            let failure = IoError::Os {
                op: "io_uring_enter",
                offset: op.offset,
                source: std::io::Error::from_raw_os_error(code),
            };
            match op.kind {
                Kind::Read(r) | Kind::Write(r) => {
                    let _ = r.send(Err(failure));
                }
                Kind::Punch(r, _) | Kind::Sync(r) => {
                    let _ = r.send(Err(failure));
                }
            }
            std::mem::forget(op.buf);
            std::mem::forget(op.file);
        }
        for r in self.backlog.drain(..) {
            fail_request(r, code);
        }
        while let Ok(r) = self.rx.try_recv() {
            fail_request(r, code);
        }
    }
}

fn fail_request(r: Request, code: i32) {
    let e = || IoError::Os {
        op: "io_uring_enter",
        offset: 0,
        source: std::io::Error::from_raw_os_error(code),
    };
    match r {
        Request::Read { reply, .. } | Request::Write { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Request::PunchHole { reply, .. } | Request::Sync { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Request::Seek { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Request::Prefetch { .. } => {}
    }
}
