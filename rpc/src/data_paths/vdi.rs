//! `PUT /import_raw_vdi?vdi=<ref|uuid>&format=raw` and `GET /export_raw_vdi?vdi=...`.
//! Without `vdi`, an import may name `sr_id` (or `sr_uuid`) and send a Content-Length: a VDI
//! of that size is created for it, as the reference does.

use super::disk_format::PayloadSource;
use super::task_stream::{respond, Pieces};
use super::{authorize, content_length, param, Auth, DataPathError};
use actix_web::{web, HttpRequest, HttpResponse};
use agent::schema::class_ids;
use agent::storage::transfer::{ExportSource, Format, ImportSink, TransferTask};
use agent::value::Value;
use agent::{Agent, ApiError, CallCtx};
use futures_util::StreamExt;
use std::sync::Arc;

/// Resolves a `vdi` parameter given as a ref or a uuid.
fn vdi_of(agent: &Agent, v: &str) -> Result<String, DataPathError> {
    agent
        .resolve(class_ids::VDI, v)
        .ok_or_else(|| DataPathError::NotFound(ApiError::handle_invalid("VDI", v)))
}

/// The `format` parameter, less the formats this path cannot do (`supported`).
fn format_of(req: &HttpRequest, supported: &[Format]) -> Result<Format, DataPathError> {
    match Format::parse(param(req, "format").as_deref()) {
        Ok(f) if supported.contains(&f) => Ok(f),
        Ok(other) => Err(DataPathError::NotImplemented(other.name().to_owned())),
        Err(unknown) => Err(DataPathError::BadRequest(ApiError::internal(format!(
            "Unknown format {unknown}"
        )))),
    }
}

/// Fails the caller's task, if it named one (for failures before the transfer began).
async fn fail_named_task(agent: &Agent, req: &HttpRequest, e: &DataPathError) {
    if let Some(t) = param(req, "task_id") {
        agent::storage::transfer::fail_task(agent, &t, &e.api_error()).await;
    }
}

/// `PUT /import_raw_vdi`.
pub(super) async fn import(req: HttpRequest, body: web::Payload, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    let agent = agent.get_ref();
    let auth = match authorize(agent, &req, "put_import_raw_vdi").await {
        Ok(a) => a,
        Err(e) => {
            fail_named_task(agent, &req, &e).await;
            return e.response();
        }
    };
    let r = import_as(agent, &req, &auth, body).await;
    auth.finish(agent).await;
    match r {
        Ok(resp) => resp,
        Err(e) => e.response(),
    }
}

async fn target_vdi(agent: &Arc<Agent>, req: &HttpRequest, auth: &Auth) -> Result<String, DataPathError> {
    if let Some(v) = param(req, "vdi") {
        return vdi_of(agent, &v);
    }
    let sr = match (param(req, "sr_id"), param(req, "sr_uuid")) {
        (Some(sr), _) => sr,
        (None, Some(u)) => agent.resolve(class_ids::SR, &u).ok_or_else(|| {
            DataPathError::NotFound(ApiError::UuidInvalid {
                r#type: "SR".into(),
                uuid: u,
            })
        })?,
        (None, None) => {
            return Err(DataPathError::BadRequest(ApiError::ImportError {
                msg: "name the VDI (vdi=) or the SR to create it in (sr_id=)".into(),
            }))
        }
    };
    let Some(size) = content_length(req) else {
        return Err(DataPathError::BadRequest(ApiError::ImportError {
            msg: "importing into a new VDI needs a Content-Length".into(),
        }));
    };
    let record = serde_json::json!({
        "name_label": "Imported VDI", "name_description": "", "SR": sr,
        "virtual_size": size.to_string(), "type": "user", "sharable": false,
        "read_only": false, "other_config": {}
    });
    let params = [serde_json::json!(auth.session), record];
    match agent::call(agent, &CallCtx::default(), "VDI.create", &params).await {
        Ok(Value::Ref(r)) => Ok(r.to_string()),
        Ok(_) => Err(DataPathError::Failed(ApiError::internal("VDI.create returned no ref"))),
        Err(e) => Err(DataPathError::BadRequest(e)),
    }
}

