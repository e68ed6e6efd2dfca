//! Which messages this build carries out, read from the behaviour table and rendered into
//! `docs/api-coverage.md` (a test keeps the file current; `tests/tests/coverage_walk.rs`
//! checks it against a live daemon).

use crate::behaviour::table;
use crate::schema::{ClassId, MessageId, MessageKind, CLASSES};
use std::fmt::Write as _;

/// Whether a message does its work in this build (otherwise it answers NOT_IMPLEMENTED).
pub fn implemented(id: MessageId) -> bool {
    table().implemented(id)
}

/// Every `Class.message` that answers `NOT_IMPLEMENTED [function]` in this build.
pub fn not_implemented() -> Vec<String> {
    MessageId::all()
        .filter(|id| !implemented(*id))
        .map(MessageId::wire_name)
        .collect()
}

/// The coverage document.
pub fn render() -> String {
    let mut out = String::new();
    let (mut total, mut done, mut asyncs) = (0, 0, 0);
    let mut body = String::new();
    for (ci, c) in CLASSES.iter().enumerate() {
        let ids: Vec<MessageId> = (0..c.messages.len())
            .map(|index| MessageId {
                class: ClassId(ci),
                index,
            })
            .collect();
        let missing: Vec<&str> = ids
            .iter()
            .filter(|id| !implemented(**id))
            .map(|id| id.def().name)
            .collect();
        let custom: Vec<&str> = ids
            .iter()
            .filter(|id| implemented(**id) && (id.def().kind == MessageKind::Custom || table().owner(**id).is_some()))
            .map(|id| id.def().name)
            .collect();
        total += c.messages.len();
        done += c.messages.len() - missing.len();
        asyncs += ids.iter().filter(|id| table().async_form(**id)).count();
        let _ = writeln!(
            body,
            "## {}\n\n{} messages: {} generic (accessors, create, destroy, queries), {} with behaviour, {} NOT_IMPLEMENTED.\n",
            c.name,
            c.messages.len(),
            c.messages.len() - missing.len() - custom.len(),
            custom.len(),
            missing.len()
        );
        if !custom.is_empty() {
            let _ = writeln!(
                body,
                "With behaviour: {}\n",
                custom.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
            );
        }
        if !missing.is_empty() {
            let _ = writeln!(
                body,
                "Answer `NOT_IMPLEMENTED [function]`: {}\n",
                missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let _ = writeln!(
        out,
        "# API coverage\n\nGenerated from the behaviour table (`agent/src/behaviour.rs`) by `agent/src/coverage.rs`; \
         `cargo test -p agent coverage` checks it is current (`UPDATE_DOCS=1 cargo test -p agent coverage` rewrites it), \
         and `tests/tests/coverage_walk.rs` calls every message on a live daemon and checks that exactly the ones \
         listed here answer `NOT_IMPLEMENTED`.\n\n\
         {} classes, {} messages: {} carried out, {} answer `NOT_IMPLEMENTED [function]`. \
         {} of them also exist as `Async.<Class>.<message>` returning a task.\n",
        CLASSES.len(),
        total,
        done,
        total - done,
        asyncs
    );
    out.push_str(&body);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn coverage_doc_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api-coverage.md");
        let want = super::render();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "docs/api-coverage.md is stale: run UPDATE_DOCS=1 cargo test -p agent coverage"
        );
    }
}
