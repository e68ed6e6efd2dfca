//! The transmission phase: requests one after another on a connection (simple or structured
//! replies), reads through the I/O engine, `base:allocation` block status. The export is
//! read-only: writes, trims and zero-writes answer `EPERM`.

use super::negotiate::State;
use super::proto::*;
use super::NbdError;
use agent::storage::nbd_export::NbdExport;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Most extents one block-status reply carries.
const MAX_EXTENTS: usize = 1024;

/// How a reply is framed on this connection.
#[derive(Clone, Copy)]
struct Framing {
    structured: bool,
}

impl Framing {
    async fn error<S: AsyncWrite + Unpin>(self, s: &mut S, cookie: u64, err: u32) -> Result<(), NbdError> {
        if self.structured {
            let mut v = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, 6).to_vec();
            v.extend_from_slice(&err.to_be_bytes());
            v.extend_from_slice(&0u16.to_be_bytes());
            s.write_all(&v).await?;
        } else {
            s.write_all(&simple_reply(err, cookie)).await?;
        }
        s.flush().await?;
        Ok(())
    }

    async fn ok<S: AsyncWrite + Unpin>(self, s: &mut S, cookie: u64) -> Result<(), NbdError> {
        if self.structured {
            s.write_all(&chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0))
                .await?;
        } else {
            s.write_all(&simple_reply(0, cookie)).await?;
        }
        s.flush().await?;
        Ok(())
    }
}

/// Discards `n` bytes the client sent (a refused write's payload).
async fn discard<S: AsyncRead + Unpin>(s: &mut S, mut n: u64) -> Result<(), NbdError> {
    let mut buf = vec![0u8; 64 * 1024];
    while n > 0 {
        let take = n.min(buf.len() as u64) as usize;
        s.read_exact(&mut buf[..take]).await?;
        n -= take as u64;
    }
    Ok(())
}

/// Serves requests until the client disconnects.
pub async fn transmit<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    st: &State,
    export: NbdExport,
) -> Result<(), NbdError> {
    let f = Framing {
        structured: st.structured,
    };
    loop {
        let mut head = [0u8; 28];
        match s.read_exact(&mut head).await {
            Ok(_) => {}
            // A client that closes without NBD_CMD_DISC.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let req = parse_request(&head).map_err(|e| NbdError::Protocol(e.to_string()))?;
        let in_range = req
            .offset
            .checked_add(u64::from(req.length))
            .is_some_and(|end| end <= export.size());
        match req.kind {
            CMD_READ => {
                if req.length > MAX_REQUEST_LEN || !in_range {
                    f.error(s, req.cookie, EINVAL).await?;
                } else {
                    read(s, f, &export, req).await?;
                }
            }
            CMD_WRITE => {
                if req.length > MAX_REQUEST_LEN {
                    return Err(NbdError::Protocol(format!("a write of {} bytes", req.length)));
                }
                discard(s, u64::from(req.length)).await?;
                f.error(s, req.cookie, EPERM).await?;
            }
            CMD_DISC => return Ok(()),
            CMD_FLUSH | CMD_CACHE => f.ok(s, req.cookie).await?,
            CMD_TRIM | CMD_WRITE_ZEROES => f.error(s, req.cookie, EPERM).await?,
            CMD_BLOCK_STATUS => {
                if !st.base_allocation || !f.structured || req.length == 0 || !in_range {
                    f.error(s, req.cookie, EINVAL).await?;
                } else {
                    block_status(s, f, &export, req).await?;
                }
            }
            _ => f.error(s, req.cookie, EINVAL).await?,
        }
    }
}

async fn read<S: AsyncWrite + Unpin>(s: &mut S, f: Framing, export: &NbdExport, req: Request) -> Result<(), NbdError> {
    if req.length == 0 {
        return f.ok(s, req.cookie).await;
    }
    let mut pieces = export.read(req.offset, u64::from(req.length)).await;
    let mut at = req.offset;
    let end = req.offset + u64::from(req.length);
    let mut first = true;
    while let Some(piece) = pieces.next_piece().await {
        let buf = match piece {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(vdi = export.vdi(), error = %e, "NBD read failed");
                if f.structured || first {
                    return f.error(s, req.cookie, EIO).await;
                }
                // A simple reply already under way cannot carry an error: the connection ends.
                return Err(NbdError::Protocol("a read failed after its reply began".into()));
            }
        };
        let n = buf.len() as u64;
        if f.structured {
            let flags = if at + n >= end { REPLY_FLAG_DONE } else { 0 };
            let mut h = chunk_header(flags, REPLY_TYPE_OFFSET_DATA, req.cookie, 8 + n as u32).to_vec();
            h.extend_from_slice(&at.to_be_bytes());
            s.write_all(&h).await?;
        } else if first {
            s.write_all(&simple_reply(0, req.cookie)).await?;
        }
        s.write_all(buf.as_slice()).await?;
        first = false;
        at += n;
    }
    s.flush().await?;
    Ok(())
}

async fn block_status<S: AsyncWrite + Unpin>(
    s: &mut S,
    f: Framing,
    export: &NbdExport,
    req: Request,
) -> Result<(), NbdError> {
    let max = if req.flags & CMD_FLAG_REQ_ONE != 0 {
        1
    } else {
        MAX_EXTENTS
    };
    let extents = match export.extents(req.offset, u64::from(req.length), max).await {
        Ok(e) if !e.is_empty() => e,
        Ok(_) => return f.error(s, req.cookie, EINVAL).await,
        Err(e) => {
            tracing::warn!(vdi = export.vdi(), error = %e, "NBD block status failed");
            return f.error(s, req.cookie, EIO).await;
        }
    };
    let len = 4 + 8 * extents.len() as u32;
    let mut v = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, req.cookie, len).to_vec();
    v.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
    for (n, hole) in extents {
        v.extend_from_slice(&n.to_be_bytes());
        let flags = if hole { STATE_HOLE | STATE_ZERO } else { 0 };
        v.extend_from_slice(&flags.to_be_bytes());
    }
    s.write_all(&v).await?;
    s.flush().await?;
    Ok(())
}
