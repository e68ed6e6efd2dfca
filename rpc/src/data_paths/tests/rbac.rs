//! The data paths' role checks (403 and a failed task, as the reference answers a refused
//! HTTP permission) and the audit log's handler, with directory users' sessions made in the
//! store as a login makes them (no directory needed; `tests/tests/rbac_walk.rs`'s
//! `the_audit_trail_names_directory_users_and_no_secret` logs real directory users in).

use super::*;
use agent::rbac::table::{bit, role_index, table};

/// A directory user's session holding `roles`, recorded as a login records it.
async fn session_with(e: &Env, roles: &[&str], sid: &str, name: &str) -> String {
    let mask = roles.iter().map(|r| bit(role_index(r).unwrap())).fold(0, |a, b| a | b);
    let labels = table().session_permissions(mask);
    let r = agent::objects::new_ref();
    let mut s = default_object(class_ids::session, &r);
    s.set(fields::session::uuid, Value::str(agent::objects::new_uuid()));
    s.set(fields::session::is_local_superuser, Value::Bool(false));
    s.set(fields::session::auth_user_sid, Value::str(sid));
    s.set(fields::session::auth_user_name, Value::str(name));
    s.set(
        fields::session::rbac_permissions,
        Value::set(labels.into_iter().map(Value::str).collect()),
    );
    let store = e.agent.store_for_tests();
    store.write(|tx| agent::objects::create(tx, s.clone())).await.unwrap();
    r
}

fn http_get(addr: SocketAddr, path_and_query: &str) -> (u16, String, Vec<u8>) {
    exchange(
        addr,
        &format!("GET {path_and_query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        b"",
    )
}

const FORBIDDEN: &str =
    "<html><body><h1>HTTP 403 forbidden</h1>Access to the requested resource is forbidden.</body></html>";

#[actix_web::test]
async fn refused_roles_get_403_and_a_failed_task() {
    let e = start().await;
    let addr = e.addr;
    let (_root, vdi) = small_vdi(&e, 1 << 20).await;
    let ro = session_with(&e, &["read-only"], "sid-ro", "rosa").await;
    let admin = session_with(&e, &["vm-admin"], "sid-va", "vera").await;

    // A read-only user may not export a disk: 403 with the reference's page, and the task
    // the client named fails with the permission the handler needs.
    let task = new_task(&e).await;
    let (s, v, t) = (ro.clone(), vdi.clone(), task.clone());
    let (status, head, body) = blocking(move || get(addr, &format!("vdi={v}&session_id={s}&task_id={t}"))).await;
    assert_eq!(status, 403, "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/html"), "{head}");
    assert_eq!(String::from_utf8_lossy(&body), FORBIDDEN);
    let (st, err) = task_status(&e.agent, &task);
    assert_eq!(st, "failure");
    assert_eq!(
        err,
        [
            "RBAC_PERMISSION_DENIED",
            "http/get_export_raw_vdi",
            "No permission in user session. (Roles with this permission: vm-power-admin, vm-admin, pool-admin, pool-operator)"
        ]
    );

    // Nor import one, and the disk is unchanged.
    let (s, v) = (ro.clone(), vdi.clone());
    let (status, _, _) = blocking(move || put(addr, &format!("vdi={v}&session_id={s}"), &[7u8; 4096])).await;
    assert_eq!(status, 403);
    let (s, v) = (admin.clone(), vdi.clone());
    let (status, _, out) = blocking(move || get(addr, &format!("vdi={v}&session_id={s}"))).await;
    assert_eq!(status, 200);
    assert!(out.iter().all(|b| *b == 0), "a refused import wrote to the disk");

    // A vm-admin may import.
    let (s, v) = (admin.clone(), vdi.clone());
    let (status, _, _) = blocking(move || put(addr, &format!("vdi={v}&session_id={s}"), &[7u8; 4096])).await;
    assert_eq!(status, 200);

    // Every role may read the figures; a read-only user may not reach a console.
    let s = ro.clone();
    let (status, _, _) = blocking(move || http_get(addr, &format!("/host_rrd?session_id={s}"))).await;
    assert_eq!(status, 200);
    let s = ro.clone();
    let (status, _, _) = blocking(move || http_get(addr, &format!("/metrics?session_id={s}"))).await;
    assert_eq!(status, 200);
    let s = ro.clone();
    let (status, _, body) = blocking(move || {
        exchange(
            addr,
            &format!("CONNECT /console?ref=OpaqueRef:x&session_id={s} HTTP/1.1\r\nHost: x\r\n\r\n"),
            b"",
        )
    })
    .await;
    assert_eq!(status, 403);
    assert_eq!(String::from_utf8_lossy(&body), FORBIDDEN);
    // A vm-admin passes the role check (and then finds no such console).
    let s = admin.clone();
    let (status, _, _) = blocking(move || {
        exchange(
            addr,
            &format!("CONNECT /console?ref=OpaqueRef:x&session_id={s} HTTP/1.1\r\nHost: x\r\n\r\n"),
            b"",
        )
    })
    .await;
    assert_eq!(status, 404);

    // An unknown session is still 401, not 403.
    let v = vdi.clone();
    let (status, _, _) = blocking(move || get(addr, &format!("vdi={v}&session_id=OpaqueRef:nope"))).await;
    assert_eq!(status, 401);
}

