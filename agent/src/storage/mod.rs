//! Storage: SRs of type `file` (VDIs are sparse files in a directory) and `iso` (a read-only
//! directory of `.iso` images), their VDIs and PBDs, and the io_uring engine that moves disk
//! bytes for imports, exports and copies.
//!
//! Entry points: [`custom`] for the storage messages with behaviour, [`special`] for the
//! implicit ones that touch the disk (`VDI.create`, `VDI.destroy`) or need a check
//! (`PBD.create`, `PBD.destroy`), [`vdi_path`] for the VM lifecycle, and [`transfer`] for the
//! HTTP data paths.

mod copy;
mod fsops;
pub mod io;
mod layout;
mod locks;
mod measure;
mod pbd;
mod sr;
pub mod transfer;

pub mod vdi;

use crate::api::{Call, CallCtx};
use crate::error::ApiError;
use crate::schema::class_ids;
use crate::value::Value;
use crate::Agent;
use std::path::PathBuf;
use std::sync::Arc;

pub use layout::{vdi_path, SrKind};

/// Storage messages with behaviour carried out here (the coverage document lists them).
pub const IMPLEMENTED: &[&str] = &[
    "SR.create",
    "SR.introduce",
    "SR.forget",
    "SR.destroy",
    "SR.scan",
    "SR.update",
    "SR.probe",
    "SR.get_supported_types",
    "PBD.plug",
    "PBD.unplug",
    "VDI.resize",
    "VDI.resize_online",
    "VDI.clone",
    "VDI.snapshot",
    "VDI.copy",
    "VDI.introduce",
    "VDI.forget",
    "VDI.data_destroy",
    "VDI.update",
];

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
    fn errno(&self) -> Option<i32> {
        match self {
            StorageError::Fs { source, .. } => source.raw_os_error(),
            StorageError::Io(e) => e.raw_os_error(),
            StorageError::Internal(_) => None,
        }
    }
}

/// The full message of an error and its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

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
        ApiError::SrBackendFailure {
            status: status.to_owned(),
            stdout: String::new(),
            stderr: text,
        }
    }
}

/// Runs a storage message with behaviour; `None` for messages this module does not own.
pub async fn custom(agent: &Arc<Agent>, _ctx: &CallCtx, c: &Call) -> Option<Result<Value, ApiError>> {
    let class = c.class;
    if class == class_ids::SR {
        sr::custom(agent, c).await
    } else if class == class_ids::VDI {
        vdi::custom(agent, c).await
    } else if class == class_ids::PBD {
        pbd::custom(agent, c).await
    } else {
        None
    }
}

/// Implicit storage messages that act on the disk or need a check first; `None` lets the
/// generic implementation run.
pub async fn special(agent: &Arc<Agent>, c: &Call) -> Option<Result<Value, ApiError>> {
    let class = c.class;
    if class == class_ids::VDI {
        vdi::special(agent, c).await
    } else if class == class_ids::PBD {
        pbd::special(agent, c).await
    } else {
        None
    }
}

/// Argument `i` (after the session) as a string or ref.
fn str_arg(c: &Call, i: usize) -> &str {
    c.args.get(i).and_then(Value::as_str).unwrap_or("")
}

/// Argument `i` as an int.
fn int_arg(c: &Call, i: usize) -> i64 {
    c.args.get(i).and_then(Value::as_int).unwrap_or(0)
}

/// Argument `i` as a bool.
fn bool_arg(c: &Call, i: usize) -> bool {
    c.args.get(i).and_then(Value::as_bool).unwrap_or(false)
}

/// Argument `i` as a value (maps, enums).
fn arg(c: &Call, i: usize) -> Value {
    c.args.get(i).cloned().unwrap_or(Value::None)
}

#[cfg(test)]
pub(crate) mod tests;
