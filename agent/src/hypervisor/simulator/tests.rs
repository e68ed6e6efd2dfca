//! Unit tests of the simulator (the backend-neutral checks are in
//! `conformance.rs`).

use crate::hypervisor::DomainKind;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::hypervisor::{BackendEvent, EventReceiver, Hypervisor, MacAddr};

const T: Duration = Duration::from_secs(5);

fn sim() -> SimulatorBackend {
    SimulatorBackend::new(SimConfig::small_host())
}

fn cfg(name: &str, mib: u64) -> DomainConfig {
    DomainConfig::pv(name, mib * MIB, 2, "/boot/vmlinuz")
}

fn start(hv: &dyn Hypervisor, name: &str, mib: u64) -> DomId {
    let d = hv.create_domain(&cfg(name, mib)).unwrap();
    hv.build(d).unwrap();
    hv.unpause(d).unwrap();
    d
}

fn next_event_for(rx: &EventReceiver, domid: DomId) -> BackendEvent {
    let deadline = Instant::now() + T;
    loop {
        let ev = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("event");
        if ev == BackendEvent::DomainChanged(domid) {
            return ev;
        }
    }
}

#[test]
fn new_simulator_has_only_dom0_with_memory_accounted() {
    let s = sim();
    let doms = s.list_domains().unwrap();
    assert_eq!(doms.len(), 1);
    assert_eq!(doms[0].domid, 0);
    assert_eq!(doms[0].name, "Domain-0");
    assert_eq!(doms[0].memory_actual, 1024 * MIB);
    assert_eq!(s.memory_free().unwrap(), 15 * 1024 * MIB);
    let host = s.host_info().unwrap();
    assert_eq!(host.memory_total, 16 * 1024 * MIB);
    assert_eq!(host.memory_free, 15 * 1024 * MIB);
    assert_eq!(host.cpu.count, 4);
    assert_eq!(host.hypervisor.version_string(), "4.17.0-sim");
    assert_eq!(host.hostname, "sim-host");
}

#[test]
fn default_config_reflects_this_machine() {
    let c = SimConfig::default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    assert_eq!(Some(c.memory_total), host::parse_mem_total(&meminfo));
    assert!(c.dom0_memory > 0 && c.dom0_memory < c.memory_total);
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count() as u32;
    assert_eq!(c.cpu.count, cpus.max(1));
    let s = SimulatorBackend::new(c.clone());
    let host = s.host_info().unwrap();
    assert_eq!(host.memory_free, c.memory_total - c.dom0_memory);
}

#[test]
fn domids_are_monotonic_and_wrap_around_live_ones() {
    let s = sim();
    let a = s.create_domain(&cfg("a", 64)).unwrap();
    let b = s.create_domain(&cfg("b", 64)).unwrap();
    assert_eq!((a, b), (1, 2));
    s.destroy(b).unwrap();
    let c = s.create_domain(&cfg("c", 64)).unwrap();
    assert_eq!(c, 3, "destroyed domid must not be reused at once");
    s.inner.state.lock().next_domid = DOMID_FIRST_RESERVED - 1;
    let last = s.create_domain(&cfg("last", 64)).unwrap();
    assert_eq!(last, DOMID_FIRST_RESERVED - 1);
    // Wraps to 1, which is live (a), so 2 (free again) is next.
    let wrapped = s.create_domain(&cfg("wrapped", 64)).unwrap();
    assert_eq!(wrapped, 2);
}

