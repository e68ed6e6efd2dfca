//! The thin CLI protocol shared by the `xe` client and the daemon's `/cli` server.

pub mod protocol;
