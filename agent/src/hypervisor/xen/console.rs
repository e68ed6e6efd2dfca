//! Guest consoles through xenconsoled.
//!
//! `build` writes the console ring's frame and event channel to
//! `/local/domain/<d>/console` with `type = xenconsoled`, `output = pty`.
//! xenconsoled (which must run in dom0) then attaches to the ring, opens a
//! pty pair and publishes the slave's path in `console/tty`. A
//! [`ConsoleStream`] is that pty slave, opened in raw mode: reads are
//! guest output, writes are keystrokes, and it reads end-of-file once
//! xenconsoled closes the master because the domain is gone.
//!
//! Limits: xenconsoled keeps no history for pty clients (its optional log
//! file is the history), and two clients of the same pty share its output
//! rather than each seeing all of it.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use xenctrl::{Transaction, XsHandle};

use super::super::{BackendError, ConsoleStream, DomId, Errno, Op};
use super::layout::{dom_path, read_opt};
use super::xen_err;

/// How long to wait for xenconsoled to publish a new domain's pty.
pub(super) const TTY_TIMEOUT: Duration = Duration::from_secs(15);

/// Waits until xenconsoled has published `console/tty`, returns its path.
pub(super) fn wait_tty(xs: &XsHandle, domid: DomId) -> Result<String, BackendError> {
    let op = Op::ConsoleStream;
    let path = format!("{}/console/tty", dom_path(domid));
    let deadline = Instant::now() + TTY_TIMEOUT;
    loop {
        match read_opt(xs, Transaction::NONE, &path).map_err(|e| xen_err(op, e))? {
            Some(tty) if !tty.trim().is_empty() => return Ok(tty.trim().to_string()),
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(BackendError::Os {
                op,
                errno: Errno::ETIMEDOUT,
                detail: format!(
                    "xenconsoled did not publish {path} within {TTY_TIMEOUT:?} \
                     (is xenconsoled running in dom0?)"
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens a pty slave for reading and writing, without making it the
/// controlling terminal, in raw mode (no echo, no line discipline).
pub(super) fn open_pty(tty: &Path) -> Result<ConsoleStream, BackendError> {
    let op = Op::ConsoleStream;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(tty)
        .map_err(|e| BackendError::io(op, tty, e))?;
    let raw = |what: &str, e: Errno| BackendError::Os {
        op,
        errno: e,
        detail: format!("{what} on {}", tty.display()),
    };
    let mut attrs = tcgetattr(&file).map_err(|e| raw("tcgetattr", e))?;
    cfmakeraw(&mut attrs);
    tcsetattr(&file, SetArg::TCSANOW, &attrs).map_err(|e| raw("tcsetattr", e))?;
    Ok(ConsoleStream::from_owned_fd(OwnedFd::from(file)))
}
