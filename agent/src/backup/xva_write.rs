//! Writing an XVA: a tar stream of `ova.xml`, then each disk as numbered 1 MiB chunks
//! (`Ref:N/00000000`), each followed by its `.xxhash` checksum file; a chunk of zeros is left
//! out unless it is the disk's first or last. The disks are read through the storage layer's
//! [`ExportSource`] (the I/O engine, the VDI's shared lock). Optionally gzip- or
//! zstd-compressed ([`Encoder`]).

use super::metadata::ExportDisk;
use crate::error::ApiError;
use crate::storage::transfer::{ExportSource, Span};
use crate::Agent;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;

/// The size of a disk chunk.
pub const CHUNK: u64 = 1 << 20;

/// A tar member's header and data, padded to the 512-byte block.
pub fn tar_member(name: &str, data: &[u8], mtime: u64) -> Result<Bytes, ApiError> {
    let mut out = BytesMut::with_capacity(512 + data.len() + 512);
    out.extend_from_slice(&tar_header(name, data.len() as u64, mtime)?);
    out.extend_from_slice(data);
    out.extend_from_slice(&[0u8; 512][..padding(data.len() as u64)]);
    Ok(out.freeze())
}

/// A ustar header for a regular file.
pub fn tar_header(name: &str, size: u64, mtime: u64) -> Result<[u8; 512], ApiError> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)
        .map_err(|e| ApiError::internal(format!("tar name {name}: {e}")))?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut out = [0u8; 512];
    out.copy_from_slice(h.as_bytes());
    Ok(out)
}

/// Zero bytes after `len` bytes of data to the next block.
pub fn padding(len: u64) -> usize {
    ((512 - len % 512) % 512) as usize
}

/// Whether every byte is zero (an OR over all bytes, which the compiler vectorises: a
/// short-circuiting scan of the bytes one by one is several times slower on 4 GiB).
pub fn is_zero(data: &[u8]) -> bool {
    data.iter().fold(0u8, |a, b| a | b) == 0
}

