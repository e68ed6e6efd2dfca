//! What an HVM domain boots with: the device model's view of the VM (boot order, firmware,
//! platform flags, the emulated disks, CD drives and NICs).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{BlockDevice, NetDevice};

/// The boot devices a BIOS may try, as `HVM_boot_params` `order` names them: `c` the first
/// disk, `d` the CD drive, `n` the network.
pub const BOOT_DEVICES: &str = "cdn";

/// The default boot order (disk, then CD), as in the reference's templates.
pub const DEFAULT_BOOT_ORDER: &str = "cd";

/// How an HVM domain is booted and what its device model emulates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HvmBoot {
    /// BIOS boot order (`HVM_boot_params` `order`): letters of [`BOOT_DEVICES`], empty for
    /// [`DEFAULT_BOOT_ORDER`].
    #[serde(default)]
    pub boot_order: String,
    /// `bios` (the only firmware offered) or `uefi` (`HVM_boot_params` `firmware`).
    #[serde(default)]
    pub firmware: String,
    /// The VM's `platform` map (the device model reads `vga`, `acpi`, …).
    #[serde(default)]
    pub platform: BTreeMap<String, String>,
    /// Disks and CD drives, emulated on the IDE bus at their position (`userdevice` 0..=3);
    /// the others are PV only.
    #[serde(default)]
    pub disks: Vec<BlockDevice>,
    /// NICs, emulated on the PCI bus (also plugged as PV devices).
    #[serde(default)]
    pub nics: Vec<NetDevice>,
}

impl HvmBoot {
    /// The boot order the device model gets: [`Self::boot_order`] without duplicates or
    /// letters outside [`BOOT_DEVICES`], or [`DEFAULT_BOOT_ORDER`] when that leaves nothing.
    pub fn effective_boot_order(&self) -> String {
        let mut out = String::new();
        for c in self.boot_order.to_ascii_lowercase().chars() {
            if BOOT_DEVICES.contains(c) && !out.contains(c) {
                out.push(c);
            }
        }
        if out.is_empty() {
            DEFAULT_BOOT_ORDER.to_owned()
        } else {
            out
        }
    }

    /// Whether the guest is to boot UEFI firmware.
    pub fn uefi(&self) -> bool {
        self.firmware.trim().eq_ignore_ascii_case("uefi")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_order_is_cleaned_up() {
        let b = |o: &str| HvmBoot {
            boot_order: o.into(),
            ..HvmBoot::default()
        };
        assert_eq!(b("").effective_boot_order(), "cd");
        assert_eq!(b("DC").effective_boot_order(), "dc");
        assert_eq!(b("dxcdn;").effective_boot_order(), "dcn");
        assert_eq!(b("zz").effective_boot_order(), "cd");
        assert!(HvmBoot {
            firmware: "UEFI".into(),
            ..HvmBoot::default()
        }
        .uefi());
    }
}
