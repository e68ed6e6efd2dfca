//! Safe owning wrappers over the Xen 4.17 toolstack libraries.
//!
//! * [`XcHandle`]: libxenctrl (domains, host info, version, event
//!   channels) and libxenguest's PV domain builder ([`XcHandle::build_pv`]).
//!   Its messages are routed into `tracing` by a xentoollog logger written
//!   in Rust.
//! * [`XsHandle`]: libxenstore (nodes, permissions, watches, transactions,
//!   domain introduction).
//!
//! The libraries are loaded at run time (see [`CtrlLibraries`] and
//! [`StoreLibrary`]); where they are absent, opening a handle fails with
//! [`XenctrlError::LibraryMissing`] naming the library, which callers use
//! to fall back to a simulator. Every other failure is a
//! [`XenctrlError::Call`] naming the C function and its `errno`.
//!
//! ```no_run
//! # fn main() -> Result<(), xenctrl::XenctrlError> {
//! let xc = xenctrl::XcHandle::open()?;
//! for dom in xc.list_domains()? {
//!     println!("{} {} KiB running={}", dom.domid, dom.memory_kib, dom.flags.running);
//! }
//! # Ok(()) }
//! ```

pub mod acpi;
mod dombuild;
mod error;
mod libs;
mod logger;
mod saverestore;
mod types;
mod xc;
mod xs;

#[cfg(test)]
mod test_support;

pub use dombuild::{pvh_memory_layout, pvh_paging_pool_bytes, PvBuildConfig, PvBuildResult};
pub use error::{Result, XenctrlError};
pub use libs::{CtrlLibraries, StoreLibrary};
pub use logger::tracing_level;
pub use saverestore::RestoreResult;
pub use types::{
    CreateFlags, DomainCreateConfig, DomainFlags, DomainInfo, GuestType, PhysInfo, ShutdownReason, TimerMode,
    XenVersion, PAGE_SIZE,
};
pub use xc::XcHandle;
pub use xs::{Transaction, WatchEvent, XsHandle, XsPermission};
