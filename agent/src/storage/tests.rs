//! End-to-end tests of the storage messages through the real dispatch, on an agent with a
//! temp state dir and the simulator backend.

use crate::hypervisor::{SimConfig, SimulatorBackend};
use crate::schema::{class_ids, fields};
use crate::value::Value;
use crate::{Agent, AgentConfig, ApiError, CallCtx};
use serde_json::{json, Value as Json};
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

pub(crate) struct Env {
    pub agent: Arc<Agent>,
    pub session: String,
    pub dir: tempfile::TempDir,
}

pub(crate) async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(AgentConfig {
        state_dir: dir.path().join("state"),
        root_password_file: None,
        hypervisor: Arc::new(SimulatorBackend::new(SimConfig::small_host())),
        host_address: "127.0.0.1".into(),
        server_identity: None,
    })
    .await
    .unwrap();
    let session = agent
        .sessions
        .login(&agent.store, &agent.host, "root", "", "storage-tests", true)
        .await
        .unwrap();
    Env { agent, session, dir }
}

impl Env {
    pub async fn call(&self, method: &str, mut params: Vec<Json>) -> Result<Value, ApiError> {
        params.insert(0, json!(self.session));
        crate::call(&self.agent, &CallCtx::default(), method, &params).await
    }
    pub async fn ok(&self, method: &str, params: Vec<Json>) -> Value {
        match self.call(method, params).await {
            Ok(v) => v,
            Err(e) => panic!("{method}: {e}"),
        }
    }
    pub async fn new_ref(&self, method: &str, params: Vec<Json>) -> String {
        self.ok(method, params).await.as_str().unwrap().to_owned()
    }
    /// A clone named `name` of the shipped template labelled `template`.
    pub async fn clone_template(&self, template: &str, name: &str) -> String {
        let tpl = self
            .agent
            .store
            .all(class_ids::VM)
            .into_iter()
            .find(|v| v.str_field("name_label") == template)
            .unwrap_or_else(|| panic!("no template {template:?}"));
        self.new_ref("VM.clone", vec![json!(tpl.reference.as_str()), json!(name)])
            .await
    }
    pub fn default_sr(&self) -> String {
        self.agent
            .store
            .all(class_ids::SR)
            .iter()
            .find(|s| s.str_field("name_label") == "Local storage")
            .unwrap()
            .reference
            .clone()
    }
    pub async fn create_vdi(&self, sr: &str, size: u64) -> String {
        self.new_ref(
            "VDI.create",
            vec![json!({
                "name_label": "disk", "name_description": "", "SR": sr,
                "virtual_size": size.to_string(), "type": "user", "sharable": false,
                "read_only": false, "other_config": {}
            })],
        )
        .await
    }
    pub fn int(&self, class: crate::schema::ClassId, r: &str, f: crate::schema::FieldId) -> i64 {
        self.agent.store.get(class, r).unwrap().get(f).as_int().unwrap()
    }
}

/// The SR's recorded totals are the sums over its VDIs' records (what a VDI operation now
/// updates without re-measuring every file).
fn sr_sums_agree(e: &Env, sr: &str) {
    let vdis: Vec<_> = e
        .agent
        .store
        .all(class_ids::VDI)
        .into_iter()
        .filter(|v| v.get(fields::VDI::SR).as_str() == Some(sr))
        .collect();
    let sum = |f| vdis.iter().map(|v| v.get(f).as_int().unwrap()).sum::<i64>();
    assert_eq!(
        e.int(class_ids::SR, sr, fields::SR::virtual_allocation),
        sum(fields::VDI::virtual_size)
    );
    assert_eq!(
        e.int(class_ids::SR, sr, fields::SR::physical_utilisation),
        sum(fields::VDI::physical_utilisation)
    );
}

