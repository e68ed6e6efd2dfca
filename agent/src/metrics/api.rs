//! The API of the databases: `get_data_sources`, `record_data_source`, `query_data_source`
//! and `forget_data_source_archives` on host, VM and SR, as the reference's xcp-rrdd answers
//! them; and `host.get_servertime`.

use super::live::PossibleDs;
use super::rrd::{Cf, RrdError};
use super::sources::Owner;
use crate::call::{Call, Entry};
use crate::entry;
use crate::error::ApiError;
use crate::schema::{class_ids, ClassId};
use crate::value::{default_object, Value};
use crate::Agent;
use std::sync::Arc;

/// The data-source messages and `host.get_servertime`.
pub fn entries() -> Vec<Entry> {
    let mut v = Vec::new();
    for class in [class_ids::VM, class_ids::host, class_ids::SR] {
        v.push(entry_for(class, "get_data_sources"));
        v.push(entry_for(class, "record_data_source"));
        v.push(entry_for(class, "query_data_source"));
        v.push(entry_for(class, "forget_data_source_archives"));
    }
    v.push(entry!(class_ids::host, "get_servertime", |agent, _, c| {
        let h = c.ref_arg(0)?;
        if !agent.exists(class_ids::host, h) {
            return Err(ApiError::handle_invalid("host", h));
        }
        Ok(Value::DateTime(crate::value::now()))
    }));
    v.push(entry!(class_ids::host, "get_server_localtime", |agent, _, c| {
        let h = c.ref_arg(0)?;
        if !agent.exists(class_ids::host, h) {
            return Err(ApiError::handle_invalid("host", h));
        }
        Ok(local_time(chrono::Local::now().naive_local()))
    }));
    v
}

/// A local wall-clock time as the reference sends it: a `dateTime` without a zone
/// (`20260106T10:00:00`). The value inside reads the wall-clock time as if it were UTC.
pub fn local_time(t: chrono::NaiveDateTime) -> Value {
    let text = t.format("%Y%m%dT%H:%M:%S").to_string();
    let json = format!("\"{text}\"");
    let xml = format!("<value><dateTime.iso8601>{text}</dateTime.iso8601></value>");
    let wall = t.and_utc().timestamp();
    Value::Shared(std::sync::Arc::new(crate::value::Shared::with_forms(
        Value::DateTime(wall),
        json,
        xml,
    )))
}

fn entry_for(class: ClassId, message: &'static str) -> Entry {
    let mut e = match message {
        "get_data_sources" => entry!(class_ids::VM, "get_data_sources", |agent, _, c| get_data_sources(
            &agent, &c
        )),
        "record_data_source" => entry!(class_ids::VM, "record_data_source", |agent, _, c| record(&agent, &c)),
        "query_data_source" => entry!(class_ids::VM, "query_data_source", |agent, _, c| query(&agent, &c)),
        _ => entry!(class_ids::VM, "forget_data_source_archives", |agent, _, c| forget(
            &agent, &c
        )),
    };
    e.class = class;
    e.message = message;
    e
}

/// The owner a call's first argument names: the host (any valid host ref), a VM or an SR.
fn owner(agent: &Agent, c: &Call) -> Result<Owner, ApiError> {
    let r = c.ref_arg(0)?;
    let class = c.class;
    let obj = agent
        .store
        .get(class, r)
        .ok_or_else(|| ApiError::handle_invalid(class.name(), r))?;
    let uuid = obj.uuid().unwrap_or("").to_owned();
    Ok(if class == class_ids::host {
        Owner::Host
    } else if class == class_ids::SR {
        Owner::Sr(uuid)
    } else {
        Owner::Vm(uuid)
    })
}

/// What the reference's error says when an owner has no database: `VM: <uuid>`.
fn missing(owner: &Owner) -> ApiError {
    let what = match owner {
        Owner::Host => "No host datasource!".to_owned(),
        Owner::Vm(u) => format!("VM: {u}"),
        Owner::Sr(u) => format!("SR: {u}"),
    };
    ApiError::internal(format!("data source missing: {what}"))
}

