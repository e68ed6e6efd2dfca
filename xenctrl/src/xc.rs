//! [`XcHandle`]: an owned libxenctrl interface.

use std::ffi::c_int;
use std::ptr::NonNull;
use std::sync::Arc;

use xen_sys as sys;

use crate::error::{last_errno, Result, XenctrlError};
use crate::libs::CtrlLibraries;
use crate::logger::LoggerBox;
use crate::types::{DomainCreateConfig, DomainInfo, PhysInfo, ShutdownReason, TimerMode, XenVersion};

/// Domains fetched per `xc_domain_getinfolist` call by
/// [`XcHandle::list_domains`].
const GETINFO_BATCH: usize = 64;

/// An open libxenctrl interface (`xc_interface *`), closed on drop.
///
/// Opened with a logger implemented in Rust, so libxenctrl's and
/// libxenguest's messages go to `tracing` (target `xentoollog`) instead
/// of stderr. Every method returns [`XenctrlError::Call`] naming the C
/// function and carrying `errno` when the call fails.
///
/// `XcHandle` is `Send` but not `Sync`: share one between threads behind a
/// `Mutex`, or open one per thread.
pub struct XcHandle {
    xch: NonNull<sys::xc_interface>,
    libs: Arc<CtrlLibraries>,
    /// The logger `xch` uses; freed only after `xch` is closed (fields
    /// are dropped after `Drop::drop` runs).
    _logger: LoggerBox,
}

// SAFETY: an xc_interface has no thread affinity (libxenctrl allows a
// handle to be used from any thread; its last-error state is per thread),
// the logger is stateless and the library table is `Send + Sync`, so the
// handle may move between threads. It is deliberately not `Sync`.
unsafe impl Send for XcHandle {}

impl std::fmt::Debug for XcHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XcHandle")
            .field("xch", &self.xch)
            .finish_non_exhaustive()
    }
}

/// Maps a libxenctrl `int` return (negative on failure, `errno` set) to a
/// `Result`, reading `errno` before anything else can change it.
fn check(call: &'static str, rc: c_int) -> Result<c_int> {
    if rc < 0 {
        Err(XenctrlError::last(call))
    } else {
        Ok(rc)
    }
}

impl XcHandle {
    /// Opens the hypervisor interface through the system's libxenctrl.
    ///
    /// Fails with [`XenctrlError::LibraryMissing`] if the Xen libraries
    /// are not installed, or with a [`XenctrlError::Call`] for
    /// `xc_interface_open` (e.g. `ENOENT` when `/dev/xen/privcmd` does not
    /// exist because this is not a Xen dom0).
    pub fn open() -> Result<Self> {
        Self::open_with(CtrlLibraries::system()?)
    }

    /// Opens the hypervisor interface through the given libraries.
    pub fn open_with(libs: Arc<CtrlLibraries>) -> Result<Self> {
        Self::open_flags(libs, 0)
    }

    fn open_flags(libs: Arc<CtrlLibraries>, flags: u32) -> Result<Self> {
        let logger = LoggerBox::new();
        // SAFETY: `logger` points to a valid xentoollog_logger vtable. On
        // success it is moved into the returned handle, which closes the
        // interface before freeing the logger; on failure libxenctrl has
        // already dropped its reference to it.
        let raw = unsafe { libs.ctrl.xc_interface_open(logger.as_ptr(), logger.as_ptr(), flags) };
        let Some(xch) = NonNull::new(raw) else {
            return Err(XenctrlError::last("xc_interface_open"));
        };
        Ok(XcHandle {
            xch,
            libs,
            _logger: logger,
        })
    }

    /// A handle that does not talk to the hypervisor
    /// (`XC_OPENFLAG_DUMMY`). Test-only: any hypercall on it crashes, but
    /// the domain builder's file-loading steps work.
    #[cfg(test)]
    pub(crate) fn open_dummy(libs: Arc<CtrlLibraries>) -> Result<Self> {
        Self::open_flags(libs, sys::xc_open_flags::XC_OPENFLAG_DUMMY)
    }

    pub(crate) fn raw(&self) -> *mut sys::xc_interface {
        self.xch.as_ptr()
    }

    pub(crate) fn libs(&self) -> &CtrlLibraries {
        &self.libs
    }

    /// Information about domain `domid`; `ESRCH` if it does not exist.
    pub fn domain_info(&self, domid: u32) -> Result<DomainInfo> {
        let mut info = sys::xc_domaininfo_t::default();
        // SAFETY: `xch` is open; `info` is writable storage for one entry.
        let rc = unsafe { self.libs.ctrl.xc_domain_getinfolist(self.raw(), domid, 1, &mut info) };
        let n = check("xc_domain_getinfolist", rc)?;
        // getinfolist returns the first domain >= domid: check it is ours.
        if n < 1 || u32::from(info.domain) != domid {
            return Err(XenctrlError::Call {
                call: "xc_domain_getinfolist",
                errno: libc::ESRCH,
            });
        }
        Ok(DomainInfo::from_raw(&info))
    }

