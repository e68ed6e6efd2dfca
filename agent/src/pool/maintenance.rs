//! Host maintenance (issue 20, first part): `host.disable` stops placement from choosing the
//! host (`HOST_DISABLED [host]` for `start_on`/`assert_can_boot_here` there) without touching
//! what runs on it; `host.enable` lets it take VMs again.

use crate::call::{Call, Entry};
use crate::entry;
use crate::error::ApiError;
use crate::schema::{class_ids, fields};
use crate::value::Value;
use crate::Agent;

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::host, "disable", |agent, _ctx, c| set_enabled(
            &agent, &c, false
        )
        .await),
        entry!(class_ids::host, "enable", |agent, _ctx, c| set_enabled(
            &agent, &c, true
        )
        .await),
    ]
}

/// Whether `host` takes new VMs (`host.enabled`).
pub fn is_enabled(agent: &Agent, host: &str) -> bool {
    agent
        .store
        .get(class_ids::host, host)
        .is_some_and(|h| h.get(fields::host::enabled) == &Value::Bool(true))
}

async fn set_enabled(agent: &Agent, c: &Call, enabled: bool) -> Result<Value, ApiError> {
    let host = c.ref_arg(0)?.to_owned();
    if agent.store.get(class_ids::host, &host).is_none() {
        return Err(ApiError::handle_invalid("host", &host));
    }
    if enabled && host == agent.host && crate::host::power::disabled_until_reboot(agent) {
        return Err(ApiError::HostDisabledUntilReboot { host });
    }
    if !enabled {
        // The reference keeps the master of an HA pool enabled.
        if host == super::master(agent).unwrap_or_else(|| agent.host.clone()) {
            super::rotate::refuse_with_ha(agent)?;
        }
        super::ha::assert_host_disable_keeps_plan(agent, &host)?;
    }
    agent
        .store
        .write(|tx| crate::objects::set_field(tx, class_ids::host, &host, fields::host::enabled, Value::Bool(enabled)))
        .await?;
    tracing::info!(host = %host, enabled, "host {}", if enabled { "enabled" } else { "disabled" });
    Ok(Value::None)
}
