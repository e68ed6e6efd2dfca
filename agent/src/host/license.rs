//! Licensing: this daemon has the one edition the reference runs in when it has no licensing
//! daemon, `free/libre`, with every feature enabled.
//!
//! - `host.apply_edition(host, "free/libre" | "", force)` records that edition on the host
//!   (`edition`, `editions`, `license_params`) and the pool's `restrictions`; any other
//!   edition is `INVALID_EDITION [edition]`.
//! - `host.license_remove(host)` leaves the host in that edition, as removing a license does.
//! - `host.license_add(host, contents)`: the base64 of a license file
//!   (`LICENSE_PROCESSING_ERROR` when it is not); with no licensing daemon to read it, the
//!   host stays in that edition, as the reference's free edition answers.
//! - `pool.apply_edition(pool, edition)` applies it on every host through
//!   `host.apply_edition`, putting the hosts done back to their edition when one refuses;
//!   `pool.get_license_state(pool)`: the pool's lowest edition and its expiry (`never`).
//! - `host.license_apply` was removed from the API: `MESSAGE_REMOVED`, as the reference
//!   answers.

use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::objects::set_field;
use crate::schema::{class_ids, fields};
use crate::value::Value;
use crate::Agent;

/// The edition.
pub const EDITION: &str = "free/libre";

/// The reference's features as license parameters (`Features.props_of_feature`), each with
/// whether the key says "enabled" by `true` (else by `false`, a restriction lifted).
const FEATURES: &[(&str, bool)] = &[
    ("restrict_vlan", false),
    ("restrict_qos", false),
    ("restrict_pool_attached_storage", false),
    ("restrict_netapp", false),
    ("restrict_equalogic", false),
    ("restrict_pooling", false),
    ("enable_xha", true),
    ("restrict_marathon", false),
    ("restrict_email_alerting", false),
    ("restrict_historical_performance", false),
    ("restrict_wlb", false),
    ("restrict_rbac", false),
    ("restrict_dmc", false),
    ("restrict_checkpoint", false),
    ("restrict_cpu_masking", false),
    ("restrict_connection", false),
    ("platform_filter", false),
    ("regular_nag_dialog", false),
    ("restrict_vmpr", false),
    ("restrict_vmss", false),
    ("restrict_intellicache", false),
    ("restrict_gpu", false),
    ("restrict_dr", false),
    ("restrict_vif_locking", false),
    ("restrict_storage_xen_motion", false),
    ("restrict_vgpu", false),
    ("restrict_integrated_gpu_passthrough", false),
    ("restrict_vss", false),
    ("restrict_guest_agent_auto_update", false),
    ("restrict_pci_device_for_auto_update", false),
    ("restrict_xen_motion", false),
    ("restrict_guest_ip_setting", false),
    ("restrict_ad", false),
    ("restrict_nested_virt", false),
    ("restrict_live_patching", false),
    ("restrict_set_vcpus_number_live", false),
    ("restrict_pvs_proxy", false),
    ("restrict_igmp_snooping", false),
    ("restrict_rpu", false),
    ("restrict_pool_size", false),
    ("restrict_cbt", false),
    ("restrict_usb_passthrough", false),
    ("restrict_network_sriov", false),
    ("restrict_corosync", false),
    ("restrict_cluster_address", false),
    ("restrict_zstd_export", false),
    ("restrict_pool_secret_rotation", false),
    ("restrict_certificate_verification", false),
    ("restrict_updates", false),
    ("restrict_internal_repo_access", false),
    ("restrict_vtpm", false),
    ("restrict_vm_groups", false),
    ("restrict_vm_start", false),
    ("restrict_vm_appliance_start", false),
];

