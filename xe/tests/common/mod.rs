//! A daemon for the xe tests and a way to run the project's `xe` against it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use xapid_tests::daemon::{free_port, Daemon, DaemonOpts};

/// The root password the tests' daemons get.
pub const PASSWORD: &str = "xe-test-password";

/// A daemon with plain HTTP and HTTPS listeners, and a scratch home directory for `xe`.
pub struct Host {
    pub daemon: Daemon,
    pub tls_port: u16,
    pub scratch: tempfile::TempDir,
}

impl Host {
    pub fn start(name: &str) -> Host {
        let scratch = tempfile::Builder::new().prefix(name).tempdir().unwrap();
        let tls_port = free_port().unwrap();
        let daemon = Daemon::start(
            DaemonOpts {
                state_dir: scratch.path().join("state"),
                extra: vec!["--tls-listen".into(), format!("127.0.0.1:{tls_port}")],
                password: PASSWORD.into(),
            },
            scratch.path(),
        )
        .unwrap();
        std::fs::create_dir_all(scratch.path().join("home")).unwrap();
        std::fs::create_dir_all(scratch.path().join("work")).unwrap();
        Host {
            daemon,
            tls_port,
            scratch,
        }
    }

    /// `$HOME` for `xe` (where `~/.xe` is read).
    pub fn home(&self) -> PathBuf {
        self.scratch.path().join("home")
    }

    /// The working directory `xe` runs in.
    pub fn work(&self) -> PathBuf {
        self.scratch.path().join("work")
    }

    pub fn port(&self) -> u16 {
        self.daemon.addr.port()
    }

    /// `xe` with no connection settings added.
    pub fn bare(&self, args: &[&str]) -> Run {
        self.bare_with_stdin(args, "")
    }

    pub fn bare_with_stdin(&self, args: &[&str], stdin: &str) -> Run {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_xe"))
            .args(args)
            .env("HOME", self.home())
            .env_remove("XE_EXTRA_ARGS")
            .current_dir(self.work())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        Run::from(child.wait_with_output().unwrap(), args)
    }

    /// `xe` over plain HTTP as root.
    pub fn xe(&self, args: &[&str]) -> Run {
        self.xe_with_stdin(args, "")
    }

    pub fn xe_with_stdin(&self, args: &[&str], stdin: &str) -> Run {
        let port = self.port().to_string();
        let mut all = vec!["-s", "localhost", "-p", &port, "--nossl", "-u", "root", "-pw", PASSWORD];
        all.extend_from_slice(args);
        self.bare_with_stdin(&all, stdin)
    }

    /// `xe` that must succeed; its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.xe(args);
        assert_eq!(r.code, 0, "xe {args:?} failed: {r:?}");
        r.stdout
    }

    /// `xe` that must succeed printing one line; that line.
    pub fn one(&self, args: &[&str]) -> String {
        let out = self.ok(args);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "xe {args:?} printed {out:?}");
        lines[0].to_owned()
    }

    /// `xe` that must fail with exit status 1 and this XenAPI error code.
    pub fn api_error(&self, args: &[&str], code: &str) -> Vec<String> {
        let r = self.xe(args);
        assert_eq!(r.code, 1, "xe {args:?}: {r:?}");
        let mut lines = r.stderr.lines();
        assert_eq!(
            lines.next(),
            Some(format!("Error code: {code}").as_str()),
            "xe {args:?}: {r:?}"
        );
        let params = lines
            .next()
            .and_then(|l| l.strip_prefix("Error parameters: "))
            .unwrap_or_else(|| panic!("xe {args:?}: {r:?}"));
        params.split(", ").map(str::to_owned).collect()
    }
}

/// What one `xe` run did.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Run {
    fn from(o: Output, args: &[&str]) -> Run {
        Run {
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            code: o.status.code().unwrap_or(-1),
        }
    }
}

/// A uuid's shape.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}
