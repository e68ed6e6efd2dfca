//! External authentication: directory users and groups as the pool's subjects.
//!
//! `pool.enable_external_auth(config, service_name, auth_type)` (and the host's) connects a
//! directory; this daemon has one kind, [`ldap::AUTH_TYPE`] (`LDAP`: any LDAP directory over
//! StartTLS or TLS; `ldap.rs` says how it differs from the reference's `AD`). Then:
//!
//! - `subject.create` adds a directory user or group to the pool (with no roles: a pool
//!   administrator gives it some with `subject.add_to_roles`); `subject.destroy` removes it
//!   and ends the sessions no other subject lets in;
//! - `session.login_with_password` lets in a directory user who is a subject, or is in a
//!   group that is (sessions.rs), with the permissions of those subjects' roles;
//! - `auth.*` asks the directory about names, identifiers and groups;
//! - disabling ends every directory user's session.

pub mod ldap;

use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::objects::{create, destroy, new_ref, new_uuid, set_field};
use crate::schema::{class_ids, fields};
use crate::value::{default_object, Value};
use crate::Agent;
use ldap::{DirError, Directory, Settings};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A directory failure as the reference's plugin dispatcher reports it.
pub fn service_error(e: DirError) -> ApiError {
    match e {
        DirError::NotFound => ApiError::SubjectCannotBeResolved {},
        DirError::TrustedCerts(m) => ApiError::AuthInvalidTrustedCerts { message: m },
        DirError::NoTrustedCerts(m) => ApiError::AuthNoTrustedCerts { message: m },
        DirError::Tls(m) => ApiError::AuthSetupTlsConnection { message: m },
        other => ApiError::AuthServiceError {
            message: other.to_string(),
        },
    }
}

/// A failure to enable a directory on the host (`AUTH_ENABLE_FAILED[_…] [message]`).
fn enable_error(e: DirError) -> ApiError {
    let message = e.to_string();
    match e {
        DirError::Lookup(_) => ApiError::AuthEnableFailedDomainLookupFailed { message },
        DirError::Unavailable(_) => ApiError::AuthEnableFailedUnavailable { message },
        DirError::TrustedCerts(_) => ApiError::AuthEnableFailedInvalidTrustedCerts { message },
        DirError::NoTrustedCerts(_) => ApiError::AuthEnableFailedNoTrustedCerts { message },
        DirError::Credentials(_) => ApiError::AuthEnableFailedWrongCredentials { message },
        DirError::InvalidBase(_) => ApiError::AuthEnableFailedInvalidOu { message },
        DirError::Denied(_) => ApiError::AuthEnableFailedPermissionDenied { message },
        _ => ApiError::AuthEnableFailed { message },
    }
}

/// The pool's form of a host's failure to enable (`POOL_AUTH_ENABLE_FAILED[_…] [host,
/// message]`); `AUTH_UNKNOWN_TYPE` passes as it is.
fn pool_enable_error(host: &str, e: ApiError) -> ApiError {
    let host = host.to_owned();
    match e {
        ApiError::AuthUnknownType { .. } => e,
        ApiError::AuthEnableFailedDomainLookupFailed { message } => {
            ApiError::PoolAuthEnableFailedDomainLookupFailed { host, message }
        }
        ApiError::AuthEnableFailedUnavailable { message } => {
            ApiError::PoolAuthEnableFailedUnavailable { host, message }
        }
        ApiError::AuthEnableFailedInvalidTrustedCerts { message } => {
            ApiError::PoolAuthEnableFailedInvalidTrustedCerts { host, message }
        }
        ApiError::AuthEnableFailedNoTrustedCerts { message } => {
            ApiError::PoolAuthEnableFailedNoTrustedCerts { host, message }
        }
        ApiError::AuthEnableFailedWrongCredentials { message } => {
            ApiError::PoolAuthEnableFailedWrongCredentials { host, message }
        }
        ApiError::AuthEnableFailedInvalidOu { message } => ApiError::PoolAuthEnableFailedInvalidOu { host, message },
        ApiError::AuthEnableFailedPermissionDenied { message } => {
            ApiError::PoolAuthEnableFailedPermissionDenied { host, message }
        }
        ApiError::AuthEnableFailed { message } => ApiError::PoolAuthEnableFailed { host, message },
        other => ApiError::PoolAuthEnableFailed {
            host,
            message: other.to_string(),
        },
    }
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_map().iter().map(|(k, v)| (k.key_text(), v.key_text())).collect()
}

