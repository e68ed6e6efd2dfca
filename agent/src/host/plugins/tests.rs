//! Plugins and extensions run for real: small shell scripts in a temp plugin directory.

use super::*;
use crate::host::settings::PluginSettings;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

struct Dir {
    dir: tempfile::TempDir,
    settings: PluginSettings,
}

fn dir(timeout: Duration) -> Dir {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let settings = PluginSettings::in_dir(&plugins, timeout);
    Dir { dir, settings }
}

impl Dir {
    fn plugin(&self, name: &str, body: &str) {
        let path = self.settings.plugin_dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    async fn call(&self, plugin: &str, args: &[(&str, &str)]) -> Result<String, ApiError> {
        let args: Vec<(String, String)> = args.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        call_plugin(&self.settings, "OpaqueRef:session", plugin, "main", &args).await
    }
}

fn failure(e: ApiError) -> (String, String, String) {
    match e {
        ApiError::XenapiPluginFailure { status, stdout, stderr } => (status, stdout, stderr),
        other => panic!("not a plugin failure: {other:?}"),
    }
}

const SUCCESS: &str = "<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n<value><struct>\n\
<member>\n<name>Status</name>\n<value><string>Success</string></value>\n</member>\n\
<member>\n<name>Value</name>\n<value><string>VALUE</string></value>\n</member>\n</struct></value>\n</param>\n\
</params>\n</methodResponse>\n";

#[tokio::test]
async fn a_plugin_gets_the_call_as_its_one_argument_and_its_answer_comes_back() {
    let d = dir(Duration::from_secs(30));
    let seen = d.dir.path().join("argv");
    // The plugin saves its arguments, then answers.
    d.plugin(
        "echo",
        &format!(
            "printf '%s\\n' \"$#\" \"$1\" > {}\ncat <<'END'\n{}END\n",
            seen.display(),
            SUCCESS.replace("VALUE", "it &amp; works")
        ),
    );
    let answer = d.call("echo", &[("b", "2"), ("a", "<1>")]).await.unwrap();
    assert_eq!(answer, "it & works");
    let argv = std::fs::read_to_string(&seen).unwrap();
    let (count, call) = argv.split_once('\n').unwrap();
    assert_eq!(count, "1");
    assert_eq!(
        call.trim_end(),
        "<methodCall><methodName>main</methodName><params><param><value>OpaqueRef:session</value></param>\
         <param><value><struct><member><name>b</name><value>2</value></member>\
         <member><name>a</name><value>&lt;1&gt;</value></member></struct></value></param></params></methodCall>"
    );
}

#[tokio::test]
async fn a_missing_plugin_and_names_that_leave_the_directory() {
    let d = dir(Duration::from_secs(30));
    // A plugin next to the directory, which a `..` name would reach.
    let outside = d.dir.path().join("outside");
    std::fs::write(&outside, format!("#!/bin/sh\ncat <<'END'\n{SUCCESS}END\n")).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
    let outside_abs = outside.display().to_string();
    for name in [
        "nope",
        "",
        ".",
        "..",
        "../outside",
        "./../outside",
        outside_abs.as_str(),
        "a/b",
        "x\0y",
    ] {
        match d.call(name, &[]).await {
            Err(ApiError::XenapiMissingPlugin { name: n }) => assert_eq!(n, name),
            other => panic!("{name:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_non_zero_exit_carries_both_outputs() {
    let d = dir(Duration::from_secs(30));
    d.plugin("fails", "echo partial\necho 'it broke' >&2\nexit 2\n");
    let (status, stdout, stderr) = failure(d.call("fails", &[]).await.unwrap_err());
    assert_eq!(status, "non-zero exit");
    assert_eq!(stdout, "partial\n");
    assert_eq!(stderr, "it broke\n");
    d.plugin("killed", "kill -KILL $$\n");
    assert_eq!(failure(d.call("killed", &[]).await.unwrap_err()).0, "signal: SIGKILL");
}

#[tokio::test]
async fn garbage_and_wrongly_shaped_output() {
    let d = dir(Duration::from_secs(30));
    d.plugin("garbage", "echo 'Traceback (most recent call last):'\n");
    let (status, stdout, why) = failure(d.call("garbage", &[]).await.unwrap_err());
    assert_eq!(status, "failed to parse plugin output");
    assert_eq!(stdout, "Traceback (most recent call last):\n");
    assert!(!why.is_empty());
    d.plugin("binary", "printf '\\377\\376<x>'\n");
    assert_eq!(
        failure(d.call("binary", &[]).await.unwrap_err()).0,
        "failed to parse plugin output"
    );
    d.plugin("empty", "exit 0\n");
    assert_eq!(
        failure(d.call("empty", &[]).await.unwrap_err()).0,
        "failed to parse plugin output"
    );
    // Well-formed XML, but not the status struct with a string.
    let not_a_string = SUCCESS.replace("<string>VALUE</string>", "<int>3</int>");
    d.plugin("int", &format!("cat <<'END'\n{not_a_string}END\n"));
    let (status, stdout, _) = failure(d.call("int", &[]).await.unwrap_err());
    assert_eq!(status, "unexpected XMLRPC result");
    assert_eq!(stdout, not_a_string);
    d.plugin("html", "echo '<html><body>hi</body></html>'\n");
    assert_eq!(
        failure(d.call("html", &[]).await.unwrap_err()).0,
        "unexpected XMLRPC result"
    );
}

#[tokio::test]
async fn faults_and_failures_as_the_reference_raises_them() {
    let d = dir(Duration::from_secs(30));
    d.plugin(
        "fault",
        "echo '<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>7</int></value></member>\
         <member><name>faultString</name><value><string>bad call</string></value></member></struct></value></fault></methodResponse>'\n",
    );
    assert_eq!(
        failure(d.call("fault", &[]).await.unwrap_err()),
        ("fault".into(), "7".into(), "bad call".into())
    );
    let failure_of = |items: &str| {
        format!(
            "echo '<methodResponse><params><param><value><struct><member><name>Status</name><value>Failure</value></member>\
             <member><name>ErrorDescription</name><value><array><data>{items}</data></array></value></member></struct></value></param></params></methodResponse>'\n"
        )
    };
    // What the helper module answers for an exception in a plugin function.
    d.plugin(
        "raises",
        &failure_of(
            "<value>XENAPI_PLUGIN_FAILURE</value><value>main</value><value>ValueError</value><value>no</value>",
        ),
    );
    assert_eq!(
        failure(d.call("raises", &[]).await.unwrap_err()),
        ("main".into(), "ValueError".into(), "no".into())
    );
    // A XenAPI code the daemon has: raised as it is.
    d.plugin(
        "handle",
        &failure_of("<value>HANDLE_INVALID</value><value>VM</value><value>OpaqueRef:x</value>"),
    );
    assert_eq!(
        d.call("handle", &[]).await.unwrap_err(),
        ApiError::handle_invalid("VM", "OpaqueRef:x")
    );
    // Any other code travels inside XENAPI_PLUGIN_FAILURE.
    d.plugin(
        "own",
        &failure_of("<value>MY_ERROR</value><value>a</value><value>b</value>"),
    );
    assert_eq!(
        failure(d.call("own", &[]).await.unwrap_err()),
        ("MY_ERROR".into(), r#"["a","b"]"#.into(), String::new())
    );
}

#[tokio::test]
async fn a_plugin_that_hangs_is_killed_at_the_timeout() {
    let d = dir(Duration::from_millis(500));
    d.plugin("hangs", "echo waiting\nexec sleep 60\n");
    let start = Instant::now();
    let (status, stdout, _) = failure(d.call("hangs", &[]).await.unwrap_err());
    assert!(status.starts_with("timeout"), "{status}");
    assert_eq!(stdout, "waiting\n");
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
}

#[tokio::test]
async fn a_plugin_that_cannot_be_run() {
    let d = dir(Duration::from_secs(30));
    std::fs::write(d.settings.plugin_dir.join("not-executable"), "#!/bin/sh\n").unwrap();
    let (status, _, _) = failure(d.call("not-executable", &[]).await.unwrap_err());
    assert!(status.starts_with("cannot run the plugin"), "{status}");
}

#[tokio::test]
async fn extensions_read_the_call_on_stdin_and_answer_any_value() {
    let d = dir(Duration::from_secs(30));
    let seen = d.dir.path().join("stdin");
    let ext = |name: &str, body: &str| {
        let path = d.settings.extension_dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    ext(
        "Ext.sum",
        &format!(
            "[ \"$1\" = --xmlrpc ] || exit 9\ncat > {}\necho '<methodResponse><params><param><value><struct>\
             <member><name>Status</name><value>Success</value></member><member><name>Value</name>\
             <value><array><data><value><int>3</int></value><value>x</value></data></array></value></member>\
             </struct></value></param></params></methodResponse>'\n",
            seen.display()
        ),
    );
    let v = call_extension(
        &d.settings,
        r#"{"method": "Ext.sum", "params": ["OpaqueRef:s", 1, 2], "id": 1}"#,
    )
    .await
    .unwrap();
    assert_eq!(v, Value::set(vec![Value::Int(3), Value::str("x")]));
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        "<?xml version=\"1.0\"?><methodCall><methodName>Ext.sum</methodName><params>\
         <param><value>OpaqueRef:s</value></param><param><value>1</value></param><param><value>2</value></param>\
         </params></methodCall>"
    );
    // Unknown extensions, names that leave the directory, and bad calls.
    for call in [
        r#"{"method": "Ext.none", "params": []}"#,
        r#"{"method": "../plugins/x"}"#,
    ] {
        let e = call_extension(&d.settings, call).await.unwrap_err();
        assert_eq!(e.code(), "MESSAGE_METHOD_UNKNOWN", "{call}");
    }
    for call in ["", "[]", "{\"params\": []}", "{\"method\": 5}"] {
        let e = call_extension(&d.settings, call).await.unwrap_err();
        assert_eq!(e.code(), "INTERNAL_ERROR", "{call}");
    }
    // Failures: a code with strings, a bare string, a fault (a protocol failure).
    ext(
        "Ext.fails",
        "echo '<methodResponse><params><param><value><struct><member><name>Status</name><value>Failure</value></member>\
         <member><name>ErrorDescription</name><value><array><data><value>INVALID_VALUE</value><value>a</value><value>b</value>\
         </data></array></value></member></struct></value></param></params></methodResponse>'\n",
    );
    let e = call_extension(&d.settings, r#"{"method": "Ext.fails"}"#)
        .await
        .unwrap_err();
    assert_eq!(e, ApiError::invalid_value("a", "b"));
    ext(
        "Ext.fault",
        "echo '<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>1</int></value></member>\
         <member><name>faultString</name><value>no</value></member></struct></value></fault></methodResponse>'\n",
    );
    let e = call_extension(&d.settings, r#"{"method": "Ext.fault"}"#)
        .await
        .unwrap_err();
    assert_eq!(
        e,
        ApiError::ExtensionProtocolFailure {
            failure: r#"["fault",1,"no"]"#.into()
        }
    );
    ext("Ext.crash", "echo oops >&2\nexit 1\n");
    let e = call_extension(&d.settings, r#"{"method": "Ext.crash"}"#)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("non-zero exit") && e.to_string().contains("oops"),
        "{e}"
    );
    ext("Ext.garbage", "echo garbage\n");
    let e = call_extension(&d.settings, r#"{"method": "Ext.garbage"}"#)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("failed to parse extension output"), "{e}");
}

#[test]
fn plugin_output_readings() {
    assert_eq!(
        read_plugin_output(&SUCCESS.replace("VALUE", "")).unwrap(),
        PluginReply::Success(String::new())
    );
    let empty_value = SUCCESS.replace("<value><string>VALUE</string></value>", "<value/>");
    assert_eq!(
        read_plugin_output(&empty_value).unwrap(),
        PluginReply::Success(String::new())
    );
    let two = "<methodResponse><params><param><value>a</value></param><param><value>b</value></param></params></methodResponse>";
    assert!(matches!(read_plugin_output(two), Err(ResponseError::Shape(_))));
    let no_status = "<methodResponse><params><param><value>a</value></param></params></methodResponse>";
    assert!(matches!(read_plugin_output(no_status), Err(ResponseError::Shape(_))));
    let empty_description = "<methodResponse><params><param><value><struct><member><name>Status</name><value>Failure</value></member>\
        <member><name>ErrorDescription</name><value><array><data/></array></value></member></struct></value></param></params></methodResponse>";
    assert!(matches!(
        read_plugin_output(empty_description),
        Err(ResponseError::Shape(_))
    ));
}
