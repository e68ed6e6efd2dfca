//! This host's own list of the operation marks it has made in a pool (`<state dir>/operations/`,
//! one file per mark: its id, holding the class and the object). A mark is an entry of an
//! object's `current_operations`; a host killed while it runs an operation leaves it behind,
//! and in a pool nothing in the database says which host made it (a `VM.start` marks a VM
//! resident nowhere; a `VM.hard_shutdown` killed after it wrote `Halted` leaves a VM resident
//! nowhere). At start-up the host clears the marks its list names ([`leftovers`]).
//!
//! The files are not synced: they outlive the process (a `kill -9`, a crash), which is what
//! leaves marks; a host that loses power loses its page cache, and a mark it made then stays
//! until cleared by hand (`VM.power_state_reset` does not touch marks either).

use crate::schema::ClassId;
use std::path::{Path, PathBuf};

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("operations")
}

/// A mark's file name: its id without what a file name cannot hold.
fn file(state_dir: &Path, op_id: &str) -> PathBuf {
    let name: String = op_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect();
    dir(state_dir).join(name)
}

/// Notes a mark about to be written (before its write: a host killed in between has a note
/// whose mark may or may not be there, and clearing an absent mark changes nothing).
pub fn note(state_dir: &Path, class: ClassId, reference: &str, op_id: &str) {
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir(state_dir))?;
        std::fs::write(
            file(state_dir, op_id),
            format!("{}\n{reference}\n{op_id}\n", class.name()),
        )
    };
    if let Err(e) = write() {
        tracing::warn!(op_id, error = %e, "cannot note an operation mark in the state dir");
    }
}

/// Forgets a mark once it is cleared (or was never written).
pub fn forget(state_dir: &Path, op_id: &str) {
    match std::fs::remove_file(file(state_dir, op_id)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(op_id, error = %e, "cannot remove an operation mark's note"),
    }
}

/// Forgets every note (a host alone clears every mark at start-up).
pub fn forget_all(state_dir: &Path) {
    match std::fs::remove_dir_all(dir(state_dir)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "cannot remove the operation mark notes"),
    }
}

/// A mark a previous run of this host noted and did not clear.
pub struct Leftover {
    pub class: ClassId,
    pub reference: String,
    pub op_id: String,
}

/// The marks previous runs left (unreadable notes are removed and skipped).
pub fn leftovers(state_dir: &Path) -> Vec<Leftover> {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let mut lines = text.lines();
        match (lines.next().and_then(ClassId::by_name), lines.next(), lines.next()) {
            (Some(class), Some(reference), Some(op_id)) => out.push(Leftover {
                class,
                reference: reference.to_owned(),
                op_id: op_id.to_owned(),
            }),
            _ => {
                tracing::warn!(path = %e.path().display(), "an unreadable operation mark note; removed");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::class_ids;

    #[test]
    fn a_noted_mark_is_a_leftover_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        note(state, class_ids::VM, "OpaqueRef:vm", "OpaqueRef:op/1");
        note(state, class_ids::VBD, "OpaqueRef:vbd", "OpaqueRef:op2");
        let mut left: Vec<(ClassId, String, String)> = leftovers(state)
            .into_iter()
            .map(|l| (l.class, l.reference, l.op_id))
            .collect();
        left.sort_by(|a, b| a.2.cmp(&b.2));
        assert_eq!(
            left,
            vec![
                (class_ids::VM, "OpaqueRef:vm".to_owned(), "OpaqueRef:op/1".to_owned()),
                (class_ids::VBD, "OpaqueRef:vbd".to_owned(), "OpaqueRef:op2".to_owned()),
            ]
        );
        forget(state, "OpaqueRef:op/1");
        forget(state, "OpaqueRef:never");
        let left: Vec<String> = leftovers(state).into_iter().map(|l| l.op_id).collect();
        assert_eq!(left, vec!["OpaqueRef:op2".to_owned()]);
        std::fs::write(dir.path().join("operations").join("junk"), "nonsense").unwrap();
        assert_eq!(leftovers(state).len(), 1);
        assert!(!dir.path().join("operations").join("junk").exists());
        forget_all(state);
        assert!(leftovers(state).is_empty());
        forget_all(state);
    }
}
