//! The simulated bootloader: what `build` does for a PV domain booted through its bootloader
//! ([`PvBoot::Bootloader`](crate::hypervisor::PvBoot::Bootloader)).
//!
//! A real bootloader (pygrub) looks for a partition table or a file system on the guest's
//! disk, reads the boot menu from it and extracts the default entry's kernel. The simulator's
//! guests have no kernel to extract, so its bootloader keeps to what can be checked honestly
//! on any image, by this rule:
//!
//! 1. no disk: [`BackendError::NoBootableDevice`];
//! 2. a bootloader the backends do not know ([`Bootloader::from_name`]):
//!    [`BackendError::UnknownBootloader`];
//! 3. the image cannot be opened or read: [`BackendError::BootloaderFailed`];
//! 4. the first [`SCAN_BYTES`] of the image are all zeros (or the image is empty):
//!    [`BackendError::BootloaderFailed`]. Every layout a bootloader can boot from starts
//!    there: an MBR or GPT partition table in the first sectors, a file system's superblock
//!    (ext2/3/4 at 1 KiB, XFS at 0), an ISO 9660 volume descriptor at 32 KiB. A blank disk
//!    (a freshly provisioned VDI, before any installer wrote to it) has none, so there is
//!    nothing to boot, as a real bootloader would also find;
//! 5. otherwise the guest boots: its kernel "found" on the disk takes no arguments of its
//!    own, so the command line is the VM's extra arguments
//!    ([`PvBootloader::cmdline`]), and the guest then runs as a PV guest booted from a
//!    kernel in dom0 does.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::hypervisor::{BackendError, Bootloader, PvBootloader};

/// How much of the disk image the simulated bootloader reads: 1 MiB.
pub(super) const SCAN_BYTES: u64 = 1024 * 1024;

/// What the simulated bootloader found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Loaded {
    /// The kernel command line to boot with.
    pub cmdline: String,
    /// The line the bootloader leaves on the guest's console.
    pub banner: String,
}

/// Runs the simulated bootloader (see the module documentation for the rule).
pub(super) fn run(boot: &PvBootloader) -> Result<Loaded, BackendError> {
    let disk = boot.disk.as_deref().ok_or(BackendError::NoBootableDevice)?;
    let bootloader = Bootloader::from_name(&boot.bootloader).ok_or_else(|| BackendError::UnknownBootloader {
        name: boot.bootloader.clone(),
    })?;
    if !has_boot_data(disk)? {
        return Err(BackendError::BootloaderFailed {
            reason: format!(
                "no partition table, boot sector or file system in the first MiB of {}: nothing to boot",
                disk.display()
            ),
        });
    }
    Ok(Loaded {
        cmdline: boot.cmdline(""),
        banner: format!(
            "{bootloader} (xapid simulator): booting the default entry of {}",
            disk.display()
        ),
    })
}

/// Whether the first [`SCAN_BYTES`] of the image hold anything but zeros.
fn has_boot_data(disk: &Path) -> Result<bool, BackendError> {
    let failed = |what: &str, e: std::io::Error| BackendError::BootloaderFailed {
        reason: format!("cannot {what} the disk image {}: {e}", disk.display()),
    };
    let file = File::open(disk).map_err(|e| failed("open", e))?;
    let mut head = Vec::new();
    file.take(SCAN_BYTES)
        .read_to_end(&mut head)
        .map_err(|e| failed("read", e))?;
    Ok(head.iter().any(|b| *b != 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    fn boot(disk: Option<&Path>, bootloader: &str) -> PvBootloader {
        PvBootloader {
            bootloader: bootloader.into(),
            disk: disk.map(Path::to_path_buf),
            bootloader_args: String::new(),
            extra_args: "console=hvc0".into(),
        }
    }

    /// A sparse image of `size` bytes with `data` written at `offset`.
    fn image(dir: &Path, name: &str, size: u64, offset: u64, data: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        let mut f = File::create(&path).unwrap();
        f.set_len(size).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(data).unwrap();
        path
    }

    #[test]
    fn a_disk_with_a_boot_sector_boots_with_the_extra_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let disk = image(dir.path(), "mbr.img", 64 << 20, 510, &[0x55, 0xaa]);
        let loaded = run(&boot(Some(&disk), "pygrub")).unwrap();
        assert_eq!(loaded.cmdline, "console=hvc0");
        assert!(loaded.banner.starts_with("pygrub"), "{}", loaded.banner);
        assert!(loaded.banner.contains("mbr.img"), "{}", loaded.banner);
    }

    #[test]
    fn a_file_system_superblock_late_in_the_first_mib_is_found() {
        let dir = tempfile::tempdir().unwrap();
        // An ISO 9660 primary volume descriptor at 32 KiB, nothing before it.
        let iso = image(dir.path(), "cd.iso", 4 << 20, 32 * 1024, b"\x01CD001");
        assert!(run(&boot(Some(&iso), "pygrub")).is_ok());
        // The last byte of the scanned range still counts; the first byte after it does not.
        let last = image(dir.path(), "last.img", 4 << 20, SCAN_BYTES - 1, &[1]);
        assert!(run(&boot(Some(&last), "pygrub")).is_ok());
        let past = image(dir.path(), "past.img", 4 << 20, SCAN_BYTES, &[1]);
        assert!(matches!(
            run(&boot(Some(&past), "pygrub")),
            Err(BackendError::BootloaderFailed { .. })
        ));
    }

    #[test]
    fn a_blank_or_empty_or_missing_disk_has_nothing_to_boot() {
        let dir = tempfile::tempdir().unwrap();
        let blank = image(dir.path(), "blank.img", 10 << 30, 0, &[]);
        match run(&boot(Some(&blank), "pygrub")) {
            Err(BackendError::BootloaderFailed { reason }) => {
                assert!(
                    reason.contains("nothing to boot") && reason.contains("blank.img"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        let empty = image(dir.path(), "empty.img", 0, 0, &[]);
        assert!(matches!(
            run(&boot(Some(&empty), "pygrub")),
            Err(BackendError::BootloaderFailed { .. })
        ));
        match run(&boot(Some(&dir.path().join("gone.img")), "pygrub")) {
            Err(BackendError::BootloaderFailed { reason }) => {
                assert!(
                    reason.contains("cannot open") && reason.contains("gone.img"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_disk_and_unknown_bootloaders_are_refused_in_the_reference_order() {
        assert!(matches!(
            run(&boot(None, "pygrub")),
            Err(BackendError::NoBootableDevice)
        ));
        // Without a disk the bootloader's name is not even looked at.
        assert!(matches!(run(&boot(None, "lilo")), Err(BackendError::NoBootableDevice)));
        let dir = tempfile::tempdir().unwrap();
        let disk = image(dir.path(), "mbr.img", 1 << 20, 510, &[0x55, 0xaa]);
        match run(&boot(Some(&disk), "eliloader")) {
            Err(BackendError::UnknownBootloader { name }) => assert_eq!(name, "eliloader"),
            other => panic!("{other:?}"),
        }
    }
}
