//! The host and the pool this daemon runs: the messages about them that have behaviour here.

pub mod plugins;

use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::schema::class_ids;

/// The host and pool messages carried out here and in the submodules.
pub fn behaviour() -> Vec<Entry> {
    let mut v = plugins::behaviour();
    v.push(entry!(class_ids::host, "destroy", |_agent, _, _c| {
        Err(ApiError::not_allowed(
            "the host cannot be destroyed while this daemon runs it",
        ))
    }));
    v
}
