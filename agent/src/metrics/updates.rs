//! `/rrd_updates`: the rows of several databases since a start time, as one table (rrdtool's
//! `xport` form) in XML or JSON, with the reference's choice of archive and its legend
//! (`AVERAGE:vm:<uuid>:cpu0`).

use super::fmt::push_float;
use super::rrd::{get_times, Cf, Rrd, RrdError, XML_DECL};
use super::xmltree;
use std::fmt::Write;

/// One row: its time and a value per legend entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The row's time (the end of its consolidation period).
    pub time: i64,
    /// The values, in legend order.
    pub values: Vec<f64>,
}

/// The table.
#[derive(Debug, Clone, PartialEq)]
pub struct Updates {
    /// The first row's time.
    pub start: i64,
    /// Seconds between rows.
    pub step: i64,
    /// The newest row's time.
    pub end: i64,
    /// `CF:prefix:name` per column.
    pub legend: Vec<String>,
    /// Newest first.
    pub data: Vec<Row>,
}

/// Exports databases, each with its legend prefix (`vm:<uuid>:`), from `start` (negative:
/// that many seconds before the first database's last update), with rows of at least
/// `interval` seconds and the function `cf` (all functions for `None`). Databases whose PDP
/// length differs from the first one's are left out, as are archives shaped unlike the
/// first one chosen.
pub fn export(rrds: &[(String, &Rrd)], start: i64, interval: i64, cf: Option<Cf>) -> Result<Updates, RrdError> {
    let Some((_, first)) = rrds.first() else {
        return Err(RrdError::NoRraAvailable);
    };
    let (timestep, last_updated) = (first.timestep, first.last_updated);
    let pdp_interval = interval / timestep.max(1);
    let rrds: Vec<&(String, &Rrd)> = rrds.iter().filter(|(_, r)| r.timestep == timestep).collect();
    let start = rrds
        .iter()
        .map(|(_, r)| {
            if start < 0 {
                start.saturating_add(r.last_updated as i64)
            } else {
                start
            }
        })
        .fold(i64::MAX, i64::min);
    let mut chosen = Vec::with_capacity(rrds.len());
    for (_, r) in &rrds {
        chosen.push(r.find_best_rras(pdp_interval, cf, start)?);
    }
    let (first_rrd, first_rra) = chosen
        .iter()
        .zip(&rrds)
        .find_map(|(c, (_, r))| c.first().map(|&i| (*r, i)))
        .ok_or(RrdError::NoRraAvailable)?;
    let (pdp_cnt, row_cnt) = (first_rrd.rras[first_rra].pdp_cnt, first_rrd.rras[first_rra].row_cnt);
    let chosen: Vec<Vec<usize>> = chosen
        .into_iter()
        .zip(&rrds)
        .map(|(c, (_, r))| {
            c.into_iter()
                .filter(|&i| r.rras[i].pdp_cnt == pdp_cnt && r.rras[i].row_cnt == row_cnt)
                .collect()
        })
        .collect();
    let mut legend = Vec::new();
    for ((prefix, r), c) in rrds.iter().zip(&chosen) {
        for &i in c {
            for ds in &r.dss {
                legend.push(format!("{}:{prefix}{}", r.rras[i].cf.name(), ds.name));
            }
        }
    }
    let rra_timestep = timestep.saturating_mul(pdp_cnt as i64);
    let (last_cdp_time, _) = get_times(last_updated, rra_timestep);
    let (first_cdp_time_minus_one, _) = get_times(start as f64, rra_timestep);
    let first_cdp_time = first_cdp_time_minus_one.saturating_add(rra_timestep);
    let mut data = Vec::new();
    for i in 0..row_cnt {
        let time = last_cdp_time.saturating_sub((i as i64).saturating_mul(rra_timestep));
        if time < start {
            break;
        }
        let mut values = Vec::with_capacity(legend.len());
        for ((_, r), c) in rrds.iter().zip(&chosen) {
            for &k in c {
                values.extend(r.rras[k].data.iter().map(|ring| ring.peek(i)));
            }
        }
        data.push(Row { time, values });
    }
    Ok(Updates {
        start: first_cdp_time,
        step: rra_timestep,
        end: last_cdp_time,
        legend,
        data,
    })
}