#[test]
fn memory_exhaustion_is_typed_and_exact() {
    let s = SimulatorBackend::new(SimConfig::small_host().with_memory(2048 * MIB, 512 * MIB));
    let a = s.create_domain(&cfg("a", 1024)).unwrap();
    let err = s.create_domain(&cfg("b", 1024)).unwrap_err();
    match err {
        BackendError::NotEnoughMemory { needed, available } => {
            assert_eq!(needed, 1024 * MIB);
            assert_eq!(available, 512 * MIB);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(s.list_domains().unwrap().len(), 2);
    // Ballooning up also respects free memory.
    let mut big = cfg("c", 256);
    big.memory_max = 2048 * MIB;
    let c = s.create_domain(&big).unwrap();
    assert!(matches!(
        s.set_memory_target(c, 1024 * MIB),
        Err(BackendError::NotEnoughMemory { needed, available })
            if needed == 768 * MIB && available == 256 * MIB
    ));
    s.destroy(a).unwrap();
    s.set_memory_target(c, 1024 * MIB).unwrap();
    assert_eq!(s.memory_free().unwrap(), 512 * MIB);
    assert!(s.create_domain(&cfg("d", 512)).is_ok());
    assert_eq!(s.memory_free().unwrap(), 0);
}

#[test]
fn parallel_creates_overlap_their_latency() {
    let latency = Duration::from_millis(50);
    let s = Arc::new(SimulatorBackend::new(
        SimConfig::small_host().with_latency(Latency::none().with(Op::CreateDomain, latency)),
    ));
    let hv: Arc<dyn Hypervisor> = s.clone();
    let start = Instant::now();
    let ids: Vec<DomId> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..64)
            .map(|i| {
                let hv = Arc::clone(&hv);
                scope.spawn(move || hv.create_domain(&cfg(&format!("p{i}"), 32)).unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = start.elapsed();
    let serial = latency * 64;
    println!("64 creates with {latency:?} latency took {elapsed:?} (serial: {serial:?})");
    assert!(elapsed >= latency);
    assert!(elapsed < serial / 4, "took {elapsed:?}, serial would be {serial:?}");
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 64);
    assert_eq!(s.list_domains().unwrap().len(), 65);
    assert_eq!(s.memory_free().unwrap(), (15 * 1024 - 64 * 32) * MIB);
}

#[test]
fn parallel_creates_from_tokio_spawn_blocking() {
    let latency = Duration::from_millis(50);
    let hv: Arc<dyn Hypervisor> = Arc::new(SimulatorBackend::new(
        SimConfig::small_host().with_latency(Latency::uniform(latency)),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let elapsed = rt.block_on(async move {
        let start = Instant::now();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let hv = Arc::clone(&hv);
                tokio::task::spawn_blocking(move || hv.create_domain(&cfg(&format!("t{i}"), 32)))
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        start.elapsed()
    });
    assert!(elapsed < latency * 16, "took {elapsed:?}");
}

#[test]
fn latency_can_change_at_run_time() {
    let s = sim();
    s.set_latency(Op::DomainInfo, Duration::from_millis(40));
    let start = Instant::now();
    s.domain_info(0).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(40));
    s.set_latency_table(Latency::none());
    let start = Instant::now();
    s.domain_info(0).unwrap();
    assert!(start.elapsed() < Duration::from_millis(40));
}

#[test]
fn fault_injection_fails_next_creates_with_op_and_errno() {
    let s = sim();
    s.inject(Fault::FailNext {
        op: Op::CreateDomain,
        count: 2,
        errno: Errno::EIO,
    });
    for _ in 0..2 {
        let err = s.create_domain(&cfg("f", 64)).unwrap_err();
        assert!(
            matches!(
                err,
                BackendError::Os {
                    op: Op::CreateDomain,
                    errno: Errno::EIO,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.op(), Some(Op::CreateDomain));
        assert_eq!(err.errno(), Some(Errno::EIO));
        let msg = err.to_string();
        assert!(msg.contains("create_domain") && msg.contains("EIO"), "{msg}");
    }
    assert_eq!(s.memory_free().unwrap(), 15 * 1024 * MIB);
    assert_eq!(s.create_domain(&cfg("f", 64)).unwrap(), 1);
    // Through the trait's optional capability.
    let hv: &dyn Hypervisor = &s;
    let fi = hv.fault_injection().unwrap();
    fi.inject(Fault::FailAlways {
        op: Op::PlugNet,
        errno: Errno::ENODEV,
    });
    let nic = NetDevice {
        devid: 0,
        mac: "02:00:00:00:00:01".parse().unwrap(),
        mtu: 1500,
        bridge: "xenbr0".into(),
    };
    assert_eq!(hv.plug_net(1, &nic).unwrap_err().errno(), Some(Errno::ENODEV));
    assert_eq!(hv.plug_net(1, &nic).unwrap_err().errno(), Some(Errno::ENODEV));
    fi.clear_faults();
    hv.plug_net(1, &nic).unwrap();
}

#[test]
fn hvm_guests_are_simulated() {
    let s = sim();
    assert!(s.capabilities().hvm);
    let mut c = cfg("hvm", 64);
    c.kind = DomainKind::Hvm(Default::default());
    let d = s.create_domain(&c).unwrap();
    s.build(d).unwrap();
    s.unpause(d).unwrap();
    assert_eq!(s.domain_info(d).unwrap().state, DomainState::Running);
}

/// A sparse disk image of `mib` MiB; with `boot_sector`, an MBR signature at 510.
fn disk_image(dir: &std::path::Path, name: &str, mib: u64, boot_sector: bool) -> std::path::PathBuf {
    use std::io::{Seek, SeekFrom};
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    f.set_len(mib * MIB).unwrap();
    if boot_sector {
        f.seek(SeekFrom::Start(510)).unwrap();
        f.write_all(&[0x55, 0xaa]).unwrap();
    }
    path
}

#[test]
fn pv_guests_boot_through_the_simulated_bootloader() {
    let dir = tempfile::tempdir().unwrap();
    let s = sim();
    let disk = disk_image(dir.path(), "root.img", 64, true);
    let mut c = DomainConfig::pv_bootloader("pv-guest", 128 * MIB, 1, &disk);
    if let DomainKind::Pv(PvBoot::Bootloader(b)) = &mut c.kind {
        b.extra_args = "console=hvc0 quiet".into();
    }
    let d = s.create_domain(&c).unwrap();
    s.build(d).unwrap();
    assert!(s.domain_info(d).unwrap().built);
    s.unpause(d).unwrap();
    let mut con = s.console_stream(d).unwrap();
    let (boot, found) = con.read_until_contains("root@pv-guest:~# ", T).unwrap();
    assert!(found, "{boot}");
    let loader = boot
        .find("pygrub (xapid simulator): booting the default entry of")
        .expect(&boot);
    assert!(loader < boot.find("Linux version").expect(&boot), "{boot}");
    assert!(boot.contains("root.img"), "{boot}");
    assert!(boot.contains("Command line: console=hvc0 quiet\n"), "{boot}");
    // It then runs and stops as any PV guest does.
    s.shutdown(d, ShutdownReason::PowerOff).unwrap();
    assert_eq!(
        s.domain_info(d).unwrap().state,
        DomainState::Shutdown(ShutdownCode::PowerOff)
    );
    s.destroy(d).unwrap();
}

#[test]
fn the_simulated_bootloader_fails_as_a_real_one_would() {
    let dir = tempfile::tempdir().unwrap();
    let s = sim();
    let build = |c: &DomainConfig| {
        let d = s.create_domain(c).unwrap();
        let r = s.build(d);
        // The failed build leaves the domain unbuilt and paused; the caller destroys it.
        if r.is_err() {
            let info = s.domain_info(d).unwrap();
            assert_eq!((info.state, info.built), (DomainState::Paused, false));
        }
        s.destroy(d).unwrap();
        r
    };
    let blank = disk_image(dir.path(), "blank.img", 10 * 1024, false);
    match build(&DomainConfig::pv_bootloader("blank", 64 * MIB, 1, &blank)) {
        Err(BackendError::BootloaderFailed { reason }) => assert!(reason.contains("nothing to boot"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let mut no_disk = DomainConfig::pv_bootloader("no-disk", 64 * MIB, 1, &blank);
    if let DomainKind::Pv(PvBoot::Bootloader(b)) = &mut no_disk.kind {
        b.disk = None;
    }
    assert!(matches!(build(&no_disk), Err(BackendError::NoBootableDevice)));
    let good = disk_image(dir.path(), "good.img", 1, true);
    let mut unknown = DomainConfig::pv_bootloader("unknown", 64 * MIB, 1, &good);
    if let DomainKind::Pv(PvBoot::Bootloader(b)) = &mut unknown.kind {
        b.bootloader = "eliloader".into();
    }
    match build(&unknown) {
        Err(BackendError::UnknownBootloader { name }) => assert_eq!(name, "eliloader"),
        other => panic!("{other:?}"),
    }
    // Injected build faults still come first.
    s.inject(Fault::FailNext {
        op: Op::Build,
        count: 1,
        errno: Errno::EIO,
    });
    assert!(matches!(
        build(&DomainConfig::pv_bootloader("faulty", 64 * MIB, 1, &good)),
        Err(BackendError::Os { .. })
    ));
    assert!(build(&DomainConfig::pv_bootloader("fine", 64 * MIB, 1, &good)).is_ok());
    assert_eq!(s.memory_free().unwrap(), 15 * 1024 * MIB);
}

#[test]
fn lifecycle_states_and_cpu_time() {
    let s = sim();
    let d = s.create_domain(&cfg("vm", 128)).unwrap();
    let info = s.domain_info(d).unwrap();
    assert_eq!((info.state, info.built), (DomainState::Paused, false));
    assert!(matches!(s.unpause(d), Err(BackendError::InvalidState { .. })));
    s.build(d).unwrap();
    s.unpause(d).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    s.pause(d).unwrap();
    let t1 = s.domain_info(d).unwrap().cpu_time;
    // 2 vCPUs for >= 30 ms.
    assert!(t1 >= Duration::from_millis(60), "{t1:?}");
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(s.domain_info(d).unwrap().cpu_time, t1, "paused domains use no CPU");
    s.set_vcpus(d, 1).unwrap();
    assert_eq!(s.domain_info(d).unwrap().vcpus_online, 1);
    assert!(matches!(s.set_vcpus(d, 3), Err(BackendError::InvalidArgument { .. })));
    s.set_memory_target(d, 64 * MIB).unwrap();
    let info = s.domain_info(d).unwrap();
    assert_eq!((info.memory_target, info.memory_actual), (64 * MIB, 64 * MIB));
    assert_eq!(s.memory_free().unwrap(), (15 * 1024 - 64) * MIB);
}

#[test]
fn console_shows_boot_lines_and_echoes_input() {
    let s = sim();
    let d = start(&s, "web-01", 512);
    let mut con = s.console_stream(d).unwrap();
    let (boot, found) = con.read_until_contains("root@web-01:~# ", T).unwrap();
    assert!(found, "{boot}");
    assert!(boot.contains("Linux version"), "{boot}");
    assert!(boot.contains("web-01"), "{boot}");
    assert!(boot.contains("Memory: 524288K/524288K available (512 MiB)"), "{boot}");
    assert!(boot.contains("Brought up 1 node, 2 CPUs"), "{boot}");
    con.write_all(b"hello simulator\n").unwrap();
    // The line comes back, followed by a fresh prompt.
    let (echo, found) = con.read_until_contains("hello simulator\nroot@web-01:~# ", T).unwrap();
    assert!(found, "{echo}");
    // Terminal-style CR line endings work too.
    con.write_all(b"second line\r").unwrap();
    let (echo, found) = con.read_until_contains("second line\n", T).unwrap();
    assert!(found, "{echo}");
    // Hot-plugging a device is visible on the console.
    let nic = NetDevice {
        devid: 1,
        mac: "02:00:00:00:00:09".parse().unwrap(),
        mtu: 9000,
        bridge: "xenbr1".into(),
    };
    s.plug_net(d, &nic).unwrap();
    let (text, found) = con
        .read_until_contains("eth1: mac 02:00:00:00:00:09 mtu 9000", T)
        .unwrap();
    assert!(found, "{text}");
    assert!(s.console_history(d).unwrap().contains("hello simulator"));
}

#[test]
fn console_ring_is_bounded_and_replayed() {
    let mut c = SimConfig::small_host();
    c.console_ring_bytes = 1024;
    let s = SimulatorBackend::new(c);
    let d = start(&s, "small", 64);
    let mut con = s.console_stream(d).unwrap();
    for i in 0..200 {
        con.write_all(format!("line {i}\n").as_bytes()).unwrap();
    }
    let (_, found) = con.read_until_contains("line 199\n", T).unwrap();
    assert!(found);
    let history = s.console_history(d).unwrap();
    assert!(history.len() <= 1024);
    assert!(!history.contains("Linux version"), "oldest output is dropped");
    let mut again = s.console_stream(d).unwrap();
    let (replay, found) = again.read_until_contains("line 199\n", T).unwrap();
    assert!(found, "{replay}");
}

#[test]
fn console_closes_when_the_domain_is_destroyed() {
    let s = sim();
    let d = start(&s, "gone", 64);
    let mut con = s.console_stream(d).unwrap();
    con.read_until_contains("# ", T).unwrap();
    s.destroy(d).unwrap();
    let (_, _) = con.read_until_contains("\u{0}", T).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(std::io::Read::read(&mut con, &mut buf).unwrap(), 0);
    assert!(matches!(s.console_stream(d), Err(BackendError::NoSuchDomain { .. })));
}

#[test]
fn guest_self_poweroff_emits_event() {
    let s = sim();
    let d = start(&s, "selfish", 128);
    let rx = s.subscribe().unwrap();
    s.guest_poweroff(d).unwrap();
    assert_eq!(next_event_for(&rx, d), BackendEvent::DomainChanged(d));
    let info = s.domain_info(d).unwrap();
    assert_eq!(info.state, DomainState::Shutdown(ShutdownCode::PowerOff));
    assert_eq!(info.memory_actual, 128 * MIB, "memory held until destroy");
    assert!(s.console_history(d).unwrap().contains("reboot: Power down"));
    s.destroy(d).unwrap();
    assert_eq!(next_event_for(&rx, d), BackendEvent::DomainChanged(d));
    assert_eq!(s.memory_free().unwrap(), 15 * 1024 * MIB);
}

#[test]
fn guest_crash_and_reboot_in_place() {
    let s = sim();
    let d = start(&s, "crashy", 128);
    let rx = s.subscribe().unwrap();
    s.guest_reboot(d).unwrap();
    next_event_for(&rx, d);
    let info = s.domain_info(d).unwrap();
    assert_eq!((info.state, info.restarts, info.domid), (DomainState::Running, 1, d));
    let history = s.console_history(d).unwrap();
    assert_eq!(history.matches("Linux version").count(), 2, "{history}");
    assert!(history.contains("Restarting system"));
    s.guest_crash(d).unwrap();
    next_event_for(&rx, d);
    assert_eq!(
        s.domain_info(d).unwrap().state,
        DomainState::Shutdown(ShutdownCode::Crash)
    );
    assert!(s.console_history(d).unwrap().contains("Kernel panic"));
    assert!(matches!(s.guest_crash(d), Err(BackendError::InvalidState { .. })));
}

#[test]
fn typing_poweroff_at_the_console_powers_off() {
    let s = sim();
    let d = start(&s, "typist", 64);
    let rx = s.subscribe().unwrap();
    let mut con = s.console_stream(d).unwrap();
    con.read_until_contains("# ", T).unwrap();
    con.write_all(b"poweroff\n").unwrap();
    next_event_for(&rx, d);
    assert_eq!(
        s.domain_info(d).unwrap().state,
        DomainState::Shutdown(ShutdownCode::PowerOff)
    );
    let (text, found) = con.read_until_contains("Power down", T).unwrap();
    assert!(found, "{text}");
}

#[test]
fn clean_shutdown_requests_respect_guest_behaviour() {
    let s = sim();
    // Immediate.
    let a = start(&s, "a", 64);
    s.shutdown(a, ShutdownReason::Halt).unwrap();
    assert_eq!(
        s.domain_info(a).unwrap().state,
        DomainState::Shutdown(ShutdownCode::PowerOff)
    );
    assert!(matches!(
        s.shutdown(a, ShutdownReason::PowerOff),
        Err(BackendError::InvalidState { .. })
    ));
    // Delayed.
    let b = start(&s, "b", 64);
    s.set_guest_behaviour(
        b,
        GuestBehaviour {
            shutdown_delay: Duration::from_millis(50),
            ..GuestBehaviour::default()
        },
    )
    .unwrap();
    let rx = s.subscribe().unwrap();
    s.shutdown(b, ShutdownReason::PowerOff).unwrap();
    assert_eq!(s.domain_info(b).unwrap().state, DomainState::Running);
    next_event_for(&rx, b);
    assert_eq!(
        s.domain_info(b).unwrap().state,
        DomainState::Shutdown(ShutdownCode::PowerOff)
    );
    // Ignored.
    let c = start(&s, "c", 64);
    s.set_guest_behaviour(
        c,
        GuestBehaviour {
            honours_shutdown: false,
            ..GuestBehaviour::default()
        },
    )
    .unwrap();
    s.shutdown(c, ShutdownReason::PowerOff).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(s.domain_info(c).unwrap().state, DomainState::Running);
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        s.suspend_to(c, &dir.path().join("c.img")),
        Err(BackendError::Timeout { .. })
    ));
    s.destroy(c).unwrap();
    // Requested while paused: acted on at unpause.
    let p = start(&s, "p", 64);
    s.pause(p).unwrap();
    s.shutdown(p, ShutdownReason::Reboot).unwrap();
    assert_eq!(s.domain_info(p).unwrap().state, DomainState::Paused);
    s.unpause(p).unwrap();
    let info = s.domain_info(p).unwrap();
    assert_eq!((info.state, info.restarts), (DomainState::Running, 1));
}

#[test]
fn reboot_without_in_place_restart_leaves_shutdown_reboot() {
    let mut c = SimConfig::small_host();
    c.reboot_in_place = false;
    let s = SimulatorBackend::new(c);
    assert!(!s.capabilities().reboot_in_place);
    let config = cfg("xenlike", 64);
    let d = s.create_domain(&config).unwrap();
    s.build(d).unwrap();
    s.unpause(d).unwrap();
    s.shutdown(d, ShutdownReason::Reboot).unwrap();
    assert_eq!(
        s.domain_info(d).unwrap().state,
        DomainState::Shutdown(ShutdownCode::Reboot)
    );
    let new = s.restart(d, &config).unwrap();
    assert_ne!(new, d);
    assert_eq!(s.domain_info(new).unwrap().state, DomainState::Running);
    assert!(s.domain_info(d).is_err());
}

#[test]
fn suspend_writes_a_real_file_and_resume_restores() {
    let s = sim();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.suspend");
    let config = cfg("sleepy", 256);
    let d = s.create_domain(&config).unwrap();
    s.build(d).unwrap();
    s.unpause(d).unwrap();
    s.set_vcpus(d, 1).unwrap();
    let mut con = s.console_stream(d).unwrap();
    con.write_all(b"remember me\n").unwrap();
    con.read_until_contains("remember me\n", T).unwrap();
    let rx = s.subscribe().unwrap();
    s.suspend_to(d, &path).unwrap();
    next_event_for(&rx, d);
    assert!(s.domain_info(d).is_err());
    assert_eq!(s.memory_free().unwrap(), 15 * 1024 * MIB);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("XAPIDSIM-SUSPEND 1 "), "{text}");
    assert!(text.contains(&config.uuid.to_string()));
    // The file is not overwritten by a second suspend to the same path.
    let other = start(&s, "other", 64);
    assert!(matches!(s.suspend_to(other, &path), Err(BackendError::Io { .. })));
    assert_eq!(s.domain_info(other).unwrap().state, DomainState::Running);
    s.destroy(other).unwrap();

    let new = s.resume_from(&path, &config).unwrap();
    assert_ne!(new, d);
    let info = s.domain_info(new).unwrap();
    assert_eq!(info.state, DomainState::Paused);
    assert_eq!(info.memory_actual, 256 * MIB);
    assert_eq!(info.vcpus_online, 1);
    assert_eq!(s.memory_free().unwrap(), (15 * 1024 - 256) * MIB);
    s.unpause(new).unwrap();
    let history = s.console_history(new).unwrap();
    assert!(history.contains("remember me"), "{history}");
    assert!(history.contains("resume from suspend"), "{history}");
    // Resuming the same image again while the domain lives: duplicate uuid.
    assert!(matches!(
        s.resume_from(&path, &config),
        Err(BackendError::DuplicateDomain { .. })
    ));
    // A resume that does not fit in memory.
    s.destroy(new).unwrap();
    let tiny = SimulatorBackend::new(SimConfig::small_host().with_memory(1100 * MIB, 1024 * MIB));
    assert!(matches!(
        tiny.resume_from(&path, &config),
        Err(BackendError::NotEnoughMemory { needed, .. }) if needed == 256 * MIB
    ));
    // A corrupted image.
    std::fs::write(&path, b"XAPIDSIM-SUSPEND 1 0 3\n{}x").unwrap();
    assert!(matches!(
        s.resume_from(&path, &config),
        Err(BackendError::InvalidImage { .. })
    ));
}

#[test]
fn suspend_requires_a_running_guest() {
    let s = sim();
    let dir = tempfile::tempdir().unwrap();
    let d = start(&s, "p", 64);
    s.pause(d).unwrap();
    assert!(matches!(
        s.suspend_to(d, &dir.path().join("x")),
        Err(BackendError::InvalidState { .. })
    ));
    // Already suspended by a clean request: suspend_to just saves.
    s.unpause(d).unwrap();
    s.shutdown(d, ShutdownReason::Suspend).unwrap();
    assert_eq!(
        s.domain_info(d).unwrap().state,
        DomainState::Shutdown(ShutdownCode::Suspend)
    );
    s.suspend_to(d, &dir.path().join("y")).unwrap();
    assert!(dir.path().join("y").exists());
}

#[test]
fn devices_validate_and_conflict() {
    let s = sim();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::write(&disk, b"").unwrap();
    let a = start(&s, "a", 64);
    let b = start(&s, "b", 64);
    let rw = BlockDevice {
        devid: 0,
        backing: Some(disk.clone()),
        mode: BlockMode::ReadWrite,
        cd: false,
    };
    let ro = BlockDevice {
        mode: BlockMode::ReadOnly,
        ..rw.clone()
    };
    // Missing backing.
    let missing = BlockDevice {
        backing: Some(dir.path().join("nope")),
        ..rw.clone()
    };
    assert_eq!(s.plug_block(a, &missing).unwrap_err().errno(), Some(Errno::ENOENT));
    // Read-only sharing is fine; read-write is exclusive.
    s.plug_block(a, &ro).unwrap();
    s.plug_block(b, &ro).unwrap();
    assert!(matches!(
        s.plug_block(b, &BlockDevice { devid: 1, ..rw.clone() }),
        Err(BackendError::DeviceBusy { .. })
    ));
    // Dom0 is off limits.
    assert!(matches!(
        s.plug_block(0, &ro),
        Err(BackendError::InvalidArgument { .. })
    ));
    // A guest that will not let go.
    s.set_guest_behaviour(
        a,
        GuestBehaviour {
            releases_devices: false,
            ..GuestBehaviour::default()
        },
    )
    .unwrap();
    assert!(matches!(
        s.unplug_block(a, 0, UnplugMode::Clean),
        Err(BackendError::DeviceBusy { .. })
    ));
    s.unplug_block(a, 0, UnplugMode::Force).unwrap();
    // Bad NICs.
    let nic = NetDevice {
        devid: 0,
        mac: "01:00:5e:00:00:01".parse().unwrap(),
        mtu: 1500,
        bridge: "xenbr0".into(),
    };
    assert!(s.plug_net(a, &nic).is_err(), "multicast MAC");
    let nic = NetDevice {
        mac: MacAddr::random_local(),
        mtu: 10,
        ..nic
    };
    assert!(s.plug_net(a, &nic).is_err(), "tiny MTU");
    // Destroy reports every device gone.
    let rx = s.subscribe().unwrap();
    s.destroy(b).unwrap();
    assert_eq!(
        rx.recv_timeout(T).unwrap(),
        BackendEvent::DeviceChanged {
            domid: b,
            kind: DeviceKind::Block,
            devid: 0
        }
    );
    assert_eq!(rx.recv_timeout(T).unwrap(), BackendEvent::DomainChanged(b));
}

#[test]
fn dom0_cannot_be_touched() {
    let s = sim();
    for r in [
        s.destroy(0),
        s.pause(0),
        s.unpause(0),
        s.build(0),
        s.shutdown(0, ShutdownReason::PowerOff),
        s.set_vcpus(0, 1),
        s.set_memory_target(0, MIB),
    ] {
        assert!(matches!(r, Err(BackendError::InvalidArgument { .. })), "{r:?}");
    }
    assert_eq!(s.domain_info(0).unwrap().state, DomainState::Running);
}

#[test]
fn destroy_during_delayed_shutdown_is_harmless() {
    let s = sim();
    let d = start(&s, "racy", 64);
    s.set_guest_behaviour(
        d,
        GuestBehaviour {
            shutdown_delay: Duration::from_millis(30),
            ..GuestBehaviour::default()
        },
    )
    .unwrap();
    s.shutdown(d, ShutdownReason::PowerOff).unwrap();
    s.destroy(d).unwrap();
    std::thread::sleep(Duration::from_millis(60));
    assert!(s.domain_info(d).is_err());
    assert_eq!(s.list_domains().unwrap().len(), 1);
}

#[test]
fn dropping_the_simulator_hangs_up_consoles() {
    let s = sim();
    let d = start(&s, "orphan", 64);
    let mut con = s.console_stream(d).unwrap();
    con.read_until_contains("# ", T).unwrap();
    drop(s);
    let (_, _) = con.read_until_contains("\u{0}", T).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(std::io::Read::read(&mut con, &mut buf).unwrap(), 0);
}

#[test]
fn faults_read_from_the_command_line_form() {
    use crate::hypervisor::{Errno, Fault, Op};
    assert_eq!(
        "resume_from:EIO:1".parse::<Fault>().unwrap(),
        Fault::FailNext {
            op: Op::ResumeFrom,
            count: 1,
            errno: Errno::EIO
        }
    );
    assert_eq!(
        "create_domain:ENOMEM".parse::<Fault>().unwrap(),
        Fault::FailAlways {
            op: Op::CreateDomain,
            errno: Errno::ENOMEM
        }
    );
    for bad in [
        "",
        "resume_from",
        "nope:EIO",
        "resume_from:EWHAT",
        "resume_from:EIO:0",
        "resume_from:EIO:x",
        "a:b:c:d",
    ] {
        assert!(bad.parse::<Fault>().is_err(), "{bad}");
    }
}
