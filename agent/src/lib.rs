//! xapid's object model: the datamodel's tables, typed values, the durable store, the event
//! log, and (later) the per-object actors and the hypervisor backends.

pub mod schema;
pub mod error;
pub mod value;
pub mod events;
pub mod objects;
pub mod store;
