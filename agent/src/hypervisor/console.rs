//! [`ConsoleStream`]: a guest's text console as a plain file descriptor.
//!
//! The stream is a single readable and writable fd (the simulator hands out
//! one end of a Unix socket pair; the Xen backend will hand out the pty
//! master xenconsoled creates, or a socket it proxies). Reading yields guest
//! output, writing sends keystrokes. Blocking callers use [`Read`]/[`Write`]
//! with [`ConsoleStream::wait_readable`] for timeouts; async callers take
//! the fd with [`ConsoleStream::into_owned_fd`] after
//! [`ConsoleStream::set_nonblocking`] and wrap it in `tokio::io::unix::AsyncFd`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// A connection to a domain's console. Dropping it disconnects; the guest
/// keeps running.
#[derive(Debug)]
pub struct ConsoleStream {
    file: File,
}

impl ConsoleStream {
    /// Wraps an fd that is readable and writable (socket, pty master).
    pub fn from_owned_fd(fd: OwnedFd) -> Self {
        ConsoleStream { file: File::from(fd) }
    }

    /// Gives up the wrapper, returning the fd.
    pub fn into_owned_fd(self) -> OwnedFd {
        OwnedFd::from(self.file)
    }

    /// A second handle on the same connection (e.g. one for a reader thread,
    /// one for a writer).
    pub fn try_clone(&self) -> io::Result<ConsoleStream> {
        Ok(ConsoleStream {
            file: self.file.try_clone()?,
        })
    }

    /// Switches the fd (and all its clones) to non-blocking mode.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let mut flags = OFlag::from_bits_truncate(flags);
        flags.set(OFlag::O_NONBLOCK, nonblocking);
        fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        Ok(())
    }

    /// Waits until there is something to read (or the peer hung up), at most
    /// `timeout`. Returns whether the stream is readable.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) if left.is_zero() => return Ok(false),
                Ok(0) => continue,
                Ok(_) => return Ok(true),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(io::Error::from(e)),
            }
        }
    }

    /// Reads whatever arrives until `needle` has been seen or `timeout`
    /// elapses; returns everything read (lossily decoded) and whether the
    /// needle was found. Stops early at end of stream. Meant for tests and
    /// diagnostics, not for the console proxy.
    pub fn read_until_contains(&mut self, needle: &str, timeout: Duration) -> io::Result<(String, bool)> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if String::from_utf8_lossy(&seen).contains(needle) {
                return Ok((String::from_utf8_lossy(&seen).into_owned(), true));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.wait_readable(left)? {
                return Ok((String::from_utf8_lossy(&seen).into_owned(), false));
            }
            match self.file.read(&mut buf) {
                Ok(0) => {
                    let text = String::from_utf8_lossy(&seen).into_owned();
                    let found = text.contains(needle);
                    return Ok((text, found));
                }
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Read for ConsoleStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Write for ConsoleStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl AsFd for ConsoleStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for ConsoleStream {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl From<ConsoleStream> for OwnedFd {
    fn from(stream: ConsoleStream) -> OwnedFd {
        stream.into_owned_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn wraps_a_socket() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut s = ConsoleStream::from_owned_fd(OwnedFd::from(a));
        assert!(!s.wait_readable(Duration::from_millis(20)).unwrap());
        b.write_all(b"hello\n").unwrap();
        let (text, found) = s.read_until_contains("hello", Duration::from_secs(2)).unwrap();
        assert!(found, "{text}");
        s.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        b.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}