/// The license parameters of the edition: every feature enabled.
pub fn license_params() -> Value {
    Value::string_map(FEATURES.iter().map(|(k, v)| (*k, if *v { "true" } else { "false" })))
}

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::host, "apply_edition", |agent, _, c| {
            let host = c.ref_arg(0)?;
            super::this_host(&agent, host)?;
            match c.str_arg(1) {
                "" | EDITION => record_edition(&agent, host).await.map(|()| Value::None),
                other => Err(ApiError::InvalidEdition {
                    edition: other.to_owned(),
                }),
            }
        }),
        entry!(class_ids::host, "license_remove", |agent, _, c| {
            let host = c.ref_arg(0)?;
            super::this_host(&agent, host)?;
            record_edition(&agent, host).await.map(|()| Value::None)
        }),
        entry!(class_ids::host, "license_add", |agent, _, c| {
            let host = c.ref_arg(0)?;
            super::this_host(&agent, host)?;
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(c.str_arg(1).trim())
                .map_err(|_| ApiError::LicenseProcessingError {})?;
            record_edition(&agent, host).await.map(|()| Value::None)
        }),
        entry!(class_ids::pool, "apply_edition", |agent, ctx, c| {
            let edition = c.str_arg(1).to_owned();
            pool_apply_edition(&agent, &ctx, c.session_ref(), &edition)
                .await
                .map(|()| Value::None)
        }),
        entry!(class_ids::pool, "get_license_state", |_agent, _, _c| {
            // Every host runs the one edition: the lowest is it, and it never expires.
            Ok(Value::string_map([("edition", EDITION), ("expiry", "never")]))
        }),
        entry!(class_ids::host, "license_apply", |agent, _, c| {
            super::this_host(&agent, c.ref_arg(0)?)?;
            Err(ApiError::MessageRemoved {})
        }),
    ]
}

/// `pool.apply_edition`: `host.apply_edition(host, edition, false)` on each host (each runs
/// on its host); when one refuses, the hosts already done get their edition back and the
/// refusal is the answer.
async fn pool_apply_edition(
    agent: &std::sync::Arc<Agent>,
    ctx: &crate::CallCtx,
    session: &str,
    edition: &str,
) -> Result<(), ApiError> {
    use serde_json::Value as Json;
    let apply = |host: String, edition: String| {
        let args = [
            Json::String(session.to_owned()),
            Json::String(host),
            Json::String(edition),
            Json::Bool(false),
        ];
        async move { crate::dispatch::call(agent, ctx, "host.apply_edition", &args).await }
    };
    let hosts = agent.store.all(class_ids::host);
    let mut done: Vec<(String, String)> = Vec::new();
    for h in &hosts {
        let before = h.str_field("edition").to_owned();
        if let Err(e) = apply(h.reference.clone(), edition.to_owned()).await {
            for (host, previous) in done {
                if let Err(undo) = apply(host.clone(), previous).await {
                    tracing::warn!(%host, error = %undo, "pool.apply_edition: putting the host's edition back failed");
                }
            }
            return Err(e);
        }
        done.push((h.reference.clone(), before));
    }
    Ok(())
}

/// Records the edition and its parameters on the host, and the pool's restrictions (one host:
/// the same parameters).
async fn record_edition(agent: &Agent, host: &str) -> Result<(), ApiError> {
    let (host, pool) = (host.to_owned(), agent.pool_ref());
    agent
        .store
        .write(move |tx| {
            use fields::host as f;
            set_field(tx, class_ids::host, &host, f::edition, Value::str(EDITION))?;
            set_field(
                tx,
                class_ids::host,
                &host,
                f::editions,
                Value::set(vec![Value::str(EDITION)]),
            )?;
            set_field(tx, class_ids::host, &host, f::license_params, license_params())?;
            set_field(tx, class_ids::pool, &pool, fields::pool::restrictions, license_params())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_feature_is_enabled() {
        let p = license_params();
        assert_eq!(p.as_map().len(), FEATURES.len());
        assert_eq!(p.map_get("enable_xha").and_then(Value::as_str), Some("true"));
        assert_eq!(p.map_get("restrict_vlan").and_then(Value::as_str), Some("false"));
        assert_eq!(p.map_get("regular_nag_dialog").and_then(Value::as_str), Some("false"));
    }
}
