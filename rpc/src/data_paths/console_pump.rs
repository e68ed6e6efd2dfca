//! One thread per console connection owns the console's descriptor (a pty slave on Xen, a
//! socket in the simulator). It waits with `poll(2)`, level-triggered, for guest output, for
//! room to write keystrokes, or for an eventfd that says keystrokes are queued; guest output
//! goes to the HTTP side through a bounded channel, so a slow client holds the guest back
//! instead of losing bytes.
//!
//! Why a thread and not an edge-triggered reactor registration: on the harness's Xen a console
//! connection read through the reactor sometimes stopped delivering while the pty had output
//! (docs/hypervisor.md). A level-triggered wait asks the kernel afresh each time.
//!
//! When the console reads end of file or EIO (the other end closed), the thread asks its
//! `reopen` for the console again: on Xen, xenconsoled can replace a domain's pty under a
//! running guest (seen right after a resume: the connection ended at once while the guest
//! went on printing), and a reader should not lose the guest for it. `reopen` answers `None`
//! once the domain no longer runs, and the console ends. The thread also ends on any other
//! error (sent to the reader first), or when the HTTP side has dropped its receiver; it checks
//! for that before every read, so a connection that has gone does not take output meant for
//! the next one. It also ends when its [`Seat`] is taken over: two threads reading one pty
//! would each get part of its bytes.

use actix_web::web::Bytes;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Chunks of guest output waiting for the client, at most.
const QUEUED_CHUNKS: usize = 16;
/// Largest read from the console.
const CHUNK: usize = 16 * 1024;
/// How often the thread looks whether the HTTP side is still there while the console is quiet.
const IDLE_CHECK_MS: u16 = 250;

/// Guest output for the HTTP side; `None` from `recv` once the console has ended.
pub(super) type Screen = mpsc::Receiver<std::io::Result<Bytes>>;

/// The keyboard side of a console: queues bytes for the thread to write.
#[derive(Clone)]
pub(super) struct Keys {
    queue: Sender<Bytes>,
    wake: Arc<EventFd>,
}

impl Keys {
    /// Queues `bytes` to be typed in; false once the console is gone.
    pub(super) fn type_in(&self, bytes: Bytes) -> bool {
        if self.queue.send(bytes).is_err() {
            return false;
        }
        self.wake.write(1).is_ok()
    }
}

/// A console thread's place: another connection can take it over (the thread ends at once),
/// and it says when the thread has ended.
#[derive(Clone)]
pub(super) struct Seat {
    taken: Arc<AtomicBool>,
    ended: Arc<AtomicBool>,
    wake: Arc<EventFd>,
}

impl Seat {
    /// Ends the thread: it reads nothing more.
    pub(super) fn take_over(&self) {
        self.taken.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
    }

    /// Whether the thread has ended.
    pub(super) fn ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }
}

/// Marks the seat's thread ended when the thread's loop returns, however it returns.
struct EndsSeat(Arc<AtomicBool>);

