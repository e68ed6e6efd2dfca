//! `GET /export?ref=|uuid=` and `GET /export_metadata` (an XVA out), `PUT /import` and
//! `PUT /import_metadata` (an XVA in), with the reference's parameters: `use_compression`,
//! `preserve_power_state`, `export_snapshots`, `sr_id`/`sr_uuid`, `restore`, `force`,
//! `task_id`.
//!
//! As the reference, an import answers `200` with its headers at once and reports through its
//! task: Xen Orchestra probes the path with an empty upload first, and sends a stream without
//! a length (it declares 1 PiB and closes the connection once the archive is sent).

use super::{authorize, param, DataPathError};
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use agent::backup::metadata::{self, ExportOptions};
use agent::backup::xva_import::{self, ImportOptions};
use agent::backup::xva_read::ChannelReader;
use agent::backup::xva_write::{Compression, Encoder, XvaWriter};
use agent::schema::class_ids;
use agent::storage::transfer::TransferTask;
use agent::value::Value;
use agent::{Agent, ApiError};
use std::sync::Arc;

fn flag(req: &HttpRequest, name: &str, default: bool) -> bool {
    param(req, name).map_or(default, |v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Fails the caller's task, if it named one (for failures before the work began).
async fn fail_named_task(agent: &Agent, req: &HttpRequest, e: &DataPathError) {
    if let Some(t) = param(req, "task_id") {
        agent::storage::transfer::fail_task(agent, &t, &e.api_error()).await;
    }
}

fn vm_of(agent: &Agent, req: &HttpRequest) -> Result<String, DataPathError> {
    if let Some(r) = param(req, "ref") {
        return agent
            .resolve(class_ids::VM, &r)
            .ok_or_else(|| DataPathError::NotFound(ApiError::handle_invalid("VM", &r)));
    }
    if let Some(u) = param(req, "uuid") {
        return agent.resolve(class_ids::VM, &u).ok_or_else(|| {
            DataPathError::NotFound(ApiError::UuidInvalid {
                r#type: "VM".into(),
                uuid: u,
            })
        });
    }
    Err(DataPathError::BadRequest(ApiError::internal(
        "Missing ref or uuid query parameter",
    )))
}

/// `GET /export`.
pub(super) async fn export(req: HttpRequest, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    export_common(req, agent.get_ref().clone(), false).await
}

/// `GET /export_metadata`.
pub(super) async fn export_metadata(req: HttpRequest, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    export_common(req, agent.get_ref().clone(), true).await
}

fn plan_export(agent: &Arc<Agent>, req: &HttpRequest, metadata_only: bool) -> Result<XvaWriter, DataPathError> {
    let excluded = param(req, "excluded_device_types").unwrap_or_default();
    let opts = ExportOptions {
        with_snapshot_metadata: metadata_only && flag(req, "export_snapshots", true),
        preserve_power_state: metadata_only || flag(req, "preserve_power_state", false),
        exclude_vifs: excluded.split(',').any(|d| d.eq_ignore_ascii_case("VIF")),
        exclude_vbds: excluded.split(',').any(|d| d.eq_ignore_ascii_case("VBD")),
    };
    let vms = if metadata_only && flag(req, "all", false) {
        metadata::all_vms(agent, flag(req, "include_dom0", true))
    } else {
        vec![vm_of(agent, req)?]
    };
    let (ova, disks) = metadata::plan_export(agent, &vms, &opts, !metadata_only).map_err(DataPathError::Failed)?;
    XvaWriter::new(agent, &ova, disks).map_err(DataPathError::Failed)
}

async fn export_common(req: HttpRequest, agent: Arc<Agent>, metadata_only: bool) -> HttpResponse {
    let action = if metadata_only {
        "get_export_metadata"
    } else {
        "get_export"
    };
    let auth = match authorize(&agent, &req, action).await {
        Ok(a) => a,
        Err(e) => {
            fail_named_task(&agent, &req, &e).await;
            return e.response();
        }
    };
    auth.finish(&agent).await;
    let writer = match plan_export(&agent, &req, metadata_only) {
        Ok(w) => w,
        Err(e) => {
            fail_named_task(&agent, &req, &e).await;
            return e.response();
        }
    };
    let compression = Compression::from_param(param(&req, "use_compression").as_deref());
    let encoder = match Encoder::new(compression) {
        Ok(e) => e,
        Err(e) => return DataPathError::Failed(ApiError::internal(e)).response(),
    };
    let label = if metadata_only {
        "VM.export_metadata"
    } else {
        "VM.export"
    };
    let task = match TransferTask::begin(&agent, param(&req, "task_id").as_deref(), label).await {
        Ok(t) => t,
        Err(e) => return DataPathError::BadRequest(e).response(),
    };
    let mut resp = HttpResponse::Ok();
    resp.insert_header(("task-id", task.reference().to_owned()))
        .content_type("application/octet-stream")
        .insert_header(("content-disposition", "attachment; filename=\"export.xva\""));
    let state = ExportState {
        agent,
        writer,
        encoder,
        task: Some(task),
    };
    resp.streaming(futures_util::stream::unfold(state, ExportState::next))
}

/// An export in progress; a client that goes away fails the task (see `Drop`).
struct ExportState {
    agent: Arc<Agent>,
    writer: XvaWriter,
    encoder: Option<Encoder>,
    task: Option<TransferTask>,
}

type Piece = Result<Bytes, actix_web::Error>;

impl ExportState {
    async fn fail(&mut self, e: ApiError) -> Piece {
        tracing::warn!(error = %e, "XVA export failed");
        if let Some(t) = self.task.take() {
            t.fail(&e).await;
        }
        Err(actix_web::error::ErrorInternalServerError(e.to_string()))
    }

    async fn compress(&mut self, data: Bytes, last: bool) -> Result<Bytes, ApiError> {
        let Some(enc) = self.encoder.take() else {
            return Ok(data);
        };
        let (enc, out) = tokio::task::spawn_blocking(move || {
            let mut enc = enc;
            let r = enc.push(&data);
            match (r, last) {
                (Ok(mut out), true) => match enc.finish() {
                    Ok(rest) => {
                        out.extend_from_slice(&rest);
                        (None, Ok(out))
                    }
                    Err(e) => (None, Err(e)),
                },
                (r, _) => (Some(enc), r),
            }
        })
        .await
        .map_err(ApiError::internal)?;
        self.encoder = enc;
        out.map(Bytes::from).map_err(ApiError::internal)
    }

    async fn next(mut self) -> Option<(Piece, ExportState)> {
        loop {
            let task = self.task.as_ref()?;
            if agent::backup::cancelled(&self.agent, task.reference()) {
                let t = task.reference().to_owned();
                self.task = None;
                return Some((
                    Err(actix_web::error::ErrorInternalServerError(format!(
                        "task {t} cancelled"
                    ))),
                    self,
                ));
            }
            match self.writer.next_piece().await {
                Some(Ok(b)) => {
                    let out = match self.compress(b, false).await {
                        Ok(o) => o,
                        Err(e) => {
                            let p = self.fail(e).await;
                            return Some((p, self));
                        }
                    };
                    let (done, total) = self.writer.progress();
                    if let Some(t) = self.task.as_mut() {
                        t.progress(done, total).await;
                    }
                    if out.is_empty() {
                        continue;
                    }
                    return Some((Ok(out), self));
                }
                Some(Err(e)) => {
                    let p = self.fail(e).await;
                    return Some((p, self));
                }
                None => {
                    let rest = if self.encoder.is_some() {
                        match self.compress(Bytes::new(), true).await {
                            Ok(o) => o,
                            Err(e) => {
                                let p = self.fail(e).await;
                                return Some((p, self));
                            }
                        }
                    } else {
                        Bytes::new()
                    };
                    if let Some(t) = self.task.take() {
                        t.succeed(&Value::None).await;
                    }
                    if rest.is_empty() {
                        return None;
                    }
                    return Some((Ok(rest), self));
                }
            }
        }
    }
}

impl Drop for ExportState {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            actix_web::rt::spawn(async move {
                t.fail(&ApiError::internal("the client went away")).await;
            });
        }
    }
}

