//! Random-access reads of a VDI through the I/O engine, under the VDI's shared lock: for the
//! disk formats that send only some of a disk's blocks (VHD, qcow2) and must know which
//! before they send any.

use super::io::{IoEngine, BUF_SIZE};
use super::layout::{vdi_file, vdi_obj};
use super::locks;
use crate::error::{vdi_io_error, ApiError};
use crate::schema::fields;
use std::fs::File;
use std::sync::Arc;
use tokio::sync::OwnedRwLockReadGuard;

/// A VDI open for reading at any offset.
pub struct BlockReader {
    file: Arc<File>,
    size: u64,
    _lock: OwnedRwLockReadGuard<()>,
}

impl BlockReader {
    /// Opens a VDI for reading.
    pub async fn open(agent: &Arc<crate::Agent>, vdi_ref: &str) -> Result<BlockReader, ApiError> {
        let lock = locks::read(vdi_ref).await;
        let vdi = vdi_obj(agent, vdi_ref)?;
        let (path, _, _) = vdi_file(agent, &vdi)?;
        let size = vdi.get(fields::VDI::virtual_size).as_int().unwrap_or(0).max(0) as u64;
        let file = super::fsops::blocking(move || super::fsops::open(&path, false))
            .await
            .map(Arc::new)
            .map_err(ApiError::from)?;
        Ok(BlockReader {
            file,
            size,
            _lock: lock,
        })
    }

    /// The VDI's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The ranges holding data (the file system's allocated extents) within the VDI.
    pub async fn data_ranges(&self) -> Result<Vec<(u64, u64)>, ApiError> {
        let engine = IoEngine::global();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < self.size {
            match engine.next_data(&self.file, pos).await.map_err(vdi_io_error)? {
                Some((s, e)) if s < self.size => {
                    let e = e.min(self.size);
                    out.push((s, e));
                    pos = e.max(s + 1);
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// Reads `out.len()` bytes at `at` (bytes past the file's end read as zeros).
    pub async fn read_into(&self, at: u64, out: &mut [u8]) -> Result<(), ApiError> {
        let engine = IoEngine::global();
        let mut done = 0usize;
        while done < out.len() {
            let n = (out.len() - done).min(BUF_SIZE);
            let buf = engine.buffer().await;
            let buf = engine
                .read_at(&self.file, at + done as u64, n, buf)
                .await
                .map_err(vdi_io_error)?;
            let got = buf.len().min(n);
            if let Some(dst) = out.get_mut(done..done + got) {
                dst.copy_from_slice(buf.as_slice().get(..got).unwrap_or(&[]));
            }
            if got < n {
                if let Some(rest) = out.get_mut(done + got..done + n) {
                    rest.fill(0);
                }
            }
            done += n;
        }
        Ok(())
    }
}
