//! A simulated guest console: a bounded output ring plus any number of
//! connected clients, each on its own Unix socket pair.
//!
//! Output written by the guest goes into the ring (oldest bytes are dropped
//! once it is full) and to every connected client. A new client first
//! receives the ring's contents. Output is never written with a blocking
//! call (the simulator writes while holding its state lock): what a client's
//! socket cannot take at once waits in that client's backlog, which the
//! client's thread flushes as the socket drains. A client whose backlog
//! grows past [`MAX_BACKLOG`] is not reading and is disconnected.
//!
//! Each client has one thread that also reads its input, splits it into
//! lines and hands each line to a callback (the simulator's "shell").
//!
//! Lock order: the simulator's state lock may be held while calling into a
//! console; a console never calls out while holding its own lock.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{send, MsgFlags};
use parking_lot::Mutex;

/// How often (ms) a client thread re-checks whether the console was closed.
const CLIENT_POLL_MS: u16 = 100;
/// Output a client may have pending before it is considered dead.
const MAX_BACKLOG: usize = 256 * 1024;
/// Longest input line kept; longer input is cut.
const MAX_LINE: usize = 4096;

/// Called for each complete input line.
pub(super) type LineHandler = Box<dyn Fn(&str) + Send + 'static>;

struct Client {
    id: u64,
    stream: UnixStream,
    backlog: VecDeque<u8>,
}

