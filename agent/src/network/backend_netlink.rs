//! The Linux network backend: bridges, 802.1Q sub-interfaces, the bonding driver, gretap and
//! vxlan devices and addresses, made and removed through rtnetlink.
//!
//! The netlink connection runs on its own thread with its own tokio runtime, so requests can
//! come from any of the daemon's runtimes. A VLAN is `<parent>.<tag>`; a bond's mode is the
//! kernel's for the XenAPI mode (`active-backup`; `balance-slb`, an Open vSwitch mode, as
//! `balance-alb`, the kernel's closest; `lacp` as `802.3ad` with the hashing and LACP rate of
//! `Bond.properties`), with link monitoring every 100 ms.

use super::backend::{IpPlan, LinkPlan, NetBackend, NetError, NetFuture, Nic, PifPlan};
use crate::schema::enums::{BondMode, TunnelProtocol};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    BondLacpRate, BondMode as KernelBondMode, BondXmitHashPolicy, GreIOFlags, InfoData, InfoKind, InfoVlan,
    LinkAttribute, LinkInfo, LinkLayerType, LinkMessage,
};
use rtnetlink::{Handle, LinkBond, LinkBridge, LinkGre, LinkMessageBuilder, LinkUnspec, LinkVlan, LinkVxlan};
use std::net::IpAddr;

/// The UDP port of VXLAN (IANA).
pub const VXLAN_PORT: u16 = 4789;
/// How often the bonding driver checks its members' links, in milliseconds.
pub const BOND_MIIMON_MS: u32 = 100;

/// The host's networking through rtnetlink.
pub struct LinuxNet {
    handle: Handle,
    /// The DHCP clients of the bridges configured by DHCP.
    dhcp: super::dhcp::DhcpClients,
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let op = op.into();
    move |e| NetError::Netlink {
        op,
        message: e.to_string(),
    }
}

/// Whether a netlink error is the kernel's "no such device".
fn is_enodev(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.is_some_and(|c| c.get() == -libc::ENODEV))
}

fn attr_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn attr_kind(m: &LinkMessage) -> Option<&InfoKind> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

