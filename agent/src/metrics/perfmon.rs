//! Performance alarms, as the reference's `perfmon` raises them: every VM, host and SR with
//! an `other_config:perfmon` configuration ([`super::perfmon_config`]) has its variables
//! computed from its database's one-minute AVERAGE rows, and a variable whose value stays on
//! the bad side of its level for `alarm_trigger_period` seconds raises an `ALARM` message on
//! the object (unless one was raised less than `alarm_auto_inhibit_period` seconds before).
//!
//! The reference reads `/rrd_updates` every five minutes; this reads the same rows from the
//! databases after every round, so an alarm comes up to five minutes sooner. Each new row
//! counts as 60 seconds of the trigger period; rows are taken newest first, as the reference
//! takes them. A monitor first looks five minutes back. A variable keeps its state while its
//! configuration is unchanged; a configuration that cannot be read has no variables (the
//! reference's log line is a warning here).

use std::collections::HashMap;
use std::sync::Arc;

use super::perfmon_config::{self, Consolidation, Monitored, Variable};
use super::rrd::{Cf, Rrd};
use super::updates;
use crate::schema::enums::Cls;
use crate::schema::{class_ids, fields};
use crate::Agent;

/// Seconds per row read (the reference's `rrd_step`).
pub const RRD_STEP: i64 = 60;

/// How far back a new monitor looks (the reference's `interval`).
const FIRST_LOOK_BACK: i64 = 300;

/// One variable and its state.
#[derive(Clone, Debug)]
pub struct Watched {
    /// Its configuration.
    pub var: Variable,
    /// When the last alarm was raised (seconds since the epoch).
    pub last_alarm: f64,
    /// Seconds of bad values still needed for an alarm.
    pub down_counter: i64,
}

impl Watched {
    fn new(var: Variable, now: f64) -> Watched {
        Watched {
            last_alarm: now - var.auto_inhibit_period as f64,
            down_counter: var.trigger_period,
            var,
        }
    }

    /// Takes one row's value; the alarm body if it raises one.
    pub fn update(&mut self, value: f64, now: f64) -> Option<String> {
        let bad = if self.var.sense_high {
            value > self.var.trigger_level
        } else {
            value < self.var.trigger_level
        };
        if !bad {
            self.down_counter = self.var.trigger_period;
            return None;
        }
        self.down_counter -= RRD_STEP;
        if self.down_counter > 0 {
            return None;
        }
        self.down_counter = self.var.trigger_period;
        if now - self.last_alarm < self.var.auto_inhibit_period as f64 {
            return None;
        }
        self.last_alarm = now;
        Some(format!("value: {}\nconfig:\n{}", py_f(value), self.var.xml))
    }
}

/// A float as Python's `%f` writes it.
fn py_f(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{v:.6}")
    }
}

/// One monitored object.
#[derive(Debug)]
pub struct Monitor {
    /// Its class.
    pub class: Monitored,
    /// The configuration text last read.
    pub text: String,
    /// Its variables.
    pub vars: Vec<Watched>,
    /// The first row time not yet read.
    pub next_start: i64,
}

impl Monitor {
    /// A monitor for a configuration first seen at `now`.
    pub fn new(class: Monitored, text: &str, now: f64) -> Monitor {
        let mut m = Monitor {
            class,
            text: String::new(),
            vars: Vec::new(),
            next_start: now as i64 - FIRST_LOOK_BACK,
        };
        m.configure(text, now);
        m
    }

