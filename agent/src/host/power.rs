//! The host machine's power: `host.shutdown`, `host.reboot`, `host.power_on`,
//! `host.set_power_on_mode`, and at start whether the host takes VMs again.
//!
//! `shutdown` and `reboot` run on the host they name (a pool forwards them there). As the
//! reference's do, they refuse an enabled host (`HOST_NOT_DISABLED`: `host.disable` first) and a
//! host where a guest still runs (`HOST_IN_USE [host, vm, ref]`: `host.evacuate` first), note
//! on disk that the host stays disabled until it boots again, answer, and act a second later:
//! on Xen the machine itself powers off or reboots (`XAPID_SHUTDOWN_COMMAND`,
//! `XAPID_REBOOT_COMMAND`); on the simulator, whose machine is the daemon's own process, the
//! process exits (shutdown) or runs itself again (reboot, the same way as
//! `host.restart_agent`).
//!
//! `power_on` runs on the host that receives it (the dead host cannot): as the reference's, it
//! refuses a live host (`HOST_IS_LIVE`) and a host without a power-on mode
//! (`HOST_POWER_ON_MODE_DISABLED`), then calls the plugin `power-on-host` (function `main`,
//! argument `remote_host_uuid`), which reads the host's `power_on_mode` and `power_on_config`
//! through the API, wakes the machine (Wake-on-LAN, IPMI, a custom module) and answers `True`
//! once the host is live; anything else fails the call.
//!
//! At start, as the reference's toolstack does, the host is enabled again unless it was shut
//! down or rebooted and has not booted since (the note's boot id is this boot's): a
//! `host.disable` lasts until the daemon restarts.

use super::settings::PluginSettings;
use crate::call::{Call, Entry};
use crate::entry;
use crate::error::ApiError;
use crate::schema::enums::VmPowerState;
use crate::schema::{class_ids, fields};
use crate::value::Value;
use crate::Agent;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// The reference's plugin that wakes a host, and its function.
pub const POWER_ON_PLUGIN: &str = "power-on-host";
const POWER_ON_FN: &str = "main";

/// What the machine runs to power off or reboot on Xen, unless the environment says otherwise.
const SHUTDOWN_COMMAND: &str = "/sbin/shutdown -h now";
const REBOOT_COMMAND: &str = "/sbin/shutdown -r now";

/// The note that this host stays disabled until its machine boots again.
const UNTIL_REBOOT_FILE: &str = "host-disabled-until-reboot";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PowerOp {
    Shutdown,
    Reboot,
}

impl PowerOp {
    /// Its name among the host's operations.
    fn name(self) -> &'static str {
        match self {
            PowerOp::Shutdown => "shutdown",
            PowerOp::Reboot => "reboot",
        }
    }
}

/// The shutdown or reboot this process has been asked for.
static PENDING: Mutex<Option<PowerOp>> = Mutex::new(None);

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::host, "shutdown", |agent, _, c| power_off(
            &agent,
            &c,
            PowerOp::Shutdown
        )
        .await),
        entry!(class_ids::host, "reboot", |agent, _, c| power_off(
            &agent,
            &c,
            PowerOp::Reboot
        )
        .await),
        entry!(class_ids::host, "power_on", |agent, _, c| power_on(&agent, &c).await),
        entry!(class_ids::host, "set_power_on_mode", |agent, _, c| {
            let host = c.ref_arg(0)?.to_owned();
            super::this_host(&agent, &host)?;
            let mode = c.str_arg(1).to_owned();
            let config = c.arg(2).clone();
            agent
                .store
                .write(|tx| {
                    crate::objects::set_field(
                        tx,
                        class_ids::host,
                        &host,
                        fields::host::power_on_mode,
                        Value::str(mode.clone()),
                    )?;
                    crate::objects::set_field(
                        tx,
                        class_ids::host,
                        &host,
                        fields::host::power_on_config,
                        config.clone(),
                    )
                })
                .await?;
            Ok(Value::None)
        }),
    ]
}

