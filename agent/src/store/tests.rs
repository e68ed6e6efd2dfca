use super::derived::stored_fields_differ;
use super::redb_backend::{open_db, OBJECTS};
use super::*;
use crate::schema::{class_ids, fields};
use crate::value::{default_object, Value};

fn network(r: &str, uuid: &str, name: &str) -> Object {
    let mut o = default_object(class_ids::network, r);
    o.set(fields::network::uuid, Value::str(uuid));
    o.set(fields::network::name_label, Value::str(name));
    o
}

#[tokio::test]
async fn writes_survive_reopen_and_ephemeral_classes_do_not() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(Some(dir.path())).unwrap();
        store
            .write(|tx| {
                tx.put(network("OpaqueRef:n1", "u1", "net one"));
                tx.put(default_object(class_ids::session, "OpaqueRef:s1"));
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(store.events().latest(), 2);
    }
    let store = Store::open(Some(dir.path())).unwrap();
    let n = store.get(class_ids::network, "OpaqueRef:n1").unwrap();
    assert_eq!(n.str_field("name_label"), "net one");
    assert_eq!(
        store.ref_by_uuid(class_ids::network, "u1").as_deref(),
        Some("OpaqueRef:n1")
    );
    assert!(store.get(class_ids::session, "OpaqueRef:s1").is_none());
}

/// `network.VIFs` is the members' `VIF.network` read the other way: it is not written, and
/// a reopened store lists exactly the VIFs that name the network (a stale or duplicate
/// entry a store of an older build wrote is dropped), in ref order.
#[tokio::test]
async fn derived_sets_are_rebuilt_from_their_members_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let vif = |r: &str, net: &str| {
        let mut o = default_object(class_ids::VIF, r);
        o.set(fields::VIF::network, Value::Ref(net.into()));
        o
    };
    let vifs = |refs: &[&str]| Value::Set(refs.iter().map(|r| Value::Ref((*r).into())).collect());
    {
        let store = Store::open(Some(dir.path())).unwrap();
        store
            .write(|tx| {
                let mut n = network("OpaqueRef:n1", "u1", "one");
                n.set(
                    fields::network::VIFs,
                    vifs(&["OpaqueRef:v2", "OpaqueRef:gone", "OpaqueRef:v1", "OpaqueRef:v1"]),
                );
                tx.put(n);
                tx.put(network("OpaqueRef:n2", "u2", "two"));
                tx.put(vif("OpaqueRef:v2", "OpaqueRef:n1"));
                tx.put(vif("OpaqueRef:v1", "OpaqueRef:n1"));
                tx.put(vif("OpaqueRef:v3", "OpaqueRef:NULL"));
                Ok(())
            })
            .await
            .unwrap();
    }
    let db = open_db(&dir.path().join("xapid.redb")).unwrap();
    let stored = db.begin_read().unwrap().open_table(OBJECTS).unwrap();
    let n1 = stored.get("network/OpaqueRef:n1").unwrap().unwrap();
    let text = std::str::from_utf8(n1.value()).unwrap().to_owned();
    assert!(text.contains("\"name_label\":\"one\""), "{text}");
    assert!(!text.contains("VIFs"), "{text}");
    drop((stored, db));
    let store = Store::open(Some(dir.path())).unwrap();
    let n1 = store.get(class_ids::network, "OpaqueRef:n1").unwrap();
    assert_eq!(*n1.get(fields::network::VIFs), vifs(&["OpaqueRef:v1", "OpaqueRef:v2"]));
    assert_eq!(n1.str_field("name_label"), "one");
    let n2 = store.get(class_ids::network, "OpaqueRef:n2").unwrap();
    assert_eq!(*n2.get(fields::network::VIFs), vifs(&[]));
}