async fn import_as(
    agent: &Arc<Agent>,
    req: &HttpRequest,
    auth: &Auth,
    mut body: web::Payload,
) -> Result<HttpResponse, DataPathError> {
    let task_id = param(req, "task_id");
    let early = async {
        let f = format_of(req, &[Format::Raw, Format::Vhd, Format::Qcow2, Format::Tar])?;
        target_vdi(agent, req, auth).await.map(|v| (f, v))
    };
    let (format, vdi) = match early.await {
        Ok(v) => v,
        Err(e) => {
            fail_named_task(agent, req, &e).await;
            return Err(e);
        }
    };
    let mut task = TransferTask::begin(agent, task_id.as_deref(), "VDI import")
        .await
        .map_err(DataPathError::BadRequest)?;
    let expected = content_length(req);
    if format == Format::Vhd {
        let mut src = PayloadSource::new(body);
        let r = agent::backup::disk_stream::import_vhd(agent, &vdi, &mut src).await;
        return finish_import(task, &vdi, r).await;
    }
    if format == Format::Qcow2 {
        let r = super::disk_format::import_qcow2(agent, &vdi, body).await;
        return finish_import(task, &vdi, r).await;
    }
    if format == Format::Tar {
        let rx = super::body_channel(body);
        let open = move || Ok(agent::backup::xva_read::ChannelReader::new(rx));
        let r = agent::backup::disk_tar::import(agent, &vdi, open, &mut task).await;
        return finish_import(task, &vdi, r).await;
    }
    let result = async {
        let mut sink = ImportSink::open(agent, &vdi).await?;
        let total = expected.unwrap_or(sink.capacity());
        if let Some(n) = expected.filter(|n| *n > sink.capacity()) {
            return Err(ApiError::VdiTooSmall {
                vdi: vdi.clone(),
                minimum_size: n.to_string(),
            });
        }
        while let Some(chunk) = body.next().await {
            let step = match chunk {
                Ok(bytes) => sink.write(&bytes).await,
                Err(e) => {
                    tracing::info!(vdi = %vdi, received = sink.received(), error = %e, "import upload ended early");
                    Err(ApiError::ImportErrorPrematureEof {})
                }
            };
            if let Err(e) = step {
                sink.abandon().await;
                return Err(e);
            }
            task.progress(sink.received(), total).await;
        }
        if expected.is_some_and(|n| sink.received() < n) {
            sink.abandon().await;
            return Err(ApiError::ImportErrorPrematureEof {});
        }
        sink.finish().await
    }
    .await;
    finish_import(task, &vdi, result).await
}

async fn finish_import(
    task: TransferTask,
    vdi: &str,
    result: Result<u64, ApiError>,
) -> Result<HttpResponse, DataPathError> {
    let task_ref = task.reference().to_owned();
    match result {
        Ok(n) => {
            tracing::info!(vdi = %vdi, bytes = n, "imported a VDI");
            task.succeed(&Value::reference(vdi)).await;
            Ok(HttpResponse::Ok()
                .insert_header(("task-id", task_ref))
                .content_type("text/plain")
                .body(format!("{vdi}\n")))
        }
        Err(e) => {
            tracing::warn!(vdi = %vdi, error = %e, "VDI import failed");
            task.fail(&e).await;
            Err(DataPathError::Failed(e))
        }
    }
}

