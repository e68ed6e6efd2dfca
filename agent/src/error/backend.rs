//! Hypervisor backend failures as the API reports them: each variant of `BackendError` has its
//! XenAPI code here, as the reference's toolstack maps its domain manager's failures. A
//! backend's own wording reaches a client only inside `INTERNAL_ERROR`, for failures of the
//! host itself (a system call, the backend missing).

use super::ApiError;
use crate::hypervisor::{BackendError, DeviceKind, DomainState, Op};

impl From<BackendError> for ApiError {
    /// A backend failure with no VM in view (the VM's ref is left empty where a code names it).
    fn from(e: BackendError) -> Self {
        backend_error(e, "")
    }
}

impl ApiError {
    /// How a backend failure during an operation on the VM `vm` (its reference) reaches a
    /// client: [`backend_error`], reachable wherever `ApiError` is.
    pub fn from_backend(e: BackendError, vm: &str) -> ApiError {
        backend_error(e, vm)
    }
}

/// A VM names a bootloader no backend can run. The API documents `UNKNOWN_BOOTLOADER [vm,
/// bootloader]` for `VM.start`, but `ApiError` has no variant for it yet, so until it has, this
/// answers what the reference's toolstack itself answers (its domain manager's unknown
/// bootloader comes back as an internal error naming the bootloader).
fn unknown_bootloader(vm: &str, name: &str) -> ApiError {
    ApiError::InternalError {
        message: format!("VM {vm}: unknown bootloader {name}"),
    }
}

/// How a backend failure during an operation on `vm` reaches a client.
pub fn backend_error(e: BackendError, vm: &str) -> ApiError {
    use BackendError as B;
    let internal = |m: String| ApiError::InternalError { message: m };
    match e {
        B::NotEnoughMemory { needed, available } => ApiError::HostNotEnoughFreeMemory {
            needed: needed.to_string(),
            available: available.to_string(),
        },
        B::NoSuchDomain { domid, .. } => internal(format!("Object with type domain and id {domid} does not exist")),
        B::DuplicateDomain { uuid, .. } => internal(format!("Object with type VM and id {uuid} already exists")),
        B::InvalidState { op, state, .. } => ApiError::VmBadPowerState {
            vm: vm.to_owned(),
            expected: expected_power_state(op).to_owned(),
            actual: power_state(state).to_owned(),
        },
        B::InvalidArgument { op, .. } => internal(format!("the domain's configuration was refused ({op})")),
        B::Unsupported { what, .. } => ApiError::not_implemented(&what),
        B::NoSuchDevice { .. } => internal("Device is not connected".to_owned()),
        B::DeviceExists { devid, .. } => ApiError::DeviceAlreadyExists {
            device: devid.to_string(),
        },
        B::DeviceBusy {
            kind, devid, reason, ..
        } => ApiError::DeviceDetachRejected {
            class: device_class(kind).to_owned(),
            device: devid.to_string(),
            reason,
        },
        B::Timeout { op, waited, .. } => match op {
            Op::SuspendTo => ApiError::VmSuspendTimeout {
                vm: vm.to_owned(),
                timeout: waited.as_secs_f64().to_string(),
            },
            _ => ApiError::VmShutdownTimeout {
                vm: vm.to_owned(),
                timeout: waited.as_secs_f64().to_string(),
            },
        },
        B::Io { op: Op::SuspendTo, .. } => ApiError::VdiIoError {
            message: "I/O error saving VM suspend image".to_owned(),
        },
        B::InvalidImage { .. } => ApiError::VdiIoError {
            message: "I/O error reading VM suspend image".to_owned(),
        },
        B::BootloaderFailed { reason } => ApiError::BootloaderFailed {
            vm: vm.to_owned(),
            msg: reason,
        },
        // As the reference's toolstack reports a PV VM with no bootable disk to boot from.
        B::NoBootableDevice => internal("there is no bootable device".to_owned()),
        B::UnknownBootloader { name } => unknown_bootloader(vm, &name),
        other @ (B::Os { .. } | B::Io { .. } | B::Unavailable { .. }) => {
            internal(format!("hypervisor backend: {other}"))
        }
    }
}

/// The power state an operation needs its domain in, as the API spells it.
fn expected_power_state(op: Op) -> &'static str {
    match op {
        Op::Unpause => "paused",
        Op::ResumeFrom | Op::CreateDomain | Op::Build => "halted",
        _ => "running",
    }
}

fn power_state(state: DomainState) -> &'static str {
    match state {
        DomainState::Running => "running",
        DomainState::Paused => "paused",
        DomainState::Shutdown(_) | DomainState::Dying => "halted",
    }
}

fn device_class(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Block => "VBD",
        DeviceKind::Net => "VIF",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_backend_wording_reaches_a_client_for_a_guest_fault() {
        let busy = BackendError::DeviceBusy {
            op: Op::UnplugBlock,
            domid: 3,
            kind: DeviceKind::Block,
            devid: 51712,
            reason: "in use by the guest".into(),
        };
        let e = backend_error(busy, "OpaqueRef:v");
        assert_eq!(e.code(), "DEVICE_DETACH_REJECTED");
        assert_eq!(e.params(), vec!["VBD", "51712", "in use by the guest"]);
        let boot = BackendError::BootloaderFailed {
            reason: "no kernel found".into(),
        };
        assert_eq!(
            backend_error(boot, "OpaqueRef:v").params(),
            vec!["OpaqueRef:v", "no kernel found"]
        );
        let none = backend_error(BackendError::NoBootableDevice, "OpaqueRef:v");
        assert_eq!(none.code(), "INTERNAL_ERROR");
        assert_eq!(none.params(), vec!["there is no bootable device"]);
        let unknown = backend_error(BackendError::UnknownBootloader { name: "grubby".into() }, "OpaqueRef:v");
        assert_eq!(unknown.code(), "INTERNAL_ERROR");
        assert!(unknown.params()[0].contains("OpaqueRef:v") && unknown.params()[0].contains("grubby"));
        let state = BackendError::InvalidState {
            op: Op::Unpause,
            domid: 3,
            state: DomainState::Running,
            reason: "not paused".into(),
        };
        assert_eq!(
            backend_error(state, "OpaqueRef:v").params(),
            vec!["OpaqueRef:v", "paused", "running"]
        );
    }
}
