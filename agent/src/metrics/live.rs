//! The databases this host keeps: one for the host, one per resident VM, one per attached
//! SR, each with the live data sources last seen for it. Readings are applied as xcp-rrdd's
//! monitor applies them: a new owner gets a fresh database of its standard data sources;
//! standard sources that appear later are added; sources the database has but the round did
//! not read are fed an unknown reading. Saved under `<state dir>/rrd/<uuid>.gz` (rrdtool's
//! XML, gzip), as the reference archives them.

use super::rrd::{Cf, Ds, Rra, Rrd, Sample, Transform};
use super::sources::{DsDef, Owner, OwnerReadings};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Seconds per PDP.
pub const STEP: i64 = 5;

/// The longest gap between readings before a PDP is unknown.
pub const HEARTBEAT: f64 = 300.0;

/// The archives: (rows, PDPs per row): 10 minutes of 5 s rows, 2 hours of minutes, a week of
/// hours, a year of days.
pub const TIMESCALES: [(usize, usize); 4] = [(120, 1), (120, 12), (168, 720), (366, 17280)];

/// The archives of a new database: AVERAGE for every timescale, and MIN and MAX beside the
/// averages of the longer ones when `min_max` (always for the host; for VMs and SRs when
/// the pool's `other_config:create_min_max_in_new_VM_RRDs` is `true`).
pub fn archives(min_max: bool) -> Vec<Rra> {
    let mut out = Vec::new();
    for (rows, pdps) in TIMESCALES {
        if pdps > 1 && min_max {
            out.push(Rra::spec(Cf::Average, rows, pdps, 1.0));
            out.push(Rra::spec(Cf::Min, rows, pdps, 1.0));
            out.push(Rra::spec(Cf::Max, rows, pdps, 1.0));
        } else {
            out.push(Rra::spec(Cf::Average, rows, pdps, 0.5));
        }
    }
    out
}

fn ds_of(def: &DsDef) -> Ds {
    Ds::new(&def.name, def.ty, def.min, def.max, HEARTBEAT)
}

/// A database and what is known of its live sources.
#[derive(Clone, Debug)]
pub struct RrdInfo {
    /// The database.
    pub rrd: Rrd,
    /// Every data source last read for the owner, recorded or not, by name: when, and its
    /// description.
    pub dss: BTreeMap<String, (f64, DsDef)>,
    /// The owner's domain when last updated (VMs).
    pub domid: i64,
}

impl RrdInfo {
    /// A database loaded from disk: no live sources known yet.
    pub fn loaded(rrd: Rrd, domid: i64) -> RrdInfo {
        RrdInfo {
            rrd,
            dss: BTreeMap::new(),
            domid,
        }
    }

    /// Applies one owner's readings: a fresh database for a new owner (its first readings
    /// only start it), otherwise new standard sources added, the readings fed (a changed
    /// domain restarts the counters), and recorded sources not read this time fed unknown
    /// at `missing_at`.
    pub fn apply(this: Option<RrdInfo>, r: &OwnerReadings, min_max: bool, missing_at: f64) -> RrdInfo {
        let read: BTreeMap<String, (f64, DsDef)> = r
            .readings
            .iter()
            .map(|x| (x.def.name.clone(), (r.timestamp, x.def.clone())))
            .collect();
        let Some(mut info) = this else {
            let dss: Vec<Ds> = r
                .readings
                .iter()
                .filter(|x| x.def.default)
                .map(|x| ds_of(&x.def))
                .collect();
            let rrd = Rrd::new(dss, archives(min_max), STEP, r.timestamp);
            return RrdInfo {
                rrd,
                dss: read,
                domid: r.domid,
            };
        };
        for x in &r.readings {
            if x.def.default && info.rrd.ds_index(&x.def.name).is_none() {
                info.rrd.add_ds(r.timestamp, ds_of(&x.def));
            }
        }
        let values: Vec<(&str, Sample, Transform)> = r
            .readings
            .iter()
            .map(|x| (x.def.name.as_str(), x.value, x.def.transform))
            .collect();
        info.rrd.update_named(r.timestamp, &values, r.domid != info.domid);
        info.domid = r.domid;
        let missing: Vec<(String, Sample, Transform)> = info
            .rrd
            .dss
            .iter()
            .filter(|d| !read.contains_key(&d.name))
            .map(|d| (d.name.clone(), Sample::Unknown, Transform::Identity))
            .collect();
        if !missing.is_empty() {
            let m: Vec<(&str, Sample, Transform)> = missing.iter().map(|(n, v, t)| (n.as_str(), *v, *t)).collect();
            info.rrd.update_named(missing_at, &m, false);
        }
        info.dss.extend(read);
        info
    }

    /// Starts recording a live data source (`record_data_source`): `false` when the owner
    /// has no live source of that name.
    pub fn record(&mut self, name: &str) -> bool {
        let Some((ts, def)) = self.dss.get(name) else {
            return false;
        };
        self.rrd.add_ds(*ts, ds_of(def));
        true
    }

