//! Building a PV, PVH or HVM guest's memory image with libxenguest's
//! `xc_dom_*` API.
//!
//! HVM guests are built the same way with Xen's `hvmloader` as the
//! "kernel" and the BIOS image (SeaBIOS) as the system firmware module:
//! hvmloader, entered in 32-bit mode, sets up the PCI devices of the device
//! model, builds the ACPI and SMBIOS tables, copies the BIOS into place and
//! jumps to it. The device model itself is started by the caller.
//!
//! PVH guests run in a hardware-virtualised container with no device model:
//! the kernel is entered at its `XEN_ELFNOTE_PHYS32_ENTRY` point in 32-bit
//! protected mode with an `hvm_start_info` (command line, modules, memory
//! map), its console and xenstore rings are special pages at the top of the
//! 4 GiB space, and no ACPI tables are built (the guest finds none and
//! starts on its first vCPU).

use std::ffi::{c_int, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use xen_sys as sys;

use crate::error::{Result, XenctrlError};
use crate::types::GuestType;
use crate::xc::XcHandle;

/// Where a PVH guest's MMIO hole starts: below the ACPI info page, the
/// local APIC and the special pages (Xen's `ACPI_INFO_PHYSICAL_ADDRESS`,
/// the lowest of the three).
const PVH_MMIO_START: u64 = 0xfc00_0000;
/// Where an HVM guest's MMIO hole starts (256 MiB below 4 GiB, the
/// default hole of Xen's toolstacks).
const HVM_MMIO_START: u64 = 0xf000_0000;
/// Pages of the legacy VGA hole (0xa0000-0xbffff) an HVM guest with a
/// device model leaves to it.
const HVM_VGA_HOLE_PAGES: u64 = 0x20;
/// Where the RAM an HVM guest's memory map names starts (hvmloader owns
/// what is below).
const HVM_LOW_RAM_START: u64 = 0x10_0000;
/// e820 type of RAM.
const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
const E820_RESERVED: u32 = 2;
/// e820 type of ACPI non-volatile storage (where a PVH guest's ACPI tables are).
const E820_NVS: u32 = 4;

/// The memory layout of a PVH guest with `bytes` of RAM: RAM below the
/// MMIO hole, the rest above 4 GiB. Returns `(lowmem_end, highmem_end, e820
/// ranges)`, `highmem_end` 0 when everything fits below the hole.
pub fn pvh_memory_layout(bytes: u64) -> (u64, u64, Vec<(u64, u64, u32)>) {
    let (low, high, mut map) = memory_layout(bytes, PVH_MMIO_START);
    // The special pages below 4 GiB (console and xenstore rings, ioreq pages…) are reserved,
    // as libxl marks them: a guest must not take their frames for anything of its own.
    let pages = u64::from(sys::X86_HVM_NR_SPECIAL_PAGES);
    let start = (u64::from(sys::X86_HVM_END_SPECIAL_REGION) - pages) << 12;
    map.insert(1, (start, pages << 12, E820_RESERVED));
    (low, high, map)
}

/// [`pvh_memory_layout`] for an HVM guest, whose MMIO hole (for the device
/// model's PCI devices) is larger. hvmloader reads this map from Xen
/// (`XENMEM_memory_map`) and builds the guest's e820 from it, adding the
/// first MiB (low RAM, BIOS) itself: the map's RAM starts at 1 MiB, as
/// libxl's does, or hvmloader's table has overlapping RAM ranges.
pub fn hvm_memory_layout(bytes: u64) -> (u64, u64, Vec<(u64, u64, u32)>) {
    let (low, high, mut map) = memory_layout(bytes, HVM_MMIO_START);
    if let Some(first) = map.first_mut() {
        if first.1 > HVM_LOW_RAM_START {
            *first = (HVM_LOW_RAM_START, first.1 - HVM_LOW_RAM_START, E820_RAM);
        }
    }
    (low, high, map)
}

fn memory_layout(bytes: u64, mmio_start: u64) -> (u64, u64, Vec<(u64, u64, u32)>) {
    let four_gib = 1u64 << 32;
    let lowmem_end = bytes.min(mmio_start);
    let mut map = vec![(0, lowmem_end, E820_RAM)];
    let highmem_end = if bytes > mmio_start {
        let high = bytes - mmio_start;
        map.push((four_gib, high, E820_RAM));
        four_gib + high
    } else {
        0
    };
    (lowmem_end, highmem_end, map)
}

/// The paging pool a PVH guest with `memory_mib` and `vcpus` needs, bytes:
/// 1 MiB per vCPU plus 8 KiB per MiB of RAM (xl's default sizing).
pub fn pvh_paging_pool_bytes(memory_mib: u32, vcpus: u32) -> u64 {
    4096 * (256 * u64::from(vcpus) + 2 * u64::from(memory_mib))
}

/// What to load into a freshly created PV or PVH domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvBuildConfig {
    /// Path of the guest kernel (ELF, possibly compressed).
    pub kernel: PathBuf,
    /// Path of the initial ramdisk, if any.
    pub ramdisk: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// vCPUs the domain was created with.
    pub max_vcpus: u32,
    /// vCPUs online when it starts (a PVH guest's MADT enables these and offers the rest
    /// for hot-plug); 0 for all.
    pub online_vcpus: u32,
    /// Guest-side port of the console event channel (from
    /// [`XcHandle::evtchn_alloc_unbound`]).
    pub console_evtchn: u32,
    /// Domain running the console backend (0 for dom0).
    pub console_domid: u32,
    /// Guest-side port of the xenstore event channel.
    pub xenstore_evtchn: u32,
    /// Domain running xenstored (0 for dom0).
    pub xenstore_domid: u32,
}

