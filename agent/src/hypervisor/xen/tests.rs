//! Tests of the Xen backend. Most run anywhere (pure layout/parsing code);
//! `open` failing cleanly through the real FFI needs a machine without Xen
//! (on a dom0 it says `SKIPPED`, and fails under `XAPID_REQUIRE_NO_XEN`);
//! `conformance_on_real_xen` needs a running Xen hypervisor, is ignored, and
//! is run in dom0 by `tests/xen/run.sh` (docs/testing.md, "Skips").

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use xenctrl::{DomainFlags, ShutdownReason as XenShutdown};

use super::super::conformance::{self, ConformanceOptions, Report};
use super::super::selection::test_env::{
    required, skip_on_a_xen_control_domain, skip_unless_required, REQUIRE_XENGUEST, REQUIRE_XEN_LIBS,
};
use super::super::{
    vbd_vdev, BackendError, BackendEvent, DeviceKind, DomainConfig, DomainKind, DomainState, HvmBoot, Hypervisor,
    ShutdownCode, MIB,
};
use super::host::parse_cpuinfo;
use super::layout::{dev_major_minor, kib, mib_ceil, physical_device, read_only, state_of, vdev_devid, Record};
use super::watcher::{changed_domains, device_event};
use super::xenguest::{log_level_from_env, BuildReply, BuildRequest, StderrLog};
use super::XenBackend;

/// The failure of a backend call made at `step` of a check.
fn failed_at(step: &str) -> impl FnOnce(BackendError) -> conformance::CheckFailure {
    let step = step.to_string();
    move |source| conformance::CheckFailure::Backend { step, source }
}

/// Xen only: a VIF's address settings land where XenServer's guest tools read them,
/// `xenserver/device/vif/<devid>/static-ip-setting` under the domain's home, owned by the
/// guest; a new setting replaces the family's keys (a gateway no longer given is removed)
/// and leaves the tools' answer (`error-code`) be; the domain's end takes them away.
fn check_static_ip_setting(
    hv: &dyn Hypervisor,
    opts: &ConformanceOptions,
) -> Result<conformance::Verdict, conformance::CheckFailure> {
    use super::super::{IpSetting, MacAddr, VifIpSetting};
    use conformance::CheckFailure;
    let backend = failed_at;
    let fail = |m: String| CheckFailure::Expectation(m);
    let config = opts.config(format!("{}static-ip", opts.name_prefix));
    let domid = hv.create_domain(&config).map_err(backend("create_domain"))?;
    let base = format!("/local/domain/{domid}/xenserver/device/vif/1/static-ip-setting");
    let outcome = (|| {
        let xs = xenctrl::XsHandle::open().map_err(|e| fail(format!("opening xenstore: {e}")))?;
        let read = |key: &str| super::layout::read_opt(&xs, xenctrl::Transaction::NONE, &format!("{base}/{key}"));
        let read = |key: &str| read(key).map_err(|e| fail(format!("reading {base}/{key}: {e}")));
        let mac = MacAddr([0x02, 0x16, 0x3e, 0x00, 0x00, 0x07]);
        let first = VifIpSetting {
            v4: IpSetting::Static {
                address: "192.0.2.10/24".into(),
                gateway: Some("192.0.2.1".into()),
            },
            v6: IpSetting::Unspecified,
        };
        hv.set_vif_ip_setting(domid, 1, &mac, &first)
            .map_err(backend("set_vif_ip_setting"))?;
        for (key, want) in [
            ("mac", Some("02:16:3e:00:00:07")),
            ("error-code", Some("0")),
            ("error-msg", Some("")),
            ("enabled", Some("1")),
            ("address", Some("192.0.2.10/24")),
            ("gateway", Some("192.0.2.1")),
            ("enabled6", Some("0")),
            ("address6", None),
        ] {
            let got = read(key)?;
            if got.as_deref() != want {
                return Err(fail(format!("{base}/{key} is {got:?}, wanted {want:?}")));
            }
        }
        let dir = format!("/local/domain/{domid}/xenserver/device/vif/1");
        let perms = xs
            .get_permissions(xenctrl::Transaction::NONE, &dir)
            .map_err(|e| fail(format!("permissions of {dir}: {e}")))?;
        if perms.first().map(|p| p.domid) != Some(domid) {
            return Err(fail(format!("{dir} is not owned by the guest: {perms:?}")));
        }
        // The guest's tools answer; the next setting leaves the answer be.
        xs.write(xenctrl::Transaction::NONE, &format!("{base}/error-code"), b"1")
            .map_err(|e| fail(format!("writing error-code: {e}")))?;
        let second = VifIpSetting {
            v4: IpSetting::Static {
                address: "192.0.2.11/24".into(),
                gateway: None,
            },
            v6: IpSetting::Static {
                address: "2001:db8::11/64".into(),
                gateway: Some("2001:db8::1".into()),
            },
        };
        hv.set_vif_ip_setting(domid, 1, &mac, &second)
            .map_err(backend("set_vif_ip_setting again"))?;
        for (key, want) in [
            ("error-code", Some("1")),
            ("address", Some("192.0.2.11/24")),
            ("gateway", None),
            ("enabled6", Some("1")),
            ("address6", Some("2001:db8::11/64")),
            ("gateway6", Some("2001:db8::1")),
        ] {
            let got = read(key)?;
            if got.as_deref() != want {
                return Err(fail(format!(
                    "after the second setting {base}/{key} is {got:?}, wanted {want:?}"
                )));
            }
        }
        hv.destroy(domid).map_err(backend("destroy"))?;
        if xs.read(xenctrl::Transaction::NONE, &base).is_ok() {
            return Err(fail(format!("{base} outlived the domain")));
        }
        Ok(conformance::Verdict::Passed)
    })();
    if outcome.is_err() {
        let _ = hv.destroy(domid);
    }
    outcome
}

