//! PV guests booted through their bootloader on the Xen backend: `build` runs pygrub on the
//! guest's bootable disk image, boots the kernel (and ramdisk) it extracts, with the arguments
//! it found followed by the VM's extra arguments, and removes the extracted files again.
//!
//! pygrub is Debian's (package `xen-utils-4.17`): `$XAPID_PYGRUB` if set, else
//! `/usr/lib/xen-4.17/bin/pygrub`, else another `/usr/lib/xen-*/bin/pygrub`, else `pygrub` on
//! `$PATH`. It runs non-interactively (`--quiet`, the default entry) as
//!
//! ```text
//! pygrub [PV_bootloader_args…] --quiet --output-format=simple0 \
//!        --output-directory=DIR --output=DIR/output -- DISK
//! ```
//!
//! with `DIR` a fresh directory only root can enter, removed (with whatever pygrub left in
//! it) once the domain is built or the build failed. The VM's own `PV_bootloader_args` come
//! first, so they cannot redirect the output options that follow. `simple0` output is
//! records separated by NUL bytes, ended by an empty record: `kernel PATH`, then optionally
//! `ramdisk PATH` and `args TEXT` ([`parse_simple0`]). The paths must name regular files
//! directly in `DIR`: what pygrub prints comes from the guest's boot configuration, so a
//! path anywhere else is refused rather than loaded. Every failure is
//! [`BackendError::BootloaderFailed`] with pygrub's own reason (the message of its last
//! `RuntimeError`, or its last line on stderr).
//!
//! pygrub parses the guest's file systems as root here: its `--runas` privilege separation
//! is not used (yet).

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::super::{BackendError, Bootloader, PvBootloader};

/// The environment variable naming the pygrub to run.
pub const PYGRUB_ENV: &str = "XAPID_PYGRUB";
/// Where Debian's `xen-utils-4.17` installs pygrub.
pub const PYGRUB_DEFAULT: &str = "/usr/lib/xen-4.17/bin/pygrub";
/// How long pygrub may take before it is killed.
pub const PYGRUB_TIMEOUT: Duration = Duration::from_secs(120);
/// The most output pygrub's answer may have (three short records).
const MAX_OUTPUT: u64 = 64 * 1024;

/// What a bootloader's `simple0` output names: the extracted kernel, ramdisk and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// The extracted kernel.
    pub kernel: PathBuf,
    /// The extracted ramdisk, if the entry has one.
    pub ramdisk: Option<PathBuf>,
    /// The entry's kernel arguments (empty if it has none).
    pub args: String,
}

fn malformed(reason: impl std::fmt::Display) -> BackendError {
    BackendError::BootloaderFailed {
        reason: format!("unreadable bootloader output: {reason}"),
    }
}

/// Parses pygrub's `--output-format=simple0` output: NUL-terminated `key value` records
/// (`kernel`, once; `ramdisk` and `args`, at most once each), ended by an empty record.
/// Anything else (an unknown or repeated key, a record without a value, text that is not
/// UTF-8, a missing end, data after it, no kernel) is [`BackendError::BootloaderFailed`].
/// Never panics, whatever the input.
pub fn parse_simple0(output: &[u8]) -> Result<BootEntry, BackendError> {
    let mut kernel: Option<String> = None;
    let mut ramdisk: Option<String> = None;
    let mut args: Option<String> = None;
    let mut rest = output;
    loop {
        let Some(end) = rest.iter().position(|b| *b == 0) else {
            return Err(malformed("it ends before its final empty record"));
        };
        let (record, after) = (&rest[..end], &rest[end + 1..]);
        rest = after;
        if record.is_empty() {
            break;
        }
        let record = std::str::from_utf8(record).map_err(|e| malformed(format!("a record is not UTF-8 ({e})")))?;
        let Some((key, value)) = record.split_once(' ') else {
            return Err(malformed(format!("record {record:?} has no value")));
        };
        let slot = match key {
            "kernel" => &mut kernel,
            "ramdisk" => &mut ramdisk,
            "args" => &mut args,
            other => return Err(malformed(format!("unknown record {other:?}"))),
        };
        if slot.is_some() {
            return Err(malformed(format!("more than one {key} record")));
        }
        *slot = Some(value.to_owned());
    }
    if !rest.is_empty() {
        return Err(malformed(format!("{} bytes after its end", rest.len())));
    }
    let kernel = kernel
        .filter(|k| !k.is_empty())
        .ok_or_else(|| malformed("it names no kernel"))?;
    if ramdisk.as_deref() == Some("") {
        return Err(malformed("its ramdisk record is empty"));
    }
    Ok(BootEntry {
        kernel: PathBuf::from(kernel),
        ramdisk: ramdisk.map(PathBuf::from),
        args: args.unwrap_or_default(),
    })
}