    /// Information about every domain, in domid order.
    pub fn list_domains(&self) -> Result<Vec<DomainInfo>> {
        let mut out = Vec::new();
        let mut buf = vec![sys::xc_domaininfo_t::default(); GETINFO_BATCH];
        let mut first = 0u32;
        loop {
            // SAFETY: `xch` is open; `buf` has room for GETINFO_BATCH
            // entries, the count passed.
            let rc = unsafe {
                self.libs
                    .ctrl
                    .xc_domain_getinfolist(self.raw(), first, GETINFO_BATCH as u32, buf.as_mut_ptr())
            };
            let n = usize::try_from(check("xc_domain_getinfolist", rc)?)
                .unwrap_or(0)
                .min(GETINFO_BATCH);
            out.extend(buf[..n].iter().map(DomainInfo::from_raw));
            match buf[..n].last() {
                Some(last) if n == GETINFO_BATCH => first = u32::from(last.domain) + 1,
                _ => return Ok(out),
            }
        }
    }

    /// Information about the host.
    pub fn physinfo(&self) -> Result<PhysInfo> {
        let mut info = sys::xc_physinfo_t::default();
        // SAFETY: `xch` is open; `info` is a writable xc_physinfo_t.
        let rc = unsafe { self.libs.ctrl.xc_physinfo(self.raw(), &mut info) };
        check("xc_physinfo", rc)?;
        Ok(PhysInfo::from_raw(&info))
    }

    /// The hypervisor's version, e.g. 4.17 with extra ".3".
    pub fn version(&self) -> Result<XenVersion> {
        // SAFETY: `xch` is open; XENVER_version takes no argument buffer.
        let rc = unsafe {
            self.libs
                .ctrl
                .xc_version(self.raw(), sys::XENVER_version as c_int, std::ptr::null_mut())
        };
        let version = check("xc_version", rc)?;
        let mut extra: sys::xen_extraversion_t = [0; 16];
        // SAFETY: `xch` is open; XENVER_extraversion writes at most
        // sizeof(xen_extraversion_t) bytes into `extra`.
        let rc = unsafe {
            self.libs
                .ctrl
                .xc_version(self.raw(), sys::XENVER_extraversion as c_int, extra.as_mut_ptr().cast())
        };
        check("xc_version", rc)?;
        Ok(XenVersion::from_raw(version as u32, &extra))
    }

    /// Creates a (paused, empty) PV or PVH domain and returns its domid.
    pub fn domain_create(&self, config: &DomainCreateConfig) -> Result<u32> {
        let mut raw = config.to_raw()?;
        // 0 asks Xen to pick a free domid.
        let mut domid = config.domid.unwrap_or(0);
        // SAFETY: `xch` is open; `domid` and `raw` are valid for reads and
        // writes for the duration of the call.
        let rc = unsafe { self.libs.ctrl.xc_domain_create(self.raw(), &mut domid, &mut raw) };
        check("xc_domain_create", rc)?;
        Ok(domid)
    }

    /// Pauses a domain.
    pub fn domain_pause(&self, domid: u32) -> Result<()> {
        // SAFETY: `xch` is open; plain integer arguments.
        let rc = unsafe { self.libs.ctrl.xc_domain_pause(self.raw(), domid) };
        check("xc_domain_pause", rc).map(drop)
    }

    /// Unpauses a domain.
    pub fn domain_unpause(&self, domid: u32) -> Result<()> {
        // SAFETY: `xch` is open; plain integer arguments.
        let rc = unsafe { self.libs.ctrl.xc_domain_unpause(self.raw(), domid) };
        check("xc_domain_unpause", rc).map(drop)
    }

    /// Shuts a domain down as if it had done so itself with `reason`.
    pub fn domain_shutdown(&self, domid: u32, reason: ShutdownReason) -> Result<()> {
        let code = c_int::try_from(reason.as_raw()).map_err(|_| XenctrlError::InvalidArgument {
            call: "xc_domain_shutdown",
            reason: format!("shutdown code {} out of range", reason.as_raw()),
        })?;
        // SAFETY: `xch` is open; plain integer arguments.
        let rc = unsafe { self.libs.ctrl.xc_domain_shutdown(self.raw(), domid, code) };
        check("xc_domain_shutdown", rc).map(drop)
    }

    /// Destroys a domain, releasing its resources.
    pub fn domain_destroy(&self, domid: u32) -> Result<()> {
        // SAFETY: `xch` is open; plain integer arguments.
        let rc = unsafe { self.libs.ctrl.xc_domain_destroy(self.raw(), domid) };
        check("xc_domain_destroy", rc).map(drop)
    }