fn record_of(d: &PossibleDs) -> Value {
    use crate::schema::fields::data_source as f;
    let mut o = default_object(class_ids::data_source, "");
    o.set(f::name_label, Value::str(d.name.as_str()));
    o.set(f::name_description, Value::str(d.description.as_str()));
    o.set(f::enabled, Value::Bool(d.enabled));
    o.set(f::standard, Value::Bool(d.standard));
    o.set(f::units, Value::str(d.units.as_str()));
    o.set(f::min, Value::Float(d.min));
    o.set(f::max, Value::Float(d.max));
    o.set(f::value, Value::Float(0.0));
    Value::Record(Arc::new(o))
}

fn get_data_sources(agent: &Agent, c: &Call) -> Result<Value, ApiError> {
    let owner = owner(agent, c)?;
    let live = agent.metrics.live.lock();
    let list = live.get(&owner).map(|i| i.possible()).unwrap_or_default();
    Ok(Value::Set(list.iter().map(record_of).collect()))
}

fn record(agent: &Agent, c: &Call) -> Result<Value, ApiError> {
    let owner = owner(agent, c)?;
    let name = c.str_arg(1);
    let mut live = agent.metrics.live.lock();
    match live.get_mut(&owner) {
        // The reference does nothing when the host has no database yet.
        None if owner == Owner::Host => Ok(Value::None),
        None => Err(missing(&owner)),
        Some(info) => {
            if info.record(name) {
                Ok(Value::None)
            } else {
                Err(ApiError::internal(format!("data source missing: {name}")))
            }
        }
    }
}

fn query(agent: &Agent, c: &Call) -> Result<Value, ApiError> {
    let owner = owner(agent, c)?;
    let name = c.str_arg(1);
    let live = agent.metrics.live.lock();
    let info = live.get(&owner).ok_or_else(|| missing(&owner))?;
    match info.rrd.query(super::sources::now(), name, Cf::Average) {
        Ok(v) => Ok(Value::Float(v)),
        Err(RrdError::InvalidDataSource(n)) => Err(ApiError::internal(format!("invalid data source: {n}"))),
        Err(e) => Err(ApiError::internal(e)),
    }
}

fn forget(agent: &Agent, c: &Call) -> Result<Value, ApiError> {
    let owner = owner(agent, c)?;
    let name = c.str_arg(1);
    if let Some(info) = agent.metrics.live.lock().get_mut(&owner) {
        info.rrd.remove_ds(name);
    }
    Ok(Value::None)
}

#[cfg(test)]
mod tests {
    use crate::schema::class_ids;
    use crate::storage::tests::env;
    use crate::value::Value;
    use serde_json::json;

