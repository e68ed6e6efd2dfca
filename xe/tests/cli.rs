//! The project's `xe` against the real daemon: every command the CLI documents, its output
//! and its exit status; the protocol's bytes on the wire; HTTPS, `~/.xe` and password files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{is_uuid, Host, PASSWORD};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use xe::protocol::{self, Command, Message};

/// Sends a `POST /cli` with these argument lines and reads the server's frames to `Exit`,
/// after checking the server's version bytes are exactly the protocol's 0.2 handshake.
fn raw_session(port: u16, lines: &[&str], client_major: i32) -> (Vec<u8>, Vec<Message>) {
    let body = lines.join("\n");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /cli HTTP/1.0\r\nUser-agent: xe-cli/Unix/0.2\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut hs = [0u8; protocol::HANDSHAKE_LEN];
    s.read_exact(&mut hs).unwrap();
    s.write_all(&protocol::handshake_for(client_major, 2)).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let mut msgs = Vec::new();
    let mut pos = 0;
    while let Some((m, used)) = protocol::decode_frame(&rest[pos..]).unwrap() {
        // Each frame is exactly what the codec writes for its message.
        assert_eq!(&rest[pos..pos + used], protocol::encode(&m).as_slice());
        pos += used;
        let exit = matches!(m, Message::Command(Command::Exit(_)));
        msgs.push(m);
        if exit {
            break;
        }
    }
    assert_eq!(
        pos,
        rest.len(),
        "bytes after Exit, or a partial frame: {:?}",
        &rest[pos..]
    );
    (hs.to_vec(), msgs)
}

