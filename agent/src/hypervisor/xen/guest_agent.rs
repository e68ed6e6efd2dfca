//! Reading what a guest's tools publish about it: the nodes under the domain's xenstore home
//! that the guest agent writes (`data/`, `attr/`, `control/`, `feature/`, `drivers/`,
//! `xenserver/attr/`), and the xenbus state of its PV frontends (`device/<kind>/<id>/state`).
//!
//! The guest owns these trees and may write anything there: the walk is bounded in depth and
//! in the number of nodes it reads, and values that are not UTF-8 are left out.

use std::collections::BTreeMap;

use xenctrl::{Transaction, XsHandle};

use super::layout::{dom_path, list_opt, read_opt};
use crate::hypervisor::DomId;

/// The trees the guest agent writes, relative to the domain's home.
const TREES: [&str; 6] = ["data", "attr", "control", "feature", "drivers", "xenserver/attr"];

/// The frontend kinds whose state tells whether PV drivers run.
const FRONTENDS: [&str; 2] = ["vbd", "vif"];

/// How deep below a tree's root the walk goes.
const MAX_DEPTH: usize = 6;

/// How many nodes one reading visits at most.
const MAX_NODES: usize = 2048;

/// The guest agent's nodes of domain `domid`, as paths relative to its home.
pub(super) fn read(xs: &XsHandle, domid: DomId) -> xenctrl::Result<BTreeMap<String, String>> {
    let home = dom_path(domid);
    let mut out = BTreeMap::new();
    let mut budget = MAX_NODES;
    for tree in TREES {
        walk(xs, &home, tree, 0, &mut budget, &mut out)?;
    }
    for kind in FRONTENDS {
        for id in list_opt(xs, Transaction::NONE, &format!("{home}/device/{kind}"))? {
            let rel = format!("device/{kind}/{id}/state");
            if let Some(v) = read_opt(xs, Transaction::NONE, &format!("{home}/{rel}"))? {
                out.insert(rel, v);
            }
        }
    }
    Ok(out)
}

/// Reads node `rel` (its value, if it has one) and what is below it.
fn walk(
    xs: &XsHandle,
    home: &str,
    rel: &str,
    depth: usize,
    budget: &mut usize,
    out: &mut BTreeMap<String, String>,
) -> xenctrl::Result<()> {
    if *budget == 0 {
        return Ok(());
    }
    *budget -= 1;
    let path = format!("{home}/{rel}");
    let children = list_opt(xs, Transaction::NONE, &path)?;
    if children.is_empty() {
        match read_opt(xs, Transaction::NONE, &path) {
            Ok(Some(v)) if !v.is_empty() || depth > 0 => {
                out.insert(rel.to_owned(), v);
            }
            Ok(_) => {}
            // A value that is not text: left out.
            Err(xenctrl::XenctrlError::InvalidData { .. }) => {}
            Err(e) => return Err(e),
        }
        return Ok(());
    }
    if depth >= MAX_DEPTH {
        return Ok(());
    }
    for c in children {
        walk(xs, home, &format!("{rel}/{c}"), depth + 1, budget, out)?;
    }
    Ok(())
}