fn write_at(path: &std::path::Path, off: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn read_at(path: &std::path::Path, off: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut b = vec![0; len];
    f.read_exact(&mut b).unwrap();
    b
}

#[actix::test]
async fn vdi_lifecycle_on_the_default_sr() {
    let e = env().await;
    let sr = e.default_sr();
    let vdi = e.create_vdi(&sr, 64 << 20).await;
    let path = super::vdi_path(&e.agent, &vdi).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    assert_eq!(e.int(class_ids::SR, &sr, fields::SR::virtual_allocation), 64 << 20);
    assert!(e.int(class_ids::SR, &sr, fields::SR::physical_size) > 0);
    // Utilisation follows allocated blocks.
    write_at(&path, 0, &vec![1u8; 4 << 20]);
    e.ok("VDI.update", vec![json!(vdi)]).await;
    let used = e.int(class_ids::VDI, &vdi, fields::VDI::physical_utilisation);
    assert!((4 << 20..8 << 20).contains(&used), "{used}");
    assert_eq!(e.int(class_ids::SR, &sr, fields::SR::physical_utilisation), used);

    // Grow; shrinking is refused.
    e.ok("VDI.resize", vec![json!(vdi), json!((128u64 << 20).to_string())])
        .await;
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 128 << 20);
    assert_eq!(e.int(class_ids::SR, &sr, fields::SR::virtual_allocation), 128 << 20);
    sr_sums_agree(&e, &sr);
    let err = e.call("VDI.resize", vec![json!(vdi), json!("1024")]).await.unwrap_err();
    assert_eq!(err.code(), "SR_BACKEND_FAILURE");

    // A snapshot keeps the bytes of its instant.
    let snap = e.new_ref("VDI.snapshot", vec![json!(vdi), json!({})]).await;
    write_at(&path, 0, &vec![2u8; 1 << 20]);
    let snap_path = super::vdi_path(&e.agent, &snap).unwrap();
    assert!(read_at(&snap_path, 0, 1 << 20).iter().all(|b| *b == 1));
    assert!(read_at(&path, 0, 1 << 20).iter().all(|b| *b == 2));
    let s = e.agent.store.get(class_ids::VDI, &snap).unwrap();
    assert_eq!(s.get(fields::VDI::is_a_snapshot), &Value::Bool(true));
    assert_eq!(s.get(fields::VDI::snapshot_of), &Value::Ref(vdi.clone().into()));
    let parent = e.agent.store.get(class_ids::VDI, &vdi).unwrap();
    assert_eq!(
        parent.get(fields::VDI::snapshots).as_set(),
        &[Value::Ref(snap.clone().into())]
    );

    // Clone and copy.
    let clone = e.new_ref("VDI.clone", vec![json!(vdi), json!({})]).await;
    let clone_path = super::vdi_path(&e.agent, &clone).unwrap();
    assert!(read_at(&clone_path, 0, 1 << 20).iter().all(|b| *b == 2));
    let copy = e
        .new_ref(
            "VDI.copy",
            vec![json!(snap), json!(sr), json!("OpaqueRef:NULL"), json!("OpaqueRef:NULL")],
        )
        .await;
    let copy_path = super::vdi_path(&e.agent, &copy).unwrap();
    assert!(read_at(&copy_path, 0, 1 << 20).iter().all(|b| *b == 1));
    // Copy over an existing VDI; too small a target is refused.
    let small = e.create_vdi(&sr, 1 << 20).await;
    let err = e
        .call(
            "VDI.copy",
            vec![json!(vdi), json!(sr), json!("OpaqueRef:NULL"), json!(small)],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "VDI_TOO_SMALL");
    e.ok(
        "VDI.copy",
        vec![json!(vdi), json!(sr), json!("OpaqueRef:NULL"), json!(copy)],
    )
    .await;
    assert!(read_at(&copy_path, 0, 1 << 20).iter().all(|b| *b == 2));
    sr_sums_agree(&e, &sr);
    let copy_used = e.int(class_ids::VDI, &copy, fields::VDI::physical_utilisation);
    assert!(copy_used >= 1 << 20, "{copy_used}");

    // In use: destroy is refused while a VBD has it attached.
    let vbd = e
        .new_ref(
            "VBD.create",
            vec![json!({
                "VM": e.agent.store.all(class_ids::VM).iter().find(|v| v.str_field("name_label").starts_with("Control")).unwrap().reference,
                "VDI": vdi, "userdevice": "1", "bootable": false, "mode": "RW", "type": "Disk",
                "unpluggable": true, "empty": false, "other_config": {}, "qos_algorithm_type": "",
                "qos_algorithm_params": {}
            })],
        )
        .await;
    let v = vbd.clone();
    e.agent
        .store
        .write(|tx| {
            crate::objects::set_field(
                tx,
                class_ids::VBD,
                &v,
                fields::VBD::currently_attached,
                Value::Bool(true),
            )
        })
        .await
        .unwrap();
    let err = e.call("VDI.destroy", vec![json!(vdi)]).await.unwrap_err();
    assert_eq!(err.code(), "VDI_IN_USE");
    let pbd = e
        .agent
        .store
        .get(class_ids::SR, &sr)
        .unwrap()
        .get(fields::SR::PBDs)
        .as_set()[0]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        e.call("PBD.unplug", vec![json!(pbd)]).await.unwrap_err().code(),
        "VDI_IN_USE"
    );
    let v = vbd.clone();
    e.agent
        .store
        .write(|tx| {
            crate::objects::set_field(
                tx,
                class_ids::VBD,
                &v,
                fields::VBD::currently_attached,
                Value::Bool(false),
            )
        })
        .await
        .unwrap();
    e.ok("VDI.destroy", vec![json!(vdi)]).await;
    assert!(!path.exists());
    assert!(e.agent.store.get(class_ids::VBD, &vbd).is_none());
    sr_sums_agree(&e, &sr);
    assert_eq!(
        e.call("VDI.destroy", vec![json!(vdi)]).await.unwrap_err().code(),
        "HANDLE_INVALID"
    );

    // data_destroy is for snapshots only (the reference's refusal).
    let err = e.call("VDI.data_destroy", vec![json!(clone)]).await.unwrap_err();
    assert_eq!(
        (err.code(), err.params()),
        ("OPERATION_NOT_ALLOWED", vec![format!("VDI is not a snapshot: {clone}")])
    );
    // forget keeps the file; scan brings the VDI back with its uuid.
    let clone_uuid = e
        .agent
        .store
        .get(class_ids::VDI, &clone)
        .unwrap()
        .uuid()
        .unwrap()
        .to_owned();
    e.ok("VDI.forget", vec![json!(clone)]).await;
    assert!(clone_path.exists());
    sr_sums_agree(&e, &sr);
    e.ok("SR.scan", vec![json!(sr)]).await;
    assert!(e.agent.store.ref_by_uuid(class_ids::VDI, &clone_uuid).is_some());
    sr_sums_agree(&e, &sr);
}