/// This machine's boot: the kernel's boot id on Xen; on the simulator, whose machine is the
/// process, one drawn when the process started.
fn boot_id(agent: &Agent) -> String {
    static PROCESS_BOOT: OnceLock<String> = OnceLock::new();
    if agent.hypervisor.backend_name() == "simulator" {
        return PROCESS_BOOT.get_or_init(|| uuid::Uuid::new_v4().to_string()).clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn until_reboot_path(agent: &Agent) -> PathBuf {
    agent.state_dir.join(UNTIL_REBOOT_FILE)
}

/// Whether this host was shut down or rebooted during this boot (it stays disabled).
pub fn disabled_until_reboot(agent: &Agent) -> bool {
    std::fs::read_to_string(until_reboot_path(agent)).is_ok_and(|s| s.trim() == boot_id(agent))
}

/// Writes the note a shutdown writes, without shutting down (unit tests).
#[cfg(test)]
pub fn note_for_tests(agent: &Agent) {
    let _ = crate::fsutil::write_private(&until_reboot_path(agent), boot_id(agent).as_bytes());
}

/// At start: the host enabled again, unless it is disabled until it boots again.
pub async fn at_start(agent: &Agent) -> Result<(), ApiError> {
    let path = until_reboot_path(agent);
    let enabled = !disabled_until_reboot(agent);
    if enabled && path.exists() {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(error = %e, path = %path.display(), "cannot remove the note of an earlier shutdown");
        }
    }
    let host = agent.host.clone();
    let now = agent
        .store
        .get(class_ids::host, &host)
        .map(|h| h.get(fields::host::enabled) == &Value::Bool(true));
    if now.is_some() && now != Some(enabled) {
        agent
            .store
            .write(|tx| {
                crate::objects::set_field(tx, class_ids::host, &host, fields::host::enabled, Value::Bool(enabled))
            })
            .await?;
        tracing::info!(host = %host, enabled, "host enabled state at start");
    }
    Ok(())
}

/// The first guest running or paused on `host`, if any.
fn resident_guest(agent: &Agent, host: &str) -> Option<String> {
    let live = [VmPowerState::Running.value(), VmPowerState::Paused.value()];
    crate::pool::dead_host::guests_on(agent, host)
        .into_iter()
        .find(|v| live.contains(v.get(fields::VM::power_state)))
        .map(|v| v.reference.clone())
}

async fn power_off(agent: &std::sync::Arc<Agent>, c: &Call, op: PowerOp) -> Result<Value, ApiError> {
    let host = c.ref_arg(0)?.to_owned();
    super::this_host(agent, &host)?;
    if crate::pool::maintenance::is_enabled(agent, &host) {
        return Err(ApiError::HostNotDisabled {});
    }
    if let Some(vm) = resident_guest(agent, &host) {
        return Err(ApiError::HostInUse {
            host,
            kind: "vm".to_owned(),
            object: vm,
        });
    }
    if let Some(pending) = PENDING.lock().map(|g| *g).unwrap_or(None) {
        return Err(ApiError::OtherOperationInProgress {
            class: "host".to_owned(),
            object: host,
            operation_type: pending.name().to_owned(),
            operation_ref: String::new(),
        });
    }
    let path = until_reboot_path(agent);
    let id = boot_id(agent);
    tokio::task::spawn_blocking(move || crate::fsutil::write_private(&path, id.as_bytes()))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::internal(format!("cannot note the shutdown: {e}")))?;
    if let Ok(mut g) = PENDING.lock() {
        *g = Some(op);
    }
    if agent.hypervisor.backend_name() == "simulator" {
        super::agent_process::request(match op {
            PowerOp::Shutdown => super::agent_process::AfterStop::Exit,
            PowerOp::Reboot => super::agent_process::AfterStop::Restart,
        });
    } else {
        let (var, default) = match op {
            PowerOp::Shutdown => ("XAPID_SHUTDOWN_COMMAND", SHUTDOWN_COMMAND),
            PowerOp::Reboot => ("XAPID_REBOOT_COMMAND", REBOOT_COMMAND),
        };
        let command = std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(super::agent_process::DELAY).await;
            // The machine's shutdown stops this daemon as any service (SIGTERM). The command
            // starts from a privileged thread (a confined HTTP worker may not start programs).
            let shell = command.clone();
            let ran = crate::privileged::run_async(move || async move {
                tokio::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(&shell)
                    .status()
                    .await
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            match ran {
                Ok(status) if status.success() => {}
                Ok(status) => tracing::error!(%command, %status, "the power command failed"),
                Err(e) => tracing::error!(%command, error = %e, "cannot run the power command"),
            }
        });
    }
    tracing::warn!(host = %host, ?op, "the host powers off or reboots in a second, as asked");
    Ok(Value::None)
}

async fn power_on(agent: &Agent, c: &Call) -> Result<Value, ApiError> {
    let host = c.ref_arg(0)?.to_owned();
    let record = agent
        .store
        .get(class_ids::host, &host)
        .ok_or_else(|| ApiError::handle_invalid("host", &host))?;
    if crate::pool::placement::is_live(agent, &host) {
        return Err(ApiError::HostIsLive { host });
    }
    if record
        .get(fields::host::power_on_mode)
        .as_str()
        .unwrap_or_default()
        .is_empty()
    {
        return Err(ApiError::HostPowerOnModeDisabled {});
    }
    let uuid = record.uuid().unwrap_or_default().to_owned();
    let settings = PluginSettings::from_env();
    let answer = super::plugins::call_plugin(
        &settings,
        c.session_ref(),
        POWER_ON_PLUGIN,
        POWER_ON_FN,
        &[("remote_host_uuid".to_owned(), uuid)],
    )
    .await?;
    if answer != "True" {
        tracing::warn!(host = %host, answer, "the power-on plugin did not bring the host up");
        return Err(ApiError::internal("The host failed to power on."));
    }
    Ok(Value::None)
}
