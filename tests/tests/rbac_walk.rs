//! Who may do what, end to end: an OpenLDAP `slapd` (Debian's, on a loopback port, with its
//! own configuration, certificates and a small tree of users in groups, all under a temp dir)
//! becomes the daemon's directory (`pool.enable_external_auth`, auth_type `LDAP`, StartTLS);
//! a directory user for each role logs in — some as subjects themselves, some through a group
//! or a group in a group — and walks every method `system.listMethods` reports, sync and
//! `Async.`: exactly the messages whose datamodel roles include theirs get past the RBAC
//! check, every other one answers `RBAC_PERMISSION_DENIED [permission, message]` with the
//! reference's wording. Then: a vm-operator starts and stops a VM but may not destroy it or
//! change its memory; read-only reads everything and changes nothing; removing a subject ends
//! the sessions it let in; disabling the directory ends the rest.
//!
//! slapd comes from Debian (`slapd`, `ldap-utils`, and `openssl` for the certificates). When
//! they are missing the test installs them with apt-get (non-interactively, debconf told not
//! to configure a system directory); where that is impossible it fails — it never passes
//! without a directory.

// Test code: the helpers around the #[test] functions may unwrap and panic too (clippy's
// allow-*-in-tests covers only the #[test] functions themselves).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use xapid_tests::check;
use xapid_tests::daemon::{free_port, Daemon, DaemonOpts};
use xapid_tests::datamodel::{message_of, Datamodel, Ty};
use xapid_tests::fixtures;
use xapid_tests::rpc::{Reply, Rpc, Wire};

const ROOT_PW: &str = "rbac-walk-Root-1";
const BASE: &str = "dc=xapid,dc=test";
const READER_DN: &str = "cn=reader,ou=system,dc=xapid,dc=test";
const READER_PW: &str = "Reader-Pw-7";

/// The roles a subject can be given, most privileged first (the datamodel's order).
const ROLES: [&str; 6] = [
    "pool-admin",
    "pool-operator",
    "vm-power-admin",
    "vm-admin",
    "vm-operator",
    "read-only",
];

/// The order the reference lists the roles that have a permission in.
const LISTING_ORDER: [&str; 7] = [
    "vm-power-admin",
    "vm-admin",
    "vm-operator",
    "read-only",
    "client-cert",
    "pool-admin",
    "pool-operator",
];

/// The operations on a task that check who created it (the reference's `assert_op_valid`).
const TASK_OWNED: [&str; 10] = [
    "task.destroy",
    "task.cancel",
    "task.set_status",
    "task.set_progress",
    "task.set_result",
    "task.set_error_info",
    "task.set_resident_on",
    "task.add_to_other_config",
    "task.remove_from_other_config",
    "task.set_other_config",
];

/// Messages the walk does not run even for roles that may: they would stop the daemon.
/// Their refusals are still checked.
const NOT_RUN: [&str; 2] = ["host.shutdown_agent", "host.restart_agent"];

/// Messages that end or hold the caller's session: run with a session of their own.
const OWN_SESSION: [&str; 3] = ["session.logout", "session.local_logout", "event.next"];

// ---------------------------------------------------------------------------------------
// slapd

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd} >/dev/null 2>&1 || test -x /usr/sbin/{cmd}"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure slapd, slapadd and openssl are there, installing Debian's packages if not.
fn ensure_slapd() {
    // The tests of this file run in parallel: one installs, the others wait for it (two
    // apt-gets at once fail on dpkg's lock).
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if have("slapd") && have("slapadd") && have("openssl") {
        return;
    }
    eprintln!("rbac_walk: slapd/openssl missing; installing slapd ldap-utils openssl with apt-get");
    let preseed = Command::new("sh")
        .arg("-c")
        .arg("echo 'slapd slapd/no_configuration boolean true' | debconf-set-selections")
        .status();
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    let packages = [
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "slapd",
        "ldap-utils",
        "openssl",
    ];
    let mut install = apt(&packages);
    if !install.as_ref().is_ok_and(|s| s.success()) {
        // The package lists may never have been fetched on this machine.
        let _ = apt(&["update", "-q"]);
        install = apt(&packages);
    }
    assert!(
        have("slapd") && have("slapadd") && have("openssl"),
        "this test needs OpenLDAP's slapd and openssl (Debian: apt-get install slapd ldap-utils openssl); \
         installing them failed (debconf: {preseed:?}, apt-get: {install:?})"
    );
}

fn sbin(cmd: &str) -> String {
    let p = format!("/usr/sbin/{cmd}");
    if Path::new(&p).exists() {
        p
    } else {
        cmd.to_owned()
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA and a certificate for 127.0.0.1 signed by it: `(ca.pem, server.pem, server.key)`.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    run(Command::new("openssl").current_dir(dir).args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=xapid rbac test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]));
    run(Command::new("openssl").current_dir(dir).args([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]));
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl").current_dir(dir).args([
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]));
    (p("ca.pem"), p("server.pem"), p("server.key"))
}

/// A directory user: login name, password, and the groups (by cn) it is a member of.
struct User {
    uid: &'static str,
    password: &'static str,
}

const USERS: &[User] = &[
    User {
        uid: "pat",
        password: "Pat-Pw-1",
    },
    User {
        uid: "olga",
        password: "Olga-Pw-1",
    },
    User {
        uid: "pia",
        password: "Pia-Pw-1",
    },
    User {
        uid: "vic",
        password: "Vic-Pw-1",
    },
    User {
        uid: "otto",
        password: "Otto-Pw-1",
    },
    User {
        uid: "rita",
        password: "Rita-Pw-1",
    },
    User {
        uid: "nobody",
        password: "Nobody-Pw-1",
    },
    User {
        uid: "norole",
        password: "Norole-Pw-1",
    },
];

