//! The command table, `help`, and the commands written by hand.
//!
//! Each command checks its parameters and carries its work out through XenAPI calls in the
//! client's session. Commands whose call is not carried out by this build answer the call's
//! own error (`NOT_IMPLEMENTED [function]`, …); none pretends to succeed.

use super::args::{bytes_of_string, CommandLine, Params};
use super::printer::{make_list, PrintVal};
use super::records::{self, all_records, by_uuid, fields_of, filter, record, table, Rec, RecordClass};
use super::session::{Ctx, Out, MAX_UPLOAD, STDPARAMS};
use super::CliError;
use agent::schema::{class_ids, ClassId};
use agent::value::{Value, NULL_REF};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;
use xe::protocol::{Command, Message, Response};

/// Help's annotations of a command.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Flags {
    /// Listed by plain `xe help`.
    pub standard: bool,
    /// Takes `vm=` and other VM selectors.
    pub vm_selectors: bool,
    /// Takes `host=` and other host selectors.
    pub host_selectors: bool,
    /// Takes `sr=` and other SR selectors.
    pub sr_selectors: bool,
}

/// What a command does.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    /// `<class>-list`.
    List(usize),
    /// `<class>-param-list`.
    ParamList(usize),
    /// `<class>-param-get`.
    ParamGet(usize),
    /// `<class>-param-set`.
    ParamSet(usize),
    /// `<class>-param-add`.
    ParamAdd(usize),
    /// `<class>-param-remove`.
    ParamRemove(usize),
    /// `<class>-param-clear`.
    ParamClear(usize),
    /// A hand-written command.
    Builtin(B),
}

/// The hand-written commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum B {
    VmInstall,
    Console,
    VmStart,
    VmShutdown,
    VmReboot,
    VmSuspend,
    VmResume,
    VmPause,
    VmUnpause,
    VmResetPowerstate,
    VmClone,
    VmCopy,
    VmSnapshot,
    VmCheckpoint,
    SnapshotRevert,
    SnapshotDestroy,
    SnapshotUninstall,
    VmUninstall,
    VmDestroy,
    VmVifList,
    VmDiskList,
    VmCdList,
    VmCdInsert,
    VmCdEject,
    VmExport,
    VmImport,
    VmMigrate,
    VbdCreate,
    VbdDestroy,
    VbdPlug,
    VbdUnplug,
    VbdInsert,
    VbdEject,
    VifCreate,
    VifDestroy,
    VifPlug,
    VifUnplug,
    VdiCreate,
    VdiDestroy,
    VdiResize,
    VdiImport,
    VdiExport,
    SrCreate,
    SrScan,
    SrDestroy,
    SrForget,
    PbdPlug,
    PbdUnplug,
    NetworkCreate,
    NetworkDestroy,
    VlanCreate,
    BondCreate,
    TaskCancel,
    EventWait,
    HostDisable,
    HostEnable,
    HostEvacuate,
    HostReboot,
    HostShutdown,
    HostPowerOn,
    HostSetPowerOnMode,
    PoolJoin,
    PoolEject,
    PoolDesignateNewMaster,
    PoolDumpDatabase,
    PoolRestoreDatabase,
}

/// One command.
#[derive(Debug)]
pub(crate) struct Spec {
    /// Its name.
    pub name: String,
    /// Parameters it needs.
    pub reqd: Vec<String>,
    /// Parameters it takes.
    pub optn: Vec<String>,
    /// What it does.
    pub help: String,
    /// The implementation.
    pub op: Op,
    /// Help's annotations.
    pub flags: Flags,
}

const VM_SEL: Flags = Flags {
    standard: true,
    vm_selectors: true,
    host_selectors: false,
    sr_selectors: false,
};
const STD: Flags = Flags {
    standard: true,
    vm_selectors: false,
    host_selectors: false,
    sr_selectors: false,
};
const PLAIN: Flags = Flags {
    standard: false,
    vm_selectors: false,
    host_selectors: false,
    sr_selectors: false,
};
const HOST_SEL: Flags = Flags {
    standard: false,
    vm_selectors: false,
    host_selectors: true,
    sr_selectors: false,
};

type Row = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    Flags,
    B,
    &'static str,
);

