//! Round-robin databases with the reference's arithmetic (its `xapi-rrd` library, which
//! follows rrdtool): data sources turn readings into primary data points (PDPs) every
//! `timestep` seconds, and archives (RRAs) consolidate runs of PDPs into rows with AVERAGE,
//! MIN, MAX or LAST, kept in rings of a fixed length. Rows are kept as 32-bit floats, as the
//! reference keeps them, so the documents built from them print the same digits.
//!
//! Also here: the rrdtool XML dump (`/host_rrd`, `/vm_rrd`, the archives saved under the
//! state dir) and its JSON form, and the reader of that XML.

use super::fmt::{parse_float, push_float};
use super::xmltree::{self, Element};
use std::fmt::Write;

/// How a data source's readings become rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DsType {
    /// The reading is the value (a temperature, a memory size).
    Gauge,
    /// The reading is an amount since the last reading: divided by the interval.
    Absolute,
    /// The reading is a counter: the difference from the last reading, per second.
    Derive,
}

impl DsType {
    /// rrdtool's name.
    pub fn name(self) -> &'static str {
        match self {
            DsType::Gauge => "GAUGE",
            DsType::Absolute => "ABSOLUTE",
            DsType::Derive => "DERIVE",
        }
    }
    fn parse(s: &str) -> Option<DsType> {
        match s {
            "GAUGE" => Some(DsType::Gauge),
            "ABSOLUTE" => Some(DsType::Absolute),
            "DERIVE" => Some(DsType::Derive),
            _ => None,
        }
    }
}

/// A consolidation function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cf {
    /// Mean of the PDPs.
    Average,
    /// Smallest PDP.
    Min,
    /// Largest PDP.
    Max,
    /// Latest PDP.
    Last,
}

impl Cf {
    /// rrdtool's name.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Average => "AVERAGE",
            Cf::Min => "MIN",
            Cf::Max => "MAX",
            Cf::Last => "LAST",
        }
    }
    /// Reads rrdtool's name.
    pub fn parse(s: &str) -> Option<Cf> {
        match s {
            "AVERAGE" => Some(Cf::Average),
            "MIN" => Some(Cf::Min),
            "MAX" => Some(Cf::Max),
            "LAST" => Some(Cf::Last),
            _ => None,
        }
    }
}

/// One reading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sample {
    /// A float reading.
    Float(f64),
    /// An integer reading (counters, sizes).
    Int(i64),
    /// No reading.
    Unknown,
}

impl Sample {
    fn raw(self) -> f64 {
        match self {
            Sample::Float(f) => f,
            Sample::Int(i) => i as f64,
            Sample::Unknown => f64::NAN,
        }
    }
    fn text(self) -> String {
        match self {
            Sample::Float(f) => super::fmt::float(f),
            Sample::Int(i) => i.to_string(),
            Sample::Unknown => "0.0".to_owned(),
        }
    }
}

/// What is done to a PDP before it is consolidated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    /// Kept as is.
    Identity,
    /// `1 - x` (an idle fraction read as a busy one).
    Inverse,
}

impl Transform {
    fn apply(self, x: f64) -> f64 {
        match self {
            Transform::Identity => x,
            Transform::Inverse => 1.0 - x,
        }
    }
}

/// A ring of rows for one data source in one archive, newest at `current`.
#[derive(Clone, Debug, PartialEq)]
pub struct Ring {
    data: Vec<f32>,
    current: usize,
    min: f64,
    max: f64,
}

impl Ring {
    fn new(size: usize, init: f64, min: f64, max: f64) -> Ring {
        let mut r = Ring {
            data: Vec::new(),
            current: size.saturating_sub(1),
            min,
            max,
        };
        let v = r.bound(init);
        r.data = vec![v; size];
        r
    }
    /// Values outside the data source's bounds are kept as unknown.
    fn bound(&self, x: f64) -> f32 {
        if x < self.min || x > self.max {
            f32::NAN
        } else {
            x as f32
        }
    }
    fn push(&mut self, x: f64) {
        if self.data.is_empty() {
            return;
        }
        self.current = (self.current + 1) % self.data.len();
        let v = self.bound(x);
        self.data[self.current] = v;
    }
    /// The row `i` steps back from the newest (0: the newest); NaN past the end.
    pub fn peek(&self, i: usize) -> f64 {
        let n = self.data.len();
        if i >= n {
            return f64::NAN;
        }
        f64::from(self.data[(self.current + n - i) % n])
    }
    /// Rows kept.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// Whether it keeps no rows.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// The consolidation in progress for one data source in one archive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cdp {
    /// What the row will be.
    pub value: f64,
    /// Unknown PDPs so far.
    pub unknown_pdps: i64,
}

/// A data source as the database keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct Ds {
    /// Its name (`cpu0`, `memory`).
    pub name: String,
    /// How readings become rates.
    pub ty: DsType,
    /// Smallest acceptable value.
    pub min: f64,
    /// Largest acceptable value.
    pub max: f64,
    /// Longest gap between readings before the PDP is unknown, seconds.
    pub mrhb: f64,
    /// The last reading.
    pub last: Sample,
    /// The PDP being accumulated.
    pub value: f64,
    /// Unknown seconds in the PDP being accumulated.
    pub unknown_sec: f64,
    /// When it was last read.
    pub last_updated: f64,
}

impl Ds {
    /// A new data source with no readings.
    pub fn new(name: &str, ty: DsType, min: f64, max: f64, mrhb: f64) -> Ds {
        Ds {
            name: name.to_owned(),
            ty,
            min,
            max,
            mrhb,
            last: Sample::Unknown,
            value: 0.0,
            unknown_sec: 0.0,
            last_updated: 0.0,
        }
    }
}

/// An archive: one consolidation function over `pdp_cnt` PDPs per row, `row_cnt` rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Rra {
    /// Consolidation function.
    pub cf: Cf,
    /// Rows kept.
    pub row_cnt: usize,
    /// PDPs per row.
    pub pdp_cnt: usize,
    /// Share of unknown PDPs above which a row is unknown.
    pub xff: f64,
    /// One ring per data source.
    pub data: Vec<Ring>,
    /// One consolidation in progress per data source.
    pub cdps: Vec<Cdp>,
}