#[test]
fn protocol_bytes_on_the_wire() {
    let h = Host::start("xe-wire");
    let port = h.port();
    let user = "username=root".to_string();
    let pass = format!("password={PASSWORD}");

    // The handshake, one Print of the --minimal line, Exit 0.
    let (hs, msgs) = raw_session(port, &["host-list", "--minimal", "params=uuid", &user, &pass], 0);
    assert_eq!(
        hs,
        [b"XenSource thin CLI protocol".as_slice(), &[0, 0, 0, 0, 2, 0, 0, 0]].concat()
    );
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    match &msgs[0] {
        Message::Command(Command::Print(uuid)) => assert!(is_uuid(uuid), "{uuid}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(msgs[1], Message::Command(Command::Exit(0)));

    // A wrong password: two lines on standard error, Exit 1.
    let (_, msgs) = raw_session(port, &["vm-list", &user, "password=wrong"], 0);
    assert_eq!(
        msgs,
        vec![
            Message::Command(Command::PrintStderr("Authentication failed\n".into())),
            Message::Command(Command::PrintStderr("For usage run: 'xe help'\n".into())),
            Message::Command(Command::Exit(1)),
        ]
    );
    let (_, msgs) = raw_session(port, &["vm-list", "username=", "password="], 0);
    assert_eq!(
        msgs[0],
        Message::Command(Command::PrintStderr("Username/password must be specified\n".into()))
    );

    // A XenAPI error travels as the protocol's Error command, refs shown as uuids.
    let (_, msgs) = raw_session(port, &["vm-param-list", "uuid=nope", &user, &pass], 0);
    assert_eq!(
        msgs,
        vec![
            Message::Command(Command::Error("UUID_INVALID".into(), vec!["VM".into(), "nope".into()])),
            Message::Command(Command::Exit(1)),
        ]
    );

    // help needs no login; a missing command is a syntax error.
    let (_, msgs) = raw_session(port, &["help", "--minimal"], 0);
    match &msgs[0] {
        Message::Command(Command::Print(l)) => assert!(l.split(',').any(|c| c == "vm-list"), "{l}"),
        other => panic!("{other:?}"),
    }
    let (_, msgs) = raw_session(port, &["uuid=x", &user, &pass], 0);
    assert_eq!(
        msgs,
        vec![
            Message::Command(Command::PrintStderr("Syntax error: \n".into())),
            Message::Command(Command::PrintStderr("For usage run: 'xe help'\n".into())),
            Message::Command(Command::Exit(1)),
        ]
    );

    // The unix socket: a uid-0 client is root without a password, as on a XenServer host.
    let sock = h.scratch.path().join("state").join("xapid.sock");
    let mut u = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    u.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = "host-list\n--minimal\nusername=root\npassword=";
    write!(u, "POST /cli HTTP/1.0\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut hs = [0u8; protocol::HANDSHAKE_LEN];
    u.read_exact(&mut hs).unwrap();
    assert_eq!(protocol::parse_handshake(&hs), Ok((0, 2)));
    u.write_all(&protocol::handshake()).unwrap();
    let mut rest = Vec::new();
    let _ = u.read_to_end(&mut rest);
    let (first, used) = protocol::decode_frame(&rest).unwrap().unwrap();
    let (last, _) = protocol::decode_frame(&rest[used..]).unwrap().unwrap();
    // SAFETY: geteuid only reads the process's effective user id.
    if unsafe { libc::geteuid() } == 0 {
        assert!(
            matches!(&first, Message::Command(Command::Print(l)) if is_uuid(l)),
            "{first:?}"
        );
        assert_eq!(last, Message::Command(Command::Exit(0)));
    } else {
        assert_eq!(
            first,
            Message::Command(Command::PrintStderr("Authentication failed\n".into()))
        );
    }

    // A client of another major version is turned away without a frame.
    let (_, msgs) = raw_session(port, &["vm-list", &user, &pass], 1);
    assert!(msgs.is_empty(), "{msgs:?}");

    // /cli after another request on the same connection is refused over HTTP.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST /cli HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    let _ = s.read_to_string(&mut all);
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(all.contains("HTTP/1.1 400"), "{all}");
}

#[test]
fn every_command() {
    let h = Host::start("xe-all");

    // help: the usage, one command's help, the names.
    let r = h.bare(&[]);
    assert_eq!(r.code, 0);
    assert!(r.stderr.starts_with("Usage:\n"), "{r:?}");
    assert_eq!(h.bare(&["-version"]).stdout, "ThinCLI protocol: 0.2\n");
    let help = h.ok(&["help"]);
    assert!(help.starts_with("Usage:\n  xe <command>\n"), "{help}");
    assert!(help.contains("Common command list\n-------------------\n"));
    assert!(help.contains("vm-start"));
    let one = h.ok(&["help", "vm-start"]);
    let lines: Vec<&str> = one.lines().collect();
    assert_eq!(lines[0], "command name            : vm-start");
    assert_eq!(lines[1], "        reqd params     : ");
    assert_eq!(lines[2], "        optional params : force, on, paused, <vm-selectors>");
    assert!(lines[3].starts_with("        description     : "));
    let names = h.one(&["help", "--minimal", "--all"]);
    let names: Vec<&str> = names.split(',').collect();
    let documented = include_str!("../../rpc/src/cli/documented_commands.txt");
    for c in documented.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        assert!(names.contains(&c), "help --all lacks {c}");
    }
    let unknown = h.ok(&["help", "vm-frob"]);
    assert_eq!(unknown, "Unknown command 'vm-frob'\n");

    // Lists: the record block layout, --minimal, params=, filters.
    let dom0 = h.one(&["vm-list", "--minimal"]);
    assert!(is_uuid(&dom0), "{dom0}");
    let name = h.one(&["vm-param-get", &format!("uuid={dom0}"), "param-name=name-label"]);
    assert!(name.starts_with("Control domain on host: "), "{name}");
    assert_eq!(
        h.ok(&["vm-list"]),
        format!("uuid ( RO)           : {dom0}\n     name-label ( RW): {name}\n    power-state ( RO): running\n\n\n")
    );
    assert_eq!(h.ok(&["vm-list", "power-state=halted"]), "");
    assert_eq!(h.one(&["vm-list", "power-state=halted", "--minimal"]), "");
    let host = h.one(&["host-list", "--minimal"]);
    assert!(is_uuid(&host));
    let host_block = h.ok(&["host-list"]);
    assert!(
        host_block.starts_with(&format!("uuid ( RO)                : {host}\n")),
        "{host_block}"
    );
    assert!(host_block.contains("\n          name-label ( RW): "), "{host_block}");
    assert!(host_block.contains("\n    name-description ( RW): "), "{host_block}");
    let pool = h.ok(&["pool-list"]);
    assert!(pool.contains(&format!("      master ( RO): {host}\n")), "{pool}");
    let sr = h.one(&["sr-list", "name-label=Local storage", "params=uuid", "--minimal"]);
    let host_name = h.one(&["host-param-get", &format!("uuid={host}"), "param-name=name-label"]);
    assert_eq!(
        h.ok(&["sr-list", &format!("uuid={sr}")]),
        format!(
            "uuid ( RO)                : {sr}\n          name-label ( RW): Local storage\n    name-description ( RW): \n                host ( RO): {host_name}\n                type ( RO): file\n        content-type ( RO): user\n\n\n"
        )
    );
    assert!(pool.contains(&format!("  default-SR ( RW): {sr}\n")), "{pool}");
    assert_eq!(
        h.one(&["pbd-list", &format!("sr-uuid={sr}"), "params=host-uuid", "--minimal"]),
        host
    );
    let net = h.one(&["pif-list", "device=eth0", "params=network-uuid", "--minimal"]);
    assert_eq!(
        h.one(&["network-list", &format!("uuid={net}"), "params=bridge", "--minimal"]),
        "xenbr0"
    );
    let templates = h.one(&["template-list", "params=name-label", "--minimal"]);
    assert!(templates.split(',').any(|t| t == "Debian Bookworm 12"), "{templates}");
    let r = h.xe(&["vm-list", "frob=1"]);
    assert_eq!((r.code, r.stderr.as_str()), (1, "Error: Unknown field 'frob'\n"));
    assert_eq!(h.ok(&["task-list"]), "");

    // Errors: unknown command, missing parameter, bad login.
    let r = h.xe(&["vm-frob"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "Unknown command: vm-frob\nFor usage run: 'xe help'\n")
    );
    let r = h.xe(&["vm-install"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            1,
            "Required parameter not found: new-name-label\nFor usage run: 'xe help'\n"
        )
    );
    let port = h.port().to_string();
    let r = h.bare(&[
        "-s",
        "localhost",
        "-p",
        &port,
        "--nossl",
        "-u",
        "root",
        "-pw",
        "wrong",
        "vm-list",
    ]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "Authentication failed\nFor usage run: 'xe help'\n")
    );

    // Install, start and drive a VM.
    let vm = h.one(&["vm-install", "template=Debian Bookworm 12", "new-name-label=web"]);
    assert!(is_uuid(&vm));
    let vmu = format!("uuid={vm}");
    assert_eq!(
        h.one(&["vm-param-get", &vmu, "param-name=name-description"]),
        "Installed via xe CLI"
    );
    assert_eq!(h.one(&["vm-param-get", &vmu, "param-name=is-a-template"]), "false");
    let disks = h.ok(&["vm-disk-list", "vm=web"]);
    assert!(disks.starts_with("Disk 0 VBD:\nuuid ( RO)             : "), "{disks}");
    assert!(disks.contains("\nDisk 0 VDI:\n"), "{disks}");
    assert!(disks.contains("    sr-name-label ( RO): Local storage\n"), "{disks}");
    h.ok(&["vm-start", "vm=web"]);
    assert_eq!(h.one(&["vm-param-get", &vmu, "param-name=power-state"]), "running");
    assert_eq!(h.one(&["vm-param-get", &vmu, "param-name=resident-on"]), host);
    h.ok(&["vm-pause", "vm=web"]);
    assert_eq!(h.one(&["vm-param-get", &vmu, "param-name=power-state"]), "paused");
    h.ok(&["vm-unpause", "vm=web"]);
    h.ok(&["vm-suspend", "vm=web"]);
    assert_eq!(h.one(&["vm-param-get", &vmu, "param-name=power-state"]), "suspended");
    h.ok(&["vm-resume", "vm=web"]);
    h.ok(&["vm-reboot", "vm=web"]);
    assert_eq!(h.one(&["vm-param-get", &vmu, "param-name=power-state"]), "running");
    // Its text console through the console data path (HttpConnect); Ctrl-] leaves.
    let r = h.xe_with_stdin(&["console", "vm=web"], "\u{1d}");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .starts_with("Connecting to console on VM web. Press Ctrl + ']' to quit.\n"),
        "{r:?}"
    );
    let r = h.xe(&["console", "vm=nothing-named-so"]);
    assert_eq!((r.code, r.stderr.as_str()), (1, "No VM found\n"));
    // A running VM cannot start again: the API's error, refs as "uuid (name)".
    let p = h.api_error(&["vm-start", "vm=web"], "VM_BAD_POWER_STATE");
    assert_eq!(p, vec![format!("{vm} (web)"), "halted".into(), "running".into()]);

    // Snapshots and checkpoints, and going back to one.
    let snap = h.one(&[
        "vm-snapshot",
        "vm=web",
        "new-name-label=before",
        "new-name-description=first",
    ]);
    assert!(is_uuid(&snap));
    let snaps = h.ok(&["snapshot-list"]);
    assert!(
        snaps.contains(&format!("uuid ( RO)                : {snap}\n")),
        "{snaps}"
    );
    assert!(snaps.contains("          name-label ( RW): before\n"), "{snaps}");
    assert!(snaps.contains("    name-description ( RW): first\n"), "{snaps}");
    let cp = h.one(&["vm-checkpoint", "vm=web", "new-name-label=cp"]);
    assert_eq!(
        h.one(&[
            "snapshot-list",
            &format!("uuid={cp}"),
            "params=power-state",
            "--minimal"
        ]),
        "suspended"
    );
    // Reverting to a checkpoint brings its memory back: the VM is suspended, then resumes.
    h.ok(&["snapshot-revert", &format!("snapshot-uuid={cp}")]);
    assert_eq!(h.one(&["vm-param-get", &vmu, "param-name=power-state"]), "suspended");
    h.ok(&["vm-resume", "vm=web"]);
    assert_eq!(h.one(&["vm-param-get", &vmu, "param-name=power-state"]), "running");

    // Parameters: set, map keys, sets, clear, read-only fields.
    h.ok(&[
        "vm-param-set",
        &vmu,
        "name-description=the web server",
        "other-config:role=web",
    ]);
    assert_eq!(
        h.one(&["vm-param-get", &vmu, "param-name=name-description"]),
        "the web server"
    );
    assert_eq!(
        h.one(&["vm-param-get", &vmu, "param-name=other-config", "param-key=role"]),
        "web"
    );
    assert_eq!(h.one(&["vm-list", "other-config:role=web", "--minimal"]), vm);
    h.ok(&["vm-param-add", &vmu, "param-name=tags", "param-key=prod"]);
    assert_eq!(h.one(&["vm-param-get", &vmu, "param-name=tags"]), "prod");
    assert_eq!(h.one(&["vm-list", "tags:contains=prod", "--minimal"]), vm);
    h.ok(&["vm-param-remove", &vmu, "param-name=tags", "param-key=prod"]);
    assert_eq!(h.one(&["vm-list", "tags:contains=prod", "--minimal"]), "");
    h.ok(&["vm-param-add", &vmu, "param-name=other-config", "a=1", "b=2"]);
    h.ok(&["vm-param-clear", &vmu, "param-name=other-config"]);
    assert_eq!(h.ok(&["vm-param-get", &vmu, "param-name=other-config"]), "\n");
    let r = h.xe(&["vm-param-set", &vmu, "power-state=halted"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "Error: Field 'power-state' is read-only.\n")
    );
    let r = h.xe(&["vm-param-remove", &vmu, "param-name=tags", "param-key=absent"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "Error: Key absent is not in the set\n")
    );
    let all = h.ok(&["vm-param-list", &vmu]);
    assert!(all.starts_with("uuid ( RO)"), "{all}");
    for label in [
        "name-label ( RW): web",
        "power-state ( RO): running",
        "other-config (MRW): ",
        "tags (SRW): ",
    ] {
        assert!(all.contains(label), "vm-param-list lacks {label:?}");
    }

    // Networks and interfaces.
    let lan = h.one(&["network-create", "name-label=lan", "MTU=9000"]);
    assert_eq!(
        h.one(&["network-param-get", &format!("uuid={lan}"), "param-name=MTU"]),
        "9000"
    );
    let vif = h.one(&[
        "vif-create",
        &format!("vm-uuid={vm}"),
        &format!("network-uuid={net}"),
        "device=1",
        "mac=random",
    ]);
    assert!(is_uuid(&vif));
    let vifs = h.ok(&["vm-vif-list", "vm=web"]);
    assert!(
        vifs.contains(&format!("uuid ( RO)                  : {vif}\n")),
        "{vifs}"
    );
    assert!(
        vifs.contains("    network-name-label ( RO): Pool-wide network associated with eth0\n"),
        "{vifs}"
    );
    assert_eq!(
        h.one(&["vif-list", &format!("uuid={vif}"), "params=vm-uuid", "--minimal"]),
        vm
    );

    // Disks: create, resize, plug, import and export through the data paths.
    let vdi = h.one(&[
        "vdi-create",
        &format!("sr-uuid={sr}"),
        "name-label=data",
        "virtual-size=4MiB",
    ]);
    assert_eq!(
        h.one(&["vdi-param-get", &format!("uuid={vdi}"), "param-name=virtual-size"]),
        "4194304"
    );
    h.ok(&["vdi-resize", &format!("uuid={vdi}"), "disk-size=8MiB"]);
    assert_eq!(
        h.one(&["vdi-param-get", &format!("uuid={vdi}"), "param-name=virtual-size"]),
        "8388608"
    );
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(h.work().join("in.img"), &data).unwrap();
    h.ok(&["vdi-import", &format!("uuid={vdi}"), "filename=in.img"]);
    h.ok(&["vdi-export", &format!("uuid={vdi}"), "filename=out.img"]);
    assert!(
        std::fs::read(h.work().join("out.img")).unwrap() == data,
        "the export differs from the import"
    );
    // A file that exists is not overwritten; a missing one cannot be uploaded.
    let r = h.xe(&["vdi-export", &format!("uuid={vdi}"), "filename=out.img"]);
    assert_eq!(r.code, 1, "{r:?}");
    let r = h.xe(&["vdi-import", &format!("uuid={vdi}"), "filename=missing.img"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "Operation failed. Error: file 'missing.img' does not exist\n")
    );
    let vbd = h.one(&[
        "vbd-create",
        &format!("vm-uuid={vm}"),
        &format!("vdi-uuid={vdi}"),
        "device=2",
    ]);
    h.ok(&["vbd-plug", &format!("uuid={vbd}")]);
    assert_eq!(
        h.one(&["vbd-param-get", &format!("uuid={vbd}"), "param-name=currently-attached"]),
        "true"
    );
    let r = h.xe(&["vbd-create", &format!("vm-uuid={vm}"), "device=4"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "Error: Empty VBDs can only be made for type=CD\n")
    );

    // An ISO library, its scan, and a disc in the VM's drive.
    let iso_dir = h.scratch.path().join("isos");
    std::fs::create_dir_all(&iso_dir).unwrap();
    std::fs::write(iso_dir.join("tools.iso"), vec![0u8; 1 << 20]).unwrap();
    let iso_sr = h.one(&[
        "sr-create",
        "name-label=ISOs",
        "type=iso",
        "content-type=iso",
        &format!("device-config:location={}", iso_dir.display()),
    ]);
    assert!(is_uuid(&iso_sr));
    h.ok(&["sr-scan", &format!("uuid={iso_sr}")]);
    assert_eq!(
        h.one(&[
            "vdi-list",
            &format!("sr-uuid={iso_sr}"),
            "params=name-label",
            "--minimal"
        ]),
        "tools.iso"
    );
    let pbd = h.one(&["pbd-list", &format!("sr-uuid={iso_sr}"), "params=uuid", "--minimal"]);
    let plugged = h.xe(&["pbd-plug", &format!("uuid={pbd}")]);
    assert!(
        plugged.code == 0 || plugged.stderr.starts_with("Error code: "),
        "{plugged:?}"
    );
    assert_eq!(
        h.one(&["pbd-param-get", &format!("uuid={pbd}"), "param-name=currently-attached"]),
        "true"
    );
    h.ok(&["vbd-create", &format!("vm-uuid={vm}"), "device=3", "type=CD", "mode=RO"]);
    h.ok(&["vm-cd-insert", "vm=web", "cd-name=tools.iso"]);
    let cds = h.ok(&["vm-cd-list", "vm=web"]);
    assert!(
        cds.contains("CD 0 VDI:\n") && cds.contains("       name-label ( RW): tools.iso\n"),
        "{cds}"
    );
    h.ok(&["vm-cd-eject", "vm=web"]);
    assert!(!h.ok(&["vm-cd-list", "vm=web"]).contains("CD 0 VDI:"));
    let r = h.xe(&["vm-cd-insert", "vm=web", "cd-name=absent.iso"]);
    assert_eq!((r.code, r.stderr.as_str()), (1, "Error: CD absent.iso not found\n"));

    // Clones and copies of a halted VM; several VMs need --multiple.
    h.ok(&["vm-shutdown", "vm=web"]);
    assert_eq!(h.one(&["vm-param-get", &vmu, "param-name=power-state"]), "halted");
    let clone = h.one(&["vm-clone", "vm=web", "new-name-label=web2"]);
    let copy = h.one(&["vm-copy", "vm=web", "new-name-label=web3", &format!("sr-uuid={sr}")]);
    assert!(is_uuid(&clone) && is_uuid(&copy) && clone != copy);
    let r = h.xe(&["vm-start", "power-state=halted"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            1,
            "Error: Multiple matches VMs found. --multiple required to complete the operation\n"
        )
    );
    let r = h.xe(&["vm-start", "vm=nothing-named-so"]);
    assert_eq!((r.code, r.stderr.as_str()), (1, "Error: No matching VMs found\n"));
    h.ok(&["vm-destroy", &format!("uuid={clone}")]);
    let p = h.api_error(&["vm-destroy", &format!("uuid={dom0}")], "OPERATION_NOT_ALLOWED");
    assert_eq!(p, vec!["You cannot destroy a control domain via the CLI"]);

    // Waiting for an event: a change another client makes.
    let waiter = {
        let port = h.port().to_string();
        let home = h.home();
        let copy = copy.clone();
        std::thread::spawn(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_xe"))
                .args(["-s", "localhost", "-p", &port, "--nossl", "-u", "root", "-pw", PASSWORD])
                .args(["event-wait", "class=vm", &format!("uuid={copy}"), "name-label=renamed"])
                .env("HOME", home)
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    h.ok(&["vm-param-set", &format!("uuid={copy}"), "name-label=renamed"]);
    let waited = waiter.join().unwrap();
    assert_eq!(waited.status.code(), Some(0), "{waited:?}");
    h.ok(&[
        "event-wait",
        "class=vm",
        &format!("uuid={copy}"),
        "power-state=/=running",
    ]);

    // Tasks: one another client made, cancelled.
    let (mut rpc, session) = h.daemon.client("xe test").unwrap();
    let task = match rpc
        .call(
            "task.create",
            &[
                serde_json::json!(session),
                serde_json::json!("t"),
                serde_json::json!(""),
            ],
        )
        .unwrap()
    {
        xapid_tests::rpc::Reply::Success(v) => v.as_str().unwrap().to_owned(),
        other => panic!("{other:?}"),
    };
    let task_uuid = match rpc
        .call("task.get_uuid", &[serde_json::json!(session), serde_json::json!(task)])
        .unwrap()
    {
        xapid_tests::rpc::Reply::Success(v) => v.as_str().unwrap().to_owned(),
        other => panic!("{other:?}"),
    };
    let listed = h.ok(&["task-list"]);
    assert!(
        listed.contains(&format!("uuid ( RO)                : {task_uuid}\n")),
        "{listed}"
    );
    h.ok(&["task-cancel", &format!("uuid={task_uuid}")]);
    let status = h.one(&["task-list", &format!("uuid={task_uuid}"), "params=status", "--minimal"]);
    assert!(status == "cancelled" || status == "cancelling", "{status}");

    // vm-export writes the VM's archive through the client (HttpGet of /export); vm-import
    // uploads it back (HttpPut to /import) and prints the new VM's uuid.
    assert_eq!(
        h.one(&["vm-list", "name-label=web", "params=power-state", "--minimal"]),
        "halted"
    );
    h.ok(&["vm-export", "vm=web", "filename=web.xva"]);
    let size = std::fs::metadata(h.work().join("web.xva"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(size > 1024, "web.xva holds {size} bytes");
    let imported = h.one(&["vm-import", "filename=web.xva"]);
    assert!(is_uuid(&imported), "vm-import printed {imported:?}");
    assert_eq!(
        h.one(&["vm-param-get", &format!("uuid={imported}"), "param-name=name-label"]),
        "web"
    );
    assert_eq!(h.one(&["vm-list", "name-label=web", "--minimal"]).split(',').count(), 2);
    h.ok(&["vm-destroy", &format!("uuid={imported}")]);
    // pool-dump-database writes the database backup through the client (HttpGet of
    // /pool/xmldbdump); pool-restore-database uploads it (HttpPut) to check it, and refuses a
    // real restore without --force, as the reference's CLI does.
    h.ok(&["pool-dump-database", "file-name=pool.xml"]);
    let dump = std::fs::read_to_string(h.work().join("pool.xml")).unwrap_or_default();
    assert!(
        dump.starts_with("<?xml") && dump.contains("<table name=\"VM\">") && dump.contains("name__label=\"web\""),
        "{}",
        &dump[..dump.len().min(300)]
    );
    assert_eq!(
        h.ok(&["pool-restore-database", "file-name=pool.xml", "dry-run=true"]),
        "Dry-run backup restore successful\n"
    );
    let r = h.xe(&["pool-restore-database", "file-name=pool.xml"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("must be forced"), "{r:?}");
    std::fs::write(h.work().join("bad.xml"), b"<database><manifest/></database>").unwrap();
    let r = h.xe(&["pool-restore-database", "file-name=bad.xml", "dry-run=true"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("not valid"), "{r:?}");
    // A file that is not an archive: the import's own error, nothing left behind.
    std::fs::write(h.work().join("junk.xva"), vec![7u8; 4096]).unwrap();
    let r = h.xe(&["vm-import", "filename=junk.xva"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("IMPORT_ERROR"), "{r:?}");
    assert_eq!(h.one(&["vm-list", "name-label=web", "--minimal"]).split(',').count(), 1);
    // vm-migrate is VM.pool_migrate: web is halted, and only a running VM moves.
    let refused = h.api_error(&["vm-migrate", "vm=web", &format!("host={host}")], "VM_BAD_POWER_STATE");
    assert_eq!(refused[1..], ["running", "halted"], "{refused:?}");
    let pif = h.one(&["pif-list", "device=eth0", "params=uuid", "--minimal"]);
    // VLAN.create makes the VLAN and its untagged PIF: the command prints the PIF's uuid.
    let vlan_pif = h.one(&[
        "vlan-create",
        &format!("pif-uuid={pif}"),
        "vlan=5",
        &format!("network-uuid={lan}"),
    ]);
    assert!(is_uuid(&vlan_pif), "{vlan_pif}");
    assert_eq!(
        h.one(&["pif-list", &format!("uuid={vlan_pif}"), "params=VLAN", "--minimal"]),
        "5"
    );
    // A bond of the management PIF alone is refused by Bond.create itself.
    let bond = h.xe(&[
        "bond-create",
        &format!("network-uuid={lan}"),
        &format!("pif-uuids={pif}"),
    ]);
    assert_eq!(bond.code, 1, "{bond:?}");
    assert!(
        bond.stderr.starts_with("Error code: ") && !bond.stderr.contains("NOT_IMPLEMENTED"),
        "{bond:?}"
    );
    // host-disable/host-enable (on the one host when none is named, as the reference's xe).
    let enabled = || h.one(&["host-param-get", &format!("uuid={host}"), "param-name=enabled"]);
    let dis = h.xe(&["host-disable"]);
    assert_eq!(dis.code, 0, "{dis:?}");
    assert_eq!(enabled(), "false");
    let en = h.xe(&["host-enable"]);
    assert_eq!(en.code, 0, "{en:?}");
    assert_eq!(enabled(), "true");
    // host-shutdown/host-reboot of an enabled host: refused (host-disable first); the power-on
    // mode set and read back; host-power-on of a host that answers: refused.
    for cmd in ["host-shutdown", "host-reboot"] {
        let r = h.xe(&[cmd, &format!("host={host}")]);
        assert!(
            r.code == 1 && r.stderr.starts_with("Error code: HOST_NOT_DISABLED"),
            "{cmd}: {r:?}"
        );
    }
    h.ok(&[
        "host-set-power-on-mode",
        &format!("host={host}"),
        "power-on-mode=wake-on-lan",
        "power-on-config:mac=00:16:3e:00:00:01",
    ]);
    assert_eq!(
        h.one(&["host-param-get", &format!("uuid={host}"), "param-name=power-on-mode"]),
        "wake-on-lan"
    );
    assert_eq!(
        h.one(&[
            "host-param-get",
            &format!("uuid={host}"),
            "param-name=power-on-config",
            "param-key=mac"
        ]),
        "00:16:3e:00:00:01"
    );
    let on = h.xe(&["host-power-on", &format!("host={host}")]);
    assert!(
        on.code == 1 && on.stderr.starts_with("Error code: HOST_IS_LIVE"),
        "{on:?}"
    );
    h.ok(&["host-set-power-on-mode", &format!("host={host}"), "power-on-mode="]);
    // host-evacuate on a host alone: nowhere to go for a running VM, nothing to do without one.
    let running = h.one(&[
        "vm-list",
        "power-state=running",
        "is-control-domain=false",
        "params=uuid",
        "--minimal",
    ]);
    let ev = h.xe(&["host-evacuate", &format!("host={host}")]);
    if running.is_empty() {
        assert_eq!(ev.code, 0, "{ev:?}");
    } else {
        assert!(ev.stderr.starts_with("Error code: NO_HOSTS_AVAILABLE"), "{ev:?}");
    }
    // Pools: a master nobody answers at (a loopback address with no daemon) is the
    // reference's connection failure; the master cannot eject itself; designating the master
    // it already is changes nothing.
    assert_eq!(
        h.api_error(
            &[
                "pool-join",
                "master-address=127.0.0.9",
                "master-username=root",
                "master-password=x"
            ],
            "JOINING_HOST_CONNECTION_FAILED"
        ),
        vec![String::new()]
    );
    assert_eq!(
        h.api_error(&["pool-eject", &format!("host-uuid={host}")], "INTERNAL_ERROR"),
        vec!["Cannot_eject_master: the pool's master cannot be ejected"]
    );
    h.ok(&["pool-designate-new-master", &format!("host-uuid={host}")]);
    assert_eq!(h.one(&["pool-list", "params=master", "--minimal"]), host);

    // Uninstalling: asks first (answered "no", then "yes"), or goes ahead with --force.
    let r = h.xe_with_stdin(&["vm-uninstall", "vm=renamed"], "no\n");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with(&format!(
            "The following items are about to be destroyed\nVM : {copy} (renamed)\n"
        )),
        "{r:?}"
    );
    assert!(
        r.stdout
            .ends_with("Type 'yes' to continue\nAborted (you typed: 'no')\n"),
        "{r:?}"
    );
    assert_eq!(h.one(&["vm-list", "name-label=renamed", "--minimal"]), copy);
    let r = h.xe_with_stdin(&["vm-uninstall", "vm=renamed"], "yes\n");
    assert!(r.stdout.ends_with("All objects destroyed\n"), "{r:?}");
    let out = h.ok(&["vm-uninstall", "vm=web", "--force"]);
    assert!(out.contains(&format!("VM : {vm} (web)\n")), "{out}");
    assert!(out.contains(&format!("VM : {snap} (before)\n")), "{out}");
    assert!(out.ends_with("All objects destroyed\n"), "{out}");
    assert_eq!(h.one(&["vm-list", "--minimal"]), dom0);
    assert_eq!(h.one(&["snapshot-list", "--minimal"]), "");
}

#[test]
fn https_rc_file_and_password_file() {
    let h = Host::start("xe-tls");
    let tls = h.tls_port.to_string();
    // HTTPS is the default for a remote server name.
    let r = h.bare(&[
        "-s",
        "localhost",
        "-p",
        &tls,
        "-u",
        "root",
        "-pw",
        PASSWORD,
        "host-list",
        "--minimal",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(is_uuid(r.stdout.trim()), "{r:?}");
    // The upload and download go over HTTPS too.
    let sr = {
        let r = h.bare(&[
            "-s",
            "localhost",
            "-p",
            &tls,
            "-u",
            "root",
            "-pw",
            PASSWORD,
            "sr-list",
            "params=uuid",
            "--minimal",
            "type=file",
        ]);
        r.stdout.trim().to_owned()
    };
    let vdi = h
        .bare(&[
            "-s",
            "localhost",
            "-p",
            &tls,
            "-u",
            "root",
            "-pw",
            PASSWORD,
            "vdi-create",
            &format!("sr-uuid={sr}"),
            "name-label=t",
            "virtual-size=1MiB",
        ])
        .stdout
        .trim()
        .to_owned();
    assert!(is_uuid(&vdi), "{vdi}");
    let bytes: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(h.work().join("a.img"), &bytes).unwrap();
    let base = ["-s", "localhost", "-p", &tls, "-u", "root", "-pw", PASSWORD];
    let up = h.bare(&[&base[..], &["vdi-import", &format!("uuid={vdi}"), "filename=a.img"]].concat());
    assert_eq!(up.code, 0, "{up:?}");
    let down = h.bare(&[&base[..], &["vdi-export", &format!("uuid={vdi}"), "filename=b.img"]].concat());
    assert_eq!(down.code, 0, "{down:?}");
    assert!(std::fs::read(h.work().join("b.img")).unwrap() == bytes);

    // Plain HTTP against the HTTPS port fails; --nossl on the HTTP port works.
    let r = h.bare(&[
        "-s",
        "localhost",
        "-p",
        &tls,
        "--nossl",
        "-u",
        "root",
        "-pw",
        PASSWORD,
        "vm-list",
    ]);
    assert_eq!(r.code, 1, "{r:?}");

    // ~/.xe gives the defaults.
    let port = h.port();
    std::fs::write(
        h.home().join(".xe"),
        format!("server=localhost\nport={port}\nnossl=true\nusername=root\npassword={PASSWORD}\n"),
    )
    .unwrap();
    let r = h.bare(&["host-list", "--minimal"]);
    assert_eq!(r.code, 0, "{r:?}");
    // A command-line setting wins over the file.
    let r = h.bare(&["-pw", "wrong", "host-list"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "Authentication failed\nFor usage run: 'xe help'\n")
    );
    std::fs::remove_file(h.home().join(".xe")).unwrap();

    // A password file: user name, then password.
    let pwf = h.work().join("creds");
    std::fs::write(&pwf, format!("root\n{PASSWORD}\n")).unwrap();
    let p = port.to_string();
    let r = h.bare(&[
        "-s",
        "localhost",
        "-p",
        &p,
        "--nossl",
        "-pwf",
        pwf.to_str().unwrap(),
        "pool-list",
        "--minimal",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    std::fs::write(&pwf, "root\n").unwrap();
    let r = h.bare(&[
        "-s",
        "localhost",
        "-p",
        &p,
        "--nossl",
        "-pwf",
        pwf.to_str().unwrap(),
        "pool-list",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.starts_with("Error: password file format"), "{r:?}");

    // Nothing listens: the reference's message.
    let closed = xapid_tests::daemon::free_port().unwrap().to_string();
    let r = h.bare(&["-s", "localhost", "-p", &closed, "--nossl", "vm-list"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.starts_with("Error: Connection refused"), "{r:?}");
    // An HTTP server that is no CLI server.
    let r = h.bare(&["-s", "localhost", "-p", &p, "--nossl", "--debug", "help"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("Server has protocol version 0.2. Client has 0.2"),
        "{r:?}"
    );
}