const BUILTINS: &[Row] = &[
    (
        "vm-install",
        &["new-name-label"],
        &["sr-name-label", "sr-uuid", "template", "copy-bios-strings-from"],
        STD,
        B::VmInstall,
        "Install a new VM from a template (template=, a name or a uuid). Its disks are made on the SR named by sr-uuid or sr-name-label, else on the pool's default SR.",
    ),
    (
        "console",
        &[],
        &[],
        Flags {
            standard: false,
            ..VM_SEL
        },
        B::Console,
        "Attach to the selected VM's text console (Ctrl-] leaves it).",
    ),
    ("vm-start", &[], &["force", "on", "paused"], VM_SEL, B::VmStart, "Start the selected VM(s); 'on' names the host to start on."),
    ("vm-shutdown", &[], &["force"], VM_SEL, B::VmShutdown, "Shut the selected VM(s) down; with --force, at once."),
    ("vm-reboot", &[], &["force"], VM_SEL, B::VmReboot, "Reboot the selected VM(s); with --force, at once."),
    ("vm-suspend", &[], &[], VM_SEL, B::VmSuspend, "Suspend the selected VM(s) to disk."),
    ("vm-resume", &[], &["force", "on"], VM_SEL, B::VmResume, "Resume the selected suspended VM(s)."),
    ("vm-pause", &[], &[], VM_SEL, B::VmPause, "Pause the selected running VM(s)."),
    ("vm-unpause", &[], &[], VM_SEL, B::VmUnpause, "Unpause the selected paused VM(s)."),
    (
        "vm-reset-powerstate",
        &[],
        &["force"],
        VM_SEL,
        B::VmResetPowerstate,
        "Mark the selected VM(s) halted in the database only (needs --force).",
    ),
    (
        "vm-clone",
        &["new-name-label"],
        &["new-name-description"],
        VM_SEL,
        B::VmClone,
        "Clone the selected VM (fast, sharing disks where the storage can); prints the new VM's uuid.",
    ),
    (
        "vm-copy",
        &["new-name-label"],
        &["new-name-description", "sr-uuid"],
        VM_SEL,
        B::VmCopy,
        "Copy the selected VM with full copies of its disks (onto sr-uuid if given); prints the new VM's uuid.",
    ),
    (
        "vm-snapshot",
        &["new-name-label"],
        &["new-name-description", "ignore-vdi-uuids"],
        VM_SEL,
        B::VmSnapshot,
        "Snapshot the selected VM's disks; prints the snapshot's uuid.",
    ),
    (
        "vm-checkpoint",
        &["new-name-label"],
        &["new-name-description"],
        VM_SEL,
        B::VmCheckpoint,
        "Snapshot the selected VM's disks and memory; prints the checkpoint's uuid.",
    ),
    ("snapshot-revert", &[], &["uuid", "snapshot-uuid"], STD, B::SnapshotRevert, "Revert a VM to the snapshot named by uuid (or snapshot-uuid)."),
    ("snapshot-destroy", &[], &["uuid", "snapshot-uuid"], PLAIN, B::SnapshotDestroy, "Destroy a snapshot's record (its disks stay)."),
    (
        "snapshot-uninstall",
        &[],
        &["uuid", "snapshot-uuid", "force"],
        STD,
        B::SnapshotUninstall,
        "Destroy a snapshot with the disks it owns; asks for confirmation unless --force.",
    ),
    (
        "vm-uninstall",
        &[],
        &["force"],
        VM_SEL,
        B::VmUninstall,
        "Destroy the selected VM(s), their snapshots and the disks they own; asks for confirmation unless --force.",
    ),
    ("vm-destroy", &["uuid"], &[], PLAIN, B::VmDestroy, "Destroy a VM's record (its disks stay)."),
    ("vm-vif-list", &[], &[], VM_SEL, B::VmVifList, "List the virtual network interfaces of the selected VM(s)."),
    ("vm-disk-list", &[], &["vbd-params", "vdi-params"], VM_SEL, B::VmDiskList, "List the disks of the selected VM(s)."),
    ("vm-cd-list", &[], &["vbd-params", "vdi-params"], VM_SEL, B::VmCdList, "List the CD drives of the selected VM(s)."),
    (
        "vm-cd-insert",
        &["cd-name"],
        &[],
        VM_SEL,
        B::VmCdInsert,
        "Insert the ISO named cd-name into the selected VM's one empty CD drive.",
    ),
    ("vm-cd-eject", &[], &[], VM_SEL, B::VmCdEject, "Eject the disc from the selected VM's one CD drive."),
    (
        "vm-export",
        &["filename"],
        &["preserve-power-state", "compress", "metadata", "excluded-device-types", "include-snapshots"],
        VM_SEL,
        B::VmExport,
        "Export the selected VM to a file.",
    ),
    (
        "vm-import",
        &[],
        &["filename", "preserve", "sr-uuid", "force", "host-username", "host-password", "type", "remote-config", "dry-run", "metadata", "url", "vdi:"],
        STD,
        B::VmImport,
        "Import a VM from a file or a URL.",
    ),
    (
        "vm-migrate",
        &[],
        &["live", "host", "host-uuid", "remote-master", "remote-username", "remote-password", "remote-network", "force", "copy", "compress", "vif:", "vdi:", "image-format:"],
        VM_SEL,
        B::VmMigrate,
        "Migrate the selected VM(s) to another host.",
    ),
    (
        "vbd-create",
        &["vm-uuid", "device"],
        &["vdi-uuid", "bootable", "type", "mode", "unpluggable"],
        PLAIN,
        B::VbdCreate,
        "Create a virtual block device (empty, for a CD drive, when no vdi-uuid is given); type is Disk, CD or Floppy, mode RO or RW.",
    ),
    ("vbd-destroy", &["uuid"], &[], PLAIN, B::VbdDestroy, "Destroy a virtual block device."),
    ("vbd-plug", &["uuid"], &[], PLAIN, B::VbdPlug, "Attach a virtual block device to its running VM."),
    ("vbd-unplug", &["uuid"], &["timeout", "force"], PLAIN, B::VbdUnplug, "Detach a virtual block device from its running VM."),
    ("vbd-insert", &["uuid", "vdi-uuid"], &[], PLAIN, B::VbdInsert, "Insert a disc into an empty CD drive."),
    ("vbd-eject", &["uuid"], &[], PLAIN, B::VbdEject, "Eject the disc from a CD drive."),
    (
        "vif-create",
        &["device", "network-uuid", "vm-uuid"],
        &["mac"],
        PLAIN,
        B::VifCreate,
        "Create a virtual network interface (mac=random picks a locally administered address).",
    ),
    ("vif-destroy", &["uuid"], &[], PLAIN, B::VifDestroy, "Destroy a virtual network interface."),
    ("vif-plug", &["uuid"], &[], PLAIN, B::VifPlug, "Attach a virtual network interface to its running VM."),
    ("vif-unplug", &["uuid"], &["force"], PLAIN, B::VifUnplug, "Detach a virtual network interface from its running VM."),
    (
        "vdi-create",
        &["sr-uuid", "name-label", "virtual-size"],
        &["sm-config:", "sharable", "tags:", "type"],
        PLAIN,
        B::VdiCreate,
        "Create a virtual disk; the size takes a KiB, MiB, GiB or TiB suffix.",
    ),
    ("vdi-destroy", &["uuid"], &[], PLAIN, B::VdiDestroy, "Destroy a virtual disk and its data."),
    ("vdi-resize", &["uuid", "disk-size"], &["online"], PLAIN, B::VdiResize, "Resize a virtual disk."),
    (
        "vdi-import",
        &["uuid", "filename"],
        &["format", "progress"],
        PLAIN,
        B::VdiImport,
        "Write a local file into a virtual disk.",
    ),
    (
        "vdi-export",
        &["uuid", "filename"],
        &["format", "base", "progress"],
        PLAIN,
        B::VdiExport,
        "Read a virtual disk into a local file.",
    ),
    (
        "pool-dump-database",
        &["file-name"],
        &[],
        PLAIN,
        B::PoolDumpDatabase,
        "Download a dump of the pool database.",
    ),
    (
        "pool-restore-database",
        &["file-name"],
        &["dry-run", "force"],
        PLAIN,
        B::PoolRestoreDatabase,
        "Restore a dump of the pool database to the server.",
    ),
    (
        "sr-create",
        &["name-label", "type"],
        &["name-description", "host-uuid", "device-config:", "shared", "physical-size", "content-type", "sm-config:"],
        PLAIN,
        B::SrCreate,
        "Create a storage repository; device-config:<key>-filename=<file> sends a local file's contents as a key's value.",
    ),
    ("sr-scan", &["uuid"], &[], PLAIN, B::SrScan, "Rescan a storage repository for disks."),
    ("sr-destroy", &["uuid"], &[], PLAIN, B::SrDestroy, "Destroy a storage repository and its disks."),
    ("sr-forget", &["uuid"], &[], PLAIN, B::SrForget, "Forget a storage repository, leaving its contents."),
    ("pbd-plug", &["uuid"], &[], PLAIN, B::PbdPlug, "Attach a storage repository to its host."),
    ("pbd-unplug", &["uuid"], &[], PLAIN, B::PbdUnplug, "Detach a storage repository from its host."),
    (
        "network-create",
        &["name-label"],
        &["name-description", "MTU", "bridge", "managed"],
        PLAIN,
        B::NetworkCreate,
        "Create a network.",
    ),
    ("network-destroy", &["uuid"], &[], PLAIN, B::NetworkDestroy, "Destroy a network."),
    ("vlan-create", &["pif-uuid", "vlan", "network-uuid"], &[], PLAIN, B::VlanCreate, "Create a VLAN on a physical interface."),
    ("bond-create", &["network-uuid", "pif-uuids"], &["mac", "mode", "properties:"], PLAIN, B::BondCreate, "Bond physical interfaces."),
    ("task-cancel", &["uuid"], &[], PLAIN, B::TaskCancel, "Ask a running task to stop."),
    (
        "event-wait",
        &["class"],
        &[],
        PLAIN,
        B::EventWait,
        "Wait until an object of the class has the given field values (field=value, or field=/=value for 'not equal').",
    ),
    ("host-disable", &[], &["auto-enable"], HOST_SEL, B::HostDisable, "Stop new VMs from starting on the selected host(s)."),
    ("host-enable", &[], &[], HOST_SEL, B::HostEnable, "Let VMs start on the selected host(s) again."),
    ("host-evacuate", &[], &["network-uuid", "batch-size"], HOST_SEL, B::HostEvacuate, "Migrate every running VM off the selected host."),
    ("host-reboot", &[], &[], HOST_SEL, B::HostReboot, "Reboot the selected host(s): disabled first, with no VM running."),
    ("host-shutdown", &[], &[], HOST_SEL, B::HostShutdown, "Power off the selected host(s): disabled first, with no VM running."),
    ("host-power-on", &[], &[], HOST_SEL, B::HostPowerOn, "Power on the selected host(s) by their power-on mode."),
    (
        "host-set-power-on-mode",
        &["power-on-mode"],
        &["power-on-config:"],
        HOST_SEL,
        B::HostSetPowerOnMode,
        "Set how the selected host(s) are powered on (empty: not at all).",
    ),
    (
        "pool-join",
        &["master-address", "master-username", "master-password"],
        &["force"],
        PLAIN,
        B::PoolJoin,
        "Make this host a member of another pool.",
    ),
    ("pool-eject", &["host-uuid"], &[], PLAIN, B::PoolEject, "Remove a host from the pool."),
    ("pool-designate-new-master", &["host-uuid"], &[], PLAIN, B::PoolDesignateNewMaster, "Make another member the pool's master."),
];

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn table_map() -> &'static BTreeMap<String, Spec> {
    static TABLE: OnceLock<BTreeMap<String, Spec>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = BTreeMap::new();
        for (i, rc) in records::record_classes().iter().enumerate() {
            let plural = format!("{}s", rc.cli);
            let mut add = |suffix: &str, reqd: Vec<String>, optn: Vec<String>, help: String, op: Op, flags: Flags| {
                let name = format!("{}-{suffix}", rc.cli);
                t.insert(
                    name.clone(),
                    Spec {
                        name,
                        reqd,
                        optn,
                        help,
                        op,
                        flags,
                    },
                );
            };
            let std_list = matches!(rc.cli.as_str(), "vm" | "network" | "sr");
            add(
                "list",
                vec![],
                records::list_names(rc.class),
                format!("List the {plural}, keeping those whose fields have the values given (map:key=value for a map's key, set:contains=member for a set)."),
                Op::List(i),
                if std_list { STD } else { PLAIN },
            );
            add(
                "param-list",
                strings(&["uuid"]),
                strings(&["database:"]),
                "List every field of the object with this uuid.".into(),
                Op::ParamList(i),
                PLAIN,
            );
            add(
                "param-get",
                strings(&["uuid", "param-name"]),
                strings(&["param-key", "database:"]),
                "Print one field of an object; param-key picks one key of a map.".into(),
                Op::ParamGet(i),
                PLAIN,
            );
            let settable = records::settable_names(rc.class);
            if !settable.is_empty() {
                add(
                    "param-set",
                    strings(&["uuid"]),
                    settable,
                    "Set fields of an object (field=value; map:key=value sets one key of a map).".into(),
                    Op::ParamSet(i),
                    PLAIN,
                );
            }
            if !records::addable_names(rc.class).is_empty() {
                add(
                    "param-add",
                    strings(&["uuid", "param-name"]),
                    strings(&["param-key"]),
                    "Add to a set (param-key=<member>) or a map (key=value pairs).".into(),
                    Op::ParamAdd(i),
                    PLAIN,
                );
                add(
                    "param-remove",
                    strings(&["uuid", "param-name", "param-key"]),
                    vec![],
                    "Remove a member of a set or a key of a map.".into(),
                    Op::ParamRemove(i),
                    PLAIN,
                );
            }
            let clearable = records::clearable_names(rc.class);
            if !clearable.is_empty() {
                add(
                    "param-clear",
                    strings(&["uuid", "param-name"]),
                    vec![],
                    format!("Empty a field (param-name is one of {}).", clearable.join(",")),
                    Op::ParamClear(i),
                    PLAIN,
                );
            }
        }
        for (name, reqd, optn, flags, b, help) in BUILTINS {
            t.insert(
                (*name).to_owned(),
                Spec {
                    name: (*name).to_owned(),
                    reqd: strings(reqd),
                    optn: strings(optn),
                    help: (*help).to_owned(),
                    op: Op::Builtin(*b),
                    flags: *flags,
                },
            );
        }
        t
    })
}

/// The command of that name.
pub(crate) fn find(name: &str) -> Option<&'static Spec> {
    table_map().get(name)
}

/// Every command, sorted by name.
pub(crate) fn all() -> impl Iterator<Item = &'static Spec> {
    table_map().values()
}

const VM_SELECTORS_INFO: &str = " VMs are selected by the values of their fields: 'uuid=<uuid>' picks one, 'power-state=halted' the halted ones; the pseudo-field 'vm' matches a name-label or a uuid. When several match, '--multiple' must be given to act on all of them. 'xe vm-list params=all' shows the fields. Without selectors, every VM is selected.";
const HOST_SELECTORS_INFO: &str = " Hosts are selected by the values of their fields ('uuid=', 'enabled=true', …); the pseudo-field 'host' matches a hostname, a name-label or a uuid. When several match, '--multiple' must be given. Without selectors, every host is selected.";
const SR_SELECTORS_INFO: &str = " SRs are selected by the values of their fields; the pseudo-field 'sr' matches a name-label or a uuid. When several match, '--multiple' must be given. Without selectors, every SR is selected.";

const USAGE: &str = "Usage:
  xe <command>
    [ -s <server> ]            the host to connect to
    [ -p <port> ]              its port
    [ -u <username> -pw <password> | -pwf <password file> ]
                               who to log in as (a password file holds the
                               user name on its first line, the password on
                               its second)
    [ --nossl ]                plain HTTP instead of HTTPS
    [ --debug ]                show the protocol's messages
    [ --debug-on-fail ]        show them only when the command fails
    [ <other arguments> ... ]  the command's parameters

To get help on a specific command:
  xe help <command>

";

/// `xe help`, `xe help --all`, `xe help <command> …` (`--minimal`: names only).
pub(crate) async fn help(out: &mut Out, cmd: &CommandLine) -> Result<(), CliError> {
    let asked: Vec<&str> = cmd
        .params
        .0
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !["server", "username", "password", "port", "minimal", "all"].contains(k))
        .collect();
    if !asked.is_empty() {
        for name in asked {
            match find(name) {
                Some(spec) => {
                    let mut optn = spec.optn.clone();
                    let mut desc = spec.help.clone();
                    if spec.flags.vm_selectors {
                        optn.push("<vm-selectors>".into());
                        desc.push_str(VM_SELECTORS_INFO);
                    }
                    if spec.flags.sr_selectors {
                        optn.push("<sr-selectors>".into());
                        desc.push_str(SR_SELECTORS_INFO);
                    }
                    if spec.flags.host_selectors {
                        optn.push("<host-selectors>".into());
                        desc.push_str(HOST_SELECTORS_INFO);
                    }
                    let rec = vec![
                        ("command name        ".to_owned(), name.to_owned()),
                        ("reqd params     ".to_owned(), spec.reqd.join(", ")),
                        ("optional params ".to_owned(), optn.join(", ")),
                        ("description     ".to_owned(), desc),
                    ];
                    out.print(PrintVal::Table(vec![rec])).await?;
                }
                None => {
                    out.print(PrintVal::List(vec![format!("Unknown command '{name}'")]))
                        .await?
                }
            }
        }
        return Ok(());
    }
    let all_flag = cmd.params.get("all") == Some("true");
    let names: Vec<String> = all()
        .filter(|s| all_flag || s.flags.standard)
        .map(|s| s.name.clone())
        .collect();
    let minimal = cmd
        .params
        .get("minimal")
        .and_then(super::args::parse_bool)
        .unwrap_or(false);
    if minimal {
        return out.print(PrintVal::List(names)).await;
    }
    if all_flag {
        let (hosts, rest): (Vec<String>, Vec<String>) = names.into_iter().partition(|n| n.starts_with("host-"));
        let (vms, other): (Vec<String>, Vec<String>) = rest.into_iter().partition(|n| n.starts_with("vm-"));
        out.print(PrintVal::List(vec![format!(
            "{USAGE}Full command list\n-----------------\n"
        )]))
        .await?;
        out.print(PrintVal::List(make_list(&hosts))).await?;
        out.print(PrintVal::List(make_list(&[String::new()]))).await?;
        out.print(PrintVal::List(make_list(&vms))).await?;
        out.print(PrintVal::List(make_list(&[String::new()]))).await?;
        out.print(PrintVal::List(make_list(&other))).await
    } else {
        out.print(PrintVal::List(vec![format!(
            "{USAGE}To get a full listing of commands:\n  xe help --all\n\nCommon command list\n-------------------\n"
        )]))
        .await?;
        out.print(PrintVal::List(make_list(&names))).await
    }
}

