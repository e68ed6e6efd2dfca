//! The HTTP data paths a session reaches beside its calls: a VM exported to an XVA file and
//! imported from one (`/export`, `/import`), a disk's bytes out and in (`/export_raw_vdi`,
//! `/import_raw_vdi`). Bytes stream between the server and any `AsyncRead`/`AsyncWrite` (a
//! file), never the whole archive in memory.

use crate::transport::StreamingBody;
use crate::{Error, SRRef, Session, VDIRef, VMRef};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Bytes, Frame};
use std::path::Path;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The pieces an upload is read in.
const CHUNK: usize = 1 << 20;

/// The format of a disk's bytes on `/export_raw_vdi` and `/import_raw_vdi`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskFormat {
    /// Every byte of the disk.
    #[default]
    Raw,
    /// A dynamic VHD (the blocks that hold data).
    Vhd,
    /// qcow2.
    Qcow2,
}

impl DiskFormat {
    fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Vhd => "vhd",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

fn io_error(e: std::io::Error) -> Error {
    Error::Http(Box::new(e))
}

impl Session {
    /// `GET path_and_query` (a data path such as `/export?ref=…`), with this session added;
    /// the response body written to `to` as it arrives. Returns the bytes written.
    pub async fn download<W: AsyncWrite + Unpin>(&self, path_and_query: &str, to: &mut W) -> Result<u64, Error> {
        let path = self.path_with_session(path_and_query);
        let empty: StreamingBody = Empty::new().map_err(|never| match never {}).boxed_unsync();
        let resp = self
            .client()
            .transport()
            .stream(hyper::Method::GET, &path, empty, None)
            .await?;
        let mut body = resp.into_body();
        let mut written = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::Http(Box::new(e)))?;
            if let Ok(data) = frame.into_data() {
                to.write_all(&data).await.map_err(io_error)?;
                written += data.len() as u64;
            }
        }
        to.flush().await.map_err(io_error)?;
        Ok(written)
    }

    /// `PUT path_and_query` (a data path such as `/import?sr_id=…`), with this session added,
    /// its body the `len` bytes read from `from`. Returns the response body as text.
    pub async fn upload<R: AsyncRead + Send + Unpin + 'static>(
        &self,
        path_and_query: &str,
        from: R,
        len: u64,
    ) -> Result<String, Error> {
        let path = self.path_with_session(path_and_query);
        let chunks = futures_util::stream::unfold(Some(from), |state| async move {
            let mut from = state?;
            let mut buf = vec![0u8; CHUNK];
            match from.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Frame::data(Bytes::from(buf))), Some(from)))
                }
                Err(e) => Some((Err(e), None)),
            }
        });
        let body: StreamingBody = BodyExt::boxed_unsync(StreamBody::new(chunks.boxed()));
        let resp = self
            .client()
            .transport()
            .stream(hyper::Method::PUT, &path, body, Some(len))
            .await?;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Http(Box::new(e)))?
            .to_bytes();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Exports a halted VM, its disks included, as an XVA archive written to the file `to`
    /// (`/export`, as `xe vm-export` does). Returns the archive's size.
    pub async fn export_vm(&self, vm: &VMRef, to: &Path) -> Result<u64, Error> {
        let mut file = tokio::fs::File::create(to).await.map_err(io_error)?;
        self.download(&format!("/export?ref={vm}"), &mut file).await
    }

    /// Imports the XVA archive in the file `from` (`/import`, as `xe vm-import` does), its
    /// disks into `sr` (the pool's default SR when `None`), as a task whose result names the
    /// new VMs.
    pub async fn import_vm(&self, from: &Path, sr: Option<&SRRef>) -> Result<Vec<VMRef>, Error> {
        let file = tokio::fs::File::open(from).await.map_err(io_error)?;
        let len = file.metadata().await.map_err(io_error)?.len();
        let task = self.task().create("xapi-sdk import", "").await?;
        let mut path = format!("/import?task_id={task}");
        if let Some(sr) = sr {
            path.push_str(&format!("&sr_id={sr}"));
        }
        let sent = self.upload(&path, file, len).await;
        let done = crate::AsyncTask::<Vec<VMRef>>::new(task.clone()).wait(self).await;
        let _ = self.task().destroy(&task).await;
        sent?;
        done
    }

    /// A disk's bytes in `format` written to the file `to` (`/export_raw_vdi`, as `xe
    /// vdi-export` does). Returns the bytes written.
    pub async fn export_raw_vdi(&self, vdi: &VDIRef, format: DiskFormat, to: &Path) -> Result<u64, Error> {
        let mut file = tokio::fs::File::create(to).await.map_err(io_error)?;
        self.download(
            &format!("/export_raw_vdi?vdi={vdi}&format={}", format.name()),
            &mut file,
        )
        .await
    }

    /// The file `from`, in `format`, written into a disk (`/import_raw_vdi`, as `xe
    /// vdi-import` does).
    pub async fn import_raw_vdi(&self, vdi: &VDIRef, format: DiskFormat, from: &Path) -> Result<(), Error> {
        let file = tokio::fs::File::open(from).await.map_err(io_error)?;
        let len = file.metadata().await.map_err(io_error)?.len();
        self.upload(
            &format!("/import_raw_vdi?vdi={vdi}&format={}", format.name()),
            file,
            len,
        )
        .await
        .map(drop)
    }

    /// `path_and_query` with `session_id=` this session.
    fn path_with_session(&self, path_and_query: &str) -> String {
        let sep = if path_and_query.contains('?') { '&' } else { '?' };
        format!("{path_and_query}{sep}session_id={}", self.reference())
    }
}
