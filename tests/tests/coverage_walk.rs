//! Coverage walk: every message of the vendored datamodel (`vendor/xenapi/datamodel.json` and
//! `additions.json`, read here independently of the daemon's tables, plus each class's implicit
//! `get_all_records_where`) is called once on a live
//! daemon over JSON-RPC with well-typed placeholder arguments (the null ref, empty strings, sets
//! and maps, 0, false, the first enum value, a full record for a constructor); the set that
//! answers `NOT_IMPLEMENTED` must be exactly the set `docs/api-coverage.md` lists under
//! "Answer `NOT_IMPLEMENTED [function]`:" for each class.
//!
//! Messages that end the session or stop the host are called last; a call that leaves the
//! session invalid is retried once after a new login; a daemon that dies is noted and
//! restarted; `session.change_password` gets a wrong old password and the root password is
//! checked to still work at the end.

// Test code: the helpers around the #[test] functions may unwrap and panic too (clippy's
// allow-*-in-tests covers only the #[test] functions themselves).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use xapid_tests::daemon::{workspace_root, Daemon, DaemonOpts};
use xapid_tests::datamodel::{message_of, Datamodel, Message, Ty};
use xapid_tests::http::HttpClient;
use xapid_tests::rpc::{Reply, Rpc, Wire};

const PASSWORD: &str = "coverage-walk-Pw-1";
const ORIGINATOR: &str = "coverage-walk";
/// The longest one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Messages called after all the others, in this order: they end the session, or would stop
/// or reconfigure the host if they ran.
const LAST: &[&str] = &[
    "session.change_password",
    "session.logout",
    "session.local_logout",
    "pool.emergency_transition_to_master",
    "pool.emergency_reset_master",
    "pool.management_reconfigure",
    "host.management_disable",
    "host.local_management_reconfigure",
    "host.management_reconfigure",
    "host.emergency_ha_disable",
    "host.emergency_disable_tls_verification",
    "host.emergency_reenable_tls_verification",
    "host.emergency_reset_server_certificate",
    "host.emergency_clear_mandatory_guidance",
    "host.reboot",
    "host.shutdown",
    "host.restart_agent",
    "host.shutdown_agent",
];

/// Every message of the vendored datamodel as `Class.message`, with its parameters; also each
/// class's implicit `get_all_records_where`, and the messages `additions.json` adds to existing
/// classes under `messages` (which `Datamodel::load` leaves out).
fn all_messages(dm: &Datamodel) -> BTreeMap<String, Message> {
    let mut out = BTreeMap::new();
    for (class, c) in &dm.classes {
        for (name, m) in &c.messages {
            out.insert(format!("{class}.{name}"), m.clone());
        }
    }
    // `get_all_records_where`: implicit for every class with `get_all_records`, and not listed
    // in the published datamodel.
    for (class, c) in &dm.classes {
        if c.messages.contains_key("get_all_records") && !c.messages.contains_key("get_all_records_where") {
            let params = vec![
                ("session_id".to_owned(), Ty::Ref("session".into())),
                ("expr".to_owned(), Ty::Prim("string".into())),
            ];
            out.insert(format!("{class}.get_all_records_where"), Message { params });
        }
    }
    let path = workspace_root().join("vendor/xenapi/additions.json");
    let additions: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for group in additions["messages"].as_array().into_iter().flatten() {
        let class = group["class"].as_str().unwrap();
        for m in group["messages"].as_array().into_iter().flatten() {
            let (name, msg) = message_of(m);
            out.insert(format!("{class}.{name}"), msg);
        }
    }
    out
}

/// The placeholder arguments of `method` for `session`.
fn arguments(dm: &Datamodel, method: &str, m: &Message, session: &str) -> Vec<Json> {
    let (class, name) = method.split_once('.').unwrap();
    let mut args: Vec<Json> = m
        .params
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| match ty {
            _ if i == 0 && m.takes_session() => json!(session),
            Ty::Record(c) if name == "create" && c == class => dm.constructor_record(c, &[]),
            other => dm.dummy(other),
        })
        .collect();
    if method == "session.change_password" {
        // (session, old_pwd, new_pwd): a wrong old password, so nothing may change.
        args[1] = json!("not-the-root-password");
        args[2] = json!("coverage-walk-must-not-be-set");
    }
    if name == "get_all_records_where" {
        args[1] = json!("true");
    }
    args
}

/// `Class.message` for each entry of the per-class "Answer `NOT_IMPLEMENTED [function]`:"
/// lists of docs/api-coverage.md.
fn documented_not_implemented() -> BTreeSet<String> {
    let text = std::fs::read_to_string(workspace_root().join("docs/api-coverage.md")).unwrap();
    let mut out = BTreeSet::new();
    let mut class: Option<&str> = None;
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("## ") {
            class = Some(c.trim());
        } else if let Some(list) = line.strip_prefix("Answer `NOT_IMPLEMENTED [function]`:") {
            let c = class.unwrap_or_else(|| panic!("a NOT_IMPLEMENTED list before any class heading: {line}"));
            for item in list.split(',') {
                let m = item.trim().trim_matches('`');
                assert!(!m.is_empty(), "empty entry in the list of {c}: {line}");
                out.insert(format!("{c}.{m}"));
            }
        }
    }
    out
}