#[actix_web::test]
async fn the_audit_log_records_http_checks_and_is_for_pool_admins() {
    let e = start().await;
    let addr = e.addr;
    let (root, vdi) = small_vdi(&e, 1 << 20).await;
    let ro = session_with(&e, &["read-only"], "sid-ro", "rosa").await;
    let op = session_with(&e, &["pool-operator"], "sid-po", "otto").await;
    let pa = session_with(&e, &["pool-admin"], "sid-pa", "paula").await;

    let (s, v) = (ro.clone(), vdi.clone());
    let (status, _, _) = blocking(move || get(addr, &format!("vdi={v}&session_id={s}"))).await;
    assert_eq!(status, 403);
    let (s, v) = (pa.clone(), vdi.clone());
    let (status, _, _) = blocking(move || get(addr, &format!("vdi={v}&session_id={s}"))).await;
    assert_eq!(status, 200);

    // Read-only users and pool operators are refused the log.
    for s in [ro.clone(), op.clone()] {
        let (status, _, body) = blocking(move || http_get(addr, &format!("/audit_log?session_id={s}"))).await;
        assert_eq!(status, 403);
        assert_eq!(String::from_utf8_lossy(&body), FORBIDDEN);
    }

    // A pool admin (and root) read it.
    let s = pa.clone();
    let (status, head, body) = blocking(move || http_get(addr, &format!("/audit_log?session_id={s}"))).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain"), "{head}");
    let log = String::from_utf8(body).unwrap();
    let vdi_uuid = e.agent.uuid_of(class_ids::VDI, &vdi).unwrap();
    let vdi_name = e
        .agent
        .store_for_tests()
        .get(class_ids::VDI, &vdi)
        .unwrap()
        .str_field("name_label")
        .to_owned();
    let denied = log
        .lines()
        .find(|l| l.contains("'sid-ro' 'rosa' 'DENIED' '' 'HTTP' 'http/get_export_raw_vdi'"))
        .unwrap_or_else(|| panic!("no denied export in\n{log}"));
    assert!(
        denied.contains(&format!("('vdi' '{vdi_name}' '{vdi_uuid}' '{vdi}')")),
        "{denied}"
    );
    assert!(
        log.contains("'sid-pa' 'paula' 'ALLOWED' 'OK' 'HTTP' 'http/get_export_raw_vdi'"),
        "{log}"
    );
    // The refusals of the log itself are recorded too.
    assert!(
        log.contains("'sid-po' 'otto' 'DENIED' '' 'HTTP' 'http/get_audit_log'"),
        "{log}"
    );
    // Root's VDI.create through the API, with the new disk's name.
    assert!(
        log.contains("'LOCAL_SUPERUSER' 'root' 'ALLOWED' 'OK' 'API' 'VDI.create'"),
        "{log}"
    );
    // No session ref is ever written, only its track id.
    for s in [&root, &ro, &op, &pa] {
        assert!(!log.contains(s.as_str()), "a session ref in the audit log");
    }

    // `since` (ISO 8601) keeps only later records.
    let s = root.clone();
    let (status, _, body) =
        blocking(move || http_get(addr, &format!("/audit_log?session_id={s}&since=2999-01-01T00:00:00Z"))).await;
    assert_eq!(status, 200);
    assert!(body.is_empty(), "{}", String::from_utf8_lossy(&body));
}