/// What the builder produced: the machine frames of the console and
/// xenstore rings, to be written to xenstore and passed to
/// [`XsHandle::introduce_domain`](crate::XsHandle::introduce_domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PvBuildResult {
    /// MFN of the console ring page.
    pub console_mfn: u64,
    /// MFN of the xenstore ring page.
    pub xenstore_mfn: u64,
}

/// An `xc_dom_image *`, released on drop.
struct DomImage<'a> {
    dom: NonNull<sys::xc_dom_image>,
    guest: &'a sys::XenGuest,
}

impl DomImage<'_> {
    fn raw(&self) -> *mut sys::xc_dom_image {
        self.dom.as_ptr()
    }

    /// The machine frame backing guest frame `pfn` (`xc_dom_p2m`, a
    /// static inline in xenguest.h).
    fn p2m(&self, pfn: sys::xen_pfn_t) -> Option<u64> {
        // SAFETY: `dom` is a valid image owned by us.
        if unsafe { self.guest.xc_dom_translated(self.raw()) } {
            return Some(pfn);
        }
        // SAFETY: `dom` is valid; after xc_dom_boot_image its pv_p2m holds
        // p2m_size entries (or is NULL), which we bound-check against.
        unsafe {
            let dom = &*self.raw();
            if pfn >= dom.total_pages || pfn >= dom.p2m_size || dom.pv_p2m.is_null() {
                return None;
            }
            let mfn = *dom.pv_p2m.add(usize::try_from(pfn).ok()?);
            (mfn != sys::xen_pfn_t::MAX).then_some(mfn)
        }
    }
}

impl Drop for DomImage<'_> {
    fn drop(&mut self) {
        // SAFETY: `dom` came from xc_dom_allocate and is released once.
        unsafe { self.guest.xc_dom_release(self.raw()) }
    }
}

/// Maps an `xc_dom_*` return (0 on success) to a `Result`, reading
/// `errno` straight away on failure.
fn check(call: &'static str, rc: c_int) -> Result<()> {
    if rc != 0 {
        return Err(XenctrlError::last(call));
    }
    Ok(())
}

