//! Run-time loading of the Xen libraries.
//!
//! Handles hold an [`Arc`] of the library set they were opened with, so a
//! library's function table outlives every handle using it. The system
//! libraries are loaded once per process and cached (only on success, so
//! a library installed later is picked up by the next attempt).
//! `xen_sys::load` opens with `RTLD_NODELETE`, so even a dropped set never
//! unmaps code that libxenctrl's thread-exit destructors may still call.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use xen_sys::{XenCtrl, XenGuest, XenStore, XenToolLog};

use crate::error::Result;

/// The libraries an [`XcHandle`](crate::XcHandle) needs: libxentoollog
/// (the logger interface), libxenctrl and libxenguest (the PV builder).
pub struct CtrlLibraries {
    /// Loaded first so that its absence is reported by name; its
    /// functions are only used by tests (the logger itself is Rust).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) toollog: XenToolLog,
    pub(crate) ctrl: XenCtrl,
    pub(crate) guest: XenGuest,
}

impl std::fmt::Debug for CtrlLibraries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtrlLibraries").finish_non_exhaustive()
    }
}

/// libxenstore, as needed by an [`XsHandle`](crate::XsHandle).
pub struct StoreLibrary {
    pub(crate) store: XenStore,
}

impl std::fmt::Debug for StoreLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreLibrary").finish_non_exhaustive()
    }
}

static CTRL: Mutex<Option<Arc<CtrlLibraries>>> = Mutex::new(None);
static STORE: Mutex<Option<Arc<StoreLibrary>>> = Mutex::new(None);

/// Returns the cached value, or loads it (caching only a success).
fn cached<T>(cell: &Mutex<Option<Arc<T>>>, load: impl FnOnce() -> Result<Arc<T>>) -> Result<Arc<T>> {
    // A panic while holding this lock cannot leave the Option half-written.
    let mut slot = cell.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(libs) = slot.as_ref() {
        return Ok(Arc::clone(libs));
    }
    let libs = load()?;
    *slot = Some(Arc::clone(&libs));
    Ok(libs)
}

impl CtrlLibraries {
    /// The system's libxentoollog.so.1, libxenctrl.so.4.17 and
    /// libxenguest.so.4.17, found by the dynamic loader; loaded on first
    /// use and shared by every later caller.
    ///
    /// Fails with [`XenctrlError::LibraryMissing`](crate::XenctrlError::LibraryMissing)
    /// naming the first library that is absent.
    pub fn system() -> Result<Arc<Self>> {
        cached(&CTRL, || Self::load(None))
    }

    /// Loads the three libraries from `dir` (by their sonames) instead of
    /// the loader's search path. Not cached. Their own dependencies are
    /// still resolved by the dynamic loader as usual.
    pub fn load_from(dir: &Path) -> Result<Arc<Self>> {
        Self::load(Some(dir))
    }

    fn load(dir: Option<&Path>) -> Result<Arc<Self>> {
        // SAFETY: these sonames are the Xen 4.17 libraries (the version in
        // the soname pins the ABI of libxenctrl/libxenguest; libxentoollog
        // .so.1 has kept its ABI since Xen 4.1). Their initialisers only
        // set up library-internal state.
        let toollog = unsafe { xen_sys::load::<XenToolLog>(dir) }?;
        // SAFETY: as above.
        let ctrl = unsafe { xen_sys::load::<XenCtrl>(dir) }?;
        // SAFETY: as above.
        let guest = unsafe { xen_sys::load::<XenGuest>(dir) }?;
        Ok(Arc::new(CtrlLibraries { toollog, ctrl, guest }))
    }
}

impl StoreLibrary {
    /// The system's libxenstore.so.4, loaded on first use and shared.
    ///
    /// Fails with [`XenctrlError::LibraryMissing`](crate::XenctrlError::LibraryMissing)
    /// if it is absent.
    pub fn system() -> Result<Arc<Self>> {
        cached(&STORE, || Self::load(None))
    }

    /// Loads libxenstore.so.4 from `dir` instead. Not cached.
    pub fn load_from(dir: &Path) -> Result<Arc<Self>> {
        Self::load(Some(dir))
    }

    fn load(dir: Option<&Path>) -> Result<Arc<Self>> {
        // SAFETY: libxenstore.so.4 is Xen's xenstore client library, whose
        // ABI is fixed by its soname; its initialisers only set up
        // library-internal state.
        let store = unsafe { xen_sys::load::<XenStore>(dir) }?;
        Ok(Arc::new(StoreLibrary { store }))
    }
}
