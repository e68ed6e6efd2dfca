//! The address checks the network messages share, with the reference's errors.

use super::topology::parse_cidr;
use crate::error::ApiError;
use std::net::IpAddr;

/// Which address family a check wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

fn family_of(a: &IpAddr) -> Family {
    if a.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

/// Whether `s` is an address of `family`.
pub fn is_ip(family: Family, s: &str) -> bool {
    s.parse::<IpAddr>().is_ok_and(|a| family_of(&a) == family)
}

/// `INVALID_IP_ADDRESS_SPECIFIED [field]` unless `s` is an address of `family`.
pub fn assert_ip(family: Family, field: &str, s: &str) -> Result<(), ApiError> {
    if is_ip(family, s) {
        Ok(())
    } else {
        Err(ApiError::InvalidIpAddressSpecified {
            parameter: field.to_owned(),
        })
    }
}

/// `INVALID_CIDR_ADDRESS_SPECIFIED [field]` unless `s` is `address/prefix` of `family`.
pub fn assert_cidr(family: Family, field: &str, s: &str) -> Result<(), ApiError> {
    match parse_cidr(s) {
        Some((a, _)) if family_of(&a) == family => Ok(()),
        _ => Err(ApiError::InvalidCidrAddressSpecified {
            parameter: field.to_owned(),
        }),
    }
}

/// An address, or an address with a prefix length, of `family` (what `VIF.ipv4_allowed`
/// holds): `INVALID_IP_ADDRESS_SPECIFIED [field]` otherwise.
pub fn assert_ip_or_cidr(family: Family, field: &str, s: &str) -> Result<(), ApiError> {
    let cidr = parse_cidr(s).is_some_and(|(a, _)| family_of(&a) == family);
    if is_ip(family, s) || cidr {
        Ok(())
    } else {
        Err(ApiError::InvalidIpAddressSpecified {
            parameter: field.to_owned(),
        })
    }
}

/// Whether `mac` is six pairs of hex digits joined by colons.
pub fn is_valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The entries of a comma-separated DNS list that are addresses of `family`.
pub fn dns_of(family: Family, dns: &str) -> Vec<String> {
    dns.split(',')
        .map(str::trim)
        .filter(|a| is_ip(family, a))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_forms() {
        assert!(is_ip(Family::V4, "10.0.0.1"));
        assert!(!is_ip(Family::V4, "fd00::1"));
        assert!(assert_cidr(Family::V6, "IPv6", "fd00::1/64").is_ok());
        assert_eq!(
            assert_cidr(Family::V6, "IPv6", "fd00::1"),
            Err(ApiError::InvalidCidrAddressSpecified {
                parameter: "IPv6".into()
            })
        );
        assert!(assert_ip_or_cidr(Family::V4, "ipv4_allowed", "10.0.0.0/8").is_ok());
        assert!(assert_ip_or_cidr(Family::V4, "ipv4_allowed", "banana").is_err());
        assert!(is_valid_mac("fe:ff:ff:ff:ff:ff"));
        assert!(!is_valid_mac("fe:ff:ff:ff:ff"));
        assert_eq!(
            dns_of(Family::V4, "10.0.0.1,fd00::1, 8.8.8.8"),
            vec!["10.0.0.1", "8.8.8.8"]
        );
    }
}
