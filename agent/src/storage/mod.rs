//! Storage: SRs of type `file` (VDIs are sparse files in a directory) and `iso` (a read-only
//! directory of `.iso` images), their VDIs and PBDs, and the io_uring engine that moves disk
//! bytes for imports, exports and copies.
//!
//! Entry points: [`behaviour`] for the behaviour table, [`vdi_path`] for the VM lifecycle,
//! and [`transfer`] for the HTTP data paths.

pub mod block_read;
pub mod cbt;
pub(crate) mod cbt_ops;
mod copy;
pub mod features;
mod fsops;
pub mod io;
mod layout;
mod locks;
mod measure;
pub mod nbd_export;
pub mod nbd_info;
mod pbd;
mod sr;
pub(crate) use sr::pbds_for_new_host;
pub mod transfer;

pub mod vdi;

use std::path::PathBuf;

pub use cbt_ops::load_at_start as load_cbt_logs;
pub use features::at_start;
pub use layout::{vdi_path, SrKind};

/// Failures of the storage layer below the API (file system, I/O engine).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file-system call failed.
    #[error("{what} {}", path.display())]
    Fs {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The I/O engine reported a failure.
    #[error("disk I/O")]
    Io(#[from] io::IoError),
    /// Something that should not happen.
    #[error("{0}")]
    Internal(String),
}

impl StorageError {
    /// The OS error number behind the failure, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            StorageError::Fs { source, .. } => source.raw_os_error(),
            StorageError::Io(e) => e.raw_os_error(),
            StorageError::Internal(_) => None,
        }
    }
}

pub use crate::error::error_chain;

/// The storage messages carried out here, and the implicit ones that touch the disk
/// (`VDI.create`, `VDI.destroy`) or need a check first (`PBD.create`, `PBD.destroy`).
pub fn behaviour() -> Vec<crate::call::Entry> {
    let mut v = sr::behaviour();
    v.extend(vdi::behaviour());
    v.extend(pbd::behaviour());
    v.extend(nbd_info::behaviour());
    v.extend(cbt_ops::behaviour());
    v
}

#[cfg(test)]
pub(crate) mod tests;