impl Client {
    /// Sends as much of the backlog as the socket takes without blocking.
    /// Errors mean the client is gone.
    fn flush(&mut self) -> io::Result<()> {
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        while !self.backlog.is_empty() {
            let (front, _) = self.backlog.as_slices();
            match send(self.stream.as_raw_fd(), front, flags) {
                Ok(n) => {
                    self.backlog.drain(..n);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => break,
                Err(e) => return Err(io::Error::from(e)),
            }
        }
        if self.backlog.len() > MAX_BACKLOG {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "console client is not reading",
            ));
        }
        Ok(())
    }

    fn hang_up(&self) {
        // Best effort: the peer may already have gone.
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

struct State {
    ring: VecDeque<u8>,
    clients: Vec<Client>,
    next_client: u64,
    closed: bool,
}

/// One domain's console.
pub(super) struct SimConsole {
    capacity: usize,
    state: Mutex<State>,
}

impl SimConsole {
    /// An empty console keeping at most `capacity` bytes of output.
    pub(super) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(SimConsole {
            capacity: capacity.max(256),
            state: Mutex::new(State {
                ring: VecDeque::new(),
                clients: Vec::new(),
                next_client: 0,
                closed: false,
            }),
        })
    }

    /// A console pre-filled with `history` (e.g. restored from a suspend
    /// image).
    pub(super) fn with_history(capacity: usize, history: &[u8]) -> Arc<Self> {
        let console = SimConsole::new(capacity);
        console.write(history);
        console
    }

    /// Guest output: append to the ring and send to every client.
    pub(super) fn write(&self, bytes: &[u8]) {
        let mut st = self.state.lock();
        if st.closed {
            return;
        }
        st.ring.extend(bytes.iter().copied());
        let excess = st.ring.len().saturating_sub(self.capacity);
        if excess > 0 {
            st.ring.drain(..excess);
        }
        st.clients.retain_mut(|c| {
            c.backlog.extend(bytes.iter().copied());
            match c.flush() {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(client = c.id, error = %e, "dropping console client");
                    c.hang_up();
                    false
                }
            }
        });
    }

    /// Writes `line` followed by a newline.
    pub(super) fn write_line(&self, line: &str) {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.write(&bytes);
    }

    /// The ring's contents.
    pub(super) fn history(&self) -> Vec<u8> {
        let st = self.state.lock();
        st.ring.iter().copied().collect()
    }

    /// Number of connected clients.
    #[cfg(test)]
    pub(super) fn client_count(&self) -> usize {
        self.state.lock().clients.len()
    }

    /// The domain is gone: disconnect every client (they read end of
    /// stream) and refuse further output and connections.
    pub(super) fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        for c in st.clients.drain(..) {
            c.hang_up();
        }
    }

    /// Connects a new client: returns the client's end of a socket pair
    /// that is being sent the ring's contents, and starts a thread feeding
    /// input lines to `on_line`.
    pub(super) fn connect(self: &Arc<Self>, thread_name: String, on_line: LineHandler) -> io::Result<UnixStream> {
        let (ours, theirs) = UnixStream::pair()?;
        let reader = ours.try_clone()?;
        let id = {
            let mut st = self.state.lock();
            if st.closed {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "console closed: domain destroyed",
                ));
            }
            let mut client = Client {
                id: st.next_client,
                stream: ours,
                backlog: st.ring.clone(),
            };
            client.flush()?;
            st.next_client += 1;
            let id = client.id;
            st.clients.push(client);
            id
        };
        let console = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name(thread_name)
            .spawn(move || console.serve(id, reader, on_line));
        if let Err(e) = spawned {
            self.disconnect(id);
            return Err(e);
        }
        Ok(theirs)
    }

    fn disconnect(&self, id: u64) {
        let mut st = self.state.lock();
        st.clients.retain(|c| {
            if c.id == id {
                c.hang_up();
                false
            } else {
                true
            }
        });
    }

    /// Whether client `id` still exists and has a backlog, or `None` when it
    /// was dropped or the console closed.
    fn client_backlogged(&self, id: u64) -> Option<bool> {
        let st = self.state.lock();
        if st.closed {
            return None;
        }
        st.clients.iter().find(|c| c.id == id).map(|c| !c.backlog.is_empty())
    }

    fn flush_client(&self, id: u64) {
        let mut st = self.state.lock();
        st.clients.retain_mut(|c| {
            if c.id != id {
                return true;
            }
            match c.flush() {
                Ok(()) => true,
                Err(_) => {
                    c.hang_up();
                    false
                }
            }
        });
    }

    /// The client's thread: flushes its backlog as the socket drains and
    /// turns its input into lines.
    fn serve(&self, id: u64, mut reader: UnixStream, on_line: LineHandler) {
        let mut buf = [0u8; 1024];
        let mut line: Vec<u8> = Vec::new();
        let mut last_cr = false;
        while let Some(backlogged) = self.client_backlogged(id) {
            let mut wanted = PollFlags::POLLIN;
            if backlogged {
                wanted |= PollFlags::POLLOUT;
            }
            let revents = {
                let mut fds = [PollFd::new(reader.as_fd(), wanted)];
                match poll(&mut fds, PollTimeout::from(CLIENT_POLL_MS)) {
                    Ok(0) | Err(Errno::EINTR) => continue,
                    Ok(_) => fds[0].revents().unwrap_or(PollFlags::empty()),
                    Err(_) => break,
                }
            };
            if revents.contains(PollFlags::POLLOUT) {
                self.flush_client(id);
            }
            let readable = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
            if !revents.intersects(readable) {
                continue;
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
                Err(_) => break,
            };
            for &b in &buf[..n] {
                match b {
                    b'\n' if last_cr => last_cr = false,
                    b'\r' | b'\n' => {
                        last_cr = b == b'\r';
                        let text = String::from_utf8_lossy(&line).into_owned();
                        line.clear();
                        on_line(&text);
                    }
                    _ => {
                        last_cr = false;
                        if line.len() < MAX_LINE {
                            line.push(b);
                        }
                    }
                }
            }
        }
        self.disconnect(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::mpsc;
    use std::time::Duration;
    use std::time::Instant;

    fn read_until(s: &mut UnixStream, needle: &str) -> String {
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if String::from_utf8_lossy(&seen).contains(needle) {
                break;
            }
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(_) => continue,
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    }

    #[test]
    fn ring_is_bounded() {
        let c = SimConsole::new(256);
        for i in 0..100 {
            c.write_line(&format!("line {i}"));
        }
        let h = c.history();
        assert_eq!(h.len(), 256);
        assert!(String::from_utf8_lossy(&h).ends_with("line 99\n"));
    }

    #[test]
    fn replay_live_output_lines_and_close() {
        let c = SimConsole::new(1024);
        c.write_line("boot");
        let (tx, rx) = mpsc::channel();
        let mut s = c
            .connect(
                "t".into(),
                Box::new(move |l| {
                    let _ = tx.send(l.to_string());
                }),
            )
            .unwrap();
        assert!(read_until(&mut s, "boot\n").contains("boot"));
        c.write_line("live");
        assert!(read_until(&mut s, "live\n").contains("live"));
        s.write_all(b"one\r\ntwo\rthree\n").unwrap();
        let got: Vec<String> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        assert_eq!(got, vec!["one", "two", "three"]);
        assert_eq!(c.client_count(), 1);
        c.close();
        let mut buf = [0u8; 8];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(s.read(&mut buf).unwrap(), 0);
        assert!(c.connect("t2".into(), Box::new(|_| {})).is_err());
    }

    #[test]
    fn a_client_that_never_reads_is_dropped_without_blocking() {
        let c = SimConsole::new(1024);
        let _stuck = c.connect("t".into(), Box::new(|_| {})).unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let start = Instant::now();
        for _ in 0..64 {
            c.write(&chunk);
        }
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(c.client_count(), 0);
    }

    #[test]
    fn client_hangup_is_noticed() {
        let c = SimConsole::new(1024);
        let s = c.connect("t".into(), Box::new(|_| {})).unwrap();
        drop(s);
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.client_count() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(c.client_count(), 0);
    }
}