/// A parameter that names an object (`OpaqueRef:…`) shown as `uuid (name)`, as errors show
/// them; anything else as it is.
pub(crate) async fn ref_convert(ctx: &Ctx<'_>, p: &str) -> String {
    if !p.starts_with("OpaqueRef:") {
        return p.to_owned();
    }
    for class in ClassId::all() {
        if let Some(uuid) = ctx.agent.uuid_of(class, p) {
            if class.has_field("name_label") {
                if let Ok(v) = ctx
                    .call(&format!("{}.get_name_label", class.name()), vec![json!(p)])
                    .await
                {
                    return format!("{uuid} ({})", v.as_str().unwrap_or_default());
                }
            }
            return uuid;
        }
    }
    p.to_owned()
}

/// Runs a command.
pub(crate) async fn run(ctx: &mut Ctx<'_>, spec: &Spec) -> Result<(), CliError> {
    let rcs = records::record_classes();
    let rc = |i: usize| rcs.get(i).ok_or_else(|| CliError::fail("no such record class"));
    match spec.op {
        Op::List(i) => records::list(ctx, rc(i)?).await,
        Op::ParamList(i) => records::param_list(ctx, rc(i)?).await,
        Op::ParamGet(i) => records::param_get(ctx, rc(i)?).await,
        Op::ParamSet(i) => records::param_set(ctx, rc(i)?).await,
        Op::ParamAdd(i) => records::param_add(ctx, rc(i)?).await,
        Op::ParamRemove(i) => records::param_remove(ctx, rc(i)?).await,
        Op::ParamClear(i) => records::param_clear(ctx, rc(i)?).await,
        Op::Builtin(b) => builtin(ctx, b).await,
    }
}

fn rc_named(name: &str) -> Result<&'static RecordClass, CliError> {
    records::by_cli_name(name).ok_or_else(|| CliError::fail(format!("no record class {name}")))
}

/// The string a call returned.
fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

async fn get_ref(ctx: &Ctx<'_>, class: ClassId, uuid_param: &str) -> Result<String, CliError> {
    let uuid = ctx.params.req(uuid_param)?.to_owned();
    by_uuid(ctx, class, &uuid).await
}

async fn uuid_of(ctx: &Ctx<'_>, class: ClassId, r: &str) -> Result<String, CliError> {
    Ok(text(
        &ctx.call(&format!("{}.get_uuid", class.name()), vec![json!(r)]).await?,
    ))
}

/// How a failed operation on one of several objects is reported.
fn describe(e: &CliError) -> String {
    match e {
        CliError::Api { code, params } => format!("{code}: [ {} ]", params.join("; ")),
        CliError::Failure(m) => m.clone(),
        other => format!("{other:?}"),
    }
}

/// The outcome of an operation run on each selected object: the results, or every failure
/// (by uuid) when there were several objects, or the one failure when there was one.
fn gather<T>(results: Vec<(String, Result<T, CliError>)>) -> Result<Vec<T>, CliError> {
    let single = results.len() == 1;
    let mut ok = Vec::new();
    let mut fails = Vec::new();
    for (uuid, r) in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) if single => return Err(e),
            Err(e) => fails.push((uuid, describe(&e))),
        }
    }
    if fails.is_empty() {
        Ok(ok)
    } else {
        // The reference reports the last failure first.
        fails.reverse();
        Err(CliError::Multiple(fails))
    }
}

/// Parameters that are no selector: what every command takes and what this one does.
fn selector_filters(params: &Params, ignore: &[&str]) -> Vec<(String, String)> {
    params
        .0
        .iter()
        .filter(|(k, _)| {
            let stem = k.split(':').next().unwrap_or_default();
            !STDPARAMS.contains(&stem) && !ignore.contains(&stem)
        })
        .cloned()
        .collect()
}

/// Objects of `class` picked by selectors: `<pseudo>=<name or uuid>` and field filters.
async fn select(
    ctx: &Ctx<'_>,
    class: ClassId,
    pseudo: &str,
    name_fields: &[&str],
    implied: Vec<(String, String)>,
    ignore: &[&str],
) -> Result<Vec<Rec>, CliError> {
    let fields = fields_of(class);
    let mut recs = all_records(ctx, class).await?;
    if let Some(v) = ctx.params.get(pseudo) {
        recs.retain(|r| r.uuid() == v || name_fields.iter().any(|f| r.str(f) == v));
    }
    let mut filters = implied;
    filters.extend(
        selector_filters(&ctx.params, ignore)
            .into_iter()
            .filter(|(k, _)| k != pseudo),
    );
    match filter(ctx, fields, recs, &filters).await {
        Err(CliError::MissingParameter(name)) if class == class_ids::VM => Err(CliError::fail(format!(
            "Parameter '{name}' is not a field of the VM class. Failed to select VM for operation."
        ))),
        other => other,
    }
}

struct VmSel {
    control: bool,
    templates: bool,
    multiple: bool,
}

const VMS: VmSel = VmSel {
    control: false,
    templates: false,
    multiple: true,
};

/// The VMs an operation acts on: none is an error, several need `--multiple` (and an
/// operation that allows several).
async fn vms(ctx: &Ctx<'_>, sel: VmSel, ignore: &[&str]) -> Result<Vec<Rec>, CliError> {
    let mut implied = Vec::new();
    if !sel.control {
        implied.push(("is-control-domain".to_owned(), "false".to_owned()));
    }
    if !sel.templates {
        implied.push(("is-a-template".to_owned(), "false".to_owned()));
    }
    let found = select(ctx, class_ids::VM, "vm", &["name_label"], implied, ignore).await?;
    match found.len() {
        0 => Err(CliError::fail("No matching VMs found")),
        1 => Ok(found),
        _ if sel.multiple && ctx.params.bool("multiple", false)? => Ok(found),
        _ if !sel.multiple => Err(CliError::fail(
            "Multiple matches VMs found. Operation can only be performed on one VM at a time",
        )),
        _ => Err(CliError::fail(
            "Multiple matches VMs found. --multiple required to complete the operation",
        )),
    }
}

async fn hosts(ctx: &Ctx<'_>, multiple: bool, ignore: &[&str]) -> Result<Vec<Rec>, CliError> {
    let found = select(
        ctx,
        class_ids::host,
        "host",
        &["hostname", "name_label"],
        vec![],
        ignore,
    )
    .await?;
    match found.len() {
        0 => Err(CliError::fail("No matching hosts found")),
        1 => Ok(found),
        _ if multiple && ctx.params.bool("multiple", false)? => Ok(found),
        _ if !multiple => Err(CliError::fail(
            "Multiple matching hosts found. Operation can only be performed on one host at a time",
        )),
        _ => Err(CliError::fail(
            "Multiple matching hosts found. --multiple required to complete the operation",
        )),
    }
}

/// `method(host, args…)` on each selected host (`--multiple` for more than one), as the
/// reference's host commands do; `ignore` are the command's own parameters.
async fn each_host(ctx: &Ctx<'_>, method: &str, args: Vec<serde_json::Value>, ignore: &[&str]) -> Result<(), CliError> {
    let targets = hosts(ctx, true, ignore).await?;
    let mut results = Vec::new();
    for h in &targets {
        let mut params = vec![json!(h.reference)];
        params.extend(args.iter().cloned());
        let r = ctx.call(method, params).await.map(|_| ());
        results.push((h.uuid(), r));
    }
    gather(results).map(|_| ())
}