impl Drop for EndsSeat {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Opens the console again after its end (on the pump's thread, which may block); `None`: the
/// console has ended for good.
pub(super) type Reopen = Box<dyn FnMut() -> Option<File> + Send>;

/// Starts the thread that owns `console` (already non-blocking).
pub(super) fn start(console: File, name: String, reopen: Option<Reopen>) -> std::io::Result<(Screen, Keys, Seat)> {
    let wake = Arc::new(EventFd::from_value_and_flags(
        0,
        EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
    )?);
    let (out_tx, out_rx) = mpsc::channel(QUEUED_CHUNKS);
    let (key_tx, key_rx) = crossbeam_channel::unbounded();
    let seat = Seat {
        taken: Arc::new(AtomicBool::new(false)),
        ended: Arc::new(AtomicBool::new(false)),
        wake: wake.clone(),
    };
    let (thread_wake, taken, ends) = (wake.clone(), seat.taken.clone(), EndsSeat(seat.ended.clone()));
    std::thread::Builder::new().name(name).spawn(move || {
        let _ends = ends;
        run(console, reopen, &thread_wake, &key_rx, &out_tx, &taken);
    })?;
    Ok((out_rx, Keys { queue: key_tx, wake }, seat))
}

/// The thread's loop: see the module comment.
fn run(
    mut console: File,
    mut reopen: Option<Reopen>,
    wake: &EventFd,
    keys: &Receiver<Bytes>,
    out: &mpsc::Sender<std::io::Result<Bytes>>,
    taken: &AtomicBool,
) {
    let mut typed: Vec<u8> = Vec::new();
    let mut keyboard_open = true;
    let gone = || out.is_closed() || taken.load(Ordering::SeqCst);
    loop {
        if gone() {
            if taken.load(Ordering::SeqCst) {
                tracing::info!(
                    console = std::thread::current().name().unwrap_or(""),
                    "console: a newer connection took it over; this one ends"
                );
            }
            return;
        }
        while keyboard_open {
            match keys.try_recv() {
                Ok(b) => typed.extend_from_slice(&b),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => keyboard_open = false,
            }
        }
        let mut wanted = PollFlags::POLLIN;
        if !typed.is_empty() {
            wanted |= PollFlags::POLLOUT;
        }
        let (console_ready, woken) = {
            let mut fds = [
                PollFd::new(console.as_fd(), wanted),
                PollFd::new(wake.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::from(IDLE_CHECK_MS)) {
                Ok(_) => (fds[0].revents().unwrap_or(PollFlags::empty()), fds[1].revents()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(console = std::thread::current().name().unwrap_or(""), error = %e, "console: waiting on it failed; the connection ends");
                    let _ = out.blocking_send(Err(e.into()));
                    return;
                }
            }
        };
        if woken.is_some_and(|r| r.contains(PollFlags::POLLIN)) {
            // Resets the counter; the queued bytes are taken at the top of the loop.
            let _ = wake.read();
        }
        if console_ready.contains(PollFlags::POLLOUT) && !typed.is_empty() {
            match console.write(&typed) {
                Ok(n) => {
                    typed.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // The console is going away: what it still has to say is read below.
                Err(_) => typed.clear(),
            }
        }
        let readable = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
        if console_ready.intersects(readable) && !gone() {
            let mut buf = vec![0u8; CHUNK];
            let ended = match console.read(&mut buf) {
                Ok(0) => true,
                Ok(n) => {
                    buf.truncate(n);
                    if out.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                    false
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => false,
                // A pty whose other end closed (xenconsoled) reads EIO: the end of this pty,
                // not a failure.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => true,
                Err(e) => {
                    tracing::warn!(console = std::thread::current().name().unwrap_or(""), error = %e, "console: reading it failed; the connection ends");
                    let _ = out.blocking_send(Err(e));
                    return;
                }
            };
            if ended {
                match reopen.as_mut().and_then(|r| r()) {
                    Some(again) => console = again,
                    None => {
                        tracing::info!(
                            console = std::thread::current().name().unwrap_or(""),
                            "console: it ended (end of file or EIO, not opened again)"
                        );
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::pty::openpty;
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    use std::time::Duration;

    /// A raw pty pair: (master, the slave opened non-blocking as a console is).
    fn pty() -> (File, File) {
        let p = openpty(None, None).unwrap();
        let slave = File::from(p.slave);
        let mut attrs = tcgetattr(&slave).unwrap();
        cfmakeraw(&mut attrs);
        tcsetattr(&slave, SetArg::TCSANOW, &attrs).unwrap();
        nonblocking(&slave);
        (File::from(p.master), slave)
    }

    fn nonblocking(f: &File) {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        use std::os::fd::AsRawFd;
        let flags = OFlag::from_bits_truncate(fcntl(f.as_raw_fd(), FcntlArg::F_GETFL).unwrap());
        fcntl(f.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).unwrap();
    }

    fn read_until(screen: &mut Screen, needle: &str) -> String {
        let mut seen = String::new();
        while !seen.contains(needle) {
            match screen.blocking_recv() {
                Some(Ok(b)) => seen.push_str(&String::from_utf8_lossy(&b)),
                other => panic!("console ended before {needle:?} ({other:?}); had {seen:?}"),
            }
        }
        seen
    }

    #[test]
    fn guest_output_in_keys_out_and_end_when_the_other_side_closes() {
        let (mut master, slave) = pty();
        let (mut screen, keys, _seat) = start(slave, "console-test".into(), None).unwrap();
        // Output written long after the thread started waiting still arrives (the wait is
        // asked again each time, not armed once).
        for i in 0..5 {
            std::thread::sleep(Duration::from_millis(300));
            master.write_all(format!("line {i}\n").as_bytes()).unwrap();
            read_until(&mut screen, &format!("line {i}"));
        }
        assert!(keys.type_in(Bytes::from_static(b"typed")));
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < 5 {
            let n = master.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"typed");
        drop(master);
        // The pty's other end is gone: the slave reads EIO, the console ends without an error.
        assert!(screen.blocking_recv().is_none());
        assert!(
            !keys.type_in(Bytes::from_static(b"late")),
            "keys accepted after the end"
        );
    }

    #[test]
    fn a_dropped_reader_leaves_later_output_for_the_next_one() {
        let (mut master, slave) = pty();
        let second = slave.try_clone().unwrap();
        let (screen, _keys, _seat) = start(slave, "console-test-1".into(), None).unwrap();
        drop(screen);
        // The first thread sees its reader gone within its idle check, before this output.
        std::thread::sleep(Duration::from_millis(u64::from(IDLE_CHECK_MS) * 3));
        master.write_all(b"for the second reader\n").unwrap();
        let (mut screen2, _keys2, _seat2) = start(second, "console-test-2".into(), None).unwrap();
        let seen = read_until(&mut screen2, "for the second reader");
        assert!(seen.starts_with("for the second reader"), "{seen:?}");
    }

    #[test]
    fn a_console_whose_pty_is_replaced_under_a_running_guest_goes_on() {
        let (mut master, slave) = pty();
        let (mut master2, slave2) = pty();
        let mut spare = Some(slave2);
        let reopen: Reopen = Box::new(move || spare.take());
        let (mut screen, keys, _seat) = start(slave, "console-test-reopen".into(), Some(reopen)).unwrap();
        master.write_all(b"before\n").unwrap();
        read_until(&mut screen, "before");
        // The first pty's other end goes (xenconsoled replacing it): the reader is not told;
        // the thread opens the console again and what the new pty says arrives.
        drop(master);
        std::thread::sleep(Duration::from_millis(100));
        master2.write_all(b"after\n").unwrap();
        read_until(&mut screen, "after");
        assert!(keys.type_in(Bytes::from_static(b"k")));
        let mut buf = [0u8; 8];
        assert_eq!(master2.read(&mut buf).unwrap(), 1);
        // Once the console cannot be opened again, it ends.
        drop(master2);
        assert!(screen.blocking_recv().is_none());
    }

    #[test]
    fn a_console_taken_over_ends_and_leaves_every_byte_to_the_newer_reader() {
        let (mut master, slave) = pty();
        let second = slave.try_clone().unwrap();
        let (mut first, _keys, seat) = start(slave, "console-test-old".into(), None).unwrap();
        master.write_all(b"to the first\n").unwrap();
        read_until(&mut first, "to the first");
        // The first connection stays open (its reader still holds the screen), as a client
        // that opened a second connection without closing the first.
        seat.take_over();
        let (mut newer, _keys2, _seat2) = start(second, "console-test-new".into(), None).unwrap();
        // The old thread ends at once: its screen ends without another byte.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !seat.ended() {
            assert!(std::time::Instant::now() < deadline, "the old reader still reads");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(matches!(
            first.try_recv(),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)
        ));
        let text: String = (0..200).map(|i| format!("line {i:03} ")).collect();
        master.write_all(text.as_bytes()).unwrap();
        let seen = read_until(&mut newer, "line 199");
        assert_eq!(seen.trim_end(), text.trim_end(), "bytes went elsewhere");
    }
}
