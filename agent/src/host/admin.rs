//! Host administration: the kernel's and the hypervisor's logs, debug keys, syslog, the
//! hostname, the server certificate and the status-report capabilities.
//!
//! `host.get_log` and `host.dmesg_clear` have no row: the reference answers
//! `NOT_IMPLEMENTED` to both, as does this daemon.

use super::runner::{self, Ended, Spec};
use super::settings;
use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::objects::set_field;
use crate::schema::{class_ids, fields};
use crate::value::Value;
use crate::Agent;
use std::path::Path;
use std::time::Duration;

/// How long a host command (`xl`, the syslog script) may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The most of the kernel's log read.
const KERNEL_LOG_LIMIT: usize = 8 << 20;
/// What the reference names the control domain until someone renames it.
const DOM0_NAME_STEM: &str = "Control domain on host: ";
/// The status-report capabilities: none, as this daemon serves no status report to collect
/// them with; the form is the reference's (its report tool's `--capabilities`).
pub const NO_CAPABILITIES: &str = "<?xml version=\"1.0\" ?>\n<system-status-capabilities/>\n";

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::host, "dmesg", |agent, _, c| {
            super::this_host(&agent, c.ref_arg(0)?)?;
            if on_xen(&agent) {
                xl(&["dmesg"]).await.map(Value::str)
            } else {
                kernel_log(Path::new("/dev/kmsg")).await.map(Value::str)
            }
        }),
        entry!(class_ids::host, "send_debug_keys", |agent, _, c| {
            super::this_host(&agent, c.ref_arg(0)?)?;
            if !on_xen(&agent) {
                // The simulator has no hypervisor to send keys to.
                return Err(ApiError::not_implemented("host.send_debug_keys"));
            }
            xl(&["debug-keys", c.str_arg(1)]).await.map(|_| Value::None)
        }),
        entry!(class_ids::host, "syslog_reconfigure", |agent, _, c| {
            let host = c.ref_arg(0)?;
            let h = agent
                .store
                .get(class_ids::host, host)
                .ok_or_else(|| ApiError::handle_invalid("host", host))?;
            let destination = h
                .get(fields::host::logging)
                .map_get("syslog_destination")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            syslog_reconfigure(&settings::syslog_reconfigure_script(), &destination)
                .await
                .map(|()| Value::None)
        }),
        entry!(class_ids::host, "set_hostname_live", |agent, _, c| {
            let host = c.ref_arg(0)?;
            super::this_host(&agent, host)?;
            let hostname = c.str_arg(1);
            check_hostname(hostname)?;
            if settings::set_system_hostname(agent.hypervisor.backend_name()) {
                set_system_hostname(hostname).await?;
            }
            record_hostname(&agent, host, hostname).await.map(|()| Value::None)
        }),
        entry!(class_ids::host, "get_server_certificate", |agent, _, c| {
            super::this_host(&agent, c.ref_arg(0)?)?;
            // The file HTTPS serves from, when this host serves HTTPS.
            let path = match &agent.server_identity {
                Some(identity) if std::env::var_os("XAPID_SERVER_CERT").is_none() => identity.cert_file().to_path_buf(),
                _ => settings::server_certificate(&agent.state_dir),
            };
            server_certificate(&path).await.map(Value::str)
        }),
        entry!(class_ids::host, "get_system_status_capabilities", |agent, _, c| {
            super::this_host(&agent, c.ref_arg(0)?)?;
            Ok(Value::str(NO_CAPABILITIES))
        }),
    ]
}

fn on_xen(agent: &Agent) -> bool {
    agent.hypervisor.backend_name() == "xen"
}

/// Runs a host command; its stdout, or `INTERNAL_ERROR` saying how it failed.
async fn host_command(program: &Path, args: &[&str]) -> Result<String, ApiError> {
    let spec = Spec::new(
        program,
        args.iter().map(Into::into).collect(),
        vec![("PATH".into(), settings::PLUGIN_PATH.into())],
        COMMAND_TIMEOUT,
    );
    let done = runner::run(&spec)
        .await
        .map_err(|e| ApiError::internal(format!("cannot run {}: {e}", program.display())))?;
    match done.ended {
        Ended::Exited(0) => Ok(done.stdout_text()),
        ref other => Err(ApiError::internal(format!(
            "{} {}: {}: {}",
            program.display(),
            args.join(" "),
            other.describe(COMMAND_TIMEOUT),
            done.stderr_text().trim()
        ))),
    }
}

/// The Xen toolstack's command line, for what the hypervisor does that the backend has no
/// call for (its console ring, its debug keys).
async fn xl(args: &[&str]) -> Result<String, ApiError> {
    let xl = ["/usr/sbin/xl", "/usr/bin/xl", "/usr/local/sbin/xl"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .unwrap_or(Path::new("xl"));
    host_command(xl, args).await
}

/// The kernel's log, read from its `/dev/kmsg` interface and written as `dmesg` prints it.
pub async fn kernel_log(device: &Path) -> Result<String, ApiError> {
    let device = device.to_path_buf();
    tokio::task::spawn_blocking(move || read_kmsg(&device))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::internal(format!("reading the kernel log: {e}")))
}