    /// Reads a (possibly changed) configuration; variables whose configuration is unchanged
    /// keep their state.
    pub fn configure(&mut self, text: &str, now: f64) {
        if text == self.text {
            return;
        }
        self.text = text.to_owned();
        let vars = match perfmon_config::parse(self.class, text) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(class = ?self.class, error = %e, "other_config:perfmon cannot be read");
                Vec::new()
            }
        };
        let mut old = std::mem::take(&mut self.vars);
        for v in vars {
            match old.iter().position(|w| w.var.name == v.name && w.var.xml == v.xml) {
                Some(i) => self.vars.push(old.swap_remove(i)),
                None => self.vars.push(Watched::new(v, now)),
            }
        }
    }

    /// Reads the rows of `rrd` not read yet; the alarms to raise (priority, body).
    pub fn process(&mut self, rrd: &Rrd, now: f64) -> Vec<(i64, String)> {
        let Ok(table) = updates::export(&[(String::new(), rrd)], self.next_start, RRD_STEP, Some(Cf::Average)) else {
            return Vec::new();
        };
        if table.data.is_empty() {
            return Vec::new();
        }
        self.next_start = table.end + 1;
        let names: Vec<&str> = table
            .legend
            .iter()
            .map(|l| l.strip_prefix("AVERAGE:").unwrap_or(l))
            .collect();
        let mut alarms = Vec::new();
        for w in &mut self.vars {
            let cols: Vec<usize> = (0..names.len())
                .filter(|&i| w.var.rrd_regex.is_match(names[i]))
                .collect();
            for row in &table.data {
                let picked: Vec<(&str, f64)> = cols
                    .iter()
                    .filter_map(|&i| row.values.get(i).map(|v| (names[i], *v)))
                    .collect();
                let value = consolidate(w.var.consolidation, &picked);
                if let Some(body) = w.update(value, now) {
                    alarms.push((w.var.priority, body));
                }
            }
        }
        alarms
    }
}

/// Combines a variable's data sources into its value.
pub fn consolidate(how: Consolidation, values: &[(&str, f64)]) -> f64 {
    match how {
        Consolidation::Sum => values.iter().map(|(_, v)| v).sum(),
        Consolidation::Average if values.is_empty() => 0.0,
        Consolidation::Average => values.iter().map(|(_, v)| v).sum::<f64>() / values.len() as f64,
        Consolidation::Max => values.iter().map(|(_, v)| *v).fold(f64::NAN, f64::max),
        Consolidation::PercentSrUsage => {
            let used = values.iter().find(|(n, _)| n.ends_with("utilisation"));
            let size = values.iter().find(|(n, _)| !n.ends_with("utilisation"));
            match (values.len(), used, size) {
                (2, Some((_, u)), Some((_, s))) if *s != 0.0 => u / s,
                _ => 0.0,
            }
        }
        Consolidation::PercentMemUsage => dom0_memory_in_use().unwrap_or(0.0),
        Consolidation::PercentFsUsage => fs_usage("/etc/passwd").unwrap_or(f64::NAN),
        Consolidation::PercentLogFsUsage => log_fs_usage().unwrap_or(f64::NAN),
    }
}

/// Dom0's memory and swap in use over its memory (`/proc/meminfo`).
fn dom0_memory_in_use() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let f = |k| super::procfs::parse_kib_field(&text, k).map(|v| v as f64);
    let total = f("MemTotal")?;
    let in_use = total - f("MemFree")? - f("Buffers")? - f("Cached")?;
    let swap = f("SwapTotal")? - f("SwapFree")?;
    (total > 0.0).then(|| (in_use + swap) / total)
}

/// The share of the filesystem holding `path` in use, as `df` rounds it (a whole percent,
/// rounded up).
fn fs_usage(path: &str) -> Option<f64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let used = (s.blocks() as f64 - s.blocks_free() as f64).max(0.0);
    let avail = s.blocks_available() as f64;
    if used + avail <= 0.0 {
        return None;
    }
    Some((used * 100.0 / (used + avail)).ceil() / 100.0)
}

/// `/var/log`'s filesystem's share in use, NaN when it is the root filesystem.
fn log_fs_usage() -> Option<f64> {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/etc/passwd").ok()?.dev();
    let log = std::fs::metadata("/var/log").ok()?.dev();
    if root == log {
        return Some(f64::NAN);
    }
    fs_usage("/var/log")
}

