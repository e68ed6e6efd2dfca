//! Saving a domain's memory and CPU state to a stream and restoring it into a
//! new domain: libxenguest's `xc_domain_save` / `xc_domain_restore` (the
//! migration stream v2 format), and `xc_domain_resume` to let a suspended
//! guest run on when a save fails.

use std::ffi::{c_int, c_uint, c_ulong, c_void};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};

use xen_sys as sys;

use crate::error::{Result, XenctrlError};
use crate::xc::XcHandle;

/// Where a restored guest's xenstore and console rings are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreResult {
    /// Frame of the xenstore ring (a guest frame for PVH).
    pub store_mfn: u64,
    /// Frame of the console ring.
    pub console_mfn: u64,
}

/// The toolstack's side of a save, reached from libxenguest's callbacks through `data`.
struct SaveHooks<'a> {
    suspend: &'a mut dyn FnMut() -> bool,
    logdirty: &'a mut dyn FnMut(bool) -> bool,
}

/// The `suspend` callback: `data` is a `&mut SaveHooks`.
unsafe extern "C" fn suspend_trampoline(data: *mut c_void) -> c_int {
    // SAFETY: `domain_save` passes a pointer to a live `SaveHooks` that nothing else uses
    // while libxenguest runs this callback (on the saving thread).
    let hooks = unsafe { &mut *data.cast::<SaveHooks>() };
    // A panic must not unwind into C: it counts as a failed suspend.
    match catch_unwind(AssertUnwindSafe(|| (hooks.suspend)())) {
        Ok(true) => 1,
        Ok(false) | Err(_) => 0,
    }
}

/// The `switch_qemu_logdirty` callback, which libxenguest calls for every HVM save (to have
/// the device model report the guest pages it writes): `data` is a `&mut SaveHooks`.
unsafe extern "C" fn switch_qemu_logdirty(_domid: u32, enable: c_uint, data: *mut c_void) -> c_int {
    // SAFETY: as for `suspend_trampoline`.
    let hooks = unsafe { &mut *data.cast::<SaveHooks>() };
    match catch_unwind(AssertUnwindSafe(|| (hooks.logdirty)(enable != 0))) {
        Ok(true) => 0,
        Ok(false) | Err(_) => -1,
    }
}

/// The `static_data_done` callback: a stream from an older Xen that lacks
/// the CPUID/MSR policy would need the toolstack to supply one; this
/// toolstack saves its streams with the policy, so a missing one fails the
/// restore.
unsafe extern "C" fn static_data_done(missing: c_uint, _data: *mut c_void) -> c_int {
    if missing != 0 {
        tracing::error!(
            missing,
            "xc_domain_restore: the stream lacks static data (CPUID/MSR policy)"
        );
        return -1;
    }
    0
}

/// The `restore_results` callback: nothing to do, `xc_domain_restore`
/// returns the same frames.
unsafe extern "C" fn restore_results(_store: sys::xen_pfn_t, _console: sys::xen_pfn_t, _data: *mut c_void) {}

impl XcHandle {
    /// Writes domain `domid`'s state to `fd`. Not `live`, the memory is
    /// copied once, after `suspend`; `live` (`XCFLAGS_LIVE`), libxenguest
    /// copies it while the guest runs, in rounds of the pages it dirtied
    /// (tracked by Xen's log-dirty mode), then calls `suspend` for the last
    /// round. `suspend` must ask the guest to suspend and return `true` once
    /// Xen reports it shut down with reason `suspend`, or `false` to give
    /// up. For an HVM domain libxenguest also calls `logdirty(enable)` to
    /// switch the device model's tracking of the guest pages it writes on
    /// and off (`true`: done). The domain is left suspended.
    ///
    /// The hooks run on this thread, inside `xc_domain_save`: they must not
    /// use this handle.
    pub fn domain_save(
        &self,
        domid: u32,
        fd: BorrowedFd<'_>,
        live: bool,
        suspend: &mut dyn FnMut() -> bool,
        logdirty: &mut dyn FnMut(bool) -> bool,
    ) -> Result<()> {
        let flags = if live { sys::XCFLAGS_LIVE } else { 0 };
        let mut hooks = SaveHooks { suspend, logdirty };
        let mut callbacks = sys::save_callbacks {
            suspend: Some(suspend_trampoline),
            switch_qemu_logdirty: Some(switch_qemu_logdirty),
            data: std::ptr::from_mut(&mut hooks).cast(),
            ..Default::default()
        };
        // SAFETY: `xch` is open; `fd` stays open for the call; `callbacks`
        // and the hooks it points to outlive the call, which invokes the
        // callbacks only on this thread.
        let rc = unsafe {
            self.libs().guest.xc_domain_save(
                self.raw(),
                fd.as_raw_fd(),
                domid,
                flags,
                &mut callbacks,
                sys::xc_stream_type_t::XC_STREAM_PLAIN,
                -1,
            )
        };
        if rc != 0 {
            return Err(XenctrlError::last("xc_domain_save"));
        }
        Ok(())
    }

    /// Reads a stream written by [`XcHandle::domain_save`] from `fd` into
    /// domain `domid` (created, with its vCPUs and memory limit, of the same
    /// guest type, empty), giving it the xenstore and console event channels
    /// `store_evtchn` and `console_evtchn` (backends in dom0). The domain
    /// stays paused.
    pub fn domain_restore(
        &self,
        domid: u32,
        fd: BorrowedFd<'_>,
        store_evtchn: u32,
        console_evtchn: u32,
    ) -> Result<RestoreResult> {
        let mut store: c_ulong = 0;
        let mut console: c_ulong = 0;
        let mut callbacks = sys::restore_callbacks {
            static_data_done: Some(static_data_done),
            restore_results: Some(restore_results),
            ..Default::default()
        };
        // SAFETY: `xch` is open; `fd` stays open for the call; the out
        // pointers and `callbacks` are valid for its duration.
        let rc = unsafe {
            self.libs().guest.xc_domain_restore(
                self.raw(),
                fd.as_raw_fd(),
                domid,
                store_evtchn,
                &mut store,
                0,
                console_evtchn,
                &mut console,
                0,
                sys::xc_stream_type_t::XC_STREAM_PLAIN,
                &mut callbacks,
                -1,
            )
        };
        if rc != 0 {
            return Err(XenctrlError::last("xc_domain_restore"));
        }
        Ok(RestoreResult {
            store_mfn: store,
            console_mfn: console,
        })
    }

    /// Lets a domain that suspended for a save run on (`fast`: the guest
    /// sees its suspend call cancelled, which Linux supports).
    pub fn domain_resume(&self, domid: u32) -> Result<()> {
        // SAFETY: `xch` is open; plain integer arguments.
        let rc = unsafe { self.libs().guest.xc_domain_resume(self.raw(), domid, 1) };
        if rc != 0 {
            return Err(XenctrlError::last("xc_domain_resume"));
        }
        Ok(())
    }
}
