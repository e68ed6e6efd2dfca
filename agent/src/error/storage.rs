//! Storage failures as the API reports them.

use super::{error_chain, ApiError};
use crate::storage::io::IoError;
use crate::storage::StorageError;

impl From<StorageError> for ApiError {
    /// SM-style backend failures: the status is the code the reference's storage manager
    /// uses for the condition (44: out of space, 46: VDI not available, 1: other).
    fn from(e: StorageError) -> ApiError {
        let text = error_chain(&e);
        let status = match e.errno() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => "44",
            Some(libc::ENOENT) => "46",
            _ => "1",
        };
        let text = if status == "44" {
            format!("There is insufficient space: {text}")
        } else {
            text
        };
        sr_backend_failure(status, text)
    }
}

/// `SR_BACKEND_FAILURE [status, "", stderr]`, as the storage drivers raise it.
pub fn sr_backend_failure(status: &str, stderr: impl Into<String>) -> ApiError {
    ApiError::SrBackendFailure {
        status: status.to_owned(),
        stdout: String::new(),
        stderr: stderr.into(),
    }
}

/// An I/O failure while moving a VDI's bytes: out of space is the SR's backend failure 44,
/// anything else `VDI_IO_ERROR`.
pub fn vdi_io_error(e: IoError) -> ApiError {
    if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
        return StorageError::Io(e).into();
    }
    ApiError::VdiIoError {
        message: format!("Device I/O errors: {}", error_chain(&e)),
    }
}