fn read_kmsg(device: &Path) -> std::io::Result<String> {
    use std::io::{ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(device)?;
    let mut out = String::new();
    // A record is at most about 1 KiB of text plus its dictionary.
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(line) = buf
                    .get(..n)
                    .and_then(|r| format_kmsg_record(&String::from_utf8_lossy(r)))
                {
                    out.push_str(&line);
                    out.push('\n');
                }
                if out.len() > KERNEL_LOG_LIMIT {
                    break;
                }
            }
            // The end of the log.
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            // A record was overwritten while reading: go on with the next.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// One `/dev/kmsg` record (`level,seq,usec,flags;text` then dictionary lines) as `dmesg`
/// prints it: `[seconds.micros] text`.
pub fn format_kmsg_record(record: &str) -> Option<String> {
    let (head, rest) = record.split_once(';')?;
    let text = rest.split('\n').next().unwrap_or_default();
    let usec: u64 = head.split(',').nth(2)?.trim().parse().ok()?;
    Some(format!("[{:5}.{:06}] {text}", usec / 1_000_000, usec % 1_000_000))
}

/// Runs the syslog script with `--noremote` or `--remote=<destination>`, as the reference does.
pub async fn syslog_reconfigure(script: &Path, destination: &str) -> Result<(), ApiError> {
    if tokio::fs::metadata(script).await.is_err() {
        return Err(ApiError::internal(format!(
            "no syslog reconfiguration script at {} (XAPID_SYSLOG_RECONFIGURE)",
            script.display()
        )));
    }
    let flag = if destination.is_empty() {
        "--noremote".to_owned()
    } else {
        format!("--remote={destination}")
    };
    host_command(script, &[&flag]).await.map(|_| ())
}

/// `HOST_NAME_INVALID [reason]` unless `name` is a hostname the reference accepts: 1 to 255
/// of letters, digits, `-` and `.`, not starting or ending with `-`.
pub fn check_hostname(name: &str) -> Result<(), ApiError> {
    let invalid = |reason: &str| ApiError::HostNameInvalid {
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(invalid("hostname empty"));
    }
    if name.len() > 255 {
        return Err(invalid("hostname is too long"));
    }
    if name.starts_with('-')
        || name.ends_with('-')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(invalid("hostname contains invalid characters"));
    }
    Ok(())
}

/// Sets this machine's hostname, now and in /etc/hostname.
async fn set_system_hostname(name: &str) -> Result<(), ApiError> {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        nix::unistd::sethostname(&name)?;
        let tmp = Path::new("/etc/.hostname.xapid");
        std::fs::write(tmp, format!("{name}\n"))?;
        std::fs::rename(tmp, "/etc/hostname")
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| ApiError::internal(format!("setting the system hostname: {e}")))
}

/// Records the new hostname on the host, and in the control domain's name while it has the
/// name it was given.
async fn record_hostname(agent: &Agent, host: &str, hostname: &str) -> Result<(), ApiError> {
    let dom0 = agent
        .store
        .get(class_ids::host, host)
        .and_then(|h| h.get(fields::host::control_domain).as_ref_str().map(str::to_owned));
    let rename = dom0.and_then(|vm| {
        let current = agent.store.get(class_ids::VM, &vm)?.str_field("name_label").to_owned();
        let wanted = format!("{DOM0_NAME_STEM}{hostname}");
        (current.starts_with(DOM0_NAME_STEM) && current != wanted).then_some((vm, wanted))
    });
    let (host, hostname) = (host.to_owned(), hostname.to_owned());
    agent
        .store
        .write(move |tx| {
            set_field(
                tx,
                class_ids::host,
                &host,
                fields::host::hostname,
                Value::str(hostname.clone()),
            )?;
            if let Some((vm, name)) = &rename {
                set_field(tx, class_ids::VM, vm, fields::VM::name_label, Value::str(name.clone()))?;
            }
            Ok(())
        })
        .await
}