/// The monitors, by object uuid.
#[derive(Default)]
pub struct Perfmon {
    monitors: HashMap<String, Monitor>,
}

/// The configuration text of an object, if it has one.
fn config_of(o: &crate::value::Object, f: crate::schema::FieldId) -> Option<String> {
    o.get(f)
        .map_get("perfmon")
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|t| !t.trim().is_empty())
}

/// After a round: reads the new rows of every configured object's database and raises the
/// alarms due.
pub async fn check(agent: &Arc<Agent>) {
    let now = super::sources::now();
    // What is configured: (uuid, class, text, message class).
    let mut configured: Vec<(String, Monitored, String, Cls)> = Vec::new();
    let (vm_uuids, sr_uuids): (Vec<String>, Vec<String>) = {
        let live = agent.metrics.live.lock();
        (live.vms.keys().cloned().collect(), live.srs.keys().cloned().collect())
    };
    if let Some(h) = agent.store.get(class_ids::host, &agent.host) {
        if let (Some(t), Some(u)) = (config_of(&h, fields::host::other_config), h.uuid()) {
            configured.push((u.to_owned(), Monitored::Host, t, Cls::Host));
        }
    }
    for (uuids, class, field, monitored, cls) in [
        (
            &vm_uuids,
            class_ids::VM,
            fields::VM::other_config,
            Monitored::Vm,
            Cls::VM,
        ),
        (
            &sr_uuids,
            class_ids::SR,
            fields::SR::other_config,
            Monitored::Sr,
            Cls::SR,
        ),
    ] {
        for u in uuids {
            let Some(o) = agent
                .store
                .ref_by_uuid(class, u)
                .and_then(|r| agent.store.get(class, &r))
            else {
                continue;
            };
            if let Some(t) = config_of(&o, field) {
                configured.push((u.clone(), monitored, t, cls));
            }
        }
    }
    let mut alarms: Vec<(Cls, String, i64, String)> = Vec::new();
    {
        let mut pm = agent.metrics.perfmon.lock();
        pm.monitors.retain(|u, _| configured.iter().any(|(c, _, _, _)| c == u));
        let live = agent.metrics.live.lock();
        for (uuid, class, text, cls) in &configured {
            let rrd = match class {
                Monitored::Host => live.host.as_ref(),
                Monitored::Vm => live.vms.get(uuid),
                Monitored::Sr => live.srs.get(uuid),
            };
            let Some(rrd) = rrd else { continue };
            let m = pm
                .monitors
                .entry(uuid.clone())
                .or_insert_with(|| Monitor::new(*class, text, now));
            m.configure(text, now);
            for (priority, body) in m.process(&rrd.rrd, now) {
                alarms.push((*cls, uuid.clone(), priority, body));
            }
        }
    }
    for (cls, uuid, priority, body) in alarms {
        if let Err(e) = super::messages::create(agent, "ALARM", priority, cls, &uuid, &body).await {
            tracing::debug!(uuid, error = %e, "raising ALARM");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::rrd::{Ds, DsType, Rra, Sample, Transform};

    fn cpu_rrd(start: f64) -> Rrd {
        let ds = |n: &str| Ds::new(n, DsType::Gauge, 0.0, 1.0, 300.0);
        Rrd::new(
            vec![ds("cpu0"), ds("cpu1"), ds("memory")],
            vec![
                Rra::spec(Cf::Average, 120, 1, 0.5),
                Rra::spec(Cf::Average, 120, 12, 0.5),
            ],
            5,
            start,
        )
    }

    fn feed(rrd: &mut Rrd, from: f64, secs: i64, cpu: f64) {
        for k in 1..=secs / 5 {
            let t = from + (k * 5) as f64;
            rrd.update_named(
                t,
                &[
                    ("cpu0", Sample::Float(cpu), Transform::Identity),
                    ("cpu1", Sample::Float(cpu), Transform::Identity),
                    ("memory", Sample::Float(0.1), Transform::Identity),
                ],
                false,
            );
        }
    }

    const CONFIG: &str = "<config><variable><name value=\"cpu_usage\"/><alarm_trigger_level value=\"0.5\"/>\
        <alarm_trigger_period value=\"120\"/><alarm_auto_inhibit_period value=\"600\"/></variable></config>";

    #[test]
    fn alarms_after_the_trigger_period_then_inhibited() {
        let t0 = 1_700_000_000.0;
        let mut rrd = cpu_rrd(t0);
        let mut m = Monitor::new(Monitored::Vm, CONFIG, t0);
        // Two minutes of low CPU: nothing.
        feed(&mut rrd, t0, 120, 0.1);
        assert!(m.process(&rrd, t0 + 120.0).is_empty());
        // One bad minute is not enough (the period is two).
        feed(&mut rrd, t0 + 120.0, 60, 0.9);
        assert!(m.process(&rrd, t0 + 180.0).is_empty());
        // The second bad minute raises it.
        feed(&mut rrd, t0 + 180.0, 60, 0.9);
        let alarms = m.process(&rrd, t0 + 240.0);
        assert_eq!(alarms.len(), 1, "{alarms:?}");
        let (prio, body) = &alarms[0];
        assert_eq!(*prio, 3);
        assert!(body.starts_with("value: 0.9"), "{body}");
        assert!(body.ends_with(
            "\nconfig:\n<variable>\n\t<name value=\"cpu_usage\"/>\n\t<alarm_trigger_level value=\"0.5\"/>\n\t\
             <alarm_trigger_period value=\"120\"/>\n\t<alarm_auto_inhibit_period value=\"600\"/>\n</variable>\n"
        ));
        // Still bad, but inhibited for ten minutes.
        feed(&mut rrd, t0 + 240.0, 240, 0.9);
        assert!(m.process(&rrd, t0 + 480.0).is_empty());
        feed(&mut rrd, t0 + 480.0, 420, 0.9);
        assert_eq!(m.process(&rrd, t0 + 900.0).len(), 1);
        // Rows already read are not read again.
        assert!(m.process(&rrd, t0 + 900.0).is_empty());
    }

    #[test]
    fn a_changed_variable_starts_over_and_a_bad_config_has_none() {
        let t0 = 1_700_000_000.0;
        let mut m = Monitor::new(Monitored::Vm, CONFIG, t0);
        m.vars[0].down_counter = 5;
        m.configure(&format!("{CONFIG} "), t0);
        assert_eq!(m.vars[0].down_counter, 5, "same variable, same state");
        m.configure(&CONFIG.replace("0.5", "0.6"), t0);
        assert_eq!(m.vars[0].down_counter, 120);
        m.configure("<config>", t0);
        assert!(m.vars.is_empty());
    }

    #[test]
    fn consolidation_functions() {
        let v = [("a", 1.0), ("b", 3.0)];
        assert_eq!(consolidate(Consolidation::Sum, &v), 4.0);
        assert_eq!(consolidate(Consolidation::Average, &v), 2.0);
        assert_eq!(consolidate(Consolidation::Average, &[]), 0.0);
        assert_eq!(consolidate(Consolidation::Sum, &[]), 0.0);
        assert_eq!(consolidate(Consolidation::Max, &v), 3.0);
        let sr = [("physical_size", 100.0), ("physical_utilisation", 85.0)];
        assert_eq!(consolidate(Consolidation::PercentSrUsage, &sr), 0.85);
        assert_eq!(consolidate(Consolidation::PercentSrUsage, &v[..1]), 0.0);
        let mem = consolidate(Consolidation::PercentMemUsage, &[]);
        assert!((0.0..=2.0).contains(&mem), "{mem}");
        let fs = consolidate(Consolidation::PercentFsUsage, &[]);
        assert!((0.0..=1.0).contains(&fs), "{fs}");
        assert_eq!(py_f(0.5), "0.500000");
        assert_eq!(py_f(f64::NAN), "nan");
    }
}
