//! Same-run comparison of xapid with the libvirt peer: figures, ratios (xapid / peer) and the
//! goals of the issue, as a Markdown table; medians over several runs.

use crate::stats::{median, r3};
use serde_json::{json, Value as Json};
use std::path::{Path, PathBuf};

/// What a row's goal asks.
#[derive(Clone, Copy)]
enum Goal {
    /// xapid / peer at least this.
    RatioAtLeast(f64),
    /// xapid / peer at most this.
    RatioAtMost(f64),
    /// xapid's figure below this.
    Below(f64),
    /// xapid's figure at least this.
    AtLeast(f64),
    /// Shown for information.
    None,
}

impl Goal {
    fn text(self) -> String {
        match self {
            Goal::RatioAtLeast(x) => format!("≥ {x}× peer"),
            Goal::RatioAtMost(x) => format!("≤ {x}× peer"),
            Goal::Below(x) => format!("< {x}"),
            Goal::AtLeast(x) => format!("≥ {x}"),
            Goal::None => String::new(),
        }
    }
    fn met(self, value: f64, ratio: Option<f64>) -> Option<bool> {
        match self {
            Goal::RatioAtLeast(x) => ratio.map(|r| r >= x),
            Goal::RatioAtMost(x) => ratio.map(|r| r <= x),
            Goal::Below(x) => Some(value < x),
            Goal::AtLeast(x) => Some(value >= x),
            Goal::None => None,
        }
    }
}

struct Row {
    metric: String,
    unit: &'static str,
    xapid: f64,
    peer: Option<f64>,
    goal: Goal,
}

fn num(v: &Json) -> Option<f64> {
    v.as_f64()
}

fn at<'a>(v: &'a Json, path: &[&str]) -> &'a Json {
    path.iter().fold(v, |v, k| &v[*k])
}

fn load(p: &Path) -> Result<Json, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
}

fn peer_run(peer: &Json, c: u64) -> Option<&Json> {
    peer["runs"]
        .as_array()?
        .iter()
        .find(|r| r["concurrency"].as_u64() == Some(c))
}

fn xapid_lifecycle<'a>(x: &'a Json, proto: &str, c: u64) -> Option<&'a Json> {
    x["lifecycle"]
        .as_array()?
        .iter()
        .find(|r| r["protocol"] == proto && r["concurrency"].as_u64() == Some(c))
}

fn xapid_read(x: &Json, vms: u64) -> Option<&Json> {
    x["read_scale"]["sizes"]
        .as_array()?
        .iter()
        .find(|r| r["vms"].as_u64() == Some(vms))
}

fn xapid_events<'a>(x: &'a Json, proto: &str, pollers: u64) -> Option<&'a Json> {
    x["events"]
        .as_array()?
        .iter()
        .find(|r| r["protocol"] == proto && r["pollers"].as_u64() == Some(pollers))
}

fn xapid_overhead<'a>(x: &'a Json, proto: &str, c: u64) -> Option<&'a Json> {
    x["overhead"]
        .as_array()?
        .iter()
        .find(|r| r["protocol"] == proto && r["concurrency"].as_u64() == Some(c))
}

/// The peer's fastest way to read every domain with its configuration.
fn peer_best_bulk(peer: &Json) -> Option<f64> {
    let runs = peer["runs"].as_array()?;
    runs.iter()
        .flat_map(|r| {
            [
                num(&r["bulk_read"]["list_xml_info_ms"]),
                num(&r["bulk_read"]["list_xml_info_parallel_ms"]),
            ]
        })
        .flatten()
        .min_by(f64::total_cmp)
}

fn peer_event_p50(peer: &Json, key: &str) -> Option<f64> {
    peer_event_q(peer, key, "p50_ms")
}

/// The median over the peer's runs (one per C) of an event-latency quantile.
fn peer_event_q(peer: &Json, key: &str, q: &str) -> Option<f64> {
    let v: Vec<f64> = peer["runs"]
        .as_array()?
        .iter()
        .filter_map(|r| num(&r["event_latency"][key][q]))
        .collect();
    median(&v)
}