/// `GET /export_raw_vdi`.
pub(super) async fn export(req: HttpRequest, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    let agent = agent.get_ref().clone();
    let auth = match authorize(&agent, &req, "get_export_raw_vdi").await {
        Ok(a) => a,
        Err(e) => {
            fail_named_task(&agent, &req, &e).await;
            return e.response();
        }
    };
    // The session is needed only to start: the body streams after the handler returns.
    auth.finish(&agent).await;
    let parsed = format_of(&req, &[Format::Raw, Format::Vhd, Format::Qcow2, Format::Tar]).and_then(|f| {
        let v = param(&req, "vdi")
            .ok_or_else(|| DataPathError::BadRequest(ApiError::internal("Missing vdi query parameter")))?;
        let base = match param(&req, "base").filter(|b| !b.is_empty() && f == Format::Vhd) {
            Some(b) => Some(vdi_of(&agent, &b)?),
            None => None,
        };
        Ok((f, vdi_of(&agent, &v)?, base))
    });
    let (format, vdi, base) = match parsed {
        Ok(v) => v,
        Err(e) => {
            fail_named_task(&agent, &req, &e).await;
            return e.response();
        }
    };
    let task = match TransferTask::begin(&agent, param(&req, "task_id").as_deref(), "VDI export").await {
        Ok(t) => t,
        Err(e) => return DataPathError::BadRequest(e).response(),
    };
    if format == Format::Tar {
        return tar_export(&req, &agent, task, &vdi).await;
    }
    if format != Format::Raw {
        return super::disk_format::export(&req, &agent, task, &vdi, format, base.as_deref()).await;
    }
    let source = match ExportSource::open(&agent, &vdi).await {
        Ok(s) => s,
        Err(e) => {
            task.fail(&e).await;
            return DataPathError::Failed(e).response();
        }
    };
    let uuid = agent.uuid_of(class_ids::VDI, &vdi).unwrap_or_default();
    let size = source.size();
    let task_ref = task.reference().to_owned();
    let mut resp = HttpResponse::Ok();
    resp.insert_header(("task-id", task_ref))
        .content_type("application/octet-stream")
        .insert_header(("content-disposition", format!("attachment; filename=\"{uuid}.raw\"")))
        .no_chunking(size);
    if req.method() == actix_web::http::Method::HEAD {
        task.succeed(&Value::None).await;
        return resp.finish();
    }
    let source = RawExport { source, sent: 0, size };
    respond(resp, &agent, source, task, "raw VDI export")
}

/// `format=tar`: the disk's checksummed chunks (`agent::backup::disk_tar`), streamed without a
/// length (blank chunks are left out).
async fn tar_export(req: &HttpRequest, agent: &Arc<Agent>, task: TransferTask, vdi: &str) -> HttpResponse {
    let writer = match agent::backup::disk_tar::export(agent, vdi) {
        Ok(w) => TarExport(w),
        Err(e) => {
            task.fail(&e).await;
            return DataPathError::NotFound(e).response();
        }
    };
    let uuid = agent.uuid_of(class_ids::VDI, vdi).unwrap_or_default();
    let mut resp = HttpResponse::Ok();
    resp.insert_header(("task-id", task.reference().to_owned()))
        .content_type("application/x-tar")
        .insert_header(("content-disposition", format!("attachment; filename=\"{uuid}.tar\"")));
    if req.method() == actix_web::http::Method::HEAD {
        task.succeed(&Value::None).await;
        return resp.finish();
    }
    respond(resp, agent, writer, task, "tar VDI export")
}

/// A disk's tar stream.
struct TarExport(agent::backup::xva_write::XvaWriter);

impl Pieces for TarExport {
    async fn next_piece(&mut self) -> Option<Result<web::Bytes, ApiError>> {
        self.0.next_piece().await
    }

    fn progress(&self) -> (u64, u64) {
        self.0.progress()
    }
}

/// A raw export counting what it has sent.
struct RawExport {
    source: ExportSource,
    sent: u64,
    size: u64,
}

impl Pieces for RawExport {
    async fn next_piece(&mut self) -> Option<Result<web::Bytes, ApiError>> {
        let piece = self.source.next_chunk().await;
        if let Some(Ok(b)) = &piece {
            self.sent += b.len() as u64;
        }
        piece
    }

    fn progress(&self) -> (u64, u64) {
        (self.sent, self.size)
    }
}
