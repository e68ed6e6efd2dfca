//! The host messages through the real dispatch, on an agent with the simulator backend.

use crate::schema::{class_ids, fields};
use crate::storage::tests::env;
use crate::value::Value;
use crate::ApiError;
use serde_json::json;

const NULL: &str = "OpaqueRef:NULL";

/// The switch that makes a host test's missing precondition a failure (docs/testing.md,
/// "Skips"): this machine has no xapi plugin directory or syslog reconfiguration script, and
/// the daemon's host settings (`XAPID_PLUGIN_DIR`, `XAPID_SET_SYSTEM_HOSTNAME`,
/// `XAPID_SERVER_CERT`, `XAPID_SYSLOG_RECONFIGURE`) are not set.
const REQUIRE_PLAIN_HOST: &str = "XAPID_REQUIRE_PLAIN_HOST";

/// True (after saying so, or failing under [`REQUIRE_PLAIN_HOST`]) when `missing` says what
/// of the plain host is not there.
#[track_caller]
fn skip_without_a_plain_host(missing: Option<String>) -> bool {
    match missing {
        Some(why) => {
            crate::hypervisor::selection::test_env::skip_unless_required(REQUIRE_PLAIN_HOST, &why);
            true
        }
        None => false,
    }
}

#[actix::test]
async fn every_host_message_here_checks_the_host() {
    let e = env().await;
    for (method, extra) in [
        ("host.call_plugin", vec![json!("echo"), json!("main"), json!({})]),
        ("host.call_extension", vec![json!("{}")]),
        ("host.dmesg", vec![]),
        ("host.send_debug_keys", vec![json!("q")]),
        ("host.syslog_reconfigure", vec![]),
        ("host.set_hostname_live", vec![json!("name")]),
        ("host.get_server_certificate", vec![]),
        ("host.get_system_status_capabilities", vec![]),
        ("host.apply_edition", vec![json!("free/libre"), json!(false)]),
        ("host.license_remove", vec![]),
        ("host.license_apply", vec![json!("")]),
        ("host.license_add", vec![json!("")]),
        ("host.has_extension", vec![json!("x")]),
    ] {
        let mut params = vec![json!(NULL)];
        params.extend(extra);
        let err = e.call(method, params).await.unwrap_err();
        assert_eq!(err, ApiError::handle_invalid("host", NULL), "{method}");
    }
}

#[actix::test]
async fn a_plugin_missing_from_the_default_directory() {
    let has_plugins = std::env::var_os("XAPID_PLUGIN_DIR").is_some()
        || std::path::Path::new(crate::host::settings::DEFAULT_PLUGIN_DIR).exists();
    if skip_without_a_plain_host(has_plugins.then(|| "this machine has a plugin directory".to_owned())) {
        return;
    }
    let e = env().await;
    let host = e.agent.host.clone();
    let err = e
        .call(
            "host.call_plugin",
            vec![json!(host), json!("echo"), json!("main"), json!({"a": "b"})],
        )
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::XenapiMissingPlugin { name: "echo".into() });
}

#[actix::test]
async fn set_hostname_live_checks_and_records_the_name() {
    // The setting would have the test rename this machine.
    let renames = crate::host::settings::set_system_hostname("simulator");
    if skip_without_a_plain_host(renames.then(|| "XAPID_SET_SYSTEM_HOSTNAME is on".to_owned())) {
        return;
    }
    let e = env().await;
    let host = e.agent.host.clone();
    let before = nix::unistd::gethostname().unwrap();
    let err = e
        .call("host.set_hostname_live", vec![json!(host), json!("bad name")])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ApiError::HostNameInvalid {
            reason: "hostname contains invalid characters".into()
        }
    );
    e.ok(
        "host.set_hostname_live",
        vec![json!(host), json!("renamed-host.example")],
    )
    .await;
    let h = e.agent.store.get(class_ids::host, &host).unwrap();
    assert_eq!(h.str_field("hostname"), "renamed-host.example");
    let dom0 = h.get(fields::host::control_domain).as_ref_str().unwrap().to_owned();
    let vm = e.agent.store.get(class_ids::VM, &dom0).unwrap();
    assert_eq!(
        vm.str_field("name_label"),
        "Control domain on host: renamed-host.example"
    );
    // A renamed control domain keeps its name.
    e.ok("VM.set_name_label", vec![json!(dom0), json!("my dom0")]).await;
    e.ok("host.set_hostname_live", vec![json!(host), json!("again")]).await;
    assert_eq!(
        e.agent.store.get(class_ids::VM, &dom0).unwrap().str_field("name_label"),
        "my dom0"
    );
    assert_eq!(
        nix::unistd::gethostname().unwrap(),
        before,
        "the machine's hostname changed"
    );
}