impl Rra {
    /// An archive to give to [`Rrd::new`] (its rings are made there).
    pub fn spec(cf: Cf, row_cnt: usize, pdp_cnt: usize, xff: f64) -> Rra {
        Rra {
            cf,
            row_cnt,
            pdp_cnt,
            xff,
            data: Vec::new(),
            cdps: Vec::new(),
        }
    }
}

/// A round-robin database.
#[derive(Clone, Debug, PartialEq)]
pub struct Rrd {
    /// When it was last updated, seconds since the epoch.
    pub last_updated: f64,
    /// Seconds per PDP.
    pub timestep: i64,
    /// Its data sources.
    pub dss: Vec<Ds>,
    /// Its archives, in increasing time span.
    pub rras: Vec<Rra>,
}

/// Why an RRD could not be read or queried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RrdError {
    /// No archive with the consolidation function asked for.
    #[error("no RRA available")]
    NoRraAvailable,
    /// No data source of that name.
    #[error("invalid data source: {0}")]
    InvalidDataSource(String),
    /// The XML is not an RRD.
    #[error("malformed RRD: {0}")]
    Parse(String),
}

fn ocaml_min(a: f64, b: f64) -> f64 {
    if a <= b {
        a
    } else {
        b
    }
}

fn ocaml_max(a: f64, b: f64) -> f64 {
    if a >= b {
        a
    } else {
        b
    }
}

fn cf_init_value(cf: Cf, ds: &Ds) -> f64 {
    let default = match cf {
        Cf::Average => 0.0,
        Cf::Min => f64::INFINITY,
        Cf::Max => f64::NEG_INFINITY,
        Cf::Last => f64::NAN,
    };
    ocaml_min(ds.max, ocaml_max(ds.min, default))
}

/// The latest time a database read from XML may carry (2^40 s, some 34,000 years after
/// 1970): far enough for any clock, near enough that PDP arithmetic on it cannot overflow.
const MAX_TIME: f64 = (1u64 << 40) as f64;

/// The largest step and PDPs per row a database read from XML may have.
const MAX_COUNT: i64 = u32::MAX as i64;

/// The start of the PDP `time` falls in, and how far into it `time` is.
pub fn get_times(time: f64, timestep: i64) -> (i64, f64) {
    let step = timestep.max(1);
    let start = step.saturating_mul((time as i64) / step);
    (start, time - start as f64)
}

fn get_float_time(time: f64, timestep: i64) -> f64 {
    let step = timestep as f64;
    step * (time / step)
}

impl Rra {
    fn do_cfs(&mut self, start_pdp_offset: i64, pdps: &[(usize, f64)]) {
        let pdp_cnt = self.pdp_cnt as i64;
        for &(i, pdp) in pdps {
            let Some(cdp) = self.cdps.get_mut(i) else { continue };
            if pdp.is_nan() {
                // The average so far counts the PDPs expected; with unknowns, fewer are.
                let olddiv = pdp_cnt - cdp.unknown_pdps;
                let newdiv = olddiv - start_pdp_offset;
                if newdiv > 0 {
                    cdp.value = cdp.value * olddiv as f64 / newdiv as f64;
                    cdp.unknown_pdps += start_pdp_offset;
                }
            } else {
                cdp.value = match self.cf {
                    Cf::Average => cdp.value + pdp * start_pdp_offset as f64 / pdp_cnt as f64,
                    Cf::Min => ocaml_min(cdp.value, pdp),
                    Cf::Max => ocaml_max(cdp.value, pdp),
                    Cf::Last => pdp,
                };
            }
        }
    }
}

impl Rrd {
    /// A database over `dss` with the archives `rras` (made by [`Rra::spec`]), its PDPs
    /// `timestep` seconds long, first updated (with the data sources' last readings) at
    /// `timestamp`.
    pub fn new(dss: Vec<Ds>, rras: Vec<Rra>, timestep: i64, timestamp: f64) -> Rrd {
        let rras = rras
            .into_iter()
            .map(|mut rra| {
                rra.data = dss
                    .iter()
                    .map(|ds| Ring::new(rra.row_cnt, f64::NAN, ds.min, ds.max))
                    .collect();
                rra.cdps = dss
                    .iter()
                    .map(|ds| Cdp {
                        value: cf_init_value(rra.cf, ds),
                        unknown_pdps: 0,
                    })
                    .collect();
                rra
            })
            .collect();
        let mut rrd = Rrd {
            last_updated: 0.0,
            timestep: timestep.max(1),
            dss,
            rras,
        };
        let values: Vec<(usize, Sample, Transform)> = rrd
            .dss
            .iter()
            .enumerate()
            .map(|(i, ds)| (i, ds.last, Transform::Identity))
            .collect();
        rrd.update(timestamp, &values, true);
        rrd
    }

    /// The names of its data sources.
    pub fn ds_names(&self) -> impl Iterator<Item = &str> {
        self.dss.iter().map(|d| d.name.as_str())
    }

    /// The index of a data source.
    pub fn ds_index(&self, name: &str) -> Option<usize> {
        self.dss.iter().position(|d| d.name == name)
    }

    fn rra_update(&mut self, proc_pdp_st: i64, elapsed_pdp_st: i64, pdps: &[(usize, f64)]) {
        let timestep = self.timestep;
        let dss = &self.dss;
        for rra in &mut self.rras {
            let pdp_cnt = rra.pdp_cnt.max(1) as i64;
            let start_pdp_offset = pdp_cnt - (proc_pdp_st / timestep) % pdp_cnt;
            let rra_step_cnt = if elapsed_pdp_st < start_pdp_offset {
                0
            } else {
                (elapsed_pdp_st - start_pdp_offset) / pdp_cnt + 1
            };
            rra.do_cfs(start_pdp_offset.min(elapsed_pdp_st), pdps);
            if rra_step_cnt > 0 {
                // The first row is what was consolidated; any further rows (a gap of more
                // than a row) are the current PDP itself, whatever the function.
                let limit = (rra.xff * pdp_cnt as f64) as i64;
                let primaries: Vec<f64> = pdps
                    .iter()
                    .map(|&(i, _)| match rra.cdps.get(i) {
                        Some(c) if c.unknown_pdps <= limit => c.value,
                        _ => f64::NAN,
                    })
                    .collect();
                for (&(i, _), v) in pdps.iter().zip(primaries) {
                    if let Some(ring) = rra.data.get_mut(i) {
                        ring.push(v);
                    }
                }
                let secondaries = (rra_step_cnt - 1).min(rra.row_cnt as i64);
                for _ in 0..secondaries {
                    for &(i, v) in pdps {
                        if let Some(ring) = rra.data.get_mut(i) {
                            ring.push(v);
                        }
                    }
                }
                let new_start_pdp_offset = (elapsed_pdp_st - start_pdp_offset) % pdp_cnt;
                for &(i, _) in pdps {
                    let init = dss.get(i).map_or(0.0, |ds| cf_init_value(rra.cf, ds));
                    if let Some(c) = rra.cdps.get_mut(i) {
                        c.unknown_pdps = 0;
                        c.value = init;
                    }
                }
                rra.do_cfs(new_start_pdp_offset, pdps);
            }
        }
    }