    #[actix::test]
    async fn data_sources_of_host_and_vm() {
        let e = env().await;
        let host = e.agent.host.clone();
        let vm = crate::metrics::tests::running_vm(&e, "measured").await;
        // A VM that does not run has no database.
        let halted = e
            .agent
            .store
            .all(class_ids::VM)
            .into_iter()
            .find(|v| v.str_field("name_label") == "Generic Linux PV")
            .unwrap();
        let err = e
            .call(
                "VM.query_data_source",
                vec![json!(halted.reference.as_str()), json!("cpu0")],
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), "INTERNAL_ERROR");
        assert!(e
            .ok("VM.get_data_sources", vec![json!(halted.reference.as_str())])
            .await
            .as_set()
            .is_empty());
        for k in 0..4 {
            crate::metrics::round_shifted(&e.agent, 5.0 * f64::from(k)).await;
        }
        let dss = e.ok("VM.get_data_sources", vec![json!(vm)]).await;
        let names: Vec<String> = dss
            .as_set()
            .iter()
            .map(|d| match d {
                Value::Record(r) => r.str_field("name_label").to_owned(),
                _ => panic!("{d:?}"),
            })
            .collect();
        for n in [
            "cpu0",
            "cpu_usage",
            "memory",
            "memory_target",
            "vbd_xvda_read",
            "vbd_xvda_write",
        ] {
            assert!(names.contains(&n.to_owned()), "{n} not in {names:?}");
        }
        let mem = e.ok("VM.query_data_source", vec![json!(vm), json!("memory")]).await;
        assert!(matches!(mem, Value::Float(m) if m > 0.0), "{mem:?}");
        let err = e
            .call("VM.query_data_source", vec![json!(vm), json!("nonesuch")])
            .await
            .unwrap_err();
        assert_eq!(err.code(), "INTERNAL_ERROR");
        // A VIF's error counters are not recorded until asked for.
        let host_dss = e.ok("host.get_data_sources", vec![json!(host)]).await;
        let find = |v: &Value, n: &str| {
            v.as_set().iter().find_map(|d| match d {
                Value::Record(r) if r.str_field("name_label") == n => Some(r.clone()),
                _ => None,
            })
        };
        let load = find(&host_dss, "memory_total_kib").unwrap();
        assert_eq!(load.get(crate::schema::fields::data_source::units), &Value::str("KiB"));
        assert_eq!(
            load.get(crate::schema::fields::data_source::enabled),
            &Value::Bool(true)
        );
        assert_eq!(
            load.get(crate::schema::fields::data_source::standard),
            &Value::Bool(true)
        );
        // forget removes the archive; a standard source comes back on the next round.
        e.ok("VM.forget_data_source_archives", vec![json!(vm), json!("memory")])
            .await;
        assert!(e
            .call("VM.query_data_source", vec![json!(vm), json!("memory")])
            .await
            .is_err());
        crate::metrics::round_shifted(&e.agent, 20.0).await;
        assert!(matches!(
            e.ok("VM.query_data_source", vec![json!(vm), json!("memory")]).await,
            Value::Float(_)
        ));
        // record_data_source of a source never read fails; of an optional one, records it.
        assert!(e
            .call("host.record_data_source", vec![json!(host), json!("nonesuch")])
            .await
            .is_err());
        let optional = host_dss.as_set().iter().find_map(|d| match d {
            Value::Record(r) if r.get(crate::schema::fields::data_source::standard) == &Value::Bool(false) => {
                Some(r.str_field("name_label").to_owned())
            }
            _ => None,
        });
        if let Some(name) = optional {
            e.ok("host.record_data_source", vec![json!(host), json!(name)]).await;
            let after = e.ok("host.get_data_sources", vec![json!(host)]).await;
            let r = find(&after, &name).unwrap();
            assert_eq!(r.get(crate::schema::fields::data_source::enabled), &Value::Bool(true));
        }
        // SRs: the default SR has a database with its sizes.
        let sr = e.default_sr();
        let size = e
            .ok("SR.query_data_source", vec![json!(sr), json!("physical_size")])
            .await;
        assert!(matches!(size, Value::Float(s) if s > 0.0), "{size:?}");
        assert_eq!(
            e.call("SR.get_data_sources", vec![json!("OpaqueRef:nope")])
                .await
                .unwrap_err()
                .code(),
            "HANDLE_INVALID"
        );
    }

    #[actix::test]
    async fn servertime_is_now_in_utc() {
        let e = env().await;
        let before = crate::value::now();
        let t = e.ok("host.get_servertime", vec![json!(e.agent.host.clone())]).await;
        let Value::DateTime(t) = t else { panic!("{t:?}") };
        assert!(t >= before && t <= crate::value::now());
        assert!(crate::value::format_datetime(t).ends_with('Z'));
        assert_eq!(
            e.call("host.get_servertime", vec![json!("OpaqueRef:nope")])
                .await
                .unwrap_err()
                .code(),
            "HANDLE_INVALID"
        );
    }

    #[actix::test]
    async fn server_localtime_is_zone_less_local_time() {
        let e = env().await;
        let t = e
            .ok("host.get_server_localtime", vec![json!(e.agent.host.clone())])
            .await;
        let Value::Shared(s) = &t else { panic!("{t:?}") };
        let xml = s.xml();
        let text = xml
            .strip_prefix("<value><dateTime.iso8601>")
            .and_then(|x| x.strip_suffix("</dateTime.iso8601></value>"))
            .unwrap();
        let parsed = chrono::NaiveDateTime::parse_from_str(text, "%Y%m%dT%H:%M:%S").unwrap();
        let local = chrono::Local::now().naive_local();
        assert!((local - parsed).num_seconds().abs() <= 2, "{text} vs {local}");
        assert_eq!(s.json(), format!("\"{text}\""));
        let Value::DateTime(wall) = s.value() else { panic!() };
        assert_eq!(*wall, parsed.and_utc().timestamp());
        assert_eq!(
            e.call("host.get_server_localtime", vec![json!("OpaqueRef:nope")])
                .await
                .unwrap_err()
                .code(),
            "HANDLE_INVALID"
        );
    }
}
