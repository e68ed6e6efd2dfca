//! UEFI mode, Secure Boot readiness and vTPM contents.

use crate::call::Entry;

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    Vec::new()
}
