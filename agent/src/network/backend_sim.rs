//! The simulated network backend: the bridges, sub-interfaces, bonds and tunnels a real host
//! would have, kept in memory. The host starts with four NICs, `eth0` to `eth3`.

use super::backend::{LinkPlan, NetBackend, NetError, NetFuture, Nic, PifPlan};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// How many NICs the simulated host has.
pub const SIM_NICS: usize = 4;

/// One simulated device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimLink {
    /// `nic`, `bridge`, `vlan`, `bond`, `gretap`, `vxlan`.
    pub kind: &'static str,
    /// The bridge or bond it is a port of.
    pub master: Option<String>,
    /// Administratively up.
    pub up: bool,
    /// Its MTU.
    pub mtu: u32,
    /// Its addresses.
    pub addresses: Vec<(IpAddr, u8)>,
}

/// The simulated host's devices.
pub struct SimNet {
    links: Mutex<BTreeMap<String, SimLink>>,
}

impl Default for SimNet {
    fn default() -> Self {
        let links = (0..SIM_NICS)
            .map(|i| {
                (
                    format!("eth{i}"),
                    SimLink {
                        kind: "nic",
                        master: None,
                        up: false,
                        mtu: 1500,
                        addresses: Vec::new(),
                    },
                )
            })
            .collect();
        SimNet {
            links: Mutex::new(links),
        }
    }
}

/// The MAC of simulated NIC `ethN`.
pub fn sim_mac(device: &str) -> String {
    let n: u8 = device.trim_start_matches("eth").parse().unwrap_or(0);
    format!("02:00:5e:00:00:{n:02x}")
}

impl SimNet {
    /// Every device, by name (tests read it as they read `ip link` on a real host).
    pub fn snapshot(&self) -> BTreeMap<String, SimLink> {
        self.links.lock().clone()
    }

    /// The host as after a reboot: its NICs only, down, every device the daemon made gone.
    #[cfg(test)]
    pub fn reboot(&self) {
        *self.links.lock() = SimNet::default().links.into_inner();
    }

    fn new_link(kind: &'static str, mtu: u32) -> SimLink {
        SimLink {
            kind,
            master: None,
            up: true,
            mtu,
            addresses: Vec::new(),
        }
    }

    fn up(&self, plan: &PifPlan) -> Result<(), NetError> {
        let mut links = self.links.lock();
        let missing = |links: &BTreeMap<String, SimLink>, d: &str| {
            if links.contains_key(d) {
                Ok(())
            } else {
                Err(NetError::NoSuchDevice(d.to_owned()))
            }
        };
        match &plan.link {
            LinkPlan::Physical { device } => missing(&links, device)?,
            LinkPlan::Vlan { parent, .. } => missing(&links, parent)?,
            LinkPlan::Bond { members, .. } => members.iter().try_for_each(|m| missing(&links, m))?,
            LinkPlan::Tunnel { transport, .. } => missing(&links, transport)?,
        }
        let bridge = links
            .entry(plan.bridge.clone())
            .or_insert_with(|| Self::new_link("bridge", plan.mtu));
        bridge.up = true;
        bridge.mtu = plan.mtu;
        if !plan.ip.dynamic {
            bridge.addresses = plan.ip.addresses.clone();
        }
        let device = plan.link.device().to_owned();
        let kind = match &plan.link {
            LinkPlan::Physical { .. } => "nic",
            LinkPlan::Vlan { parent, .. } => {
                if let Some(p) = links.get_mut(parent) {
                    p.up = true;
                }
                "vlan"
            }
            LinkPlan::Bond { members, device, .. } => {
                for m in members {
                    if let Some(l) = links.get_mut(m) {
                        l.master = Some(device.clone());
                        l.up = true;
                    }
                }
                "bond"
            }
            LinkPlan::Tunnel { protocol, .. } => match protocol {
                crate::schema::enums::TunnelProtocol::gre => "gretap",
                crate::schema::enums::TunnelProtocol::vxlan => "vxlan",
            },
        };
        let link = links.entry(device).or_insert_with(|| Self::new_link(kind, plan.mtu));
        link.master = Some(plan.bridge.clone());
        link.up = true;
        link.mtu = plan.mtu;
        Ok(())
    }

    fn down(&self, plan: &PifPlan) {
        let mut links = self.links.lock();
        let device = plan.link.device().to_owned();
        match &plan.link {
            LinkPlan::Physical { .. } => {
                if let Some(l) = links.get_mut(&device) {
                    l.master = None;
                }
            }
            LinkPlan::Bond { members, .. } => {
                for m in members {
                    if let Some(l) = links.get_mut(m) {
                        l.master = None;
                    }
                }
                links.remove(&device);
            }
            LinkPlan::Vlan { .. } | LinkPlan::Tunnel { .. } => {
                links.remove(&device);
            }
        }
        links.remove(&plan.bridge);
        for l in links.values_mut() {
            if l.master.as_deref() == Some(plan.bridge.as_str()) {
                l.master = None;
            }
        }
    }
}

impl NetBackend for SimNet {
    fn name(&self) -> &'static str {
        "simulator"
    }

    fn bring_up<'a>(&'a self, plan: &'a PifPlan) -> NetFuture<'a, ()> {
        Box::pin(async move { self.up(plan) })
    }

    fn bring_down<'a>(&'a self, plan: &'a PifPlan) -> NetFuture<'a, ()> {
        Box::pin(async move {
            self.down(plan);
            Ok(())
        })
    }

    fn nics(&self) -> NetFuture<'_, Vec<Nic>> {
        Box::pin(async move {
            Ok(self
                .links
                .lock()
                .iter()
                .filter(|(_, l)| l.kind == "nic")
                .map(|(d, l)| Nic {
                    device: d.clone(),
                    mac: sim_mac(d),
                    mtu: l.mtu,
                })
                .collect())
        })
    }

    fn has_vlan<'a>(&'a self, parent: &'a str, tag: u16) -> NetFuture<'a, bool> {
        Box::pin(async move { Ok(self.links.lock().contains_key(&format!("{parent}.{tag}"))) })
    }

    fn move_port<'a>(&'a self, port: &'a str, bridge: &'a str) -> NetFuture<'a, ()> {
        Box::pin(async move {
            if let Some(l) = self.links.lock().get_mut(port) {
                l.master = Some(bridge.to_owned());
            }
            Ok(())
        })
    }

    fn as_sim(&self) -> Option<&SimNet> {
        Some(self)
    }
}
