//! The SDK against the real daemon: `target/release/xapid` (or `$XAPID_BIN`) on a free port
//! with a temporary state dir, on the simulator backend. The README's session runs over
//! XML-RPC, JSON-RPC, the unix socket and HTTPS; typed results, typed errors, `Async.`
//! results and the event stream are checked against what the daemon did.

// Test code: the helpers around the #[test] functions may unwrap and panic too (clippy's
// allow-*-in-tests covers only the #[test] functions themselves).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use xapi_sdk::enums::{EventOperation, VbdType, VdiType, VmPowerState};
use xapi_sdk::{AnyRecord, Client, DiskFormat, Error, ErrorCode, Session, VDIRecord, VMRef, Wire};
use xapid_tests::daemon::{free_port, Daemon, DaemonOpts};

// README session: begin
async fn session(client: &Client, password: &str) -> Result<(), xapi_sdk::Error> {
    let session = Session::login_with_password(client, "root", password, "2.21", "xapi-sdk-readme").await?;

    // Every VM with its record (templates and the control domain are VMs too).
    let vms = session.vm().get_all_records().await?;
    for (vm, record) in &vms {
        println!("{vm}: {} ({})", record.name_label, record.power_state);
    }

    // Start a halted VM as a task: the call returns at once with the task, then the task's
    // result (here `void`) is awaited.
    let halted = vms
        .iter()
        .find(|(_, r)| !r.is_a_template && !r.is_control_domain && r.power_state == VmPowerState::Halted);
    if let Some((vm, record)) = halted {
        let task = session.vm().async_start(vm, false, false).await?;
        task.wait(&session).await?;
        let state = session.vm().get_power_state(vm).await?;
        println!("{} is {state}", record.name_label);
    }

    session.logout().await
}
// README session: end

// README xe session: begin
/// `docs/xe.md`'s session in Rust: install a VM from a template, start it, snapshot it, move a
/// scratch disk's bytes in and out, export the VM to a file, import it back, list and destroy.
async fn xe_session(session: &Session, dir: &Path) -> Result<(), xapi_sdk::Error> {
    // xe vm-install template="Debian Bookworm 12" new-name-label=web
    let template = session.vm().get_by_name_label("Debian Bookworm 12").await?;
    let vm = session.vm().clone(&template[0], "web").await?;
    session.vm().provision(&vm).await?;
    session.vm().set_is_a_template(&vm, false).await?;
    // xe vm-start uuid=$VM
    session.vm().start(&vm, false, false).await?;
    println!("web is {}", session.vm().get_power_state(&vm).await?);
    // xe vm-snapshot uuid=$VM new-name-label=web-before-upgrade
    let snapshot = session.vm().snapshot(&vm, "web-before-upgrade", &[]).await?;
    println!("snapshot: {}", session.vm().get_name_label(&snapshot).await?);

    // xe vdi-create, vdi-import, vdi-export: a scratch disk's bytes in and out.
    let sr = session
        .sr()
        .get_all_records()
        .await?
        .into_iter()
        .find(|(_, r)| r.r#type == "file")
        .map(|(sr, _)| sr)
        .ok_or_else(|| xapi_sdk::Error::Protocol("no file SR".into()))?;
    let scratch = session
        .vdi()
        .create(&VDIRecord {
            name_label: "scratch".into(),
            sr,
            virtual_size: 1 << 20,
            r#type: VdiType::User,
            ..Default::default()
        })
        .await?;
    let bytes: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    tokio::fs::write(dir.join("scratch.raw"), &bytes)
        .await
        .map_err(|e| xapi_sdk::Error::Http(Box::new(e)))?;
    session
        .import_raw_vdi(&scratch, DiskFormat::Raw, &dir.join("scratch.raw"))
        .await?;
    session
        .export_raw_vdi(&scratch, DiskFormat::Raw, &dir.join("scratch-copy.raw"))
        .await?;
    let back = tokio::fs::read(dir.join("scratch-copy.raw"))
        .await
        .map_err(|e| xapi_sdk::Error::Http(Box::new(e)))?;
    println!(
        "the disk came back {}",
        if back == bytes { "unchanged" } else { "CHANGED" }
    );

    // xe vm-shutdown, vm-export, vm-import
    session.vm().clean_shutdown(&vm).await?;
    let size = session.export_vm(&vm, &dir.join("web.xva")).await?;
    println!("the archive is written: {size} bytes");
    let copies = session.import_vm(&dir.join("web.xva"), None).await?;
    println!("imported: {}", session.vm().get_name_label(&copies[0]).await?);

    // xe vm-uninstall --force, for each VM named web: it, its snapshots and their disks.
    for vm in session.vm().get_by_name_label("web").await? {
        for v in [session.vm().get_snapshots(&vm).await?, vec![vm]].concat() {
            let mut disks = Vec::new();
            for vbd in session.vm().get_vbds(&v).await? {
                let rec = session.vbd().get_record(&vbd).await?;
                if rec.r#type == VbdType::Disk && !rec.empty {
                    disks.push(rec.vdi);
                }
            }
            session.vm().destroy(&v).await?;
            for vdi in disks {
                session.vdi().destroy(&vdi).await?;
            }
        }
    }
    session.vdi().destroy(&scratch).await?;
    println!(
        "VMs named web left: {}",
        session.vm().get_by_name_label("web").await?.len()
    );
    Ok(())
}
// README xe session: end