/// The reason a failed bootloader run gives: the message of the last `RuntimeError` on its
/// stderr (how pygrub reports what it could not find), else its last non-empty stderr line,
/// else its exit status.
pub fn failure_reason(stderr: &str, status: &str) -> String {
    const MARK: &str = "RuntimeError: ";
    if let Some(line) = stderr
        .lines()
        .rev()
        .find_map(|l| l.split_once(MARK).map(|(_, m)| m.trim()))
    {
        if !line.is_empty() {
            return line.to_owned();
        }
    }
    match stderr.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => line.to_owned(),
        None => format!("pygrub {status} without saying why"),
    }
}

/// The pygrub to run, if one is found (see the module documentation).
pub fn pygrub_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(PYGRUB_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let default = Path::new(PYGRUB_DEFAULT);
    if default.is_file() {
        return Some(default.to_path_buf());
    }
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("xen-"))
        .map(|e| e.path().join("bin").join("pygrub"))
        .filter(|p| p.is_file())
        .collect();
    versions.sort();
    if let Some(newest) = versions.pop() {
        return Some(newest);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("pygrub"))
            .find(|p| p.is_file())
    })
}

/// A kernel (and ramdisk) a bootloader extracted into a private directory, which is removed
/// with everything in it when this is dropped.
#[derive(Debug)]
pub(super) struct Extracted {
    dir: PathBuf,
    /// The extracted kernel.
    pub kernel: PathBuf,
    /// The extracted ramdisk.
    pub ramdisk: Option<PathBuf>,
    /// The kernel arguments the bootloader found.
    pub args: String,
}

impl Drop for Extracted {
    fn drop(&mut self) {
        remove_private_dir(&self.dir);
    }
}

fn remove_private_dir(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "removing the bootloader's files failed");
        }
    }
}

/// Removes a private directory unless it was handed over to an [`Extracted`].
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            remove_private_dir(&dir);
        }
    }
}

fn failed(reason: impl Into<String>) -> BackendError {
    BackendError::BootloaderFailed { reason: reason.into() }
}

/// Runs the VM's bootloader on its disk with the pygrub [`pygrub_path`] finds.
pub(super) fn extract(boot: &PvBootloader) -> Result<Extracted, BackendError> {
    // The reference's order: no disk first, then the bootloader's name.
    let disk = boot.disk.as_deref().ok_or(BackendError::NoBootableDevice)?;
    check_bootloader(boot)?;
    let pygrub = pygrub_path().ok_or_else(|| {
        failed(format!(
            "pygrub not found ({PYGRUB_ENV}, {PYGRUB_DEFAULT}, PATH): install Debian's xen-utils-4.17"
        ))
    })?;
    extract_with(&pygrub, boot, disk, &std::env::temp_dir(), PYGRUB_TIMEOUT)
}

fn check_bootloader(boot: &PvBootloader) -> Result<Bootloader, BackendError> {
    Bootloader::from_name(&boot.bootloader).ok_or_else(|| BackendError::UnknownBootloader {
        name: boot.bootloader.clone(),
    })
}