/// The process whose command line holds `-xen-domid <domid>`: that domain's device model.
fn device_model_pid(domid: u32) -> Option<i32> {
    let needle = format!("-xen-domid\0{domid}\0");
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()).find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline).contains(&needle).then_some(pid)
    })
}

/// Xen only: an HVM domain's device model killed under it takes the domain down (no
/// domain left running without its emulator), and the backend says so with an event.
fn check_device_model_death(
    hv: &dyn Hypervisor,
    opts: &ConformanceOptions,
) -> Result<conformance::Verdict, conformance::CheckFailure> {
    use conformance::CheckFailure;
    let backend = failed_at;
    let mut config = DomainConfig::pv(format!("{}dm-death", opts.name_prefix), opts.guest_memory, 1, "");
    config.kind = DomainKind::Hvm(HvmBoot::default());
    let rx = hv.subscribe().map_err(backend("subscribe"))?;
    let domid = hv.create_domain(&config).map_err(backend("create_domain"))?;
    let outcome = (|| {
        hv.build(domid).map_err(backend("build"))?;
        hv.unpause(domid).map_err(backend("unpause"))?;
        let pid = device_model_pid(domid)
            .ok_or_else(|| CheckFailure::Expectation(format!("no device model process for domain {domid}")))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
            .map_err(|e| CheckFailure::Expectation(format!("kill -9 {pid}: {e}")))?;
        let deadline = std::time::Instant::now() + opts.event_timeout;
        loop {
            match hv.domain_info(domid) {
                Err(BackendError::NoSuchDomain { .. }) => break,
                _ if std::time::Instant::now() > deadline => {
                    return Err(CheckFailure::Expectation(format!(
                        "domain {domid} still there {:?} after its device model (pid {pid}) was killed",
                        opts.event_timeout
                    )))
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        let announced = rx.try_iter().any(|e| e == BackendEvent::DomainChanged(domid));
        if !announced {
            return Err(CheckFailure::Expectation(format!(
                "no DomainChanged({domid}) event after the device model died"
            )));
        }
        Ok(conformance::Verdict::Passed)
    })();
    if outcome.is_err() {
        let _ = hv.destroy(domid);
    }
    outcome
}

#[test]
fn open_without_xen_names_the_failing_call_and_errno() {
    if skip_on_a_xen_control_domain("open_without_xen_names_the_failing_call_and_errno") {
        return;
    }
    let err = XenBackend::open().unwrap_err();
    assert!(
        matches!(err, BackendError::Unavailable { backend: "xen", .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    match xenctrl::CtrlLibraries::system() {
        // libxen-dev's runtime libraries are installed: the library loads
        // and libxencall fails to open /dev/xen/privcmd.
        Ok(_) => {
            assert!(msg.contains("xc_interface_open"), "{msg}");
            assert!(msg.contains("ENOENT"), "{msg}");
            assert!(msg.contains("/dev/xen/privcmd"), "{msg}");
        }
        Err(e) => {
            assert!(e.is_library_missing(), "{e}");
            assert!(!required(REQUIRE_XEN_LIBS), "Xen libraries required but missing: {e}");
            assert!(msg.contains("not available"), "{msg}");
        }
    }
}

#[test]
fn library_errors_keep_call_and_errno() {
    let e = super::xen_err(
        super::super::Op::Build,
        xenctrl::XenctrlError::Call {
            call: "xc_dom_parse_image",
            errno: libc::EINVAL,
        },
    );
    assert_eq!(e.errno(), Some(super::super::Errno::EINVAL));
    let msg = e.to_string();
    assert!(msg.starts_with("build: xc_dom_parse_image failed"), "{msg}");
    // No errno from the library: EIO, and the message says so.
    let e = super::xen_err(
        super::super::Op::Build,
        xenctrl::XenctrlError::Call {
            call: "xc_dom_build_image",
            errno: 0,
        },
    );
    assert_eq!(e.errno(), Some(super::super::Errno::EIO));
    assert!(e.to_string().contains("without setting errno"), "{e}");
    let e = super::xen_err(
        super::super::Op::CreateDomain,
        xenctrl::XenctrlError::LibraryMissing {
            library: "libxenctrl.so.4.17".into(),
            reason: "not found".into(),
        },
    );
    assert!(matches!(e, BackendError::Unavailable { backend: "xen", .. }));
}

#[test]
fn helper_protocol_round_trips() {
    let req = BuildRequest {
        container: super::xenguest::Container::Pv,
        domid: 7,
        kernel: "/boot/vmlinuz".into(),
        firmware: None,
        ramdisk: Some("/boot/initrd".into()),
        cmdline: "console=hvc0".into(),
        memory_mib: 128,
        max_vcpus: 2,
        online_vcpus: 1,
        console_evtchn: 3,
        xenstore_evtchn: 4,
    };
    let json = serde_json::to_vec(&req).unwrap();
    assert_eq!(serde_json::from_slice::<BuildRequest>(&json).unwrap(), req);
    for reply in [
        BuildReply::Built {
            console_mfn: 0x1234,
            xenstore_mfn: 0x1235,
        },
        BuildReply::Failed {
            call: Some("xc_dom_parse_image".into()),
            errno: 22,
            message: "xc_dom_parse_image failed".into(),
        },
    ] {
        let json = serde_json::to_vec(&reply).unwrap();
        assert_eq!(serde_json::from_slice::<BuildReply>(&json).unwrap(), reply);
    }
}

#[test]
fn helper_reports_failures_with_call_and_errno() {
    if skip_on_a_xen_control_domain("helper_reports_failures_with_call_and_errno") {
        return;
    }
    // Only where the helper has been built (cargo build -p agent --bins).
    let Some(helper) = super::xenguest::helper_path() else {
        skip_unless_required(
            REQUIRE_XENGUEST,
            "xapid-xenguest not found ($XAPID_XENGUEST, next to the test binary, PATH); \
             cargo build -p agent --bin xapid-xenguest builds it",
        );
        return;
    };
    let req = BuildRequest {
        container: super::xenguest::Container::Pv,
        domid: 1,
        kernel: "/nonexistent".into(),
        firmware: None,
        ramdisk: None,
        cmdline: String::new(),
        memory_mib: 64,
        max_vcpus: 1,
        online_vcpus: 1,
        console_evtchn: 1,
        xenstore_evtchn: 2,
    };
    let failure = super::xenguest::build_in_helper(&helper, &req)
        .expect("the helper answers")
        .expect_err("no hypervisor here");
    match xenctrl::CtrlLibraries::system() {
        Ok(_) => {
            assert_eq!(failure.call, "xc_interface_open", "{failure:?}");
            assert_eq!(failure.errno, libc::ENOENT, "{failure:?}");
        }
        Err(e) => {
            assert!(!required(REQUIRE_XEN_LIBS), "Xen libraries required but missing: {e}");
            assert!(failure.message.contains("not available"), "{failure:?}");
        }
    }
}

#[test]
fn states_from_xen_flags() {
    let flags = |f: fn(&mut DomainFlags)| {
        let mut d = DomainFlags::default();
        f(&mut d);
        d
    };
    assert_eq!(state_of(&flags(|f| f.running = true), None), DomainState::Running);
    assert_eq!(state_of(&flags(|f| f.blocked = true), None), DomainState::Running);
    assert_eq!(state_of(&flags(|f| f.paused = true), None), DomainState::Paused);
    // A shut-down domain is also paused; shutdown wins.
    let shut = flags(|f| {
        f.shutdown = true;
        f.paused = true;
    });
    for (reason, code) in [
        (XenShutdown::Poweroff, ShutdownCode::PowerOff),
        (XenShutdown::Reboot, ShutdownCode::Reboot),
        (XenShutdown::Suspend, ShutdownCode::Suspend),
        (XenShutdown::Crash, ShutdownCode::Crash),
        (XenShutdown::Watchdog, ShutdownCode::Watchdog),
        (XenShutdown::SoftReset, ShutdownCode::Reboot),
        (XenShutdown::Other(77), ShutdownCode::Crash),
    ] {
        assert_eq!(state_of(&shut, Some(reason)), DomainState::Shutdown(code));
    }
    let dying = flags(|f| {
        f.dying = true;
        f.shutdown = true;
    });
    assert_eq!(state_of(&dying, Some(XenShutdown::Poweroff)), DomainState::Dying);
}

#[test]
fn vdev_numbers_round_trip() {
    for devid in [0, 1, 3, 15, 16, 26, 1000, (1 << 20) - 1] {
        let vdev = vbd_vdev(devid).unwrap();
        assert_eq!(vdev_devid(vdev), Some(devid), "devid {devid} vdev {vdev}");
    }
    assert_eq!(vdev_devid(51712), Some(0));
    // Partitions and other majors are not positions xapid writes.
    assert_eq!(vdev_devid(51713), None);
    assert_eq!(vdev_devid(768), None);
}

#[test]
fn device_numbers() {
    // makedev(7, 0) and makedev(259, 70000) as glibc encodes them.
    assert_eq!(dev_major_minor(0x700), (7, 0));
    let big = (259u64 << 8) | (70000u64 & 0xff) | ((70000u64 & !0xff) << 12);
    assert_eq!(dev_major_minor(big), (259, 70000));
    assert_eq!(physical_device(0x700), "7:0");
    assert_eq!(physical_device((8 << 8) | 16), "8:10");
}

#[test]
fn sizes_round_up() {
    assert_eq!(kib(0), 0);
    assert_eq!(kib(1), 1);
    assert_eq!(kib(64 * MIB), 65536);
    assert_eq!(mib_ceil(64 * MIB), 64);
    assert_eq!(mib_ceil(64 * MIB + 1), 65);
}

#[test]
fn permissions_shape() {
    let ro = read_only(7);
    assert_eq!(ro[0].domid, 0);
    assert!(!ro[0].read && !ro[0].write);
    assert_eq!(ro[1].domid, 7);
    assert!(ro[1].read && !ro[1].write);
}

#[test]
fn new_record_follows_config() {
    let mut c = DomainConfig::pv("vm", 256 * MIB, 4, "/boot/vmlinuz");
    c.vcpus_at_start = 2;
    c.memory_target = 128 * MIB;
    let r = Record::new(&c);
    assert!(!r.built);
    assert_eq!(r.target, 128 * MIB);
    assert_eq!(r.vcpus, 2);
    // The record's config survives the JSON round trip through xenstore.
    let json = serde_json::to_vec(&r.config).unwrap();
    let back: DomainConfig = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, c);
}

#[test]
fn parses_dom0_cpuinfo() {
    let text = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\n\
                model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz\nstepping\t: 4\n\
                cpu MHz\t\t: 2394.374\nflags\t\t: fpu vme de pse hypervisor\n\n\
                processor\t: 1\nvendor_id\t: Other\n";
    let cpu = parse_cpuinfo(text);
    assert_eq!(cpu.vendor, "GenuineIntel");
    assert_eq!((cpu.family, cpu.model, cpu.stepping), (6, 85, 4));
    assert!(cpu.model_name.starts_with("Intel(R) Xeon(R) Gold"));
    assert!((cpu.speed_mhz - 2394.374).abs() < 1e-6);
    assert_eq!(cpu.flags, ["fpu", "vme", "de", "pse", "hypervisor"]);
    let empty = parse_cpuinfo("");
    assert!(empty.vendor.is_empty() && empty.flags.is_empty());
}

#[test]
fn watcher_diffs_domains() {
    let running = (false, false, false, None);
    let shut = (false, true, true, Some(XenShutdown::Poweroff));
    let old: HashMap<u32, _> = [(0, running), (3, running), (4, running)].into();
    let new: HashMap<u32, _> = [(0, running), (3, shut), (5, running)].into();
    assert_eq!(changed_domains(&old, &new), vec![3, 4, 5]);
    assert!(changed_domains(&new, &new).is_empty());
}

#[test]
fn watcher_maps_backend_paths() {
    let block = |domid, devid| BackendEvent::DeviceChanged {
        domid,
        kind: DeviceKind::Block,
        devid,
    };
    assert_eq!(
        device_event("/local/domain/0/backend/vbd/5/51712/state"),
        Some(block(5, 0))
    );
    assert_eq!(device_event("/local/domain/0/backend/vbd/5/51760"), Some(block(5, 3)));
    assert_eq!(
        device_event("/local/domain/0/backend/vif/9/1/hotplug-status"),
        Some(BackendEvent::DeviceChanged {
            domid: 9,
            kind: DeviceKind::Net,
            devid: 1
        })
    );
    assert_eq!(device_event("/local/domain/0/backend/vbd/5/51712/mode"), None);
    assert_eq!(device_event("/local/domain/0/backend/vbd/5"), None);
    assert_eq!(device_event("/local/domain/0/backend/vbd"), None);
    assert_eq!(device_event("/local/domain/0/backend/qdisk/5/1/state"), None);
    assert_eq!(device_event("/local/domain/5/device/vbd/51712/state"), None);
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The backend conformance suite against the real hypervisor. Needs a Xen
/// dom0 with xenstored and xenconsoled running, the blkback/netback and
/// loop drivers, a bridge `xenbr0`, and a PV kernel (+ ramdisk) that boots
/// to a console: see `tests/xen/run.sh`, which provides all that under
/// QEMU. Environment: `XAPID_XEN_KERNEL` (required), `XAPID_XEN_RAMDISK`,
/// `XAPID_XEN_CMDLINE`, `XAPID_XEN_SCRATCH`, `XAPID_XEN_GUEST_MIB`,
/// `XAPID_XEN_EVENT_TIMEOUT` (seconds, default 180: guests boot slowly
/// under emulation), `XAPID_XEN_FILTER` (only checks whose name contains
/// it), `XAPID_XEN_LOG=debug`.
#[test]
#[ignore = "needs a running Xen hypervisor; tests/xen/run.sh runs it in dom0"]
fn conformance_on_real_xen() {
    let _ = tracing::subscriber::set_global_default(StderrLog(log_level_from_env()));
    let kernel = env_path("XAPID_XEN_KERNEL").expect("XAPID_XEN_KERNEL: a PV guest kernel");
    let scratch = env_path("XAPID_XEN_SCRATCH").unwrap_or_else(|| std::env::temp_dir().join("xapid-xen"));
    let mut opts = ConformanceOptions::new(scratch, kernel);
    opts.ramdisk = env_path("XAPID_XEN_RAMDISK");
    if let Ok(cmdline) = std::env::var("XAPID_XEN_CMDLINE") {
        opts.cmdline = cmdline;
    }
    if let Some(mib) = std::env::var("XAPID_XEN_GUEST_MIB")
        .ok()
        .and_then(|m| m.parse::<u64>().ok())
    {
        opts.guest_memory = mib * MIB;
    }
    opts.event_timeout = Duration::from_secs(
        std::env::var("XAPID_XEN_EVENT_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(180),
    );
    let filter = std::env::var("XAPID_XEN_FILTER").unwrap_or_default();

    let backend = XenBackend::open().expect("opening the Xen backend");
    let host = backend.host_info().expect("host_info");
    eprintln!(
        "XAPID_HOST {} {} cpus={} total={}MiB free={}MiB",
        host.hypervisor,
        host.cpu.model_name,
        host.cpu.count,
        host.memory_total / MIB,
        host.memory_free / MIB
    );
    // The suite's checks, then the Xen backend's own.
    let xen_checks: [(&str, conformance::CheckFn); 2] = [
        ("hvm_device_model_death", check_device_model_death),
        ("vif_static_ip_setting", check_static_ip_setting),
    ];
    let results = conformance::CHECKS
        .iter()
        .chain(xen_checks.iter())
        .filter(|(name, _)| name.contains(filter.as_str()))
        .map(|(name, check)| {
            eprintln!("XAPID_CHECK_START {name}");
            let r = conformance::run_check(name, *check, &backend, &opts);
            eprintln!("XAPID_CHECK_END {name} {:?} in {:.1?}", r.outcome, r.duration);
            r
        })
        .collect();
    let report = Report {
        backend: backend.backend_name().to_string(),
        results,
    };
    println!("{report}");
    let leftovers: Vec<String> = backend
        .list_domains()
        .expect("list_domains")
        .into_iter()
        .filter(|d| d.name.starts_with(&opts.name_prefix))
        .map(|d| format!("{} {} {}", d.domid, d.name, d.state))
        .collect();
    assert!(report.is_success(), "{report}");
    assert!(leftovers.is_empty(), "domains left behind: {leftovers:?}");
    assert!(report.passed() > 0, "no check ran (filter {filter:?})");
}