/// What one call came to.
#[derive(Debug)]
enum Outcome {
    Answer(Reply),
    /// No XenAPI answer (transport failure, timeout, not a XenAPI reply).
    NoAnswer(String),
    /// The daemon was found dead after the call (it was restarted).
    KilledDaemon(String),
}

struct Walker<'a> {
    dm: &'a Datamodel,
    daemon: Daemon,
    rpc: Rpc,
    session: String,
    relogins: usize,
    restarts: Vec<String>,
}

impl Walker<'_> {
    fn connect(&mut self) {
        self.rpc = Rpc::new(self.daemon.addr, Wire::Json);
        self.rpc.http = HttpClient::new(self.daemon.addr, CALL_TIMEOUT);
        self.session = self
            .rpc
            .login(PASSWORD, ORIGINATOR)
            .unwrap_or_else(|e| panic!("login as root failed (did a walked call change the password?): {e}"));
        self.relogins += 1;
    }

    /// After `host.restart_agent` answered: the daemon stops answering (a second later), then
    /// answers again as the same process (it ran itself again, not a new child), on a new
    /// session.
    fn restarted_itself(&mut self) {
        let pid = self.daemon.pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut probe = Rpc::new(self.daemon.addr, Wire::Json);
        probe.http = HttpClient::new(self.daemon.addr, Duration::from_secs(2));
        while probe.call("pool.get_all", &[json!("")]).is_ok() {
            assert!(
                Instant::now() < deadline,
                "host.restart_agent answered but the daemon never stopped"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.daemon
            .wait_ready(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("after host.restart_agent: {e}"));
        assert!(self.daemon.alive(), "after host.restart_agent the process is gone");
        assert_eq!(self.daemon.pid(), pid);
        self.connect();
    }

    fn call_once(&mut self, method: &str, m: &Message) -> Outcome {
        let args = arguments(self.dm, method, m, &self.session);
        match self.rpc.call(method, &args) {
            Ok(reply) => Outcome::Answer(reply),
            Err(e) => {
                if self.daemon.alive() {
                    self.rpc.http.reset();
                    Outcome::NoAnswer(e.to_string())
                } else {
                    let tail = self.daemon.log_tail();
                    self.restarts.push(method.to_owned());
                    self.daemon.restart().unwrap();
                    self.connect();
                    Outcome::KilledDaemon(format!("{e}; log tail:\n{tail}"))
                }
            }
        }
    }

    /// Calls `method` once (twice if the first found our session invalid: after a new login).
    fn call(&mut self, method: &str, m: &Message) -> Outcome {
        let first = self.call_once(method, m);
        let ours = m.takes_session();
        match &first {
            Outcome::Answer(Reply::Failure(d)) if ours && d.first().map(String::as_str) == Some("SESSION_INVALID") => {
                self.connect();
                self.call_once(method, m)
            }
            _ => first,
        }
    }
}

#[test]
fn exactly_the_documented_messages_answer_not_implemented() {
    let dm = Datamodel::load().unwrap();
    let messages = all_messages(&dm);
    let documented = documented_not_implemented();
    assert!(
        messages.len() > 1500,
        "only {} messages read from the datamodel",
        messages.len()
    );
    assert!(
        !documented.is_empty(),
        "no NOT_IMPLEMENTED list parsed from docs/api-coverage.md"
    );

    let scratch = tempfile::Builder::new().prefix("xapid-coverage").tempdir().unwrap();
    let daemon = Daemon::start(
        DaemonOpts {
            state_dir: scratch.path().join("state"),
            extra: vec![],
            password: PASSWORD.into(),
        },
        scratch.path(),
    )
    .unwrap();
    let addr = daemon.addr;
    let mut w = Walker {
        dm: &dm,
        daemon,
        rpc: Rpc::new(addr, Wire::Json),
        session: String::new(),
        relogins: 0,
        restarts: Vec::new(),
    };
    w.connect();

    let mut order: Vec<&String> = messages.keys().filter(|k| !LAST.contains(&k.as_str())).collect();
    order.extend(LAST.iter().filter_map(|l| messages.get_key_value(*l).map(|(k, _)| k)));
    assert_eq!(order.len(), messages.len());

    let started = Instant::now();
    let mut not_implemented = BTreeSet::new();
    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
    let mut unreachable = Vec::new();
    let mut slow = Vec::new();
    let mut wrong_function = Vec::new();
    let mut shutdown_agent = None;
    for method in order {
        let m = &messages[method];
        if method == "host.shutdown_agent" {
            // Stops the daemon: called once the rest is checked, below.
            shutdown_agent = Some(m);
            continue;
        }
        let t0 = Instant::now();
        let outcome = w.call(method, m);
        let took = t0.elapsed();
        if took > Duration::from_secs(2) {
            slow.push(format!("{method}: {took:?}"));
        }
        let code = match &outcome {
            Outcome::Answer(Reply::Success(_)) => "(success)".to_owned(),
            Outcome::Answer(Reply::Failure(d)) => d.first().cloned().unwrap_or_else(|| "(empty failure)".into()),
            Outcome::NoAnswer(_) => "(no answer)".to_owned(),
            Outcome::KilledDaemon(_) => "(daemon died)".to_owned(),
        };
        *by_code.entry(code.clone()).or_default() += 1;
        match &outcome {
            Outcome::Answer(Reply::Failure(d)) if code == "NOT_IMPLEMENTED" => {
                not_implemented.insert(method.clone());
                if d.len() != 2 || d[1].is_empty() {
                    wrong_function.push(format!("{method}: {d:?}"));
                }
            }
            Outcome::Answer(Reply::Failure(d))
                if code == "MESSAGE_METHOD_UNKNOWN" || code == "MESSAGE_PARAMETER_COUNT_MISMATCH" =>
            {
                unreachable.push(format!("{method}: {d:?}"));
            }
            Outcome::NoAnswer(e) => unreachable.push(format!("{method}: no answer: {e}")),
            Outcome::KilledDaemon(e) => unreachable.push(format!("{method}: the daemon died: {e}")),
            _ => {}
        }
        // These end the session when they succeed: start the next call on a fresh one.
        if matches!(method.as_str(), "session.logout" | "session.local_logout") {
            w.connect();
        }
    }
    println!(
        "coverage walk: {} messages in {:?}; {} answer NOT_IMPLEMENTED ({} documented); {} logins; answers: {by_code:?}",
        messages.len(),
        started.elapsed(),
        not_implemented.len(),
        documented.len(),
        w.relogins
    );
    if !slow.is_empty() {
        println!("calls slower than 2 s: {slow:?}");
    }

    // The root password is what it was.
    let mut check = Rpc::new(addr, Wire::Json);
    let s = check.login(PASSWORD, "coverage-walk-check");
    assert!(s.is_ok(), "the root password no longer works after the walk: {s:?}");

    let only_walked: Vec<&String> = not_implemented.difference(&documented).collect();
    let only_documented: Vec<&String> = documented.difference(&not_implemented).collect();
    let mut problems = Vec::new();
    if !only_walked.is_empty() {
        problems.push(format!(
            "{} answer NOT_IMPLEMENTED but docs/api-coverage.md does not list them:\n  {}",
            only_walked.len(),
            only_walked.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  ")
        ));
    }
    if !only_documented.is_empty() {
        problems.push(format!(
            "{} are listed as NOT_IMPLEMENTED in docs/api-coverage.md but answered otherwise:\n  {}",
            only_documented.len(),
            only_documented
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }
    if !unreachable.is_empty() {
        problems.push(format!(
            "{} calls never reached their message:\n  {}",
            unreachable.len(),
            unreachable.join("\n  ")
        ));
    }
    if !wrong_function.is_empty() {
        problems.push(format!(
            "{} NOT_IMPLEMENTED answers do not name the function:\n  {}",
            wrong_function.len(),
            wrong_function.join("\n  ")
        ));
    }
    if !w.restarts.is_empty() {
        problems.push(format!("the daemon died during: {:?}", w.restarts));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // host.restart_agent with this host (the walk's placeholder named none): it answers, then
    // the daemon runs again with its state.
    let host = match w.rpc.call("host.get_all", &[json!(w.session)]) {
        Ok(Reply::Success(Json::Array(hosts))) => hosts[0].clone(),
        other => panic!("host.get_all: {other:?}"),
    };
    let reply = w.rpc.call("host.restart_agent", &[json!(w.session), host]);
    assert!(matches!(reply, Ok(Reply::Success(_))), "host.restart_agent: {reply:?}");
    w.restarted_itself();
    let s = Rpc::new(addr, Wire::Json).login(PASSWORD, "coverage-walk-check");
    assert!(
        s.is_ok(),
        "the root password no longer works after host.restart_agent: {s:?}"
    );

    // Last: host.shutdown_agent answers, then the daemon exits with status 0.
    let m = shutdown_agent.expect("host.shutdown_agent is in the datamodel");
    let outcome = w.call("host.shutdown_agent", m);
    assert!(
        matches!(outcome, Outcome::Answer(Reply::Success(_))),
        "host.shutdown_agent: {outcome:?}"
    );
    let status = w.daemon.exited_within(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "after host.shutdown_agent the daemon did not exit with status 0 within 20 s: {status:?}; log:\n{}",
        w.daemon.log_tail()
    );
}