    /// The data sources a client may record: the live ones (recorded or not) and those the
    /// database has that are no longer read, as the reference lists them.
    pub fn possible(&self) -> Vec<PossibleDs> {
        let mut out: BTreeMap<String, PossibleDs> = BTreeMap::new();
        for ds in &self.rrd.dss {
            if !self.dss.contains_key(&ds.name) {
                out.insert(
                    ds.name.clone(),
                    PossibleDs {
                        name: ds.name.clone(),
                        description: "description not available".into(),
                        enabled: false,
                        standard: false,
                        units: "unknown".into(),
                        min: ds.min,
                        max: ds.max,
                    },
                );
            }
        }
        for (name, (_, def)) in &self.dss {
            out.insert(
                name.clone(),
                PossibleDs {
                    name: name.clone(),
                    description: def.description.clone(),
                    enabled: self.rrd.ds_index(name).is_some(),
                    standard: def.default,
                    units: def.units.to_owned(),
                    min: def.min,
                    max: def.max,
                },
            );
        }
        out.into_values().collect()
    }
}

/// A data source as `get_data_sources` describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct PossibleDs {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Whether it is recorded.
    pub enabled: bool,
    /// Whether it is recorded without being asked for.
    pub standard: bool,
    /// Unit.
    pub units: String,
    /// Lower bound.
    pub min: f64,
    /// Upper bound.
    pub max: f64,
}

/// Every database of the host.
#[derive(Default)]
pub struct Live {
    /// The host's.
    pub host: Option<RrdInfo>,
    /// Resident VMs', by uuid.
    pub vms: HashMap<String, RrdInfo>,
    /// Attached SRs', by uuid.
    pub srs: HashMap<String, RrdInfo>,
}

impl Live {
    /// The database of an owner.
    pub fn get(&self, owner: &Owner) -> Option<&RrdInfo> {
        match owner {
            Owner::Host => self.host.as_ref(),
            Owner::Vm(u) => self.vms.get(u),
            Owner::Sr(u) => self.srs.get(u),
        }
    }
    /// The database of an owner, to change.
    pub fn get_mut(&mut self, owner: &Owner) -> Option<&mut RrdInfo> {
        match owner {
            Owner::Host => self.host.as_mut(),
            Owner::Vm(u) => self.vms.get_mut(u),
            Owner::Sr(u) => self.srs.get_mut(u),
        }
    }
    /// Takes an owner's database out.
    pub fn take(&mut self, owner: &Owner) -> Option<RrdInfo> {
        match owner {
            Owner::Host => self.host.take(),
            Owner::Vm(u) => self.vms.remove(u),
            Owner::Sr(u) => self.srs.remove(u),
        }
    }
    /// Puts an owner's database in.
    pub fn put(&mut self, owner: Owner, info: RrdInfo) {
        match owner {
            Owner::Host => self.host = Some(info),
            Owner::Vm(u) => {
                self.vms.insert(u, info);
            }
            Owner::Sr(u) => {
                self.srs.insert(u, info);
            }
        }
    }
}

/// The largest saved database read back (uncompressed): a host with thousands of sources.
const MAX_SAVED: u64 = 256 << 20;

/// Where an owner's database is saved.
pub fn path(dir: &Path, uuid: &str) -> Option<PathBuf> {
    // A uuid is hex digits and hyphens; anything else never names a file.
    let ok = !uuid.is_empty() && uuid.len() <= 64 && uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then(|| dir.join(format!("{uuid}.gz")))
}

/// Saves a database (gzip of its internal XML dump), replacing the file atomically.
pub fn save(dir: &Path, uuid: &str, rrd: &Rrd) -> std::io::Result<()> {
    let Some(path) = path(dir, uuid) else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a uuid"));
    };
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{uuid}.gz.tmp"));
    {
        let f = std::fs::File::create(&tmp)?;
        let mut gz = flate2::write::GzEncoder::new(std::io::BufWriter::new(f), flate2::Compression::fast());
        gz.write_all(rrd.to_xml(true).as_bytes())?;
        let mut w = gz.finish()?;
        w.flush()?;
        w.get_ref().sync_all()?;
    }
    std::fs::rename(&tmp, &path)
}

/// Reads a saved database; `None` when there is none or it cannot be read (logged).
pub fn load(dir: &Path, uuid: &str) -> Option<Rrd> {
    let path = path(dir, uuid)?;
    let f = std::fs::File::open(&path).ok()?;
    let mut text = String::new();
    let read = flate2::read::GzDecoder::new(f)
        .take(MAX_SAVED)
        .read_to_string(&mut text);
    if let Err(e) = read {
        tracing::warn!(path = %path.display(), error = %e, "a saved RRD cannot be read; starting afresh");
        return None;
    }
    match Rrd::from_xml(&text) {
        Ok(r) if r.timestep == STEP => Some(r),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "a saved RRD has another step; starting afresh");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "a saved RRD is malformed; starting afresh");
            None
        }
    }
}

