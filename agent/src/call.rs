//! What every message handler receives and returns, and the shape of a behaviour-table entry.
//!
//! This module is the only thing the dispatcher (`dispatch.rs`) and the modules with behaviour
//! share: they never import each other. A module with behaviour lists its entries
//! (`pub fn behaviour() -> Vec<Entry>`); `behaviour.rs` merges them into the one table.

use crate::error::ApiError;
use crate::schema::{ClassId, MessageDef, MessageId};
use crate::value::Value;
use crate::Agent;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Who is calling, as the transport knows it.
#[derive(Clone, Debug, Default)]
pub struct CallCtx {
    /// A uid-0 peer on the unix socket.
    pub trusted_root: bool,
    /// The task this call runs under, for `Async.*` calls.
    pub task: Option<String>,
    /// The pool secret a call forwarded by another host of the pool carries (the
    /// `x-xapid-pool-secret` header), if any.
    pub pool_secret: Option<String>,
}

/// A call after checking: the message, its typed arguments (session first, where it has one).
pub struct Call {
    /// The message's id.
    pub id: MessageId,
    /// Owning class.
    pub class: ClassId,
    /// The message.
    pub message: &'static MessageDef,
    /// The session, when the message takes one.
    pub session: Option<String>,
    /// Typed arguments after the session.
    pub args: Vec<Value>,
}

impl Call {
    /// Argument `i` (after the session) as text or a ref; empty when absent.
    pub fn str_arg(&self, i: usize) -> &str {
        self.args.get(i).and_then(Value::as_str).unwrap_or("")
    }
    /// Argument `i` as a ref, or `FIELD_TYPE_ERROR [its name]`.
    pub fn ref_arg(&self, i: usize) -> Result<&str, ApiError> {
        self.args
            .get(i)
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::field_type(self.message.params.get(i + 1).map_or("self", |p| p.name)))
    }
    /// Argument `i` as an int; 0 when absent.
    pub fn int_arg(&self, i: usize) -> i64 {
        self.args.get(i).and_then(Value::as_int).unwrap_or(0)
    }
    /// Argument `i` as a bool; false when absent.
    pub fn bool_arg(&self, i: usize) -> bool {
        self.args.get(i).and_then(Value::as_bool).unwrap_or(false)
    }
    /// Argument `i` as a value (maps, sets, enums); `Value::None` when absent.
    pub fn arg(&self, i: usize) -> Value {
        self.args.get(i).cloned().unwrap_or(Value::None)
    }
    /// The session's ref; empty for session-less messages.
    pub fn session_ref(&self) -> &str {
        self.session.as_deref().unwrap_or("")
    }
    /// `Class.message`, as on the wire.
    pub fn wire_name(&self) -> String {
        self.id.wire_name()
    }
}

/// What a handler returns: the call's result, once it has run.
pub type Reply = Pin<Box<dyn Future<Output = Result<Value, ApiError>> + Send + 'static>>;

/// The code that carries a message out.
pub type Handler = fn(Arc<Agent>, CallCtx, Call) -> Reply;

/// One row of the behaviour table: `Class.message` → its handler.
#[derive(Clone, Copy)]
pub struct Entry {
    /// The message's class.
    pub class: ClassId,
    /// The message's name within the class.
    pub message: &'static str,
    /// Its handler.
    pub handler: Handler,
    /// The module that registered it (`agent::lifecycle`), for the coverage document.
    pub module: &'static str,
}

/// Writes an entry: `entry!(class_ids::VM, "start", |agent, ctx, call| async body)`.
/// The body is an `async move` block's contents returning `Result<Value, ApiError>`.
#[macro_export]
macro_rules! entry {
    ($class:expr, $message:literal, |$agent:ident, $ctx:tt, $call:tt| $body:expr) => {
        $crate::call::Entry {
            class: $class,
            message: $message,
            handler: {
                // A body that rustfmt wrote as a block would otherwise warn here.
                #[allow(unused_braces)]
                let handler: $crate::call::Handler =
                    |$agent: ::std::sync::Arc<$crate::Agent>,
                     $ctx: $crate::call::CallCtx,
                     $call: $crate::call::Call|
                     -> $crate::call::Reply { ::std::boxed::Box::pin(async move { $body }) };
                handler
            },
            module: module_path!(),
        }
    };
}