#[actix::test]
async fn the_one_edition() {
    let e = env().await;
    let host = e.agent.host.clone();
    let err = e
        .call(
            "host.apply_edition",
            vec![json!(host), json!("enterprise"), json!(false)],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ApiError::InvalidEdition {
            edition: "enterprise".into()
        }
    );
    e.ok(
        "host.apply_edition",
        vec![json!(host), json!("free/libre"), json!(true)],
    )
    .await;
    let h = e.agent.store.get(class_ids::host, &host).unwrap();
    assert_eq!(h.str_field("edition"), "free/libre");
    assert_eq!(h.get(fields::host::editions).as_set(), &[Value::str("free/libre")]);
    assert_eq!(
        h.get(fields::host::license_params)
            .map_get("restrict_pooling")
            .and_then(Value::as_str),
        Some("false")
    );
    let pool = e.agent.store.get(class_ids::pool, &e.agent.pool_ref()).unwrap();
    assert_eq!(
        pool.get(fields::pool::restrictions),
        h.get(fields::host::license_params)
    );
    e.ok("host.license_remove", vec![json!(host)]).await;
    assert_eq!(
        e.agent.store.get(class_ids::host, &host).unwrap().str_field("edition"),
        "free/libre"
    );
    let err = e
        .call("host.license_apply", vec![json!(host), json!("")])
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::MessageRemoved {});
    // A license file: base64, or the reference's processing error; read or not, the host
    // stays in the one edition.
    let err = e
        .call("host.license_add", vec![json!(host), json!("not base64!")])
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::LicenseProcessingError {});
    e.ok("host.license_add", vec![json!(host), json!("bGljZW5zZQ==")]).await;
    // The pool: every host, or none changed.
    let pool_ref = e.agent.pool_ref();
    let err = e
        .call("pool.apply_edition", vec![json!(pool_ref), json!("enterprise")])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ApiError::InvalidEdition {
            edition: "enterprise".into()
        }
    );
    e.ok("pool.apply_edition", vec![json!(pool_ref), json!("free/libre")])
        .await;
    let state = e.ok("pool.get_license_state", vec![json!(pool_ref)]).await;
    assert_eq!(
        state,
        Value::string_map([("edition", "free/libre"), ("expiry", "never")])
    );
}

#[actix::test]
async fn host_logs_keys_and_reports_on_the_simulator() {
    let e = env().await;
    let host = e.agent.host.clone();
    // The kernel's log of this machine, where it may be read.
    match e.call("host.dmesg", vec![json!(host)]).await {
        Ok(v) => assert!(v.as_str().is_some()),
        Err(err) => assert!(err.to_string().contains("kernel log"), "{err}"),
    }
    let err = e
        .call("host.send_debug_keys", vec![json!(host), json!("q")])
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::not_implemented("host.send_debug_keys"));
    let caps = e.ok("host.get_system_status_capabilities", vec![json!(host)]).await;
    assert_eq!(caps.as_str(), Some(crate::host::admin::NO_CAPABILITIES));
    // Neither the answer nor get_log / dmesg_clear (NOT_IMPLEMENTED, as in the reference).
    for m in ["host.get_log", "host.dmesg_clear"] {
        let err = e.call(m, vec![json!(host)]).await.unwrap_err();
        assert_eq!(err, ApiError::not_implemented(m));
    }
}

#[actix::test]
async fn the_server_certificate_from_the_state_dir() {
    let elsewhere = std::env::var_os("XAPID_SERVER_CERT").is_some();
    if skip_without_a_plain_host(elsewhere.then(|| "XAPID_SERVER_CERT is set".to_owned())) {
        return;
    }
    let e = env().await;
    let host = e.agent.host.clone();
    let err = e
        .call("host.get_server_certificate", vec![json!(host)])
        .await
        .unwrap_err();
    assert_eq!(err, ApiError::CertificateLibraryCorrupt {});
    let tls = e.agent.state_dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let pem = "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n";
    std::fs::write(tls.join("xapid-cert.pem"), pem).unwrap();
    let v = e.ok("host.get_server_certificate", vec![json!(host)]).await;
    assert_eq!(v.as_str(), Some(pem));
}

