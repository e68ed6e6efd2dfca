//! The simulated guest's tools: what a Linux guest agent writes under its domain's xenstore
//! home (`data/`, `attr/`, `control/`, `feature/`) and the state its PV frontends reach, a
//! few seconds after the guest boots.
//!
//! Each interface reports the addresses the toolstack configured for it (a static setting),
//! or else one IPv4 and one IPv6 address derived from its MAC, the same every time.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::hypervisor::types::{BlockDevice, DevId, MacAddr, NetDevice};

/// How long after boot the guest's agent first reports.
pub(super) const AGENT_DELAY: Duration = Duration::from_secs(3);

/// xenbus' `Connected` state, which a PV frontend reaches once its driver runs.
const XENBUS_CONNECTED: &str = "4";

/// Addresses the toolstack configured for one interface (CIDR form).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct StaticAddresses {
    pub ipv4: Vec<String>,
    pub ipv6: Vec<String>,
}

/// What the agent reads of its guest.
pub(super) struct AgentFacts<'a> {
    pub hostname: &'a str,
    pub memory_actual: u64,
    pub blocks: Vec<&'a BlockDevice>,
    pub nets: Vec<&'a NetDevice>,
    pub statics: &'a BTreeMap<DevId, StaticAddresses>,
}

/// The IPv4 address a guest's interface takes by itself: `10.x.y.z` from the MAC's last
/// three bytes (`z` kept within 1..=253).
pub(super) fn default_ipv4(mac: &MacAddr) -> Ipv4Addr {
    let m = mac.0;
    Ipv4Addr::new(10, m[3], m[4], m[5] % 253 + 1)
}

/// The IPv6 address a guest's interface takes by itself: the MAC's modified EUI-64 in the
/// unique-local prefix `fd00::/64`.
pub(super) fn default_ipv6(mac: &MacAddr) -> Ipv6Addr {
    let m = mac.0;
    let g = |a: u8, b: u8| (u16::from(a) << 8) | u16::from(b);
    Ipv6Addr::new(
        0xfd00,
        0,
        0,
        0,
        g(m[0] ^ 0x02, m[1]),
        g(m[2], 0xff),
        g(0xfe, m[3]),
        g(m[4], m[5]),
    )
}

/// The address part of a CIDR string (`192.0.2.10/24` → `192.0.2.10`).
fn address_of(cidr: &str) -> &str {
    cidr.split_once('/').map_or(cidr, |(a, _)| a).trim()
}

/// The nodes the agent has written, relative to the domain's xenstore home.
pub(super) fn keys(f: &AgentFacts<'_>) -> BTreeMap<String, String> {
    let mut k = BTreeMap::new();
    let mut put = |p: &str, v: String| {
        k.insert(p.to_owned(), v);
    };
    put("data/os_name", "xapid simulated Linux 6.1".into());
    put("data/os_uname", "6.1.0-xapid-sim".into());
    put("data/os_distro", "xapid-sim".into());
    put("data/os_majorver", "6".into());
    put("data/os_minorver", "1".into());
    put("data/host_name_dns", f.hostname.to_owned());
    let total_kib = f.memory_actual / 1024;
    put("data/meminfo_total", total_kib.to_string());
    put("data/meminfo_free", (total_kib / 8 * 5).to_string());
    put("attr/PVAddons/MajorVersion", "8".into());
    put("attr/PVAddons/MinorVersion", "4".into());
    put("attr/PVAddons/MicroVersion", "0".into());
    put("attr/PVAddons/BuildVersion", "1".into());
    // `static-ip-setting`: these tools apply the toolstack's static address settings.
    for feature in [
        "balloon",
        "poweroff",
        "reboot",
        "static-ip-setting",
        "suspend",
        "vcpu-hotplug",
    ] {
        put(&format!("control/feature-{feature}"), "1".into());
    }
    put("feature/hotplug/vbd", "1".into());
    put("feature/hotplug/vif", "1".into());
    for b in &f.blocks {
        put(&format!("device/vbd/{}/state", b.devid), XENBUS_CONNECTED.into());
    }
    for n in &f.nets {
        let d = n.devid;
        put(&format!("device/vif/{d}/state"), XENBUS_CONNECTED.into());
        let configured = f.statics.get(&d);
        let (v4, v6): (Vec<String>, Vec<String>) = match configured {
            Some(s) if !s.ipv4.is_empty() || !s.ipv6.is_empty() => (
                s.ipv4.iter().map(|a| address_of(a).to_owned()).collect(),
                s.ipv6.iter().map(|a| address_of(a).to_owned()).collect(),
            ),
            _ => (
                vec![default_ipv4(&n.mac).to_string()],
                vec![default_ipv6(&n.mac).to_string()],
            ),
        };
        for (i, a) in v4.into_iter().enumerate() {
            put(&format!("attr/vif/{d}/ipv4/{i}"), a);
        }
        for (i, a) in v6.into_iter().enumerate() {
            put(&format!("attr/vif/{d}/ipv6/{i}"), a);
        }
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(devid: DevId, mac: [u8; 6]) -> NetDevice {
        NetDevice {
            devid,
            mac: MacAddr(mac),
            mtu: 1500,
            bridge: "xenbr0".into(),
        }
    }

    #[test]
    fn addresses_follow_the_mac_or_the_static_setting() {
        let a = nic(0, [0x02, 0x16, 0x3e, 0x12, 0x34, 0xff]);
        let b = nic(1, [0x02, 0x16, 0x3e, 0x00, 0x00, 0x00]);
        assert_eq!(default_ipv4(&a.mac).to_string(), "10.18.52.3");
        assert_eq!(default_ipv4(&b.mac).to_string(), "10.0.0.1");
        assert_eq!(default_ipv6(&a.mac).to_string(), "fd00::16:3eff:fe12:34ff");
        let mut statics = BTreeMap::new();
        statics.insert(
            1,
            StaticAddresses {
                ipv4: vec!["192.0.2.7/24".into(), "192.0.2.8/24".into()],
                ipv6: vec![],
            },
        );
        let k = keys(&AgentFacts {
            hostname: "web-01",
            memory_actual: 512 << 20,
            blocks: vec![],
            nets: vec![&a, &b],
            statics: &statics,
        });
        assert_eq!(k["attr/vif/0/ipv4/0"], "10.18.52.3");
        assert_eq!(k["attr/vif/0/ipv6/0"], "fd00::16:3eff:fe12:34ff");
        assert_eq!(k["attr/vif/1/ipv4/0"], "192.0.2.7");
        assert_eq!(k["attr/vif/1/ipv4/1"], "192.0.2.8");
        assert!(!k.contains_key("attr/vif/1/ipv6/0"));
        assert_eq!(k["data/meminfo_total"], "524288");
        assert_eq!(k["device/vif/1/state"], "4");
        assert_eq!(k["data/host_name_dns"], "web-01");
    }
}