/// Polls a task until it leaves `pending`; its status.
async fn task_status(ctx: &Ctx<'_>, task: &str, limit: Option<Duration>) -> Result<String, CliError> {
    let start = std::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        let s = text(&ctx.call("task.get_status", vec![json!(task)]).await?);
        if s != "pending" {
            return Ok(s);
        }
        if limit.is_some_and(|l| start.elapsed() > l) {
            return Ok(s);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A finished task's result, or its error.
async fn task_outcome(ctx: &Ctx<'_>, task: &str, status: &str) -> Result<String, CliError> {
    match status {
        "success" => Ok(text(&ctx.call("task.get_result", vec![json!(task)]).await?)),
        "failure" => {
            let info = ctx.call("task.get_error_info", vec![json!(task)]).await?;
            let mut items = info.as_set().iter().map(text);
            match items.next() {
                Some(code) => Err(CliError::Api {
                    code,
                    params: items.collect(),
                }),
                None => Err(CliError::fail(format!("Task failed but no error recorded: {task}"))),
            }
        }
        "cancelling" | "cancelled" => Err(CliError::Api {
            code: "TASK_CANCELLED".into(),
            params: vec![task.to_owned()],
        }),
        _ => Err(CliError::fail("wait_for_task_completion failed; task is still pending")),
    }
}

/// Waits for an `Async.` call's task, then destroys it.
async fn waiter(ctx: &Ctx<'_>, task: Value) -> Result<String, CliError> {
    let task = text(&task);
    let r = match task_status(ctx, &task, None).await {
        Ok(s) => task_outcome(ctx, &task, &s).await,
        Err(e) => Err(e),
    };
    let _ = ctx.call("task.destroy", vec![json!(task)]).await;
    r
}

/// Sends a data-path transfer to the client and follows its task: the task is created
/// here, named in the URL, and finished by the data path; the client says `OK` or `Failed`.
async fn track_http(ctx: &mut Ctx<'_>, label: &str, make: impl FnOnce(&str) -> Command) -> Result<String, CliError> {
    let task = text(&ctx.call("task.create", vec![json!(label), json!("")]).await?);
    let r = async {
        ctx.out.conn.send(make(&task)).await?;
        let answer = loop {
            match ctx.out.conn.recv().await? {
                Message::Response(Response::Wait) => continue,
                Message::Response(r) => break r,
                other => return Err(CliError::Protocol(format!("unexpected {other} during a transfer"))),
            }
        };
        if answer == Response::Ok {
            let s = task_status(ctx, &task, Some(Duration::from_secs(600))).await?;
            task_outcome(ctx, &task, &s).await
        } else {
            // The data path may have recorded why; give it a moment.
            let s = task_status(ctx, &task, Some(Duration::from_secs(1))).await?;
            match s.as_str() {
                "failure" | "cancelling" | "cancelled" => task_outcome(ctx, &task, &s).await,
                _ => Err(CliError::Api {
                    code: "CLIENT_ERROR".into(),
                    params: vec![],
                }),
            }
        }
    }
    .await;
    let _ = ctx.call("task.destroy", vec![json!(task)]).await;
    r
}

/// The references named in a task's result (an XML-RPC value as text).
fn refs_in(result: &str) -> Vec<String> {
    result
        .split("OpaqueRef:")
        .skip(1)
        .map(|rest| {
            let end = rest
                .find(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
                .unwrap_or(rest.len());
            format!("OpaqueRef:{}", &rest[..end])
        })
        .collect()
}

/// Asks the client for a local file's contents; `None` when it could not send it.
async fn load_file(ctx: &mut Ctx<'_>, name: &str) -> Result<Option<Vec<u8>>, CliError> {
    ctx.out.conn.send(Command::Load(name.to_owned())).await?;
    match ctx.out.conn.recv().await? {
        Message::Response(Response::Ok) => Ok(Some(ctx.out.conn.read_chunks(MAX_UPLOAD).await?)),
        Message::Response(Response::Failed) => Ok(None),
        _ => Err(CliError::fail("Thin CLI protocol error")),
    }
}

/// Asks the user to type `yes`.
async fn user_says_yes(ctx: &mut Ctx<'_>) -> Result<bool, CliError> {
    ctx.out
        .conn
        .send(Command::Print("Type 'yes' to continue".into()))
        .await?;
    ctx.out.conn.send(Command::Prompt).await?;
    let answer = String::from_utf8_lossy(&ctx.out.conn.read_chunks(4096).await?).into_owned();
    let yes = answer.trim().eq_ignore_ascii_case("yes");
    if !yes {
        ctx.out
            .conn
            .send(Command::Print(format!("Aborted (you typed: '{answer}')")))
            .await?;
    }
    Ok(yes)
}

fn uuid_param_of_snapshot(params: &Params) -> Result<String, CliError> {
    params
        .get("snapshot-uuid")
        .or_else(|| params.get("uuid"))
        .map(str::to_owned)
        .ok_or_else(|| CliError::fail("Required parameter not found: snapshot-uuid or uuid."))
}

async fn snapshot_ref(ctx: &Ctx<'_>) -> Result<String, CliError> {
    let uuid = uuid_param_of_snapshot(&ctx.params)?;
    let r = by_uuid(ctx, class_ids::VM, &uuid).await?;
    let is = ctx.call("VM.get_is_a_snapshot", vec![json!(r)]).await?;
    if is.as_bool() != Some(true) {
        return Err(CliError::fail(format!(
            "This operation can only be performed on a VM snapshot. {uuid} is not a VM snapshot."
        )));
    }
    Ok(r)
}

async fn print_uuids(ctx: &mut Ctx<'_>, class: ClassId, refs: &[String]) -> Result<(), CliError> {
    let mut uuids = Vec::with_capacity(refs.len());
    for r in refs {
        uuids.push(uuid_of(ctx, class, r).await?);
    }
    ctx.print(PrintVal::List(uuids)).await
}

/// Runs `method(vm, extra…)` (an `Async.` method waits for its task) on each selected VM.
async fn each_vm(
    ctx: &mut Ctx<'_>,
    sel: VmSel,
    ignore: &[&str],
    method: &str,
    extra: Vec<Json>,
) -> Result<(), CliError> {
    let targets = vms(ctx, sel, ignore).await?;
    let mut results = Vec::with_capacity(targets.len());
    for vm in &targets {
        let mut args = vec![json!(vm.reference)];
        args.extend(extra.iter().cloned());
        let r = match ctx.call(method, args).await {
            Ok(v) if method.starts_with("Async.") => waiter(ctx, v).await.map(|_| ()),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        results.push((vm.uuid(), r));
    }
    gather(results).map(|_| ())
}

async fn host_by_name_or_id(ctx: &Ctx<'_>, v: &str) -> Result<String, CliError> {
    let all = all_records(ctx, class_ids::host).await?;
    all.into_iter()
        .find(|h| h.uuid() == v || h.str("name_label") == v || h.str("hostname") == v)
        .map(|h| h.reference)
        .ok_or_else(|| CliError::fail(format!("Host {v} not found")))
}

/// Clones, copies, snapshots or checkpoints the selected VM; prints the new uuids.
async fn clone_like(ctx: &mut Ctx<'_>, method: &str, templates: bool, extra: Vec<Json>) -> Result<(), CliError> {
    let new_name = ctx.params.req("new-name-label")?.to_owned();
    let desc = ctx.params.get("new-name-description").map(str::to_owned);
    let sel = VmSel {
        control: false,
        templates,
        multiple: method != "VM.copy",
    };
    let targets = vms(
        ctx,
        sel,
        &["new-name-label", "new-name-description", "ignore-vdi-uuids", "sr-uuid"],
    )
    .await?;
    let mut results = Vec::new();
    for vm in &targets {
        let mut args = vec![json!(vm.reference), json!(new_name)];
        args.extend(extra.iter().cloned());
        let r = ctx.call(method, args).await.map(|v| text(&v));
        results.push((vm.uuid(), r));
    }
    let new = gather(results)?;
    if let (Some(d), Some(first)) = (desc, new.first()) {
        ctx.call("VM.set_name_description", vec![json!(first), json!(d)])
            .await?;
    }
    print_uuids(ctx, class_ids::VM, &new).await
}

/// The pool's default SR's uuid, if it has one.
async fn default_sr_uuid(ctx: &Ctx<'_>) -> Option<String> {
    let pools = ctx.call("pool.get_all", vec![]).await.ok()?;
    let pool = pools.as_set().first().map(text)?;
    let sr = text(&ctx.call("pool.get_default_SR", vec![json!(pool)]).await.ok()?);
    uuid_of(ctx, class_ids::SR, &sr).await.ok()
}

/// Whether the template's recommendations recommend a field (`<restriction field="…"
/// value="true"/>`).
fn is_recommended(xml: &str, field: &str) -> bool {
    xml.split("<restriction").skip(1).any(|el| {
        let el = el.split('>').next().unwrap_or_default();
        el.contains(&format!("field=\"{field}\"")) && el.contains("value=\"true\"")
    })
}

/// The provisioning XML with every disk's `sr` attribute set to `sr`.
fn rewrite_disks(xml: &str, sr: &str) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(i) = rest.find("<disk") {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail.find('>').map_or(tail.len(), |e| e + 1);
        let el = &tail[..end];
        let mut new_el = String::with_capacity(el.len());
        match el.find(" sr=\"") {
            Some(a) => {
                let vstart = a + " sr=\"".len();
                let vend = el[vstart..].find('"').map_or(el.len(), |e| vstart + e);
                new_el.push_str(&el[..vstart]);
                new_el.push_str(sr);
                new_el.push_str(&el[vend..]);
            }
            None => new_el.push_str(el),
        }
        out.push_str(&new_el);
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The one template with this name.
async fn template_by_name(ctx: &Ctx<'_>, name: &str) -> Result<String, CliError> {
    let all = all_records(ctx, class_ids::VM).await?;
    let found: Vec<Rec> = all
        .into_iter()
        .filter(|r| {
            r.get("is_a_template").as_bool() == Some(true)
                && r.get("is_control_domain").as_bool() == Some(false)
                && r.str("name_label") == name
        })
        .collect();
    match found.as_slice() {
        [] => Err(CliError::fail("No templates matched")),
        [one] => Ok(one.reference.clone()),
        _ => Err(CliError::fail("More than one matching template found")),
    }
}

async fn vm_install(ctx: &mut Ctx<'_>) -> Result<(), CliError> {
    let template = if let Some(u) = ctx.params.get("template-uuid") {
        by_uuid(ctx, class_ids::VM, u)
            .await
            .map_err(|_| CliError::fail("Cannot find template"))?
    } else {
        let name = ctx
            .params
            .get("template-name-label")
            .or_else(|| ctx.params.get("template-name"))
            .map(str::to_owned);
        match (name, ctx.params.get("template").map(str::to_owned)) {
            (Some(n), _) => template_by_name(ctx, &n).await?,
            (None, Some(t)) => match by_uuid(ctx, class_ids::VM, &t).await {
                Ok(r) => r,
                Err(_) => template_by_name(ctx, &t).await?,
            },
            (None, None) => {
                return Err(CliError::fail(
                    "Template must be specified by parameter 'template-uuid', 'template-name', 'template-name-label' or 'template'",
                ))
            }
        }
    };
    let t = record(ctx, class_ids::VM, &template).await?;
    if t.get("is_a_template").as_bool() != Some(true) {
        return Err(CliError::fail("Can only install from templates"));
    }
    let new_name = ctx.params.req("new-name-label")?.to_owned();
    let sr_given = ctx.params.has("sr-name-label") || ctx.params.has("sr-uuid");
    // An SR for the new disks: none from a snapshot (each disk goes where its snapshot is).
    let mut sr: Option<String> = None;
    if t.get("is_a_snapshot").as_bool() == Some(true) {
        if sr_given {
            return Err(CliError::fail("Do not use the sr-name-label or sr-uuid argument when installing from a snapshot. By default, it will install each new disk on the same SR as the corresponding snapshot disks."));
        }
        sr = Some(NULL_REF.to_owned());
    } else if let Some(u) = ctx.params.get("sr-uuid") {
        sr = Some(by_uuid(ctx, class_ids::SR, u).await?);
    }
    if let Some(name) = ctx.params.get("sr-name-label") {
        let named = ctx.call("SR.get_by_name_label", vec![json!(name)]).await?;
        let named: Vec<String> = named.as_set().iter().map(text).collect();
        sr = match (named.as_slice(), sr) {
            ([], _) => return Err(CliError::fail("No SR with that name-label found")),
            (list, Some(s)) if list.contains(&s) => Some(s),
            (_, Some(_)) => {
                return Err(CliError::fail(
                    "SR specified via sr-uuid doesn't have the name specified via sr-name-label",
                ))
            }
            ([one], None) => Some(one.clone()),
            (_, None) => return Err(CliError::fail("Multiple SRs with that name-label found")),
        };
    }
    let given_sr = sr.clone().filter(|s| s != NULL_REF);
    let suspend_sr = match &given_sr {
        Some(s) => s.clone(),
        None => t.get("suspend_SR").as_str().unwrap_or(NULL_REF).to_owned(),
    };
    let sr_uuid = match &given_sr {
        Some(s) => uuid_of(ctx, class_ids::SR, s).await?,
        None => match default_sr_uuid(ctx).await {
            Some(u) => u,
            None if t.get("other_config").map_get("disks").is_some() => return Err(CliError::fail(
                "Failed to find a valid default SR for the Pool. Please provide an sr-name-label or sr-uuid parameter.",
            )),
            None => String::new(),
        },
    };
    let new_vm = match &given_sr {
        Some(s) => {
            ctx.call("VM.copy", vec![json!(template), json!(new_name), json!(s)])
                .await?
        }
        None => ctx.call("VM.clone", vec![json!(template), json!(new_name)]).await?,
    };
    let new_vm = text(&new_vm);
    let setup = async {
        let vm = json!(new_vm);
        ctx.call(
            "VM.set_name_description",
            vec![vm.clone(), json!("Installed via xe CLI")],
        )
        .await?;
        ctx.call("VM.set_suspend_SR", vec![vm.clone(), json!(suspend_sr)])
            .await?;
        let other = ctx.call("VM.get_other_config", vec![vm.clone()]).await?;
        if let Some(disks) = other.map_get("disks").and_then(Value::as_str) {
            let rewritten = rewrite_disks(disks, &sr_uuid);
            ctx.call("VM.remove_from_other_config", vec![vm.clone(), json!("disks")])
                .await?;
            ctx.call(
                "VM.add_to_other_config",
                vec![vm.clone(), json!("disks"), json!(rewritten)],
            )
            .await?;
        }
        let recommendations = text(&ctx.call("VM.get_recommendations", vec![json!(template)]).await?);
        let pools = ctx.call("pool.get_all", vec![]).await?;
        let pool = pools.as_set().first().map(text).unwrap_or_default();
        let policy = ctx.call("pool.get_policy_no_vendor_device", vec![json!(pool)]).await?;
        let want = is_recommended(&recommendations, "has-vendor-device") && policy.as_bool() != Some(true);
        ctx.call("VM.set_has_vendor_device", vec![vm.clone(), json!(want)])
            .await?;
        ctx.call("VM.provision", vec![vm.clone()]).await?;
        if let Some(h) = ctx.params.get("copy-bios-strings-from") {
            let host = by_uuid(ctx, class_ids::host, h).await?;
            ctx.call("VM.copy_bios_strings", vec![vm.clone(), json!(host)]).await?;
        }
        uuid_of(ctx, class_ids::VM, &new_vm).await
    }
    .await;
    match setup {
        Ok(uuid) => ctx.print(PrintVal::List(vec![uuid])).await,
        Err(e) => {
            let _ = ctx.call("VM.destroy", vec![json!(new_vm)]).await;
            Err(e)
        }
    }
}

/// What `vm-uninstall` and `snapshot-uninstall` destroy: each VM, the disks its devices own
/// (`owner` in the device's other-config), and its suspend image.
async fn uninstall(ctx: &mut Ctx<'_>, vms: Vec<String>) -> Result<(), CliError> {
    let mut lines = Vec::new();
    let mut plan: Vec<(String, Vec<String>, Option<String>)> = Vec::new();
    for vm in vms {
        let r = record(ctx, class_ids::VM, &vm).await?;
        lines.push(format!("VM : {} ({})", r.uuid(), r.str("name_label")));
        let mut vdis = Vec::new();
        for vbd in r.get("VBDs").as_set().iter().map(text) {
            let Ok(b) = record(ctx, class_ids::VBD, &vbd).await else {
                continue;
            };
            let Some(vdi) = b.get("VDI").as_ref_str().map(str::to_owned) else {
                continue;
            };
            if b.get("other_config").map_get("owner").is_some() && ctx.agent.exists(class_ids::VDI, &vdi) {
                vdis.push(vdi);
            }
        }
        let suspend = r
            .get("suspend_VDI")
            .as_ref_str()
            .filter(|v| ctx.agent.exists(class_ids::VDI, v))
            .map(str::to_owned);
        for vdi in vdis.iter().chain(suspend.iter()) {
            let d = record(ctx, class_ids::VDI, vdi).await?;
            let shared = if d.get("VBDs").as_set().len() > 1 {
                " ** WARNING: disk is shared by other VMs"
            } else {
                ""
            };
            lines.push(format!("VDI: {} ({}) {shared}", d.uuid(), d.str("name_label")));
        }
        plan.push((vm, vdis, suspend));
    }
    ctx.out
        .conn
        .send(Command::Print("The following items are about to be destroyed".into()))
        .await?;
    for l in lines {
        ctx.out.conn.send(Command::Print(l)).await?;
    }
    if !ctx.params.bool("force", false)? && !user_says_yes(ctx).await? {
        return Ok(());
    }
    for (vm, vdis, suspend) in plan {
        let state = text(&ctx.call("VM.get_power_state", vec![json!(vm)]).await?);
        if state != "Halted" {
            ctx.call("VM.hard_shutdown", vec![json!(vm)]).await?;
        }
        ctx.call("VM.destroy", vec![json!(vm)]).await?;
        for vdi in vdis {
            ctx.call("VDI.destroy", vec![json!(vdi)]).await?;
        }
        if let Some(s) = suspend {
            let _ = ctx.call("VDI.destroy", vec![json!(s)]).await;
        }
    }
    ctx.out.conn.send(Command::Print("All objects destroyed".into())).await
}

async fn disk_list(ctx: &mut Ctx<'_>, cds: bool) -> Result<(), CliError> {
    let targets = vms(ctx, VMS, &["vbd-params", "vdi-params"]).await?;
    let vbd_rc = rc_named("vbd")?;
    let vdi_rc = rc_named("vdi")?;
    let vbd_params = params_renamed(&ctx.params, "vbd-params");
    let vdi_params = params_renamed(&ctx.params, "vdi-params");
    let vbd_defaults: &[&str] = if cds {
        &["uuid", "vm-name-label", "userdevice", "empty"]
    } else {
        &["uuid", "vm-name-label", "userdevice"]
    };
    for vm in targets {
        let mut n = 0;
        for vbd in vm.get("VBDs").as_set().iter().map(text) {
            let b = record(ctx, class_ids::VBD, &vbd).await?;
            let ty = b.get("type").as_str().unwrap_or_default().to_owned();
            if (ty == "CD") != cds {
                continue;
            }
            let label = if cds { "CD" } else { "Disk" };
            let rows = table(
                ctx,
                fields_of(vbd_rc.class),
                std::slice::from_ref(&b),
                &vbd_params,
                vbd_defaults,
            )
            .await;
            ctx.print(PrintVal::Msg(format!("{label} {n} VBD:"))).await?;
            ctx.print(PrintVal::Table(rows)).await?;
            if b.get("empty").as_bool() != Some(true) {
                if let Some(vdi) = b.get("VDI").as_ref_str().map(str::to_owned) {
                    let d = record(ctx, class_ids::VDI, &vdi).await?;
                    let rows = table(
                        ctx,
                        fields_of(vdi_rc.class),
                        std::slice::from_ref(&d),
                        &vdi_params,
                        &["uuid", "name-label", "virtual-size", "sr-name-label"],
                    )
                    .await;
                    ctx.print(PrintVal::Msg(format!("{label} {n} VDI:"))).await?;
                    ctx.print(PrintVal::Table(rows)).await?;
                }
            }
            n += 1;
        }
    }
    Ok(())
}

/// The parameters with `<prefix>` read as `params` (vm-disk-list's `vbd-params=`).
fn params_renamed(p: &Params, name: &str) -> Params {
    Params(
        p.0.iter()
            .filter(|(k, _)| k != "params")
            .map(|(k, v)| {
                if k == name {
                    ("params".to_owned(), v.clone())
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect(),
    )
}

/// The VBDs of a VM of type CD, with whether each is empty.
async fn cd_vbds(ctx: &Ctx<'_>, vm: &Rec) -> Result<Vec<(String, bool)>, CliError> {
    let mut out = Vec::new();
    for vbd in vm.get("VBDs").as_set().iter().map(text) {
        let b = record(ctx, class_ids::VBD, &vbd).await?;
        if b.get("type").as_str() == Some("CD") {
            out.push((vbd, b.get("empty").as_bool() == Some(true)));
        }
    }
    Ok(out)
}

async fn event_wait(ctx: &mut Ctx<'_>) -> Result<(), CliError> {
    let cli = ctx.params.req("class")?.to_owned();
    let rc = records::by_cli_name(&cli)
        .ok_or_else(|| CliError::fail(format!("Cli listening for class '{cli}' not currently implemented")))?;
    let conds: Vec<(bool, String, String)> = ctx
        .params
        .0
        .iter()
        .filter(|(k, _)| k != "class" && !STDPARAMS.contains(&k.as_str()))
        .map(|(k, v)| match v.strip_prefix("/=") {
            Some(rest) => (false, k.clone(), rest.to_owned()),
            None => (true, k.clone(), v.clone()),
        })
        .collect();
    let fields = fields_of(rc.class);
    let mut token = String::new();
    loop {
        for r in all_records(ctx, rc.class).await? {
            let mut all_hold = true;
            for (eq, k, v) in &conds {
                let f = fields
                    .iter()
                    .find(|f| f.name == *k)
                    .ok_or_else(|| CliError::fail(format!("key missing: {k}")))?;
                let actual = records::value(ctx, &r, f).await;
                if (actual == *v) != *eq {
                    all_hold = false;
                    break;
                }
            }
            if all_hold {
                return Ok(());
            }
        }
        let classes = json!([rc.class.name().to_ascii_lowercase()]);
        let batch = ctx.call("event.from", vec![classes, json!(token), json!(30.0)]).await?;
        if let Value::Struct(fields) = &batch {
            if let Some((_, t)) = fields.iter().find(|(k, _)| k == "token") {
                token = text(t);
            }
        }
    }
}

/// `console`: the client joins its terminal to the VM's text console through the console
/// data path (the console's location, in this session).
async fn console(ctx: &mut Ctx<'_>) -> Result<(), CliError> {
    let implied = vec![("is-a-template".to_owned(), "false".to_owned())];
    let found = select(ctx, class_ids::VM, "vm", &["name_label"], implied, &[]).await?;
    let vm = match found.as_slice() {
        [one] => one.clone(),
        [] => {
            ctx.out.conn.send(Command::PrintStderr("No VM found\n".into())).await?;
            return Err(CliError::Exit(1));
        }
        _ => {
            ctx.out
                .conn
                .send(Command::PrintStderr(
                    "Multiple VMs found: please narrow your request to one VM.\n".into(),
                ))
                .await?;
            return Err(CliError::Exit(1));
        }
    };
    let mut text_console = None;
    for c in vm.get("consoles").as_set().iter().map(text) {
        if text(&ctx.call("console.get_protocol", vec![json!(c)]).await?) == "vt100" {
            text_console = Some(c);
            break;
        }
    }
    let Some(c) = text_console else {
        ctx.out
            .conn
            .send(Command::PrintStderr("No text console available\n".into()))
            .await?;
        return Err(CliError::Exit(1));
    };
    ctx.out
        .conn
        .send(Command::Print(format!(
            "Connecting to console on VM {}. Press Ctrl + ']' to quit.",
            vm.str("name_label")
        )))
        .await?;
    let location = text(&ctx.call("console.get_location", vec![json!(c)]).await?);
    let uri = format!("{location}&session_id={}", ctx.session);
    ctx.out.conn.send(Command::HttpConnect(uri)).await?;
    loop {
        match ctx.out.conn.recv().await? {
            Message::Response(Response::Wait) => continue,
            Message::Response(Response::Ok) => return Ok(()),
            _ => return Err(CliError::fail("Failure")),
        }
    }
}

async fn builtin(ctx: &mut Ctx<'_>, b: B) -> Result<(), CliError> {
    let p = ctx.params.clone();
    match b {
        B::VmInstall => vm_install(ctx).await,
        B::Console => console(ctx).await,
        B::VmStart => {
            let force = p.bool("force", false)?;
            let paused = p.bool("paused", false)?;
            let sel = VmSel { control: true, ..VMS };
            match p.get("on") {
                Some(h) => {
                    let host = host_by_name_or_id(ctx, h).await?;
                    each_vm(
                        ctx,
                        sel,
                        &["on", "paused", "progress"],
                        "Async.VM.start_on",
                        vec![json!(host), json!(paused), json!(force)],
                    )
                    .await
                }
                None => {
                    each_vm(
                        ctx,
                        sel,
                        &["on", "paused", "progress"],
                        "Async.VM.start",
                        vec![json!(paused), json!(force)],
                    )
                    .await
                }
            }
        }
        B::VmShutdown => {
            let m = if p.bool("force", false)? {
                "Async.VM.hard_shutdown"
            } else {
                "Async.VM.clean_shutdown"
            };
            each_vm(ctx, VMS, &["progress"], m, vec![]).await
        }
        B::VmReboot => {
            let m = if p.bool("force", false)? {
                "VM.hard_reboot"
            } else {
                "VM.clean_reboot"
            };
            each_vm(ctx, VMS, &[], m, vec![]).await
        }
        B::VmSuspend => each_vm(ctx, VMS, &["progress"], "Async.VM.suspend", vec![]).await,
        B::VmResume => {
            let force = p.bool("force", false)?;
            match p.get("on") {
                Some(h) => {
                    let host = host_by_name_or_id(ctx, h).await?;
                    each_vm(
                        ctx,
                        VMS,
                        &["on", "progress"],
                        "Async.VM.resume_on",
                        vec![json!(host), json!(false), json!(force)],
                    )
                    .await
                }
                None => {
                    each_vm(
                        ctx,
                        VMS,
                        &["on", "progress"],
                        "Async.VM.resume",
                        vec![json!(false), json!(force)],
                    )
                    .await
                }
            }
        }
        B::VmPause => each_vm(ctx, VMS, &[], "VM.pause", vec![]).await,
        B::VmUnpause => each_vm(ctx, VMS, &[], "VM.unpause", vec![]).await,
        B::VmResetPowerstate => {
            if !p.bool("force", false)? {
                return Err(CliError::fail(
                    "This operation is dangerous and may cause data loss. This operation must be forced (use --force).",
                ));
            }
            each_vm(ctx, VMS, &[], "VM.power_state_reset", vec![]).await
        }
        B::VmClone => clone_like(ctx, "VM.clone", true, vec![]).await,
        B::VmCopy => {
            let sr = match p.get("sr-uuid") {
                Some(u) => by_uuid(ctx, class_ids::SR, u).await?,
                None => NULL_REF.to_owned(),
            };
            clone_like(ctx, "VM.copy", true, vec![json!(sr)]).await
        }
        B::VmSnapshot => {
            let mut ignore = Vec::new();
            if let Some(list) = p.get("ignore-vdi-uuids") {
                for u in list.split(',') {
                    ignore.push(by_uuid(ctx, class_ids::VDI, u).await?);
                }
            }
            let extra = if ignore.is_empty() { vec![] } else { vec![json!(ignore)] };
            clone_like(ctx, "VM.snapshot", false, extra).await
        }
        B::VmCheckpoint => clone_like(ctx, "VM.checkpoint", false, vec![]).await,
        B::SnapshotRevert => {
            let s = snapshot_ref(ctx).await?;
            ctx.call("VM.revert", vec![json!(s)]).await.map(|_| ())
        }
        B::SnapshotDestroy => {
            let s = snapshot_ref(ctx).await?;
            let state = text(&ctx.call("VM.get_power_state", vec![json!(s)]).await?);
            if state != "Halted" {
                ctx.call("VM.hard_shutdown", vec![json!(s)]).await?;
            }
            ctx.call("VM.destroy", vec![json!(s)]).await.map(|_| ())
        }
        B::SnapshotUninstall => {
            let s = snapshot_ref(ctx).await?;
            uninstall(ctx, vec![s]).await
        }
        B::VmUninstall => {
            let targets = vms(ctx, VMS, &[]).await?;
            let mut all = Vec::new();
            for vm in &targets {
                all.push(vm.reference.clone());
            }
            for vm in &targets {
                all.extend(vm.get("snapshots").as_set().iter().map(text));
            }
            uninstall(ctx, all).await
        }
        B::VmDestroy => {
            let vm = get_ref(ctx, class_ids::VM, "uuid").await?;
            let dom0 = ctx.call("VM.get_is_control_domain", vec![json!(vm)]).await?;
            if dom0.as_bool() == Some(true) {
                return Err(CliError::Api {
                    code: "OPERATION_NOT_ALLOWED".into(),
                    params: vec!["You cannot destroy a control domain via the CLI".into()],
                });
            }
            ctx.call("VM.destroy", vec![json!(vm)]).await.map(|_| ())
        }
        B::VmVifList => {
            let targets = vms(ctx, VmSel { multiple: true, ..VMS }, &["params"]).await?;
            let vif_rc = rc_named("vif")?;
            for vm in targets {
                let mut recs = Vec::new();
                for vif in vm.get("VIFs").as_set().iter().map(text) {
                    recs.push(record(ctx, class_ids::VIF, &vif).await?);
                }
                let rows = table(
                    ctx,
                    fields_of(vif_rc.class),
                    &recs,
                    &p,
                    &[
                        "uuid",
                        "device",
                        "MAC",
                        "network-uuid",
                        "network-name-label",
                        "vm-name-label",
                    ],
                )
                .await;
                ctx.print(PrintVal::Table(rows)).await?;
            }
            Ok(())
        }
        B::VmDiskList => disk_list(ctx, false).await,
        B::VmCdList => disk_list(ctx, true).await,
        B::VmCdInsert => {
            let name = p.req("cd-name")?.to_owned();
            let named = ctx.call("VDI.get_by_name_label", vec![json!(name)]).await?;
            let mut isos = Vec::new();
            for vdi in named.as_set().iter().map(text) {
                let sr = text(&ctx.call("VDI.get_SR", vec![json!(vdi)]).await?);
                if text(&ctx.call("SR.get_content_type", vec![json!(sr)]).await?) == "iso" {
                    isos.push(vdi);
                }
            }
            let vdi = match isos.as_slice() {
                [] => return Err(CliError::fail(format!("CD {name} not found"))),
                [one] => one.clone(),
                _ => {
                    return Err(CliError::fail(format!(
                        "Multiple CDs named {name} found. Please use vbd-insert and specify uuids"
                    )))
                }
            };
            let targets = vms(ctx, VMS, &["cd-name"]).await?;
            let mut results = Vec::new();
            for vm in &targets {
                let r = async {
                    let empty: Vec<String> = cd_vbds(ctx, vm)
                        .await?
                        .into_iter()
                        .filter(|(_, e)| *e)
                        .map(|(v, _)| v)
                        .collect();
                    match empty.as_slice() {
                        [] => Err(CliError::Api {
                            code: "VM_NO_EMPTY_CD_VBD".into(),
                            params: vec![vm.reference.clone()],
                        }),
                        [cd] => ctx.call("VBD.insert", vec![json!(cd), json!(vdi)]).await.map(|_| ()),
                        _ => Err(CliError::fail(
                            "Two or more empty CD devices found. Please use vbd-insert",
                        )),
                    }
                }
                .await;
                results.push((vm.uuid(), r));
            }
            gather(results).map(|_| ())
        }
        B::VmCdEject => {
            let targets = vms(ctx, VMS, &[]).await?;
            let mut results = Vec::new();
            for vm in &targets {
                let r = async {
                    let cds = cd_vbds(ctx, vm).await?;
                    match cds.as_slice() {
                        [] => Err(CliError::fail("No CDs found")),
                        [(cd, _)] => ctx.call("VBD.eject", vec![json!(cd)]).await.map(|_| ()),
                        _ => Err(CliError::fail("Two or more CDs found. Please use vbd-eject")),
                    }
                }
                .await;
                results.push((vm.uuid(), r));
            }
            gather(results).map(|_| ())
        }
        B::VmExport => {
            // The VM is selected as the reference does; its archive comes through the export
            // data path (`/export`, or `/export_metadata` with `metadata=true`), which the
            // client writes to `filename`.
            let targets = vms(
                ctx,
                VMS,
                &[
                    "filename",
                    "metadata",
                    "compress",
                    "preserve-power-state",
                    "include-snapshots",
                    "excluded-device-types",
                ],
            )
            .await?;
            let [vm] = targets.as_slice() else {
                return Err(CliError::fail(format!(
                    "{} VMs matched: vm-export exports one VM",
                    targets.len()
                )));
            };
            let file = p.req("filename")?.to_owned();
            let path = if p.bool("metadata", false)? {
                "/export_metadata"
            } else {
                "/export"
            };
            let compress = p
                .get("compress")
                .map(|c| format!("&use_compression={c}"))
                .unwrap_or_default();
            let preserve = p.bool("preserve-power-state", false)?;
            let snapshots = p
                .get("include-snapshots")
                .map(|v| format!("&export_snapshots={v}"))
                .unwrap_or_default();
            let (session, vm_ref) = (ctx.session.clone(), vm.reference.clone());
            let label = format!("Export of VM: {}", vm.uuid());
            track_http(ctx, &label, |task| {
                Command::HttpGet(
                    file,
                    format!(
                        "{path}?session_id={session}&task_id={task}&ref={vm_ref}{compress}\
                         &preserve_power_state={preserve}{snapshots}"
                    ),
                )
            })
            .await
            .map(|_| ())
        }
        B::VmImport => {
            if p.has("url") && p.has("filename") {
                ctx.out
                    .conn
                    .send(Command::PrintStderr(
                        "Invalid arguments. The 'url' and 'filename' parameters should not both be specified.\n".into(),
                    ))
                    .await?;
                return Err(CliError::Exit(1));
            }
            let sr = match p.get("sr-uuid") {
                Some(u) => by_uuid(ctx, class_ids::SR, u).await?,
                None => {
                    let pools = ctx.call("pool.get_all", vec![]).await?;
                    let pool = pools.as_set().first().map(text).unwrap_or_default();
                    let sr = text(&ctx.call("pool.get_default_SR", vec![json!(pool)]).await?);
                    if !ctx.agent.exists(class_ids::SR, &sr) {
                        return Err(CliError::fail("No SR specified and Pool default SR is null"));
                    }
                    sr
                }
            };
            let full_restore = p.bool("preserve", false)?;
            let force = p.bool("force", false)?;
            let refs: Vec<String> = match (p.get("url"), p.get("filename")) {
                // A URL is fetched by the host (VM.import).
                (Some(url), _) => {
                    let imported = ctx
                        .call(
                            "VM.import",
                            vec![json!(url), json!(sr), json!(full_restore), json!(force)],
                        )
                        .await?;
                    imported.as_set().iter().map(text).collect()
                }
                // A local file is uploaded by the client to /import (HttpPut); the task's
                // result lists the new VMs.
                (None, Some(file)) => {
                    let file = file.to_owned();
                    let session = ctx.session.clone();
                    let result = track_http(ctx, "VM import", |task| {
                        Command::HttpPut(
                            file,
                            format!(
                                "/cli/import?session_id={session}&task_id={task}&sr_id={sr}&restore={full_restore}&force={force}"
                            ),
                        )
                    })
                    .await?;
                    refs_in(&result)
                }
                (None, None) => return Err(CliError::fail("Required parameter not found: filename")),
            };
            print_uuids(ctx, class_ids::VM, &refs).await
        }
        B::VmMigrate => {
            let sxm = p.0.iter().any(|(k, _)| {
                k.starts_with("remote-")
                    || k.starts_with("vif:")
                    || k.starts_with("vdi:")
                    || k.starts_with("image-format:")
            });
            if sxm {
                // Storage migration to another pool goes through VM.migrate_send.
                let live = p.bool("live", false)?;
                let targets = vms(
                    ctx,
                    VMS,
                    &[
                        "live",
                        "remote-master",
                        "remote-username",
                        "remote-password",
                        "remote-network",
                        "copy",
                        "compress",
                        "vif",
                        "vdi",
                        "image-format",
                        "host",
                        "host-uuid",
                        "host-name",
                    ],
                )
                .await?;
                let mut results = Vec::new();
                for vm in &targets {
                    let r = ctx
                        .call(
                            "VM.migrate_send",
                            vec![
                                json!(vm.reference),
                                json!({}),
                                json!(live),
                                json!({}),
                                json!({}),
                                json!({}),
                                json!({}),
                            ],
                        )
                        .await
                        .map(|_| ());
                    results.push((vm.uuid(), r));
                }
                return gather(results).map(|_| ());
            }
            let host = p
                .get("host")
                .or_else(|| p.get("host-uuid"))
                .or_else(|| p.get("host-name"))
                .map(str::to_owned)
                .ok_or_else(|| CliError::fail("No destination host specified"))?;
            let host = host_by_name_or_id(ctx, &host).await?;
            let mut options = serde_json::Map::new();
            for k in ["force", "live", "copy"] {
                options.insert(k.into(), json!(p.bool(k, false)?.to_string()));
            }
            if let Some(c) = p.get("compress") {
                options.insert("compress".into(), json!(c));
            }
            each_vm(
                ctx,
                VmSel { control: true, ..VMS },
                &["host", "host-uuid", "host-name", "live", "compress"],
                "VM.pool_migrate",
                vec![json!(host), Json::Object(options)],
            )
            .await
        }
        B::VbdCreate => {
            let vm = get_ref(ctx, class_ids::VM, "vm-uuid").await?;
            let empty = !p.has("vdi-uuid");
            let vdi = if empty {
                NULL_REF.to_owned()
            } else {
                get_ref(ctx, class_ids::VDI, "vdi-uuid").await?
            };
            let mode = match p.get("mode").map(str::to_ascii_lowercase).as_deref() {
                None => "RW".to_owned(),
                Some("ro") => "RO".to_owned(),
                Some("rw") => "RW".to_owned(),
                Some(x) => return Err(CliError::fail(format!("Unknown mode: {x} (should be \"ro\" or \"rw\""))),
            };
            let ty = match p.get("type").map(str::to_ascii_lowercase).as_deref() {
                None | Some("disk") => "Disk",
                Some("cd") => "CD",
                Some("floppy") => "Floppy",
                Some(x) => {
                    return Err(CliError::fail(format!(
                        "\"Unknown type: {x} (should be \"cd\", \"disk\" or \"floppy\""
                    )))
                }
            };
            if ty == "Disk" && empty {
                return Err(CliError::fail("Empty VBDs can only be made for type=CD"));
            }
            let rec = json!({
                "VM": vm, "VDI": vdi, "userdevice": p.req("device")?, "bootable": p.bool("bootable", false)?,
                "mode": mode, "type": ty, "unpluggable": p.bool("unpluggable", true)?, "empty": empty,
                "qos_algorithm_type": "", "qos_algorithm_params": {}, "other_config": {}, "device": "",
                "currently_attached": false
            });
            let vbd = text(&ctx.call("VBD.create", vec![rec]).await?);
            print_uuids(ctx, class_ids::VBD, &[vbd]).await
        }
        B::VbdDestroy => simple(ctx, class_ids::VBD, "VBD.destroy").await,
        B::VbdPlug => simple(ctx, class_ids::VBD, "VBD.plug").await,
        B::VbdUnplug => {
            let m = if p.bool("force", false)? {
                "VBD.unplug_force"
            } else {
                "VBD.unplug"
            };
            simple(ctx, class_ids::VBD, m).await
        }
        B::VbdInsert => {
            let vbd = get_ref(ctx, class_ids::VBD, "uuid").await?;
            let vdi = get_ref(ctx, class_ids::VDI, "vdi-uuid").await?;
            ctx.call("VBD.insert", vec![json!(vbd), json!(vdi)]).await.map(|_| ())
        }
        B::VbdEject => simple(ctx, class_ids::VBD, "VBD.eject").await,
        B::VifCreate => {
            let vm = get_ref(ctx, class_ids::VM, "vm-uuid").await?;
            let net = get_ref(ctx, class_ids::network, "network-uuid").await?;
            let mac = match p.get("mac").unwrap_or("") {
                "random" => random_mac(),
                m => m.to_owned(),
            };
            let mtu = ctx.call("network.get_MTU", vec![json!(net)]).await?;
            let rec = json!({
                "device": p.req("device")?, "network": net, "VM": vm, "MAC": mac,
                "MTU": mtu.as_int().unwrap_or(1500), "other_config": {}, "currently_attached": false,
                "qos_algorithm_type": "", "qos_algorithm_params": {}, "locking_mode": "network_default",
                "ipv4_allowed": [], "ipv6_allowed": []
            });
            let vif = text(&ctx.call("VIF.create", vec![rec]).await?);
            print_uuids(ctx, class_ids::VIF, &[vif]).await
        }
        B::VifDestroy => simple(ctx, class_ids::VIF, "VIF.destroy").await,
        B::VifPlug => simple(ctx, class_ids::VIF, "VIF.plug").await,
        B::VifUnplug => {
            let m = if p.bool("force", false)? {
                "VIF.unplug_force"
            } else {
                "VIF.unplug"
            };
            simple(ctx, class_ids::VIF, m).await
        }
        B::VdiCreate => {
            let sr = get_ref(ctx, class_ids::SR, "sr-uuid").await?;
            let size = bytes_of_string("virtual-size", p.req("virtual-size")?)?;
            let ty = p.get("type").unwrap_or("user");
            if !["system", "user", "suspend", "crashdump"].contains(&ty) {
                return Err(CliError::fail(format!("Unknown vdi type: {ty}")));
            }
            let sm: serde_json::Map<String, Json> =
                p.map("sm-config").into_iter().map(|(k, v)| (k, json!(v))).collect();
            let tags: Vec<String> = p.map("tags").into_iter().map(|(k, _)| k).collect();
            let rec = json!({
                "name_label": p.req("name-label")?, "name_description": "", "SR": sr,
                "virtual_size": size, "type": ty, "sharable": p.bool("sharable", false)?, "read_only": false,
                "xenstore_data": {}, "other_config": {}, "sm_config": sm, "tags": tags
            });
            let vdi = text(&ctx.call("VDI.create", vec![rec]).await?);
            print_uuids(ctx, class_ids::VDI, &[vdi]).await
        }
        B::VdiDestroy => simple(ctx, class_ids::VDI, "VDI.destroy").await,
        B::VdiResize => {
            let vdi = get_ref(ctx, class_ids::VDI, "uuid").await?;
            let size = bytes_of_string("disk-size", p.req("disk-size")?)?;
            let m = if p.get("online") == Some("true") {
                "VDI.resize_online"
            } else {
                "VDI.resize"
            };
            ctx.call(m, vec![json!(vdi), json!(size)]).await.map(|_| ())
        }
        B::VdiImport => {
            let vdi = get_ref(ctx, class_ids::VDI, "uuid").await?;
            let file = p.req("filename")?.to_owned();
            let format = p.get("format").map(|f| format!("&format={f}")).unwrap_or_default();
            let session = ctx.session.clone();
            track_http(ctx, "VDI import", |task| {
                Command::HttpPut(
                    file,
                    format!("/cli/import_raw_vdi?session_id={session}&task_id={task}&vdi={vdi}{format}"),
                )
            })
            .await
            .map(|_| ())
        }
        B::VdiExport => {
            let vdi = get_ref(ctx, class_ids::VDI, "uuid").await?;
            let file = p.req("filename")?.to_owned();
            let format = p.get("format").map(|f| format!("&format={f}")).unwrap_or_default();
            let base = p.get("base").map(|b| format!("&base={b}")).unwrap_or_default();
            let session = ctx.session.clone();
            track_http(ctx, "VDI export", |task| {
                Command::HttpGet(
                    file,
                    format!("/export_raw_vdi?session_id={session}&task_id={task}&vdi={vdi}{format}{base}"),
                )
            })
            .await
            .map(|_| ())
        }
        B::PoolDumpDatabase => {
            // The dump comes through the data path (`GET /pool/xmldbdump`), written by the
            // client to `file-name`.
            let file = p.req("file-name")?.to_owned();
            let session = ctx.session.clone();
            track_http(ctx, "dump database", |task| {
                Command::HttpGet(file, format!("/pool/xmldbdump?session_id={session}&task_id={task}"))
            })
            .await
            .map(|_| ())
        }
        B::PoolRestoreDatabase => {
            // As the reference: `dry-run` (any value) only checks; a real restore must be
            // forced, since the other hosts are forgotten.
            let dry_run = p.has("dry-run");
            if !dry_run && !p.has("force") {
                return Err(CliError::fail(
                    "This operation will restore the database backup to this host, making it the master. \
                     All slave hosts are assumed dead and they will be forgotten. This operation must be \
                     forced (use --force).",
                ));
            }
            let file = p.req("file-name")?.to_owned();
            let session = ctx.session.clone();
            track_http(ctx, "restore database", |task| {
                Command::HttpPut(
                    file,
                    format!("/cli/pool/xmldbdump?session_id={session}&task_id={task}&dry_run={dry_run}"),
                )
            })
            .await?;
            let said = if dry_run {
                "Dry-run backup restore successful".to_owned()
            } else {
                let secs = agent::host::agent_process::DELAY.as_secs();
                format!("Host will reboot with restored database in {secs}. seconds...")
            };
            ctx.out.conn.send(Command::Print(said)).await
        }
        B::SrCreate => {
            let shared = p.bool("shared", false)?;
            let host = match p.get("host-uuid") {
                Some(u) => by_uuid(ctx, class_ids::host, u).await?,
                None => {
                    let pools = ctx.call("pool.get_all", vec![]).await?;
                    let pool = pools.as_set().first().map(text).unwrap_or_default();
                    let all = ctx.call("host.get_all", vec![]).await?;
                    if all.as_set().len() == 1 || shared {
                        text(&ctx.call("pool.get_master", vec![json!(pool)]).await?)
                    } else {
                        return Err(CliError::fail("Required parameter not found: host-uuid"));
                    }
                }
            };
            let physical_size = p
                .get("physical-size")
                .and_then(|s| bytes_of_string("physical-size", s).ok())
                .unwrap_or(0);
            let mut device_config = serde_json::Map::new();
            for (k, v) in p.map("device-config") {
                match k.strip_suffix("-filename") {
                    Some(key) => match load_file(ctx, &v).await? {
                        Some(bytes) => {
                            device_config.insert(key.to_owned(), json!(String::from_utf8_lossy(&bytes)));
                        }
                        None => {
                            ctx.out
                                .conn
                                .send(Command::PrintStderr(format!("File not found: {v}")))
                                .await?;
                            return Err(CliError::fail("File not found"));
                        }
                    },
                    None => {
                        device_config.insert(k, json!(v));
                    }
                }
            }
            let sm: serde_json::Map<String, Json> =
                p.map("sm-config").into_iter().map(|(k, v)| (k, json!(v))).collect();
            let sr = ctx
                .call(
                    "SR.create",
                    vec![
                        json!(host),
                        Json::Object(device_config),
                        json!(physical_size),
                        json!(p.req("name-label")?),
                        json!(p.get("name-description").unwrap_or("")),
                        json!(p.req("type")?),
                        json!(p.get("content-type").unwrap_or("")),
                        json!(shared),
                        Json::Object(sm),
                    ],
                )
                .await?;
            let uuid = uuid_of(ctx, class_ids::SR, &text(&sr)).await?;
            ctx.out.conn.send(Command::Print(uuid)).await
        }
        B::SrScan => {
            let sr = get_ref(ctx, class_ids::SR, "uuid").await?;
            ctx.call("SR.scan", vec![json!(sr)]).await.map(|_| ())
        }
        B::SrDestroy => {
            let sr = get_ref(ctx, class_ids::SR, "uuid").await?;
            ctx.call("SR.destroy", vec![json!(sr)]).await.map(|_| ())
        }
        B::SrForget => {
            let sr = get_ref(ctx, class_ids::SR, "uuid").await?;
            ctx.call("SR.forget", vec![json!(sr)]).await.map(|_| ())
        }
        B::PbdPlug => simple(ctx, class_ids::PBD, "PBD.plug").await,
        B::PbdUnplug => simple(ctx, class_ids::PBD, "PBD.unplug").await,
        B::NetworkCreate => {
            let mtu = match p.get("MTU") {
                Some(m) => m
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| CliError::fail(format!("Parameter MTU must be an integer, got '{m}'")))?,
                None => 1500,
            };
            let rec = json!({
                "name_label": p.req("name-label")?, "name_description": p.get("name-description").unwrap_or(""),
                "MTU": mtu, "other_config": {}, "bridge": p.get("bridge").unwrap_or(""),
                "managed": p.bool("managed", true)?, "tags": []
            });
            let net = text(&ctx.call("network.create", vec![rec]).await?);
            print_uuids(ctx, class_ids::network, &[net]).await
        }
        B::NetworkDestroy => simple(ctx, class_ids::network, "network.destroy").await,
        B::VlanCreate => {
            let net = get_ref(ctx, class_ids::network, "network-uuid").await?;
            let pif = get_ref(ctx, class_ids::PIF, "pif-uuid").await?;
            let tag = p.req("vlan")?;
            let tag: i64 = tag
                .trim()
                .parse()
                .ok()
                .filter(|t| (0..=4094).contains(t))
                .ok_or_else(|| CliError::Api {
                    code: "VLAN_TAG_INVALID".into(),
                    params: vec![tag.to_owned()],
                })?;
            let vlan = text(
                &ctx.call("VLAN.create", vec![json!(pif), json!(tag), json!(net)])
                    .await?,
            );
            let untagged = text(&ctx.call("VLAN.get_untagged_PIF", vec![json!(vlan)]).await?);
            print_uuids(ctx, class_ids::PIF, &[untagged]).await
        }
        B::BondCreate => {
            let net = get_ref(ctx, class_ids::network, "network-uuid").await?;
            let mut pifs = Vec::new();
            for u in p.req("pif-uuids")?.split(',') {
                pifs.push(by_uuid(ctx, class_ids::PIF, u).await?);
            }
            let mode = p.get("mode").filter(|m| !m.is_empty()).unwrap_or("balance-slb");
            let props: serde_json::Map<String, Json> =
                p.map("properties").into_iter().map(|(k, v)| (k, json!(v))).collect();
            let bond = text(
                &ctx.call(
                    "Bond.create",
                    vec![
                        json!(net),
                        json!(pifs),
                        json!(p.get("mac").unwrap_or("")),
                        json!(mode),
                        Json::Object(props),
                    ],
                )
                .await?,
            );
            print_uuids(ctx, class_ids::Bond, &[bond]).await
        }
        B::TaskCancel => simple(ctx, class_ids::task, "task.cancel").await,
        B::EventWait => event_wait(ctx).await,
        B::HostDisable => {
            let targets = hosts(ctx, true, &["auto-enable"]).await?;
            let mut results = Vec::new();
            for h in &targets {
                let r = ctx.call("host.disable", vec![json!(h.reference)]).await.map(|_| ());
                results.push((h.uuid(), r));
            }
            gather(results).map(|_| ())
        }
        B::HostEnable => {
            let targets = hosts(ctx, true, &[]).await?;
            let mut results = Vec::new();
            for h in &targets {
                let r = async {
                    ctx.call(
                        "host.remove_from_other_config",
                        vec![json!(h.reference), json!("MAINTENANCE_MODE")],
                    )
                    .await?;
                    ctx.call("host.enable", vec![json!(h.reference)]).await.map(|_| ())
                }
                .await;
                results.push((h.uuid(), r));
            }
            gather(results).map(|_| ())
        }
        B::HostEvacuate => {
            let network = match p.get("network-uuid") {
                Some(u) => by_uuid(ctx, class_ids::network, u).await?,
                None => NULL_REF.to_owned(),
            };
            let batch: i64 = match p.get("batch-size") {
                Some(b) => b
                    .trim()
                    .parse()
                    .map_err(|_| CliError::fail(format!("Parameter batch-size must be an integer, got '{b}'")))?,
                None => 0,
            };
            let targets = hosts(ctx, false, &["network-uuid", "batch-size"]).await?;
            let mut results = Vec::new();
            for h in &targets {
                let r = ctx
                    .call("host.evacuate", vec![json!(h.reference), json!(network), json!(batch)])
                    .await
                    .map(|_| ());
                results.push((h.uuid(), r));
            }
            gather(results).map(|_| ())
        }
        B::HostReboot => each_host(ctx, "host.reboot", vec![], &[]).await,
        B::HostShutdown => each_host(ctx, "host.shutdown", vec![], &[]).await,
        B::HostPowerOn => each_host(ctx, "host.power_on", vec![], &[]).await,
        B::HostSetPowerOnMode => {
            let mode = p.get("power-on-mode").unwrap_or_default().to_owned();
            let config: serde_json::Map<String, serde_json::Value> = p
                .map("power-on-config")
                .into_iter()
                .map(|(k, v)| (k, json!(v)))
                .collect();
            each_host(
                ctx,
                "host.set_power_on_mode",
                vec![json!(mode), serde_json::Value::Object(config)],
                &["power-on-mode", "power-on-config"],
            )
            .await
        }
        B::PoolJoin => {
            let m = if p.bool("force", false)? {
                "pool.join_force"
            } else {
                "pool.join"
            };
            ctx.call(
                m,
                vec![
                    json!(p.req("master-address")?),
                    json!(p.req("master-username")?),
                    json!(p.req("master-password")?),
                ],
            )
            .await?;
            ctx.print(PrintVal::List(vec![
                "Host agent will restart and attempt to join pool in 10.000 seconds...".into(),
            ]))
            .await
        }
        B::PoolEject => {
            let host = get_ref(ctx, class_ids::host, "host-uuid").await?;
            ctx.call("pool.eject", vec![json!(host)]).await?;
            ctx.print(PrintVal::List(vec![
                "Specified host will attempt to restart as a master of a new pool in 10.000 seconds...".into(),
            ]))
            .await
        }
        B::PoolDesignateNewMaster => {
            let host = get_ref(ctx, class_ids::host, "host-uuid").await?;
            ctx.call("pool.designate_new_master", vec![json!(host)])
                .await
                .map(|_| ())
        }
    }
}

/// `method(<object named by uuid=>)`.
async fn simple(ctx: &mut Ctx<'_>, class: ClassId, method: &str) -> Result<(), CliError> {
    let r = get_ref(ctx, class, "uuid").await?;
    ctx.call(method, vec![json!(r)]).await.map(|_| ())
}

/// A random locally administered unicast MAC address.
fn random_mac() -> String {
    let mut b: [u8; 6] = rand::random();
    b[0] = (b[0] | 0x02) & !0x01;
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in `documented_commands.txt`.
    fn documented_commands() -> impl Iterator<Item = &'static str> {
        include_str!("documented_commands.txt")
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
    }

    #[test]
    fn the_table_has_the_commands_the_cli_documents() {
        for name in documented_commands() {
            assert!(find(name).is_some(), "{name} missing");
        }
        assert!(find("vm-frobnicate").is_none());
        let start = find("vm-start").unwrap();
        assert!(start.flags.vm_selectors && start.flags.standard);
        assert_eq!(find("vdi-import").unwrap().reqd, vec!["uuid", "filename"]);
        // A class whose fields cannot change has no param-set.
        assert!(find("task-param-set").is_none() || !records::settable_names(class_ids::task).is_empty());
    }

    #[test]
    fn provisioning_xml_gets_the_sr() {
        let x = r#"<provision><disk device="0" size="8" sr="" bootable="true" type="system"/><disk device="1" sr="old"/></provision>"#;
        assert_eq!(
            rewrite_disks(x, "abc"),
            r#"<provision><disk device="0" size="8" sr="abc" bootable="true" type="system"/><disk device="1" sr="abc"/></provision>"#
        );
        assert_eq!(rewrite_disks("<provision/>", "x"), "<provision/>");
    }

    #[test]
    fn recommendations() {
        let x = r#"<restrictions><restriction field="memory-static-max" max="1"/><restriction field="has-vendor-device" value="true"/></restrictions>"#;
        assert!(is_recommended(x, "has-vendor-device"));
        assert!(!is_recommended(x, "memory-static-max"));
        assert!(!is_recommended("", "has-vendor-device"));
    }

    #[test]
    fn failures_on_several_objects_are_gathered() {
        let one: Vec<(String, Result<(), CliError>)> = vec![("a".into(), Err(CliError::fail("x")))];
        assert!(matches!(gather(one), Err(CliError::Failure(m)) if m == "x"));
        let two: Vec<(String, Result<(), CliError>)> = vec![
            ("a".into(), Err(CliError::fail("x"))),
            ("b".into(), Ok(())),
            (
                "c".into(),
                Err(CliError::Api {
                    code: "E".into(),
                    params: vec!["p".into()],
                }),
            ),
        ];
        match gather(two) {
            Err(CliError::Multiple(f)) => {
                assert_eq!(f, vec![("c".into(), "E: [ p ]".into()), ("a".into(), "x".into())])
            }
            other => panic!("{other:?}"),
        }
        let mac = random_mac();
        assert_eq!(mac.len(), 17);
        let first = u8::from_str_radix(&mac[..2], 16).unwrap();
        assert_eq!(first & 0x03, 0x02);
    }
}
