//! Reading an XVA stream (plain, gzip or zstd, told by its first bytes): `ova.xml` first, then
//! each disk's chunks `Ref:N/00000012`, each followed by its checksum file (`.xxhash`: the
//! xxHash64 as 16 upper-case hex digits; `.checksum`: SHA-1 as lower-case hex), verified here.
//! Synchronous: it runs on a blocking thread and hands [`Item`]s to the import.

use super::BackupError;
use sha1::Digest as _;
use std::io::{BufRead, BufReader, Read};

/// The largest `ova.xml` accepted.
const MAX_OVA_XML: u64 = 256 << 20;
/// The largest chunk accepted (the reference writes 1 MiB).
pub const MAX_CHUNK: u64 = 64 << 20;

/// What the archive holds, in order.
#[derive(Debug)]
pub enum Item {
    /// The record file.
    OvaXml(String),
    /// One disk chunk: the disk's archive name, the chunk's number, its bytes (checksum
    /// verified, or the mismatch forgiven by `force`).
    Chunk {
        /// `Ref:N`.
        prefix: String,
        /// The number in its name.
        index: u64,
        /// Its bytes.
        data: Vec<u8>,
    },
}

/// The input, decompressed as its magic bytes say.
pub fn decompressed<'a>(input: impl Read + Send + 'a) -> Result<Box<dyn Read + Send + 'a>, BackupError> {
    let mut b = BufReader::with_capacity(1 << 20, input);
    let head = b.fill_buf().map_err(BackupError::from_io)?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(b))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(b).map_err(BackupError::from_io)?)
    } else {
        Box::new(b)
    })
}

fn chunk_name(path: &str) -> Option<(&str, u64)> {
    let (prefix, n) = path.rsplit_once('/')?;
    if n.is_empty() || !n.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((prefix, n.parse().ok()?))
}

/// The checksum the reference writes for `data` in a file with `ext`.
pub fn checksum(ext: &str, data: &[u8]) -> Option<String> {
    match ext {
        "xxhash" => Some(format!("{:016X}", xxhash_rust::xxh64::xxh64(data, 0))),
        "checksum" => Some(sha1::Sha1::digest(data).iter().map(|b| format!("{b:02x}")).collect()),
        _ => None,
    }
}

/// Reads the whole archive, handing each item to `emit` (which answers false when nobody
/// listens any more: reading stops). `force` forgives checksum mismatches.
pub fn read(input: impl Read + Send, force: bool, emit: &mut dyn FnMut(Item) -> bool) -> Result<(), BackupError> {
    read_entries(input, force, true, emit)
}

/// Reads a disk's chunks alone, as `/export_raw_vdi?format=tar` writes them (no `ova.xml`;
/// the chunks' prefix is `vdi`; every chunk followed by its checksum file), handing each to
/// `emit`.
pub fn read_chunks(
    input: impl Read + Send,
    force: bool,
    emit: &mut dyn FnMut(Item) -> bool,
) -> Result<(), BackupError> {
    read_entries(input, force, false, emit)
}