/// The end of a tar archive: two zero blocks.
pub fn tar_end() -> Bytes {
    Bytes::from_static(&[0u8; 1024])
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Current {
    disk: ExportDisk,
    source: ExportSource,
    offset: u64,
    carry: Span,
}

/// The archive as a sequence of byte pieces.
pub struct XvaWriter {
    agent: Arc<Agent>,
    head: Option<Bytes>,
    disks: VecDeque<ExportDisk>,
    current: Option<Current>,
    ended: bool,
    done: u64,
    total: u64,
    mtime: u64,
}

impl XvaWriter {
    /// An archive of `ova_xml` and `disks` (a metadata export has none).
    pub fn new(agent: &Arc<Agent>, ova_xml: &str, disks: Vec<ExportDisk>) -> Result<XvaWriter, ApiError> {
        let mtime = now();
        let total = disks.iter().map(|d| d.size).sum();
        Ok(XvaWriter {
            agent: agent.clone(),
            head: Some(tar_member("ova.xml", ova_xml.as_bytes(), mtime)?),
            disks: disks.into(),
            current: None,
            ended: false,
            done: 0,
            total,
            mtime,
        })
    }

    /// The chunks of `disks` alone, without `ova.xml` (a disk's tar stream).
    pub fn disks_only(agent: &Arc<Agent>, disks: Vec<ExportDisk>) -> XvaWriter {
        XvaWriter {
            agent: agent.clone(),
            head: None,
            total: disks.iter().map(|d| d.size).sum(),
            disks: disks.into(),
            current: None,
            ended: false,
            done: 0,
            mtime: now(),
        }
    }

    /// Disk bytes read so far, and in all.
    pub fn progress(&self) -> (u64, u64) {
        (self.done, self.total)
    }

    /// Fills `want` bytes of the current disk from its source; `None` when every one of them
    /// lies in a hole (nothing was read, nothing needs scanning).
    async fn read_chunk(c: &mut Current, want: usize) -> Result<Option<BytesMut>, ApiError> {
        let mut buf: Option<BytesMut> = None;
        let mut filled = 0;
        while filled < want {
            if c.carry.is_empty() {
                match c.source.next_span().await {
                    Some(Ok(s)) => c.carry = s,
                    Some(Err(e)) => return Err(e),
                    None => {
                        return Err(ApiError::VdiIoError {
                            message: "Device I/O errors: the disk ended early".into(),
                        })
                    }
                }
            }
            let n = (want - filled).min(c.carry.len());
            match &mut c.carry {
                Span::Hole(left) => {
                    *left -= n;
                    if let Some(b) = buf.as_mut() {
                        b.resize(b.len() + n, 0);
                    }
                }
                Span::Data(bytes) => {
                    let b = buf.get_or_insert_with(|| {
                        let mut b = BytesMut::with_capacity(want);
                        b.resize(filled, 0);
                        b
                    });
                    b.extend_from_slice(&bytes.split_to(n));
                }
            }
            filled += n;
        }
        Ok(buf)
    }

    /// The next piece of the archive, or `None` at its end.
    pub async fn next_piece(&mut self) -> Option<Result<Bytes, ApiError>> {
        if let Some(h) = self.head.take() {
            return Some(Ok(h));
        }
        loop {
            if self.current.is_none() {
                let Some(disk) = self.disks.pop_front() else {
                    if self.ended {
                        return None;
                    }
                    self.ended = true;
                    return Some(Ok(tar_end()));
                };
                let source = match ExportSource::open(&self.agent, &disk.vdi).await {
                    Ok(s) => s,
                    Err(e) => return Some(Err(e)),
                };
                self.current = Some(Current {
                    disk,
                    source,
                    offset: 0,
                    carry: Span::Hole(0),
                });
            }
            let Some(c) = self.current.as_mut() else { continue };
            let remaining = c.disk.size - c.offset;
            if remaining == 0 {
                self.current = None;
                continue;
            }
            let want = remaining.min(CHUNK) as usize;
            let index = c.offset / CHUNK;
            let data = match Self::read_chunk(c, want).await {
                Ok(d) => d,
                Err(e) => return Some(Err(e)),
            };
            let first_or_last = index == 0 || want as u64 == remaining;
            c.offset += want as u64;
            self.done += want as u64;
            // Blank chunks are left out (but the first and the last, which give the disk its
            // extent); a hole is blank without a look at it.
            let data = match data {
                Some(d) if first_or_last || !is_zero(&d) => d,
                None if first_or_last => BytesMut::zeroed(want),
                _ => continue,
            };
            let name = format!("{}/{index:08}", c.disk.id);
            let sum = super::xva_read::checksum("xxhash", &data).unwrap_or_default();
            let mut out = BytesMut::with_capacity(data.len() + 2048);
            match tar_header(&name, data.len() as u64, self.mtime) {
                Ok(h) => out.extend_from_slice(&h),
                Err(e) => return Some(Err(e)),
            }
            out.extend_from_slice(&data);
            out.extend_from_slice(&[0u8; 512][..padding(data.len() as u64)]);
            match tar_member(&format!("{name}.xxhash"), sum.as_bytes(), self.mtime) {
                Ok(m) => out.extend_from_slice(&m),
                Err(e) => return Some(Err(e)),
            }
            return Some(Ok(out.freeze()));
        }
    }
}

/// `use_compression`: `true`/`gzip` or `zstd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// From the query parameter, as the reference reads it (anything else: none).
    pub fn from_param(v: Option<&str>) -> Compression {
        match v {
            Some("true") | Some("gzip") => Compression::Gzip,
            Some("zstd") => Compression::Zstd,
            _ => Compression::None,
        }
    }
}

/// A streaming compressor: bytes in, compressed bytes out as they are ready.
pub enum Encoder {
    /// gzip.
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    /// zstd.
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    /// A compressor for `c` (`None` for plain output).
    pub fn new(c: Compression) -> std::io::Result<Option<Encoder>> {
        Ok(match c {
            Compression::None => None,
            Compression::Gzip => Some(Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::fast(),
            ))),
            Compression::Zstd => Some(Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 3)?)),
        })
    }

    /// Compresses `data`; returns what is ready.
    pub fn push(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => {
                e.write_all(data)?;
                Ok(std::mem::take(e.get_mut()))
            }
            Encoder::Zstd(e) => {
                e.write_all(data)?;
                Ok(std::mem::take(e.get_mut()))
            }
        }
    }

    /// Ends the stream; returns the rest.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}