/// Groups: cn → members (users by uid, groups by cn).
const GROUPS: &[(&str, &[&str], &[&str])] = &[
    // pool-operator comes through a group.
    ("pool-operators", &["olga"], &[]),
    // vm-admin through a group in a group: vic is in vm-admins-inner, which is in vm-admins.
    ("vm-admins-inner", &["vic"], &[]),
    ("vm-admins", &[], &["vm-admins-inner"]),
    // read-only through a group.
    ("auditors", &["rita"], &[]),
    // A group that is no subject.
    ("bystanders", &["nobody", "pat"], &[]),
];

/// Which subject gives each role: `(role, subject name, its user's uid)`.
const ROLE_SUBJECTS: [(&str, &str, &str); 6] = [
    ("pool-admin", "pat", "pat"),
    ("pool-operator", "pool-operators", "olga"),
    ("vm-power-admin", "pia", "pia"),
    ("vm-admin", "vm-admins", "vic"),
    ("vm-operator", "otto", "otto"),
    ("read-only", "auditors", "rita"),
];

fn user_dn(uid: &str) -> String {
    format!("uid={uid},ou=people,{BASE}")
}

fn group_dn(cn: &str) -> String {
    format!("cn={cn},ou=groups,{BASE}")
}

fn tree_ldif() -> String {
    let mut l = format!(
        "dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: xapid\no: xapid rbac test\n\n\
         dn: ou=system,{BASE}\nobjectClass: organizationalUnit\nou: system\n\n\
         dn: {READER_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: reader\nuserPassword: {READER_PW}\n\n\
         dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{BASE}\nobjectClass: organizationalUnit\nou: groups\n\n"
    );
    for (i, u) in USERS.iter().enumerate() {
        l.push_str(&format!(
            "dn: {}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\nuid: {}\ncn: {} Tester\nsn: Tester\n\
             displayName: {} T.\nmail: {}@xapid.test\nuidNumber: {}\ngidNumber: 100\nhomeDirectory: /home/{}\nuserPassword: {}\n\n",
            user_dn(u.uid),
            u.uid,
            u.uid,
            u.uid,
            u.uid,
            2000 + i,
            u.uid,
            u.password
        ));
    }
    for (cn, users, groups) in GROUPS {
        l.push_str(&format!("dn: {}\nobjectClass: groupOfNames\ncn: {cn}\n", group_dn(cn)));
        for u in users.iter() {
            l.push_str(&format!("member: {}\n", user_dn(u)));
        }
        for g in groups.iter() {
            l.push_str(&format!("member: {}\n", group_dn(g)));
        }
        l.push('\n');
    }
    l
}

/// A slapd of this test's own; killed when dropped.
struct Slapd {
    child: Child,
    port: u16,
    ca: PathBuf,
    log: PathBuf,
}

