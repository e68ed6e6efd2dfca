//! `/cli`: the XenSource thin CLI protocol that `xe` speaks, served by the daemon.
//!
//! A client connects, sends `POST /cli` with its command line (one argument a line, ending
//! with `username=` and `password=`), and the connection then carries the protocol's frames
//! (see the `xe::protocol` codec): the server prints, asks for files, hands out data-path
//! URLs for uploads and downloads, and finally says `Exit`. The command runs as a client of
//! the API inside the daemon: every effect goes through [`agent::call`] with a session logged
//! in from the client's credentials.
//!
//! - [`front`]: takes `POST /cli` connections away from the HTTP stack (which could not
//!   answer without a status line) and acknowledges the CLI's uploads early.
//! - [`session`]: one connection, from the request to `Exit`.
//! - [`args`]: the command line as the reference parses it.
//! - [`printer`]: record blocks, lists and `--minimal` output.
//! - [`records`]: the `<class>-list` and `-param-*` commands, generated from the datamodel.
//! - [`commands`]: the command table, help, and the hand-written commands.

pub(crate) mod args;
pub(crate) mod commands;
pub(crate) mod front;
pub(crate) mod printer;
pub(crate) mod records;
pub(crate) mod session;

pub use front::Front;

use actix_web::HttpResponse;

/// Why a command failed; [`session`] turns each into the reference's output and exit code.
#[derive(Debug)]
pub(crate) enum CliError {
    /// A XenAPI error (from a call, or a task's `error_info`).
    Api {
        /// The code.
        code: String,
        /// Its parameters.
        params: Vec<String>,
    },
    /// The command cannot go on ("Error: …").
    Failure(String),
    /// A required parameter is missing.
    ParamNotFound(String),
    /// The command line does not parse.
    Syntax(String),
    /// No command of that name.
    UnknownCommand(String),
    /// Some of the objects a `--multiple` operation ran on failed: (uuid, why).
    Multiple(Vec<(String, String)>),
    /// A field the record does not have.
    MissingParameter(String),
    /// The login failed: what to tell the user.
    Login(&'static str),
    /// The command printed why already: exit with this status.
    Exit(i32),
    /// The connection broke or the client broke the protocol.
    Protocol(String),
}

impl CliError {
    /// `Error: <msg>`.
    pub(crate) fn fail(msg: impl Into<String>) -> CliError {
        CliError::Failure(msg.into())
    }
}

impl From<agent::ApiError> for CliError {
    fn from(e: agent::ApiError) -> CliError {
        CliError::Api {
            code: e.code().to_owned(),
            params: e.params(),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        CliError::Protocol(e.to_string())
    }
}

/// `POST /cli` that reached the HTTP stack: a request on a keep-alive connection that carried
/// other requests first. The thin protocol needs the connection to itself.
pub async fn not_first() -> HttpResponse {
    HttpResponse::BadRequest()
        .content_type("text/plain")
        .body("the thin CLI protocol (POST /cli) must be the first request on its connection\n")
}