    /// Feeds readings taken at `timestamp` to the data sources at the given indices (all
    /// read at that moment). `new_rrd`: the source restarted (a new domain), so counters
    /// are taken as they are rather than as differences.
    pub fn update(&mut self, timestamp: f64, values: &[(usize, Sample, Transform)], new_rrd: bool) {
        let Some(&(first, _, _)) = values.first() else {
            return;
        };
        let Some(last_updated) = self.dss.get(first).map(|d| d.last_updated) else {
            return;
        };
        let mut interval = timestamp - last_updated;
        if interval < 0.0 {
            // The clock went backwards.
            interval = 5.0;
        }
        let timestep = self.timestep;
        let (proc_pdp_st, _) = get_times(last_updated, timestep);
        let (occu_pdp_st, occu_pdp_age) = get_times(timestamp, timestep);
        let elapsed_pdp_st = occu_pdp_st.saturating_sub(proc_pdp_st) / timestep;
        let (pre_int, post_int) = if elapsed_pdp_st > 0 {
            (interval - occu_pdp_age, occu_pdp_age)
        } else {
            (interval, 0.0)
        };
        self.last_updated = timestamp;
        let mut v2s = Vec::with_capacity(values.len());
        for &(i, value, _) in values {
            let Some(ds) = self.dss.get_mut(i) else { continue };
            let v = process_ds_value(ds, value, interval, new_rrd);
            ds.last_updated = timestamp;
            v2s.push((i, v));
        }
        for &(i, v) in &v2s {
            let ds = &mut self.dss[i];
            if v.is_nan() {
                ds.unknown_sec = pre_int;
            } else {
                match ds.ty {
                    DsType::Gauge | DsType::Absolute => ds.value = v,
                    DsType::Derive => ds.value += pre_int * v / interval,
                }
            }
        }
        if elapsed_pdp_st > 0 {
            let proc_f = get_float_time(last_updated, timestep);
            let occu_f = get_float_time(timestamp, timestep);
            let pdps: Vec<(usize, f64)> = values
                .iter()
                .filter_map(|&(i, _, transform)| {
                    let ds = self.dss.get(i)?;
                    if interval > ds.mrhb {
                        return Some((i, f64::NAN));
                    }
                    let raw = match ds.ty {
                        DsType::Gauge | DsType::Absolute => ds.value,
                        DsType::Derive => ds.value / (occu_f - proc_f - ds.unknown_sec),
                    };
                    let raw = transform.apply(raw);
                    let v = if ds.ty == DsType::Derive && raw > ds.max && raw < ds.max * 1.05 {
                        // A rate a little over its maximum is a measuring error: capped.
                        ds.max
                    } else if raw < ds.min || raw > ds.max {
                        f64::NAN
                    } else {
                        raw
                    };
                    Some((i, v))
                })
                .collect();
            self.rra_update(proc_pdp_st, elapsed_pdp_st, &pdps);
            for &(i, v) in &v2s {
                let ds = &mut self.dss[i];
                if v.is_nan() {
                    ds.value = 0.0;
                    ds.unknown_sec = post_int;
                } else {
                    ds.unknown_sec = 0.0;
                    match ds.ty {
                        DsType::Gauge | DsType::Absolute => ds.value = v,
                        DsType::Derive => ds.value = post_int * v / interval,
                    }
                }
            }
        }
    }

    /// Feeds readings by data source name; names the database does not have are ignored.
    pub fn update_named(&mut self, timestamp: f64, values: &[(&str, Sample, Transform)], new_rrd: bool) {
        let indexed: Vec<(usize, Sample, Transform)> = self
            .dss
            .iter()
            .enumerate()
            .filter_map(|(i, ds)| {
                values
                    .iter()
                    .find(|(n, _, _)| *n == ds.name)
                    .map(|&(_, v, t)| (i, v, t))
            })
            .collect();
        self.update(timestamp, &indexed, new_rrd);
    }

    /// Adds a data source (its rows unknown), unless one of that name exists.
    pub fn add_ds(&mut self, timestamp: f64, ds: Ds) {
        if self.ds_index(&ds.name).is_some() {
            return;
        }
        let npdps = (timestamp as i64) / self.timestep;
        for rra in &mut self.rras {
            rra.data.push(Ring::new(rra.row_cnt, f64::NAN, ds.min, ds.max));
            rra.cdps.push(Cdp {
                value: cf_init_value(rra.cf, &ds),
                unknown_pdps: npdps % rra.pdp_cnt.max(1) as i64,
            });
        }
        self.dss.push(ds);
    }

    /// Removes a data source and its rows; nothing if there is none.
    pub fn remove_ds(&mut self, name: &str) {
        let Some(n) = self.ds_index(name) else { return };
        self.dss.remove(n);
        for rra in &mut self.rras {
            if n < rra.data.len() {
                rra.data.remove(n);
            }
            if n < rra.cdps.len() {
                rra.cdps.remove(n);
            }
        }
    }