#[actix::test]
async fn on_boot_reset_puts_the_contents_back() {
    let e = env().await;
    let sr = e.default_sr();
    let vdi = e.create_vdi(&sr, 4 << 20).await;
    let path = super::vdi_path(&e.agent, &vdi).unwrap();
    write_at(&path, 0, b"golden");
    e.ok("VDI.set_on_boot", vec![json!(vdi), json!("reset")]).await;
    write_at(&path, 0, b"dirty!");
    let again = super::vdi_path(&e.agent, &vdi).unwrap();
    assert_eq!(read_at(&again, 0, 6), b"golden");
    assert_eq!(
        e.call("VDI.resize", vec![json!(vdi), json!("8388608")])
            .await
            .unwrap_err()
            .code(),
        "VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION"
    );
    e.ok("VDI.set_on_boot", vec![json!(vdi), json!("persist")]).await;
    write_at(&path, 0, b"kept!!");
    assert_eq!(read_at(&super::vdi_path(&e.agent, &vdi).unwrap(), 0, 6), b"kept!!");
}

#[actix::test]
async fn iso_sr_scan_finds_dropped_in_images() {
    let e = env().await;
    let lib = e.dir.path().join("isos");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(lib.join("debian.iso"), vec![5u8; 4096]).unwrap();
    let sr = e
        .new_ref(
            "SR.create",
            vec![
                json!(e.agent.host),
                json!({"location": lib.display().to_string()}),
                json!("0"),
                json!("ISOs"),
                json!(""),
                json!("iso"),
                json!("iso"),
                json!(false),
                json!({}),
            ],
        )
        .await;
    let names = |e: &Env| -> Vec<String> {
        e.agent
            .store
            .get(class_ids::SR, &sr)
            .unwrap()
            .get(fields::SR::VDIs)
            .as_set()
            .iter()
            .map(|v| {
                e.agent
                    .store
                    .get(class_ids::VDI, v.as_str().unwrap())
                    .unwrap()
                    .str_field("name_label")
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(names(&e), vec!["debian.iso"]);
    std::fs::write(lib.join("alpine.iso"), vec![6u8; 8192]).unwrap();
    std::fs::write(lib.join("notes.txt"), b"not an image").unwrap();
    e.ok("SR.scan", vec![json!(sr)]).await;
    let mut n = names(&e);
    n.sort();
    assert_eq!(n, vec!["alpine.iso", "debian.iso"]);
    let alpine = e
        .agent
        .store
        .all(class_ids::VDI)
        .into_iter()
        .find(|v| v.str_field("name_label") == "alpine.iso")
        .unwrap();
    assert_eq!(alpine.get(fields::VDI::virtual_size), &Value::Int(8192));
    assert_eq!(alpine.get(fields::VDI::read_only), &Value::Bool(true));
    assert_eq!(
        super::vdi_path(&e.agent, &alpine.reference).unwrap(),
        lib.join("alpine.iso")
    );
    // Read-only library: no new VDIs, no destroy.
    let err = e
        .call(
            "VDI.create",
            vec![json!({"name_label": "x", "name_description": "", "SR": sr,
        "virtual_size": "1024", "type": "user", "sharable": false, "read_only": false, "other_config": {}})],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "SR_OPERATION_NOT_SUPPORTED");
    // A removed file's VDI goes away on the next scan.
    std::fs::remove_file(lib.join("debian.iso")).unwrap();
    e.ok("SR.scan", vec![json!(sr)]).await;
    assert_eq!(names(&e), vec!["alpine.iso"]);
    // Copy an ISO into the file SR.
    let c = e
        .new_ref(
            "VDI.copy",
            vec![
                json!(alpine.reference),
                json!(e.default_sr()),
                json!("OpaqueRef:NULL"),
                json!("OpaqueRef:NULL"),
            ],
        )
        .await;
    assert_eq!(
        std::fs::read(super::vdi_path(&e.agent, &c).unwrap()).unwrap(),
        vec![6u8; 8192]
    );
    // Forget needs the PBD unplugged.
    assert_eq!(
        e.call("SR.forget", vec![json!(sr)]).await.unwrap_err().code(),
        "SR_HAS_PBD"
    );
    let pbd = e
        .agent
        .store
        .get(class_ids::SR, &sr)
        .unwrap()
        .get(fields::SR::PBDs)
        .as_set()[0]
        .as_str()
        .unwrap()
        .to_owned();
    e.ok("PBD.unplug", vec![json!(pbd)]).await;
    e.ok("SR.forget", vec![json!(sr)]).await;
    assert!(lib.join("alpine.iso").exists());
    assert!(e.agent.store.get(class_ids::PBD, &pbd).is_none());
}

#[actix::test]
async fn file_sr_create_plug_destroy() {
    let e = env().await;
    let loc = e.dir.path().join("sr2");
    let host = e.agent.host.clone();
    let err = e
        .call(
            "SR.create",
            vec![
                json!(host),
                json!({"location": loc.display().to_string()}),
                json!("0"),
                json!("x"),
                json!(""),
                json!("lvm"),
                json!("user"),
                json!(false),
                json!({}),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "SR_UNKNOWN_DRIVER");
    let sr = e
        .new_ref(
            "SR.create",
            vec![
                json!(host),
                json!({"location": loc.display().to_string()}),
                json!("0"),
                json!("second"),
                json!("desc"),
                json!("file"),
                json!("user"),
                json!(false),
                json!({}),
            ],
        )
        .await;
    assert!(loc.is_dir());
    let types = e.ok("SR.get_supported_types", vec![]).await;
    assert!(types.as_set().contains(&Value::str("file")));
    let probe = e
        .ok(
            "SR.probe",
            vec![
                json!(host),
                json!({"location": loc.display().to_string()}),
                json!("file"),
                json!({}),
            ],
        )
        .await;
    let uuid = e
        .agent
        .store
        .get(class_ids::SR, &sr)
        .unwrap()
        .uuid()
        .unwrap()
        .to_owned();
    assert!(probe.as_str().unwrap().contains(&uuid));
    let vdi = e.create_vdi(&sr, 1 << 20).await;
    let file = super::vdi_path(&e.agent, &vdi).unwrap();
    assert!(file.starts_with(&loc));
    assert_eq!(
        e.call("SR.destroy", vec![json!(sr)]).await.unwrap_err().code(),
        "SR_HAS_PBD"
    );
    let pbd = e
        .agent
        .store
        .get(class_ids::SR, &sr)
        .unwrap()
        .get(fields::SR::PBDs)
        .as_set()[0]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        e.call("PBD.destroy", vec![json!(pbd)]).await.unwrap_err().code(),
        "OPERATION_NOT_ALLOWED"
    );
    assert_eq!(
        e.call(
            "PBD.create",
            vec![json!({"host": host, "SR": sr, "device_config": {}, "other_config": {}})]
        )
        .await
        .unwrap_err()
        .code(),
        "PBD_EXISTS"
    );
    e.ok("PBD.unplug", vec![json!(pbd)]).await;
    assert_eq!(
        e.call("VDI.resize", vec![json!(vdi), json!("4194304")])
            .await
            .unwrap_err()
            .code(),
        "SR_HAS_NO_PBDS"
    );
    e.ok("PBD.plug", vec![json!(pbd)]).await;
    e.ok("PBD.unplug", vec![json!(pbd)]).await;
    e.ok("SR.destroy", vec![json!(sr)]).await;
    assert!(!file.exists());
    assert!(!loc.exists());
    assert!(e.agent.store.get(class_ids::SR, &sr).is_none());
    assert!(e.agent.store.get(class_ids::VDI, &vdi).is_none());
    // Introduce + PBD.create + plug finds the VDIs of an SR made elsewhere.
    let loc3 = e.dir.path().join("sr3");
    std::fs::create_dir_all(&loc3).unwrap();
    let u = uuid::Uuid::new_v4().to_string();
    std::fs::write(loc3.join(format!("{u}.img")), vec![0u8; 65536]).unwrap();
    let sr3 = e
        .new_ref(
            "SR.introduce",
            vec![
                json!(""),
                json!("intro"),
                json!(""),
                json!("file"),
                json!("user"),
                json!(false),
                json!({}),
            ],
        )
        .await;
    let pbd3 = e.new_ref("PBD.create", vec![json!({"host": host, "SR": sr3, "device_config": {"location": loc3.display().to_string()}, "other_config": {}})]).await;
    e.ok("PBD.plug", vec![json!(pbd3)]).await;
    let found = e.agent.store.ref_by_uuid(class_ids::VDI, &u).unwrap();
    assert_eq!(e.int(class_ids::VDI, &found, fields::VDI::virtual_size), 65536);
}

#[actix::test]
async fn import_then_export_returns_the_same_bytes() {
    use super::transfer::{ExportSource, ImportSink};
    let e = env().await;
    let sr = e.default_sr();
    let size = 5u64 << 20 | 4096;
    let vdi = e.create_vdi(&sr, size).await;
    let data: Vec<u8> = (0..size - 4096).map(|i| (i % 251) as u8).collect();
    let mut sink = ImportSink::open(&e.agent, &vdi).await.unwrap();
    // Odd chunk sizes, and a zero region that becomes a hole.
    for chunk in data.chunks(65_537) {
        sink.write(chunk).await.unwrap();
    }
    sink.write(&[0u8; 4096]).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), size);
    let mut src = ExportSource::open(&e.agent, &vdi).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = src.next_chunk().await {
        out.extend_from_slice(&c.unwrap());
    }
    assert_eq!(out.len() as u64, size);
    assert!(out[..data.len()] == data[..]);
    assert!(out[data.len()..].iter().all(|b| *b == 0));
    drop(src);
    // More than the VDI holds is refused before anything past the end is written.
    let mut sink = ImportSink::open(&e.agent, &vdi).await.unwrap();
    let err = sink.write(&vec![1u8; size as usize + 1]).await.unwrap_err();
    assert_eq!(err.code(), "VDI_TOO_SMALL");
    sink.abandon().await;
    assert_eq!(
        std::fs::metadata(super::vdi_path(&e.agent, &vdi).unwrap())
            .unwrap()
            .len(),
        size
    );
    // A sparse VDI exports its holes as zeros.
    let empty = e.create_vdi(&sr, 3 << 20).await;
    let mut src = ExportSource::open(&e.agent, &empty).await.unwrap();
    let mut n = 0;
    while let Some(c) = src.next_chunk().await {
        let c = c.unwrap();
        assert!(c.iter().all(|b| *b == 0));
        n += c.len();
    }
    assert_eq!(n, 3 << 20);
}

/// The store does not write the "many" ends of one-to-many relations (`SR.VDIs`, `VM.VBDs`,
/// `host.resident_VMs`…) and rebuilds them from the members when it loads; that is lossless
/// only while every such set lists exactly the objects that name its owner. Checked after
/// first boot and after a VM's life: clone, provision, devices, start, snapshot, copies
/// destroyed.
#[actix::test]
async fn derived_sets_agree_with_their_members() {
    let env = env().await;
    let store = &env.agent.store;
    assert_eq!(store.derived_set_mismatches(), Vec::<String>::new(), "after first boot");
    let tpl = store
        .all(class_ids::VM)
        .into_iter()
        .find(|v| v.str_field("name_label") == "Debian Bookworm 12")
        .unwrap()
        .reference
        .clone();
    let vm = env.new_ref("VM.clone", vec![json!(tpl), json!("derived")]).await;
    env.ok("VM.provision", vec![json!(vm)]).await;
    env.ok("VM.set_is_a_template", vec![json!(vm), json!(false)]).await;
    let net = store.all(class_ids::network)[0].reference.clone();
    env.ok(
        "VIF.create",
        vec![json!({
            "VM": vm, "network": net, "device": "0", "MAC": "", "MTU": 1500,
            "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}
        })],
    )
    .await;
    let vdi = env.create_vdi(&env.default_sr(), 1 << 20).await;
    env.ok(
        "VBD.create",
        vec![json!({
            "VM": vm, "VDI": vdi, "userdevice": "3", "bootable": false, "mode": "RW",
            "type": "Disk", "empty": false, "other_config": {},
            "qos_algorithm_type": "", "qos_algorithm_params": {}
        })],
    )
    .await;
    env.ok("VM.start", vec![json!(vm), json!(false), json!(false)]).await;
    assert_eq!(store.derived_set_mismatches(), Vec::<String>::new(), "running");
    let snap = env.new_ref("VM.snapshot", vec![json!(vm), json!("snap")]).await;
    env.ok("VM.hard_shutdown", vec![json!(vm)]).await;
    let copy = env.new_ref("VM.clone", vec![json!(vm), json!("copy")]).await;
    assert_eq!(
        store.derived_set_mismatches(),
        Vec::<String>::new(),
        "with a snapshot and a clone"
    );
    env.ok("VM.destroy", vec![json!(copy)]).await;
    env.ok("VM.destroy", vec![json!(snap)]).await;
    assert_eq!(store.derived_set_mismatches(), Vec::<String>::new(), "after destroys");
    // And the check sees a set that has lost a member.
    store
        .write(|tx| {
            tx.modify(class_ids::network, &net, |o| {
                o.set(fields::network::VIFs, Value::set(vec![]))
            })
        })
        .await
        .unwrap();
    assert_eq!(store.derived_set_mismatches().len(), 1);
}

/// Makes an `iso` SR on a library holding one image; returns the SR and the image's VDI.
async fn iso_sr(e: &Env) -> (String, String) {
    let lib = e.dir.path().join("isos");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(lib.join("boot.iso"), vec![7u8; 4096]).unwrap();
    let sr = e
        .new_ref(
            "SR.create",
            vec![
                json!(e.agent.host),
                json!({"location": lib.display().to_string()}),
                json!("0"),
                json!("ISOs"),
                json!(""),
                json!("iso"),
                json!("iso"),
                json!(false),
                json!({}),
            ],
        )
        .await;
    let vdi = e
        .agent
        .store
        .get(class_ids::SR, &sr)
        .unwrap()
        .get(fields::SR::VDIs)
        .as_set()[0]
        .as_str()
        .unwrap()
        .to_owned();
    (sr, vdi)
}

fn sm_of(e: &Env, ty: &str) -> Arc<crate::value::Object> {
    let sms: Vec<_> = e
        .agent
        .store
        .all(class_ids::SM)
        .into_iter()
        .filter(|o| o.str_field("type") == ty)
        .collect();
    assert_eq!(sms.len(), 1, "one SM record of type {ty}");
    sms[0].clone()
}

fn features_of(sm: &crate::value::Object) -> Vec<(String, i64)> {
    sm.get(fields::SM::features)
        .as_map()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.as_int().unwrap()))
        .collect()
}