/// [`extract`] with a given pygrub, parent of the private directory and time limit.
pub(super) fn extract_with(
    pygrub: &Path,
    boot: &PvBootloader,
    disk: &Path,
    parent: &Path,
    timeout: Duration,
) -> Result<Extracted, BackendError> {
    check_bootloader(boot)?;
    let dir = parent.join(format!("xapid-bootloader-{}", uuid::Uuid::new_v4()));
    // A new directory (never an existing one, nor a symlink's target), root's only.
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
    let mut guard = DirGuard(Some(dir.clone()));
    let output = dir.join("output");
    let stderr_path = dir.join("stderr");
    let create = |p: &Path| File::create(p).map_err(|e| failed(format!("cannot create {}: {e}", p.display())));
    create(&output)?;
    let stderr = create(&stderr_path)?;
    let mut cmd = Command::new(pygrub);
    cmd.args(boot.bootloader_argv())
        .arg("--quiet")
        .arg("--output-format=simple0")
        .arg(format!("--output-directory={}", dir.display()))
        .arg(format!("--output={}", output.display()))
        .arg("--")
        .arg(disk)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let status = run(&mut cmd, pygrub, timeout)?;
    if !status.success() {
        let text = read_capped(&stderr_path).unwrap_or_default();
        return Err(failed(failure_reason(
            &String::from_utf8_lossy(&text),
            &status.to_string(),
        )));
    }
    let answer = read_capped(&output).map_err(|e| failed(format!("cannot read pygrub's output: {e}")))?;
    let entry = parse_simple0(&answer)?;
    let kernel = inside(&dir, &entry.kernel)?;
    let ramdisk = entry.ramdisk.as_deref().map(|r| inside(&dir, r)).transpose()?;
    guard.0 = None;
    Ok(Extracted {
        dir,
        kernel,
        ramdisk,
        args: entry.args,
    })
}

/// Runs the bootloader, killing it after `timeout`. A just-written executable can be busy
/// (`ETXTBSY`) while another thread's fork still holds it open: that is retried briefly.
fn run(cmd: &mut Command, pygrub: &Path, timeout: Duration) -> Result<ExitStatus, BackendError> {
    let mut attempts = 0;
    let mut child = loop {
        match cmd.spawn() {
            Ok(c) => break c,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(failed(format!("cannot run {}: {e}", pygrub.display()))),
        }
    };
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(5);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                if let Err(e) = child.kill() {
                    tracing::warn!(error = %e, "killing pygrub failed");
                }
                if let Err(e) = child.wait() {
                    tracing::warn!(error = %e, "reaping pygrub failed");
                }
                return Err(failed(format!("pygrub did not finish within {} s", timeout.as_secs())));
            }
            Ok(None) => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(failed(format!("waiting for {}: {e}", pygrub.display()))),
        }
    }
}

/// Reads at most [`MAX_OUTPUT`] bytes of a file; more is an error.
fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.take(MAX_OUTPUT + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_OUTPUT {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("more than {MAX_OUTPUT} bytes"),
        ));
    }
    Ok(bytes)
}

