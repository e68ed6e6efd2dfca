//! `GET /metrics`: the daemon's figures in Prometheus' text format (version 0.0.4): sessions,
//! tasks by status, messages, and every recorded data source's latest value (the newest
//! 5-second AVERAGE row) as a gauge, `xapid_host_<name>`, `xapid_vm_<name>` and
//! `xapid_sr_<name>`, labelled with the host's and the VM's or SR's uuid.

use super::rrd::Cf;
use super::sources::Owner;
use crate::schema::{class_ids, fields};
use crate::Agent;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric name made of `prefix` and a data source's name: characters Prometheus does not
/// allow in names become `_`, and a name ending in a suffix Prometheus keeps for counters,
/// histograms and summaries (`pool_session_count`) gets `_value` after it.
pub fn metric_name(prefix: &str, ds: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + ds.len() + 6);
    s.push_str(prefix);
    for c in ds.chars() {
        s.push(if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' });
    }
    if ["_count", "_sum", "_bucket", "_total"].iter().any(|x| s.ends_with(x)) {
        s.push_str("_value");
    }
    s
}

/// A label value with `\`, `"` and newlines escaped.
pub fn label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// HELP text with `\` and newlines escaped.
fn help_text(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as the text format writes it.
fn value_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// One family: its help, and its samples (labels, value).
struct Family {
    help: String,
    samples: BTreeMap<String, f64>,
}

/// Renders the metrics.
pub fn render(agent: &Agent) -> String {
    let host_uuid = super::host_uuid(agent);
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut add = |name: String, help: String, labels: String, v: f64| {
        let f = families.entry(name).or_insert_with(|| Family {
            help,
            samples: BTreeMap::new(),
        });
        // Two data sources whose names differ only in characters Prometheus does not allow:
        // the first is kept.
        f.samples.entry(labels).or_insert(v);
    };
    let host_label = format!("host=\"{}\"", label_value(&host_uuid));
    add(
        "xapid_sessions".into(),
        "Sessions open on this host.".into(),
        host_label.clone(),
        agent.store.count(class_ids::session) as f64,
    );
    let mut tasks: BTreeMap<String, u64> = ["pending", "success", "failure", "cancelling", "cancelled"]
        .iter()
        .map(|s| ((*s).to_owned(), 0))
        .collect();
    for t in agent.store.all(class_ids::task) {
        *tasks.entry(t.get(fields::task::status).key_text()).or_default() += 1;
    }
    for (status, n) in tasks {
        add(
            "xapid_tasks".into(),
            "Tasks in the database, by status.".into(),
            format!("{host_label},status=\"{}\"", label_value(&status)),
            n as f64,
        );
    }
    add(
        "xapid_async_calls_running".into(),
        "Asynchronous calls running.".into(),
        host_label.clone(),
        agent.running_tasks.lock().len() as f64,
    );
    add(
        "xapid_messages".into(),
        "Messages (alerts) kept.".into(),
        host_label.clone(),
        agent.store.count(class_ids::message) as f64,
    );
    let now = super::sources::now();
    let live = agent.metrics.live.lock();
    let mut owners: Vec<(Owner, &super::live::RrdInfo)> = Vec::new();
    if let Some(h) = &live.host {
        owners.push((Owner::Host, h));
    }
    owners.extend(live.vms.iter().map(|(u, i)| (Owner::Vm(u.clone()), i)));
    owners.extend(live.srs.iter().map(|(u, i)| (Owner::Sr(u.clone()), i)));
    for (owner, info) in owners {
        let (prefix, labels) = match &owner {
            Owner::Host => ("xapid_host_", host_label.clone()),
            Owner::Vm(u) => ("xapid_vm_", format!("{host_label},vm=\"{}\"", label_value(u))),
            Owner::Sr(u) => ("xapid_sr_", format!("{host_label},sr=\"{}\"", label_value(u))),
        };
        for ds in &info.rrd.dss {
            let Ok(v) = info.rrd.query(now, &ds.name, Cf::Average) else {
                continue;
            };
            let (description, units) = info
                .dss
                .get(&ds.name)
                .map_or(("", ""), |(_, d)| (d.description.as_str(), d.units));
            let help = if description.is_empty() {
                format!("Data source {}.", ds.name)
            } else {
                format!("{description} ({units}); data source {}.", ds.name)
            };
            add(metric_name(prefix, &ds.name), help, labels.clone(), v);
        }
    }
    drop(live);
    let mut out = String::new();
    for (name, f) in families {
        let _ = writeln!(out, "# HELP {name} {}", help_text(&f.help));
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, v) in f.samples {
            let _ = writeln!(out, "{name}{{{labels}}} {}", value_text(v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_values() {
        assert_eq!(metric_name("xapid_vm_", "vbd_xvda_read"), "xapid_vm_vbd_xvda_read");
        assert_eq!(
            metric_name("xapid_host_", "pif_eth0.100-x_rx"),
            "xapid_host_pif_eth0_100_x_rx"
        );
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(value_text(f64::NAN), "NaN");
        assert_eq!(value_text(f64::INFINITY), "+Inf");
        assert_eq!(value_text(0.25), "0.25");
        assert_eq!(value_text(1e21), "1000000000000000000000");
    }

    #[actix::test]
    async fn every_recorded_source_is_a_gauge() {
        let e = crate::storage::tests::env().await;
        let vm = crate::metrics::tests::running_vm(&e, "scraped").await;
        for k in 0..3 {
            crate::metrics::round_shifted(&e.agent, 5.0 * f64::from(k)).await;
        }
        let text = render(&e.agent);
        let uuid = e.agent.uuid_of(class_ids::VM, &vm).unwrap();
        assert!(text.contains("# TYPE xapid_sessions gauge\n"), "{text}");
        assert!(text.contains("xapid_vm_cpu0{host=\""), "{text}");
        assert!(text.contains(&format!(",vm=\"{uuid}\"}} ")), "{text}");
        assert!(text.contains("xapid_host_memory_total_kib{"), "{text}");
        assert!(text.contains("xapid_tasks{host=\""), "{text}");
        // Every family is declared once, before its samples, and every line parses.
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                assert!(declared.insert(rest.split(' ').next().unwrap().to_owned()), "{line}");
            } else if !line.starts_with("# HELP ") {
                let name = line.split('{').next().unwrap();
                assert!(declared.contains(name), "{line}");
                let v = line.rsplit(' ').next().unwrap();
                assert!(v == "NaN" || v.parse::<f64>().is_ok(), "{line}");
            }
        }
    }
}