fn names(v: &Value) -> Vec<String> {
    v.as_set().iter().map(|x| x.as_str().unwrap().to_owned()).collect()
}

#[actix::test]
async fn sm_records_advertise_what_each_driver_does() {
    let e = env().await;
    let file = sm_of(&e, "file");
    let one = |names: &[&str]| names.iter().map(|n| (n.to_string(), 1)).collect::<Vec<_>>();
    let mut want = one(&[
        "SR_ATTACH",
        "SR_CREATE",
        "SR_DELETE",
        "SR_DETACH",
        "SR_PROBE",
        "SR_SCAN",
        "SR_UPDATE",
        "THIN_PROVISIONING",
        "VDI_ATTACH",
        "VDI_CLONE",
        "VDI_CONFIG_CBT",
        "VDI_CREATE",
        "VDI_DELETE",
        "VDI_DETACH",
        "VDI_INTRODUCE",
    ]);
    want.push(("VDI_RESET_ON_BOOT".into(), 2));
    want.extend(one(&["VDI_RESIZE", "VDI_SNAPSHOT", "VDI_UPDATE"]));
    assert_eq!(features_of(&file), want);
    let iso = sm_of(&e, "iso");
    assert_eq!(
        features_of(&iso),
        one(&[
            "SR_ATTACH",
            "SR_CREATE",
            "SR_DETACH",
            "SR_PROBE",
            "SR_SCAN",
            "SR_UPDATE",
            "VDI_ATTACH",
            "VDI_DETACH",
            "VDI_INTRODUCE",
            "VDI_UPDATE",
        ])
    );
    for sm in [&file, &iso] {
        // The deprecated capabilities are the features' names.
        let caps = names(sm.get(fields::SM::capabilities));
        let keys: Vec<String> = features_of(sm).into_iter().map(|(k, _)| k).collect();
        assert_eq!(caps, keys);
        // Not implemented here, so never advertised (changed-block tracking: on the
        // simulator's file driver only, where every write is seen).
        if sm.reference == iso.reference {
            assert!(!keys.iter().any(|k| k == "VDI_CONFIG_CBT"));
        }
        for absent in ["VDI_RESIZE_ONLINE", "VDI_GENERATE_CONFIG", "VDI_MIRROR"] {
            assert!(!keys.iter().any(|k| k == absent), "{absent}");
        }
        assert_eq!(sm.str_field("vendor"), "xapid");
    }
    // What the SRs and VDIs allow follows the same tables.
    let sr = e.default_sr();
    let sr_ops = names(
        e.agent
            .store
            .get(class_ids::SR, &sr)
            .unwrap()
            .get(fields::SR::allowed_operations),
    );
    for op in [
        "vdi_create",
        "vdi_destroy",
        "vdi_resize",
        "vdi_snapshot",
        "vdi_set_on_boot",
        "destroy",
    ] {
        assert!(sr_ops.iter().any(|o| o == op), "{op} in {sr_ops:?}");
    }
    for op in ["vdi_data_destroy", "vdi_enable_cbt"] {
        assert!(sr_ops.iter().any(|o| o == op), "{op} in {sr_ops:?}");
    }
    assert!(!sr_ops.iter().any(|o| o == "vdi_mirror"), "vdi_mirror in {sr_ops:?}");
    let vdi = e.create_vdi(&sr, 1 << 20).await;
    let vdi_ops = |e: &Env, v: &str| {
        names(
            e.agent
                .store
                .get(class_ids::VDI, v)
                .unwrap()
                .get(fields::VDI::allowed_operations),
        )
    };
    assert_eq!(
        vdi_ops(&e, &vdi),
        ["clone", "copy", "resize", "snapshot", "destroy", "forget", "update"]
    );
    let (iso_sr, iso_vdi) = iso_sr(&e).await;
    let iso_ops = names(
        e.agent
            .store
            .get(class_ids::SR, &iso_sr)
            .unwrap()
            .get(fields::SR::allowed_operations),
    );
    for op in [
        "vdi_create",
        "vdi_destroy",
        "vdi_resize",
        "vdi_snapshot",
        "vdi_set_on_boot",
        "destroy",
    ] {
        assert!(!iso_ops.iter().any(|o| o == op), "{op} in {iso_ops:?}");
    }
    for op in ["scan", "forget", "plug", "unplug", "update", "vdi_introduce"] {
        assert!(iso_ops.iter().any(|o| o == op), "{op} in {iso_ops:?}");
    }
    assert_eq!(vdi_ops(&e, &iso_vdi), ["copy", "forget", "update"]);
}

