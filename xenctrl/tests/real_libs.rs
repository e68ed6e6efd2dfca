//! Tests against the real Xen libraries of the machine running them.
//!
//! On a machine with libxen-dev (the Xen libraries) installed but no Xen
//! hypervisor (no /dev/xen/privcmd, no xenstored), opening a handle loads
//! the real libraries and fails in the C call with a precise error. On a
//! machine without the libraries, opening fails with LibraryMissing
//! instead; set XENCTRL_REQUIRE_XEN_LIBS=1 to make that a test failure.
//! On a real dom0 the handles open and are exercised read-only.

// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use xenctrl::{CtrlLibraries, StoreLibrary, XcHandle, XenctrlError, XsHandle};

/// (level, target, rendered fields) of each captured event.
type Events = Arc<Mutex<Vec<(Level, String, String)>>>;

struct Capture(Events);

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={:?} ", f.name(), v));
            }
        }
        let mut text = Text(String::new());
        event.record(&mut text);
        let meta = event.metadata();
        self.0
            .lock()
            .unwrap()
            .push((*meta.level(), meta.target().to_owned(), text.0));
    }
}

fn capture<T>(f: impl FnOnce() -> T) -> (T, Vec<(Level, String, String)>) {
    let events = Events::default();
    let sub = tracing_subscriber::registry().with(Capture(Arc::clone(&events)));
    let out = tracing::subscriber::with_default(sub, f);
    let events = events.lock().unwrap().clone();
    (out, events)
}

/// True if the error is LibraryMissing and that is acceptable here.
fn libraries_absent(e: &XenctrlError) -> bool {
    if !e.is_library_missing() {
        return false;
    }
    assert!(
        std::env::var_os("XENCTRL_REQUIRE_XEN_LIBS").is_none(),
        "Xen libraries required but missing: {e}"
    );
    eprintln!("Xen libraries not installed, checking LibraryMissing only: {e}");
    true
}

#[test]
fn xc_open_without_hypervisor_names_call_and_errno() {
    let (result, events) = capture(XcHandle::open);
    match result {
        Err(e) if libraries_absent(&e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("libxentoollog.so.1") || msg.contains("libxenctrl.so.4.17"),
                "{msg}"
            );
        }
        Err(e) => {
            assert!(!Path::new("/dev/xen/privcmd").exists());
            // libxencall opens /dev/xen/privcmd (then /proc/xen/privcmd):
            // neither exists, so xc_interface_open fails with ENOENT.
            assert_eq!(
                e,
                XenctrlError::Call {
                    call: "xc_interface_open",
                    errno: libc::ENOENT
                }
            );
            assert_eq!(e.call(), Some("xc_interface_open"));
            assert_eq!(e.errno(), Some(libc::ENOENT));
            assert_eq!(
                e.to_string(),
                "xc_interface_open failed: No such file or directory (errno 2, ENOENT)"
            );
            // libxencall's own complaint went to tracing, not stderr.
            let logged = events.iter().any(|(level, target, text)| {
                *level == Level::ERROR
                    && target == "xentoollog"
                    && text.contains("privileged command interface")
                    && text.contains("context=\"xencall\"")
                    && text.contains("errno=2")
            });
            assert!(logged, "no routed libxencall error in {events:?}");
        }
        Ok(xc) => {
            // A real dom0: read-only smoke checks.
            let v = xc.version().unwrap();
            assert!(v.major >= 4, "{v}");
            let host = xc.physinfo().unwrap();
            assert!(host.nr_cpus > 0 && host.total_memory > 0);
            let dom0 = xc.domain_info(0).unwrap();
            assert_eq!(dom0.domid, 0);
            assert!(xc.list_domains().unwrap().iter().any(|d| d.domid == 0));
        }
    }
}

#[test]
fn xs_open_without_xenstored_names_call_and_errno() {
    match XsHandle::open() {
        Err(e) if libraries_absent(&e) => {
            assert!(e.to_string().contains("libxenstore.so.4"), "{e}");
        }
        Err(e) => {
            // No /var/run/xenstored/socket, /dev/xen/xenbus or /proc/xen/xenbus.
            assert_eq!(
                e,
                XenctrlError::Call {
                    call: "xs_open",
                    errno: libc::ENOENT
                }
            );
            assert_eq!(
                e.to_string(),
                "xs_open failed: No such file or directory (errno 2, ENOENT)"
            );
        }
        Ok(xs) => {
            assert_eq!(xs.get_domain_path(0).unwrap(), "/local/domain/0");
        }
    }
}

#[test]
fn missing_libraries_are_named() {
    let dir = Path::new("/nonexistent/xen-libs");
    let e = CtrlLibraries::load_from(dir).unwrap_err();
    assert!(e.is_library_missing(), "{e}");
    // libxentoollog is loaded first, so it is the one reported.
    match &e {
        XenctrlError::LibraryMissing { library, reason } => {
            assert_eq!(library, "/nonexistent/xen-libs/libxentoollog.so.1");
            assert!(reason.contains("No such file"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(e
        .to_string()
        .starts_with("Xen library /nonexistent/xen-libs/libxentoollog.so.1 is not available"));

    let e = StoreLibrary::load_from(dir).unwrap_err();
    assert!(e.is_library_missing());
    assert!(e.to_string().contains("libxenstore.so.4"), "{e}");
}

#[test]
fn corrupt_library_is_reported_missing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("libxenstore.so.4"), b"not an ELF file").unwrap();
    let e = StoreLibrary::load_from(dir.path()).unwrap_err();
    match e {
        XenctrlError::LibraryMissing { library, .. } => {
            assert!(library.ends_with("/libxenstore.so.4"), "{library}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn wrong_library_is_reported_incompatible() {
    // A real shared object under libxenstore's soname, lacking its symbols: the C library
    // this test process runs with (found where the process maps it, on any architecture).
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let libc = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libc.so"))
        })
        .unwrap_or_else(|| panic!("this process maps no libc.so:\n{maps}"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(libc, dir.path().join("libxenstore.so.4")).unwrap();
    let e = StoreLibrary::load_from(dir.path()).unwrap_err();
    match &e {
        XenctrlError::LibraryIncompatible { library, reason } => {
            assert!(library.ends_with("/libxenstore.so.4"), "{library}");
            assert!(reason.contains("xs_"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!e.is_library_missing());
}
