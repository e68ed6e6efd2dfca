//! A xentoollog logger, implemented in Rust, that routes libxenctrl's and
//! libxenguest's messages into `tracing` instead of stderr.
//!
//! libxentoollog's logger is a C vtable (`xentoollog_logger`) of three
//! callbacks: `vmessage` (a printf format plus a `va_list`), `progress`
//! and `destroy`. [`LoggerBox`] owns one heap-allocated vtable whose
//! callbacks are the `extern "C"` functions below; its address is passed
//! to `xc_interface_open` as both the error and the domain-builder logger
//! and stays valid until after `xc_interface_close`.
//!
//! `vmessage` formats the message with the C library's `vsnprintf` (Rust
//! cannot expand a `va_list` itself) and emits a `tracing` event with
//! target `xentoollog` at the matching level; see [`tracing_level`].

use std::borrow::Cow;
use std::ffi::{c_char, c_int, c_ulong, CStr};
use std::ptr::NonNull;

use tracing::Level;
use xen_sys::{__va_list_tag, xentoollog_level, xentoollog_logger};

/// The heap object handed to C: only the vtable, which must come first
/// so that a pointer to it is a valid `xentoollog_logger *`.
#[repr(C)]
struct TracingLogger {
    vtable: xentoollog_logger,
}

/// Owns a [`TracingLogger`] allocation whose address is given to C.
///
/// The allocation is only ever accessed through the raw pointer (never
/// through a Rust reference after creation) and freed in `Drop`; the owner
/// must drop it only after C can no longer call it.
pub(crate) struct LoggerBox(NonNull<TracingLogger>);

// SAFETY: the logger is immutable after creation and its callbacks keep
// no state, so it may be used from, and freed on, any thread.
unsafe impl Send for LoggerBox {}

impl LoggerBox {
    /// Allocates a logger whose callbacks route into `tracing`.
    pub(crate) fn new() -> Self {
        let logger = Box::new(TracingLogger {
            vtable: xentoollog_logger {
                vmessage: Some(vmessage),
                progress: Some(progress),
                destroy: Some(destroy),
            },
        });
        LoggerBox(NonNull::from(Box::leak(logger)))
    }

    /// The `xentoollog_logger *` to pass to C.
    pub(crate) fn as_ptr(&self) -> *mut xentoollog_logger {
        // `TracingLogger` is repr(C) with the vtable as its first field.
        self.0.as_ptr().cast()
    }
}

