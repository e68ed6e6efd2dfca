//! The etcd backend against a real etcd (Debian `etcd-server`, which `scripts/test.sh`
//! installs): two stores on one etcd stand for two hosts of a pool.

use super::etcd_member::{LocalMember, MemberConfig};
use super::*;
use crate::schema::{class_ids, fields};
use crate::value::{default_object, Value};
use std::time::Duration;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A one-member etcd under a temporary dir, and its config.
fn etcd(dir: &tempfile::TempDir) -> (LocalMember, EtcdConfig) {
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let member = LocalMember::start(MemberConfig::single("m1", dir.path().join("etcd"), &client, &peer)).unwrap();
    (member, EtcdConfig::new(vec![client]))
}

/// Opens a store on `cfg`, waiting for the member to answer.
async fn open(cfg: &EtcdConfig) -> Store {
    for _ in 0..100 {
        if let Ok(s) = Store::open_etcd(cfg).await {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd at {:?} never answered", cfg.endpoints);
}

fn network(r: &str, uuid: &str, name: &str) -> Object {
    let mut o = default_object(class_ids::network, r);
    o.set(fields::network::uuid, Value::str(uuid));
    o.set(fields::network::name_label, Value::str(name));
    o
}

async fn wait_for(store: &Store, what: impl Fn(&Store) -> bool) {
    for _ in 0..100 {
        if what(store) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the other host's view never caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_sees_every_write_in_one_order_with_revisions_as_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (_member, cfg) = etcd(&dir);
    let a = open(&cfg).await;
    let b = open(&cfg).await;
    let start = a.events().latest();
    a.write(|tx| {
        tx.put(network("OpaqueRef:n1", "u1", "from a"));
        Ok(())
    })
    .await
    .unwrap();
    // Acknowledged only once in a's own view.
    let n1 = a.get(class_ids::network, "OpaqueRef:n1").unwrap();
    assert_eq!(n1.str_field("name_label"), "from a");
    assert!(n1.generation > start);
    // b's view follows a's write through its watch: a write on b reading n1 before then would
    // find no n1 (HANDLE_INVALID), not a conflict.
    wait_for(&b, |s| s.get(class_ids::network, "OpaqueRef:n1").is_some()).await;
    b.write(|tx| {
        tx.put(network("OpaqueRef:n2", "u2", "from b"));
        tx.modify(class_ids::network, "OpaqueRef:n1", |o| {
            o.set(fields::network::name_label, Value::str("renamed by b"))
        })
    })
    .await
    .unwrap();
    b.write(|tx| {
        tx.delete(class_ids::network, "OpaqueRef:n2");
        Ok(())
    })
    .await
    .unwrap();
    let last = b.events().latest();
    wait_for(&a, |a| a.events().latest() >= last).await;
    assert_eq!(
        a.get(class_ids::network, "OpaqueRef:n1")
            .unwrap()
            .str_field("name_label"),
        "renamed by b"
    );
    assert!(a.get(class_ids::network, "OpaqueRef:n2").is_none());
    assert_eq!(a.ref_by_uuid(class_ids::network, "u1").as_deref(), Some("OpaqueRef:n1"));
    // Both logs hold the same changes with the same ids: one order, one token space.
    let log = |s: &Store| -> Vec<(u64, String, &'static str)> {
        s.events()
            .since(start)
            .unwrap()
            .into_iter()
            .map(|e| (e.id, e.reference, e.op.as_str()))
            .collect()
    };
    let on_a = log(&a);
    assert_eq!(on_a, log(&b));
    let ops: Vec<(&str, &str)> = on_a.iter().map(|(_, r, op)| (r.as_str(), *op)).collect();
    assert_eq!(
        ops,
        [
            ("OpaqueRef:n1", "add"),
            ("OpaqueRef:n2", "add"),
            ("OpaqueRef:n1", "mod"),
            ("OpaqueRef:n2", "del")
        ]
    );
    // b's transaction is one etcd revision; the ids are the objects' generations.
    assert_eq!(on_a[1].0, on_a[2].0);
    assert!(on_a[0].0 < on_a[1].0 && on_a[2].0 < on_a[3].0);
    assert_eq!(a.get(class_ids::network, "OpaqueRef:n1").unwrap().generation, on_a[2].0);
}

/// Two hosts incrementing one counter at once: every increment reads the counter and writes it
/// back; a write whose read changed under it is run again, so none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_writes_are_run_again_and_none_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (_member, cfg) = etcd(&dir);
    let a = Arc::new(open(&cfg).await);
    let b = Arc::new(open(&cfg).await);
    a.write(|tx| {
        tx.put(network("OpaqueRef:c", "uc", "0"));
        Ok(())
    })
    .await
    .unwrap();
    let per_host = 25;
    let bump = |s: Arc<Store>| {
        tokio::spawn(async move {
            for _ in 0..per_host {
                s.write(|tx| {
                    let n: u64 = tx
                        .must_get(class_ids::network, "OpaqueRef:c")?
                        .str_field("name_label")
                        .parse()
                        .map_err(|_| ApiError::internal("not a number"))?;
                    tx.modify(class_ids::network, "OpaqueRef:c", |o| {
                        o.set(fields::network::name_label, Value::str((n + 1).to_string()))
                    })
                })
                .await
                .unwrap();
            }
        })
    };
    let (ra, rb) = tokio::join!(bump(a.clone()), bump(b.clone()));
    ra.unwrap();
    rb.unwrap();
    let want = (2 * per_host).to_string();
    wait_for(&a, |a| {
        a.get(class_ids::network, "OpaqueRef:c")
            .unwrap()
            .str_field("name_label")
            == want
    })
    .await;
    wait_for(&b, |b| {
        b.get(class_ids::network, "OpaqueRef:c")
            .unwrap()
            .str_field("name_label")
            == want
    })
    .await;
}

/// An acknowledged write is in etcd: a host opened afterwards loads it, with the generation the
/// writer saw, and a reopened host's tokens go on from where the pool is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_opened_later_loads_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (_member, cfg) = etcd(&dir);
    let generation = {
        let a = open(&cfg).await;
        a.write(|tx| {
            tx.put(network("OpaqueRef:n1", "u1", "kept"));
            tx.put(network("OpaqueRef:n2", "u2", "dropped"));
            Ok(())
        })
        .await
        .unwrap();
        a.write(|tx| {
            tx.delete(class_ids::network, "OpaqueRef:n2");
            Ok(())
        })
        .await
        .unwrap();
        a.get(class_ids::network, "OpaqueRef:n1").unwrap().generation
    };
    let b = open(&cfg).await;
    let n1 = b.get(class_ids::network, "OpaqueRef:n1").unwrap();
    assert_eq!(n1.str_field("name_label"), "kept");
    assert_eq!(n1.generation, generation);
    assert!(b.get(class_ids::network, "OpaqueRef:n2").is_none());
    assert_eq!(b.count(class_ids::network), 1);
    assert!(b.events().latest() > generation);
    // A token from before the load is answered from the objects, not the log.
    assert!(b.events().since(0).is_none());
    assert!(b.events().since(b.events().latest()).is_some());
}

/// `kill -9` of the local member: its supervisor starts it again on the same data, and no
/// write acknowledged before the kill is lost; writes go on once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_is_restarted_and_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (member, cfg) = etcd(&dir);
    let a = open(&cfg).await;
    for i in 0..20 {
        a.write(|tx| {
            tx.put(network(&format!("OpaqueRef:n{i}"), &format!("u{i}"), "before"));
            Ok(())
        })
        .await
        .unwrap();
    }
    let pid = member.pid().unwrap();
    // SAFETY: kill(2) with a pid this test's member started; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let mut restarted = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if member.pid().is_some_and(|p| p != pid) {
            restarted = true;
            break;
        }
    }
    assert!(restarted, "the member was not restarted");
    let mut written = false;
    for _ in 0..50 {
        let r = a
            .write(|tx| {
                tx.put(network("OpaqueRef:after", "u-after", "after"));
                Ok(())
            })
            .await;
        if r.is_ok() {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(written, "no write succeeded after the restart");
    let b = open(&cfg).await;
    assert_eq!(b.count(class_ids::network), 21);
}

/// With etcd gone, a write is refused with a clear error, and nothing changes in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_from_etcd_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (member, cfg) = etcd(&dir);
    let a = open(&cfg).await;
    drop(member);
    let r = a
        .write(|tx| {
            tx.put(network("OpaqueRef:n1", "u1", "lost"));
            Ok(())
        })
        .await;
    let e = r.unwrap_err();
    assert!(format!("{e:?}").contains("etcd"), "{e:?}");
    assert!(a.get(class_ids::network, "OpaqueRef:n1").is_none());
}

