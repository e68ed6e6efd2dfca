//! Reading what a guest's tools publish about it: the nodes under the domain's xenstore home
//! that the guest agent writes (`data/`, `attr/`, `control/`, `feature/`, `drivers/`,
//! `xenserver/attr/`), and the xenbus state of its PV frontends (`device/<kind>/<id>/state`).
//!
//! The guest owns these trees and may write anything there: the walk is bounded in depth and
//! in the number of nodes it reads, and values that are not UTF-8 are left out.
//!
//! Also what the toolstack tells the guest's tools: an interface's address settings, under
//! `xenserver/device/vif/<devid>/static-ip-setting` as XenServer's tools expect them
//! ([`write_ip_setting`]).

use std::collections::BTreeMap;

use xenctrl::{Transaction, XsHandle};

use super::layout::{dom_path, guest_owned, list_opt, read_opt, rm_quiet};
use crate::hypervisor::{DevId, DomId, IpSetting, MacAddr, VifIpSetting};

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

/// `xenserver/device/vif/<devid>` below the domain's home: the interface's toolstack-to-tools
/// directory, owned by the guest (its tools answer in it).
pub(super) fn vif_tools_path(domid: DomId, devid: DevId) -> String {
    format!("{}/xenserver/device/vif/{devid}", dom_path(domid))
}

/// Writes interface `devid`'s address settings for the guest's tools, in one transaction:
/// `static-ip-setting/mac`, then per family `enabled` (`0`: the guest's own choice, `1`:
/// static) with `address` (CIDR) and `gateway` (removed when there is none), `enabled6`,
/// `address6`, `gateway6` for IPv6. `error-code` (`0`) and `error-msg` (empty) are written
/// when absent; once the tools have answered there, a new setting leaves their answer be.
pub(super) fn write_ip_setting(
    xs: &XsHandle,
    domid: DomId,
    devid: DevId,
    mac: &MacAddr,
    setting: &VifIpSetting,
) -> xenctrl::Result<()> {
    let dir = vif_tools_path(domid, devid);
    let base = format!("{dir}/static-ip-setting");
    let mac = mac.to_string();
    xs.with_transaction(|tx| {
        if read_opt(xs, tx, &dir)?.is_none() {
            xs.write(tx, &dir, b"")?;
            xs.set_permissions(tx, &dir, &guest_owned(domid))?;
        }
        xs.write(tx, &format!("{base}/mac"), mac.as_bytes())?;
        for (key, value) in [("error-code", "0"), ("error-msg", "")] {
            let path = format!("{base}/{key}");
            if read_opt(xs, tx, &path)?.is_none() {
                xs.write(tx, &path, value.as_bytes())?;
            }
        }
        for (family, suffix) in [(&setting.v4, ""), (&setting.v6, "6")] {
            let (enabled, address, gateway) = match family {
                IpSetting::Unspecified => ("0", None, None),
                IpSetting::Static { address, gateway } => ("1", Some(address.as_str()), gateway.as_deref()),
            };
            xs.write(tx, &format!("{base}/enabled{suffix}"), enabled.as_bytes())?;
            for (key, value) in [("address", address), ("gateway", gateway)] {
                let path = format!("{base}/{key}{suffix}");
                match value {
                    Some(v) => xs.write(tx, &path, v.as_bytes())?,
                    None => rm_quiet(xs, tx, &path)?,
                }
            }
        }
        Ok(())
    })
}
