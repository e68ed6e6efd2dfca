//! Directory sessions' revalidation, on an agent with the simulator backend (sessions made in
//! the store as a login makes them; `tests/tests/rbac_walk.rs` logs in real directory users).

use crate::objects::{create, new_ref, new_uuid, set_field};
use crate::schema::{class_ids, fields};
use crate::storage::tests::env;
use crate::value::{default_object, now, Value};

/// A directory user's session last checked at `validated`.
async fn directory_session(e: &crate::storage::tests::Env, sid: &str, validated: i64) -> String {
    let r = new_ref();
    let mut s = default_object(class_ids::session, &r);
    s.set(fields::session::uuid, Value::str(new_uuid()));
    s.set(fields::session::is_local_superuser, Value::Bool(false));
    s.set(fields::session::auth_user_sid, Value::str(sid));
    s.set(fields::session::validation_time, Value::DateTime(validated));
    s.set(
        fields::session::rbac_permissions,
        Value::set(vec![Value::str("read-only"), Value::str("pool.get_all")]),
    );
    e.agent.store.write(|tx| create(tx, s.clone())).await.unwrap();
    r
}

fn alive(e: &crate::storage::tests::Env, s: &str) -> bool {
    e.agent.store.get(class_ids::session, s).is_some()
}

#[actix::test]
async fn without_a_directory_every_directory_session_ends_and_root_stays() {
    let e = env().await;
    let t = now();
    let old = directory_session(&e, "sid-a", t - 7200).await;
    let fresh = directory_session(&e, "sid-b", t).await;
    let ended = e.agent.sessions.revalidate_directory_sessions(&e.agent.store, t).await;
    assert_eq!(ended, 2);
    assert!(!alive(&e, &old) && !alive(&e, &fresh));
    assert!(alive(&e, &e.session), "root's session ended");
}

#[actix::test]
async fn a_directory_that_cannot_be_asked_leaves_sessions_for_the_next_round() {
    let e = env().await;
    let host = e.agent.host.clone();
    e.agent
        .store
        .write(|tx| {
            use fields::host as f;
            set_field(tx, class_ids::host, &host, f::external_auth_type, Value::str("LDAP"))?;
            // Nothing listens there.
            set_field(
                tx,
                class_ids::host,
                &host,
                f::external_auth_service_name,
                Value::str("ldap://127.0.0.1:1"),
            )?;
            set_field(
                tx,
                class_ids::host,
                &host,
                f::external_auth_configuration,
                Value::string_map([("base_dn", "dc=x")]),
            )
        })
        .await
        .unwrap();
    let t = now();
    let old = directory_session(&e, "sid-a", t - 7200).await;
    let ended = e.agent.sessions.revalidate_directory_sessions(&e.agent.store, t).await;
    assert_eq!(ended, 0);
    assert!(alive(&e, &old));
    let rec = e.agent.store.get(class_ids::session, &old).unwrap();
    assert_eq!(
        rec.get(fields::session::validation_time),
        &Value::DateTime(t - 7200),
        "a session the directory did not confirm was marked revalidated"
    );
    // Its permissions still hold meanwhile: the check reads them from the record.
    let v = crate::call(
        &e.agent,
        &crate::CallCtx::default(),
        "pool.get_all",
        &[serde_json::json!(old)],
    )
    .await;
    assert!(v.is_ok(), "{v:?}");
}
