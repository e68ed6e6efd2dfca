//! End-to-end tests against the real xapid binary live in tests/tests/; this library holds
//! what they share: starting and killing the daemon, a blocking HTTP/1.1 client, XenAPI over
//! JSON-RPC and XML-RPC, the vendored datamodel, and whole-store consistency checks.

pub mod aclient;
pub mod check;
pub mod daemon;
pub mod datamodel;
pub mod fixtures;
pub mod http;
pub mod rpc;
pub mod xmlrpc;
