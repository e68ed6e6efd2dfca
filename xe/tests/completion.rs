//! xe/completion/xe, the bash completion: sourced in bash with the project's `xe` on PATH
//! and `~/.xe` naming a daemon, it completes commands, a command's parameters, and values
//! that name objects, asking the daemon as a user's shell would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{root, Host, PASSWORD};
use std::process::Command;

/// Completes `line` (the cursor at its end). With `words`, bash's own split of the line at
/// its word breaks (`=` and `:`) is given too, as bash gives it.
fn complete(h: &Host, line: &str, words: Option<&str>) -> Vec<String> {
    let bin = h.scratch.path().join("bin");
    let script = root().join("xe/completion/xe");
    let set_words = match words {
        Some(w) => format!("COMP_WORDS=({w}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1));"),
        None => String::new(),
    };
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}'; COMP_LINE=\"$1\"; COMP_POINT=${{#COMP_LINE}}; {set_words} _xe; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .arg("complete")
        .arg(line)
        .env("HOME", h.home())
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn completion_asks_the_host() {
    let h = Host::start("xe-complete");
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
    let dom0 = h.one(&["vm-list", "--minimal"]);

    assert_eq!(complete(&h, "xe vm-sta", None), vec!["vm-start"]);
    let mut snaps = complete(&h, "xe snapshot-", None);
    snaps.sort();
    assert!(
        snaps.contains(&"snapshot-list".to_owned()) && snaps.contains(&"snapshot-revert".to_owned()),
        "{snaps:?}"
    );
    assert_eq!(
        complete(&h, "xe vm-start ", None),
        vec!["force=", "on=", "paused=", "vm="]
    );
    assert_eq!(complete(&h, "xe vdi-import fi", None), vec!["filename="]);
    // Parameters given already are not offered again.
    assert_eq!(
        complete(&h, "xe vm-start force=true ", None),
        vec!["on=", "paused=", "vm="]
    );
    assert_eq!(
        complete(&h, "xe vm-param-list uuid=", None),
        vec![format!("uuid={dom0}")]
    );
    assert_eq!(
        complete(&h, "xe vbd-create vm-uuid=", None),
        vec![format!("vm-uuid={dom0}")]
    );
    assert_eq!(
        complete(&h, &format!("xe vm-param-get uuid={dom0} param-name=power"), None),
        vec!["param-name=power-state"]
    );
    assert_eq!(
        complete(&h, "xe vm-start force=", None),
        vec!["force=true", "force=false"]
    );
    assert_eq!(complete(&h, "xe --nos", None), vec!["--nossl"]);
    // Connection options on the line are used for the queries.
    std::fs::remove_file(h.home().join(".xe")).unwrap();
    let port = h.port();
    let line = format!("xe -s localhost -p {port} --nossl -u root -pw {PASSWORD} host-li");
    assert_eq!(complete(&h, &line, None), vec!["host-list"]);
    assert!(
        complete(&h, "xe host-li", None).is_empty(),
        "completed without a reachable host"
    );
    std::fs::write(
        h.home().join(".xe"),
        format!("server=localhost\nport={port}\nnossl=true\nusername=root\npassword={PASSWORD}\n"),
    )
    .unwrap();
    // Bash replaces only the part after the last '=' or ':' of the word.
    assert_eq!(
        complete(&h, "xe vm-param-list uuid=", Some("xe vm-param-list uuid =")),
        vec![dom0.clone()]
    );
    assert_eq!(
        complete(
            &h,
            &format!("xe vm-param-list uuid={}", &dom0[..4]),
            Some(&format!("xe vm-param-list uuid = {}", &dom0[..4]))
        ),
        vec![dom0.clone()]
    );
    assert_eq!(complete(&h, "xe vm-sta", Some("xe vm-sta")), vec!["vm-start"]);
}
