//! xapid's object model.

pub mod hypervisor;