    /// The archives (by index) with function `cf` (any, for `None`) that reach back to
    /// `start` with at least `pdp_interval` PDPs per row: those of the first such length;
    /// failing that, those reaching back furthest.
    pub fn find_best_rras(&self, pdp_interval: i64, cf: Option<Cf>, start: i64) -> Result<Vec<usize>, RrdError> {
        let rras: Vec<usize> = (0..self.rras.len())
            .filter(|&i| cf.is_none_or(|c| self.rras[i].cf == c))
            .collect();
        if rras.is_empty() {
            return Err(RrdError::NoRraAvailable);
        }
        let (last_pdp_time, _) = get_times(self.last_updated, self.timestep);
        let span = |rra: &Rra| self.timestep.saturating_mul((rra.row_cnt * rra.pdp_cnt) as i64);
        let contains_time =
            |t: i64, rra: &Rra| rra.pdp_cnt as i64 >= pdp_interval && t > last_pdp_time.saturating_sub(span(rra));
        if let Some(&first) = rras.iter().find(|&&i| contains_time(start, &self.rras[i])) {
            let (rows, pdps) = (self.rras[first].row_cnt, self.rras[first].pdp_cnt);
            return Ok(rras
                .into_iter()
                .filter(|&i| self.rras[i].row_cnt == rows && self.rras[i].pdp_cnt == pdps)
                .collect());
        }
        let Some(&last) = rras.last() else {
            return Err(RrdError::NoRraAvailable);
        };
        let newstart = 1 + last_pdp_time.saturating_sub(span(&self.rras[last]));
        Ok(rras
            .into_iter()
            .filter(|&i| contains_time(newstart, &self.rras[i]))
            .collect())
    }

    /// The newest row of a data source in the first archive with function `cf` that
    /// reaches back to `as_of_time`.
    pub fn query(&self, as_of_time: f64, name: &str, cf: Cf) -> Result<f64, RrdError> {
        let n = self
            .ds_index(name)
            .ok_or_else(|| RrdError::InvalidDataSource(name.to_owned()))?;
        let rras = self.find_best_rras(0, Some(cf), as_of_time as i64)?;
        let first = rras.first().ok_or(RrdError::NoRraAvailable)?;
        Ok(self.rras[*first].data.get(n).map_or(f64::NAN, |r| r.peek(0)))
    }
}

fn process_ds_value(ds: &mut Ds, value: Sample, interval: f64, new_rrd: bool) -> f64 {
    if interval > ds.mrhb {
        return f64::NAN;
    }
    let raw = value.raw();
    let rate = match (ds.ty, new_rrd) {
        (DsType::Derive, true) | (DsType::Gauge, _) => raw,
        (DsType::Absolute, _) => raw / interval,
        (DsType::Derive, false) => match (ds.last, value) {
            (Sample::Int(x), Sample::Int(y)) => y.wrapping_sub(x) as f64,
            (Sample::Float(x), Sample::Float(y)) => y - x,
            // Unknown on either side, or readings of different kinds.
            _ => f64::NAN,
        },
    };
    ds.last = value;
    rate
}

// ---------------------------------------------------------------------------------------
// Documents.

fn tag(out: &mut String, name: &str, text: &str) {
    if text.is_empty() {
        let _ = write!(out, "<{name}/>");
    } else {
        let _ = write!(out, "<{name}>");
        xmltree::escape_into(text, out);
        let _ = write!(out, "</{name}>");
    }
}

fn float_tag(out: &mut String, name: &str, f: f64) {
    let mut s = String::new();
    push_float(f, &mut s);
    tag(out, name, &s);
}

/// The XML declaration the reference's documents start with.
pub const XML_DECL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

impl Rrd {
    /// rrdtool's XML dump; `internal` adds each data source's `last_updated` (the form
    /// saved to disk, which reads back to the same database).
    pub fn to_xml(&self, internal: bool) -> String {
        let rows: usize = self.rras.iter().map(|r| r.row_cnt).sum();
        let mut out = String::with_capacity(256 + self.dss.len() * (300 + rows * 30));
        out.push_str(XML_DECL);
        out.push_str("<rrd>");
        tag(&mut out, "version", "0003");
        tag(&mut out, "step", &self.timestep.to_string());
        // An integer: older clients read it as one.
        tag(&mut out, "lastupdate", &(self.last_updated as i64).to_string());
        for ds in &self.dss {
            out.push_str("<ds>");
            tag(&mut out, "name", &ds.name);
            tag(&mut out, "type", ds.ty.name());
            float_tag(&mut out, "minimal_heartbeat", ds.mrhb);
            float_tag(&mut out, "min", ds.min);
            float_tag(&mut out, "max", ds.max);
            tag(&mut out, "last_ds", &ds.last.text());
            float_tag(&mut out, "value", ds.value);
            tag(&mut out, "unknown_sec", &(ds.unknown_sec as i64).to_string());
            if internal {
                float_tag(&mut out, "last_updated", ds.last_updated);
            }
            out.push_str("</ds>");
        }
        for rra in &self.rras {
            out.push_str("<rra>");
            tag(&mut out, "cf", rra.cf.name());
            tag(&mut out, "pdp_per_row", &rra.pdp_cnt.to_string());
            out.push_str("<params>");
            float_tag(&mut out, "xff", rra.xff);
            out.push_str("</params>");
            if rra.cdps.is_empty() {
                out.push_str("<cdp_prep/>");
            } else {
                out.push_str("<cdp_prep>");
                for cdp in &rra.cdps {
                    out.push_str("<ds>");
                    tag(&mut out, "primary_value", "0.0");
                    tag(&mut out, "secondary_value", "0.0");
                    float_tag(&mut out, "value", cdp.value);
                    tag(&mut out, "unknown_datapoints", &cdp.unknown_pdps.to_string());
                    out.push_str("</ds>");
                }
                out.push_str("</cdp_prep>");
            }
            let rows = rra.data.first().map_or(0, Ring::len);
            if rows == 0 {
                out.push_str("<database/>");
            } else {
                out.push_str("<database>");
                for row in 0..rows {
                    out.push_str("<row>");
                    for ring in &rra.data {
                        float_tag(&mut out, "v", ring.peek(rows - row - 1));
                    }
                    out.push_str("</row>");
                }
                out.push_str("</database>");
            }
            out.push_str("</rra>");
        }
        out.push_str("</rrd>");
        out
    }

