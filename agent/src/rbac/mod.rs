//! Who may do what: the reference's role-based access control.
//!
//! - [`table`]: the six roles (and the internal `client-cert`) and their permissions,
//!   generated from the datamodel's per-message roles;
//! - [`check`]: the check dispatch makes before any handler runs (`RBAC_PERMISSION_DENIED
//!   [permission, message]`); it carries no message out;
//! - [`roles`]: the `role` objects (made at start) and the role messages, with `subject`'s
//!   role messages.
//!
//! Sessions hold the permissions of their subject's roles from login on
//! (`session.rbac_permissions`); the local superuser (root, a trusted local peer) passes
//! every check. Directory users and subjects are `auth`'s. `docs/rbac.md` has the role
//! table.

pub mod check;
pub mod doc;
pub mod roles;
pub mod table;

#[cfg(test)]
mod tests;

pub use check::{authorize, Caller};
pub use roles::{behaviour, ensure_roles};
