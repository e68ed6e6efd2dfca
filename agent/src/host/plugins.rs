//! Host plugins: `host.call_plugin` and `host.call_extension`.

use crate::call::Entry;

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    Vec::new()
}