    /// The JSON form of the dump (every number as a string, as the reference writes it).
    pub fn to_json(&self) -> String {
        let s = |x: &str| serde_json::Value::String(x.to_owned());
        let f = |x: f64| s(&super::fmt::float(x));
        let dss: Vec<serde_json::Value> = self
            .dss
            .iter()
            .map(|ds| {
                serde_json::json!({
                    "name": s(&ds.name),
                    "type": s(ds.ty.name()),
                    "minimal_heartbeat": f(ds.mrhb),
                    "min": f(ds.min),
                    "max": f(ds.max),
                    "last_ds": s(&ds.last.text()),
                    "value": f(ds.value),
                    "unknown_sec": f(ds.unknown_sec),
                    "last_updated": f(ds.last_updated),
                })
            })
            .collect();
        let rras: Vec<serde_json::Value> = self
            .rras
            .iter()
            .map(|rra| {
                let rows = rra.data.first().map_or(0, Ring::len);
                let database: Vec<serde_json::Value> = (0..rows)
                    .map(|row| serde_json::Value::Array(rra.data.iter().map(|r| f(r.peek(rows - row - 1))).collect()))
                    .collect();
                serde_json::json!({
                    "cf": s(rra.cf.name()),
                    "pdp_per_row": s(&rra.pdp_cnt.to_string()),
                    "params": {"xff": f(rra.xff)},
                    "cdp_prep": {"ds": rra.cdps.iter().map(|c| serde_json::json!({
                        "primary_value": f(0.0),
                        "secondary_value": f(0.0),
                        "value": f(c.value),
                        "unknown_datapoints": s(&c.unknown_pdps.to_string()),
                    })).collect::<Vec<_>>()},
                    "database": database,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "version": s("0003"),
            "step": s(&self.timestep.to_string()),
            "lastupdate": f(self.last_updated),
            "ds": dss,
            "rra": rras,
        });
        doc.to_string()
    }

    /// Reads rrdtool's XML dump (either form). As the reference's reader does: a data
    /// source's minimum below zero is read as zero (so older negative rows become unknown),
    /// a missing `last_updated` is the database's, and repeated data sources are dropped.
    pub fn from_xml(text: &str) -> Result<Rrd, RrdError> {
        let root = xmltree::parse(text).map_err(RrdError::Parse)?;
        let bad = |what: &str| RrdError::Parse(what.to_owned());
        if root.name != "rrd" {
            return Err(bad("the root element is not <rrd>"));
        }
        let text_of = |e: &Element, name: &str| -> Result<String, RrdError> {
            e.child(name)
                .map(|c| c.text.clone())
                .ok_or_else(|| RrdError::Parse(format!("<{}> lacks <{name}>", e.name)))
        };
        let num = |e: &Element, name: &str| -> Result<f64, RrdError> {
            let t = text_of(e, name)?;
            parse_float(&t).ok_or_else(|| RrdError::Parse(format!("<{name}>{t}</{name}> is not a number")))
        };
        let int = |e: &Element, name: &str| -> Result<i64, RrdError> {
            let t = text_of(e, name)?;
            t.trim()
                .parse::<i64>()
                .map_err(|_| RrdError::Parse(format!("<{name}>{t}</{name}> is not an integer")))
        };
        let timestep = int(&root, "step")?;
        if timestep <= 0 || timestep > MAX_COUNT {
            return Err(bad("the step is not a positive number of seconds below 2^32"));
        }
        let time = |e: &Element, name: &str| -> Result<f64, RrdError> {
            let t = num(e, name)?;
            if (0.0..=MAX_TIME).contains(&t) {
                Ok(t)
            } else {
                Err(RrdError::Parse(format!(
                    "<{name}>{t}</{name}> is not a time since 1970 before 2^40 s"
                )))
            }
        };
        let last_update = time(&root, "lastupdate")?;
        let mut dss = Vec::new();
        for d in root.children_named("ds") {
            let ty = DsType::parse(&text_of(d, "type")?).ok_or_else(|| bad("unknown data source type"))?;
            dss.push(Ds {
                name: text_of(d, "name")?,
                ty,
                min: ocaml_max(num(d, "min")?, 0.0),
                max: num(d, "max")?,
                mrhb: num(d, "minimal_heartbeat")?,
                last: Sample::Unknown,
                value: num(d, "value")?,
                unknown_sec: num(d, "unknown_sec")?,
                last_updated: match d.child("last_updated") {
                    Some(_) => time(d, "last_updated")?,
                    None => last_update,
                },
            });
        }
        let mut rras = Vec::new();
        for r in root.children_named("rra") {
            let cf = Cf::parse(&text_of(r, "cf")?).ok_or_else(|| bad("unknown consolidation function"))?;
            let pdp_per_row = int(r, "pdp_per_row")?;
            if pdp_per_row <= 0 || pdp_per_row > MAX_COUNT {
                return Err(bad("pdp_per_row is not a positive count below 2^32"));
            }
            let pdp_cnt = pdp_per_row as usize;
            let params = r.child("params").ok_or_else(|| bad("<rra> lacks <params>"))?;
            let xff = num(params, "xff")?;
            let prep = r.child("cdp_prep").ok_or_else(|| bad("<rra> lacks <cdp_prep>"))?;
            let mut cdps = Vec::new();
            for c in prep.children_named("ds") {
                let unknown_pdps = int(c, "unknown_datapoints")?;
                if !(0..=pdp_per_row).contains(&unknown_pdps) {
                    return Err(bad("unknown_datapoints is not between 0 and pdp_per_row"));
                }
                cdps.push(Cdp {
                    value: num(c, "value")?,
                    unknown_pdps,
                });
            }
            let db = r.child("database").ok_or_else(|| bad("<rra> lacks <database>"))?;
            let mut rows: Vec<Vec<f64>> = Vec::new();
            for row in db.children_named("row") {
                let mut vals = Vec::new();
                for v in row.children_named("v") {
                    vals.push(parse_float(&v.text).ok_or_else(|| bad("a row value is not a number"))?);
                }
                rows.push(vals);
            }
            let cols = dss.len();
            if rows.is_empty() {
                return Err(bad("an archive has no rows"));
            }
            if rows.iter().any(|r| r.len() != cols) || cdps.len() != cols {
                return Err(bad("an archive's columns do not match the data sources"));
            }
            let data = (0..cols)
                .map(|c| {
                    let mut ring = Ring::new(rows.len(), f64::NAN, dss[c].min, dss[c].max);
                    for row in &rows {
                        ring.push(row[c]);
                    }
                    ring
                })
                .collect();
            rras.push(Rra {
                cf,
                row_cnt: rows.len(),
                pdp_cnt,
                xff,
                data,
                cdps,
            });
        }
        let mut rrd = Rrd {
            last_updated: last_update,
            timestep,
            dss,
            rras,
        };
        // Repeated data sources: all but one dropped.
        let mut seen = std::collections::HashSet::new();
        let repeated: Vec<String> = rrd
            .dss
            .iter()
            .filter(|d| !seen.insert(d.name.clone()))
            .map(|d| d.name.clone())
            .collect();
        for name in repeated {
            rrd.remove_ds(&name);
        }
        Ok(rrd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_ds(ty: DsType, rras: Vec<Rra>) -> Rrd {
        Rrd::new(vec![Ds::new("x", ty, 0.0, f64::INFINITY, 300.0)], rras, 5, 1000.0)
    }

    fn feed(rrd: &mut Rrd, t: f64, v: Sample) {
        rrd.update_named(t, &[("x", v, Transform::Identity)], false);
    }

    #[test]
    fn gauge_average_min_max_over_a_minute() {
        let mut rrd = one_ds(
            DsType::Gauge,
            vec![
                Rra::spec(Cf::Average, 120, 1, 0.5),
                Rra::spec(Cf::Average, 10, 12, 1.0),
                Rra::spec(Cf::Min, 10, 12, 1.0),
                Rra::spec(Cf::Max, 10, 12, 1.0),
            ],
        );
        // Readings of 1..=12 at 1200+5k+1 (k = 0..12): the PDPs of 1200..1260.
        for k in 0..=12 {
            feed(&mut rrd, 1201.0 + 5.0 * k as f64, Sample::Float(f64::from(k + 1)));
        }
        // A gauge's PDP is the reading that closes it: the PDP 1255..1260 is the reading
        // at 1261.
        assert_eq!(rrd.rras[0].data[0].peek(0), 13.0);
        assert_eq!(rrd.rras[0].data[0].peek(1), 12.0);
        // The minute 1200..1260 consolidates the PDPs 2..=13.
        let avg = rrd.rras[1].data[0].peek(0);
        let min = rrd.rras[2].data[0].peek(0);
        let max = rrd.rras[3].data[0].peek(0);
        // MIN and MAX also see the PDP that closed the previous row (the reset applies it
        // with no weight, which only the average heeds): the first reading, 1.
        assert_eq!(min, 1.0);
        assert_eq!(max, 13.0);
        assert!((avg - 7.5).abs() < 1e-6, "{avg}");
    }

    #[test]
    fn derive_is_a_rate_per_second_and_absolute_is_per_interval() {
        let mut d = one_ds(DsType::Derive, vec![Rra::spec(Cf::Average, 120, 1, 0.5)]);
        let mut a = one_ds(DsType::Absolute, vec![Rra::spec(Cf::Average, 120, 1, 0.5)]);
        for k in 0..6 {
            let t = 1005.0 + 5.0 * f64::from(k);
            feed(&mut d, t, Sample::Int(i64::from(k) * 1000));
            feed(&mut a, t, Sample::Int(500));
        }
        // 1000 more every 5 s: 200 per second.
        assert!((d.rras[0].data[0].peek(0) - 200.0).abs() < 1e-9);
        assert!((d.rras[0].data[0].peek(1) - 200.0).abs() < 1e-9);
        // 500 in each 5 s: 100 per second.
        assert!((a.rras[0].data[0].peek(0) - 100.0).abs() < 1e-9);
        // The first difference has no earlier reading: an unknown PDP, which a one-PDP
        // row keeps as its consolidation's starting value, 0 (the reference's arithmetic).
        assert_eq!(d.rras[0].data[0].peek(5), 0.0);
        // Rows before the first reading are unknown.
        assert!(d.rras[0].data[0].peek(6).is_nan());
    }

    #[test]
    fn inverse_and_the_five_percent_cap() {
        let mut rrd = Rrd::new(
            vec![Ds::new("idle", DsType::Derive, 0.0, 1.0, 300.0)],
            vec![Rra::spec(Cf::Average, 120, 1, 0.5)],
            5,
            1000.0,
        );
        let mut idle = 0.0;
        for k in 0..4 {
            idle += 1.25; // a quarter idle
            rrd.update_named(
                1005.0 + 5.0 * f64::from(k),
                &[("idle", Sample::Float(idle), Transform::Inverse)],
                false,
            );
        }
        assert!((rrd.rras[0].data[0].peek(0) - 0.75).abs() < 1e-6);
        // A rate of 1.03 over a maximum of 1 is capped at 1; 1.2 is unknown.
        let mut cpu = Rrd::new(
            vec![Ds::new("cpu0", DsType::Derive, 0.0, 1.0, 300.0)],
            vec![Rra::spec(Cf::Average, 120, 1, 0.5)],
            5,
            1000.0,
        );
        let mut t = 0.0;
        for (k, step) in [1.0, 1.0, 5.15, 6.0].iter().enumerate() {
            t += step;
            cpu.update_named(
                1005.0 + 5.0 * k as f64,
                &[("cpu0", Sample::Float(t), Transform::Identity)],
                false,
            );
        }
        // (An unknown PDP in a one-PDP row is kept as 0, as the reference keeps it.)
        assert_eq!(cpu.rras[0].data[0].peek(0), 0.0);
        assert_eq!(cpu.rras[0].data[0].peek(1), 1.0);
        assert!((cpu.rras[0].data[0].peek(2) - 0.2).abs() < 1e-6);
    }

    #[test]
    fn unknown_readings_and_the_xff() {
        // Rows of 4 PDPs (20 s), at most half of them unknown (xff 0.5).
        let mut rrd = one_ds(DsType::Derive, vec![Rra::spec(Cf::Average, 10, 4, 0.5)]);
        let f = |rrd: &mut Rrd, t: f64, v: Sample| feed(rrd, t, v);
        // 1000..1020: the first reading has nothing to differ from, then an unknown reading
        // makes two more PDPs unknown: three of four, so the row is unknown.
        f(&mut rrd, 1005.0, Sample::Float(0.0));
        f(&mut rrd, 1010.0, Sample::Float(10.0));
        f(&mut rrd, 1015.0, Sample::Unknown);
        f(&mut rrd, 1020.0, Sample::Float(30.0));
        assert!(rrd.rras[0].data[0].peek(0).is_nan());
        // 1020..1040: an unknown reading, then a reading with nothing to differ from: two
        // unknown PDPs of four, within the xff. The average was renormalised for them when
        // they came (nothing accumulated yet), and each known PDP still counts a quarter:
        // two PDPs of 2/s make a row of 1, as the reference's arithmetic has it.
        f(&mut rrd, 1025.0, Sample::Unknown);
        f(&mut rrd, 1030.0, Sample::Float(50.0));
        f(&mut rrd, 1035.0, Sample::Float(60.0));
        f(&mut rrd, 1040.0, Sample::Float(70.0));
        assert!((rrd.rras[0].data[0].peek(0) - 1.0).abs() < 1e-6);
        // A gauge's unknown reading repeats its last value in the PDP, then counts as 0.
        let mut g = one_ds(DsType::Gauge, vec![Rra::spec(Cf::Average, 10, 4, 0.5)]);
        feed(&mut g, 1005.0, Sample::Float(4.0));
        feed(&mut g, 1010.0, Sample::Unknown);
        feed(&mut g, 1015.0, Sample::Unknown);
        feed(&mut g, 1020.0, Sample::Float(8.0));
        assert!((g.rras[0].data[0].peek(0) - 4.0).abs() < 1e-6);
    }

    #[test]
    fn a_gap_longer_than_the_heartbeat_is_unknown() {
        let mut rrd = one_ds(DsType::Gauge, vec![Rra::spec(Cf::Average, 120, 1, 0.5)]);
        feed(&mut rrd, 1005.0, Sample::Float(1.0));
        feed(&mut rrd, 1010.0, Sample::Float(1.0));
        assert_eq!(rrd.rras[0].data[0].peek(0), 1.0);
        feed(&mut rrd, 1400.0, Sample::Float(1.0));
        assert!(rrd.rras[0].data[0].peek(0).is_nan());
        assert!(rrd.rras[0].data[0].peek(50).is_nan());
    }

    #[test]
    fn values_out_of_bounds_are_unknown() {
        let mut rrd = Rrd::new(
            vec![Ds::new("m", DsType::Gauge, 0.0, 10.0, 300.0)],
            vec![Rra::spec(Cf::Average, 120, 1, 0.5)],
            5,
            1000.0,
        );
        rrd.update_named(1005.0, &[("m", Sample::Float(11.0), Transform::Identity)], false);
        rrd.update_named(1010.0, &[("m", Sample::Float(-1.0), Transform::Identity)], false);
        rrd.update_named(1015.0, &[("m", Sample::Float(3.0), Transform::Identity)], false);
        assert_eq!(rrd.rras[0].data[0].peek(0), 3.0);
        // Out of bounds: unknown PDPs, kept as 0 in one-PDP rows.
        assert_eq!(rrd.rras[0].data[0].peek(1), 0.0);
        assert_eq!(rrd.rras[0].data[0].peek(2), 0.0);
        // A ring itself keeps a value outside the bounds as unknown.
        let mut ring = Ring::new(2, f64::NAN, 0.0, 10.0);
        ring.push(11.0);
        assert!(ring.peek(0).is_nan());
        ring.push(10.0);
        assert_eq!(ring.peek(0), 10.0);
    }

    #[test]
    fn data_sources_are_added_and_removed_with_their_rows() {
        let mut rrd = one_ds(
            DsType::Gauge,
            vec![Rra::spec(Cf::Average, 120, 1, 0.5), Rra::spec(Cf::Max, 120, 12, 1.0)],
        );
        feed(&mut rrd, 1005.0, Sample::Float(1.0));
        rrd.add_ds(1005.0, Ds::new("y", DsType::Gauge, 0.0, f64::INFINITY, 300.0));
        rrd.add_ds(1005.0, Ds::new("y", DsType::Gauge, 0.0, 1.0, 300.0));
        assert_eq!(rrd.ds_names().collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(rrd.rras[1].cdps.len(), 2);
        rrd.update_named(
            1010.0,
            &[
                ("x", Sample::Float(1.0), Transform::Identity),
                ("y", Sample::Float(2.0), Transform::Identity),
            ],
            false,
        );
        assert_eq!(rrd.rras[0].data[1].peek(0), 2.0);
        rrd.remove_ds("x");
        rrd.remove_ds("nothing");
        assert_eq!(rrd.ds_names().collect::<Vec<_>>(), ["y"]);
        assert_eq!(rrd.rras[0].data.len(), 1);
        assert_eq!(rrd.rras[0].data[0].peek(0), 2.0);
        assert_eq!(rrd.query(1010.0, "y", Cf::Average), Ok(2.0));
        assert_eq!(
            rrd.query(1010.0, "x", Cf::Average),
            Err(RrdError::InvalidDataSource("x".into()))
        );
        assert_eq!(rrd.query(1010.0, "y", Cf::Last), Err(RrdError::NoRraAvailable));
    }

    #[test]
    fn best_archives_for_a_start_time() {
        let rrd = Rrd::new(
            vec![Ds::new("x", DsType::Gauge, 0.0, 1.0, 300.0)],
            vec![
                Rra::spec(Cf::Average, 120, 1, 0.5),
                Rra::spec(Cf::Average, 120, 12, 1.0),
                Rra::spec(Cf::Min, 120, 12, 1.0),
                Rra::spec(Cf::Max, 120, 12, 1.0),
                Rra::spec(Cf::Average, 168, 720, 1.0),
            ],
            5,
            100_000.0,
        );
        // The last 10 minutes: the 5 s archive.
        assert_eq!(rrd.find_best_rras(0, None, 100_000 - 300), Ok(vec![0]));
        // An hour ago: the minute archives, all three functions.
        assert_eq!(rrd.find_best_rras(0, None, 100_000 - 3600), Ok(vec![1, 2, 3]));
        assert_eq!(rrd.find_best_rras(0, Some(Cf::Max), 100_000 - 3600), Ok(vec![3]));
        // Rows of at least a minute asked for.
        assert_eq!(rrd.find_best_rras(12, Some(Cf::Average), 100_000 - 300), Ok(vec![1]));
        // Further back than any archive: the longest one.
        assert_eq!(rrd.find_best_rras(0, Some(Cf::Average), 0), Ok(vec![4]));
    }

    #[test]
    fn xml_dump_reads_back_to_the_same_database() {
        let mut rrd = Rrd::new(
            vec![
                Ds::new("cpu0", DsType::Derive, 0.0, 1.0, 300.0),
                Ds::new("memory", DsType::Gauge, 0.0, f64::INFINITY, 300.0),
            ],
            vec![Rra::spec(Cf::Average, 4, 1, 0.5), Rra::spec(Cf::Max, 3, 2, 1.0)],
            5,
            1000.0,
        );
        for k in 0..7 {
            rrd.update_named(
                1005.0 + 5.0 * f64::from(k),
                &[
                    ("cpu0", Sample::Float(0.4 * f64::from(k)), Transform::Identity),
                    ("memory", Sample::Int(1 << 30), Transform::Identity),
                ],
                false,
            );
        }
        let xml = rrd.to_xml(true);
        assert!(xml.starts_with(XML_DECL));
        assert!(xml.contains("<step>5</step><lastupdate>1035</lastupdate>"), "{xml}");
        assert!(xml.contains("<v>1073741824</v>"), "{xml}");
        assert!(xml.contains("<max>Infinity</max>"));
        let back = Rrd::from_xml(&xml).unwrap();
        let mut expected = rrd.clone();
        for ds in &mut expected.dss {
            ds.last = Sample::Unknown;
            ds.unknown_sec = ds.unknown_sec.trunc();
        }
        assert_eq!(back.to_xml(true), expected.to_xml(true));
        assert_eq!(back.rras[1].data[1].peek(0), rrd.rras[1].data[1].peek(0));
        // Without the per-source times the database's time is used.
        let plain = Rrd::from_xml(&rrd.to_xml(false)).unwrap();
        assert_eq!(plain.dss[0].last_updated, 1035.0);
        // The JSON form carries the same rows as strings.
        let j: serde_json::Value = serde_json::from_str(&rrd.to_json()).unwrap();
        assert_eq!(j["step"], "5");
        assert_eq!(j["rra"][0]["database"].as_array().unwrap().len(), 4);
        assert_eq!(j["rra"][1]["cf"], "MAX");
    }

    #[test]
    fn malformed_dumps_are_refused() {
        for bad in [
            "",
            "<rrd/>",
            "<notrrd><step>5</step></notrrd>",
            "<rrd><version>0003</version><step>0</step><lastupdate>1</lastupdate></rrd>",
            "<rrd><step>5</step><lastupdate>x</lastupdate></rrd>",
            "<rrd><step>5</step><lastupdate>1</lastupdate><ds><name>a</name><type>COUNTER</type></ds></rrd>",
            "<rrd><step>5</step><lastupdate>1</lastupdate><rra><cf>AVERAGE</cf><pdp_per_row>0</pdp_per_row></rra></rrd>",
        ] {
            assert!(Rrd::from_xml(bad).is_err(), "{bad}");
        }
        // Columns that do not match the data sources.
        let mut rrd = one_ds(DsType::Gauge, vec![Rra::spec(Cf::Average, 2, 1, 0.5)]);
        feed(&mut rrd, 1005.0, Sample::Float(1.0));
        let xml = rrd.to_xml(true).replacen("<row><v>", "<row><v>1</v><v>", 1);
        assert!(Rrd::from_xml(&xml).is_err());
    }

    #[test]
    fn times_and_counts_beyond_their_range_are_refused_and_updates_cannot_overflow() {
        let mut rrd = one_ds(DsType::Derive, vec![Rra::spec(Cf::Average, 2, 12, 0.5)]);
        feed(&mut rrd, 1005.0, Sample::Int(1));
        let xml = rrd.to_xml(true);
        assert!(Rrd::from_xml(&xml).is_ok());
        for (from, to) in [
            (
                "<lastupdate>1005</lastupdate>",
                "<lastupdate>6666660000000000000000000000</lastupdate>",
            ),
            ("<lastupdate>1005</lastupdate>", "<lastupdate>-1</lastupdate>"),
            ("<last_updated>1005</last_updated>", "<last_updated>-035</last_updated>"),
            ("<last_updated>1005</last_updated>", "<last_updated>NaN</last_updated>"),
            ("<step>5</step>", "<step>99999999999</step>"),
            (
                "<pdp_per_row>12</pdp_per_row>",
                "<pdp_per_row>9223372036854775807</pdp_per_row>",
            ),
            (
                "<unknown_datapoints>9</unknown_datapoints>",
                "<unknown_datapoints>-9223372036854775807</unknown_datapoints>",
            ),
            (
                "<unknown_datapoints>9</unknown_datapoints>",
                "<unknown_datapoints>13</unknown_datapoints>",
            ),
        ] {
            assert!(xml.contains(from), "{from} not in {xml}");
            let bad = xml.replace(from, to);
            assert!(Rrd::from_xml(&bad).is_err(), "{to}");
        }
        // Updates at the extremes of what the clock can say saturate rather than overflow.
        feed(&mut rrd, f64::MAX, Sample::Int(2));
        feed(&mut rrd, -f64::MAX, Sample::Int(3));
        feed(&mut rrd, 1e300, Sample::Int(4));
    }

    #[test]
    fn repeated_sources_and_negative_minimums_are_mended_on_reading() {
        let mut rrd = Rrd::new(
            vec![
                Ds::new("a", DsType::Gauge, f64::NEG_INFINITY, f64::INFINITY, 300.0),
                Ds::new("a", DsType::Gauge, 0.0, f64::INFINITY, 300.0),
            ],
            vec![Rra::spec(Cf::Average, 2, 1, 0.5)],
            5,
            1000.0,
        );
        rrd.update(1005.0, &[(0, Sample::Float(-3.0), Transform::Identity)], false);
        let back = Rrd::from_xml(&rrd.to_xml(true)).unwrap();
        assert_eq!(back.dss.len(), 1);
        assert_eq!(back.dss[0].min, 0.0);
    }
}