/// Fields at their defaults are left out of the stored record and come back as they were:
/// a reopened store holds every field as written, including one set back to its default.
#[tokio::test]
async fn fields_at_their_defaults_are_not_stored_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = default_object(class_ids::VM, "OpaqueRef:vm1");
    vm.set(fields::VM::uuid, Value::str("u-vm1"));
    vm.set(fields::VM::name_label, Value::str("web"));
    vm.set(fields::VM::memory_static_max, Value::Int(1 << 30));
    vm.set(
        fields::VM::power_state,
        crate::schema::enums::VmPowerState::Running.value(),
    );
    vm.set(
        fields::VM::other_config,
        Value::map(vec![(Value::str("k"), Value::str("v"))]),
    );
    {
        let store = Store::open(Some(dir.path())).unwrap();
        let mut described = vm.clone();
        described.set(fields::VM::name_description, Value::str("soon empty again"));
        store
            .write(|tx| {
                tx.put(described.clone());
                Ok(())
            })
            .await
            .unwrap();
        store
            .write(|tx| {
                tx.put(vm.clone());
                Ok(())
            })
            .await
            .unwrap();
    }
    let db = open_db(&dir.path().join("xapid.redb")).unwrap();
    let stored = db.begin_read().unwrap().open_table(OBJECTS).unwrap();
    let text = std::str::from_utf8(stored.get("VM/OpaqueRef:vm1").unwrap().unwrap().value())
        .unwrap()
        .to_owned();
    assert!(text.contains("\"name_label\":\"web\""), "{text}");
    assert!(text.contains("\"power_state\":\"Running\""), "{text}");
    assert!(!text.contains("name_description"), "{text}");
    assert!(!text.contains("is_a_template"), "{text}");
    let full = {
        let mut t = String::new();
        crate::value::write_record_json(&vm, &mut t);
        t
    };
    assert!(
        text.len() * 4 < full.len(),
        "stored {} bytes, whole record {}",
        text.len(),
        full.len()
    );
    drop((stored, db));
    let store = Store::open(Some(dir.path())).unwrap();
    let back = store.get(class_ids::VM, "OpaqueRef:vm1").unwrap();
    assert_eq!(back.fields, vm.fields);
}

/// A write that changes only derived sets reaches no disk; any other change does, and a
/// reopened store holds the last stored state with its sets rebuilt from the members.
#[tokio::test]
async fn changes_to_derived_sets_alone_are_not_written() {
    let net = network("OpaqueRef:n1", "u1", "one");
    let mut grown = net.clone();
    grown.set(
        fields::network::VIFs,
        Value::set(vec![Value::Ref("OpaqueRef:v1".into())]),
    );
    assert!(!stored_fields_differ(&net, &grown));
    assert!(!stored_fields_differ(&net, &net.clone()));
    let mut renamed = grown.clone();
    renamed.set(fields::network::name_label, Value::str("two"));
    assert!(stored_fields_differ(&grown, &renamed));
    assert!(stored_fields_differ(&net, &renamed));

    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(Some(dir.path())).unwrap();
        store
            .write(|tx| {
                tx.put(net.clone());
                Ok(())
            })
            .await
            .unwrap();
        let queued = |store: &Store, change: Object| {
            let mut tx = Tx::new(store, false);
            tx.put(change);
            let backend = store.backend.read().clone();
            let mut generation = store.commit.lock();
            store.apply(&backend, &mut generation, tx, true).0.is_some()
        };
        assert!(
            !queued(&store, grown.clone()),
            "a derived-set change was queued for the disk"
        );
        assert!(
            queued(&store, renamed.clone()),
            "a stored change was not queued for the disk"
        );
    }
    let store = Store::open(Some(dir.path())).unwrap();
    let n1 = store.get(class_ids::network, "OpaqueRef:n1").unwrap();
    assert_eq!(n1.str_field("name_label"), "two");
    assert_eq!(*n1.get(fields::network::VIFs), Value::set(vec![]));
}

#[test]
fn derived_sets_are_the_many_ends_of_one_to_many_relations() {
    use crate::schema::derived_sets;
    assert!(derived_sets(class_ids::SR).contains(&fields::SR::VDIs));
    assert!(derived_sets(class_ids::network).contains(&fields::network::VIFs));
    assert!(derived_sets(class_ids::VM).contains(&fields::VM::VBDs));
    assert!(derived_sets(class_ids::host).contains(&fields::host::resident_VMs));
    // The "one" ends stay stored.
    assert!(!derived_sets(class_ids::VDI).contains(&fields::VDI::SR));
    assert!(derived_sets(class_ids::VIF).is_empty());
}