/// `path` if it names a regular file (not a symlink) directly in `dir`; a bootloader's
/// output comes from the guest's configuration, so anything else is refused.
fn inside(dir: &Path, path: &Path) -> Result<PathBuf, BackendError> {
    let refuse = |why: &str| {
        failed(format!(
            "the bootloader named {} for the guest, {why}: refused",
            path.display()
        ))
    };
    let plain = path
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !path.is_absolute() || !plain || path.parent() != Some(dir) {
        return Err(refuse("outside its private directory"));
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(path.to_path_buf()),
        Ok(_) => Err(refuse("which is not a regular file")),
        Err(_) => Err(refuse("which does not exist")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn simple0_with_all_three_records() {
        let e =
            parse_simple0(b"kernel /d/boot_kernel.x\0ramdisk /d/boot_ramdisk.y\0args root=/dev/xvda1 ro\0\0").unwrap();
        assert_eq!(e.kernel, Path::new("/d/boot_kernel.x"));
        assert_eq!(e.ramdisk.as_deref(), Some(Path::new("/d/boot_ramdisk.y")));
        assert_eq!(e.args, "root=/dev/xvda1 ro");
    }

    #[test]
    fn simple0_kernel_only_and_odd_but_valid_values() {
        let e = parse_simple0(b"kernel /d/k\0\0").unwrap();
        assert_eq!((e.ramdisk, e.args.as_str()), (None, ""));
        // Arguments may hold spaces and newlines (NUL is the only separator); records come
        // in any order.
        let e = parse_simple0(b"args a  b\nc \0kernel /d/k\0\0").unwrap();
        assert_eq!(e.args, "a  b\nc ");
        assert_eq!(e.kernel, Path::new("/d/k"));
    }

    #[test]
    fn simple0_refuses_what_pygrub_never_writes() {
        for bad in [
            &b""[..],
            b"\0",
            b"kernel /d/k",
            b"kernel /d/k\0",
            b"kernel /d/k\0\0\0",
            b"kernel /d/k\0\0trailing",
            b"kernel \0\0",
            b"kernel\0\0",
            b"ramdisk /d/r\0\0",
            b"kernel /d/k\0kernel /d/l\0\0",
            b"kernel /d/k\0args a\0args b\0\0",
            b"kernel /d/k\0ramdisk \0\0",
            b"kernel /d/k\0initrd /d/r\0\0",
            b"kernel /d/\xff\0\0",
            b"(kernel /d/k)",
        ] {
            match parse_simple0(bad) {
                Err(BackendError::BootloaderFailed { reason }) => {
                    assert!(reason.starts_with("unreadable bootloader output"), "{reason}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn failure_reasons_are_pygrubs_own() {
        let traceback = "Using <class 'grub.GrubConf.Grub2ConfigFile'> to parse /boot/grub/grub.cfg\n\
            Traceback (most recent call last):\n  File \"/usr/lib/xen-4.17/bin/pygrub\", line 1032, in <module>\n\
            raise RuntimeError(\"Unable to find partition containing kernel\")\n\
            RuntimeError: Unable to find partition containing kernel\n";
        assert_eq!(
            failure_reason(traceback, "exit status: 1"),
            "Unable to find partition containing kernel"
        );
        assert_eq!(
            failure_reason("Error opening /boot/vmlinuz in guest\n\n", "exit status: 1"),
            "Error opening /boot/vmlinuz in guest"
        );
        assert_eq!(
            failure_reason("", "exit status: 1"),
            "pygrub exit status: 1 without saying why"
        );
    }

    #[test]
    fn paths_must_be_regular_files_directly_in_the_private_dir() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("boot_kernel.a"), b"k").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
        fs::create_dir(d.join("sub")).unwrap();
        fs::write(d.join("sub").join("k"), b"k").unwrap();
        assert!(inside(d, &d.join("boot_kernel.a")).is_ok());
        // An inner `.` names the same file (paths compare by their normal components).
        assert!(inside(d, &d.join(".").join("boot_kernel.a")).is_ok());
        for bad in [
            PathBuf::from("/etc/passwd"),
            d.join("link"),
            d.join("sub"),
            d.join("sub").join("k"),
            d.join("sub").join("..").join("boot_kernel.a"),
            d.join("missing"),
            PathBuf::from("boot_kernel.a"),
        ] {
            assert!(
                matches!(inside(d, &bad), Err(BackendError::BootloaderFailed { .. })),
                "{}",
                bad.display()
            );
        }
    }

    /// A stand-in pygrub: a shell script that records its arguments in `argv` beside itself
    /// and then runs `body` with `$out` (the output file) and `$dir` (the output directory)
    /// taken from its options.
    fn fake_pygrub(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("pygrub");
        let script = format!(
            "#!/bin/sh\n\
             printf '%s\\n' \"$@\" > '{argv}'\n\
             for a in \"$@\"; do case \"$a\" in\n\
               --output=*) out=\"${{a#--output=}}\" ;;\n\
               --output-directory=*) dir=\"${{a#--output-directory=}}\" ;;\n\
             esac; done\n\
             {body}\n",
            argv = dir.join("argv").display()
        );
        let mut f = File::create(&path).unwrap();
        f.write_all(script.as_bytes()).unwrap();
        f.sync_all().unwrap();
        drop(f);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn boot(args: &str) -> PvBootloader {
        PvBootloader {
            bootloader: "pygrub".into(),
            disk: Some("/dev/null".into()),
            bootloader_args: args.into(),
            extra_args: "console=hvc0".into(),
        }
    }

    /// The private directories left under `parent`.
    fn leftovers(parent: &Path) -> Vec<String> {
        fs::read_dir(parent)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("xapid-bootloader-"))
            .collect()
    }

    #[test]
    fn a_fake_pygrub_extracts_a_kernel_that_is_removed_afterwards() {
        let bin = tempfile::tempdir().unwrap();
        let parent = tempfile::tempdir().unwrap();
        let pygrub = fake_pygrub(
            bin.path(),
            "printf K > \"$dir/boot_kernel.1\"; printf R > \"$dir/boot_ramdisk.1\"\n\
             printf 'kernel %s\\0ramdisk %s\\0args root=/dev/xvda1 ro\\0\\0' \
               \"$dir/boot_kernel.1\" \"$dir/boot_ramdisk.1\" > \"$out\"",
        );
        let disk = Path::new("/srv/disk.img");
        let x = extract_with(
            &pygrub,
            &boot("--entry=1 --args=quiet"),
            disk,
            parent.path(),
            PYGRUB_TIMEOUT,
        )
        .unwrap();
        assert_eq!(fs::read(&x.kernel).unwrap(), b"K");
        assert_eq!(fs::read(x.ramdisk.as_ref().unwrap()).unwrap(), b"R");
        assert_eq!(x.args, "root=/dev/xvda1 ro");
        assert_eq!(boot("").cmdline(&x.args), "root=/dev/xvda1 ro console=hvc0");
        let dir = x.kernel.parent().unwrap().to_path_buf();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let argv: Vec<String> = fs::read_to_string(bin.path().join("argv"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(
            argv,
            [
                "--entry=1".to_string(),
                "--args=quiet".into(),
                "--quiet".into(),
                "--output-format=simple0".into(),
                format!("--output-directory={}", dir.display()),
                format!("--output={}", dir.join("output").display()),
                "--".into(),
                "/srv/disk.img".into(),
            ]
        );
        drop(x);
        assert!(!dir.exists());
        assert!(leftovers(parent.path()).is_empty());
    }

    #[test]
    fn pygrubs_failures_are_bootloader_failures_and_leave_nothing_behind() {
        let bin = tempfile::tempdir().unwrap();
        let parent = tempfile::tempdir().unwrap();
        let disk = Path::new("/srv/disk.img");
        let cases = [
            (
                "touch \"$dir/boot_kernel.1\"; echo 'Traceback (most recent call last):' >&2\n\
                 echo 'RuntimeError: Unable to find partition containing kernel' >&2; exit 1",
                "Unable to find partition containing kernel",
                PYGRUB_TIMEOUT,
            ),
            (
                "printf 'kernel /etc/passwd\\0\\0' > \"$out\"",
                "outside its private directory",
                PYGRUB_TIMEOUT,
            ),
            ("exit 0", "unreadable bootloader output", PYGRUB_TIMEOUT),
            ("exec sleep 30", "did not finish within", Duration::from_millis(300)),
        ];
        for (body, want, timeout) in cases {
            let pygrub = fake_pygrub(bin.path(), body);
            match extract_with(&pygrub, &boot(""), disk, parent.path(), timeout) {
                Err(BackendError::BootloaderFailed { reason }) => assert!(reason.contains(want), "{reason}"),
                other => panic!("{body}: {other:?}"),
            }
            assert!(leftovers(parent.path()).is_empty(), "{body}");
        }
        match extract_with(
            &bin.path().join("absent"),
            &boot(""),
            disk,
            parent.path(),
            PYGRUB_TIMEOUT,
        ) {
            Err(BackendError::BootloaderFailed { reason }) => assert!(reason.contains("cannot run"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let mut grubby = boot("");
        grubby.bootloader = "grubby".into();
        assert!(matches!(
            extract_with(&bin.path().join("absent"), &grubby, disk, parent.path(), PYGRUB_TIMEOUT),
            Err(BackendError::UnknownBootloader { .. })
        ));
        assert!(leftovers(parent.path()).is_empty());
    }

    #[test]
    fn no_disk_comes_before_an_unknown_bootloader() {
        let mut b = boot("");
        b.disk = None;
        b.bootloader = "grubby".into();
        assert!(matches!(extract(&b), Err(BackendError::NoBootableDevice)));
        b.disk = Some("/dev/null".into());
        assert!(matches!(extract(&b), Err(BackendError::UnknownBootloader { .. })));
    }

    /// Debian's real pygrub on an ext2 image holding a GRUB 2 configuration, a kernel and a
    /// ramdisk (made with `mke2fs -d`, no mount needed).
    #[test]
    #[ignore = "needs Debian's pygrub (apt-get install xen-utils-4.17) and mke2fs (e2fsprogs)"]
    fn debians_pygrub_extracts_the_default_entry() {
        let pygrub = pygrub_path().expect("pygrub");
        let work = tempfile::tempdir().unwrap();
        let root = work.path().join("root");
        fs::create_dir_all(root.join("boot/grub")).unwrap();
        let kernel: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        fs::write(root.join("boot/vmlinuz-6.1"), &kernel).unwrap();
        fs::write(root.join("boot/initrd.img-6.1"), b"initrd bytes").unwrap();
        fs::write(
            root.join("boot/grub/grub.cfg"),
            "set default=0\nmenuentry 'Debian GNU/Linux' {\n\tlinux /boot/vmlinuz-6.1 root=/dev/xvda ro quiet\n\
             \tinitrd /boot/initrd.img-6.1\n}\n",
        )
        .unwrap();
        let disk = work.path().join("disk.img");
        let made = Command::new("mke2fs")
            .args(["-q", "-t", "ext2", "-d"])
            .arg(&root)
            .arg(&disk)
            .arg("8M")
            .status()
            .expect("mke2fs");
        assert!(made.success());
        let parent = tempfile::tempdir().unwrap();
        let x = extract_with(&pygrub, &boot(""), &disk, parent.path(), PYGRUB_TIMEOUT).unwrap();
        assert_eq!(fs::read(&x.kernel).unwrap(), kernel);
        assert_eq!(fs::read(x.ramdisk.as_ref().unwrap()).unwrap(), b"initrd bytes");
        assert_eq!(x.args, "root=/dev/xvda ro quiet");
        drop(x);
        assert!(leftovers(parent.path()).is_empty());
        // A blank disk: pygrub's own reason comes back.
        let blank = work.path().join("blank.img");
        File::create(&blank).unwrap().set_len(8 << 20).unwrap();
        match extract_with(&pygrub, &boot(""), &blank, parent.path(), PYGRUB_TIMEOUT) {
            Err(BackendError::BootloaderFailed { reason }) => {
                assert!(
                    reason.contains("Unable to find partition containing kernel"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(leftovers(parent.path()).is_empty());
    }
}