fn el(out: &mut String, name: &str, text: &str) {
    if text.is_empty() {
        let _ = write!(out, "<{name}/>");
    } else {
        let _ = write!(out, "<{name}>");
        xmltree::escape_into(text, out);
        let _ = write!(out, "</{name}>");
    }
}

impl Updates {
    /// The XML form (`<xport>`).
    pub fn to_xml(&self) -> String {
        let mut out =
            String::with_capacity(256 + self.legend.len() * 64 + self.data.len() * (16 + self.legend.len() * 24));
        out.push_str(XML_DECL);
        out.push_str("<xport><meta>");
        el(&mut out, "start", &self.start.to_string());
        el(&mut out, "step", &self.step.to_string());
        el(&mut out, "end", &self.end.to_string());
        el(&mut out, "rows", &self.data.len().to_string());
        el(&mut out, "columns", &self.legend.len().to_string());
        if self.legend.is_empty() {
            out.push_str("<legend/>");
        } else {
            out.push_str("<legend>");
            for l in &self.legend {
                el(&mut out, "entry", l);
            }
            out.push_str("</legend>");
        }
        out.push_str("</meta>");
        if self.data.is_empty() {
            out.push_str("<data/>");
        } else {
            out.push_str("<data>");
            for row in &self.data {
                out.push_str("<row>");
                el(&mut out, "t", &row.time.to_string());
                for v in &row.values {
                    out.push_str("<v>");
                    push_float(*v, &mut out);
                    out.push_str("</v>");
                }
                out.push_str("</row>");
            }
            out.push_str("</data>");
        }
        out.push_str("</xport>");
        out
    }

