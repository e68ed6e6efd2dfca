//! The disk formats of the raw-VDI paths beyond raw: `GET /export_raw_vdi?format=vhd` (with
//! `base=` a differencing VHD), `format=qcow2`, and the upload side of
//! `PUT /import_raw_vdi?format=vhd` (the body read as a [`vhd::Source`]).

use super::task_stream::{respond, Pieces};
use super::DataPathError;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use agent::backup::disk_stream::DiskExport;
use agent::backup::vhd;
use agent::backup::BackupError;
use agent::schema::class_ids;
use agent::storage::transfer::{Format, TransferTask};
use agent::value::Value;
use agent::{Agent, ApiError};
use futures_util::StreamExt;
use std::sync::Arc;

/// An upload read a few bytes at a time.
pub struct PayloadSource {
    body: web::Payload,
    cur: Bytes,
}

impl PayloadSource {
    /// Reads `body`.
    pub fn new(body: web::Payload) -> PayloadSource {
        PayloadSource {
            body,
            cur: Bytes::new(),
        }
    }

    async fn fill(&mut self) -> Result<(), BackupError> {
        while self.cur.is_empty() {
            match self.body.next().await {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => {
                    tracing::info!(error = %e, "upload ended early");
                    return Err(BackupError::PrematureEof);
                }
                None => return Err(BackupError::PrematureEof),
            }
        }
        Ok(())
    }
}

impl vhd::Source for PayloadSource {
    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        let mut done = 0;
        while done < buf.len() {
            self.fill().await?;
            let n = (buf.len() - done).min(self.cur.len());
            if let Some(dst) = buf.get_mut(done..done + n) {
                dst.copy_from_slice(&self.cur.split_to(n));
            }
            done += n;
        }
        Ok(())
    }

    async fn skip(&mut self, mut n: u64) -> Result<(), BackupError> {
        while n > 0 {
            self.fill().await?;
            let k = n.min(self.cur.len() as u64) as usize;
            let _ = self.cur.split_to(k);
            n -= k as u64;
        }
        Ok(())
    }
}

/// `PUT /import_raw_vdi?format=qcow2`: the upload spooled to a file, applied, removed.
pub(super) async fn import_qcow2(agent: &Arc<Agent>, vdi: &str, mut body: web::Payload) -> Result<u64, ApiError> {
    use tokio::io::AsyncWriteExt;
    let path = agent::backup::disk_stream::spool_path(agent)?;
    let spooled = async {
        let mut f = tokio::fs::File::create(&path)
            .await
            .map_err(|e| ApiError::internal(format!("spooling the upload: {e}")))?;
        while let Some(chunk) = body.next().await {
            let b = chunk.map_err(|_| ApiError::ImportErrorPrematureEof {})?;
            f.write_all(&b)
                .await
                .map_err(|e| ApiError::internal(format!("spooling the upload: {e}")))?;
        }
        f.flush()
            .await
            .map_err(|e| ApiError::internal(format!("spooling the upload: {e}")))
    }
    .await;
    let r = match spooled {
        Ok(()) => agent::backup::disk_stream::import_qcow2_file(agent, vdi, &path).await,
        Err(e) => Err(e),
    };
    if let Err(e) = tokio::fs::remove_file(&path).await {
        tracing::warn!(path = %path.display(), error = %e, "could not remove a spooled upload");
    }
    r
}

/// Streams a VHD or qcow2 export of `vdi`.
pub(super) async fn export(
    req: &HttpRequest,
    agent: &Arc<Agent>,
    task: TransferTask,
    vdi: &str,
    format: Format,
    base: Option<&str>,
) -> HttpResponse {
    let made = match format {
        Format::Qcow2 => DiskExport::qcow2(agent, vdi).await,
        _ => DiskExport::vhd(agent, vdi, base).await,
    };
    let source = match made {
        Ok(s) => s,
        Err(e) => {
            task.fail(&e).await;
            return DataPathError::Failed(e).response();
        }
    };
    let uuid = agent.uuid_of(class_ids::VDI, vdi).unwrap_or_default();
    let mut resp = HttpResponse::Ok();
    resp.insert_header(("task-id", task.reference().to_owned()))
        .content_type("application/octet-stream")
        .insert_header((
            "content-disposition",
            format!("attachment; filename=\"{uuid}.{}\"", format.name()),
        ))
        .no_chunking(source.file_size());
    if req.method() == actix_web::http::Method::HEAD {
        task.succeed(&Value::None).await;
        return resp.finish();
    }
    respond(resp, agent, source, task, "disk export")
}

impl Pieces for DiskExport {
    async fn next_piece(&mut self) -> Option<Result<Bytes, ApiError>> {
        DiskExport::next_piece(self).await
    }

    fn progress(&self) -> (u64, u64) {
        DiskExport::progress(self)
    }
}
