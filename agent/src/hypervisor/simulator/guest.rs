//! What the simulated guest OS prints on its console.

use std::time::Duration;

use crate::hypervisor::types::{vbd_name, BlockDevice, BlockMode, DomId, DomainConfig, NetDevice, ShutdownCode};

/// Facts the boot banner mentions.
pub(super) struct BootFacts<'a> {
    pub domid: DomId,
    pub config: &'a DomainConfig,
    /// The kernel command line (the config's, or what the bootloader found).
    pub cmdline: &'a str,
    /// What the bootloader printed, for a guest booted through one.
    pub loader_banner: Option<&'a str>,
    pub memory_target: u64,
    pub vcpus_online: u32,
    pub hypervisor: &'a str,
    pub blocks: Vec<&'a BlockDevice>,
    pub nets: Vec<&'a NetDevice>,
}

/// A kernel-log timestamp, `[    1.234567]`.
pub(super) fn stamp(t: Duration) -> String {
    format!("[{:5}.{:06}]", t.as_secs(), t.subsec_micros())
}

/// The shell prompt of the guest called `name`.
pub(super) fn prompt(name: &str) -> String {
    format!("root@{}:~# ", hostname_of(name))
}

/// A hostname derived from a VM name: lower-case letters, digits and dashes.
pub(super) fn hostname_of(name: &str) -> String {
    let h: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let h = h.trim_matches('-').to_string();
    if h.is_empty() {
        "guest".into()
    } else {
        h
    }
}

/// The lines a Linux-like PV guest prints while booting, ending with the
/// prompt (without newline, as a shell would leave it).
pub(super) fn boot_text(f: &BootFacts<'_>) -> String {
    let ms = |n: u64| stamp(Duration::from_millis(n));
    let kib = f.memory_target / 1024;
    let max_kib = f.config.memory_max / 1024;
    let cmdline = f.cmdline;
    let mut out = vec![format!(
        "Xen simulator: booting domain {} ({}) on {}",
        f.domid, f.config.name, f.hypervisor
    )];
    out.extend(f.loader_banner.map(str::to_owned));
    out.extend([
        format!(
            "{} Linux version 6.1.0-xapid-sim (sim@xapid) #1 SMP PREEMPT_DYNAMIC",
            ms(0)
        ),
        format!("{} Command line: {cmdline}", ms(0)),
        format!("{} Hypervisor detected: Xen PV", ms(0)),
        format!("{} DMI not present or invalid.", ms(0)),
        format!(
            "{} Memory: {kib}K/{max_kib}K available ({} MiB) for {}",
            ms(0),
            f.memory_target >> 20,
            f.config.name
        ),
        format!("{} smp: Bringing up secondary CPUs ...", ms(4)),
        format!(
            "{} smp: Brought up 1 node, {} CPU{}",
            ms(8),
            f.vcpus_online,
            if f.vcpus_online == 1 { "" } else { "s" }
        ),
        format!("{} xen:grant_table: Grant tables using version 1 layout", ms(12)),
        format!("{} Initialising Xen virtual ethernet driver.", ms(120)),
    ]);
    let mut t = 130;
    for b in &f.blocks {
        out.push(format!("{} {}", ms(t), block_line(b)));
        t += 2;
    }
    for n in &f.nets {
        out.push(format!("{} {}", ms(t), net_line(n)));
        t += 2;
    }
    out.push(format!("{} Run /sbin/init as init process", ms(900)));
    out.push(String::new());
    out.push(format!("Welcome to {}!", f.config.name));
    out.push(String::new());
    out.push(format!("{} login: root (automatic login)", hostname_of(&f.config.name)));
    let mut text = out.join("\n");
    text.push('\n');
    text.push_str(&prompt(&f.config.name));
    text
}

/// What blkfront says about a new disk.
pub(super) fn block_line(b: &BlockDevice) -> String {
    let what = if b.cd { "cdrom" } else { "disk" };
    let mode = match b.mode {
        BlockMode::ReadOnly => "ro",
        BlockMode::ReadWrite => "rw",
    };
    let media = if b.backing.is_some() {
        "media present"
    } else {
        "no media"
    };
    format!(
        "blkfront: {}: {what} {mode}, {media}; persistent grants: enabled",
        vbd_name(b.devid)
    )
}

/// What netfront says about a new interface.
pub(super) fn net_line(n: &NetDevice) -> String {
    format!(
        "xen_netfront: eth{}: mac {} mtu {} (backend bridge {})",
        n.devid, n.mac, n.mtu, n.bridge
    )
}

/// What the guest prints as it shuts down with `code`.
pub(super) fn shutdown_text(code: ShutdownCode, uptime: Duration) -> String {
    let t = stamp(uptime);
    match code {
        ShutdownCode::PowerOff => format!("\n{t} systemd-shutdown: Syncing filesystems and block devices.\n{t} reboot: Power down\n"),
        ShutdownCode::Reboot => format!("\n{t} systemd-shutdown: Syncing filesystems and block devices.\n{t} reboot: Restarting system\n"),
        ShutdownCode::Suspend => format!("\n{t} Freezing user space processes\n{t} PM: suspend entry (xen)\n"),
        ShutdownCode::Crash => format!("\n{t} Kernel panic - not syncing: sysrq triggered crash\n{t} ---[ end Kernel panic - not syncing: sysrq triggered crash ]---\n"),
        ShutdownCode::Watchdog => format!("\n{t} watchdog: BUG: soft lockup - CPU#0 stuck for 22s!\n"),
    }
}

/// What the guest prints when it runs again after a resume.
pub(super) fn resume_text(name: &str) -> String {
    format!(
        "\n[resume] PM: resume from suspend complete; {name} restored by the xapid simulator\n{}",
        prompt(name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::types::{MacAddr, MIB};

    #[test]
    fn banner_mentions_name_memory_and_devices() {
        let cfg = DomainConfig::pv("web 01", 512 * MIB, 2, "/boot/k");
        let disk = BlockDevice {
            devid: 0,
            backing: Some("/tmp/x".into()),
            mode: BlockMode::ReadWrite,
            cd: false,
        };
        let nic = NetDevice {
            devid: 0,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            mtu: 1500,
            bridge: "xenbr0".into(),
        };
        let text = boot_text(&BootFacts {
            domid: 7,
            config: &cfg,
            cmdline: "console=hvc0 root=/dev/xvda1 ro",
            loader_banner: None,
            memory_target: 512 * MIB,
            vcpus_online: 2,
            hypervisor: "xen-simulator 4.17.0",
            blocks: vec![&disk],
            nets: vec![&nic],
        });
        assert!(text.contains("web 01"));
        assert!(text.contains("Memory: 524288K/524288K available (512 MiB)"));
        assert!(text.contains("xvda: disk rw"));
        assert!(text.contains("eth0: mac 02:00:00:00:00:01"));
        assert!(text.ends_with("root@web-01:~# "));
        assert_eq!(stamp(Duration::from_millis(1500)), "[    1.500000]");
    }
}
