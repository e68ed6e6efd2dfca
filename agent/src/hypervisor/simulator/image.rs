//! The simulator's suspend image: a one-line header followed by a JSON body.
//!
//! ```text
//! XAPIDSIM-SUSPEND 1 <fnv1a64 of body, hex> <body length>\n
//! {"uuid": ..., "memory_actual": ..., "console": ..., ...}
//! ```
//!
//! The checksum catches truncated or edited files, which `resume_from`
//! rejects with [`BackendError::InvalidImage`].

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::hypervisor::{BackendError, Op};

const MAGIC: &str = "XAPIDSIM-SUSPEND";
const FORMAT: u32 = 1;

/// Everything the simulator needs to bring a suspended guest back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SuspendImage {
    pub uuid: Uuid,
    pub name: String,
    pub memory_target: u64,
    pub memory_actual: u64,
    pub memory_max: u64,
    pub vcpus_max: u32,
    pub vcpus_online: u32,
    pub cpu_time_ns: u64,
    pub restarts: u32,
    pub saved_at: String,
    pub source_domid: u32,
    pub console: String,
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Writes `image` to `path`, which must not exist yet, in one write.
///
/// Not synced: the image stands for a guest's memory, which this simulator does not have; a
/// simulated host losing its images in a crash is no worse than its guests vanishing, and
/// `resume_from` rejects a torn image by its checksum.
pub(super) fn write(path: &Path, image: &SuspendImage) -> Result<(), BackendError> {
    let io = |e| BackendError::io(Op::SuspendTo, path, e);
    let body = serde_json::to_vec(image).map_err(|e| io(std::io::Error::other(e)))?;
    let mut bytes = format!("{MAGIC} {FORMAT} {:016x} {}\n", fnv1a64(&body), body.len()).into_bytes();
    bytes.extend_from_slice(&body);
    let mut f = OpenOptions::new().write(true).create_new(true).open(path).map_err(io)?;
    let written = f.write_all(&bytes);
    if let Err(e) = written {
        // Do not leave a half-written image behind; the write error is what
        // matters to the caller.
        let _ = fs::remove_file(path);
        return Err(io(e));
    }
    Ok(())
}

/// Reads and verifies an image written by [`write`].
pub(super) fn read(path: &Path) -> Result<SuspendImage, BackendError> {
    let bytes = fs::read(path).map_err(|e| BackendError::io(Op::ResumeFrom, path, e))?;
    let bad = |reason: &str| BackendError::InvalidImage {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad("no header line"))?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| bad("header is not text"))?;
    let body = &bytes[nl + 1..];
    let fields: Vec<&str> = header.split(' ').collect();
    let [magic, format, sum, len] = fields.as_slice() else {
        return Err(bad("malformed header"));
    };
    if *magic != MAGIC {
        return Err(bad("wrong magic: not a simulator suspend image"));
    }
    if format.parse::<u32>().ok() != Some(FORMAT) {
        return Err(bad("unsupported format version"));
    }
    if len.parse::<usize>().ok() != Some(body.len()) {
        return Err(bad("length mismatch: truncated or extended"));
    }
    if u64::from_str_radix(sum, 16).ok() != Some(fnv1a64(body)) {
        return Err(bad("checksum mismatch: corrupted"));
    }
    serde_json::from_slice(body).map_err(|e| bad(&format!("bad body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SuspendImage {
        SuspendImage {
            uuid: Uuid::new_v4(),
            name: "vm".into(),
            memory_target: 1 << 28,
            memory_actual: 1 << 28,
            memory_max: 1 << 29,
            vcpus_max: 2,
            vcpus_online: 1,
            cpu_time_ns: 42,
            restarts: 0,
            saved_at: "now".into(),
            source_domid: 3,
            console: "hello\n".into(),
        }
    }

    #[test]
    fn roundtrip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let img = sample();
        write(&p, &img).unwrap();
        assert_eq!(read(&p).unwrap(), img);
        // Refuses to overwrite.
        assert!(matches!(write(&p, &img), Err(BackendError::Io { .. })));
        // Corrupt one body byte.
        let mut bytes = fs::read(&p).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x20;
        fs::write(&p, &bytes).unwrap();
        assert!(matches!(read(&p), Err(BackendError::InvalidImage { .. })));
        fs::write(&p, b"garbage").unwrap();
        assert!(matches!(read(&p), Err(BackendError::InvalidImage { .. })));
        assert!(matches!(
            read(&dir.path().join("missing")),
            Err(BackendError::Io { .. })
        ));
    }
}