#[test]
fn a_missing_etcd_program_names_the_package() {
    let e = StoreError::EtcdMissing(super::etcd_member::ETCD_PROGRAM.into());
    assert!(e.to_string().contains("etcd-server"), "{e}");
}

/// A state dir with [`POOL_CONFIG`] naming a member: the store starts that member under the
/// state dir and keeps the pool's objects in it; a second host whose config names only the
/// endpoints sees them; a state dir without the file keeps the one-host redb store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_names_its_store_and_the_member_it_runs() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let alone = tempfile::tempdir().unwrap();
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut cfg = EtcdConfig::new(vec![client.clone()]);
    cfg.member = Some(MemberConfig::single("h1", "etcd".into(), &client, &peer));
    std::fs::write(first.path().join(POOL_CONFIG), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let members_cfg = EtcdConfig::new(vec![client.clone()]);
    std::fs::write(
        second.path().join(POOL_CONFIG),
        serde_json::to_vec(&members_cfg).unwrap(),
    )
    .unwrap();

    let a = Store::open_configured(first.path()).await.unwrap();
    assert!(a.is_pooled());
    assert_eq!(a.member_client_url().unwrap(), client);
    assert!(first.path().join("etcd").join("member").is_dir());
    a.write(|tx| {
        tx.put(network("OpaqueRef:n1", "u1", "pooled"));
        Ok(())
    })
    .await
    .unwrap();
    let b = Store::open_configured(second.path()).await.unwrap();
    assert!(b.is_pooled() && b.member_client_url().is_none());
    assert_eq!(
        b.get(class_ids::network, "OpaqueRef:n1")
            .unwrap()
            .str_field("name_label"),
        "pooled"
    );
    assert!(!second.path().join(super::redb_backend::FILE).exists());

    let c = Store::open_configured(alone.path()).await.unwrap();
    assert!(!c.is_pooled());
    assert!(alone.path().join(super::redb_backend::FILE).exists());
    assert!(c.get(class_ids::network, "OpaqueRef:n1").is_none());

    // The member stops with the store that runs it.
    let pid = a.member_pid().unwrap();
    drop(b);
    drop(a);
    // SAFETY: kill(2) with signal 0 only asks whether the process exists.
    assert_ne!(unsafe { libc::kill(pid as i32, 0) }, 0, "etcd outlived its store");
}