/// The directory in use.
fn directory(agent: &Agent) -> Result<Arc<Directory>, ApiError> {
    agent.sessions.directory(&agent.store, &agent.host)
}

/// The external authentication messages, and `subject`'s constructor and destructor.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::auth, "get_subject_identifier", |agent, _, c| {
            let d = directory(&agent)?;
            d.subject_identifier(c.str_arg(0))
                .await
                .map(Value::str)
                .map_err(service_error)
        }),
        entry!(
            class_ids::auth,
            "get_subject_information_from_identifier",
            |agent, _, c| { subject_information(&agent, c.str_arg(0), true).await }
        ),
        entry!(class_ids::auth, "get_group_membership", |agent, _, c| {
            let d = directory(&agent)?;
            let groups = d.group_membership(c.str_arg(0)).await.map_err(service_error)?;
            Ok(Value::set(groups.into_iter().map(Value::str).collect()))
        }),
        entry!(class_ids::pool, "enable_external_auth", |agent, _, c| {
            pool_enable(
                &agent,
                c.ref_arg(0)?,
                &string_map(&c.arg(1)),
                c.str_arg(2),
                c.str_arg(3),
            )
            .await
        }),
        entry!(class_ids::pool, "disable_external_auth", |agent, _, c| {
            pool_disable(&agent, c.ref_arg(0)?).await
        }),
        entry!(class_ids::host, "enable_external_auth", |agent, _, c| {
            let host = c.ref_arg(0)?;
            must_be(&agent, class_ids::host, host)?;
            let _one = agent.sessions.auth_change.lock().await;
            host_enable(&agent, host, &string_map(&c.arg(1)), c.str_arg(2), c.str_arg(3)).await?;
            Ok(Value::None)
        }),
        entry!(class_ids::host, "disable_external_auth", |agent, _, c| {
            let host = c.ref_arg(0)?;
            must_be(&agent, class_ids::host, host)?;
            let _one = agent.sessions.auth_change.lock().await;
            host_disable(&agent, host).await?;
            Ok(Value::None)
        }),
        entry!(class_ids::subject, "create", |agent, _, c| subject_create(&agent, &c)
            .await),
        entry!(class_ids::subject, "destroy", |agent, _, c| {
            subject_destroy(&agent, c.ref_arg(0)?).await
        }),
    ]
}

fn must_be(agent: &Agent, class: crate::schema::ClassId, r: &str) -> Result<(), ApiError> {
    match agent.store.get(class, r) {
        Some(_) => Ok(()),
        None => Err(ApiError::handle_invalid(class.name(), r)),
    }
}

/// `auth.get_subject_information_from_identifier`: what the pool recorded for a subject,
/// else what the directory says.
async fn subject_information(agent: &Agent, id: &str, from_pool_first: bool) -> Result<Value, ApiError> {
    if from_pool_first {
        if let Some(s) = agent
            .store
            .all(class_ids::subject)
            .into_iter()
            .find(|s| s.str_field("subject_identifier") == id)
        {
            // The reference answers from its record even with the directory disabled.
            return Ok(s.get(fields::subject::other_config).clone());
        }
    }
    let d = directory(agent)?;
    let info = d.subject_information(id).await.map_err(service_error)?;
    Ok(Value::string_map(info))
}

