//! Choosing the backend at daemon start-up.
//!
//! * `Xen` opens [`XenBackend`] or fails with
//!   [`BackendError::Unavailable`] naming the failing call and its errno
//!   (`xc_interface_open failed: No such file or directory (errno 2,
//!   ENOENT)` off Xen) or the missing Xen library.
//! * `Auto` probes for a Xen control domain (`/dev/xen/privcmd`): when it
//!   exists, the Xen backend is used if it opens; otherwise (no Xen, or Xen
//!   but the backend cannot be opened) the simulator is used, with the
//!   reason in the explanation.
//! * `Simulator` always gives the simulator.
//!
//! The Xen backend is served through [`PrivilegedCalls`]: with the HTTP workers confined its
//! calls run on the privileged threads ([`crate::privileged`]).

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use super::privileged_calls::PrivilegedCalls;
use super::simulator::{SimConfig, SimulatorBackend};
use super::xen::XenBackend;
use super::{BackendError, Hypervisor};

/// The device through which dom0 issues hypercalls; present only in a Xen
/// control domain.
pub const PRIVCMD: &str = "/dev/xen/privcmd";

/// Which backend the operator asked for (e.g. `--backend auto|xen|simulator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// Xen if this is a Xen control domain and the backend is available,
    /// otherwise the simulator.
    #[default]
    Auto,
    /// Xen or fail.
    Xen,
    /// Always the simulator.
    Simulator,
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Xen => "xen",
            BackendChoice::Simulator => "simulator",
        })
    }
}

/// The string is not `auto`, `xen`, `simulator` or `sim`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend {0:?}: expected auto, xen or simulator")]
pub struct BackendChoiceParseError(pub String);

impl FromStr for BackendChoice {
    type Err = BackendChoiceParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "xen" => Ok(BackendChoice::Xen),
            "simulator" | "sim" => Ok(BackendChoice::Simulator),
            _ => Err(BackendChoiceParseError(s.to_string())),
        }
    }
}

/// Builds the backend for `choice`, returning it with a one-line
/// explanation of why it was chosen (to be logged at start-up).
pub fn select_backend(
    choice: BackendChoice,
    sim_config: SimConfig,
) -> Result<(Arc<dyn Hypervisor>, String), BackendError> {
    select_with_probe(choice, sim_config, Path::new(PRIVCMD))
}

/// [`select_backend`] with the privcmd path as a parameter, for tests.
fn select_with_probe(
    choice: BackendChoice,
    sim_config: SimConfig,
    privcmd: &Path,
) -> Result<(Arc<dyn Hypervisor>, String), BackendError> {
    select_with(choice, sim_config, privcmd, XenBackend::open)
}

/// [`select_with_probe`] with the way the Xen backend is opened as a
/// parameter, for tests.
fn select_with(
    choice: BackendChoice,
    sim_config: SimConfig,
    privcmd: &Path,
    open_xen: impl FnOnce() -> Result<XenBackend, BackendError>,
) -> Result<(Arc<dyn Hypervisor>, String), BackendError> {
    let simulator =
        |why: String| -> (Arc<dyn Hypervisor>, String) { (Arc::new(SimulatorBackend::new(sim_config.clone())), why) };
    let chosen: (Arc<dyn Hypervisor>, String) = match choice {
        BackendChoice::Simulator => simulator("the simulator backend was requested".into()),
        BackendChoice::Xen => (
            Arc::new(PrivilegedCalls::new(open_xen()?)),
            "the Xen backend was requested".into(),
        ),
        BackendChoice::Auto if privcmd.exists() => match open_xen() {
            Ok(xen) => (
                Arc::new(PrivilegedCalls::new(xen)),
                format!(
                    "{} is present (this is a Xen control domain): using the Xen backend",
                    privcmd.display()
                ),
            ),
            Err(e) => simulator(format!(
                "{} is present (this is a Xen control domain) but the Xen backend cannot be \
                 opened: {e}; using the simulator: guests are NOT real",
                privcmd.display()
            )),
        },
        BackendChoice::Auto => simulator(format!(
            "{} not present: no Xen hypervisor; using the simulator",
            privcmd.display()
        )),
    };
    tracing::info!(choice = %choice, backend = chosen.0.backend_name(), why = %chosen.1, "hypervisor backend selected");
    Ok(chosen)
}

/// What the backend tests need of the machine, and the switches that make a missing
/// precondition a failure instead of a skip (scripts/test.sh sets them all; docs/testing.md,
/// "Skips").
#[cfg(test)]
pub(crate) mod test_env {
    use std::io::Write as _;
    use std::path::Path;

    /// The machine is not a Xen control domain: the tests of what happens without Xen.
    pub const REQUIRE_NO_XEN: &str = "XAPID_REQUIRE_NO_XEN";
    /// libxen's runtime libraries load (the switch of xenctrl's tests too).
    pub const REQUIRE_XEN_LIBS: &str = "XENCTRL_REQUIRE_XEN_LIBS";
    /// The domain-build helper `xapid-xenguest` is found (`$XAPID_XENGUEST`, next to the test
    /// binary, `PATH`).
    pub const REQUIRE_XENGUEST: &str = "XAPID_REQUIRE_XENGUEST";

