//! Which messages this build carries out, rendered from the datamodel into
//! `docs/api-coverage.md` (a test keeps the file current).

use crate::api::is_async_eligible;
use crate::handlers::IMPLEMENTED;
use crate::schema::{MessageKind, CLASSES};
use std::fmt::Write as _;

/// Whether a message does its work in this build (otherwise it answers NOT_IMPLEMENTED).
pub fn implemented(class: &str, m: &crate::schema::MessageDef) -> bool {
    let name = format!("{class}.{}", m.name);
    m.kind != MessageKind::Custom
        || IMPLEMENTED.contains(&name.as_str())
        || crate::storage::IMPLEMENTED.contains(&name.as_str())
}

/// The coverage document.
pub fn render() -> String {
    let mut out = String::new();
    let (mut total, mut done, mut asyncs) = (0, 0, 0);
    let mut body = String::new();
    for c in CLASSES {
        let missing: Vec<&str> = c
            .messages
            .iter()
            .filter(|m| !implemented(c.name, m))
            .map(|m| m.name)
            .collect();
        let custom: Vec<&str> = c
            .messages
            .iter()
            .filter(|m| m.kind == MessageKind::Custom && implemented(c.name, m))
            .map(|m| m.name)
            .collect();
        total += c.messages.len();
        done += c.messages.len() - missing.len();
        asyncs += c
            .messages
            .iter()
            .filter(|m| {
                is_async_eligible(
                    crate::schema::ClassId::by_name(c.name).unwrap_or(crate::schema::class_ids::session),
                    m,
                )
            })
            .count();
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
        "# API coverage\n\nGenerated from the datamodel by `agent/src/coverage.rs`; `cargo test -p agent coverage` checks it is current \
         (`UPDATE_DOCS=1 cargo test -p agent coverage` rewrites it).\n\n\
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
