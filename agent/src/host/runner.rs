//! Runs a helper program (a plugin, an extension, a host script) without blocking a worker:
//! a tokio child process in its own process group, with a bounded run time and bounded
//! output. On a timeout, on too much output, or when the call is dropped (a cancelled task),
//! the whole group is killed.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// How long output is still read after the program exits, for what a descendant that kept
/// its pipes open writes (the reference reads a plugin's output from files once it exits, so
/// a background child cannot hold the call up).
const GRACE: Duration = Duration::from_millis(500);

/// What to run.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Its whole environment.
    pub env: Vec<(OsString, OsString)>,
    /// What it reads on stdin (else /dev/null).
    pub stdin: Option<Vec<u8>>,
    /// How long it may run.
    pub timeout: Duration,
    /// The most stdout kept; more ends the run.
    pub stdout_limit: usize,
    /// The most stderr kept; more ends the run.
    pub stderr_limit: usize,
}

impl Spec {
    /// `program args…` with the given environment, nothing on stdin, and the plugin limits.
    pub fn new(
        program: impl Into<PathBuf>,
        args: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        timeout: Duration,
    ) -> Spec {
        Spec {
            program: program.into(),
            args,
            env,
            stdin: None,
            timeout,
            stdout_limit: super::settings::PLUGIN_STDOUT_LIMIT,
            stderr_limit: super::settings::PLUGIN_STDERR_LIMIT,
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// A signal ended it (its number).
    Signalled(i32),
    /// It ran past its time and was killed.
    TimedOut,
    /// It wrote more than the limit and was killed.
    TooMuchOutput,
}

impl Ended {
    /// The reference's words for a failed run (`non-zero exit`, `signal: SIGKILL`), and ours
    /// for the two endings it does not have.
    pub fn describe(&self, timeout: Duration) -> String {
        match self {
            Ended::Exited(0) => "success".to_owned(),
            Ended::Exited(_) => "non-zero exit".to_owned(),
            Ended::Signalled(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(sig) => format!("signal: {}", sig.as_str()),
                Err(_) => format!("signal: {s}"),
            },
            Ended::TimedOut => format!("timeout: no answer in {} s", timeout.as_secs()),
            Ended::TooMuchOutput => "output too large".to_owned(),
        }
    }
}

/// A finished run.
#[derive(Clone, Debug)]
pub struct Finished {
    /// How it ended.
    pub ended: Ended,
    /// What it wrote on stdout (up to the limit).
    pub stdout: Vec<u8>,
    /// What it wrote on stderr (up to the limit).
    pub stderr: Vec<u8>,
}

impl Finished {
    /// Stdout as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// Stderr as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Kills the child's process group when dropped while armed.
struct GroupGuard {
    pgid: Option<nix::unistd::Pid>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // The leader is not reaped yet, so the group id still names this group.
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Output past the limit.
struct Overflow;

/// Reads `r` to its end into `buf`, or to `limit` bytes and then fails.
async fn drain<R: AsyncRead + Unpin>(r: Option<R>, buf: &mut Vec<u8>, limit: usize) -> Result<(), Overflow> {
    let Some(mut r) = r else { return Ok(()) };
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => n,
        };
        let room = limit.saturating_sub(buf.len());
        if n > room {
            buf.extend_from_slice(chunk.get(..room).unwrap_or_default());
            return Err(Overflow);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

fn ended_of(status: ExitStatus) -> Ended {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => Ended::Exited(c),
        (None, Some(s)) => Ended::Signalled(s),
        (None, None) => Ended::Exited(-1),
    }
}

/// Runs `spec` to its end, on a privileged thread (a confined HTTP worker may not start a
/// program; [`crate::privileged`]). Fails only when the program cannot be started. Dropping
/// the future kills the program's group, as on timeout.
pub async fn run(spec: &Spec) -> std::io::Result<Finished> {
    let spec = spec.clone();
    crate::privileged::run_async(move || async move { run_here(&spec).await })
        .await
        .map_err(std::io::Error::other)?
}

/// [`run`] on the calling thread.
async fn run_here(spec: &Spec) -> std::io::Result<Finished> {
    let mut command = tokio::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let mut guard = GroupGuard {
        pgid: child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(nix::unistd::Pid::from_raw),
    };
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let mut out = Vec::new();
    let mut err = Vec::new();

    enum Phase {
        Exited(std::io::Result<ExitStatus>),
        Killed(Ended),
        /// The leader exited, then its group wrote too much: nothing left to kill.
        ExitedOverflow,
    }
    let phase = {
        let feed = async {
            if let (Some(mut w), Some(data)) = (stdin, spec.stdin.as_deref()) {
                // A program that exits without reading its input is not an error here.
                let _ = w.write_all(data).await;
            }
        };
        let outputs = async {
            tokio::try_join!(
                drain(stdout, &mut out, spec.stdout_limit),
                drain(stderr, &mut err, spec.stderr_limit)
            )
        };
        let io = async {
            let ((), r) = tokio::join!(feed, outputs);
            r
        };
        tokio::pin!(io);
        let wait = child.wait();
        tokio::pin!(wait);
        tokio::select! {
            r = &mut io => match r {
                Err(Overflow) => Phase::Killed(Ended::TooMuchOutput),
                Ok(_) => match tokio::time::timeout_at(deadline, &mut wait).await {
                    Ok(status) => Phase::Exited(status),
                    Err(_) => Phase::Killed(Ended::TimedOut),
                },
            },
            status = &mut wait => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(GRACE.min(left), &mut io).await {
                    Ok(Err(Overflow)) => Phase::ExitedOverflow,
                    _ => Phase::Exited(status),
                }
            }
            () = tokio::time::sleep_until(deadline) => Phase::Killed(Ended::TimedOut),
        }
    };
    let ended = match phase {
        Phase::Exited(status) => {
            guard.disarm();
            match status {
                Ok(s) => ended_of(s),
                Err(e) => return Err(e),
            }
        }
        Phase::ExitedOverflow => {
            guard.disarm();
            Ended::TooMuchOutput
        }
        Phase::Killed(why) => {
            guard.kill();
            // Reaps the leader (kill_on_drop would too, later).
            let _ = child.kill().await;
            why
        }
    };
    Ok(Finished {
        ended,
        stdout: out,
        stderr: err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn sh(script: &str, timeout: Duration) -> Spec {
        Spec::new(
            "/bin/sh",
            vec!["-c".into(), script.into()],
            vec![("PATH".into(), super::super::settings::PLUGIN_PATH.into())],
            timeout,
        )
    }

    #[tokio::test]
    async fn output_and_status_come_back() {
        let f = run(&sh("echo out; echo err >&2; exit 3", Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(f.ended, Ended::Exited(3));
        assert_eq!(f.stdout, b"out\n");
        assert_eq!(f.stderr, b"err\n");
        assert_eq!(f.ended.describe(Duration::ZERO), "non-zero exit");
    }

    #[tokio::test]
    async fn the_environment_is_only_what_is_given() {
        let f = run(&sh("env", Duration::from_secs(10))).await.unwrap();
        let text = f.stdout_text();
        let names: Vec<&str> = text.lines().filter_map(|l| l.split('=').next()).collect();
        // sh itself may add PWD, SHLVL and `_`.
        assert!(names.contains(&"PATH"), "{text}");
        for n in names {
            assert!(["PATH", "PWD", "SHLVL", "_"].contains(&n), "{n} in {text}");
        }
    }

    #[tokio::test]
    async fn stdin_is_fed_and_closed() {
        let mut spec = sh("cat; echo done", Duration::from_secs(10));
        spec.stdin = Some(b"in\n".to_vec());
        let f = run(&spec).await.unwrap();
        assert_eq!(f.ended, Ended::Exited(0));
        assert_eq!(f.stdout, b"in\ndone\n");
        // A program that never reads a large input still finishes.
        let mut spec = sh("exit 0", Duration::from_secs(10));
        spec.stdin = Some(vec![b'x'; 1 << 20]);
        assert_eq!(run(&spec).await.unwrap().ended, Ended::Exited(0));
    }

    #[tokio::test]
    async fn a_program_past_its_time_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child-pid");
        let script = format!("sleep 30 & echo $! > {}; echo started; wait", marker.display());
        let start = Instant::now();
        let f = run(&sh(&script, Duration::from_millis(500))).await.unwrap();
        assert_eq!(f.ended, Ended::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
        assert_eq!(f.stdout, b"started\n");
        assert!(f.ended.describe(Duration::from_secs(7)).contains("7 s"));
        // The background child was in the group and is gone too.
        let pid: i32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
        let gone = (0..100).any(|_| {
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "));
            if alive {
                std::thread::sleep(Duration::from_millis(20));
            }
            !alive
        });
        assert!(gone, "the child {pid} survived");
    }

    #[tokio::test]
    async fn too_much_output_ends_the_run() {
        let mut spec = sh("while :; do echo xxxxxxxxxxxxxxxx; done", Duration::from_secs(20));
        spec.stdout_limit = 1000;
        let f = run(&spec).await.unwrap();
        assert_eq!(f.ended, Ended::TooMuchOutput);
        assert_eq!(f.stdout.len(), 1000);
        let mut spec = sh("head -c 5000 /dev/zero >&2", Duration::from_secs(20));
        spec.stderr_limit = 100;
        let f = run(&spec).await.unwrap();
        assert_eq!(f.ended, Ended::TooMuchOutput);
        assert_eq!(f.stderr.len(), 100);
    }

    #[tokio::test]
    async fn a_background_child_holding_the_pipes_does_not_hold_the_call() {
        let start = Instant::now();
        let f = run(&sh("sleep 30 & echo answer", Duration::from_secs(20)))
            .await
            .unwrap();
        assert_eq!(f.ended, Ended::Exited(0));
        assert_eq!(f.stdout, b"answer\n");
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn signals_and_missing_programs() {
        let f = run(&sh("kill -TERM $$", Duration::from_secs(10))).await.unwrap();
        assert_eq!(f.ended, Ended::Signalled(15));
        assert_eq!(f.ended.describe(Duration::ZERO), "signal: SIGTERM");
        let missing = Spec::new("/nonexistent/program", vec![], vec![], Duration::from_secs(1));
        assert_eq!(run(&missing).await.unwrap_err().kind(), std::io::ErrorKind::NotFound);
    }
}
