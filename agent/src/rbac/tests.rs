//! The check through the real dispatch, on an agent with the simulator backend: sessions of
//! directory users are made in the store as a login makes them (their permissions from their
//! record), so no directory is needed here; `tests/tests/rbac_walk.rs` walks every message
//! with real directory users.

use super::table::{bit, role_index, table};
use crate::schema::{class_ids, fields};
use crate::storage::tests::env;
use crate::value::{default_object, Value};
use crate::{ApiError, CallCtx};
use serde_json::{json, Value as Json};

/// A directory user's session holding `roles`, as `session.login_with_password` records it.
async fn session_with(e: &crate::storage::tests::Env, roles: &[&str], sid: &str) -> String {
    let mask = roles.iter().map(|r| bit(role_index(r).unwrap())).fold(0, |a, b| a | b);
    let labels = table().session_permissions(mask);
    let r = crate::objects::new_ref();
    let mut s = default_object(class_ids::session, &r);
    s.set(fields::session::uuid, Value::str(crate::objects::new_uuid()));
    s.set(fields::session::is_local_superuser, Value::Bool(false));
    s.set(fields::session::auth_user_sid, Value::str(sid));
    s.set(
        fields::session::rbac_permissions,
        Value::set(labels.into_iter().map(Value::str).collect()),
    );
    e.agent
        .store
        .write(|tx| crate::objects::create(tx, s.clone()))
        .await
        .unwrap();
    r
}

async fn call_as(
    e: &crate::storage::tests::Env,
    session: &str,
    method: &str,
    mut params: Vec<Json>,
) -> Result<Value, ApiError> {
    params.insert(0, json!(session));
    crate::call(&e.agent, &CallCtx::default(), method, &params).await
}

fn denied(permission: &str, roles: &str) -> ApiError {
    ApiError::RbacPermissionDenied {
        permission: permission.into(),
        message: format!("No permission in user session. (Roles with this permission: {roles})"),
    }
}

const VM_ADMINS: &str = "vm-power-admin, vm-admin, pool-admin, pool-operator";

async fn a_vm(e: &crate::storage::tests::Env) -> String {
    let template = e
        .agent
        .store
        .all(class_ids::VM)
        .iter()
        .find(|v| v.get(fields::VM::is_a_template) == &Value::Bool(true))
        .unwrap()
        .reference
        .clone();
    e.new_ref("VM.clone", vec![json!(template), json!("rbac")]).await
}

#[actix::test]
async fn a_vm_operator_operates_but_does_not_administer() {
    let e = env().await;
    let vm = a_vm(&e).await;
    let otto = session_with(&e, &["vm-operator"], "sid-otto").await;
    assert!(call_as(&e, &otto, "VM.get_record", vec![json!(vm)]).await.is_ok());
    assert_eq!(
        call_as(&e, &otto, "VM.destroy", vec![json!(vm)]).await.unwrap_err(),
        denied("vm.destroy", VM_ADMINS)
    );
    // The Async form is refused before any task exists.
    let tasks = e.agent.store.count(class_ids::task);
    assert_eq!(
        call_as(&e, &otto, "Async.VM.destroy", vec![json!(vm)])
            .await
            .unwrap_err(),
        denied("vm.destroy", VM_ADMINS)
    );
    assert_eq!(e.agent.store.count(class_ids::task), tasks);
    assert_eq!(
        call_as(
            &e,
            &otto,
            "VM.set_memory_dynamic_max",
            vec![json!(vm), json!(1073741824)]
        )
        .await
        .unwrap_err(),
        denied("vm.set_memory_dynamic_max", "vm-power-admin, pool-admin, pool-operator")
    );
    // A guarded key of its own, yes; another key, or one reserved to pool admins, no.
    call_as(
        &e,
        &otto,
        "VM.add_to_other_config",
        vec![json!(vm), json!("folder"), json!("/a")],
    )
    .await
    .unwrap();
    call_as(
        &e,
        &otto,
        "VM.add_to_other_config",
        vec![json!(vm), json!("XenCenter.CustomFields.owner"), json!("otto")],
    )
    .await
    .unwrap();
    assert_eq!(
        call_as(
            &e,
            &otto,
            "VM.add_to_other_config",
            vec![json!(vm), json!("pci"), json!("x")]
        )
        .await
        .unwrap_err(),
        denied("vm.add_to_other_config/key:pci", "pool-admin")
    );
    assert_eq!(
        call_as(
            &e,
            &otto,
            "VM.remove_from_other_config",
            vec![json!(vm), json!("color")]
        )
        .await
        .unwrap_err(),
        denied("vm.remove_from_other_config", VM_ADMINS)
    );
    // A message this build does not carry out is still refused first.
    assert_eq!(
        call_as(&e, &otto, "session.create_from_db_file", vec![json!("/x")])
            .await
            .unwrap_err(),
        denied("session.create_from_db_file", "")
    );
}

