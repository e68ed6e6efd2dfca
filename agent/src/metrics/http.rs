//! What the HTTP stats paths ask of the agent (the transport calls only these):
//! `/rrd_updates`, `/host_rrd`, `/vm_rrd`, `/sr_rrd` and `/metrics`, with the reference's
//! parameters and its choice between XML and JSON.

use super::live;
use super::rrd::{Cf, Rrd};
use super::sources::Owner;
use super::updates;
use crate::schema::class_ids;
use crate::Agent;

/// Why a stats request was not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    /// A parameter is missing or malformed (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// No such database (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The document could not be made (HTTP 500).
    #[error("{0}")]
    Failed(String),
}

/// A document and its content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsDoc {
    /// `text/xml` or `application/json` (`text/plain; version=0.0.4` for `/metrics`).
    pub content_type: &'static str,
    /// The document.
    pub body: String,
}

/// JSON's content type.
pub const MIME_JSON: &str = "application/json";
/// XML's content type.
pub const MIME_XML: &str = "text/xml";

/// One entry of an `Accept` header: its type (`None` for `*`) and subtype (`None` for
/// `*`), and its weight in thousandths.
#[derive(Debug, Clone, PartialEq)]
struct Accept {
    ty: Option<(String, Option<String>)>,
    q: i64,
}

fn parse_accept_one(x: &str) -> Option<Accept> {
    let mut parts = x.split(';');
    let ty_subty = parts.next()?;
    let (ty, subty) = ty_subty.split_once('/')?;
    if subty.contains('/') {
        return None;
    }
    let star = |s: &str| (s != "*").then(|| s.to_owned());
    let ty = star(ty).map(|t| (t, star(subty)));
    let mut q = 1000;
    for p in parts {
        let (k, v) = p.split_once('=')?;
        if k == "q" {
            let f: f64 = v.parse().ok()?;
            q = (1000.0 * f) as i64;
        }
    }
    Some(Accept { ty, q })
}

/// Reads an `Accept` header as the reference does (entries split on commas, no trimming).
fn parse_accept(s: &str) -> Option<Vec<Accept>> {
    s.split(',').filter(|x| !x.is_empty()).map(parse_accept_one).collect()
}

fn accept_matches(ty: &str, a: &Accept) -> bool {
    match &a.ty {
        None => true,
        Some((t, Some(sub))) => ty == format!("{t}/{sub}"),
        Some((t, None)) => ty.split('/').next() == Some(t.as_str()),
    }
}

/// The types of `from` the client prefers most, in `from`'s order.
fn preferred<'a>(from: &[&'a str], mut types: Vec<Accept>) -> Vec<&'a str> {
    // Weight first, then the more specific entry.
    let rank = |a: &Accept| match &a.ty {
        None => 2,
        Some((_, None)) => 1,
        Some((_, Some(_))) => 0,
    };
    types.sort_by(|a, b| b.q.cmp(&a.q).then_with(|| rank(a).cmp(&rank(b))));
    let mut rest: &[Accept] = &types;
    while let Some(first) = rest.first() {
        let n = rest.iter().take_while(|a| a.q == first.q).count();
        let (best, others) = rest.split_at(n);
        let found: Vec<&str> = from
            .iter()
            .copied()
            .filter(|f| best.iter().any(|a| accept_matches(f, a)))
            .collect();
        if !found.is_empty() {
            return found;
        }
        rest = others;
    }
    Vec::new()
}

/// Whether to answer in JSON: as the `Accept` header prefers (between JSON and XML), else
/// when the query names `json`.
pub fn client_prefers_json(accept: Option<&str>, query_has_json: bool) -> bool {
    accept
        .and_then(parse_accept)
        .and_then(|types| {
            preferred(&[MIME_JSON, MIME_XML], types)
                .first()
                .map(|t| *t == MIME_JSON)
        })
        .unwrap_or(query_has_json)
}

fn doc(json: bool, rrd: &Rrd) -> StatsDoc {
    if json {
        StatsDoc {
            content_type: MIME_JSON,
            body: rrd.to_json(),
        }
    } else {
        StatsDoc {
            content_type: MIME_XML,
            body: rrd.to_xml(false),
        }
    }
}

/// Which VMs' or SRs' databases `/rrd_updates` includes.
enum Filter {
    All,
    Zero,
    Only(Vec<String>),
}

impl Filter {
    fn of(query: &[(String, String)], key: &str, default: Filter) -> Filter {
        let v: Vec<String> = query.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect();
        if v.is_empty() {
            default
        } else {
            Filter::Only(v)
        }
    }
    fn keeps(&self, uuid: &str) -> bool {
        match self {
            Filter::All => true,
            Filter::Zero => false,
            Filter::Only(v) => v.iter().any(|u| u == uuid),
        }
    }
}

