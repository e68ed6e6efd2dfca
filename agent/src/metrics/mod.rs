//! The host's metrics service: round-robin databases of host, VM and SR figures, the
//! `message` class (alerts), guest metrics, and what the HTTP stats paths serve.

pub mod fmt;
pub mod rrd;
pub mod updates;
pub mod xmltree;

use crate::call::Entry;
use crate::Agent;
use std::sync::Arc;

/// The metrics service's state, owned by the agent.
#[derive(Default)]
pub struct Metrics {}

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    Vec::new()
}

/// Starts the service's background work (sampling) for a started agent.
pub fn start(_agent: &Arc<Agent>) {}
