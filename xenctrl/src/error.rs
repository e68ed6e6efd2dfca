//! The error type shared by every wrapper in this crate.

use std::fmt;

/// Result alias used throughout this crate.
pub type Result<T, E = XenctrlError> = std::result::Result<T, E>;

/// What went wrong in a call into the Xen libraries.
///
/// Every variant that concerns a library call names that call (the C
/// function, e.g. `"xc_interface_open"`), so a log line or an API error
/// can say exactly which operation failed and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XenctrlError {
    /// A C library call failed and set `errno`.
    #[error("{call} failed: {}", Errno(*errno))]
    Call {
        /// The C function that failed.
        call: &'static str,
        /// The `errno` value it left (0 if the library set none).
        errno: i32,
    },
    /// A Xen library, or one it depends on, is not installed.
    #[error("Xen library {library} is not available: {reason}")]
    LibraryMissing {
        /// Soname (or path) of the library that was looked up.
        library: String,
        /// The dynamic loader's message.
        reason: String,
    },
    /// A Xen library is installed but lacks a function these bindings need
    /// (another Xen version under the same soname).
    #[error("Xen library {library} is incompatible: {reason}")]
    LibraryIncompatible {
        /// Soname (or path) of the library.
        library: String,
        /// The dynamic loader's message, naming the missing symbol.
        reason: String,
    },
    /// An argument cannot be passed to the C call (e.g. a string holding
    /// a NUL byte, or a value out of the C type's range).
    #[error("{call}: invalid argument: {reason}")]
    InvalidArgument {
        /// The C function the argument was meant for.
        call: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A C call succeeded but returned something unusable (e.g. a
    /// xenstore value that is not UTF-8 where text was asked for).
    #[error("{call}: unexpected result: {reason}")]
    InvalidData {
        /// The C function whose result was rejected.
        call: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl XenctrlError {
    /// Builds a [`XenctrlError::Call`] from the calling thread's current
    /// `errno`. Call it immediately after the failing C call, before
    /// anything else can overwrite `errno`.
    pub(crate) fn last(call: &'static str) -> Self {
        XenctrlError::Call {
            call,
            errno: last_errno(),
        }
    }

    /// The C function this error is about, if it is about one.
    pub fn call(&self) -> Option<&'static str> {
        match self {
            XenctrlError::Call { call, .. }
            | XenctrlError::InvalidArgument { call, .. }
            | XenctrlError::InvalidData { call, .. } => Some(call),
            XenctrlError::LibraryMissing { .. } | XenctrlError::LibraryIncompatible { .. } => None,
        }
    }

    /// The `errno` of a failed call ([`XenctrlError::Call`] only).
    pub fn errno(&self) -> Option<i32> {
        match self {
            XenctrlError::Call { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// True if a Xen library could not be loaded at all, i.e. the caller
    /// should fall back to a simulator.
    pub fn is_library_missing(&self) -> bool {
        matches!(self, XenctrlError::LibraryMissing { .. })
    }
}

impl From<xen_sys::LoadError> for XenctrlError {
    fn from(e: xen_sys::LoadError) -> Self {
        match e {
            xen_sys::LoadError::Missing { library, reason } => XenctrlError::LibraryMissing { library, reason },
            xen_sys::LoadError::Symbol { library, reason } => XenctrlError::LibraryIncompatible { library, reason },
        }
    }
}

/// The calling thread's `errno`.
pub(crate) fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Displays an errno as `No such file or directory (errno 2, ENOENT)`.
struct Errno(i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("unknown error (errno not set)");
        }
        let text = std::io::Error::from_raw_os_error(self.0).to_string();
        // io::Error appends " (os error N)"; show our own suffix instead.
        let text = text.strip_suffix(&format!(" (os error {})", self.0)).unwrap_or(&text);
        match errno_name(self.0) {
            Some(name) => write!(f, "{text} (errno {}, {name})", self.0),
            None => write!(f, "{text} (errno {})", self.0),
        }
    }
}

/// Symbolic names of the errno values Xen calls commonly return.
fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENOTSUP => "EOPNOTSUPP",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EDQUOT => "EDQUOT",
        libc::EPIPE => "EPIPE",
        libc::ENOTCONN => "ENOTCONN",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_error_names_call_and_errno() {
        let e = XenctrlError::Call {
            call: "xc_interface_open",
            errno: libc::ENOENT,
        };
        assert_eq!(
            e.to_string(),
            "xc_interface_open failed: No such file or directory (errno 2, ENOENT)"
        );
        assert_eq!(e.call(), Some("xc_interface_open"));
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert!(!e.is_library_missing());
    }

    #[test]
    fn zero_errno_is_explicit() {
        let e = XenctrlError::Call {
            call: "xc_dom_parse_image",
            errno: 0,
        };
        assert_eq!(
            e.to_string(),
            "xc_dom_parse_image failed: unknown error (errno not set)"
        );
    }

    #[test]
    fn load_errors_convert() {
        let e: XenctrlError = xen_sys::LoadError::Missing {
            library: "libxenctrl.so.4.17".into(),
            reason: "not found".into(),
        }
        .into();
        assert!(e.is_library_missing());
        assert_eq!(
            e.to_string(),
            "Xen library libxenctrl.so.4.17 is not available: not found"
        );
        let e: XenctrlError = xen_sys::LoadError::Symbol {
            library: "libxenctrl.so.4.17".into(),
            reason: "undefined symbol: xc_foo".into(),
        }
        .into();
        assert!(matches!(e, XenctrlError::LibraryIncompatible { .. }));
        assert_eq!(e.call(), None);
    }
}
