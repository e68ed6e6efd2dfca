//! The host and the pool this daemon runs: the messages about them that have behaviour here.
//!
//! - `plugins`: `host.call_plugin`, `host.call_extension` (docs/plugins.md);
//! - `certificates`: this host's `Certificate` record (the HTTPS certificate the pool pins);
//! - `admin`: logs, debug keys, syslog, the hostname, the server certificate;
//! - `license`: the one edition;
//! - `agent_process`: `host.restart_agent`, `host.shutdown_agent` (the daemon's own process);
//! - `server_identity`: the certificate HTTPS serves, `host.install_server_certificate` and the resets;
//! - `power`: `host.shutdown`, `host.reboot`, `host.power_on`, `host.set_power_on_mode`;
//! - `runner`: how helper programs run (bounded time and output, their own process group);
//! - `xmlrpc`: what plugins and extensions read and print;
//! - `settings`: the environment variables that configure all of this.

pub mod admin;
pub mod agent_process;
pub mod certificates;
pub mod license;
pub mod plugins;
pub mod power;
pub mod runner;
pub mod server_identity;
pub mod settings;
pub mod xmlrpc;

use crate::call::Entry;
use crate::error::ApiError;
use crate::schema::class_ids;
use crate::Agent;

/// The host and pool messages carried out here and in the submodules.
pub fn behaviour() -> Vec<Entry> {
    let mut v = plugins::behaviour();
    v.extend(admin::behaviour());
    v.extend(license::behaviour());
    v.extend(agent_process::behaviour());
    v.extend(power::behaviour());
    v.extend(server_identity::behaviour());
    v
}

/// `HANDLE_INVALID [host, ref]` unless `host` names a host.
pub(crate) fn this_host(agent: &Agent, host: &str) -> Result<(), ApiError> {
    if agent.exists(class_ids::host, host) {
        Ok(())
    } else {
        Err(ApiError::handle_invalid("host", host))
    }
}

#[cfg(test)]
mod tests;