/// The certificate (the first in the file) the daemon serves HTTPS with, as PEM;
/// `CERTIFICATE_LIBRARY_CORRUPT` when there is none, as the reference answers.
pub async fn server_certificate(path: &Path) -> Result<String, ApiError> {
    let corrupt = |why: String| {
        tracing::warn!(path = %path.display(), why, "no server certificate to give");
        ApiError::CertificateLibraryCorrupt {}
    };
    let bytes = tokio::fs::read(path).await.map_err(|e| corrupt(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|e| corrupt(e.to_string()))?;
    first_certificate(&text).ok_or_else(|| corrupt("no certificate in the file".into()))
}

/// The first `CERTIFICATE` block of a PEM text, if its body is base64.
pub fn first_certificate(pem: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find(BEGIN)?;
    let len = pem.get(start..)?.find(END)? + END.len();
    let block = pem.get(start..start + len)?;
    let body: Vec<u8> = block
        .get(BEGIN.len()..block.len() - END.len())?
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let data = body.iter().position(|&b| b == b'=').map_or(&body[..], |p| &body[..p]);
    let padding = body.len() - data.len();
    let base64 = !data.is_empty()
        && body.len().is_multiple_of(4)
        && padding <= 2
        && body.iter().skip(data.len()).all(|&b| b == b'=')
        && data
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    base64.then(|| format!("{block}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_as_the_reference_checks_them() {
        for ok in ["host", "a.b-c.d", "h1", &"a".repeat(255)] {
            check_hostname(ok).unwrap();
        }
        let reason = |n: &str| match check_hostname(n) {
            Err(ApiError::HostNameInvalid { reason }) => reason,
            other => panic!("{n}: {other:?}"),
        };
        assert_eq!(reason(""), "hostname empty");
        assert_eq!(reason(&"a".repeat(256)), "hostname is too long");
        for bad in ["-a", "a-", "a b", "a_b", "ä", "a/b", "a\n"] {
            assert_eq!(reason(bad), "hostname contains invalid characters", "{bad:?}");
        }
    }

    #[test]
    fn kernel_records_print_as_dmesg_prints_them() {
        assert_eq!(
            format_kmsg_record("6,339,5140900,-;NET: Registered protocol family 10\n SUBSYSTEM=net\n").as_deref(),
            Some("[    5.140900] NET: Registered protocol family 10")
        );
        assert_eq!(format_kmsg_record("garbage"), None);
        assert_eq!(format_kmsg_record("1,2;x"), None);
    }

    #[tokio::test]
    async fn reads_this_machines_kernel_log() {
        match kernel_log(Path::new("/dev/kmsg")).await {
            Ok(log) => {
                let first = log.lines().next().unwrap_or_default();
                assert!(first.starts_with('[') && first.contains("] "), "{first:?}");
            }
            // Not root where the kernel restricts its log.
            Err(e) => assert!(e.to_string().contains("reading the kernel log"), "{e}"),
        }
        let e = kernel_log(Path::new("/nonexistent/kmsg")).await.unwrap_err();
        assert_eq!(e.code(), "INTERNAL_ERROR");
    }

    #[tokio::test]
    async fn syslog_script_gets_the_reference_flags() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("syslog");
        let log = dir.path().join("args");
        std::fs::write(&script, format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display())).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        syslog_reconfigure(&script, "").await.unwrap();
        syslog_reconfigure(&script, "logs.example:514").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "--noremote\n--remote=logs.example:514\n"
        );
        let e = syslog_reconfigure(&dir.path().join("missing"), "").await.unwrap_err();
        assert!(e.to_string().contains("no syslog reconfiguration script"), "{e}");
        std::fs::write(&script, "#!/bin/sh\necho broken >&2\nexit 1\n").unwrap();
        let e = syslog_reconfigure(&script, "").await.unwrap_err();
        assert!(
            e.to_string().contains("non-zero exit") && e.to_string().contains("broken"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn the_server_certificate_is_the_first_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        let e = server_certificate(&path).await.unwrap_err();
        assert_eq!(e, ApiError::CertificateLibraryCorrupt {});
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert_eq!(
            server_certificate(&path).await.unwrap_err(),
            ApiError::CertificateLibraryCorrupt {}
        );
        // A key and two certificates: the first certificate comes back.
        let second = TEST_CERT.replace("MIIBgjCC", "MIIBgjCD");
        std::fs::write(
            &path,
            format!("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{TEST_CERT}{second}"),
        )
        .unwrap();
        assert_eq!(server_certificate(&path).await.unwrap(), TEST_CERT);
    }

    /// A self-signed test certificate (CN=xapid-test).
    const TEST_CERT: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBgjCCASegAwIBAgIUWSqIUKhEwvih7cZ1flFRfG9bQuwwCgYIKoZIzj0EAwIw\n\
FTETMBEGA1UEAwwKeGFwaWQtdGVzdDAgFw0yNjEyMDYwNTQ5MzlaGA8yMTI2MTEx\n\
MjA1NDkzOVowFTETMBEGA1UEAwwKeGFwaWQtdGVzdDBZMBMGByqGSM49AgEGCCqG\n\
SM49AwEHA0IABPTfo0i79hl4J6b+LN2giftC5nWvHKEBAjwGDFC0VKYT3RZk0NQp\n\
RCGAaFSJ702wcLCIQrUbtqWqKFM1ucKadQqjUzBRMB0GA1UdDgQWBBQoiiH79/+n\n\
8JoHTljWK9gzcdVhTTAfBgNVHSMEGDAWgBQoiiH79/+n8JoHTljWK9gzcdVhTTAP\n\
BgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0kAMEYCIQDu5/cRuDacFt22hI9x\n\
I5LIHVLGIGHRRYklTnSOr1cWjgIhAO012VMy9XZt8PnqLYGa2tdhZbqonFaTpQvj\n\
+R8affS1\n\
-----END CERTIFICATE-----\n";
}
