//! Networks, PIFs, VLANs, bonds, tunnels and the management interface: what the XenAPI
//! messages about them record, and what they become on the host through the network backend
//! chosen at start-up (`backend.rs`; docs/networking.md).
//!
//! - `topology`: what a PIF is, the checks shared by several messages, a PIF's backend plan;
//! - `attach`: bringing a PIF up or down;
//! - `pif`, `vlan`, `bond`, `tunnel`, `networks`, `vif`, `management`: the messages;
//! - `addresses`: address and MAC checks;
//! - `backend`, `backend_sim`, `backend_netlink`: the host side.

pub mod addresses;
pub mod attach;
pub mod backend;
pub mod backend_netlink;
pub mod backend_sim;
pub mod bond;
pub mod dhcp;
pub mod management;
pub mod networks;
pub mod pif;
pub mod topology;
pub mod tunnel;
pub mod vif;
pub mod vlan;

use crate::call::Entry;
use backend::NetBackend;
use management::Management;
use std::sync::Arc;

/// The network side of the agent: its backend and where the management interface is.
pub struct Network {
    /// The backend chosen at start-up.
    pub backend: Arc<dyn NetBackend>,
    /// Why it was chosen (logged at start-up).
    pub why: String,
    management: tokio::sync::watch::Sender<Management>,
}

impl Network {
    /// The backend `backend::select` picks for this hypervisor backend.
    pub fn for_hypervisor(hypervisor_backend: &str) -> Network {
        let (backend, why) = backend::select(hypervisor_backend);
        Network::with_backend(backend, why)
    }

    /// A given backend (tests).
    pub fn with_backend(backend: Arc<dyn NetBackend>, why: String) -> Network {
        Network {
            backend,
            why,
            management: tokio::sync::watch::Sender::new(Management::AsStarted),
        }
    }

    /// Follows the management interface's moves.
    pub fn management(&self) -> tokio::sync::watch::Receiver<Management> {
        self.management.subscribe()
    }

    fn publish(&self, m: Management) {
        self.management.send_replace(m);
    }
}

/// The messages carried out in this module.
pub fn behaviour() -> Vec<Entry> {
    let mut v = pif::behaviour();
    v.extend(vlan::behaviour());
    v.extend(bond::behaviour());
    v.extend(tunnel::behaviour());
    v.extend(networks::behaviour());
    v.extend(vif::behaviour());
    v.extend(management::behaviour());
    v.push(management::local_reconfigure());
    v
}

#[cfg(test)]
mod tests;
