//! Choosing the backend at daemon start-up.
//!
//! `select_backend(BackendChoice::Auto, ..)` probes for a Xen control
//! domain (`/dev/xen/privcmd`). The Xen backend (`xen.rs`, to be written by
//! the owner of the `xen-sys`/`xenctrl` crates) does not exist yet, so for
//! now `Auto` always ends up with the simulator and says why, and
//! `BackendChoice::Xen` fails with [`BackendError::Unavailable`]. When the
//! Xen backend lands, `Auto` should pick it whenever the probe succeeds.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use super::simulator::{SimConfig, SimulatorBackend};
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

fn xen_not_built() -> String {
    "the Xen backend is not built yet (it will live in agent/src/hypervisor/xen.rs); \
     use the simulator backend"
        .to_string()
}

/// [`select_backend`] with the privcmd path as a parameter, for tests.
fn select_with_probe(
    choice: BackendChoice,
    sim_config: SimConfig,
    privcmd: &Path,
) -> Result<(Arc<dyn Hypervisor>, String), BackendError> {
    let simulator =
        |why: String| -> (Arc<dyn Hypervisor>, String) { (Arc::new(SimulatorBackend::new(sim_config.clone())), why) };
    let chosen = match choice {
        BackendChoice::Simulator => simulator("the simulator backend was requested".into()),
        BackendChoice::Xen => {
            return Err(BackendError::Unavailable {
                backend: "xen",
                reason: xen_not_built(),
            })
        }
        BackendChoice::Auto if privcmd.exists() => simulator(format!(
            "{} is present (this is a Xen control domain) but the Xen backend is not built yet; \
             using the simulator: guests are NOT real",
            privcmd.display()
        )),
        BackendChoice::Auto => simulator(format!(
            "{} not present: no Xen hypervisor; using the simulator",
            privcmd.display()
        )),
    };
    tracing::info!(choice = %choice, backend = chosen.0.backend_name(), why = %chosen.1, "hypervisor backend selected");
    Ok(chosen)
}

#[cfg(test)]
mod tests {
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
    fn auto_on_xen_still_simulates_but_warns() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("privcmd");
        std::fs::write(&present, b"").unwrap();
        let (hv, why) = select_with_probe(BackendChoice::Auto, SimConfig::small_host(), &present).unwrap();
        assert_eq!(hv.backend_name(), "simulator");
        assert!(why.contains("not built yet"), "{why}");
    }

    #[test]
    fn xen_is_a_clear_error_and_simulator_works() {
        let err = select_backend(BackendChoice::Xen, SimConfig::small_host())
            .err()
            .unwrap();
        assert!(matches!(err, BackendError::Unavailable { backend: "xen", .. }));
        assert!(err.to_string().contains("not built yet"), "{err}");
        let (hv, why) = select_backend(BackendChoice::Simulator, SimConfig::small_host()).unwrap();
        assert_eq!(hv.backend_name(), "simulator");
        assert!(why.contains("requested"));
        assert_eq!(hv.list_domains().unwrap().len(), 1);
    }
}
