//! The ACPI tables a PVH guest boots with.
//!
//! A PVH guest has no firmware: what it learns of its platform comes from the start info and,
//! for its processors, from ACPI. Without a MADT, Linux finds no local APIC description,
//! keeps the APIC in virtual-wire mode with no configuration and never sets up its per-CPU
//! clock event device, so the Xen timer is never installed and the guest's clock stands still
//! once it waits for a timer (its first `sleep`). So the builder gives it what libxl gives it:
//! an RSDP (found through the start info's `rsdp_paddr`), an XSDT, a hardware-reduced FADT
//! naming an empty DSDT, and a MADT with one local APIC per vCPU (APIC id `2 × vCPU`, as Xen
//! numbers them), placed from [`ACPI_BASE`] (the ACPI info area below the special pages, where
//! libxl puts them) and marked ACPI NVS in the guest's memory map. The tables are built with
//! rust-vmm's `acpi_tables`.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{EnabledStatus, LocalInterruptController, ProcessorLocalApic, MADT};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

/// Where the tables start (Xen's `ACPI_INFO_PHYSICAL_ADDRESS`).
pub const ACPI_BASE: u64 = 0xfc00_0000;
/// Where a guest's local APIC is (`LAPIC_BASE_ADDRESS`).
const LAPIC_BASE: u32 = 0xfee0_0000;
/// The most vCPUs the MADT describes (APIC ids are one byte, `2 × vCPU`).
pub const MAX_VCPUS: u32 = 128;
const OEM_ID: [u8; 6] = *b"XAPID ";
const OEM_TABLE: [u8; 8] = *b"XAPIDPVH";
const PAGE: u64 = 4096;

/// The tables and where each part goes in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvhAcpi {
    /// DSDT, FADT, MADT and XSDT, one after the other from [`ACPI_BASE`].
    pub tables: Vec<u8>,
    /// The RSDP, on the page after the tables.
    pub rsdp: Vec<u8>,
    /// The RSDP's guest-physical address.
    pub rsdp_addr: u64,
}

impl PvhAcpi {
    /// The guest-physical ranges the tables take, whole pages, as `(start, length)`.
    pub fn ranges(&self) -> [(u64, u64); 2] {
        let tables = (self.tables.len() as u64).div_ceil(PAGE) * PAGE;
        [(ACPI_BASE, tables), (self.rsdp_addr, PAGE)]
    }
}

fn align16(blob: &mut Vec<u8>) {
    blob.resize(blob.len().next_multiple_of(16), 0);
}

/// The tables of a PVH guest with `vcpus` vCPUs, the first `online` of them enabled and the
/// others offered for hot-plug (`online` 0: all enabled; at most [`MAX_VCPUS`] are described).
pub fn pvh_tables(vcpus: u32, online: u32) -> PvhAcpi {
    let mut blob: Vec<u8> = Vec::new();
    let at = |blob: &Vec<u8>| ACPI_BASE + blob.len() as u64;

    let dsdt_addr = at(&blob);
    blob.extend_from_slice(Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE, 1).as_slice());
    align16(&mut blob);

    let fadt_addr = at(&blob);
    FADTBuilder::new(OEM_ID, OEM_TABLE, 1)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .finalize()
        .to_aml_bytes(&mut blob);
    align16(&mut blob);

    let madt_addr = at(&blob);
    let mut madt = MADT::new(OEM_ID, OEM_TABLE, 1, LocalInterruptController::Address(LAPIC_BASE));
    for cpu in 0..vcpus.clamp(1, MAX_VCPUS) {
        let uid = u8::try_from(cpu).unwrap_or(u8::MAX);
        let apic_id = u8::try_from(cpu * 2).unwrap_or(u8::MAX);
        let status = if online == 0 || cpu < online {
            EnabledStatus::Enabled
        } else {
            EnabledStatus::DisabledOnlineCapable
        };
        madt.add_structure(ProcessorLocalApic::new(uid, apic_id, status));
    }
    madt.to_aml_bytes(&mut blob);
    align16(&mut blob);

    let xsdt_addr = at(&blob);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    xsdt.to_aml_bytes(&mut blob);

    let rsdp_addr = ACPI_BASE + (blob.len() as u64).div_ceil(PAGE) * PAGE;
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    PvhAcpi {
        tables: blob,
        rsdp,
        rsdp_addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(x)
    }

    /// The table at guest address `addr`: its bytes, checked (signature, length, checksum).
    fn table<'a>(acpi: &'a PvhAcpi, addr: u64, signature: &[u8; 4]) -> &'a [u8] {
        let off = usize::try_from(addr - ACPI_BASE).unwrap();
        let len = u32_at(&acpi.tables, off + 4) as usize;
        let t = &acpi.tables[off..off + len];
        assert_eq!(&t[..4], signature);
        assert_eq!(sum(t), 0, "{} checksum", String::from_utf8_lossy(signature));
        t
    }

    #[test]
    fn the_rsdp_leads_to_a_madt_with_every_vcpu_and_a_hardware_reduced_fadt() {
        let acpi = pvh_tables(4, 3);
        // The RSDP: signature, revision 2, both checksums, on the page after the tables.
        let r = &acpi.rsdp;
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(r[15], 2);
        assert_eq!(sum(&r[..20]), 0);
        assert_eq!(sum(r), 0);
        assert_eq!(acpi.rsdp_addr % PAGE, 0);
        assert!(acpi.rsdp_addr >= ACPI_BASE + acpi.tables.len() as u64);
        // The XSDT names the FADT and the MADT.
        let xsdt = table(&acpi, u64_at(r, 24), b"XSDT");
        let entries: Vec<u64> = (36..xsdt.len()).step_by(8).map(|o| u64_at(xsdt, o)).collect();
        assert_eq!(entries.len(), 2);
        let fadt = table(&acpi, entries[0], b"FACP");
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0, "HW_REDUCED_ACPI");
        table(&acpi, u64_at(fadt, 140), b"DSDT");
        let madt = table(&acpi, entries[1], b"APIC");
        assert_eq!(u32_at(madt, 36), LAPIC_BASE);
        // One local APIC per vCPU, APIC id twice the vCPU number, enabled if online at start.
        let lapics: Vec<(u8, u8, u32)> = madt[44..]
            .chunks(8)
            .map(|e| {
                assert_eq!((e[0], e[1]), (0, 8));
                (e[2], e[3], u32_at(e, 4))
            })
            .collect();
        // The vCPU beyond those online at start is offered for hot-plug (online capable).
        assert_eq!(lapics, vec![(0, 0, 1), (1, 2, 1), (2, 4, 1), (3, 6, 2)]);
        assert_eq!(acpi.ranges()[0], (ACPI_BASE, PAGE));
        assert_eq!(acpi.ranges()[1], (acpi.rsdp_addr, PAGE));
    }

    #[test]
    fn vcpus_are_described_up_to_the_limit() {
        let madt_entries = |n| {
            let acpi = pvh_tables(n, 0);
            let xsdt = table(&acpi, u64_at(&acpi.rsdp, 24), b"XSDT");
            let madt = table(&acpi, u64_at(xsdt, 44), b"APIC");
            (madt.len() - 44) / 8
        };
        assert_eq!(madt_entries(0), 1);
        assert_eq!(madt_entries(MAX_VCPUS + 5), MAX_VCPUS as usize);
    }
}