impl Drop for LoggerBox {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::leak` in `new` and is freed
        // only here, once; the owner guarantees C no longer uses it.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// Maps a xentoollog level to the `tracing` level used for it.
///
/// xentoollog has more levels than `tracing`; the original is kept in the
/// event's `xtl_level` field.
pub fn tracing_level(level: xentoollog_level::Type) -> Level {
    use xentoollog_level::*;
    match level {
        XTL_CRITICAL | XTL_ERROR => Level::ERROR,
        XTL_WARN => Level::WARN,
        XTL_NOTICE | XTL_INFO | XTL_PROGRESS => Level::INFO,
        XTL_DETAIL | XTL_VERBOSE => Level::DEBUG,
        // XTL_DEBUG, XTL_NONE and anything unknown.
        _ => Level::TRACE,
    }
}

/// The lower-case name of a xentoollog level.
fn level_name(level: xentoollog_level::Type) -> &'static str {
    use xentoollog_level::*;
    match level {
        XTL_DEBUG => "debug",
        XTL_VERBOSE => "verbose",
        XTL_DETAIL => "detail",
        XTL_PROGRESS => "progress",
        XTL_INFO => "info",
        XTL_NOTICE => "notice",
        XTL_WARN => "warn",
        XTL_ERROR => "error",
        XTL_CRITICAL => "critical",
        _ => "none",
    }
}

macro_rules! xtl_event {
    ($level:expr, $xtl:expr, $context:expr, $errno:expr, $msg:expr) => {
        tracing::event!(
            target: "xentoollog",
            $level,
            xtl_level = $xtl,
            context = $context,
            errno = $errno,
            "{}",
            $msg
        )
    };
}

/// Emits one xentoollog message as a `tracing` event.
fn emit(level: xentoollog_level::Type, errnoval: c_int, context: &str, msg: &str) {
    // Like libxentoollog's own stdio logger, append the errno text.
    let msg: Cow<'_, str> = if errnoval > 0 {
        let text = std::io::Error::from_raw_os_error(errnoval);
        Cow::Owned(format!("{msg}: {text}"))
    } else {
        Cow::Borrowed(msg)
    };
    let xtl = level_name(level);
    match tracing_level(level) {
        Level::ERROR => xtl_event!(Level::ERROR, xtl, context, errnoval, msg),
        Level::WARN => xtl_event!(Level::WARN, xtl, context, errnoval, msg),
        Level::INFO => xtl_event!(Level::INFO, xtl, context, errnoval, msg),
        Level::DEBUG => xtl_event!(Level::DEBUG, xtl, context, errnoval, msg),
        _ => xtl_event!(Level::TRACE, xtl, context, errnoval, msg),
    }
}

/// Reads a C string that may be NULL.
///
/// # Safety
///
/// `s` is NULL or points to a NUL-terminated string valid for the call.
unsafe fn c_str<'a>(s: *const c_char) -> Cow<'a, str> {
    if s.is_null() {
        Cow::Borrowed("")
    } else {
        // SAFETY: non-NULL and NUL-terminated per this function's contract.
        unsafe { CStr::from_ptr(s) }.to_string_lossy()
    }
}

/// Formats a printf `format` with the arguments in `al`.
///
/// # Safety
///
/// `format` is a NUL-terminated printf format and `al` points to an
/// unconsumed x86_64 `va_list` holding arguments matching it, both valid
/// for the duration of the call.
unsafe fn format_va(format: *const c_char, al: *mut __va_list_tag) -> String {
    let mut buf = [0u8; 512];
    // SAFETY: on x86_64 a `va_list` is one `__va_list_tag` and `va_copy`
    // is exactly a copy of it; formatting from a copy leaves `*al`
    // unconsumed for the second attempt below. `al` is valid per contract.
    let mut ap = unsafe { *al };
    // SAFETY: `buf` is writable for `buf.len()` bytes; `format`/`ap` are
    // a matching format and argument list per this function's contract.
    let n = unsafe { xen_sys::vsnprintf(buf.as_mut_ptr().cast(), buf.len() as c_ulong, format, &mut ap) };
    let Ok(n) = usize::try_from(n) else {
        // SAFETY: `format` is a NUL-terminated string per contract.
        return format!("(unformattable message) {}", unsafe { c_str(format) });
    };
    if n < buf.len() {
        return String::from_utf8_lossy(&buf[..n]).into_owned();
    }
    // Truncated: vsnprintf told us the full length; format again.
    let mut big = vec![0u8; n + 1];
    // SAFETY: as above; `*al` was not consumed by the first attempt.
    let mut ap = unsafe { *al };
    // SAFETY: `big` is writable for `big.len()` bytes; arguments as above.
    let m = unsafe { xen_sys::vsnprintf(big.as_mut_ptr().cast(), big.len() as c_ulong, format, &mut ap) };
    let len = usize::try_from(m).unwrap_or(0).min(n);
    big.truncate(len);
    String::from_utf8_lossy(&big).into_owned()
}

/// `xentoollog_logger.vmessage`: format and emit one message.
///
/// # Safety
///
/// Called by libxentoollog with `context` NULL or a C string, `format` a
/// printf format and `al` the matching `va_list`.
unsafe extern "C" fn vmessage(
    _logger: *mut xentoollog_logger,
    level: xentoollog_level::Type,
    errnoval: c_int,
    context: *const c_char,
    format: *const c_char,
    al: *mut __va_list_tag,
) {
    let msg = if format.is_null() || al.is_null() {
        String::new()
    } else {
        // SAFETY: libxentoollog passes a printf format and its va_list.
        unsafe { format_va(format, al) }
    };
    // SAFETY: `context` is NULL or a C string, per xentoollog.h.
    let context = unsafe { c_str(context) };
    emit(level, errnoval, &context, &msg);
}

/// `xentoollog_logger.progress`: report progress of a long operation.
///
/// # Safety
///
/// Called by libxentoollog with `context`/`doing_what` NULL or C strings.
unsafe extern "C" fn progress(
    _logger: *mut xentoollog_logger,
    context: *const c_char,
    doing_what: *const c_char,
    percent: c_int,
    done: c_ulong,
    total: c_ulong,
) {
    // SAFETY: NULL or C strings, per xentoollog.h.
    let (context, doing_what) = unsafe { (c_str(context), c_str(doing_what)) };
    tracing::debug!(
        target: "xentoollog",
        xtl_level = "progress",
        context = %context,
        percent,
        done,
        total,
        "{doing_what}"
    );
}

/// `xentoollog_logger.destroy`: nothing to do, [`LoggerBox`] owns the
/// memory. libxc never destroys a logger its caller supplied; this makes
/// a stray `xtl_logger_destroy` harmless.
///
/// # Safety
///
/// None required: the pointer is not used.
unsafe extern "C" fn destroy(_logger: *mut xentoollog_logger) {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::capture;
    use crate::{CtrlLibraries, XenctrlError};
    use std::ffi::CString;
    use std::io::Write as _;
    use xentoollog_level::*;

    /// The Xen libraries did not load (`e`): with `XENCTRL_REQUIRE_XEN_LIBS` set (scripts/test.sh
    /// sets it; docs/testing.md, "Skips") that fails the test; otherwise the test says
    /// `SKIPPED` (on the process's stderr, past the test harness's output capture) and the
    /// caller returns.
    #[track_caller]
    fn skip_without_libraries(e: &XenctrlError) {
        assert!(e.is_library_missing(), "{e}");
        assert!(
            std::env::var_os("XENCTRL_REQUIRE_XEN_LIBS").is_none(),
            "Xen libraries required but missing: {e}"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: the Xen libraries are not installed: {e} (set XENCTRL_REQUIRE_XEN_LIBS=1 to make this a failure)"
        );
    }

    #[test]
    fn level_mapping() {
        assert_eq!(tracing_level(XTL_CRITICAL), Level::ERROR);
        assert_eq!(tracing_level(XTL_ERROR), Level::ERROR);
        assert_eq!(tracing_level(XTL_WARN), Level::WARN);
        assert_eq!(tracing_level(XTL_NOTICE), Level::INFO);
        assert_eq!(tracing_level(XTL_INFO), Level::INFO);
        assert_eq!(tracing_level(XTL_PROGRESS), Level::INFO);
        assert_eq!(tracing_level(XTL_DETAIL), Level::DEBUG);
        assert_eq!(tracing_level(XTL_VERBOSE), Level::DEBUG);
        assert_eq!(tracing_level(XTL_DEBUG), Level::TRACE);
        assert_eq!(tracing_level(XTL_NONE), Level::TRACE);
        assert_eq!(tracing_level(1000), Level::TRACE);
    }

    #[test]
    fn emit_appends_errno_text() {
        let events = capture(|| {
            emit(XTL_ERROR, libc::ENOENT, "xc", "open failed");
            emit(XTL_DETAIL, -1, "xc", "plain");
        });
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].level, Level::ERROR);
        assert_eq!(events[0].target, "xentoollog");
        assert_eq!(events[0].message, "open failed: No such file or directory (os error 2)");
        assert_eq!(events[0].field("context"), Some("xc"));
        assert_eq!(events[0].field("errno"), Some("2"));
        assert_eq!(events[0].field("xtl_level"), Some("error"));
        assert_eq!(events[1].level, Level::DEBUG);
        assert_eq!(events[1].message, "plain");
    }

    /// Drives our vtable through the real libxentoollog `xtl_log`, which
    /// builds a genuine C `va_list` and calls `vmessage` with it.
    #[test]
    fn real_xtl_log_reaches_tracing() {
        let libs = match CtrlLibraries::system() {
            Ok(libs) => libs,
            Err(e) => {
                skip_without_libraries(&e);
                return;
            }
        };
        let logger = LoggerBox::new();
        let ctx = CString::new("xc").unwrap();
        let fmt = CString::new("domain %u: %s (%d%%) %.1f").unwrap();
        let word = CString::new("hello").unwrap();
        let long_fmt = CString::new("%s").unwrap();
        let long = CString::new("x".repeat(2000)).unwrap();
        let events = capture(|| {
            // SAFETY: valid logger, C strings and matching variadic args.
            unsafe {
                (libs.toollog.xtl_log)(
                    logger.as_ptr(),
                    XTL_WARN,
                    libc::EPERM,
                    ctx.as_ptr(),
                    fmt.as_ptr(),
                    7u32,
                    word.as_ptr(),
                    42i32,
                    2.5f64,
                );
                (libs.toollog.xtl_log)(
                    logger.as_ptr(),
                    XTL_INFO,
                    -1,
                    std::ptr::null(),
                    long_fmt.as_ptr(),
                    long.as_ptr(),
                );
            }
        });
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].level, Level::WARN);
        assert_eq!(
            events[0].message,
            "domain 7: hello (42%) 2.5: Operation not permitted (os error 1)"
        );
        assert_eq!(events[0].field("context"), Some("xc"));
        assert_eq!(events[1].level, Level::INFO);
        assert_eq!(events[1].message, "x".repeat(2000));
        assert_eq!(events[1].field("context"), Some(""));
    }
}