#[actix::test]
async fn syslog_reconfigure_needs_its_script() {
    let script = crate::host::settings::syslog_reconfigure_script();
    let exists = script.exists();
    if skip_without_a_plain_host(
        exists.then(|| format!("{} exists and would reconfigure this machine", script.display())),
    ) {
        return;
    }
    let e = env().await;
    let host = e.agent.host.clone();
    let err = e.call("host.syslog_reconfigure", vec![json!(host)]).await.unwrap_err();
    assert!(err.to_string().contains("no syslog reconfiguration script"), "{err}");
}

/// `host.shutdown`/`reboot`/`power_on`/`set_power_on_mode` up to the point where the machine
/// would go down (a test cannot let the daemon it runs in stop): the reference's refusals, the
/// power-on settings, and at start the host enabled again unless it is disabled until reboot.
#[actix::test]
async fn host_power_refusals_and_the_enabled_state_at_start() {
    let e = env().await;
    let host = e.agent.host.clone();
    for m in ["host.shutdown", "host.reboot"] {
        assert_eq!(
            e.call(m, vec![json!(host)]).await.unwrap_err(),
            ApiError::HostNotDisabled {},
            "{m}"
        );
    }
    e.ok("host.disable", vec![json!(host)]).await;
    // A guest running here: HOST_IN_USE names it.
    let vm = e.clone_template("Generic Linux PV", "busy").await;
    let (h, v) = (host.clone(), vm.clone());
    e.agent
        .store
        .write(move |tx| {
            crate::objects::set_field(tx, class_ids::VM, &v, fields::VM::is_a_template, Value::Bool(false))?;
            crate::objects::set_field(
                tx,
                class_ids::VM,
                &v,
                fields::VM::power_state,
                crate::schema::enums::VmPowerState::Running.value(),
            )?;
            crate::objects::set_field(
                tx,
                class_ids::VM,
                &v,
                fields::VM::resident_on,
                Value::Ref(h.as_str().into()),
            )
        })
        .await
        .unwrap();
    for m in ["host.shutdown", "host.reboot"] {
        assert_eq!(
            e.call(m, vec![json!(host)]).await.unwrap_err(),
            ApiError::HostInUse {
                host: host.clone(),
                kind: "vm".into(),
                object: vm.clone()
            },
            "{m}"
        );
    }
    // power_on: this host is live; another host record would need its mode first.
    assert_eq!(
        e.call("host.power_on", vec![json!(host)]).await.unwrap_err(),
        ApiError::HostIsLive { host: host.clone() }
    );
    assert_eq!(
        e.call("host.power_on", vec![json!(NULL)]).await.unwrap_err(),
        ApiError::handle_invalid("host", NULL)
    );
    e.ok(
        "host.set_power_on_mode",
        vec![json!(host), json!("wake-on-lan"), json!({"k": "v"})],
    )
    .await;
    let rec = e.agent.store.get(class_ids::host, &host).unwrap();
    assert_eq!(rec.str_field("power_on_mode"), "wake-on-lan");
    assert_eq!(rec.get(fields::host::power_on_config).as_map().len(), 1);
    // At start: a disabled host is enabled again (a disable lasts until the daemon restarts)...
    crate::host::power::at_start(&e.agent).await.unwrap();
    assert!(crate::pool::maintenance::is_enabled(&e.agent, &host));
    // ...unless it was shut down during this boot: then it stays disabled, and host.enable
    // says why.
    e.ok("host.disable", vec![json!(host)]).await;
    let note = e.agent.state_dir.join("host-disabled-until-reboot");
    std::fs::write(&note, "another boot").unwrap();
    crate::host::power::at_start(&e.agent).await.unwrap();
    assert!(crate::pool::maintenance::is_enabled(&e.agent, &host));
    assert!(!note.exists(), "the note of an earlier boot is removed");
    e.ok("host.disable", vec![json!(host)]).await;
    // The simulator's boot is the process's: the id power.rs notes for it.
    assert!(!crate::host::power::disabled_until_reboot(&e.agent));
    crate::host::power::note_for_tests(&e.agent);
    assert!(crate::host::power::disabled_until_reboot(&e.agent));
    crate::host::power::at_start(&e.agent).await.unwrap();
    assert!(!crate::pool::maintenance::is_enabled(&e.agent, &host));
    assert_eq!(
        e.call("host.enable", vec![json!(host)]).await.unwrap_err(),
        ApiError::HostDisabledUntilReboot { host: host.clone() }
    );
}