/// Removes a saved database, if any.
pub fn remove(dir: &Path, uuid: &str) {
    if let Some(p) = path(dir, uuid) {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::rrd::DsType;
    use crate::metrics::sources::Reading;

    fn def(name: &str, default: bool) -> DsDef {
        DsDef {
            name: name.into(),
            description: format!("{name} description"),
            units: "B",
            ty: DsType::Gauge,
            default,
            min: 0.0,
            max: f64::INFINITY,
            transform: Transform::Identity,
        }
    }

    fn round(ts: f64, domid: i64, vals: &[(&str, bool, i64)]) -> OwnerReadings {
        OwnerReadings {
            owner: Owner::Vm("u".into()),
            timestamp: ts,
            domid,
            readings: vals
                .iter()
                .map(|(n, d, v)| Reading {
                    def: def(n, *d),
                    value: Sample::Int(*v),
                })
                .collect(),
        }
    }

    #[test]
    fn archives_are_the_references() {
        let host = archives(true);
        let shape: Vec<(Cf, usize, usize)> = host.iter().map(|r| (r.cf, r.row_cnt, r.pdp_cnt)).collect();
        assert_eq!(
            shape,
            [
                (Cf::Average, 120, 1),
                (Cf::Average, 120, 12),
                (Cf::Min, 120, 12),
                (Cf::Max, 120, 12),
                (Cf::Average, 168, 720),
                (Cf::Min, 168, 720),
                (Cf::Max, 168, 720),
                (Cf::Average, 366, 17280),
                (Cf::Min, 366, 17280),
                (Cf::Max, 366, 17280),
            ]
        );
        assert_eq!(archives(false).len(), 4);
        assert!(archives(false).iter().all(|r| r.cf == Cf::Average));
    }

    #[test]
    fn readings_start_and_grow_the_database() {
        let r1 = round(1001.0, 3, &[("memory", true, 10), ("errs", false, 0)]);
        let info = RrdInfo::apply(None, &r1, false, 1001.0);
        assert_eq!(info.rrd.ds_names().collect::<Vec<_>>(), ["memory"]);
        assert_eq!(info.dss.len(), 2);
        let r2 = round(
            1006.0,
            3,
            &[("memory", true, 20), ("errs", false, 0), ("vif_0_rx", true, 5)],
        );
        let mut info = RrdInfo::apply(Some(info), &r2, false, 1006.0);
        assert_eq!(info.rrd.ds_names().collect::<Vec<_>>(), ["memory", "vif_0_rx"]);
        assert_eq!(info.rrd.query(1006.0, "memory", Cf::Average), Ok(20.0));
        // Recording an optional source adds it; one never read cannot be recorded.
        assert!(info.record("errs"));
        assert!(!info.record("nothing"));
        let p = info.possible();
        let names: Vec<(&str, bool, bool)> = p.iter().map(|d| (d.name.as_str(), d.enabled, d.standard)).collect();
        assert_eq!(
            names,
            [("errs", true, false), ("memory", true, true), ("vif_0_rx", true, true)]
        );
        // A source no longer read is fed unknown, and listed as the reference lists it.
        let r3 = round(1011.0, 3, &[("memory", true, 30)]);
        let mut fresh = info.clone();
        fresh.dss.clear();
        let info = RrdInfo::apply(Some(fresh), &r3, false, 1011.5);
        let gone = info.possible().into_iter().find(|d| d.name == "vif_0_rx").unwrap();
        assert_eq!(gone.description, "description not available");
        assert_eq!(gone.units, "unknown");
        assert!(!gone.enabled);
    }

    #[test]
    fn saved_databases_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let r = RrdInfo::apply(None, &round(1001.0, 1, &[("memory", true, 10)]), true, 1001.0);
        let mut info = r.clone();
        for k in 1..20 {
            info = RrdInfo::apply(
                Some(info),
                &round(1001.0 + 5.0 * f64::from(k), 1, &[("memory", true, 10 * i64::from(k))]),
                true,
                0.0,
            );
        }
        let uuid = "0b6c5a3e-1f2d-4c5b-9a8e-7d6c5b4a3f2e";
        save(dir.path(), uuid, &info.rrd).unwrap();
        let back = load(dir.path(), uuid).unwrap();
        assert_eq!(back.to_xml(false), {
            let mut e = info.rrd.clone();
            for ds in &mut e.dss {
                ds.last = Sample::Unknown;
                ds.unknown_sec = ds.unknown_sec.trunc();
            }
            e.to_xml(false)
        });
        assert!(load(dir.path(), "0b6c5a3e-0000-4c5b-9a8e-7d6c5b4a3f2e").is_none());
        assert!(path(dir.path(), "../etc/passwd").is_none());
        std::fs::write(dir.path().join("0b6c5a3e-1111-4c5b-9a8e-7d6c5b4a3f2e.gz"), b"junk").unwrap();
        assert!(load(dir.path(), "0b6c5a3e-1111-4c5b-9a8e-7d6c5b4a3f2e").is_none());
        remove(dir.path(), uuid);
        assert!(load(dir.path(), uuid).is_none());
    }
}