    /// Sets the most memory, in KiB, the domain may have.
    pub fn domain_set_max_mem(&self, domid: u32, max_kib: u64) -> Result<()> {
        // SAFETY: `xch` is open; plain integer arguments.
        let rc = unsafe { self.libs.ctrl.xc_domain_setmaxmem(self.raw(), domid, max_kib) };
        check("xc_domain_setmaxmem", rc).map(drop)
    }

    /// Allocates the domain's vCPUs; `max` must equal the `max_vcpus`
    /// given at creation.
    pub fn domain_max_vcpus(&self, domid: u32, max: u32) -> Result<()> {
        // SAFETY: `xch` is open; plain integer arguments.
        let rc = unsafe { self.libs.ctrl.xc_domain_max_vcpus(self.raw(), domid, max) };
        check("xc_domain_max_vcpus", rc).map(drop)
    }

    /// Sets how a domain's time stamp counter is virtualised
    /// (`xc_domain_set_tsc_info`): 0 Xen's default (emulated when the host's
    /// TSC is not safe to expose), 1 always emulated, 2 never emulated
    /// (RDTSC/RDTSCP run natively). Elapsed time, frequency and incarnation
    /// are left for Xen to choose (0).
    pub fn domain_set_tsc_mode(&self, domid: u32, mode: u32) -> Result<()> {
        if mode > 2 {
            return Err(XenctrlError::InvalidArgument {
                call: "xc_domain_set_tsc_info",
                reason: format!("TSC mode {mode} (Xen 4.17 knows 0, 1 and 2)"),
            });
        }
        // SAFETY: `xch` is open; plain integer arguments.
        let rc = unsafe { self.libs.ctrl.xc_domain_set_tsc_info(self.raw(), domid, mode, 0, 0, 0) };
        check("xc_domain_set_tsc_info", rc).map(drop)
    }

    /// Sets a hardware-virtualised domain's timer mode (`HVM_PARAM_TIMER_MODE`, through
    /// `xc_hvm_param_set`), before it first runs.
    pub fn domain_set_timer_mode(&self, domid: u32, mode: TimerMode) -> Result<()> {
        // SAFETY: `xch` is open; plain integer arguments.
        let rc = unsafe {
            self.libs
                .ctrl
                .xc_hvm_param_set(self.raw(), domid, sys::HVM_PARAM_TIMER_MODE, mode.as_raw())
        };
        check("xc_hvm_param_set", rc).map(drop)
    }

    /// Sets the size of a hardware-virtualised domain's paging pool (the
    /// memory Xen keeps for its second-level page tables), in bytes, a
    /// multiple of the page size.
    pub fn set_paging_mempool_size(&self, domid: u32, bytes: u64) -> Result<()> {
        // SAFETY: `xch` is open; plain integer arguments.
        let rc = unsafe { self.libs.ctrl.xc_set_paging_mempool_size(self.raw(), domid, bytes) };
        check("xc_set_paging_mempool_size", rc).map(drop)
    }

    /// Sets the memory map a domain reads with `XENMEM_memory_map`: `(start,
    /// length, type)` ranges in bytes, types as in the e820 ABI (1 RAM, 2 reserved).
    pub fn domain_set_memory_map(&self, domid: u32, map: &[(u64, u64, u32)]) -> Result<()> {
        let mut entries: Vec<sys::e820entry> = map
            .iter()
            .map(|&(addr, size, type_)| sys::e820entry { addr, size, type_ })
            .collect();
        let count = u32::try_from(entries.len()).map_err(|_| XenctrlError::InvalidArgument {
            call: "xc_domain_set_memory_map",
            reason: format!("{} entries", entries.len()),
        })?;
        // SAFETY: `xch` is open; `entries` holds `count` initialised
        // entries, which the call only reads, for its duration.
        let rc = unsafe {
            self.libs
                .ctrl
                .xc_domain_set_memory_map(self.raw(), domid, entries.as_mut_ptr(), count)
        };
        check("xc_domain_set_memory_map", rc).map(drop)
    }

    /// Allocates an unbound event channel in `domid` that `remote_domid`
    /// may bind to (e.g. a guest's console or xenstore channel, with the
    /// backend domain as remote); returns the port.
    pub fn evtchn_alloc_unbound(&self, domid: u32, remote_domid: u32) -> Result<u32> {
        // SAFETY: `xch` is open; plain integer arguments.
        let rc = unsafe { self.libs.ctrl.xc_evtchn_alloc_unbound(self.raw(), domid, remote_domid) };
        check("xc_evtchn_alloc_unbound", rc).map(|port| port as u32)
    }
}

impl Drop for XcHandle {
    fn drop(&mut self) {
        // SAFETY: `xch` came from xc_interface_open and is closed exactly
        // once, here; nothing borrows the handle any more.
        let rc = unsafe { self.libs.ctrl.xc_interface_close(self.raw()) };
        if rc != 0 {
            tracing::warn!(errno = last_errno(), "xc_interface_close failed");
        }
        // `self._logger` is freed after this, once libxenctrl is done with it.
    }
}
