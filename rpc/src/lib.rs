//! xapid's RPC front: HTTP on TCP and a unix socket, the XML-RPC and JSON-RPC codecs, and the
//! hand-off of each call to the agent.

mod cli;
pub mod confine;
pub mod data_paths;
pub mod jsonrpc;
pub mod listeners;
pub mod nbd;
pub mod reply;
pub mod server;
pub mod tls;
pub mod xmlrpc;