#[actix::test]
async fn set_other_config_checks_the_guarded_entries_it_changes() {
    let e = env().await;
    let vm = a_vm(&e).await;
    e.ok(
        "VM.add_to_other_config",
        vec![json!(vm), json!("pci"), json!("0/0000:00:01.0")],
    )
    .await;
    let vic = session_with(&e, &["vm-admin"], "sid-vic").await;
    // Keeping the pool admin's entry as it is, and changing others: allowed.
    call_as(
        &e,
        &vic,
        "VM.set_other_config",
        vec![json!(vm), json!({"pci": "0/0000:00:01.0", "color": "red"})],
    )
    .await
    .unwrap();
    assert_eq!(
        call_as(
            &e,
            &vic,
            "VM.set_other_config",
            vec![json!(vm), json!({"pci": "0/0000:00:02.0", "color": "red"})]
        )
        .await
        .unwrap_err(),
        denied("vm.add_to_other_config/key:pci", "pool-admin")
    );
    assert_eq!(
        call_as(
            &e,
            &vic,
            "VM.set_other_config",
            vec![json!(vm), json!({"color": "red"})]
        )
        .await
        .unwrap_err(),
        denied("vm.remove_from_other_config/key:pci", "pool-admin")
    );
    let oc = e.ok("VM.get_other_config", vec![json!(vm)]).await;
    assert_eq!(oc.map_get("pci").and_then(Value::as_str), Some("0/0000:00:01.0"));
}

#[actix::test]
async fn tasks_of_other_subjects_need_destroy_any() {
    let e = env().await;
    let otto = session_with(&e, &["vm-operator"], "sid-otto").await;
    let olga = session_with(&e, &["pool-operator"], "sid-olga").await;
    let mine = call_as(&e, &otto, "task.create", vec![json!("mine"), json!("")])
        .await
        .unwrap();
    let roots = e.new_ref("task.create", vec![json!("root's"), json!("")]).await;
    let any = "pool-admin, pool-operator";
    assert_eq!(
        call_as(&e, &otto, "task.cancel", vec![json!(roots)]).await.unwrap_err(),
        denied("task.destroy/any", any)
    );
    assert_eq!(
        call_as(&e, &otto, "task.set_progress", vec![json!(roots), json!(0.5)])
            .await
            .unwrap_err(),
        denied("task.destroy/any", any)
    );
    // Its own it may end; a pool operator may end anyone's.
    call_as(&e, &otto, "task.destroy", vec![json!(mine.as_ref_str().unwrap())])
        .await
        .unwrap();
    call_as(&e, &olga, "task.destroy", vec![json!(roots)]).await.unwrap();
}

#[actix::test]
async fn the_local_superuser_may_do_everything_but_a_pool_admin_not_roots_own() {
    let e = env().await;
    let pat = session_with(&e, &["pool-admin"], "sid-pat").await;
    assert_eq!(
        call_as(&e, &pat, "session.change_password", vec![json!("a"), json!("b")])
            .await
            .unwrap_err(),
        denied("session.change_password", "")
    );
    // Root's own session passes every check (the password check is the handler's).
    assert_eq!(
        e.call("session.change_password", vec![json!("not-it"), json!("b")])
            .await
            .unwrap_err()
            .code(),
        "SESSION_AUTHENTICATION_FAILED"
    );
    let ro = session_with(&e, &["read-only"], "sid-rita").await;
    let records = call_as(&e, &ro, "role.get_all_records", vec![]).await.unwrap();
    assert!(!records.as_map().is_empty());
    assert_eq!(
        call_as(&e, &ro, "pool.get_all", vec![]).await.map(|v| v.as_set().len()),
        Ok(1)
    );
}
