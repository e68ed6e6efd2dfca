//! The fixed newstyle negotiation: the options a client sends before it picks an export.

use super::proto::*;
use super::NbdError;
use agent::storage::nbd_export::NbdExport;
use agent::Agent;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What the negotiation has settled so far.
#[derive(Debug, Default)]
pub struct State {
    /// TLS is required before anything but `NBD_OPT_STARTTLS` (purpose `nbd`).
    pub require_tls: bool,
    /// The connection is already under TLS.
    pub tls_done: bool,
    /// The client asked for structured replies.
    pub structured: bool,
    /// The client selected `base:allocation`.
    pub base_allocation: bool,
    /// The client asked for no zeroes after `NBD_OPT_EXPORT_NAME`.
    pub no_zeroes: bool,
}

/// How the negotiation ended.
pub enum Outcome {
    /// Upgrade the connection to TLS, then negotiate again.
    StartTls,
    /// Serve this export.
    Serve(NbdExport),
    /// The client left (or must be left).
    Close,
}

async fn reply<S: AsyncWrite + Unpin>(s: &mut S, option: u32, kind: u32, data: &[u8]) -> Result<(), NbdError> {
    s.write_all(&option_reply(option, kind, data)).await?;
    s.flush().await?;
    Ok(())
}

/// Opens the export a client named, or says why not (an option reply type and a message).
async fn open(agent: &Arc<Agent>, name: &str) -> Result<NbdExport, (u32, String)> {
    let Some(n) = parse_export_name(name) else {
        return Err((
            REP_ERR_UNKNOWN,
            "exports are named /<VDI uuid>?session_id=<session ref> (VDI.get_nbd_info)".into(),
        ));
    };
    NbdExport::open(agent, &n.vdi_uuid, &n.session).await.map_err(|e| {
        let kind = match e {
            agent::ApiError::SessionInvalid { .. } => REP_ERR_POLICY,
            _ => REP_ERR_UNKNOWN,
        };
        tracing::debug!(error = %e, "NBD export refused");
        (kind, e.to_string())
    })
}

fn info_export(size: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&transmission_flags().to_be_bytes());
    v
}

/// The export's transmission flags: read-only, several connections allowed.
pub fn transmission_flags() -> u16 {
    TF_HAS_FLAGS | TF_READ_ONLY | TF_CAN_MULTI_CONN
}

/// Runs the option haggling until the client picks an export, asks for TLS or leaves.
pub async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    st: &mut State,
    agent: &Arc<Agent>,
) -> Result<Outcome, NbdError> {
    loop {
        let mut head = [0u8; 16];
        s.read_exact(&mut head).await?;
        let magic = u64::from_be_bytes([head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7]]);
        let opt = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
        let len = u32::from_be_bytes([head[12], head[13], head[14], head[15]]);
        if magic != IHAVEOPT {
            return Err(NbdError::Protocol(format!("option without IHAVEOPT ({magic:#x})")));
        }
        if len > MAX_OPTION_LEN {
            return Err(NbdError::Protocol(format!("option {opt} of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;
        if st.require_tls && !st.tls_done && opt != OPT_STARTTLS && opt != OPT_ABORT {
            if opt == OPT_EXPORT_NAME {
                return Ok(Outcome::Close);
            }
            reply(s, opt, REP_ERR_TLS_REQD, b"TLS is required (NBD_OPT_STARTTLS)").await?;
            continue;
        }
        match opt {
            OPT_ABORT => {
                // The client may already be gone.
                let _ = reply(s, opt, REP_ACK, &[]).await;
                return Ok(Outcome::Close);
            }
            OPT_STARTTLS => {
                if !data.is_empty() {
                    reply(s, opt, REP_ERR_INVALID, b"NBD_OPT_STARTTLS takes no data").await?;
                } else if st.tls_done {
                    reply(s, opt, REP_ERR_INVALID, b"TLS is already on").await?;
                } else if !st.require_tls {
                    reply(s, opt, REP_ERR_POLICY, b"TLS is off (network purpose insecure_nbd)").await?;
                } else {
                    reply(s, opt, REP_ACK, &[]).await?;
                    return Ok(Outcome::StartTls);
                }
            }
            OPT_LIST => {
                // Exports exist per session: none are listed.
                if data.is_empty() {
                    reply(s, opt, REP_ACK, &[]).await?;
                } else {
                    reply(s, opt, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data").await?;
                }
            }
            OPT_STRUCTURED_REPLY => {
                if data.is_empty() {
                    st.structured = true;
                    reply(s, opt, REP_ACK, &[]).await?;
                } else {
                    reply(s, opt, REP_ERR_INVALID, b"NBD_OPT_STRUCTURED_REPLY takes no data").await?;
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let listing = opt == OPT_LIST_META_CONTEXT;
                if !st.structured {
                    reply(s, opt, REP_ERR_INVALID, b"structured replies first").await?;
                    continue;
                }
                let m = match parse_meta(&data) {
                    Ok(m) => m,
                    Err(e) => {
                        reply(s, opt, REP_ERR_INVALID, e.to_string().as_bytes()).await?;
                        continue;
                    }
                };
                let selected = selects_base_allocation(&m.queries, listing);
                if selected {
                    let mut d = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                    d.extend_from_slice(BASE_ALLOCATION.as_bytes());
                    reply(s, opt, REP_META_CONTEXT, &d).await?;
                }
                if !listing {
                    st.base_allocation = selected;
                }
                reply(s, opt, REP_ACK, &[]).await?;
            }
            OPT_INFO | OPT_GO => {
                let req = match parse_info(&data) {
                    Ok(r) => r,
                    Err(e) => {
                        reply(s, opt, REP_ERR_INVALID, e.to_string().as_bytes()).await?;
                        continue;
                    }
                };
                let export = match open(agent, &req.name).await {
                    Ok(e) => e,
                    Err((kind, msg)) => {
                        reply(s, opt, kind, msg.as_bytes()).await?;
                        continue;
                    }
                };
                reply(s, opt, REP_INFO, &info_export(export.size())).await?;
                if req.requests.contains(&INFO_BLOCK_SIZE) {
                    let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    d.extend_from_slice(&1u32.to_be_bytes());
                    d.extend_from_slice(&4096u32.to_be_bytes());
                    d.extend_from_slice(&MAX_REQUEST_LEN.to_be_bytes());
                    reply(s, opt, REP_INFO, &d).await?;
                }
                reply(s, opt, REP_ACK, &[]).await?;
                if opt == OPT_GO {
                    return Ok(Outcome::Serve(export));
                }
            }
            OPT_EXPORT_NAME => {
                let Ok(name) = parse_export_name_option(&data) else {
                    return Ok(Outcome::Close);
                };
                let Ok(export) = open(agent, &name).await else {
                    // This option has no error reply: the server closes.
                    return Ok(Outcome::Close);
                };
                let mut v = Vec::with_capacity(134);
                v.extend_from_slice(&export.size().to_be_bytes());
                v.extend_from_slice(&transmission_flags().to_be_bytes());
                if !st.no_zeroes {
                    v.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&v).await?;
                s.flush().await?;
                return Ok(Outcome::Serve(export));
            }
            _ => reply(s, opt, REP_ERR_UNSUP, &[]).await?,
        }
    }
}