const PASSWORD: &str = "sdk test password";
const TEMPLATE: &str = "Debian Bookworm 12";

/// A daemon and the directory it keeps its state, log and password in.
struct Lab {
    daemon: Daemon,
    _dir: tempfile::TempDir,
    tls_port: Option<u16>,
}

impl Lab {
    fn start(tls: bool) -> Lab {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut extra = Vec::new();
        let tls_port = tls.then(|| free_port().expect("free port"));
        if let Some(p) = tls_port {
            extra.push("--tls-listen".to_owned());
            extra.push(format!("127.0.0.1:{p}"));
        }
        let opts = DaemonOpts {
            state_dir: dir.path().join("state"),
            extra,
            password: PASSWORD.to_owned(),
        };
        let daemon = Daemon::start(opts, dir.path()).unwrap_or_else(|e| panic!("starting xapid: {e}"));
        Lab {
            daemon,
            _dir: dir,
            tls_port,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.daemon.addr)
    }

    fn socket(&self) -> PathBuf {
        self.daemon.opts.state_dir.join("xapid.sock")
    }

    fn client(&self, wire: Wire) -> Client {
        Client::builder(self.url()).wire(wire).build().expect("client")
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn login(client: &Client) -> Session {
    Session::login_with_password(client, "root", PASSWORD, "2.21", "xapi-sdk-tests")
        .await
        .expect("login")
}

/// What install scripts do: clone the template (as a task, whose result is the new VM's
/// ref), shrink its disk, provision it and make it a VM.
async fn install_vm(s: &Session, name: &str) -> VMRef {
    let templates = s.vm().get_by_name_label(TEMPLATE).await.expect("get_by_name_label");
    let template = templates.first().expect("the template exists");
    let clone = s.vm().async_clone(template, name).await.expect("Async.VM.clone");
    let vm: VMRef = clone.wait(s).await.expect("the clone task's result");
    assert!(vm.as_str().starts_with("OpaqueRef:") && !vm.is_null(), "{vm}");
    let other_config = s.vm().get_other_config(&vm).await.expect("get_other_config");
    if let Some(disks) = other_config.get("disks") {
        let small = with_disk_size(disks, 64 << 20);
        s.vm()
            .remove_from_other_config(&vm, "disks")
            .await
            .expect("remove disks");
        s.vm()
            .add_to_other_config(&vm, "disks", &small)
            .await
            .expect("add disks");
    }
    s.vm().provision(&vm).await.expect("provision");
    s.vm().set_is_a_template(&vm, false).await.expect("set_is_a_template");
    vm
}

/// `disks` with every `size="…"` set to `bytes`.
fn with_disk_size(disks: &str, bytes: u64) -> String {
    let mut out = String::new();
    let mut rest = disks;
    while let Some(at) = rest.find("size=\"") {
        let (head, tail) = rest.split_at(at + "size=\"".len());
        out.push_str(head);
        out.push_str(&bytes.to_string());
        rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

async fn discard_vm(s: &Session, vm: &VMRef) {
    if s.vm().get_power_state(vm).await.expect("power state") != VmPowerState::Halted {
        s.vm().hard_shutdown(vm).await.expect("hard_shutdown");
    }
    s.vm().destroy(vm).await.expect("destroy");
}

/// Installs a halted VM, runs the README's session with `client`, and checks that it started
/// exactly that VM.
async fn readme_session_starts_the_halted_vm(admin: &Client, client: &Client) {
    let s = login(admin).await;
    let vm = install_vm(&s, "readme-vm").await;
    assert_eq!(s.vm().get_power_state(&vm).await.unwrap(), VmPowerState::Halted);
    let before = s.vm().get_all_records().await.unwrap();

    session(client, PASSWORD).await.expect("the README's session");

    assert_eq!(s.vm().get_power_state(&vm).await.unwrap(), VmPowerState::Running);
    // The control domain and the templates were left alone.
    for (r, rec) in s.vm().get_all_records().await.unwrap() {
        if r != vm {
            assert_eq!(
                Some(&rec.power_state),
                before.get(&r).map(|b| &b.power_state),
                "{}",
                rec.name_label
            );
        }
    }
    discard_vm(&s, &vm).await;
    s.logout().await.unwrap();
}

#[test]
fn readme_session_over_xml_rpc() {
    let lab = Lab::start(false);
    let client = lab.client(Wire::XmlRpc);
    runtime().block_on(readme_session_starts_the_halted_vm(&client, &client));
}

#[test]
fn readme_session_over_json_rpc() {
    let lab = Lab::start(false);
    let client = lab.client(Wire::JsonRpc);
    runtime().block_on(readme_session_starts_the_halted_vm(&client, &client));
}

#[test]
fn readme_session_over_the_unix_socket() {
    let lab = Lab::start(false);
    let admin = lab.client(Wire::JsonRpc);
    runtime().block_on(async {
        for wire in [Wire::XmlRpc, Wire::JsonRpc] {
            let unix = Client::unix(lab.socket()).wire(wire).build().expect("unix client");
            readme_session_starts_the_halted_vm(&admin, &unix).await;
        }
    });
}

#[test]
fn https_with_the_daemons_certificate_or_accepting_any() {
    let lab = Lab::start(true);
    let port = lab.tls_port.expect("tls port");
    let cert = std::fs::read(lab.daemon.opts.state_dir.join("tls").join("xapid-cert.pem")).expect("certificate");
    runtime().block_on(async {
        let admin = lab.client(Wire::JsonRpc);
        // The self-signed certificate, trusted as a root; the session over both wires.
        for wire in [Wire::XmlRpc, Wire::JsonRpc] {
            let pinned = Client::builder(format!("https://localhost:{port}"))
                .add_root_certificate_pem(cert.clone())
                .without_system_roots()
                .wire(wire)
                .build()
                .expect("https client");
            readme_session_starts_the_halted_vm(&admin, &pinned).await;
        }
        // Accepting any certificate (a lab host), by address.
        let lab_client = Client::builder(format!("https://127.0.0.1:{port}"))
            .accept_invalid_certs(true)
            .build()
            .expect("https client");
        login(&lab_client).await.logout().await.expect("logout");
        // Trusting only the system's roots, the self-signed certificate is refused (or, on
        // a machine without system roots, the client cannot be built at all).
        match Client::builder(format!("https://localhost:{port}")).build() {
            Ok(strict) => {
                let refused = strict.login_with_password("root", PASSWORD, "2.21", "t").await;
                assert!(matches!(refused, Err(Error::Connect { .. })), "{refused:?}");
            }
            Err(e) => assert!(matches!(e, Error::Tls(_)), "{e:?}"),
        }
    });
}

/// Typed failures over both wires, from direct calls and from tasks.
#[test]
fn failures_carry_their_code_and_named_parameters() {
    let lab = Lab::start(false);
    runtime().block_on(async {
        let admin = login(&lab.client(Wire::JsonRpc)).await;
        let vm = install_vm(&admin, "error-vm").await;
        admin.vm().start(&vm, false, false).await.expect("start");
        for wire in [Wire::XmlRpc, Wire::JsonRpc] {
            let s = login(&lab.client(wire)).await;
            let e = s
                .vm()
                .start(&vm, false, false)
                .await
                .expect_err("a running VM cannot start");
            let api = e.api().unwrap_or_else(|| panic!("{wire:?}: {e}"));
            assert_eq!(api.code, ErrorCode::VmBadPowerState, "{wire:?}: {api}");
            assert_eq!(api.param("vm"), Some(vm.as_str()));
            assert_eq!(api.param("expected"), Some("halted"));
            assert_eq!(api.param("actual"), Some("running"));

            // The same failure, from the task of the Async. form.
            let task = s.vm().async_start(&vm, false, false).await.expect("Async.VM.start");
            let e = task.wait(&s).await.expect_err("the task fails");
            assert_eq!(
                e.api().map(|a| &a.code),
                Some(&ErrorCode::VmBadPowerState),
                "{wire:?}: {e}"
            );

            let bogus = VMRef::new("OpaqueRef:no-such-vm");
            let e = s.vm().get_record(&bogus).await.expect_err("no such VM");
            let api = e.api().unwrap_or_else(|| panic!("{wire:?}: {e}"));
            assert_eq!(api.code, ErrorCode::HandleInvalid);
            assert_eq!(api.param("class"), Some("VM"));
            assert_eq!(api.param("handle"), Some(bogus.as_str()));

            let wrong = Session::login_with_password(&lab.client(wire), "root", "not it", "2.21", "t").await;
            let e = wrong.expect_err("a wrong password");
            assert_eq!(
                e.api().map(|a| &a.code),
                Some(&ErrorCode::SessionAuthenticationFailed),
                "{e}"
            );

            // After logout the session's ref is refused.
            let same = s.clone();
            s.logout().await.unwrap();
            let e = same.vm().get_all().await.expect_err("logged out");
            let api = e.api().unwrap_or_else(|| panic!("{wire:?}: {e}"));
            assert_eq!(api.code, ErrorCode::SessionInvalid, "{api}");
            assert_eq!(api.param("handle"), Some(same.reference().as_str()));
        }
        discard_vm(&admin, &vm).await;
    });
}

/// Typed results of several shapes agree over both wires: maps of records, enums, ints,
/// floats, datetimes, sets of refs, and `Async.` results.
#[test]
fn both_wires_read_the_same_typed_values() {
    let lab = Lab::start(false);
    runtime().block_on(async {
        let xml = login(&lab.client(Wire::XmlRpc)).await;
        let json = login(&lab.client(Wire::JsonRpc)).await;
        let vm = install_vm(&json, "typed-vm").await;
        xml.vm()
            .set_name_description(&vm, "a <description> & \"quotes\"\r\nsecond line")
            .await
            .unwrap();
        xml.vm()
            .set_vcpus_max(&vm, 3)
            .await
            .unwrap_or_else(|e| panic!("set_VCPUs_max: {e}"));
        let other = BTreeMap::from([("k".to_owned(), "v é".to_owned())]);
        json.vm().set_other_config(&vm, &other).await.unwrap();

        let a = xml.vm().get_record(&vm).await.unwrap();
        let b = json.vm().get_record(&vm).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a.name_description, "a <description> & \"quotes\"\r\nsecond line");
        assert_eq!(a.vcpus_max, 3);
        assert_eq!(a.other_config, other);
        assert_eq!(a.power_state, VmPowerState::Halted);
        assert!(!a.is_a_template);
        assert_eq!(a.hvm_shadow_multiplier, 1.0);

        let all_xml = xml.vm().get_all_records().await.unwrap();
        let all_json = json.vm().get_all_records().await.unwrap();
        assert_eq!(all_xml, all_json);
        assert!(all_xml.contains_key(&vm));
        assert_eq!(xml.vm().get_all().await.unwrap(), json.vm().get_all().await.unwrap());
        let where_ = xml
            .vm()
            .get_all_records_where("field \"name__label\" = \"typed-vm\"")
            .await
            .unwrap();
        assert_eq!(where_.keys().collect::<Vec<_>>(), vec![&vm]);

        let host = xml.host().get_all().await.unwrap()[0].clone();
        let hx = xml.host().get_record(&host).await.unwrap();
        let hj = json.host().get_record(&host).await.unwrap();
        assert_eq!(hx, hj);
        assert!(!hx.uuid.is_empty());
        assert_eq!(
            xml.pool().get_all_records().await.unwrap(),
            json.pool().get_all_records().await.unwrap()
        );

        let task = json.vm().async_start(&vm, false, false).await.unwrap();
        let created = xml.task().get_created(task.task()).await.unwrap();
        assert!(created.unix() > 1_600_000_000, "{created}");
        task.wait(&xml).await.unwrap();
        let rec = xml.task().get_record(task.task()).await.unwrap();
        assert_eq!(rec, json.task().get_record(task.task()).await.unwrap());
        assert_eq!(rec.progress, 1.0);
        assert!(rec.finished >= rec.created);

        // A message this SDK does not type, untyped.
        let methods = xml.client().call_raw("system.listMethods", vec![]).await.unwrap();
        assert!(
            methods.as_array().is_some_and(|m| m.iter().any(|x| x == "VM.start")),
            "{methods}"
        );

        discard_vm(&json, &vm).await;
        xml.logout().await.unwrap();
        json.logout().await.unwrap();
    });
}

/// `event.from` as a stream: every VM first (add), then a change (mod) with its snapshot.
#[test]
fn the_event_stream_yields_current_objects_then_changes() {
    let lab = Lab::start(false);
    runtime().block_on(async {
        for wire in [Wire::XmlRpc, Wire::JsonRpc] {
            let s = login(&lab.client(wire)).await;
            let vms = s.vm().get_all().await.unwrap();
            let mut events = s.events(&["vm"]).timeout(5.0);
            let mut seen = Vec::new();
            while seen.len() < vms.len() {
                let e = tokio::time::timeout(Duration::from_secs(30), events.next())
                    .await
                    .expect("an event in time")
                    .expect("the stream goes on")
                    .expect("an event");
                assert_eq!(e.operation, EventOperation::Add, "{wire:?}: {e:?}");
                assert!(e.is::<xapi_sdk::class::VM>());
                let Some(AnyRecord::VM(rec)) = e.record().unwrap() else {
                    panic!("{wire:?}: no VM snapshot in {e:?}")
                };
                assert_eq!(rec.uuid, s.vm().get_uuid(&VMRef::new(e.r#ref.clone())).await.unwrap());
                seen.push(VMRef::new(e.r#ref.clone()));
            }
            seen.sort();
            let mut expected = vms.clone();
            expected.sort();
            assert_eq!(seen, expected, "{wire:?}");

            let name = format!("renamed over {wire:?}");
            s.vm().set_name_label(&vms[0], &name).await.unwrap();
            let e = loop {
                let e = tokio::time::timeout(Duration::from_secs(30), events.next())
                    .await
                    .expect("the change in time")
                    .expect("the stream goes on")
                    .expect("an event");
                if e.operation == EventOperation::Mod && e.r#ref == vms[0].as_str() {
                    break e;
                }
            };
            let rec = e
                .snapshot
                .as_ref()
                .expect("a snapshot")
                .decode::<xapi_sdk::class::VM>()
                .unwrap();
            assert_eq!(rec.name_label, name);
            assert!(!events.token().is_empty());

            // The typed batch, directly.
            let batch = s.event().from(&["vm".to_owned()], "", 0.0).await.unwrap();
            assert_eq!(batch.valid_ref_counts.get("vm"), Some(&(vms.len() as i64)), "{wire:?}");
            s.logout().await.unwrap();
        }
    });
}

/// The README's sessions are the ones these tests run.
#[test]
fn the_readme_holds_the_tested_sessions() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let here = include_str!("against_daemon.rs");
    for name in ["README session", "README xe session"] {
        let (begin, end) = (format!("// {name}: begin"), format!("// {name}: end"));
        let between = |text: &str| -> Vec<String> {
            let start = text.find(&begin).expect("begin marker");
            let stop = text.find(&end).expect("end marker");
            text[start..stop].lines().map(|l| l.trim().to_owned()).collect()
        };
        assert_eq!(between(&readme), between(here), "{name}");
    }
}

/// `docs/xe.md`'s session in Rust, as the README gives it, over XML-RPC, JSON-RPC and the unix
/// socket: what it leaves and what it wrote are checked.
#[test]
fn readme_xe_session_installs_exports_imports_and_destroys() {
    let lab = Lab::start(false);
    let clients = [
        lab.client(Wire::XmlRpc),
        lab.client(Wire::JsonRpc),
        Client::unix(lab.socket()).build().expect("unix client"),
    ];
    runtime().block_on(async {
        // The lab's template gets a 64 MiB disk instead of 10 GiB: the session is the same,
        // its export and import quicker.
        let admin = login(&clients[0]).await;
        let template = admin.vm().get_by_name_label(TEMPLATE).await.unwrap().remove(0);
        let other_config = admin.vm().get_other_config(&template).await.unwrap();
        let disks = other_config.get("disks").expect("the template names its disks");
        admin.vm().remove_from_other_config(&template, "disks").await.unwrap();
        let small = with_disk_size(disks, 64 << 20);
        admin
            .vm()
            .add_to_other_config(&template, "disks", &small)
            .await
            .unwrap();
        for client in &clients {
            let s = login(client).await;
            let before = s.vm().get_all_records().await.unwrap().len();
            let vdis = s.vdi().get_all().await.unwrap().len();
            let dir = tempfile::tempdir().unwrap();
            xe_session(&s, dir.path()).await.expect("the README's xe session");
            // The scratch disk came back byte for byte; the archive holds the VM.
            let sent = std::fs::read(dir.path().join("scratch.raw")).unwrap();
            assert_eq!(std::fs::read(dir.path().join("scratch-copy.raw")).unwrap(), sent);
            let xva = std::fs::read(dir.path().join("web.xva")).unwrap();
            assert!(
                xva.len() > 1024 && xva.windows(7).any(|w| w == b"ova.xml"),
                "{} bytes",
                xva.len()
            );
            // Everything it made is gone again.
            assert!(s.vm().get_by_name_label("web").await.unwrap().is_empty());
            assert_eq!(s.vm().get_all_records().await.unwrap().len(), before);
            assert_eq!(s.vdi().get_all().await.unwrap().len(), vdis);
            s.logout().await.unwrap();
        }
    });
}