/// One write of many objects (a first boot makes a few hundred) is one etcd transaction the
/// member xapid runs accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_of_many_objects_is_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let (_member, cfg) = etcd(&dir);
    let a = open(&cfg).await;
    a.write(|tx| {
        for i in 0..1000 {
            tx.put(network(&format!("OpaqueRef:n{i}"), &format!("u{i}"), "many"));
        }
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(a.count(class_ids::network), 1000);
    let generations: std::collections::HashSet<u64> = a.all(class_ids::network).iter().map(|o| o.generation).collect();
    assert_eq!(generations.len(), 1, "one revision for the whole write");
}

/// A standalone host becoming a pool's master: its redb database moves into a new etcd in
/// place, nothing lost, event tokens still growing; another store adopts the pool database
/// (a joiner: what it had is gone); a state dir named by `pool-store.json` reopens on etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_store_moves_into_etcd_in_place_and_a_joiner_adopts_it() {
    let master_dir = tempfile::tempdir().unwrap();
    let joiner_dir = tempfile::tempdir().unwrap();
    let a = Store::open(Some(master_dir.path())).unwrap();
    for i in 0..50 {
        a.write(|tx| {
            tx.put(network(&format!("OpaqueRef:m{i}"), &format!("um{i}"), "master's"));
            Ok(())
        })
        .await
        .unwrap();
    }
    let token = a.events().latest();
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut cfg = EtcdConfig::new(vec![client.clone()]);
    cfg.member = Some(MemberConfig::single("h1", POOL_MEMBER_DIR.into(), &client, &peer));
    a.switch_to_pool(master_dir.path(), &cfg, true).await.unwrap();
    assert!(a.is_pooled());
    assert!(master_dir.path().join(POOL_CONFIG).is_file());
    assert_eq!(a.count(class_ids::network), 50);
    assert!(a.events().latest() > token, "event tokens went backwards");
    a.write(|tx| {
        tx.modify(class_ids::network, "OpaqueRef:m7", |o| {
            o.set(fields::network::name_label, Value::str("renamed in the pool"))
        })
    })
    .await
    .unwrap();

    let j = Store::open(Some(joiner_dir.path())).unwrap();
    j.write(|tx| {
        tx.put(network("OpaqueRef:j1", "uj1", "joiner's own"));
        Ok(())
    })
    .await
    .unwrap();
    j.switch_to_pool(joiner_dir.path(), &EtcdConfig::new(vec![client.clone()]), false)
        .await
        .unwrap();
    assert!(j.get(class_ids::network, "OpaqueRef:j1").is_none());
    assert_eq!(j.count(class_ids::network), 50);
    assert_eq!(
        j.get(class_ids::network, "OpaqueRef:m7")
            .unwrap()
            .str_field("name_label"),
        "renamed in the pool"
    );
    drop(j);
    drop(a);
    let again = Store::open_configured(master_dir.path()).await.unwrap();
    assert!(again.is_pooled());
    assert_eq!(again.count(class_ids::network), 50);
}