fn read_entries(
    input: impl Read + Send,
    force: bool,
    ova_first: bool,
    emit: &mut dyn FnMut(Item) -> bool,
) -> Result<(), BackupError> {
    let mut ar = tar::Archive::new(decompressed(input)?);
    let entries = ar.entries().map_err(BackupError::from_io)?;
    let mut seen_ova = !ova_first;
    let mut pending: Option<(String, u64, Vec<u8>, String)> = None;
    for entry in entries {
        let mut entry = entry.map_err(BackupError::from_io)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            continue;
        }
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let size = entry.size();
        if !seen_ova {
            if path != "ova.xml" {
                return Err(BackupError::Archive(format!(
                    "Invalid XVA file: import expects the next file in the stream to be \"ova.xml\"; got \"{path}\""
                )));
            }
            if size > MAX_OVA_XML {
                return Err(BackupError::Archive(format!("ova.xml is too large ({size} bytes)")));
            }
            let mut s = String::new();
            entry.read_to_string(&mut s).map_err(BackupError::from_io)?;
            seen_ova = true;
            if !emit(Item::OvaXml(s)) {
                return Ok(());
            }
            continue;
        }
        if let Some((base, ext)) = path.rsplit_once('.') {
            if ext == "xxhash" || ext == "checksum" {
                let mut text = String::new();
                entry
                    .by_ref()
                    .take(256)
                    .read_to_string(&mut text)
                    .map_err(BackupError::from_io)?;
                let Some((prefix, index, data, name)) = pending.take().filter(|p| p.3 == base) else {
                    return Err(BackupError::Archive(format!(
                        "checksum file {path} follows no chunk of that name"
                    )));
                };
                let actual = checksum(ext, &data).unwrap_or_default();
                let expected = text.trim();
                if !expected.eq_ignore_ascii_case(&actual) {
                    let e = BackupError::Checksum {
                        name,
                        expected: expected.to_owned(),
                        actual,
                    };
                    if !force {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "checksum mismatch forgiven (force)");
                }
                if !emit(Item::Chunk { prefix, index, data }) {
                    return Ok(());
                }
                continue;
            }
        }
        let Some((prefix, index)) = chunk_name(&path) else {
            return Err(BackupError::Archive(format!("unexpected file {path:?} in the archive")));
        };
        if size > MAX_CHUNK {
            return Err(BackupError::Archive(format!(
                "chunk {path} is too large ({size} bytes)"
            )));
        }
        // A chunk with no checksum file after it (exports before checksums were inline; a
        // disk's tar stream always has them).
        if let Some((p, i, d, name)) = pending.take() {
            if !ova_first {
                return Err(BackupError::Archive(format!("chunk {name} has no checksum file")));
            }
            if !emit(Item::Chunk {
                prefix: p,
                index: i,
                data: d,
            }) {
                return Ok(());
            }
        }
        let mut data = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut data).map_err(BackupError::from_io)?;
        if data.len() as u64 != size {
            return Err(BackupError::PrematureEof);
        }
        pending = Some((prefix.to_owned(), index, data, path.clone()));
    }
    if let Some((prefix, index, data, _)) = pending.take() {
        if !ova_first {
            // Its checksum file never came: the stream was cut short.
            return Err(BackupError::PrematureEof);
        }
        emit(Item::Chunk { prefix, index, data });
    }
    if !seen_ova {
        return Err(BackupError::PrematureEof);
    }
    Ok(())
}

/// What [`spawn`] reads: a whole XVA ([`read`]) or a disk's chunks alone ([`read_chunks`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// `ova.xml`, then the disks' chunks.
    Archive,
    /// A disk's checksummed chunks, no `ova.xml`.
    DiskChunks,
}

/// Reads the stream `open` returns on a blocking thread, handing each item (or the error that
/// ended the reading) to the channel returned; the reading stops when the channel's receiver
/// is dropped. `force` forgives checksum mismatches.
pub fn spawn<F, R>(
    open: F,
    stream: Stream,
    force: bool,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::Receiver<Result<Item, BackupError>>,
)
where
    F: FnOnce() -> Result<R, BackupError> + Send + 'static,
    R: Read + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Item, BackupError>>(4);
    let reader = tokio::task::spawn_blocking(move || {
        let tx2 = tx.clone();
        let r = open().and_then(|input| {
            read_entries(input, force, stream == Stream::Archive, &mut |item| {
                tx2.blocking_send(Ok(item)).is_ok()
            })
        });
        if let Err(e) = r {
            let _ = tx.blocking_send(Err(e));
        }
    });
    (reader, rx)
}

/// A blocking reader over byte chunks sent from async code (an HTTP body): the end of the
/// channel is the end of the input; an error item ends it with that error.
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
    cur: bytes::Bytes,
}

impl ChannelReader {
    /// Reads what `rx` receives.
    pub fn new(rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>) -> ChannelReader {
        ChannelReader {
            rx,
            cur: bytes::Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}