#[tokio::test]
async fn failed_transactions_change_nothing() {
    let store = Store::open(None).unwrap();
    let r: Result<(), ApiError> = store
        .write(|tx| {
            tx.put(network("OpaqueRef:n1", "u1", "x"));
            Err(ApiError::internal("no"))
        })
        .await;
    assert!(r.is_err());
    assert!(store.get(class_ids::network, "OpaqueRef:n1").is_none());
    assert_eq!(store.events().latest(), 0);
}

#[tokio::test]
async fn refs_and_uuids_follow_changes() {
    let store = Store::open(None).unwrap();
    store
        .write(|tx| {
            tx.put(network("OpaqueRef:n1", "u1", "one"));
            tx.put(network("OpaqueRef:n2", "u2", "two"));
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(store.count(class_ids::network), 2);
    store
        .write(|tx| {
            tx.modify(class_ids::network, "OpaqueRef:n1", |o| {
                o.set(fields::network::uuid, Value::str("u3"))
            })
        })
        .await
        .unwrap();
    assert_eq!(store.ref_by_uuid(class_ids::network, "u1"), None);
    assert_eq!(
        store.ref_by_uuid(class_ids::network, "u3").as_deref(),
        Some("OpaqueRef:n1")
    );
    assert_eq!(
        store.get(class_ids::network, "OpaqueRef:n1").unwrap().str_field("uuid"),
        "u3"
    );
    store
        .write(|tx| {
            tx.delete(class_ids::network, "OpaqueRef:n2");
            Ok(())
        })
        .await
        .unwrap();
    assert!(store.get(class_ids::network, "OpaqueRef:n2").is_none());
    assert_eq!(store.ref_by_uuid(class_ids::network, "u2"), None);
    let all = store.all(class_ids::network);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].reference, "OpaqueRef:n1");
    // A replaced object is the one found by both ref and uuid.
    store
        .write(|tx| {
            tx.put(network("OpaqueRef:n1", "u3", "renamed"));
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .get(class_ids::network, "OpaqueRef:n1")
            .unwrap()
            .str_field("name_label"),
        "renamed"
    );
    assert_eq!(
        store.ref_by_uuid(class_ids::network, "u3").as_deref(),
        Some("OpaqueRef:n1")
    );
}

#[test]
fn undo_puts_back_refs_and_uuids() {
    let store = Store::open(None).unwrap();
    let mut generation = 0;
    let mut tx = Tx::new(&store, false);
    tx.put(network("OpaqueRef:n1", "u1", "one"));
    let (_, undo) = store.apply(&Backend::Memory, &mut generation, tx, false);
    let mut tx = Tx::new(&store, false);
    tx.put(network("OpaqueRef:n1", "u9", "changed"));
    tx.put(network("OpaqueRef:n2", "u2", "two"));
    let (_, undo2) = store.apply(&Backend::Memory, &mut generation, tx, false);
    assert_eq!(
        store.ref_by_uuid(class_ids::network, "u9").as_deref(),
        Some("OpaqueRef:n1")
    );
    store.undo(undo2);
    assert_eq!(
        store
            .get(class_ids::network, "OpaqueRef:n1")
            .unwrap()
            .str_field("name_label"),
        "one"
    );
    assert!(store.get(class_ids::network, "OpaqueRef:n2").is_none());
    assert_eq!(
        store.ref_by_uuid(class_ids::network, "u1").as_deref(),
        Some("OpaqueRef:n1")
    );
    assert_eq!(store.ref_by_uuid(class_ids::network, "u9"), None);
    assert_eq!(store.ref_by_uuid(class_ids::network, "u2"), None);
    store.undo(undo);
    assert_eq!(store.count(class_ids::network), 0);
    assert_eq!(store.ref_by_uuid(class_ids::network, "u1"), None);
}