impl Slapd {
    fn start(dir: &Path) -> Slapd {
        ensure_slapd();
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let (ca, cert, key) = certificates(dir);
        let d = dir.display();
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/nis.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             pidfile {d}/slapd.pid\n\
             argsfile {d}/slapd.args\n\
             TLSCACertificateFile {}\n\
             TLSCertificateFile {}\n\
             TLSCertificateKeyFile {}\n\
             # Nothing but StartTLS before TLS is up: the daemon must never talk in clear.\n\
             security tls=1\n\
             access to attrs=userPassword by anonymous auth by * none\n\
             access to * by dn.exact=\"{READER_DN}\" read by * none\n\
             database mdb\n\
             suffix \"{BASE}\"\n\
             rootdn \"cn=admin,{BASE}\"\n\
             directory {d}/db\n\
             maxsize 10485760\n",
            ca.display(),
            cert.display(),
            key.display()
        );
        let conf_path = dir.join("slapd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let ldif = dir.join("tree.ldif");
        std::fs::write(&ldif, tree_ldif()).unwrap();
        run(Command::new(sbin("slapadd"))
            .arg("-f")
            .arg(&conf_path)
            .arg("-l")
            .arg(&ldif));
        let port = free_port().unwrap();
        let log = dir.join("slapd.log");
        let child = Command::new(sbin("slapd"))
            .arg("-f")
            .arg(&conf_path)
            .arg("-h")
            .arg(format!("ldap://127.0.0.1:{port}/"))
            .arg("-d")
            .arg("0")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting slapd: {e}"));
        let mut s = Slapd { child, port, ca, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!(
                    "slapd exited at start with {status}: {}",
                    std::fs::read_to_string(&s.log).unwrap_or_default()
                );
            }
            if std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "slapd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The datamodel's roles, read independently of the daemon

/// Every message's parameter types and roles, from `vendor/xenapi/`.
struct Messages {
    params: BTreeMap<String, Vec<(String, Ty)>>,
    roles: BTreeMap<String, BTreeSet<String>>,
}

fn read_vendor(name: &str) -> Json {
    let p = xapid_tests::daemon::workspace_root().join("vendor/xenapi").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

impl Messages {
    fn load() -> Messages {
        let mut m = Messages {
            params: BTreeMap::new(),
            roles: BTreeMap::new(),
        };
        let mut add = |class: &str, msgs: &Json| {
            for msg in msgs.as_array().into_iter().flatten() {
                let (name, parsed) = message_of(msg);
                let name = format!("{class}.{name}");
                let params = parsed.params;
                let roles = msg["roles"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Json::as_str)
                    .map(str::to_owned)
                    .collect();
                m.params.insert(name.clone(), params);
                m.roles.insert(name, roles);
            }
        };
        for c in read_vendor("datamodel.json").as_array().unwrap() {
            add(c["name"].as_str().unwrap(), &c["messages"]);
        }
        let a = read_vendor("additions.json");
        for c in a["classes"].as_array().unwrap() {
            add(c["name"].as_str().unwrap(), &c["messages"]);
        }
        for f in a["fields"]
            .as_array()
            .unwrap()
            .iter()
            .chain(a["messages"].as_array().unwrap())
        {
            add(f["class"].as_str().unwrap(), &f["messages"]);
        }
        m
    }

    /// The roles that may call `method` (its `Async.` form: the message's).
    fn roles_of(&self, method: &str) -> BTreeSet<String> {
        let base = method.strip_prefix("Async.").unwrap_or(method);
        if let Some(r) = self.roles.get(base) {
            return r.clone();
        }
        // get_all_records_where: get_all_records' roles, as in the reference.
        let class = base.rsplit_once('.').unwrap().0;
        self.roles
            .get(&format!("{class}.get_all_records"))
            .cloned()
            .unwrap_or_else(|| panic!("no roles for {method}"))
    }

    fn params_of(&self, method: &str) -> Vec<(String, Ty)> {
        let base = method.strip_prefix("Async.").unwrap_or(method);
        self.params.get(base).cloned().unwrap_or_else(|| {
            assert!(
                base.ends_with(".get_all_records_where"),
                "{method} is not in the datamodel"
            );
            vec![
                ("session_id".into(), Ty::Ref("session".into())),
                ("expr".into(), Ty::Prim("string".into())),
            ]
        })
    }
}

fn listing(roles: &BTreeSet<String>) -> String {
    LISTING_ORDER
        .iter()
        .filter(|r| roles.contains(**r))
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

fn denial(permission: &str, roles: &BTreeSet<String>) -> Vec<String> {
    vec![
        "RBAC_PERMISSION_DENIED".to_owned(),
        permission.to_owned(),
        format!(
            "No permission in user session. (Roles with this permission: {})",
            listing(roles)
        ),
    ]
}

// ---------------------------------------------------------------------------------------
// Helpers

fn login(addr: SocketAddr, user: &str, pw: &str) -> Reply {
    Rpc::new(addr, Wire::Json)
        .call(
            "session.login_with_password",
            &[json!(user), json!(pw), json!("2.21"), json!("rbac-walk")],
        )
        .unwrap()
}

fn login_ok(addr: SocketAddr, user: &str) -> String {
    let pw = USERS.iter().find(|u| u.uid == user).unwrap().password;
    match login(addr, user, pw) {
        Reply::Success(Json::String(s)) => s,
        other => panic!("{user} could not log in: {other:?}"),
    }
}

fn user_of_role(role: &str) -> &'static str {
    ROLE_SUBJECTS.iter().find(|(r, _, _)| *r == role).unwrap().2
}

/// The parameters the walk sends: the session, then a well-typed dummy for each (the null
/// ref for refs, a full constructor record for `create`).
fn walk_params(dm: &Datamodel, method: &str, params: &[(String, Ty)], session: &str) -> Vec<Json> {
    let base = method.strip_prefix("Async.").unwrap_or(method);
    let class = base.split_once('.').unwrap().0;
    params
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| match ty {
            _ if i == 0 => json!(session),
            Ty::Record(c) if c == class => dm.constructor_record(c, &[]),
            other => dm.dummy(other),
        })
        .collect()
}

struct Walked {
    calls: usize,
    allowed: usize,
    denied: usize,
    offenders: Vec<String>,
}

/// One role's walk over every method.
fn walk(addr: SocketAddr, wire: Wire, dm: &Datamodel, msgs: &Messages, methods: &[String], role: &str) -> Walked {
    let user = user_of_role(role);
    let mut rpc = Rpc::new(addr, wire);
    let session = login_ok(addr, user);
    let mut w = Walked {
        calls: 0,
        allowed: 0,
        denied: 0,
        offenders: Vec::new(),
    };
    let destroy_any: BTreeSet<String> = ["pool-admin", "pool-operator"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    for method in methods {
        let base = method.strip_prefix("Async.").unwrap_or(method);
        let params = msgs.params_of(method);
        if params.first().map(|(n, _)| n.as_str()) != Some("session_id") {
            continue;
        }
        let roles = msgs.roles_of(method);
        let may = roles.contains(role);
        if may && NOT_RUN.contains(&base) {
            continue;
        }
        let own = OWN_SESSION.contains(&base).then(|| login_ok(addr, user));
        let s = own.as_deref().unwrap_or(&session);
        let p = walk_params(dm, method, &params, s);
        w.calls += 1;
        let reply = rpc.call(method, &p);
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                w.offenders.push(format!("{role} {method} ({wire:?}): transport: {e}"));
                rpc = Rpc::new(addr, wire);
                continue;
            }
        };
        let permission = base.to_ascii_lowercase();
        let expected_denial = if !may {
            Some(denial(&permission, &roles))
        } else if TASK_OWNED.contains(&base) && !destroy_any.contains(role) {
            // Allowed the message, but the (null) task is not theirs.
            Some(denial("task.destroy/any", &destroy_any))
        } else {
            None
        };
        match (&expected_denial, &reply) {
            (Some(want), Reply::Failure(got)) if got == want => w.denied += 1,
            (Some(want), _) => w
                .offenders
                .push(format!("{role} {method} ({wire:?}): expected {want:?}, got {reply:?}")),
            (None, Reply::Failure(got)) if got.first().map(String::as_str) == Some("RBAC_PERMISSION_DENIED") => {
                w.offenders.push(format!(
                    "{role} {method} ({wire:?}): allowed by the datamodel, but {got:?}"
                ))
            }
            (None, _) => w.allowed += 1,
        }
    }
    let _ = rpc.call("session.logout", &[json!(session)]);
    w
}

fn refs(v: &Json) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect()
}

