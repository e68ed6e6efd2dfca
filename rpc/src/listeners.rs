//! Which TCP addresses the API listens on, and how they follow the management interface.
//!
//! Listeners on loopback addresses and the unix socket are the host's own way in and never
//! move (the reference keeps its local listener whatever the management interface does).
//! Every other listener (a wildcard or a specific address) belongs to the management
//! interface: when `host.management_reconfigure` moves it to an address, those listeners
//! move there, keeping their ports; `host.management_disable` closes them; and back as
//! started when the management interface is as it was at start-up. A daemon started with
//! loopback listeners only gets, on a move, the same ports on the new management address.
//! Sessions live in the agent, so a client's session goes on over the new address.

use agent::network::management::Management;
use std::net::SocketAddr;

/// One API listener: its address and whether it speaks TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    /// Where.
    pub addr: SocketAddr,
    /// HTTPS (else plain HTTP).
    pub tls: bool,
}

/// The configured listeners, split into those that stay (loopback) and those that follow
/// the management interface (the rest), each in configuration order.
pub fn split(listen: &[SocketAddr], tls_listen: &[SocketAddr]) -> (Vec<Listener>, Vec<Listener>) {
    let all = listen
        .iter()
        .map(|&addr| Listener { addr, tls: false })
        .chain(tls_listen.iter().map(|&addr| Listener { addr, tls: true }));
    all.partition(|l| l.addr.ip().is_loopback())
}

/// Where the management listeners are for `management`: as started, moved to its address
/// (each port once; the fixed listeners' ports when no other was configured), or none.
pub fn for_management(fixed: &[Listener], movable: &[Listener], management: &Management) -> Vec<Listener> {
    match management {
        Management::AsStarted => movable.to_vec(),
        Management::Disabled => Vec::new(),
        Management::At(ip) => {
            let ports = if movable.is_empty() { fixed } else { movable };
            let mut out: Vec<Listener> = Vec::new();
            for l in ports {
                let moved = Listener {
                    addr: SocketAddr::new(*ip, l.addr.port()),
                    tls: l.tls,
                };
                if !out.iter().any(|o| o.addr == moved.addr) {
                    out.push(moved);
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_stays_and_the_rest_follows() {
        let (fixed, movable) = split(
            &[a("127.0.0.1:8080"), a("0.0.0.0:80")],
            &[a("[::1]:8443"), a("192.0.2.5:443")],
        );
        assert_eq!(
            fixed,
            [
                Listener {
                    addr: a("127.0.0.1:8080"),
                    tls: false
                },
                Listener {
                    addr: a("[::1]:8443"),
                    tls: true
                }
            ]
        );
        assert_eq!(
            movable,
            [
                Listener {
                    addr: a("0.0.0.0:80"),
                    tls: false
                },
                Listener {
                    addr: a("192.0.2.5:443"),
                    tls: true
                }
            ]
        );
        assert_eq!(for_management(&fixed, &movable, &Management::AsStarted), movable);
        assert!(for_management(&fixed, &movable, &Management::Disabled).is_empty());
        let ip: IpAddr = "10.79.0.1".parse().unwrap();
        assert_eq!(
            for_management(&fixed, &movable, &Management::At(ip)),
            [
                Listener {
                    addr: a("10.79.0.1:80"),
                    tls: false
                },
                Listener {
                    addr: a("10.79.0.1:443"),
                    tls: true
                }
            ]
        );
    }

    #[test]
    fn a_loopback_only_daemon_gets_its_ports_on_the_management_address() {
        let (fixed, movable) = split(&[a("127.0.0.1:8080"), a("127.0.0.2:8080")], &[]);
        assert!(movable.is_empty());
        let ip: IpAddr = "10.79.0.1".parse().unwrap();
        assert_eq!(
            for_management(&fixed, &movable, &Management::At(ip)),
            [Listener {
                addr: a("10.79.0.1:8080"),
                tls: false
            }]
        );
        assert!(for_management(&fixed, &movable, &Management::AsStarted).is_empty());
    }
}