#[actix::test]
async fn operations_the_driver_lacks_answer_sr_operation_not_supported() {
    let e = env().await;
    let (iso, image) = iso_sr(&e).await;
    let refused = |err: ApiError, sr: &str| {
        assert_eq!(
            (err.code(), err.params()),
            ("SR_OPERATION_NOT_SUPPORTED", vec![sr.to_owned()])
        )
    };
    for (method, params) in [
        ("VDI.resize", vec![json!(image), json!("1048576")]),
        ("VDI.resize_online", vec![json!(image), json!("1048576")]),
        ("VDI.destroy", vec![json!(image)]),
        ("VDI.snapshot", vec![json!(image), json!({})]),
        ("VDI.clone", vec![json!(image), json!({})]),
        ("VDI.set_on_boot", vec![json!(image), json!("reset")]),
        ("VDI.data_destroy", vec![json!(image)]),
        (
            "VDI.create",
            vec![json!({"name_label": "x", "name_description": "", "SR": iso,
                "virtual_size": "1024", "type": "user", "sharable": false, "read_only": false,
                "other_config": {}})],
        ),
    ] {
        let err = e.call(method, params).await.expect_err(method);
        refused(err, &iso);
    }
    // The driver's answer comes before the SR's state: its PBD is still plugged.
    refused(e.call("SR.destroy", vec![json!(iso)]).await.unwrap_err(), &iso);
    // Copying a file VDI into the library would create a VDI there.
    let sr = e.default_sr();
    let disk = e.create_vdi(&sr, 1 << 20).await;
    refused(
        e.call(
            "VDI.copy",
            vec![
                json!(disk),
                json!(iso),
                json!("OpaqueRef:NULL"),
                json!("OpaqueRef:NULL"),
            ],
        )
        .await
        .unwrap_err(),
        &iso,
    );
    // The file driver: no online resize.
    refused(
        e.call("VDI.resize_online", vec![json!(disk), json!("2097152")])
            .await
            .unwrap_err(),
        &sr,
    );
    refused(e.call("VDI.enable_cbt", vec![json!(image)]).await.unwrap_err(), &iso);
    refused(e.call("VDI.disable_cbt", vec![json!(image)]).await.unwrap_err(), &iso);
    assert_eq!(e.int(class_ids::VDI, &disk, fields::VDI::virtual_size), 1 << 20);
    // What the drivers do still works.
    e.ok("VDI.update", vec![json!(image)]).await;
    e.ok("VDI.resize", vec![json!(disk), json!("2097152")]).await;
    assert_eq!(e.int(class_ids::VDI, &disk, fields::VDI::virtual_size), 2 << 20);
}