/// `PUT /import`.
pub(super) async fn import(req: HttpRequest, body: web::Payload, agent: web::Data<Arc<Agent>>) -> HttpResponse {
    import_common(req, body, agent.get_ref().clone(), false).await
}

/// `PUT /import_metadata`.
pub(super) async fn import_metadata(
    req: HttpRequest,
    body: web::Payload,
    agent: web::Data<Arc<Agent>>,
) -> HttpResponse {
    import_common(req, body, agent.get_ref().clone(), true).await
}

fn import_sr(agent: &Agent, req: &HttpRequest) -> Result<String, DataPathError> {
    match (param(req, "sr_id"), param(req, "sr_uuid")) {
        (Some(sr), _) => agent
            .resolve(class_ids::SR, &sr)
            .ok_or_else(|| DataPathError::NotFound(ApiError::handle_invalid("SR", &sr))),
        (None, Some(u)) => agent.resolve(class_ids::SR, &u).ok_or_else(|| {
            DataPathError::NotFound(ApiError::UuidInvalid {
                r#type: "SR".into(),
                uuid: u,
            })
        }),
        (None, None) => Ok(String::new()),
    }
}

async fn import_common(req: HttpRequest, body: web::Payload, agent: Arc<Agent>, metadata_only: bool) -> HttpResponse {
    let action = if metadata_only {
        "put_import_metadata"
    } else {
        "put_import"
    };
    let auth = match authorize(&agent, &req, action).await {
        Ok(a) => a,
        Err(e) => {
            fail_named_task(&agent, &req, &e).await;
            return e.response();
        }
    };
    let sr = match import_sr(&agent, &req) {
        Ok(s) => s,
        Err(e) => {
            fail_named_task(&agent, &req, &e).await;
            auth.finish(&agent).await;
            return e.response();
        }
    };
    let opts = ImportOptions {
        sr,
        full_restore: flag(&req, "restore", false),
        force: flag(&req, "force", false),
        metadata_only,
    };
    let label = if metadata_only {
        "VM.import_metadata"
    } else {
        "VM.import"
    };
    let task = match TransferTask::begin(&agent, param(&req, "task_id").as_deref(), label).await {
        Ok(t) => t,
        Err(e) => {
            auth.finish(&agent).await;
            return DataPathError::BadRequest(e).response();
        }
    };
    let task_ref = task.reference().to_owned();
    // The upload, into the archive reader's channel.
    let rx = super::body_channel(body);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<Vec<String>, ApiError>>();
    let agent2 = agent.clone();
    actix_web::rt::spawn(async move {
        let mut task = task;
        let r = xva_import::import(&agent2, move || Ok(ChannelReader::new(rx)), opts, &mut task).await;
        match &r {
            Ok(vms) => {
                tracing::info!(vms = ?vms, "imported an XVA");
                task.succeed(&Value::set(vms.iter().map(|v| Value::reference(v.as_str())).collect()))
                    .await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "XVA import failed");
                task.fail(e).await;
            }
        }
        auth.finish(&agent2).await;
        let _ = done_tx.send(r);
    });
    let outcome = futures_util::stream::once(async move {
        let text = match done_rx.await {
            Ok(Ok(vms)) => format!("{}\n", vms.join("\n")),
            Ok(Err(e)) => format!("{e}\n"),
            Err(_) => String::new(),
        };
        Ok::<_, actix_web::Error>(Bytes::from(text))
    });
    HttpResponse::Ok()
        .insert_header(("task-id", task_ref))
        .content_type("text/plain")
        .force_close()
        .streaming(outcome)
}
