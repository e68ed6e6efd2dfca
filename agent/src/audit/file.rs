//! The audit log on disk: `<state dir>/audit.log`, appended a line at a time (mode 0600);
//! when it passes its size limit it becomes `audit.log.1` (the older ones move up, the
//! oldest beyond the kept count is deleted) and a new one is started.

use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The log's file name in the state dir.
pub const FILE_NAME: &str = "audit.log";
/// The size at which the log is rotated (bytes).
pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// How many rotated files are kept (`audit.log.1` … `audit.log.<n>`).
pub const DEFAULT_KEEP: u32 = 10;

/// Failures of the audit log's file.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file could not be opened, written or rotated.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.display().to_string(),
        source,
    }
}

struct Open {
    file: File,
    size: u64,
}

/// The rotating log file.
pub struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    open: Mutex<Open>,
}

fn open_append(path: &Path) -> Result<Open, AuditError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    let size = file.metadata().map_err(io(path))?.len();
    Ok(Open { file, size })
}

impl LogFile {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: &Path, max_bytes: u64, keep: u32) -> Result<LogFile, AuditError> {
        let path = dir.join(FILE_NAME);
        let open = open_append(&path)?;
        Ok(LogFile {
            path,
            max_bytes: max_bytes.max(1),
            keep,
            open: Mutex::new(open),
        })
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    /// Appends one line (a newline is added), rotating first when the file is full.
    pub fn append(&self, line: &str) -> Result<(), AuditError> {
        let mut open = self.open.lock();
        if open.size > 0 && open.size + line.len() as u64 + 1 > self.max_bytes {
            self.rotate(&mut open)?;
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        open.file.write_all(&buf).map_err(io(&self.path))?;
        open.size += buf.len() as u64;
        Ok(())
    }

    fn rotate(&self, open: &mut Open) -> Result<(), AuditError> {
        if self.keep == 0 {
            std::fs::remove_file(&self.path).map_err(io(&self.path))?;
        } else {
            let oldest = self.rotated(self.keep);
            if oldest.exists() {
                std::fs::remove_file(&oldest).map_err(io(&oldest))?;
            }
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1)).map_err(io(&from))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1)).map_err(io(&self.path))?;
        }
        *open = open_append(&self.path)?;
        Ok(())
    }

    /// Every line, oldest file first, whose timestamp is at or after `since` (the
    /// reference's comparison: the 21 characters after the line's first `[`, against
    /// `since` as text; an empty `since` takes every line).
    pub fn lines_since(&self, since: &str) -> Vec<String> {
        let _writer = self.open.lock();
        let mut files: Vec<PathBuf> = (1..=self.keep).rev().map(|n| self.rotated(n)).collect();
        files.push(self.path.clone());
        let mut out = Vec::new();
        for p in files {
            let Ok(f) = File::open(&p) else { continue };
            for line in BufReader::new(f).lines().map_while(Result::ok) {
                if passes(&line, since) {
                    out.push(line);
                }
            }
        }
        out
    }
}

/// The length of the timestamp the `since` filter compares.
const STAMP_LEN: usize = 21;

fn passes(line: &str, since: &str) -> bool {
    let start = line.find('[').map_or(0, |i| i + 1);
    let Some(stamp) = line.get(start..start + STAMP_LEN) else {
        return false;
    };
    since.is_empty() || stamp >= since
}

/// A `since` parameter in the log's timestamp form: ISO 8601 with its `-` and `Z` dropped
/// (`2009-09-10T11:31:11.417Z` → `20090910T11:31:11.417`), as the reference maps it.
pub fn since_of_iso8601(s: &str) -> String {
    s.chars().filter(|c| *c != '-' && *c != 'Z').collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_n() {
        let dir = std::env::temp_dir().join(format!("xapid-audit-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = LogFile::open(&dir, 100, 2).unwrap();
        for i in 0..12 {
            log.append(&format!(
                "[20260101T00:00:{i:02}.000Z|audit] line {i:02} {}",
                "x".repeat(20)
            ))
            .unwrap();
        }
        assert!(dir.join("audit.log.1").exists());
        assert!(dir.join("audit.log.2").exists());
        assert!(!dir.join("audit.log.3").exists());
        for p in ["audit.log", "audit.log.1", "audit.log.2"] {
            assert!(
                std::fs::metadata(dir.join(p)).unwrap().len() <= 100,
                "{p} over the limit"
            );
        }
        let all = log.lines_since("");
        // Oldest first, the newest last, none lost within what is kept.
        assert!(all.last().unwrap().contains("line 11"));
        let nums: Vec<u32> = all
            .iter()
            .map(|l| l.split("line ").nth(1).unwrap()[..2].parse().unwrap())
            .collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
        let recent = log.lines_since(&since_of_iso8601("2026-01-01T00:00:10Z"));
        assert_eq!(recent.len(), 2, "{recent:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("audit.log")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn since_maps_iso8601() {
        assert_eq!(since_of_iso8601("2009-09-10T11:31:11.417Z"), "20090910T11:31:11.417");
        assert_eq!(since_of_iso8601("20090910T11:31"), "20090910T11:31");
        assert!(passes("[20090910T11:31:11.417Z|audit] x", "20090910T11:31"));
        assert!(!passes("[20090910T11:30:11.417Z|audit] x", "20090910T11:31"));
        assert!(!passes("short", ""));
    }
}
