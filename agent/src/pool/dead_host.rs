//! A member that is gone: `host.declare_dead` (its VMs reset to Halted, the host disabled; it may
//! come back) and `host.destroy` (gone for good). Both refuse a host that is this one or still
//! answers (`HOST_IS_LIVE`); `destroy` also `HA_IS_ENABLED` and `HOST_HAS_RESIDENT_VMS`, then
//! its etcd member and its own records leave the pool.

use super::remote::{Remote, RemoteError};
use crate::call::Call;
use crate::error::ApiError;
use crate::schema::{class_ids, enums::VmPowerState, fields};
use crate::value::Value;
use crate::Agent;
use std::sync::Arc;

/// Whether `host` is alive: marked live in its metrics and answering a call (any XenAPI
/// answer counts, a failure included); a host its metrics mark dead is not asked.
pub async fn is_alive(agent: &Agent, host: &str, session: &str) -> bool {
    let marked_live = agent
        .store
        .get(class_ids::host, host)
        .and_then(|h| h.get(fields::host::metrics).as_ref_str().map(str::to_owned))
        .and_then(|m| agent.store.get(class_ids::host_metrics, &m))
        .is_none_or(|m| m.get(fields::host_metrics::live) != &Value::Bool(false));
    if !marked_live {
        return false;
    }
    let Ok(remote) = Remote::to_host(agent, host) else {
        return false;
    };
    match remote.private("ping", session, &[]).await {
        Ok(_) | Err(RemoteError::Failure(_)) | Err(RemoteError::Http(..)) => true,
        Err(e) => {
            tracing::info!(host, error = %e, "the host does not answer: taken as dead");
            false
        }
    }
}

/// The call's host argument, once it is known to be neither this host nor a host that answers
/// (`HOST_IS_LIVE`), with its record.
async fn dead_host_arg(agent: &Agent, c: &Call) -> Result<(String, Arc<crate::value::Object>), ApiError> {
    let host = c.ref_arg(0)?.to_owned();
    let record = agent
        .store
        .get(class_ids::host, &host)
        .ok_or_else(|| ApiError::handle_invalid("host", &host))?;
    if host == agent.host || is_alive(agent, &host, c.session_ref()).await {
        return Err(ApiError::HostIsLive { host });
    }
    Ok((host, record))
}

/// The VMs other than control domains the database has resident on `host`.
pub(crate) fn guests_on(agent: &Agent, host: &str) -> Vec<Arc<crate::value::Object>> {
    agent
        .store
        .all(class_ids::VM)
        .into_iter()
        .filter(|v| {
            v.get(fields::VM::resident_on).as_ref_str() == Some(host)
                && v.get(fields::VM::is_control_domain) != &Value::Bool(true)
        })
        .collect()
}

/// `host.destroy(host)`.
pub async fn destroy(agent: &Arc<Agent>, c: &Call) -> Result<Value, ApiError> {
    let (host, record) = dead_host_arg(agent, c).await?;
    super::rotate::refuse_with_ha(agent)?;
    let resident = guests_on(agent, &host)
        .iter()
        .any(|v| v.get(fields::VM::power_state) != &VmPowerState::Halted.value());
    if resident {
        return Err(ApiError::HostHasResidentVms { host });
    }
    let address = record.get(fields::host::address).as_str().unwrap_or("").to_owned();
    let name = record.uuid().unwrap_or("").to_owned();
    super::join::remove_etcd_member(agent, &name, &address).await?;
    super::join::remove_own_records(agent, &host).await?;
    tracing::info!(host = %host, %address, "a dead host's records left the pool (host.destroy)");
    Ok(Value::None)
}

/// `host.declare_dead(host)`: the administrator says the host is gone (`HOST_IS_LIVE` if it is
/// this host or answers). Every VM the database has resident on it is reset to Halted, as
/// `VM.power_state_reset` would (its domains are gone with the host; the marks of operations it
/// was running go too), and the host is disabled, so that placement passes it over. Its records
/// stay: started again, it finds its VMs Halted and is enabled again with `host.enable`.
pub async fn declare_dead(agent: &Arc<Agent>, c: &Call) -> Result<Value, ApiError> {
    let (host, _) = dead_host_arg(agent, c).await?;
    let vms: Vec<String> = guests_on(agent, &host).iter().map(|v| v.reference.clone()).collect();
    agent
        .store
        .write(|tx| {
            for vm in &vms {
                crate::lifecycle::vm_power::reset_halted_tx(tx, vm)?;
            }
            crate::objects::set_field(tx, class_ids::host, &host, fields::host::enabled, Value::Bool(false))
        })
        .await?;
    tracing::info!(host = %host, vms = vms.len(), "host declared dead: its VMs are Halted, the host disabled");
    Ok(Value::None)
}