fn c_string(call: &'static str, what: &str, bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).map_err(|_| XenctrlError::InvalidArgument {
        call,
        reason: format!("{what} contains a NUL byte"),
    })
}

fn c_path(call: &'static str, path: &Path) -> Result<CString> {
    c_string(call, "path", path.as_os_str().as_bytes())
}

impl XcHandle {
    /// Loads a PV kernel (and ramdisk) into domain `domid`, created with
    /// [`XcHandle::domain_create`] and given its vCPUs and memory limit,
    /// and sets up its start info, console and xenstore pages and grant
    /// table. The domain stays paused.
    ///
    /// Runs `xc_dom_allocate`, `xc_dom_kernel_file`, `xc_dom_module_file`,
    /// `xc_dom_boot_xen_init`, `xc_dom_parse_image`, `xc_dom_mem_init`,
    /// `xc_dom_boot_mem_init`, `xc_dom_build_image`, `xc_dom_boot_image`
    /// and `xc_dom_gnttab_init`; the first failing step is named in the
    /// error. The image is released (`xc_dom_release`) on every path.
    pub fn build_pv(&self, domid: u32, config: &PvBuildConfig) -> Result<PvBuildResult> {
        self.build_guest(domid, config, GuestType::Pv, None)
    }

    /// [`XcHandle::build_pv`] for a domain created as [`GuestType::Pvh`]:
    /// the kernel must carry a PVH entry point (Linux with `CONFIG_PVH`).
    /// Also sizes the domain's paging pool and sets its memory map
    /// (`xc_set_paging_mempool_size`, `xc_domain_set_memory_map`).
    pub fn build_pvh(&self, domid: u32, config: &PvBuildConfig) -> Result<PvBuildResult> {
        self.build_guest(domid, config, GuestType::Pvh, None)
    }

    /// Builds an HVM domain created as [`GuestType::Hvm`]: `config.kernel`
    /// is hvmloader (no ramdisk, the command line is ignored), `firmware`
    /// the BIOS image hvmloader starts (SeaBIOS's `bios-256k.bin`, whose
    /// name hvmloader also reads from xenstore, `hvmloader/bios`). Leaves
    /// room for a device model (VGA hole, ioreq pages). Sizes the paging
    /// pool like [`XcHandle::build_pvh`].
    pub fn build_hvm(&self, domid: u32, config: &PvBuildConfig, firmware: &[u8]) -> Result<PvBuildResult> {
        if firmware.is_empty() || u32::try_from(firmware.len()).is_err() {
            return Err(XenctrlError::InvalidArgument {
                call: "xc_dom_allocate",
                reason: format!("the HVM system firmware is {} bytes", firmware.len()),
            });
        }
        self.build_guest(domid, config, GuestType::Hvm, Some(firmware))
    }