    /// Whether `switch` is set (to anything).
    pub fn required(switch: &str) -> bool {
        std::env::var_os(switch).is_some()
    }

    /// A precondition of the test is missing (`why`): with `switch` set that fails the test;
    /// otherwise the test says `SKIPPED: why` and the caller returns. The line goes to the
    /// process's stderr itself, past the test harness's output capture, so `cargo test` shows
    /// it.
    #[track_caller]
    pub fn skip_unless_required(switch: &str, why: &str) {
        assert!(
            !required(switch),
            "{why}; {switch} is set, so this test may not be skipped"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {why} (set {switch}=1 to make this a failure)"
        );
    }

    /// True (after saying so, or failing under [`REQUIRE_NO_XEN`]) when this machine is a Xen
    /// control domain, where a test of the no-Xen behaviour cannot run.
    #[track_caller]
    pub fn skip_on_a_xen_control_domain(test: &str) -> bool {
        if !Path::new(super::PRIVCMD).exists() {
            return false;
        }
        skip_unless_required(
            REQUIRE_NO_XEN,
            &format!(
                "{test} checks the behaviour without Xen, and this is a Xen control domain ({} exists)",
                super::PRIVCMD
            ),
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::test_env::{required, skip_on_a_xen_control_domain, REQUIRE_XEN_LIBS};
    use super::*;

    #[test]
    fn parses_choices() {
        assert_eq!("auto".parse::<BackendChoice>().unwrap(), BackendChoice::Auto);
        assert_eq!(" Xen ".parse::<BackendChoice>().unwrap(), BackendChoice::Xen);
        assert_eq!("sim".parse::<BackendChoice>().unwrap(), BackendChoice::Simulator);
        assert!("kvm".parse::<BackendChoice>().is_err());
        assert_eq!(BackendChoice::default().to_string(), "auto");
    }

    #[test]
    fn auto_without_xen_picks_simulator_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("privcmd");
        let (hv, why) = select_with_probe(BackendChoice::Auto, SimConfig::small_host(), &missing).unwrap();
        assert_eq!(hv.backend_name(), "simulator");
        assert!(why.contains("not present"), "{why}");
        assert!(why.contains("simulator"), "{why}");
    }

    #[test]
    fn auto_on_xen_falls_back_when_the_backend_cannot_open() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("privcmd");
        std::fs::write(&present, b"").unwrap();
        let (hv, why) = select_with(BackendChoice::Auto, SimConfig::small_host(), &present, || {
            Err(BackendError::Unavailable {
                backend: "xen",
                reason: "xs_open failed: Connection refused (errno 111)".into(),
            })
        })
        .unwrap();
        assert_eq!(hv.backend_name(), "simulator");
        assert!(why.contains("cannot be opened"), "{why}");
        assert!(why.contains("xs_open"), "{why}");
        assert!(why.contains("NOT real"), "{why}");
    }

    #[test]
    fn auto_with_a_privcmd_but_no_hypervisor_uses_the_real_ffi_and_falls_back() {
        // On a real dom0 Auto would (rightly) pick Xen.
        if skip_on_a_xen_control_domain("auto_with_a_privcmd_but_no_hypervisor_uses_the_real_ffi_and_falls_back") {
            return;
        }
        // The probe says "Xen" but libxencall finds no /dev/xen/privcmd.
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("privcmd");
        std::fs::write(&present, b"").unwrap();
        let (hv, why) = select_with_probe(BackendChoice::Auto, SimConfig::small_host(), &present).unwrap();
        assert_eq!(hv.backend_name(), "simulator");
        assert!(why.contains("cannot be opened"), "{why}");
        if required(REQUIRE_XEN_LIBS) {
            assert!(why.contains("xc_interface_open") && why.contains("ENOENT"), "{why}");
        } else {
            assert!(
                why.contains("xc_interface_open") || why.contains("not available"),
                "{why}"
            );
        }
    }

    #[test]
    fn xen_is_a_clear_error_and_simulator_works() {
        // On a real dom0 the Xen backend opens.
        if skip_on_a_xen_control_domain("xen_is_a_clear_error_and_simulator_works") {
            return;
        }
        let err = select_backend(BackendChoice::Xen, SimConfig::small_host())
            .err()
            .unwrap();
        assert!(matches!(err, BackendError::Unavailable { backend: "xen", .. }));
        let msg = err.to_string();
        match xenctrl::CtrlLibraries::system() {
            Ok(_) => assert!(msg.contains("xc_interface_open") && msg.contains("ENOENT"), "{msg}"),
            Err(e) => {
                assert!(!required(REQUIRE_XEN_LIBS), "Xen libraries required but missing: {e}");
                assert!(msg.contains("not available"), "{msg}");
            }
        }
        let (hv, why) = select_backend(BackendChoice::Simulator, SimConfig::small_host()).unwrap();
        assert_eq!(hv.backend_name(), "simulator");
        assert!(why.contains("requested"));
        assert_eq!(hv.list_domains().unwrap().len(), 1);
    }
}
