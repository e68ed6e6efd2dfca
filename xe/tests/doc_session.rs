//! docs/xe.md's session, run as written: the shell block after `<!-- xe-session -->` runs in
//! bash with the project's `xe` first on PATH and a `~/.xe` naming a fresh daemon; each `#=>`
//! line is what the command before it must print (`<uuid>` matches any uuid), and a command
//! without one must print nothing and succeed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{is_uuid, root, Host, PASSWORD};
use std::process::Command;

/// One command of the session and what it must print.
#[derive(Debug)]
struct Step {
    command: String,
    expected: Vec<String>,
}

fn session(doc: &str) -> Vec<Step> {
    let start = doc
        .find("<!-- xe-session -->")
        .expect("docs/xe.md has no session marker");
    let rest = &doc[start..];
    let open = rest.find("```sh\n").expect("no sh block after the marker") + "```sh\n".len();
    let close = rest[open..].find("\n```").expect("the session block does not end");
    let mut steps: Vec<Step> = Vec::new();
    for line in rest[open..open + close].lines() {
        if let Some(out) = line.strip_prefix("#=>") {
            let out = out.strip_prefix(' ').unwrap_or(out);
            steps
                .last_mut()
                .expect("output before any command")
                .expected
                .push(out.to_owned());
        } else if !line.trim().is_empty() {
            steps.push(Step {
                command: line.to_owned(),
                expected: Vec::new(),
            });
        }
    }
    steps
}

fn matches(expected: &str, actual: &str) -> bool {
    let parts: Vec<&str> = expected.split("<uuid>").collect();
    if parts.len() == 1 {
        return expected == actual;
    }
    let mut rest = actual;
    for (i, p) in parts.iter().enumerate() {
        let Some(r) = rest.strip_prefix(p) else {
            return false;
        };
        rest = r;
        if i + 1 < parts.len() {
            if rest.len() < 36 || !is_uuid(&rest[..36]) {
                return false;
            }
            rest = &rest[36..];
        }
    }
    rest.is_empty()
}

#[test]
fn the_documented_session_runs_as_written() {
    let doc = std::fs::read_to_string(root().join("docs/xe.md")).unwrap();
    let steps = session(&doc);
    assert!(steps.len() >= 10, "{steps:?}");
    for must in [
        "xe vm-install",
        "xe vm-start",
        "xe vm-snapshot",
        "xe vm-export",
        "xe vm-import",
        "xe vm-uninstall",
        "xe vm-list",
    ] {
        assert!(
            steps.iter().any(|s| s.command.contains(must)),
            "the session lacks {must}"
        );
    }

    let h = Host::start("xe-doc");
    std::fs::write(
        h.home().join(".xe"),
        format!(
            "server=localhost\nport={}\nnossl=true\nusername=root\npassword={PASSWORD}\n",
            h.port()
        ),
    )
    .unwrap();
    let bin = h.scratch.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_xe"), bin.join("xe")).unwrap();

    // One script, so variables carry from step to step; a marker before each step splits
    // the output, and each step's status is printed after it.
    let mut script = String::from("exec 2>&1\n");
    for (i, s) in steps.iter().enumerate() {
        script.push_str(&format!(
            "printf '@@step {i}\\n'\n{}\nprintf '@@status %s\\n' \"$?\"\n",
            s.command
        ));
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("HOME", h.home())
        .env("PATH", path)
        .env_remove("XE_EXTRA_ARGS")
        .current_dir(h.work())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut chunks = text.split("@@step ").skip(1);
    for (i, s) in steps.iter().enumerate() {
        let chunk = chunks
            .next()
            .unwrap_or_else(|| panic!("step {i} `{}` did not run:\n{text}", s.command));
        let body = chunk.split_once('\n').map_or("", |(_, b)| b);
        let (printed, status) = body
            .rsplit_once("@@status ")
            .unwrap_or_else(|| panic!("step {i}: {chunk}"));
        assert_eq!(status.trim(), "0", "`{}` failed:\n{printed}", s.command);
        let lines: Vec<&str> = if printed.is_empty() {
            Vec::new()
        } else {
            printed.strip_suffix('\n').unwrap_or(printed).split('\n').collect()
        };
        assert_eq!(
            lines.len(),
            s.expected.len(),
            "`{}` printed {lines:#?}, the doc shows {:#?}",
            s.command,
            s.expected
        );
        for (want, got) in s.expected.iter().zip(&lines) {
            assert!(
                matches(want, got),
                "`{}`: the doc shows {want:?}, it printed {got:?}",
                s.command
            );
        }
    }
    // The export wrote its archive; the disk round trip left its two files.
    assert!(h.work().join("web.xva").exists());
    assert!(h.work().join("scratch-copy.raw").exists());
}

#[test]
fn uuid_placeholders_match_uuids_only() {
    let u = "0b9e5c3a-1d2f-4e5a-8b7c-9d0e1f2a3b4c";
    assert!(matches("VM : <uuid> (web)", &format!("VM : {u} (web)")));
    assert!(!matches("VM : <uuid> (web)", "VM : nope (web)"));
    assert!(!matches("VM : <uuid> (web)", &format!("VM : {u} (web2)")));
    assert!(matches("", ""));
    assert!(!matches("a", "b"));
}
