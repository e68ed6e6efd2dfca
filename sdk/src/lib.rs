#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

#[macro_use]
mod macros;

mod client;
mod codec;
mod data_path;
mod datetime;
mod error;
mod events;
mod reference;
mod task;
mod transport;

/// Every enum of the datamodel (`VmPowerState`, `TaskStatusType`, …) and the error codes
/// ([`ErrorCode`](enums::ErrorCode)).
///
/// Each enum is written and read with its wire spellings; a value this SDK does not know
/// is kept as `Unrecognized(spelling)` and sent back as it came, so a newer server's values
/// neither fail a call nor get lost on the way back.
#[rustfmt::skip]
#[path = "generated/enums.rs"]
pub mod enums;

#[rustfmt::skip]
#[path = "generated/classes.rs"]
mod classes;

/// The calls of each class: `session.vm()` is a [`VMApi`](api::VMApi), and so on.
///
/// Every message of the datamodel is a method returning a [`Call`], a future of its typed
/// result; messages with an `Async.` form also have an `async_` method returning the
/// [`AsyncTask`] that runs it.
#[rustfmt::skip]
#[path = "generated/api.rs"]
pub mod api;

#[cfg(test)]
#[rustfmt::skip]
#[path = "generated/samples.rs"]
mod samples;

pub use classes::class;
pub use classes::*;
pub use client::{Call, Client, ClientBuilder, Session, Wire};
pub use data_path::DiskFormat;
pub use datetime::DateTime;
pub use enums::ErrorCode;
pub use error::{ApiError, Error, ErrorParam};
pub use events::{EventBatch, EventStream, Snapshot};
pub use reference::{Class, Ref, NULL_REF};
pub use task::{parse_task_result, AsyncTask};
pub use transport::AcceptAnyCertificate;

/// The result of this crate's calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