    /// The JSON form: the same structure, every number a string, keys in alphabetical order
    /// (`{"data":[{"t":…,"values":[…]}…],"meta":{"columns":…,"end":…,"legend":[…],"rows":…,
    /// "start":…,"step":…}}`). Written directly: a table of 1,000 VMs has some 10^6 values.
    pub fn to_json(&self) -> String {
        use crate::value::write_json_str;
        let mut out =
            String::with_capacity(128 + self.legend.len() * 56 + self.data.len() * (32 + self.legend.len() * 22));
        let num = |out: &mut String, n: i64| {
            out.push('"');
            let _ = write!(out, "{n}");
            out.push('"');
        };
        out.push_str("{\"data\":[");
        for (i, row) in self.data.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"t\":");
            num(&mut out, row.time);
            out.push_str(",\"values\":[");
            for (k, v) in row.values.iter().enumerate() {
                if k > 0 {
                    out.push(',');
                }
                out.push('"');
                push_float(*v, &mut out);
                out.push('"');
            }
            out.push_str("]}");
        }
        out.push_str("],\"meta\":{\"columns\":");
        num(&mut out, self.legend.len() as i64);
        out.push_str(",\"end\":");
        num(&mut out, self.end);
        out.push_str(",\"legend\":[");
        for (i, l) in self.legend.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_json_str(l, &mut out);
        }
        out.push_str("],\"rows\":");
        num(&mut out, self.data.len() as i64);
        out.push_str(",\"start\":");
        num(&mut out, self.start);
        out.push_str(",\"step\":");
        num(&mut out, self.step);
        out.push_str("}}");
        out
    }

    /// Reads the XML form back.
    pub fn from_xml(text: &str) -> Result<Updates, RrdError> {
        let bad = |w: &str| RrdError::Parse(w.to_owned());
        let root = xmltree::parse(text).map_err(RrdError::Parse)?;
        if root.name != "xport" {
            return Err(bad("the root element is not <xport>"));
        }
        let meta = root.child("meta").ok_or_else(|| bad("no <meta>"))?;
        let int = |name: &str| -> Result<i64, RrdError> {
            meta.child(name)
                .and_then(|e| e.text.parse().ok())
                .ok_or_else(|| RrdError::Parse(format!("bad <{name}>")))
        };
        let legend: Vec<String> = meta
            .child("legend")
            .ok_or_else(|| bad("no <legend>"))?
            .children_named("entry")
            .map(|e| e.text.clone())
            .collect();
        let mut data = Vec::new();
        for row in root
            .child("data")
            .ok_or_else(|| bad("no <data>"))?
            .children_named("row")
        {
            let time = row
                .child("t")
                .and_then(|t| t.text.parse().ok())
                .ok_or_else(|| bad("a row without <t>"))?;
            let values = row
                .children_named("v")
                .map(|v| super::fmt::parse_float(&v.text).ok_or_else(|| bad("a value is not a number")))
                .collect::<Result<Vec<_>, _>>()?;
            data.push(Row { time, values });
        }
        if int("rows")? != data.len() as i64 || int("columns")? != legend.len() as i64 {
            return Err(bad("<rows> or <columns> disagree with the table"));
        }
        Ok(Updates {
            start: int("start")?,
            step: int("step")?,
            end: int("end")?,
            legend,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::fmt::float;
    use crate::metrics::rrd::{Ds, DsType, Rra, Sample, Transform};

    /// The JSON writer writes what serde_json writes for the same structure.
    #[test]
    fn json_is_serde_jsons_form() {
        let s = |x: String| serde_json::Value::String(x);
        let t = Updates {
            start: 100,
            step: 5,
            end: 110,
            legend: vec!["AVERAGE:vm:u:cpu0".into(), "AVERAGE:host:h:a\"b\\c".into()],
            data: vec![
                Row {
                    time: 110,
                    values: vec![0.5, f64::NAN],
                },
                Row {
                    time: 105,
                    values: vec![f64::INFINITY, 0.0],
                },
            ],
        };
        let reference = serde_json::json!({
            "meta": {
                "start": s(t.start.to_string()),
                "step": s(t.step.to_string()),
                "end": s(t.end.to_string()),
                "rows": s(t.data.len().to_string()),
                "columns": s(t.legend.len().to_string()),
                "legend": t.legend,
            },
            "data": t.data.iter().map(|r| serde_json::json!({
                "t": s(r.time.to_string()),
                "values": r.values.iter().map(|v| s(float(*v))).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
        .to_string();
        assert_eq!(t.to_json(), reference);
        let empty = Updates {
            legend: vec![],
            data: vec![],
            ..t
        };
        assert_eq!(
            empty.to_json(),
            r#"{"data":[],"meta":{"columns":"0","end":"110","legend":[],"rows":"0","start":"100","step":"5"}}"#
        );
    }

    fn rrd(names: &[&str], min_max: bool) -> Rrd {
        let mut rras = vec![Rra::spec(Cf::Average, 120, 1, 0.5)];
        for (n, ns) in [(120, 12), (168, 720)] {
            rras.push(Rra::spec(Cf::Average, n, ns, if min_max { 1.0 } else { 0.5 }));
            if min_max {
                rras.push(Rra::spec(Cf::Min, n, ns, 1.0));
                rras.push(Rra::spec(Cf::Max, n, ns, 1.0));
            }
        }
        let dss = names
            .iter()
            .map(|n| Ds::new(n, DsType::Gauge, 0.0, f64::INFINITY, 300.0))
            .collect();
        Rrd::new(dss, rras, 5, 10_000.0)
    }

    fn fill(r: &mut Rrd, names: &[&str], from: i64, to: i64, f: impl Fn(&str, i64) -> f64) {
        let mut t = from;
        while t <= to {
            let vals: Vec<(&str, Sample, Transform)> = names
                .iter()
                .map(|n| (*n, Sample::Float(f(n, t)), Transform::Identity))
                .collect();
            r.update_named(t as f64, &vals, false);
            t += 5;
        }
    }

    #[test]
    fn five_second_rows_since_start_with_legends() {
        let mut host = rrd(&["cpu0", "loadavg"], true);
        let mut vm = rrd(&["cpu0"], false);
        fill(&mut host, &["cpu0", "loadavg"], 10_001, 10_601, |n, t| {
            if n == "cpu0" {
                0.25
            } else {
                (t / 5 % 10) as f64
            }
        });
        fill(&mut vm, &["cpu0"], 10_001, 10_601, |_, _| 0.5);
        let u = export(
            &[("host:h1:".into(), &host), ("vm:v1:".into(), &vm)],
            10_550,
            5,
            Some(Cf::Average),
        )
        .unwrap();
        assert_eq!(u.step, 5);
        assert_eq!(u.end, 10_600);
        assert_eq!(u.start, 10_555);
        assert_eq!(
            u.legend,
            ["AVERAGE:host:h1:cpu0", "AVERAGE:host:h1:loadavg", "AVERAGE:vm:v1:cpu0"]
        );
        // 10600 back to 10550 inclusive: 11 rows, newest first.
        assert_eq!(u.data.len(), 11);
        assert_eq!(u.data[0].time, 10_600);
        assert_eq!(u.data[10].time, 10_550);
        assert_eq!(u.data[0].values[0], 0.25);
        assert_eq!(u.data[0].values[2], 0.5);
        // The XML form reads back to the same table; the JSON form has the same fields.
        let xml = u.to_xml();
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<xport><meta><start>10555</start><step>5</step><end>10600</end><rows>11</rows><columns>3</columns><legend><entry>AVERAGE:host:h1:cpu0</entry>"), "{xml}");
        assert!(xml.contains("<row><t>10600</t><v>0.25</v>"), "{xml}");
        assert_eq!(Updates::from_xml(&xml).unwrap(), u);
        let j: serde_json::Value = serde_json::from_str(&u.to_json()).unwrap();
        assert_eq!(j["meta"]["start"], "10555");
        assert_eq!(j["meta"]["step"], "5");
        assert_eq!(j["meta"]["end"], "10600");
        assert_eq!(j["meta"]["rows"], "11");
        assert_eq!(j["meta"]["columns"], "3");
        assert_eq!(j["meta"]["legend"][2], "AVERAGE:vm:v1:cpu0");
        assert_eq!(j["data"][0]["t"], "10600");
        assert_eq!(j["data"][0]["values"][0], "0.25");
        assert_eq!(j["data"][0]["values"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn minute_rows_with_every_function_and_relative_starts() {
        let mut host = rrd(&["x"], true);
        fill(&mut host, &["x"], 10_001, 14_001, |_, t| (t % 60) as f64);
        // No function named: the minute archives' AVERAGE, MIN and MAX.
        let u = export(&[("host:h:".into(), &host)], -1800, 60, None).unwrap();
        assert_eq!(u.step, 60);
        assert_eq!(u.legend, ["AVERAGE:host:h:x", "MIN:host:h:x", "MAX:host:h:x"]);
        assert_eq!(u.end, 13_980);
        assert!(u.data.iter().all(|r| r.time % 60 == 0 && r.time >= 14_001 - 1800));
        let r = &u.data[1];
        assert!(r.values[1] <= r.values[0] && r.values[0] <= r.values[2], "{r:?}");
        // Databases of another PDP length are left out.
        let mut odd = rrd(&["y"], false);
        odd.timestep = 10;
        let u = export(&[("host:h:".into(), &host), ("vm:v:".into(), &odd)], 13_000, 0, None).unwrap();
        assert!(u.legend.iter().all(|l| l.contains(":host:")));
        assert_eq!(
            export(&[], 0, 0, None),
            Err(RrdError::NoRraAvailable),
            "nothing to export"
        );
        assert_eq!(
            export(&[("host:h:".into(), &host)], 0, 0, Some(Cf::Last)),
            Err(RrdError::NoRraAvailable)
        );
    }

    #[test]
    fn an_empty_table_is_well_formed() {
        let host = rrd(&[], true);
        let u = export(&[("host:h:".into(), &host)], i64::MAX / 2, 0, None).unwrap();
        assert!(u.data.is_empty());
        let xml = u.to_xml();
        assert!(xml.contains("<legend/>") && xml.contains("<data/>"), "{xml}");
        assert_eq!(Updates::from_xml(&xml).unwrap(), u);
    }
}