/// A directory (slapd) and a daemon, both under `scratch`.
fn directory_and_daemon(scratch: &Path) -> (Slapd, Daemon) {
    let slapd = Slapd::start(&scratch.join("ldap"));
    let daemon = Daemon::start(
        DaemonOpts {
            state_dir: scratch.join("state"),
            extra: vec![],
            password: ROOT_PW.into(),
        },
        scratch,
    )
    .unwrap();
    (slapd, daemon)
}

fn code(r: &Reply) -> Option<&str> {
    r.code()
}

// ---------------------------------------------------------------------------------------

#[test]
fn every_role_may_call_exactly_its_messages() {
    let scratch = tempfile::Builder::new().prefix("xapid-rbac").tempdir().unwrap();
    let (slapd, daemon) = directory_and_daemon(scratch.path());
    let addr = daemon.addr;
    let dm = Datamodel::load().unwrap();
    let msgs = Messages::load();
    let (mut rpc, root) = daemon.client("rbac-root").unwrap();
    let pool = refs(&rpc.ok("pool.get_all", &[json!(root)]).unwrap()).remove(0);
    let host = refs(&rpc.ok("host.get_all", &[json!(root)]).unwrap()).remove(0);

    // --- The static roles are there, with the reference's uuids.
    let pa = refs(
        &rpc.ok("role.get_by_name_label", &[json!(root), json!("pool-admin")])
            .unwrap(),
    );
    assert_eq!(pa, vec!["OpaqueRef:0165f154-ba3e-034e-6b27-5d271af109ba".to_owned()]);
    let role_ref = |rpc: &mut Rpc, name: &str| {
        refs(&rpc.ok("role.get_by_name_label", &[json!(root), json!(name)]).unwrap()).remove(0)
    };
    let start_perm = rpc
        .ok("role.get_by_permission_name_label", &[json!(root), json!("vm.start")])
        .unwrap();
    let names: Vec<String> = refs(&start_perm)
        .iter()
        .map(|r| {
            rpc.ok("role.get_name_label", &[json!(root), json!(r)])
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "vm-power-admin",
            "vm-admin",
            "vm-operator",
            "pool-admin",
            "pool-operator"
        ]
    );
    let vo = role_ref(&mut rpc, "vm-operator");
    let vo_perms = rpc
        .ok("role.get_permissions_name_label", &[json!(root), json!(vo)])
        .unwrap();
    let vo_perms: BTreeSet<&str> = vo_perms.as_array().unwrap().iter().filter_map(Json::as_str).collect();
    assert!(vo_perms.contains("vm.start") && vo_perms.contains("vm.add_to_other_config/key:folder"));
    assert!(!vo_perms.contains("vm.destroy"));

    // --- Without a directory, nobody but root gets in, and auth.* says it is disabled.
    assert_eq!(
        code(&login(addr, "pat", "Pat-Pw-1")),
        Some("SESSION_AUTHENTICATION_FAILED")
    );
    assert_eq!(
        code(
            &rpc.call("auth.get_subject_identifier", &[json!(root), json!("pat")])
                .unwrap()
        ),
        Some("AUTH_IS_DISABLED")
    );

    // --- Enabling: a wrong service password and an unknown type are refused with the
    // reference's codes; then the directory is connected.
    let ca = slapd.ca.display().to_string();
    let config = |pw: &str| {
        json!({
            "base_dn": BASE,
            "user": READER_DN,
            "pass": pw,
            "ca_cert_file": ca,
        })
    };
    let bad = rpc
        .call(
            "pool.enable_external_auth",
            &[
                json!(root),
                json!(pool),
                config("wrong"),
                json!(slapd.url()),
                json!("LDAP"),
            ],
        )
        .unwrap();
    assert_eq!(code(&bad), Some("POOL_AUTH_ENABLE_FAILED_WRONG_CREDENTIALS"), "{bad:?}");
    let ad = rpc
        .call(
            "pool.enable_external_auth",
            &[
                json!(root),
                json!(pool),
                config(READER_PW),
                json!(slapd.url()),
                json!("AD"),
            ],
        )
        .unwrap();
    assert_eq!(ad, Reply::Failure(vec!["AUTH_UNKNOWN_TYPE".into(), "AD".into()]));
    rpc.ok(
        "pool.enable_external_auth",
        &[
            json!(root),
            json!(pool),
            config(READER_PW),
            json!(slapd.url()),
            json!("LDAP"),
        ],
    )
    .unwrap();
    assert_eq!(
        rpc.ok("host.get_external_auth_type", &[json!(root), json!(host)])
            .unwrap(),
        json!("LDAP")
    );
    let kept = rpc
        .ok("host.get_external_auth_configuration", &[json!(root), json!(host)])
        .unwrap();
    assert_eq!(kept["base_dn"], json!(BASE));
    assert!(
        kept.get("pass").is_none(),
        "the service password is in the host record: {kept}"
    );
    let pw_file = scratch.path().join("state/external-auth-password");
    assert_eq!(std::fs::metadata(&pw_file).unwrap().permissions().mode() & 0o777, 0o600);
    let again = rpc
        .call(
            "pool.enable_external_auth",
            &[
                json!(root),
                json!(pool),
                config(READER_PW),
                json!(slapd.url()),
                json!("LDAP"),
            ],
        )
        .unwrap();
    assert_eq!(
        again,
        Reply::Failure(vec!["POOL_AUTH_ALREADY_ENABLED".into(), host.clone()])
    );

    // --- The directory answers: names to identifiers, information, groups in groups.
    let sid_of = |rpc: &mut Rpc, name: &str| {
        rpc.ok("auth.get_subject_identifier", &[json!(root), json!(name)])
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    };
    let vic = sid_of(&mut rpc, "vic");
    let inner = sid_of(&mut rpc, "vm-admins-inner");
    let outer = sid_of(&mut rpc, "vm-admins");
    let groups = rpc.ok("auth.get_group_membership", &[json!(root), json!(vic)]).unwrap();
    let groups: BTreeSet<String> = refs(&groups).into_iter().collect();
    assert_eq!(groups, [inner.clone(), outer.clone()].into_iter().collect());
    let info = rpc
        .ok(
            "auth.get_subject_information_from_identifier",
            &[json!(root), json!(vic)],
        )
        .unwrap();
    assert_eq!(info["subject-name"], json!("vic"));
    assert_eq!(info["subject-is-group"], json!("false"));
    assert_eq!(info["subject-upn"], json!("vic@xapid.test"));
    assert_eq!(info["subject-account-locked"], json!("false"));
    assert_eq!(
        code(
            &rpc.call("auth.get_subject_identifier", &[json!(root), json!("no-such-user")])
                .unwrap()
        ),
        Some("SUBJECT_CANNOT_BE_RESOLVED")
    );

    // --- Subjects and their roles. A user of the directory who is no subject, or whose
    // subject has no roles, does not get in; a wrong password is an authentication failure.
    let mut subjects = BTreeMap::new();
    for (role, name, _) in ROLE_SUBJECTS {
        let sid = sid_of(&mut rpc, name);
        let subj = rpc
            .ok(
                "subject.create",
                &[json!(root), json!({"subject_identifier": sid, "other_config": {}})],
            )
            .unwrap();
        let r = role_ref(&mut rpc, role);
        rpc.ok("subject.add_to_roles", &[json!(root), subj.clone(), json!(r)])
            .unwrap();
        assert_eq!(
            rpc.call("subject.add_to_roles", &[json!(root), subj.clone(), json!(r)])
                .unwrap(),
            Reply::Failure(vec!["ROLE_ALREADY_EXISTS".into()])
        );
        subjects.insert(role, (subj.as_str().unwrap().to_owned(), sid));
    }
    let dup = rpc
        .call(
            "subject.create",
            &[
                json!(root),
                json!({"subject_identifier": subjects["pool-admin"].1, "other_config": {}}),
            ],
        )
        .unwrap();
    assert_eq!(dup, Reply::Failure(vec!["SUBJECT_ALREADY_EXISTS".into()]));
    let norole_sid = sid_of(&mut rpc, "norole");
    rpc.ok(
        "subject.create",
        &[
            json!(root),
            json!({"subject_identifier": norole_sid, "other_config": {}}),
        ],
    )
    .unwrap();
    let otto_subject = &subjects["vm-operator"].0;
    let other_config = rpc
        .ok("subject.get_other_config", &[json!(root), json!(otto_subject)])
        .unwrap();
    assert_eq!(other_config["subject-name"], json!("otto"));
    let perms = rpc
        .ok(
            "subject.get_permissions_name_label",
            &[json!(root), json!(otto_subject)],
        )
        .unwrap();
    assert!(refs(&perms).contains(&"vm.start".to_owned()));

    let nobody = login(addr, "nobody", "Nobody-Pw-1");
    assert_eq!(code(&nobody), Some("SESSION_AUTHORIZATION_FAILED"), "{nobody:?}");
    let norole = login(addr, "norole", "Norole-Pw-1");
    match &norole {
        Reply::Failure(d) => {
            assert_eq!(d[0], "RBAC_PERMISSION_DENIED");
            assert_eq!(d[1], "session.login_with_password");
        }
        other => panic!("a subject without roles logged in: {other:?}"),
    }
    assert_eq!(
        code(&login(addr, "otto", "wrong")),
        Some("SESSION_AUTHENTICATION_FAILED")
    );
    assert_eq!(code(&login(addr, "otto", "")), Some("SESSION_AUTHENTICATION_FAILED"));
    // Root still logs in with its own password.
    assert!(matches!(login(addr, "root", ROOT_PW), Reply::Success(_)));

    // --- Each user's session holds its roles' permissions.
    for (role, _, user) in ROLE_SUBJECTS {
        let s = login_ok(addr, user);
        let rec = rpc.ok("session.get_record", &[json!(root), json!(s)]).unwrap();
        assert_eq!(rec["is_local_superuser"], json!(false), "{role}");
        assert_eq!(rec["auth_user_name"], json!(user), "{role}");
        let held = refs(&rec["rbac_permissions"]);
        assert!(held.contains(&role.to_owned()), "{role}: {held:?}");
        for other in ROLES.iter().filter(|r| **r != role) {
            assert!(!held.contains(&(*other).to_owned()), "{role} also holds {other}");
        }
        rpc.ok("session.logout", &[json!(s)]).unwrap();
    }

    // --- The walk: every method, every role.
    let mut methods = match rpc.call("system.listMethods", &[]).unwrap() {
        Reply::Success(Json::Array(items)) => items
            .iter()
            .filter_map(Json::as_str)
            .filter(|m| !m.starts_with("system."))
            .map(str::to_owned)
            .collect::<Vec<_>>(),
        other => panic!("system.listMethods: {other:?}"),
    };
    methods.sort();
    let asyncs = methods.iter().filter(|m| m.starts_with("Async.")).count();
    // Read-only's walk is checked for changes; pool-admin's (which runs the most) goes last.
    let before = check::snapshot(&mut rpc, &root, &dm, None).unwrap();
    let mut offenders = Vec::new();
    let order: Vec<&str> = ROLES.iter().rev().copied().collect();
    for role in order {
        // Each role walks over both wire protocols: the check sits behind both parsers.
        for wire in [Wire::Json, Wire::Xml] {
            let t = Instant::now();
            let w = walk(addr, wire, &dm, &msgs, &methods, role);
            println!(
                "rbac walk {role} ({wire:?}): {} calls ({} methods, {asyncs} of them Async), {} past the check, {} refused, {:.1}s",
                w.calls,
                methods.len(),
                w.allowed,
                w.denied,
                t.elapsed().as_secs_f64()
            );
            assert!(w.allowed > 0 && w.denied > 0, "{role} walked nothing over {wire:?}");
            offenders.extend(w.offenders);
        }
        if role == "read-only" {
            let after = check::snapshot(&mut rpc, &root, &dm, None).unwrap();
            let changed = changes(&before, &after);
            assert!(changed.is_empty(), "read-only changed things:\n{}", changed.join("\n"));
        }
    }
    assert!(
        offenders.is_empty(),
        "{} calls did not get the answer their roles call for:\n{}",
        offenders.len(),
        offenders.iter().take(60).cloned().collect::<Vec<_>>().join("\n")
    );

    // --- A vm-operator starts and stops a VM, may file it in a folder, but may not destroy
    // it, change its memory or set a key reserved to pool admins.
    let (template, _) = fixtures::default_template(&mut rpc, &root).unwrap();
    let vm = rpc
        .ok("VM.clone", &[json!(root), json!(template), json!("rbac-vm")])
        .unwrap();
    rpc.ok("VM.set_is_a_template", &[json!(root), vm.clone(), json!(false)])
        .unwrap();
    let otto = login_ok(addr, "otto");
    let mut op = Rpc::new(addr, Wire::Xml);
    op.ok("VM.start", &[json!(otto), vm.clone(), json!(false), json!(false)])
        .unwrap();
    assert_eq!(
        op.ok("VM.get_power_state", &[json!(otto), vm.clone()]).unwrap(),
        json!("Running")
    );
    let vm_admins: BTreeSet<String> = ["vm-power-admin", "vm-admin", "pool-admin", "pool-operator"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let power_admins: BTreeSet<String> = ["vm-power-admin", "pool-admin", "pool-operator"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(
        op.call(
            "VM.set_memory_dynamic_max",
            &[json!(otto), vm.clone(), json!(1i64 << 30)]
        )
        .unwrap(),
        Reply::Failure(denial("vm.set_memory_dynamic_max", &power_admins))
    );
    assert_eq!(
        op.call("Async.VM.set_memory", &[json!(otto), vm.clone(), json!(1i64 << 30)])
            .unwrap(),
        Reply::Failure(denial("vm.set_memory", &power_admins))
    );
    op.ok(
        "VM.add_to_other_config",
        &[json!(otto), vm.clone(), json!("folder"), json!("/ops")],
    )
    .unwrap();
    assert_eq!(
        op.call(
            "VM.add_to_other_config",
            &[json!(otto), vm.clone(), json!("pci"), json!("0/0000:00:01.0")]
        )
        .unwrap(),
        Reply::Failure(denial(
            "vm.add_to_other_config/key:pci",
            &["pool-admin".to_owned()].into_iter().collect()
        ))
    );
    assert_eq!(
        op.call(
            "VM.add_to_other_config",
            &[json!(otto), vm.clone(), json!("color"), json!("red")]
        )
        .unwrap(),
        Reply::Failure(denial("vm.add_to_other_config", &vm_admins))
    );
    let task = op.ok("Async.VM.clean_shutdown", &[json!(otto), vm.clone()]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = op.ok("task.get_status", &[json!(otto), task.clone()]).unwrap();
        if st != json!("pending") {
            assert_eq!(
                st,
                json!("success"),
                "{:?}",
                op.ok("task.get_error_info", &[json!(otto), task.clone()])
            );
            break;
        }
        assert!(Instant::now() < deadline, "the shutdown did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its own task it may destroy; a task root made it may not.
    op.ok("task.destroy", &[json!(otto), task]).unwrap();
    let roots = rpc
        .ok("task.create", &[json!(root), json!("root's"), json!("")])
        .unwrap();
    let destroy_any: BTreeSet<String> = ["pool-admin", "pool-operator"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(
        op.call("task.cancel", &[json!(otto), roots.clone()]).unwrap(),
        Reply::Failure(denial("task.destroy/any", &destroy_any))
    );
    assert_eq!(
        op.call("VM.destroy", &[json!(otto), vm.clone()]).unwrap(),
        Reply::Failure(denial("vm.destroy", &vm_admins))
    );
    assert_eq!(
        op.ok("VM.get_power_state", &[json!(otto), vm.clone()]).unwrap(),
        json!("Halted")
    );
    assert!(
        rpc.ok("VM.get_record", &[json!(root), vm.clone()]).is_ok(),
        "the VM is gone"
    );

    // --- Sessions end with their subject. Otto's subject goes: his session ends. Vic came
    // in through a group in a group; a second subject for vic himself keeps him in when
    // the group's subject goes, and the session then names it.
    let vic_s = login_ok(addr, "vic");
    let vic_direct = rpc
        .ok(
            "subject.create",
            &[json!(root), json!({"subject_identifier": vic, "other_config": {}})],
        )
        .unwrap();
    let ro = role_ref(&mut rpc, "read-only");
    rpc.ok("subject.add_to_roles", &[json!(root), vic_direct.clone(), json!(ro)])
        .unwrap();
    let ids = rpc.ok("session.get_all_subject_identifiers", &[json!(root)]).unwrap();
    let ids: BTreeSet<String> = refs(&ids).into_iter().collect();
    assert!(ids.contains(&vic) && ids.contains(&outer), "{ids:?}");
    assert!(ids.contains(&subjects["vm-operator"].1), "{ids:?}");
    rpc.ok("subject.destroy", &[json!(root), json!(otto_subject)]).unwrap();
    assert_eq!(
        op.call("VM.get_power_state", &[json!(otto), vm.clone()]).unwrap(),
        Reply::Failure(vec!["SESSION_INVALID".into(), otto.clone()]),
        "otto's session outlived his subject"
    );
    assert_eq!(
        code(&login(addr, "otto", "Otto-Pw-1")),
        Some("SESSION_AUTHORIZATION_FAILED")
    );
    rpc.ok("subject.destroy", &[json!(root), json!(subjects["vm-admin"].0)])
        .unwrap();
    assert!(
        op.ok("VM.get_power_state", &[json!(vic_s), vm.clone()]).is_ok(),
        "vic's session ended though another subject lets him in"
    );
    assert_eq!(
        rpc.ok("session.get_subject", &[json!(root), json!(vic_s)]).unwrap(),
        vic_direct
    );

    // --- session.logout_subject_identifier: a pool-operator ends rita's sessions.
    let rita = login_ok(addr, "rita");
    let olga = login_ok(addr, "olga");
    op.ok(
        "session.logout_subject_identifier",
        &[json!(olga), json!(subjects["read-only"].1)],
    )
    .unwrap();
    assert_eq!(
        code(&op.call("pool.get_all", &[json!(rita)]).unwrap()),
        Some("SESSION_INVALID"),
        "rita's session survived logout_subject_identifier of her group"
    );
    assert!(op.ok("pool.get_all", &[json!(olga)]).is_ok());

    // --- Disabling the directory ends every directory user's session; root stays.
    let pool_admin: BTreeSet<String> = ["pool-admin".to_owned()].into_iter().collect();
    assert_eq!(
        op.call("pool.disable_external_auth", &[json!(olga), json!(pool), json!({})])
            .unwrap(),
        Reply::Failure(denial("pool.disable_external_auth", &pool_admin))
    );
    rpc.ok("pool.disable_external_auth", &[json!(root), json!(pool), json!({})])
        .unwrap();
    for s in [&olga, &vic_s] {
        assert_eq!(
            code(&op.call("pool.get_all", &[json!(s)]).unwrap()),
            Some("SESSION_INVALID")
        );
    }
    assert!(rpc.ok("pool.get_all", &[json!(root)]).is_ok());
    assert_eq!(
        rpc.ok("host.get_external_auth_type", &[json!(root), json!(host)])
            .unwrap(),
        json!("")
    );
    assert!(!pw_file.exists(), "the service password outlived the directory");
    assert_eq!(
        code(&login(addr, "pat", "Pat-Pw-1")),
        Some("SESSION_AUTHENTICATION_FAILED")
    );
    drop(slapd);
}

/// What differs between two snapshots, but for the classes a read-only session may change
/// by itself (its own sessions, tasks and event registrations) and the metrics the daemon
/// updates on its own.
fn changes(before: &check::Snapshot, after: &check::Snapshot) -> Vec<String> {
    let volatile =
        |class: &str| matches!(class, "session" | "task" | "event" | "data_source") || class.ends_with("_metrics");
    let mut out = Vec::new();
    let classes: BTreeSet<&String> = before.records.keys().chain(after.records.keys()).collect();
    for class in classes {
        if volatile(class) {
            continue;
        }
        let empty = serde_json::Map::new();
        let b = before.records.get(class).unwrap_or(&empty);
        let a = after.records.get(class).unwrap_or(&empty);
        for (r, rec) in a {
            match b.get(r) {
                None => out.push(format!("{class} {r} appeared")),
                Some(old) if old != rec => {
                    let (Json::Object(o), Json::Object(n)) = (old, rec) else {
                        continue;
                    };
                    for (k, v) in n {
                        if o.get(k) != Some(v) {
                            out.push(format!("{class} {r}.{k}: {:?} -> {v}", o.get(k)));
                        }
                    }
                }
                Some(_) => {}
            }
        }
        for r in b.keys() {
            if !a.contains_key(r) {
                out.push(format!("{class} {r} disappeared"));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The audit trail

/// `GET <path>` over a fresh connection: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

/// Calls of a pool-admin and a read-only directory user land in the audit log with their
/// outcome (allowed or denied, ok or the error), under their subject identifiers and names;
/// no password or session ref is written; only a pool-admin (not the read-only user) may
/// read the log.
#[test]
fn the_audit_trail_names_directory_users_and_no_secret() {
    let scratch = tempfile::Builder::new().prefix("xapid-audit").tempdir().unwrap();
    let (slapd, daemon) = directory_and_daemon(scratch.path());
    let addr = daemon.addr;
    let (mut rpc, root) = daemon.client("audit-root").unwrap();
    let pool = refs(&rpc.ok("pool.get_all", &[json!(root)]).unwrap()).remove(0);
    let config = json!({
        "base_dn": BASE,
        "user": READER_DN,
        "pass": READER_PW,
        "ca_cert_file": slapd.ca.display().to_string(),
    });
    rpc.ok(
        "pool.enable_external_auth",
        &[
            json!(root),
            json!(pool),
            config.clone(),
            json!(slapd.url()),
            json!("LDAP"),
        ],
    )
    .unwrap();
    let mut sids = BTreeMap::new();
    for (role, name) in [("pool-admin", "pat"), ("read-only", "auditors")] {
        let sid = rpc
            .ok("auth.get_subject_identifier", &[json!(root), json!(name)])
            .unwrap();
        let subj = rpc
            .ok(
                "subject.create",
                &[json!(root), json!({"subject_identifier": sid, "other_config": {}})],
            )
            .unwrap();
        let r = refs(&rpc.ok("role.get_by_name_label", &[json!(root), json!(role)]).unwrap()).remove(0);
        rpc.ok("subject.add_to_roles", &[json!(root), subj, json!(r)]).unwrap();
        sids.insert(name, sid.as_str().unwrap().to_owned());
    }
    let rita_sid = rpc
        .ok("auth.get_subject_identifier", &[json!(root), json!("rita")])
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let pat = login_ok(addr, "pat");
    let rita = login_ok(addr, "rita");
    let mut c = Rpc::new(addr, Wire::Xml);

    // The pool-admin renames the pool (allowed, ok) and enables the directory again with its
    // password (allowed, an error); the read-only user tries to rename it (denied).
    c.ok("pool.set_name_label", &[json!(pat), json!(pool), json!("audited pool")])
        .unwrap();
    let again = c
        .call(
            "pool.enable_external_auth",
            &[json!(pat), json!(pool), config, json!(slapd.url()), json!("LDAP")],
        )
        .unwrap();
    assert_eq!(code(&again), Some("POOL_AUTH_ALREADY_ENABLED"));
    let refused = c
        .call("pool.set_name_label", &[json!(rita), json!(pool), json!("not mine")])
        .unwrap();
    assert_eq!(code(&refused), Some("RBAC_PERMISSION_DENIED"));
    c.ok("session.logout", &[json!(rita)]).unwrap();
    let rita = login_ok(addr, "rita");

    // The read-only user may not read the log; the pool-admin may.
    let (status, body) = http_get(addr, &format!("/audit_log?session_id={rita}"));
    assert_eq!(status, 403, "{body}");
    let (status, log) = http_get(addr, &format!("/audit_log?session_id={pat}"));
    assert_eq!(status, 200, "{log}");
    let pat_sid = &sids["pat"];
    let has = |needle: &str| log.lines().any(|l| l.contains(needle));
    assert!(
        has(&format!("'{pat_sid}' 'pat' 'ALLOWED' 'OK' 'API' 'session.create' (('uname' 'pat' '' '') ('originator' 'rbac-walk' '' ''))")),
        "{log}"
    );
    assert!(
        has(&format!(
            "'{pat_sid}' 'pat' 'ALLOWED' 'OK' 'API' 'pool.set_name_label' (('self' 'audited pool' "
        )),
        "{log}"
    );
    // `value` is no descriptive parameter: only the object is named (after the call).
    assert!(!has("'value'"), "{log}");
    assert!(
        has(&format!(
            "'{pat_sid}' 'pat' 'ALLOWED' 'ERROR:POOL_AUTH_ALREADY_ENABLED: [ "
        )),
        "{log}"
    );
    assert!(
        has(&format!("'{rita_sid}' 'rita' 'DENIED' '' 'API' 'pool.set_name_label'")),
        "{log}"
    );
    assert!(
        has(&format!(
            "'{rita_sid}' 'rita' 'ALLOWED' 'OK' 'API' 'session.destroy' (('originator' 'rbac-walk' '' ''))"
        )),
        "{log}"
    );
    assert!(
        has(&format!("'{rita_sid}' 'rita' 'DENIED' '' 'HTTP' 'http/get_audit_log'")),
        "{log}"
    );
    // Root's calls are the local superuser's; its login is not recorded (as in the reference).
    assert!(
        has("'LOCAL_SUPERUSER' 'root' 'ALLOWED' 'OK' 'API' 'subject.add_to_roles'"),
        "{log}"
    );
    // Read-only calls are not recorded.
    assert!(!has("'auth.get_subject_identifier'"), "{log}");
    // No secret: no password, no session ref.
    for secret in [READER_PW, ROOT_PW, "Pat-Pw-1", "Rita-Pw-1", &pat, &rita, &root] {
        assert!(!log.contains(secret), "{secret} is in the audit log");
    }
    let on_disk = std::fs::read_to_string(scratch.path().join("state/audit.log")).unwrap();
    assert_eq!(on_disk, log);
}
