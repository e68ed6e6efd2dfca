//! The behaviour table: for every message of the datamodel, the code that carries it out.
//!
//! Each module with behaviour lists its own entries (`behaviour()` → `Vec<Entry>`); this
//! module merges them once, over the generic handler of implicit messages
//! (`implicit.rs`). Everything that asks "what does this message do, and is it carried
//! out?" asks this table: dispatch (`dispatch.rs`), `Async.*`, `system.listMethods`,
//! `docs/api-coverage.md` (`coverage.rs`) and the README's list. `docs/behaviour.md` shows
//! how to find where a message's entry lives.

use crate::call::{Call, CallCtx, Entry, Handler};
use crate::error::ApiError;
use crate::schema::{class_ids, ClassId, MessageId, MessageKind, CLASSES};
use crate::value::Value;
use crate::Agent;
use std::sync::{Arc, OnceLock};

/// Every module's entries, in the order they are merged. A module listed here owns the
/// messages it registers; two modules registering one message is a defect the table's test
/// reports.
fn sources() -> Vec<Vec<Entry>> {
    vec![
        crate::sessions::behaviour(),
        crate::event_from::behaviour(),
        crate::tasks::behaviour(),
        crate::lifecycle::behaviour(),
        crate::storage::behaviour(),
        crate::host::behaviour(),
        crate::secureboot::behaviour(),
        crate::metrics::behaviour(),
        crate::rbac::behaviour(),
        crate::network::behaviour(),
        crate::auth::behaviour(),
        crate::backup::behaviour(),
        crate::pool::behaviour(),
    ]
}

/// One message's row.
#[derive(Clone, Copy)]
struct Row {
    handler: Option<Handler>,
    /// The module whose entry it is; `None` for the generic implicit behaviour.
    module: Option<&'static str>,
    async_form: bool,
}

/// The merged table, indexed by [`MessageId`].
pub struct Table {
    rows: Vec<Vec<Row>>,
    /// Entries that name no message of the datamodel, or a message already taken.
    problems: Vec<String>,
}

impl Table {
    fn build(sources: Vec<Vec<Entry>>) -> Table {
        let mut rows: Vec<Vec<Row>> = CLASSES
            .iter()
            .enumerate()
            .map(|(c, def)| {
                def.messages
                    .iter()
                    .map(|m| Row {
                        handler: (m.kind != MessageKind::Custom).then_some(crate::implicit::handler as Handler),
                        module: None,
                        async_form: async_form_by_rule(ClassId(c), m),
                    })
                    .collect()
            })
            .collect();
        let mut problems = Vec::new();
        for e in sources.into_iter().flatten() {
            let Some(id) = e.class.message_by_name(e.message) else {
                problems.push(format!("{}: {}.{} is no message", e.module, e.class.name(), e.message));
                continue;
            };
            let row = &mut rows[id.class.0][id.index];
            if let Some(other) = row.module {
                problems.push(format!(
                    "{}.{} is registered by {other} and {}",
                    e.class.name(),
                    e.message,
                    e.module
                ));
                continue;
            }
            row.handler = Some(e.handler);
            row.module = Some(e.module);
        }
        for p in &problems {
            tracing::error!(problem = %p, "behaviour table");
        }
        Table { rows, problems }
    }

    fn row(&self, id: MessageId) -> Option<&Row> {
        self.rows.get(id.class.0).and_then(|r| r.get(id.index))
    }

    /// The handler of a message, or `None` when this build does not carry it out.
    pub fn handler(&self, id: MessageId) -> Option<Handler> {
        self.row(id).and_then(|r| r.handler)
    }

    /// Whether this build carries the message out.
    pub fn implemented(&self, id: MessageId) -> bool {
        self.handler(id).is_some()
    }

    /// The module whose entry carries the message out (`None`: the generic implicit
    /// behaviour, or not carried out).
    pub fn owner(&self, id: MessageId) -> Option<&'static str> {
        self.row(id).and_then(|r| r.module)
    }

    /// Whether the message also exists as `Async.<Class>.<message>`.
    pub fn async_form(&self, id: MessageId) -> bool {
        self.row(id).is_some_and(|r| r.async_form)
    }

    /// Entries that could not be placed (none in a correct build).
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

/// The reference declares session and event calls, and the message class's queries, without
/// an asynchronous form; of the implicit messages only the constructor and destructor have
/// one.
fn async_form_by_rule(class: ClassId, m: &crate::schema::MessageDef) -> bool {
    // Declared synchronous-only in the reference's IDL, against the rule below.
    const SYNC_ONLY: &[(&str, &str)] = &[("pool", "get_guest_secureboot_readiness")];
    if SYNC_ONLY.contains(&(class.name(), m.name)) {
        return false;
    }
    if class == class_ids::session
        || class == class_ids::event
        || (class == class_ids::message && m.name.starts_with("get"))
    {
        return false;
    }
    m.takes_session() && (!m.implicit || matches!(m.kind, MessageKind::Create | MessageKind::Destroy))
}

/// The table, merged on first use.
pub fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| Table::build(sources()))
}

/// Runs `c` as a task (`Async.*`) and returns the task's ref at once.
pub async fn spawn_async(agent: &Arc<Agent>, ctx: &CallCtx, c: Call, handler: Handler) -> Result<Value, ApiError> {
    crate::tasks::run_async(agent, ctx, c, handler).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::method;

    #[test]
    fn every_entry_names_one_message_and_no_message_is_taken_twice() {
        assert!(table().problems().is_empty(), "{:?}", table().problems());
    }

    #[test]
    fn a_duplicate_or_unknown_entry_is_reported() {
        let e = crate::entry!(class_ids::VM, "start", |_a, _x, _c| Ok(Value::None));
        let bogus = crate::entry!(class_ids::VM, "no_such_message", |_a, _x, _c| Ok(Value::None));
        let t = Table::build(vec![vec![e, e, bogus]]);
        assert_eq!(t.problems().len(), 2, "{:?}", t.problems());
    }

    #[test]
    fn implicit_messages_are_generic_unless_a_module_owns_them() {
        let t = table();
        let get = method("VM.get_name_label").unwrap().id;
        assert!(t.implemented(get));
        assert_eq!(t.owner(get), None);
        let start = method("VM.start").unwrap().id;
        assert_eq!(t.owner(start), Some("agent::lifecycle"));
        let vdi_create = method("VDI.create").unwrap().id;
        assert_eq!(t.owner(vdi_create), Some("agent::storage::vdi"));
    }

    #[test]
    fn async_forms_follow_the_reference() {
        let t = table();
        assert!(t.async_form(method("VM.start").unwrap().id));
        assert!(t.async_form(method("VM.create").unwrap().id));
        assert!(!t.async_form(method("VM.get_name_label").unwrap().id));
        assert!(!t.async_form(method("session.login_with_password").unwrap().id));
        assert!(!t.async_form(method("event.from").unwrap().id));
    }
}