#[actix::test]
async fn offline_resize_is_refused_while_attached() {
    let e = env().await;
    let sr = e.default_sr();
    let vdi = e.create_vdi(&sr, 1 << 20).await;
    let dom0 = e
        .agent
        .store
        .all(class_ids::VM)
        .iter()
        .find(|v| v.get(fields::VM::is_control_domain) == &Value::Bool(true))
        .unwrap()
        .reference
        .clone();
    let vbd = e
        .new_ref(
            "VBD.create",
            vec![json!({
                "VM": dom0, "VDI": vdi, "userdevice": "1", "bootable": false, "mode": "RW",
                "type": "Disk", "unpluggable": true, "empty": false, "other_config": {},
                "qos_algorithm_type": "", "qos_algorithm_params": {}
            })],
        )
        .await;
    e.agent
        .store
        .write(|tx| {
            crate::objects::set_field(
                tx,
                class_ids::VBD,
                &vbd,
                fields::VBD::currently_attached,
                Value::Bool(true),
            )?;
            super::vdi::refresh_allowed_operations(tx, [&Value::reference(vbd.as_str())])
        })
        .await
        .unwrap();
    let err = e
        .call("VDI.resize", vec![json!(vdi), json!("2097152")])
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.params()),
        ("VDI_IN_USE", vec![vdi.clone(), "resize".into()])
    );
    assert_eq!(e.int(class_ids::VDI, &vdi, fields::VDI::virtual_size), 1 << 20);
    assert_eq!(
        names(
            e.agent
                .store
                .get(class_ids::VDI, &vdi)
                .unwrap()
                .get(fields::VDI::allowed_operations)
        ),
        ["clone", "copy", "snapshot", "update"]
    );
}

