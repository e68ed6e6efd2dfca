//! The host module's settings, read from the daemon's environment when a message needs them
//! (docs/plugins.md lists them).
//!
//! | variable | default | what |
//! |---|---|---|
//! | `XAPID_PLUGIN_DIR` | `/etc/xapi.d/plugins` | where `host.call_plugin` finds plugins |
//! | `XAPID_EXTENSION_DIR` | `/etc/xapi.d/extensions` | where `host.call_extension` finds extensions |
//! | `XAPID_PLUGIN_TIMEOUT` | `3600` | seconds a plugin or extension may run |
//! | `XAPID_PLUGIN_PASS_ENV` | (none) | names of the daemon's variables a plugin also gets |
//! | `XAPID_SYSLOG_RECONFIGURE` | `/opt/xensource/libexec/xe-syslog-reconfigure` | the script `host.syslog_reconfigure` runs |
//! | `XAPID_SET_SYSTEM_HOSTNAME` | `1` on the Xen backend, else `0` | whether `host.set_hostname_live` also sets this machine's hostname |
//! | `XAPID_SHUTDOWN_COMMAND` | `/sbin/shutdown -h now` | what `host.shutdown` runs on Xen (`power.rs`) |
//! | `XAPID_REBOOT_COMMAND` | `/sbin/shutdown -r now` | what `host.reboot` runs on Xen |
//! | `XAPID_SERVER_CERT` | `<state dir>/tls/xapid-cert.pem` | the PEM file `host.get_server_certificate` reads |

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The reference's plugin directory.
pub const DEFAULT_PLUGIN_DIR: &str = "/etc/xapi.d/plugins";
/// The reference's extension directory.
pub const DEFAULT_EXTENSION_DIR: &str = "/etc/xapi.d/extensions";
/// How long a plugin may run unless `XAPID_PLUGIN_TIMEOUT` says otherwise. The reference sets
/// no bound at all; plugins that copy disks run for many minutes, so the bound is generous.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(3600);
/// The most a plugin may write on stdout (its answer).
pub const PLUGIN_STDOUT_LIMIT: usize = 16 << 20;
/// The most a plugin may write on stderr.
pub const PLUGIN_STDERR_LIMIT: usize = 1 << 20;
/// The only variable a plugin gets unless `XAPID_PLUGIN_PASS_ENV` names more: the
/// reference's search path for the commands it runs.
pub const PLUGIN_PATH: &str = "/sbin:/usr/sbin:/bin:/usr/bin";
/// Where XenServer keeps its syslog reconfiguration script.
pub const DEFAULT_SYSLOG_RECONFIGURE: &str = "/opt/xensource/libexec/xe-syslog-reconfigure";

/// How plugins and extensions are run.
#[derive(Clone, Debug)]
pub struct PluginSettings {
    /// Where plugins are.
    pub plugin_dir: PathBuf,
    /// Where extensions are.
    pub extension_dir: PathBuf,
    /// How long one may run before it is killed.
    pub timeout: Duration,
    /// The environment it runs with.
    pub env: Vec<(OsString, OsString)>,
}

impl PluginSettings {
    /// The settings from the daemon's environment.
    pub fn from_env() -> PluginSettings {
        let dir = |var: &str, default: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from(default), PathBuf::from)
        };
        let timeout = std::env::var("XAPID_PLUGIN_TIMEOUT")
            .ok()
            .and_then(|s| parse_timeout(&s))
            .unwrap_or(DEFAULT_PLUGIN_TIMEOUT);
        let pass = std::env::var("XAPID_PLUGIN_PASS_ENV").unwrap_or_default();
        PluginSettings {
            plugin_dir: dir("XAPID_PLUGIN_DIR", DEFAULT_PLUGIN_DIR),
            extension_dir: dir("XAPID_EXTENSION_DIR", DEFAULT_EXTENSION_DIR),
            timeout,
            env: plugin_env(&pass, |name| std::env::var_os(name)),
        }
    }

    /// Settings for plugins in `dir`, with the default environment and `timeout` (tests).
    pub fn in_dir(dir: &Path, timeout: Duration) -> PluginSettings {
        PluginSettings {
            plugin_dir: dir.to_path_buf(),
            extension_dir: dir.to_path_buf(),
            timeout,
            env: plugin_env("", |_| None),
        }
    }
}

/// A positive whole number of seconds.
fn parse_timeout(s: &str) -> Option<Duration> {
    match s.trim().parse::<u64>() {
        Ok(n) if n > 0 => Some(Duration::from_secs(n)),
        _ => None,
    }
}

/// The environment of a plugin: the reference's `PATH`, then each variable `pass` names
/// (separated by spaces or commas) that `lookup` finds, which may replace `PATH`.
pub fn plugin_env(pass: &str, lookup: impl Fn(&str) -> Option<OsString>) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = vec![("PATH".into(), PLUGIN_PATH.into())];
    for name in pass
        .split([' ', ',', '\t', '\n'])
        .filter(|n| !n.is_empty() && !n.contains('='))
    {
        if let Some(v) = lookup(name) {
            env.retain(|(k, _)| k != name);
            env.push((name.into(), v));
        }
    }
    env
}

/// The script `host.syslog_reconfigure` runs.
pub fn syslog_reconfigure_script() -> PathBuf {
    std::env::var_os("XAPID_SYSLOG_RECONFIGURE")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_SYSLOG_RECONFIGURE), PathBuf::from)
}

/// Whether `host.set_hostname_live` also sets the system's hostname: `XAPID_SET_SYSTEM_HOSTNAME`
/// (`1`/`true`/`yes` or `0`/`false`/`no`), else only when the daemon drives a real Xen host.
pub fn set_system_hostname(backend: &str) -> bool {
    match std::env::var("XAPID_SET_SYSTEM_HOSTNAME")
        .ok()
        .as_deref()
        .map(str::trim)
    {
        Some("1" | "true" | "yes") => true,
        Some("0" | "false" | "no") => false,
        _ => backend == "xen",
    }
}

/// The PEM file holding the certificate the daemon serves HTTPS with.
pub fn server_certificate(state_dir: &Path) -> PathBuf {
    std::env::var_os("XAPID_SERVER_CERT")
        .filter(|v| !v.is_empty())
        .map_or_else(|| state_dir.join("tls").join("xapid-cert.pem"), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_environment_is_path_and_what_is_passed() {
        let lookup = |n: &str| match n {
            "PYTHONPATH" => Some(OsString::from("/opt/py")),
            "PATH" => Some(OsString::from("/venv/bin:/usr/bin")),
            _ => None,
        };
        assert_eq!(plugin_env("", lookup), vec![("PATH".into(), PLUGIN_PATH.into())]);
        let env = plugin_env("PYTHONPATH, MISSING PATH A=B", lookup);
        assert_eq!(
            env,
            vec![
                (OsString::from("PYTHONPATH"), OsString::from("/opt/py")),
                (OsString::from("PATH"), OsString::from("/venv/bin:/usr/bin")),
            ]
        );
    }

    #[test]
    fn timeouts_are_positive_seconds() {
        assert_eq!(parse_timeout("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_timeout(" 60 "), Some(Duration::from_secs(60)));
        for bad in ["0", "-1", "", "1.5", "x"] {
            assert_eq!(parse_timeout(bad), None, "{bad}");
        }
    }
}