fn mac_text(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn mac_bytes(mac: &str) -> Option<Vec<u8>> {
    let bytes: Vec<u8> = mac.split(':').filter_map(|p| u8::from_str_radix(p, 16).ok()).collect();
    (bytes.len() == 6).then_some(bytes)
}

impl LinuxNet {
    /// Opens a netlink connection on a thread of its own.
    pub fn open() -> Result<LinuxNet, NetError> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("xapid-netlink".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    match rtnetlink::new_connection() {
                        Ok((conn, handle, _)) => {
                            let _ = tx.send(Ok(handle));
                            conn.await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(NetError::Socket)?;
        let handle = rx
            .recv()
            .map_err(|e| NetError::Socket(std::io::Error::other(e)))?
            .map_err(NetError::Socket)?;
        Ok(LinuxNet {
            handle,
            dhcp: super::dhcp::DhcpClients::new(),
        })
    }

    async fn link(&self, name: &str) -> Result<Option<LinkMessage>, NetError> {
        let mut s = self.handle.link().get().match_name(name).execute();
        match s.try_next().await {
            Ok(m) => Ok(m),
            Err(e) if is_enodev(&e) => Ok(None),
            Err(e) => Err(nl(format!("get link {name}"))(e)),
        }
    }

    async fn index(&self, name: &str) -> Result<Option<u32>, NetError> {
        Ok(self.link(name).await?.map(|m| m.header.index))
    }

    async fn must_index(&self, name: &str) -> Result<u32, NetError> {
        self.index(name)
            .await?
            .ok_or_else(|| NetError::NoSuchDevice(name.to_owned()))
    }

    async fn all_links(&self) -> Result<Vec<LinkMessage>, NetError> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("list links"))
    }

    async fn add(&self, what: &str, msg: LinkMessage) -> Result<(), NetError> {
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!("add {what}")))
    }

    async fn set(&self, what: &str, msg: LinkMessage) -> Result<(), NetError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl(format!("set {what}")))
    }

    async fn delete(&self, name: &str) -> Result<(), NetError> {
        if let Some(i) = self.index(name).await? {
            self.handle
                .link()
                .del(i)
                .execute()
                .await
                .map_err(nl(format!("delete {name}")))?;
        }
        Ok(())
    }

    /// Joins `port` to `controller` (a bridge or bond), then brings it up: two requests, as
    /// the kernel applies a request's flags before its controller, and the bonding driver
    /// refuses a member that is up (`EPERM`, "Device can not be enslaved while up").
    async fn enslave(&self, port: u32, controller: u32, what: &str) -> Result<(), NetError> {
        self.set(what, LinkUnspec::new_with_index(port).controller(controller).build())
            .await?;
        self.set(what, LinkUnspec::new_with_index(port).up().build()).await
    }

    async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<u32, NetError> {
        if self.index(name).await?.is_none() {
            self.add(&format!("bridge {name}"), LinkBridge::new(name).mtu(mtu).build())
                .await?;
        }
        let i = self.must_index(name).await?;
        self.set(name, LinkUnspec::new_with_index(i).up().build()).await?;
        Ok(i)
    }

    fn bond_message(device: &str, mode: BondMode, properties: &[(String, String)], mac: &str) -> LinkMessage {
        let prop = |k: &str| properties.iter().find(|(p, _)| p == k).map(|(_, v)| v.as_str());
        let b = LinkBond::new(device).miimon(BOND_MIIMON_MS);
        let b = match mode {
            BondMode::active_backup => b.mode(KernelBondMode::ActiveBackup),
            BondMode::balance_slb => b.mode(KernelBondMode::BalanceAlb),
            BondMode::lacp => {
                let hash = if prop("hashing_algorithm") == Some("src_mac") {
                    BondXmitHashPolicy::Layer2
                } else {
                    BondXmitHashPolicy::Layer34
                };
                let rate = if prop("lacp-time") == Some("fast") {
                    BondLacpRate::Fast
                } else {
                    BondLacpRate::Slow
                };
                b.mode(KernelBondMode::Ieee8023Ad)
                    .xmit_hash_policy(hash)
                    .ad_lacp_rate(rate)
            }
        };
        match mac_bytes(mac) {
            Some(m) => b.address(m).build(),
            None => b.build(),
        }
    }

    async fn tunnel_message(
        &self,
        device: &str,
        protocol: TunnelProtocol,
        transport: &str,
        key: u32,
        remote: Option<IpAddr>,
        local: Option<IpAddr>,
    ) -> Result<LinkMessage, NetError> {
        let dev = self.index(transport).await?;
        Ok(match protocol {
            TunnelProtocol::gre => {
                let mut b = LinkMessageBuilder::<LinkGre>::new_gretap(device)
                    .iflags(GreIOFlags::Key)
                    .oflags(GreIOFlags::Key)
                    .ikey(key)
                    .okey(key);
                if let Some(IpAddr::V4(r)) = remote {
                    b = b.remote(r);
                }
                if let Some(IpAddr::V4(l)) = local {
                    b = b.local(l);
                }
                if let Some(d) = dev {
                    b = b.dev(d);
                }
                b.build()
            }
            TunnelProtocol::vxlan => {
                let mut b = LinkVxlan::new(device, key).port(VXLAN_PORT);
                match remote {
                    Some(IpAddr::V4(r)) => b = b.remote(r),
                    Some(IpAddr::V6(r)) => b = b.remote6(r),
                    None => {}
                }
                match local {
                    Some(IpAddr::V4(l)) => b = b.local(l),
                    Some(IpAddr::V6(l)) => b = b.local6(l),
                    None => {}
                }
                if let Some(d) = dev {
                    b = b.dev(d);
                }
                b.build()
            }
        })
    }

    async fn up(&self, plan: &PifPlan) -> Result<(), NetError> {
        let br = self.ensure_bridge(&plan.bridge, plan.mtu).await?;
        let device = plan.link.device().to_owned();
        match &plan.link {
            LinkPlan::Physical { device } => {
                let i = self.must_index(device).await?;
                self.enslave(i, br, device).await?;
            }
            LinkPlan::Vlan { device, parent, tag } => {
                let p = self.must_index(parent).await?;
                self.set(parent, LinkUnspec::new_with_index(p).up().build()).await?;
                if self.index(device).await?.is_none() {
                    self.add(
                        &format!("vlan {device}"),
                        LinkVlan::new(device, p, *tag).mtu(plan.mtu).build(),
                    )
                    .await?;
                }
                let i = self.must_index(device).await?;
                self.enslave(i, br, device).await?;
            }
            LinkPlan::Bond {
                device,
                members,
                mode,
                properties,
                mac,
            } => {
                let mut member_ix = Vec::new();
                for m in members {
                    member_ix.push((m, self.must_index(m).await?));
                }
                if self.index(device).await?.is_none() {
                    self.add(
                        &format!("bond {device}"),
                        Self::bond_message(device, *mode, properties, mac),
                    )
                    .await?;
                }
                let b = self.must_index(device).await?;
                for (m, i) in member_ix {
                    // The bonding driver takes only members that are down.
                    self.set(m, LinkUnspec::new_with_index(i).down().build()).await?;
                    self.enslave(i, b, m).await?;
                }
                self.enslave(b, br, device).await?;
            }
            LinkPlan::Tunnel {
                device,
                protocol,
                transport,
                key,
                remote,
                local,
            } => {
                if self.index(device).await?.is_none() {
                    let msg = self
                        .tunnel_message(device, *protocol, transport, *key, *remote, *local)
                        .await?;
                    self.add(&format!("{} {device}", protocol.name()), msg).await?;
                }
                let i = self.must_index(device).await?;
                self.enslave(i, br, device).await?;
            }
        }
        // A tunnel's MTU is the kernel's (the transport's less the encapsulation); the others
        // take the network's.
        if !matches!(plan.link, LinkPlan::Tunnel { .. }) {
            let i = self.must_index(&device).await?;
            self.set(&device, LinkUnspec::new_with_index(i).mtu(plan.mtu).build())
                .await?;
        }
        self.addresses(br, &plan.bridge, &plan.ip).await
    }

    /// Makes the bridge's addresses the plan's (leaving IPv6 link-local ones), and adds the
    /// default routes through its gateways.
    async fn addresses(&self, index: u32, bridge: &str, ip: &IpPlan) -> Result<(), NetError> {
        if ip.dhcp_v4 {
            self.dhcp.ensure(bridge).await?;
        } else {
            self.dhcp.stop(bridge);
        }
        if ip.dynamic {
            return Ok(());
        }
        let current: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("list addresses of {bridge}")))?;
        let mut present = Vec::new();
        for m in current {
            let addr = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(a) | AddressAttribute::Address(a) => Some(*a),
                _ => None,
            });
            let Some(addr) = addr else { continue };
            let link_local = matches!(addr, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
            let wanted = ip.addresses.contains(&(addr, m.header.prefix_len));
            if wanted {
                present.push((addr, m.header.prefix_len));
            } else if !link_local {
                self.handle
                    .address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(nl(format!("delete {addr} from {bridge}")))?;
            }
        }
        for (a, p) in &ip.addresses {
            if !present.contains(&(*a, *p)) {
                self.handle
                    .address()
                    .add(index, *a, *p)
                    .replace()
                    .execute()
                    .await
                    .map_err(nl(format!("add {a}/{p} to {bridge}")))?;
            }
        }
        for gw in &ip.gateways {
            let route = match gw {
                IpAddr::V4(g) => rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                    .gateway(*g)
                    .output_interface(index)
                    .build(),
                IpAddr::V6(g) => rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                    .gateway(*g)
                    .output_interface(index)
                    .build(),
            };
            self.handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("default route via {gw} on {bridge}")))?;
        }
        Ok(())
    }

    async fn down(&self, plan: &PifPlan) -> Result<(), NetError> {
        self.dhcp.stop(&plan.bridge);
        match &plan.link {
            LinkPlan::Physical { device } => {
                if let Some(i) = self.index(device).await? {
                    self.set(device, LinkUnspec::new_with_index(i).nocontroller().build())
                        .await?;
                }
            }
            LinkPlan::Bond { device, members, .. } => {
                for m in members {
                    if let Some(i) = self.index(m).await? {
                        self.set(m, LinkUnspec::new_with_index(i).nocontroller().build())
                            .await?;
                    }
                }
                self.delete(device).await?;
            }
            LinkPlan::Vlan { device, .. } | LinkPlan::Tunnel { device, .. } => self.delete(device).await?,
        }
        self.delete(&plan.bridge).await
    }

    /// The links that stand for NICs: Ethernet devices with no kind (hardware) or veth pairs
    /// (what a test namespace gives), not a VM's backend port.
    async fn list_nics(&self) -> Result<Vec<Nic>, NetError> {
        let mut out = Vec::new();
        for m in self.all_links().await? {
            if m.header.link_layer_type != LinkLayerType::Ether {
                continue;
            }
            let nic_like = match attr_kind(&m) {
                None => true,
                Some(k) => *k == InfoKind::Veth,
            };
            let Some(name) = attr_name(&m) else { continue };
            if !nic_like || name.starts_with("vif") || name.starts_with("tap") {
                continue;
            }
            let mac = m.attributes.iter().find_map(|a| match a {
                LinkAttribute::Address(b) => Some(mac_text(b)),
                _ => None,
            });
            let mtu = m.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(v) => Some(*v),
                _ => None,
            });
            out.push(Nic {
                device: name.to_owned(),
                mac: mac.unwrap_or_default(),
                mtu: mtu.unwrap_or(1500),
            });
        }
        out.sort_by(|a, b| a.device.cmp(&b.device));
        Ok(out)
    }

    async fn vlan_exists(&self, parent: &str, tag: u16) -> Result<bool, NetError> {
        let Some(p) = self.index(parent).await? else {
            return Ok(false);
        };
        Ok(self.all_links().await?.iter().any(|m| {
            let on_parent = m
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Link(l) if *l == p));
            let with_tag = m.attributes.iter().any(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Data(InfoData::Vlan(v)) if v.contains(&InfoVlan::Id(tag)))),
                _ => false,
            });
            on_parent && with_tag
        }))
    }
}