/// A store written by an older build (SM records without features, other
/// `allowed_operations`) is brought up to this build's tables at start.
#[actix::test]
async fn an_old_store_gets_the_features_at_start() {
    let e = env().await;
    let sr = e.default_sr();
    let vdi = e.create_vdi(&sr, 1 << 20).await;
    let file_sm = sm_of(&e, "file").reference.clone();
    let iso_sm = sm_of(&e, "iso").reference.clone();
    use crate::schema::enums::{StorageOperations, VdiOperations};
    let old_sr_ops = Value::set(vec![StorageOperations::vdi_data_destroy.value()]);
    let old_ops = Value::set(vec![
        VdiOperations::data_destroy.value(),
        VdiOperations::set_on_boot.value(),
    ]);
    e.agent
        .store
        .write(|tx| {
            use crate::objects::{destroy, set_field};
            set_field(tx, class_ids::SM, &file_sm, fields::SM::features, Value::map(vec![]))?;
            set_field(
                tx,
                class_ids::SM,
                &file_sm,
                fields::SM::capabilities,
                Value::set(vec![]),
            )?;
            destroy(tx, class_ids::SM, &iso_sm)?;
            set_field(
                tx,
                class_ids::SR,
                &sr,
                fields::SR::allowed_operations,
                old_sr_ops.clone(),
            )?;
            set_field(
                tx,
                class_ids::VDI,
                &vdi,
                fields::VDI::allowed_operations,
                old_ops.clone(),
            )
        })
        .await
        .unwrap();
    // What start does with a store that has its pool already.
    let facts = crate::HostFacts::from_backend(&SimulatorBackend::new(SimConfig::small_host())).unwrap();
    let state_dir = e.dir.path().join("state");
    let (pool, host) = crate::first_boot::ensure(&e.agent.store, &facts, &state_dir)
        .await
        .unwrap();
    assert_eq!((pool, host), (e.agent.pool_ref(), e.agent.host.clone()));
    let table = |kind| -> Vec<(String, i64)> {
        super::features::driver_features(kind)
            .iter()
            .map(|(f, v)| (f.name().to_owned(), *v))
            .collect()
    };
    let file = sm_of(&e, "file");
    assert_eq!(file.reference, file_sm, "the record is kept, not replaced");
    assert_eq!(features_of(&file), table(super::SrKind::File));
    assert_eq!(
        names(file.get(fields::SM::capabilities)).len(),
        table(super::SrKind::File).len()
    );
    assert_eq!(features_of(&sm_of(&e, "iso")), table(super::SrKind::Iso));
    let store = &e.agent.store;
    assert_eq!(
        store
            .get(class_ids::SR, &sr)
            .unwrap()
            .get(fields::SR::allowed_operations),
        &super::features::sr_allowed_operations(super::SrKind::File)
    );
    assert_eq!(
        names(
            store
                .get(class_ids::VDI, &vdi)
                .unwrap()
                .get(fields::VDI::allowed_operations)
        ),
        ["clone", "copy", "resize", "snapshot", "destroy", "forget", "update"]
    );
}
