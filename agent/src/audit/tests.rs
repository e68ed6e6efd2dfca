use super::*;
use chrono::TimeZone;

fn pending(action: &str, kind: CallType) -> Pending {
    Pending {
        who: Who {
            trackid: trackid("OpaqueRef:abc"),
            subject: "sid-1".into(),
            name: "alice".into(),
        },
        action: action.into(),
        kind,
        args: vec![arg("vm", "web's", "uuid-1", "OpaqueRef:v1")],
        after: None,
    }
}

fn log() -> (AuditLog, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "xapid-audit-line-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (AuditLog::open(&dir, DEFAULT_MAX_BYTES, 1).unwrap(), dir)
}

#[test]
fn lines_have_the_reference_fields() {
    let (log, dir) = log();
    let at = chrono::Utc.with_ymd_and_hms(2026, 12, 6, 8, 31, 11).unwrap() + chrono::Duration::milliseconds(417);
    let ok = log.line("h1", &pending("VM.start", CallType::Api), Outcome::Ok, at);
    assert_eq!(
        ok,
        format!(
            "[20261206T08:31:11.417Z|audit|h1|1 VM.start|VM.start|audit] ('{}' 'sid-1' 'alice' 'ALLOWED' 'OK' 'API' 'VM.start' (('vm' 'web\\'s' 'uuid-1' 'OpaqueRef:v1')))",
            trackid("OpaqueRef:abc")
        )
    );
    let err = ApiError::SessionInvalid { handle: "x\ny".into() };
    let failed = log.line("h1", &pending("VM.start", CallType::Api), Outcome::Error(&err), at);
    assert!(
        failed.contains("'ALLOWED' 'ERROR:SESSION_INVALID: [ x y ]' 'API'"),
        "{failed}"
    );
    assert!(!failed.contains('\n'));
    let denied = log.line(
        "h1",
        &pending("http/get_export_raw_vdi", CallType::Http),
        Outcome::Denied,
        at,
    );
    assert!(
        denied.contains("'DENIED' '' 'HTTP' 'http/get_export_raw_vdi'"),
        "{denied}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn trackid_is_the_md5_of_the_ref() {
    // md5("OpaqueRef:abc"), computed independently with coreutils' md5sum.
    assert_eq!(trackid("OpaqueRef:abc"), "trackid=75e6042f7e582810c170a6f61d4f77b8");
}

#[test]
fn readers_and_noise_are_not_audited() {
    assert!(has_to_audit("VM.start"));
    assert!(has_to_audit("http/get_export_raw_vdi"));
    assert!(!has_to_audit("VM.get_record"));
    assert!(!has_to_audit("event.from"));
    assert!(!has_to_audit("session.logout"));
    assert!(!has_to_audit("http/rrd_updates"));
}