fn rows(peer: &Json, x: &Json) -> Vec<Row> {
    let mut out = Vec::new();
    let mut push = |metric: String, unit: &'static str, xapid: Option<f64>, peer: Option<f64>, goal: Goal| {
        if let Some(xapid) = xapid {
            out.push(Row {
                metric,
                unit,
                xapid,
                peer,
                goal,
            });
        }
    };
    let protos = ["json", "xml"];
    for c in [1u64, 16, 64, 256] {
        let p = peer_run(peer, c).map(|r| &r["lifecycle"]);
        for proto in protos {
            let Some(l) = xapid_lifecycle(x, proto, c) else {
                continue;
            };
            let goal = |g: Goal| if c == 64 { g } else { Goal::None };
            push(
                format!("lifecycle ops/s, C={c}, {proto}"),
                "ops/s",
                num(&l["ops_per_s"]),
                p.and_then(|p| num(&p["ops_per_s"])),
                goal(Goal::RatioAtLeast(10.0)),
            );
            push(
                format!("VM lifecycles/s, C={c}, {proto}"),
                "/s",
                num(&l["vm_lifecycles_per_s"]),
                p.and_then(|p| num(&p["vm_lifecycles_per_s"])),
                Goal::None,
            );
            push(
                format!("per-op latency p50, C={c}, {proto}"),
                "ms",
                num(at(l, &["all_ops_latency", "p50_ms"])),
                p.and_then(|p| num(at(p, &["all_ops_latency", "p50_ms"]))),
                Goal::None,
            );
            push(
                format!("per-op latency p99, C={c}, {proto}"),
                "ms",
                num(at(l, &["all_ops_latency", "p99_ms"])),
                p.and_then(|p| num(at(p, &["all_ops_latency", "p99_ms"]))),
                Goal::None,
            );
            let peer_cpu = p.and_then(|p| Some(num(&p["daemon_cpu_s"])? * 1000.0 / num(&p["ops"])?));
            push(
                format!("daemon CPU per op, C={c}, {proto}"),
                "ms",
                num(&l["daemon_cpu_ms_per_op"]),
                peer_cpu,
                goal(Goal::RatioAtMost(0.1)),
            );
            push(
                format!("load generator's own CPU per op, C={c}, {proto}"),
                "ms",
                num(&l["client_cpu_ms_per_op"]),
                None,
                Goal::None,
            );
        }
    }
    let best = peer_best_bulk(peer);
    if let Some(r) = xapid_read(x, 1000) {
        for proto in protos {
            push(
                format!("1,000-VM bulk read p50, {proto} (1 call vs peer's best)"),
                "ms",
                num(at(r, &["by_protocol", proto, "get_all_records_wire", "p50_ms"])),
                best,
                Goal::RatioAtMost(0.05),
            );
            push(
                format!("1,000-VM read VM+VBD+VIF+metrics p50, {proto} (4 calls)"),
                "ms",
                num(at(r, &["by_protocol", proto, "vm_vbd_vif_metrics_4_calls", "p50_ms"])),
                best,
                Goal::None,
            );
        }
    }
    if let Some(r) = xapid_read(x, 10000) {
        for (proto, limit) in [("json", 150.0), ("xml", 300.0)] {
            for q in ["p50_ms", "p99_ms"] {
                push(
                    format!("10,000-VM get_all_records {}, {proto}", &q[..3]),
                    "ms",
                    num(at(r, &["by_protocol", proto, "get_all_records_wire", q])),
                    None,
                    Goal::Below(limit),
                );
            }
        }
        push(
            "daemon RSS at 10,000 VMs".into(),
            "MiB",
            num(&r["daemon_VmRSS_kB"]).map(|k| k / 1024.0),
            None,
            Goal::Below(200.0),
        );
    }
    let peer_ev = peer_event_p50(peer, "started_event_from_call_start");
    let peer_ev_ret = peer_event_p50(peer, "started_event_from_call_return");
    let peer_ev_p99 = peer_event_q(peer, "started_event_from_call_start", "p99_ms");
    for proto in protos {
        if let Some(e) = xapid_events(x, proto, 1) {
            push(
                format!("event p50 from call start, 1 listener, {proto}"),
                "ms",
                num(at(e, &["from_call_start", "p50_ms"])),
                peer_ev,
                Goal::RatioAtMost(1.0),
            );
            push(
                format!("event p50 from acknowledgement, 1 listener, {proto}"),
                "ms",
                num(at(e, &["from_ack", "p50_ms"])),
                peer_ev_ret,
                Goal::None,
            );
            push(
                format!("event p99 from call start, 1 listener, {proto}"),
                "ms",
                num(at(e, &["from_call_start", "p99_ms"])),
                peer_ev_p99,
                Goal::None,
            );
        }
        if let Some(e) = xapid_events(x, proto, 1000) {
            push(
                format!("event p50 from ack, 1,000 long-polls, {proto}"),
                "ms",
                num(at(e, &["from_ack", "p50_ms"])),
                peer_ev_ret,
                Goal::None,
            );
            push(
                format!("event p99 from ack, 1,000 long-polls, {proto}"),
                "ms",
                num(at(e, &["from_ack", "p99_ms"])),
                None,
                Goal::Below(5.0),
            );
            push(
                format!("event p50 from call start, 1,000 long-polls, {proto}"),
                "ms",
                num(at(e, &["from_call_start", "p50_ms"])),
                peer_ev,
                Goal::RatioAtMost(1.0),
            );
            push(
                format!("event p99 from call start, 1,000 long-polls, {proto}"),
                "ms",
                num(at(e, &["from_call_start", "p99_ms"])),
                None,
                Goal::Below(5.0),
            );
            for (side, key) in [
                ("daemon", "daemon_cpu_us_per_delivery"),
                ("load generator", "client_cpu_us_per_delivery"),
            ] {
                push(
                    format!("{side} CPU per delivery, 1,000 long-polls, {proto}"),
                    "µs",
                    num(&e[key]),
                    None,
                    Goal::None,
                );
            }
        }
    }
    for proto in protos {
        for c in [1u64, 16] {
            if let Some(o) = xapid_overhead(x, proto, c) {
                push(
                    format!("RPC calls/s ÷ bare-handler calls/s, C={c}, {proto}"),
                    "",
                    num(&o["ratio"]),
                    None,
                    Goal::AtLeast(0.7),
                );
                push(
                    format!("daemon CPU per request, API call, C={c}, {proto}"),
                    "µs",
                    num(&o["daemon_cpu_us_per_call"]),
                    None,
                    Goal::None,
                );
                push(
                    format!("daemon CPU per request, bare handler, C={c}, {proto}"),
                    "µs",
                    num(&o["daemon_cpu_us_per_noop"]),
                    None,
                    Goal::None,
                );
                push(
                    format!("load generator's CPU per request, bare handler, C={c}, {proto}"),
                    "µs",
                    num(&o["client_cpu_us_per_noop"]),
                    None,
                    Goal::None,
                );
            }
        }
    }
    // Peak RSS with 1,000 VMs: the lifecycle daemons at the peer's levels and the daemon
    // holding 1,000 VMs with their devices.
    let mut peaks: Vec<f64> = x["lifecycle"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter(|r| r["concurrency"].as_u64().is_some_and(|c| c <= 64))
        .filter_map(|r| num(&r["daemon_VmHWM_kB"]))
        .collect();
    if let Some(r) = xapid_read(x, 1000) {
        peaks.extend(num(&r["daemon_VmHWM_kB"]));
    }
    push(
        "daemon peak RSS, 1,000 VMs".into(),
        "MiB",
        peaks.into_iter().max_by(f64::total_cmp).map(|k| k / 1024.0),
        num(&peer["meta"]["daemon_peak_VmHWM_kB"]).map(|k| k / 1024.0),
        Goal::RatioAtMost(1.0),
    );
    out
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Prints the comparison of each (peer, xapid) pair and the medians over them.
pub fn report(peers: &[PathBuf], xapids: &[PathBuf], json_out: Option<&Path>) -> Result<(), String> {
    if peers.len() != xapids.len() {
        return Err(format!(
            "{} peer results but {} xapid results",
            peers.len(),
            xapids.len()
        ));
    }
    let mut runs = Vec::new();
    for (p, x) in peers.iter().zip(xapids) {
        runs.push(rows(&load(p)?, &load(x)?));
    }
    let Some(first) = runs.first() else {
        return Err("no results".into());
    };
    println!(
        "| metric | xapid | peer | xapid/peer | goal | met |{}",
        if runs.len() > 1 {
            " per run (ratio, or xapid) |"
        } else {
            ""
        }
    );
    println!(
        "|---|---:|---:|---:|---|---|{}",
        if runs.len() > 1 { "---|" } else { "" }
    );
    let mut summary = Vec::new();
    for (i, row) in first.iter().enumerate() {
        let same: Vec<&Row> = runs
            .iter()
            .filter_map(|r| r.get(i))
            .filter(|r| r.metric == row.metric)
            .collect();
        let xs: Vec<f64> = same.iter().map(|r| r.xapid).collect();
        let ps: Vec<f64> = same.iter().filter_map(|r| r.peer).collect();
        let ratios: Vec<f64> = same
            .iter()
            .filter_map(|r| r.peer.filter(|p| *p > 0.0 && r.xapid > 0.0).map(|p| r.xapid / p))
            .collect();
        let (Some(xm), pm, rm) = (median(&xs), median(&ps), median(&ratios)) else {
            continue;
        };
        let met = row.goal.met(xm, rm);
        let unit = if row.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", row.unit)
        };
        println!(
            "| {} | {}{unit} | {} | {} | {} | {} |{}",
            row.metric,
            fmt(xm),
            pm.map_or("—".into(), |p| format!("{}{unit}", fmt(p))),
            rm.map_or("—".into(), |r| format!("{}×", fmt(r))),
            row.goal.text(),
            match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            },
            if runs.len() > 1 {
                let per_run = if ratios.is_empty() { &xs } else { &ratios };
                format!(" {} |", per_run.iter().map(|r| fmt(*r)).collect::<Vec<_>>().join(", "))
            } else {
                String::new()
            }
        );
        summary.push(json!({
            "metric": row.metric, "unit": row.unit, "xapid_median": r3(xm),
            "peer_median": pm.map(r3), "ratio_median": rm.map(r3),
            "ratios": ratios.iter().map(|r| r3(*r)).collect::<Vec<_>>(),
            "goal": row.goal.text(), "met": met,
        }));
    }
    if let Some(p) = json_out {
        let text = serde_json::to_string_pretty(&Json::Array(summary)).map_err(|e| e.to_string())?;
        std::fs::write(p, format!("{text}\n")).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}
