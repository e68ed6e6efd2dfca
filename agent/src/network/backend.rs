//! What the network objects become on the host: the interface every network backend
//! implements, and the choice of backend at start-up.
//!
//! The XenAPI layer (`vlan.rs`, `bond.rs`, `tunnel.rs`, `pif.rs`, …) decides and records; it
//! hands the backend a [`PifPlan`]: the bridge of the PIF's network, the link that joins it
//! (a NIC, an 802.1Q sub-interface, a bond, a tunnel) and the IP configuration to apply.
//!
//! | backend | chosen when | what it does |
//! |---|---|---|
//! | `linux` (`backend_netlink.rs`) | `XAPID_NETWORK_BACKEND=linux`, or `auto` on the Xen hypervisor backend | Linux bridges, VLAN, bonding, gretap and vxlan devices and addresses, through rtnetlink |
//! | `simulator` (`backend_sim.rs`) | `XAPID_NETWORK_BACKEND=simulator`, or `auto` elsewhere | the same devices kept in memory; the machine is not touched |

use crate::schema::enums::{BondMode, TunnelProtocol};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

/// What a backend call returns.
pub type NetFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, NetError>> + Send + 'a>>;

/// A network backend's failure.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The kernel refused a netlink request.
    #[error("{op}: {message}")]
    Netlink {
        /// What was asked (`add vlan eth0.5`).
        op: String,
        /// The kernel's answer.
        message: String,
    },
    /// A device the plan names does not exist.
    #[error("no network interface {0}")]
    NoSuchDevice(String),
    /// The plan cannot be carried out as written (a name too long for the kernel).
    #[error("{0}")]
    Invalid(String),
    /// The netlink socket could not be opened.
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
}

/// A network interface card the host has (what `PIF.scan` introduces).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// Its kernel name (`eth0`).
    pub device: String,
    /// Its MAC, lower case with colons.
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
}

/// The link that joins a PIF's network bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkPlan {
    /// A NIC.
    Physical {
        /// Its name.
        device: String,
    },
    /// An 802.1Q sub-interface `<parent>.<tag>` of the tagged PIF's device.
    Vlan {
        /// The sub-interface's name.
        device: String,
        /// The tagged PIF's device.
        parent: String,
        /// The tag.
        tag: u16,
    },
    /// A bond of the members' devices.
    Bond {
        /// The bond's name (`bond0`).
        device: String,
        /// The members' devices.
        members: Vec<String>,
        /// The bonding mode.
        mode: BondMode,
        /// `Bond.properties` (the LACP settings).
        properties: Vec<(String, String)>,
        /// The MAC the bond takes (empty: the kernel's choice, the first member's).
        mac: String,
    },
    /// A GRE (Ethernet over GRE) or VXLAN device over the transport PIF.
    Tunnel {
        /// The device's name (`tunnel0`).
        device: String,
        /// gre or vxlan.
        protocol: TunnelProtocol,
        /// The device carrying the tunnel's packets (the transport PIF's bridge).
        transport: String,
        /// The VXLAN network identifier or GRE key.
        key: u32,
        /// The far end, when `tunnel.other_config:remote_ip` names one.
        remote: Option<IpAddr>,
        /// The transport PIF's address, when it has a static one.
        local: Option<IpAddr>,
    },
}

impl LinkPlan {
    /// The kernel device that joins the bridge.
    pub fn device(&self) -> &str {
        match self {
            LinkPlan::Physical { device }
            | LinkPlan::Vlan { device, .. }
            | LinkPlan::Bond { device, .. }
            | LinkPlan::Tunnel { device, .. } => device,
        }
    }
}

/// The IP configuration a PIF's bridge carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpPlan {
    /// Addresses with prefix length (static IPv4 and IPv6).
    pub addresses: Vec<(IpAddr, u8)>,
    /// Default gateways.
    pub gateways: Vec<IpAddr>,
    /// DHCP or autoconf is asked for: the addresses come from a DHCP client or the kernel's
    /// autoconfiguration; the backend leaves the bridge's addresses to them.
    pub dynamic: bool,
    /// IPv4 by DHCP: on a real host the backend runs the bridge's DHCP client.
    pub dhcp_v4: bool,
}