impl Agent {
    /// `GET /rrd_updates`: `start` (required; negative: relative to the last update), `cf`,
    /// `interval`, `host=true`, `vm_uuid` (repeatable; all VMs when absent), `sr_uuid`
    /// (repeatable; none when absent), `json`.
    pub fn rrd_updates(&self, query: &[(String, String)], accept: Option<&str>) -> Result<StatsDoc, StatsError> {
        let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
        let start: i64 = get("start")
            .ok_or_else(|| StatsError::BadRequest("get_rrd_updates: missing the 'start' parameter".into()))?
            .trim()
            .parse()
            .map_err(|_| StatsError::BadRequest("get_rrd_updates: 'start' is not an integer".into()))?;
        let cf = get("cf").and_then(Cf::parse);
        let interval = get("interval").and_then(|i| i.trim().parse::<i64>().ok()).unwrap_or(0);
        let host = get("host") == Some("true");
        let vms = Filter::of(query, "vm_uuid", Filter::All);
        let srs = Filter::of(query, "sr_uuid", Filter::Zero);
        let json = client_prefers_json(accept, get("json").is_some());
        let host_uuid = super::host_uuid(self);
        let live = self.metrics.live.lock();
        let mut rrds: Vec<(String, &Rrd)> = Vec::new();
        if host {
            if let Some(h) = &live.host {
                rrds.push((format!("host:{host_uuid}:"), &h.rrd));
            }
        }
        let mut vm_list: Vec<(&String, &live::RrdInfo)> = live.vms.iter().filter(|(u, _)| vms.keeps(u)).collect();
        vm_list.sort_by(|a, b| a.0.cmp(b.0));
        rrds.extend(vm_list.into_iter().map(|(u, i)| (format!("vm:{u}:"), &i.rrd)));
        let mut sr_list: Vec<(&String, &live::RrdInfo)> = live.srs.iter().filter(|(u, _)| srs.keeps(u)).collect();
        sr_list.sort_by(|a, b| a.0.cmp(b.0));
        rrds.extend(sr_list.into_iter().map(|(u, i)| (format!("sr:{u}:"), &i.rrd)));
        let table = updates::export(&rrds, start, interval, cf).map_err(|e| StatsError::Failed(e.to_string()))?;
        Ok(if json {
            StatsDoc {
                content_type: MIME_JSON,
                body: table.to_json(),
            }
        } else {
            StatsDoc {
                content_type: MIME_XML,
                body: table.to_xml(),
            }
        })
    }

    /// `GET /host_rrd`: the host's database.
    pub fn host_rrd(&self, json: bool) -> Result<StatsDoc, StatsError> {
        let live = self.metrics.live.lock();
        let h = live
            .host
            .as_ref()
            .ok_or_else(|| StatsError::Failed("No host RRD available!".into()))?;
        Ok(doc(json, &h.rrd))
    }

    /// `GET /vm_rrd?uuid=`: a VM's database: the live one of a resident VM, else the one
    /// saved when it last stopped.
    pub async fn vm_rrd(&self, uuid: &str, json: bool) -> Result<StatsDoc, StatsError> {
        self.owner_rrd(Owner::Vm(uuid.to_owned()), uuid, json).await
    }

    /// `GET /sr_rrd?uuid=`: an SR's database.
    pub async fn sr_rrd(&self, uuid: &str, json: bool) -> Result<StatsDoc, StatsError> {
        self.owner_rrd(Owner::Sr(uuid.to_owned()), uuid, json).await
    }

    async fn owner_rrd(&self, owner: Owner, uuid: &str, json: bool) -> Result<StatsDoc, StatsError> {
        if let Some(i) = self.metrics.live.lock().get(&owner) {
            return Ok(doc(json, &i.rrd));
        }
        let class = match owner {
            Owner::Sr(_) => class_ids::SR,
            _ => class_ids::VM,
        };
        if self.store.ref_by_uuid(class, uuid).is_none() {
            return Err(StatsError::NotFound(format!("no {} with uuid {uuid}", class.name())));
        }
        let dir = super::rrd_dir(self);
        let u = uuid.to_owned();
        let saved = tokio::task::spawn_blocking(move || live::load(&dir, &u))
            .await
            .map_err(|e| StatsError::Failed(e.to_string()))?;
        saved
            .map(|r| doc(json, &r))
            .ok_or_else(|| StatsError::NotFound(format!("no RRD for {uuid}")))
    }

    /// `GET /metrics`: the Prometheus text form.
    pub fn prometheus_metrics(&self) -> StatsDoc {
        StatsDoc {
            content_type: super::prometheus::CONTENT_TYPE,
            body: super::prometheus::render(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_as_the_reference_reads_them() {
        assert!(!client_prefers_json(None, false));
        assert!(client_prefers_json(None, true));
        // Anything: JSON, the first the reference offers.
        assert!(client_prefers_json(Some("*/*"), false));
        assert!(!client_prefers_json(Some("text/xml"), true));
        assert!(client_prefers_json(Some("application/json"), false));
        assert!(!client_prefers_json(Some("application/json;q=0.5,text/xml"), true));
        assert!(client_prefers_json(Some("text/*;q=0.5,application/*"), false));
        // No entry names either: the query decides.
        assert!(!client_prefers_json(Some("image/png"), false));
        assert!(client_prefers_json(Some("image/png"), true));
        // Unreadable headers: the query decides. (Entries are not trimmed: " text/xml" is a
        // type of its own.)
        assert!(client_prefers_json(Some("garbage"), true));
        assert!(client_prefers_json(Some("image/png, text/xml"), true));
        assert!(client_prefers_json(Some("text/xml;q=x"), true));
    }
}