/// Enables the directory on one host: checks it answers with the configuration given, then
/// records it (the service account's password apart, in a file only root reads).
async fn host_enable(
    agent: &Agent,
    host: &str,
    config: &BTreeMap<String, String>,
    service_name: &str,
    auth_type: &str,
) -> Result<(), ApiError> {
    let h = agent
        .store
        .get(class_ids::host, host)
        .ok_or_else(|| ApiError::handle_invalid("host", host))?;
    let current = h.str_field("external_auth_type");
    if !current.is_empty() {
        return Err(ApiError::AuthAlreadyEnabled {
            current_auth_type: current.to_owned(),
            current_service_name: h.str_field("external_auth_service_name").to_owned(),
        });
    }
    if auth_type != ldap::AUTH_TYPE {
        return Err(ApiError::AuthUnknownType {
            r#type: auth_type.to_owned(),
        });
    }
    let settings = Settings::parse(service_name, config).map_err(enable_error)?;
    let password = settings.bind_password.clone();
    let dir = Directory::new(settings).map_err(enable_error)?;
    dir.check().await.map_err(enable_error)?;
    let kept: Vec<(String, String)> = config
        .iter()
        .filter(|(k, _)| !ldap::SECRET_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    agent.sessions.set_directory(Some((Arc::new(dir), password)))?;
    let host_s = host.to_owned();
    let service = service_name.trim().to_owned();
    let recorded = agent
        .store
        .write(|tx| {
            use fields::host as f;
            set_field(
                tx,
                class_ids::host,
                &host_s,
                f::external_auth_service_name,
                Value::str(service.clone()),
            )?;
            set_field(
                tx,
                class_ids::host,
                &host_s,
                f::external_auth_configuration,
                Value::string_map(kept.clone()),
            )?;
            set_field(
                tx,
                class_ids::host,
                &host_s,
                f::external_auth_type,
                Value::str(ldap::AUTH_TYPE),
            )
        })
        .await;
    if let Err(e) = recorded {
        let _ = agent.sessions.set_directory(None);
        return Err(ApiError::AuthEnableFailed { message: e.to_string() });
    }
    tracing::info!(host, service_name, auth_type, "external authentication enabled");
    Ok(())
}

/// Disables the directory on one host and ends every directory user's session.
async fn host_disable(agent: &Agent, host: &str) -> Result<(), ApiError> {
    let h = agent
        .store
        .get(class_ids::host, host)
        .ok_or_else(|| ApiError::handle_invalid("host", host))?;
    if h.str_field("external_auth_type").is_empty() {
        // Already disabled: nothing to do, and no error (as in the reference).
        return Ok(());
    }
    let host_s = host.to_owned();
    agent
        .store
        .write(|tx| {
            use fields::host as f;
            set_field(tx, class_ids::host, &host_s, f::external_auth_type, Value::str(""))?;
            set_field(
                tx,
                class_ids::host,
                &host_s,
                f::external_auth_service_name,
                Value::str(""),
            )?;
            set_field(
                tx,
                class_ids::host,
                &host_s,
                f::external_auth_configuration,
                Value::map(Vec::new()),
            )
        })
        .await
        .map_err(|e| ApiError::AuthDisableFailed { message: e.to_string() })?;
    agent
        .sessions
        .set_directory(None)
        .map_err(|e| ApiError::AuthDisableFailed { message: e.to_string() })?;
    let ended = agent.sessions.end_external(&agent.store).await?;
    tracing::info!(host, sessions_ended = ended, "external authentication disabled");
    Ok(())
}

/// `pool.enable_external_auth`: on every host of the pool (this one), then drops the
/// subjects the new directory does not know.
async fn pool_enable(
    agent: &Agent,
    pool: &str,
    config: &BTreeMap<String, String>,
    service_name: &str,
    auth_type: &str,
) -> Result<Value, ApiError> {
    must_be(agent, class_ids::pool, pool)?;
    let _one = agent.sessions.auth_change.lock().await;
    let hosts: Vec<String> = agent
        .store
        .all(class_ids::host)
        .iter()
        .map(|h| h.reference.clone())
        .collect();
    if let Some(h) = hosts
        .iter()
        .find(|h| !crate::sessions::host_auth_type(&agent.store, h).is_empty())
    {
        return Err(ApiError::PoolAuthAlreadyEnabled { host: h.clone() });
    }
    for h in &hosts {
        if let Err(e) = host_enable(agent, h, config, service_name, auth_type).await {
            // Best effort: leave no host half enabled.
            for other in &hosts {
                let _ = host_disable(agent, other).await;
            }
            return Err(pool_enable_error(h, e));
        }
    }
    revalidate_subjects(agent).await;
    Ok(Value::None)
}

/// `pool.disable_external_auth`: on every host, ending every directory user's session.
async fn pool_disable(agent: &Agent, pool: &str) -> Result<Value, ApiError> {
    must_be(agent, class_ids::pool, pool)?;
    let _one = agent.sessions.auth_change.lock().await;
    let hosts: Vec<String> = agent
        .store
        .all(class_ids::host)
        .iter()
        .map(|h| h.reference.clone())
        .collect();
    let mut first_failure = None;
    for h in &hosts {
        if let Err(e) = host_disable(agent, h).await {
            first_failure.get_or_insert(ApiError::PoolAuthDisableFailed {
                host: h.clone(),
                message: e.to_string(),
            });
        }
    }
    let _ = agent.sessions.end_external(&agent.store).await;
    match first_failure {
        Some(e) => Err(e),
        None => Ok(Value::None),
    }
}

/// Removes the subjects the directory does not know (after enabling a new one).
async fn revalidate_subjects(agent: &Agent) {
    let Ok(d) = directory(agent) else {
        return;
    };
    for s in agent.store.all(class_ids::subject) {
        let id = s.str_field("subject_identifier");
        if let Err(DirError::NotFound) = d.subject_information(id).await {
            tracing::info!(subject = id, "removing a subject the directory does not know");
            let _ = subject_destroy(agent, &s.reference).await;
        }
    }
}

/// `subject.create`: a directory user or group joins the pool, with what the directory says
/// about it (the record's `other_config` is not used) and no roles.
async fn subject_create(agent: &Agent, c: &crate::call::Call) -> Result<Value, ApiError> {
    let Some(Value::Record(rec)) = c.args.first() else {
        return Err(ApiError::field_type("args"));
    };
    let id = rec.str_field("subject_identifier").to_owned();
    if agent
        .store
        .all(class_ids::subject)
        .iter()
        .any(|s| s.str_field("subject_identifier") == id)
    {
        return Err(ApiError::SubjectAlreadyExists {});
    }
    let d = directory(agent)?;
    let info = d.subject_information(&id).await.map_err(service_error)?;
    let reference = new_ref();
    let mut o = default_object(class_ids::subject, &reference);
    o.set(fields::subject::uuid, Value::str(new_uuid()));
    o.set(fields::subject::subject_identifier, Value::str(id.as_str()));
    o.set(fields::subject::other_config, Value::string_map(info));
    o.set(fields::subject::roles, Value::set(Vec::new()));
    agent
        .store
        .write(|tx| {
            // Checked again inside the write: two creations may race.
            if agent
                .store
                .all(class_ids::subject)
                .iter()
                .any(|s| s.str_field("subject_identifier") == id)
            {
                return Err(ApiError::SubjectAlreadyExists {});
            }
            create(tx, o.clone())
        })
        .await?;
    tracing::info!(subject = id, "subject added");
    Ok(Value::reference(reference))
}

/// `subject.destroy`: the subject leaves the pool; the sessions it let in end, unless
/// another subject lets them in.
async fn subject_destroy(agent: &Agent, subject: &str) -> Result<Value, ApiError> {
    let s = subject.to_owned();
    agent.store.write(|tx| destroy(tx, class_ids::subject, &s)).await?;
    let ended = agent.sessions.end_unbacked(&agent.store).await?;
    tracing::info!(subject, sessions_ended = ended, "subject removed");
    Ok(Value::None)
}
