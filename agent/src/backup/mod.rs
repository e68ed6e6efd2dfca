//! Backups and moving VMs: XVA archives (`/export`, `/import`, `/export_metadata`,
//! `/import_metadata`, `VM.import`), and the VHD and qcow2 disk streams of `/export_raw_vdi`
//! and `/import_raw_vdi`. Transport-agnostic: the HTTP layer feeds body chunks in and drains
//! byte chunks out. Disk bytes move through the storage layer's [`crate::storage::transfer`]
//! (the I/O engine, the VDI locks), never around it.
//!
//! Files: `ova_xml` (the archive's record file), `metadata` (which records an export holds and
//! how they are rewritten), `restore` (records made from an archive), `xva_write` and
//! `xva_read` (the tar stream out and in), `xva_import` (an import from start to end), `vhd`
//! and `qcow2` (the disk formats), `disk_stream` (their exports and imports through the engine).

pub mod disk_stream;
pub mod disk_tar;
pub mod metadata;
pub mod ova_xml;
pub mod qcow2;
pub mod restore;
pub mod vhd;
pub mod xmldb;
pub mod xmldb_format;
pub mod xva_import;
pub mod xva_read;
pub mod xva_write;

use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::schema::class_ids;
use crate::value::Value;

/// Failures of the backup layer, before they become the reference's errors.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The archive or image is malformed (`IMPORT_ERROR [msg]`).
    #[error("{0}")]
    Archive(String),
    /// The upload ended before the archive did (`IMPORT_ERROR_PREMATURE_EOF`).
    #[error("premature end of file")]
    PrematureEof,
    /// Reading the upload failed.
    #[error("reading the upload: {0}")]
    Read(#[source] std::io::Error),
    /// A chunk's checksum did not match (`IMPORT_ERROR [msg]`, as the reference).
    #[error("Block {name} checksum failed: original = {expected}; recomputed = {actual}")]
    Checksum {
        /// The chunk's name in the archive.
        name: String,
        /// The checksum file's text.
        expected: String,
        /// What the chunk hashes to.
        actual: String,
    },
    /// An API-level failure (a VDI could not be made, the task was cancelled, …).
    #[error("{0}")]
    Api(ApiError),
}

impl From<ApiError> for BackupError {
    fn from(e: ApiError) -> Self {
        BackupError::Api(e)
    }
}

impl BackupError {
    /// From an I/O error of the reading side: an early end is a premature EOF.
    pub fn from_io(e: std::io::Error) -> BackupError {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => BackupError::PrematureEof,
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Other => {
                BackupError::Archive(e.to_string())
            }
            _ => BackupError::Read(e),
        }
    }

    /// The XenAPI error.
    pub fn api_error(&self) -> ApiError {
        match self {
            BackupError::Archive(m) => ApiError::ImportError { msg: m.clone() },
            BackupError::PrematureEof => ApiError::ImportErrorPrematureEof {},
            BackupError::Read(e) => ApiError::ImportError { msg: e.to_string() },
            BackupError::Checksum { .. } => ApiError::ImportError { msg: self.to_string() },
            BackupError::Api(e) => e.clone(),
        }
    }
}

impl From<BackupError> for ApiError {
    fn from(e: BackupError) -> Self {
        e.api_error()
    }
}

/// Whether a task was cancelled (or destroyed) while its transfer ran.
pub fn cancelled(agent: &crate::Agent, task: &str) -> bool {
    agent.store.get(class_ids::task, task).is_none_or(|t| {
        t.get(crate::schema::fields::task::status) != &crate::schema::enums::TaskStatusType::pending.value()
    })
}

/// The messages carried out here: `VM.import`.
pub fn behaviour() -> Vec<Entry> {
    vec![entry!(class_ids::VM, "import", |agent, ctx, c| {
        let url = c.str_arg(0).to_owned();
        let sr = c.str_arg(1).to_owned();
        let refs =
            xva_import::import_from_url(&agent, &ctx, c.session_ref(), &url, &sr, c.bool_arg(2), c.bool_arg(3)).await?;
        Ok(Value::set(refs.into_iter().map(Value::reference).collect()))
    })]
}