/// Everything a backend needs to bring one PIF up or down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PifPlan {
    /// The network's bridge.
    pub bridge: String,
    /// The MTU of the bridge and link.
    pub mtu: u32,
    /// The link joining the bridge.
    pub link: LinkPlan,
    /// What the bridge's addresses are.
    pub ip: IpPlan,
}

/// The host's networking as the toolstack drives it.
pub trait NetBackend: Send + Sync {
    /// `linux` or `simulator`, for logs.
    fn name(&self) -> &'static str;
    /// Creates the bridge and the link, joins them, brings both up and applies the
    /// addresses. Doing it again changes only what differs.
    fn bring_up<'a>(&'a self, plan: &'a PifPlan) -> NetFuture<'a, ()>;
    /// Removes what [`NetBackend::bring_up`] made: the link (a NIC only leaves the bridge)
    /// and the bridge.
    fn bring_down<'a>(&'a self, plan: &'a PifPlan) -> NetFuture<'a, ()>;
    /// The host's NICs.
    fn nics(&self) -> NetFuture<'_, Vec<Nic>>;
    /// Whether a VLAN sub-interface of `parent` with `tag` exists (made outside the toolstack).
    fn has_vlan<'a>(&'a self, parent: &'a str, tag: u16) -> NetFuture<'a, bool>;
    /// Moves a port (a running VM's `vif<domid>.<devid>`) to another bridge; a port that does
    /// not exist is left alone.
    fn move_port<'a>(&'a self, port: &'a str, bridge: &'a str) -> NetFuture<'a, ()>;
    /// The simulator, to read its devices (tests).
    fn as_sim(&self) -> Option<&super::backend_sim::SimNet> {
        None
    }
}

/// Which backend the operator asked for (`XAPID_NETWORK_BACKEND`, `--network-backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NetChoice {
    /// `linux` on the Xen hypervisor backend, else `simulator`.
    #[default]
    Auto,
    /// The host's Linux networking.
    Linux,
    /// Objects only.
    Simulator,
}

impl NetChoice {
    /// `auto`, `linux` (or `real`, `netlink`), `simulator` (or `sim`).
    pub fn parse(s: &str) -> Option<NetChoice> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Some(NetChoice::Auto),
            "linux" | "real" | "netlink" => Some(NetChoice::Linux),
            "simulator" | "sim" => Some(NetChoice::Simulator),
            _ => None,
        }
    }
}

/// The backend for this daemon: `XAPID_NETWORK_BACKEND` (see [`NetChoice::parse`]), `auto`
/// choosing `linux` under the Xen hypervisor backend. An unknown value or a netlink socket
/// that cannot be opened falls back to the simulator, and the explanation says so.
pub fn select(hypervisor_backend: &str) -> (Arc<dyn NetBackend>, String) {
    let asked = std::env::var("XAPID_NETWORK_BACKEND").unwrap_or_default();
    let Some(choice) = NetChoice::parse(&asked) else {
        return (
            Arc::new(super::backend_sim::SimNet::default()),
            format!("XAPID_NETWORK_BACKEND={asked:?} is not auto, linux or simulator: simulated networking"),
        );
    };
    let linux = match choice {
        NetChoice::Linux => true,
        NetChoice::Simulator => false,
        NetChoice::Auto => hypervisor_backend == "xen",
    };
    if !linux {
        return (
            Arc::new(super::backend_sim::SimNet::default()),
            "simulated networking (the host's interfaces are not touched)".into(),
        );
    }
    match super::backend_netlink::LinuxNet::open() {
        Ok(b) => (Arc::new(b), "Linux networking through rtnetlink".into()),
        Err(e) => (
            Arc::new(super::backend_sim::SimNet::default()),
            format!("cannot drive Linux networking ({e}): simulated networking"),
        ),
    }
}