    fn build_guest(
        &self,
        domid: u32,
        config: &PvBuildConfig,
        kind: GuestType,
        firmware: Option<&[u8]>,
    ) -> Result<PvBuildResult> {
        let bytes = u64::from(config.memory_mib) << 20;
        let (lowmem_end, highmem_end, mut map) = match kind {
            GuestType::Hvm => hvm_memory_layout(bytes),
            _ => pvh_memory_layout(bytes),
        };
        // A PVH guest's ACPI tables, in ACPI NVS ranges of its memory map (as libxl has them).
        // Declared before the image: libxenguest copies them in while it builds.
        let acpi = (kind == GuestType::Pvh).then(|| crate::acpi::pvh_tables(config.max_vcpus, config.online_vcpus));
        if let Some(acpi) = &acpi {
            map.extend(acpi.ranges().iter().map(|&(start, len)| (start, len, E820_NVS)));
            map.sort_by_key(|&(start, _, _)| start);
        }
        // Declared before the image: libxenguest reads it through `e820` until released.
        let mut e820: Vec<sys::e820entry> = map
            .iter()
            .map(|&(addr, size, type_)| sys::e820entry { addr, size, type_ })
            .collect();
        if kind != GuestType::Pv {
            self.set_paging_mempool_size(domid, pvh_paging_pool_bytes(config.memory_mib, config.max_vcpus))?;
        }
        if kind != GuestType::Pv {
            self.domain_set_memory_map(domid, &map)?;
        }
        let kernel = c_path("xc_dom_kernel_file", &config.kernel)?;
        let ramdisk = match &config.ramdisk {
            Some(path) => Some(c_path("xc_dom_module_file", path)?),
            None => None,
        };
        let cmdline = c_string("xc_dom_allocate", "cmdline", config.cmdline.as_bytes())?;
        let guest = &self.libs().guest;

        // SAFETY: `xch` is open and outlives the image (the image borrows
        // `self`); `cmdline` is a C string, features may be NULL.
        let dom = unsafe { guest.xc_dom_allocate(self.raw(), cmdline.as_ptr(), std::ptr::null()) };
        let Some(dom) = NonNull::new(dom) else {
            return Err(XenctrlError::last("xc_dom_allocate"));
        };
        let image = DomImage { dom, guest };

        let e820_entries = u32::try_from(e820.len()).unwrap_or(0);
        // SAFETY: the image is valid and exclusively ours; the library does
        // not touch it between calls. `e820` and `acpi` outlive the image and
        // are not moved or resized while the image points at them.
        unsafe {
            let dom = &mut *image.raw();
            match kind {
                GuestType::Pv => dom.container_type = sys::xc_dom_image__bindgen_ty_1::XC_DOM_PV_CONTAINER,
                GuestType::Pvh => {
                    dom.container_type = sys::xc_dom_image__bindgen_ty_1::XC_DOM_HVM_CONTAINER;
                    dom.target_pages = bytes >> 12;
                    dom.mmio_start = PVH_MMIO_START;
                    dom.mmio_size = (1u64 << 32) - PVH_MMIO_START;
                    dom.lowmem_end = lowmem_end;
                    dom.highmem_end = highmem_end;
                    dom.vga_hole_size = 0;
                    dom.device_model = false;
                    dom.e820 = e820.as_mut_ptr();
                    dom.e820_entries = e820_entries;
                    if let Some(acpi) = &acpi {
                        // libxenguest loads the modules in order and gives the first one's
                        // address to the guest as `rsdp_paddr`; it only reads them.
                        for (module, (bytes, at)) in dom
                            .acpi_modules
                            .iter_mut()
                            .zip([(&acpi.rsdp, acpi.rsdp_addr), (&acpi.tables, crate::acpi::ACPI_BASE)])
                        {
                            module.data = bytes.as_ptr().cast_mut();
                            module.length = u32::try_from(bytes.len()).unwrap_or(0);
                            module.guest_addr_out = at;
                        }
                    }
                }
                GuestType::Hvm => {
                    // hvmloader builds the guest's e820 itself, from the map set above.
                    dom.container_type = sys::xc_dom_image__bindgen_ty_1::XC_DOM_HVM_CONTAINER;
                    dom.target_pages = bytes >> 12;
                    dom.mmio_start = HVM_MMIO_START;
                    dom.mmio_size = (1u64 << 32) - HVM_MMIO_START;
                    dom.lowmem_end = lowmem_end;
                    dom.highmem_end = highmem_end;
                    dom.vga_hole_size = HVM_VGA_HOLE_PAGES;
                    dom.device_model = true;
                    if let Some(fw) = firmware {
                        // libxenguest copies the module into the guest
                        // (xc_dom_build_image); `firmware` outlives the image.
                        dom.system_firmware_module.data = fw.as_ptr().cast_mut();
                        dom.system_firmware_module.length = u32::try_from(fw.len()).unwrap_or(u32::MAX);
                    }
                }
            }
        }

        let d = image.raw();
        // SAFETY: `d` is our live image; `kernel` is a C string that
        // outlives the call (libxenguest maps the file itself).
        check("xc_dom_kernel_file", unsafe {
            guest.xc_dom_kernel_file(d, kernel.as_ptr())
        })?;
        if let Some(ramdisk) = &ramdisk {
            // SAFETY: as for the kernel; the module cmdline may be NULL.
            check("xc_dom_module_file", unsafe {
                guest.xc_dom_module_file(d, ramdisk.as_ptr(), std::ptr::null())
            })?;
        }
        // SAFETY: `d` is our live image and no library call is running on
        // it, so these plain field writes cannot race.
        unsafe {
            (*d).flags = 0;
            (*d).console_evtchn = config.console_evtchn;
            (*d).console_domid = config.console_domid;
            (*d).xenstore_evtchn = config.xenstore_evtchn;
            (*d).xenstore_domid = config.xenstore_domid;
            (*d).max_vcpus = config.max_vcpus;
        }
        // SAFETY: `d` is our live image; `xch` is open and outlives it.
        check("xc_dom_boot_xen_init", unsafe {
            guest.xc_dom_boot_xen_init(d, self.raw(), domid)
        })?;
        // SAFETY: `d` is our live image (as for every step below).
        check("xc_dom_parse_image", unsafe { guest.xc_dom_parse_image(d) })?;
        // SAFETY: `d` is our live image.
        check("xc_dom_mem_init", unsafe {
            guest.xc_dom_mem_init(d, config.memory_mib)
        })?;
        // SAFETY: `d` is our live image.
        check("xc_dom_boot_mem_init", unsafe { guest.xc_dom_boot_mem_init(d) })?;
        // SAFETY: `d` is our live image.
        check("xc_dom_build_image", unsafe { guest.xc_dom_build_image(d) })?;
        // SAFETY: `d` is our live image.
        check("xc_dom_boot_image", unsafe { guest.xc_dom_boot_image(d) })?;
        // SAFETY: `d` is our live image.
        check("xc_dom_gnttab_init", unsafe { guest.xc_dom_gnttab_init(d) })?;

        // SAFETY: `d` is our live image; plain field reads.
        let (console_pfn, xenstore_pfn) = unsafe { ((*d).console_pfn, (*d).xenstore_pfn) };
        let mfn = |pfn, what: &str| {
            image.p2m(pfn).ok_or_else(|| XenctrlError::InvalidData {
                call: "xc_dom_boot_image",
                reason: format!("{what} pfn {pfn:#x} has no machine frame"),
            })
        };
        Ok(PvBuildResult {
            console_mfn: mfn(console_pfn, "console")?,
            xenstore_mfn: mfn(xenstore_pfn, "xenstore")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CtrlLibraries;
    use std::io::Write as _;

    /// The Xen libraries did not load (`e`): with `XENCTRL_REQUIRE_XEN_LIBS` set (scripts/test.sh
    /// sets it; docs/testing.md, "Skips") that fails the test; otherwise the test says
    /// `SKIPPED` (on the process's stderr, past the test harness's output capture) and the
    /// caller returns.
    #[track_caller]
    fn skip_without_libraries(e: &XenctrlError) {
        assert!(e.is_library_missing(), "{e}");
        assert!(
            std::env::var_os("XENCTRL_REQUIRE_XEN_LIBS").is_none(),
            "Xen libraries required but missing: {e}"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: the Xen libraries are not installed: {e} (set XENCTRL_REQUIRE_XEN_LIBS=1 to make this a failure)"
        );
    }

    /// A dummy handle: the real libxenctrl, no hypervisor needed.
    fn dummy() -> Option<XcHandle> {
        match CtrlLibraries::system() {
            Ok(libs) => Some(XcHandle::open_dummy(libs).expect("dummy xc handle")),
            Err(e) => {
                skip_without_libraries(&e);
                None
            }
        }
    }

    fn config(kernel: &str, ramdisk: Option<&str>) -> PvBuildConfig {
        PvBuildConfig {
            kernel: kernel.into(),
            ramdisk: ramdisk.map(PathBuf::from),
            cmdline: "console=hvc0".into(),
            memory_mib: 256,
            max_vcpus: 1,
            online_vcpus: 1,
            console_evtchn: 1,
            console_domid: 0,
            xenstore_evtchn: 2,
            xenstore_domid: 0,
        }
    }

    #[test]
    fn pvh_layout_below_and_above_the_mmio_hole() {
        let (low, high, map) = pvh_memory_layout(128 << 20);
        assert_eq!((low, high), (128 << 20, 0));
        // The special pages (0xfeff8000, 8 pages below 0xff000000) are reserved, as libxl has them.
        let special = (0xfeff_8000, 8 << 12, E820_RESERVED);
        assert_eq!(map, vec![(0, 128 << 20, E820_RAM), special]);
        let (low, high, map) = pvh_memory_layout(5 << 30);
        assert_eq!(low, PVH_MMIO_START);
        assert_eq!(high, (1 << 32) + (5 << 30) - PVH_MMIO_START);
        assert_eq!(map[1], special);
        assert_eq!(map[2], (1 << 32, (5 << 30) - PVH_MMIO_START, E820_RAM));
        assert_eq!(pvh_paging_pool_bytes(128, 1), 2 << 20);
    }

    #[test]
    fn hvm_layout_leaves_the_first_mib_to_hvmloader() {
        let (low, high, map) = hvm_memory_layout(128 << 20);
        assert_eq!((low, high), (128 << 20, 0));
        assert_eq!(
            map,
            vec![(HVM_LOW_RAM_START, (128 << 20) - HVM_LOW_RAM_START, E820_RAM)]
        );
        let (low, high, map) = hvm_memory_layout(5 << 30);
        assert_eq!(low, HVM_MMIO_START);
        assert_eq!(high, (1 << 32) + (5 << 30) - HVM_MMIO_START);
        assert_eq!(
            map[0],
            (HVM_LOW_RAM_START, HVM_MMIO_START - HVM_LOW_RAM_START, E820_RAM)
        );
        assert_eq!(map[1], (1 << 32, (5 << 30) - HVM_MMIO_START, E820_RAM));
    }

    #[test]
    fn missing_kernel_names_step_and_errno() {
        let Some(xc) = dummy() else { return };
        let err = xc.build_pv(1, &config("/nonexistent/vmlinuz", None)).unwrap_err();
        assert_eq!(
            err,
            XenctrlError::Call {
                call: "xc_dom_kernel_file",
                errno: libc::ENOENT
            },
            "{err}"
        );
    }

    #[test]
    fn missing_ramdisk_names_step_and_errno() {
        let Some(xc) = dummy() else { return };
        // Any readable file loads as a "kernel": it is parsed only later.
        let kernel = std::env::current_exe().unwrap();
        let err = xc
            .build_pv(1, &config(kernel.to_str().unwrap(), Some("/nonexistent/initrd")))
            .unwrap_err();
        assert_eq!(
            err,
            XenctrlError::Call {
                call: "xc_dom_module_file",
                errno: libc::ENOENT
            },
            "{err}"
        );
    }

    #[test]
    fn nul_in_cmdline_is_rejected_before_any_call() {
        let Some(xc) = dummy() else { return };
        let mut cfg = config("/nonexistent/vmlinuz", None);
        cfg.cmdline = "a\0b".into();
        let err = xc.build_pv(1, &cfg).unwrap_err();
        assert!(matches!(
            err,
            XenctrlError::InvalidArgument {
                call: "xc_dom_allocate",
                ..
            }
        ));
    }
}