impl NetBackend for LinuxNet {
    fn name(&self) -> &'static str {
        "linux"
    }

    fn bring_up<'a>(&'a self, plan: &'a PifPlan) -> NetFuture<'a, ()> {
        Box::pin(self.up(plan))
    }

    fn bring_down<'a>(&'a self, plan: &'a PifPlan) -> NetFuture<'a, ()> {
        Box::pin(self.down(plan))
    }

    fn nics(&self) -> NetFuture<'_, Vec<Nic>> {
        Box::pin(self.list_nics())
    }

    fn has_vlan<'a>(&'a self, parent: &'a str, tag: u16) -> NetFuture<'a, bool> {
        Box::pin(self.vlan_exists(parent, tag))
    }

    fn move_port<'a>(&'a self, port: &'a str, bridge: &'a str) -> NetFuture<'a, ()> {
        Box::pin(async move {
            let Some(p) = self.index(port).await? else {
                return Ok(());
            };
            let br = self.ensure_bridge(bridge, 1500).await?;
            self.enslave(p, br, port).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip() {
        assert_eq!(mac_bytes("02:00:5e:00:00:0a"), Some(vec![2, 0, 0x5e, 0, 0, 10]));
        assert_eq!(mac_text(&[2, 0, 0x5e, 0, 0, 10]), "02:00:5e:00:00:0a");
        assert_eq!(mac_bytes("nonsense"), None);
    }
}
