//! A backend whose every call runs on the privileged threads ([`crate::privileged`]).
//!
//! The Xen backend's calls issue privcmd `ioctl`s and start programs (the domain builder
//! helper, pygrub, QEMU, hotplug commands); a confined HTTP worker may do neither. Selection
//! wraps the Xen backend in [`PrivilegedCalls`], which sends each call to a thread made
//! before the workers and waits for it there. Without confinement the call runs in place.
//! The simulator needs no such power and is not wrapped.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use super::live_migration_of;
use super::{
    BackendError, BlockDevice, Capabilities, ConsoleStream, DevId, DeviceInfo, DomId, DomainConfig, DomainInfo,
    EventReceiver, FaultInjection, GuestControl, HostInfo, Hypervisor, LiveMigration, LiveSent, MacAddr, NetDevice,
    ShutdownReason, UnplugMode, VifIpSetting,
};
use crate::privileged;

/// `inner`'s calls, each carried out on a privileged thread.
pub struct PrivilegedCalls<H> {
    inner: Arc<H>,
}

impl<H: Hypervisor + 'static> PrivilegedCalls<H> {
    /// Wraps `inner`.
    pub fn new(inner: H) -> Self {
        PrivilegedCalls { inner: Arc::new(inner) }
    }

    /// Runs `call` on the inner backend, on a privileged thread.
    fn run<T, F>(&self, call: F) -> Result<T, BackendError>
    where
        F: FnOnce(&H) -> Result<T, BackendError> + Send + 'static,
        T: Send + 'static,
    {
        let inner = self.inner.clone();
        let backend = self.inner.backend_name();
        privileged::run_blocking(move || call(&inner)).unwrap_or_else(|e| {
            Err(BackendError::Unavailable {
                backend,
                reason: e.to_string(),
            })
        })
    }
}

impl<H: Hypervisor + 'static> Hypervisor for PrivilegedCalls<H> {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }

    fn calls_may_block(&self) -> bool {
        self.inner.calls_may_block()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn host_info(&self) -> Result<HostInfo, BackendError> {
        self.run(|h| h.host_info())
    }

    fn memory_free(&self) -> Result<u64, BackendError> {
        self.run(|h| h.memory_free())
    }

    fn create_domain(&self, config: &DomainConfig) -> Result<DomId, BackendError> {
        let config = config.clone();
        self.run(move |h| h.create_domain(&config))
    }

    fn build(&self, domid: DomId) -> Result<(), BackendError> {
        self.run(move |h| h.build(domid))
    }

    fn unpause(&self, domid: DomId) -> Result<(), BackendError> {
        self.run(move |h| h.unpause(domid))
    }

    fn pause(&self, domid: DomId) -> Result<(), BackendError> {
        self.run(move |h| h.pause(domid))
    }

    fn shutdown(&self, domid: DomId, reason: ShutdownReason) -> Result<(), BackendError> {
        self.run(move |h| h.shutdown(domid, reason))
    }

    fn destroy(&self, domid: DomId) -> Result<(), BackendError> {
        self.run(move |h| h.destroy(domid))
    }

    fn suspend_to(&self, domid: DomId, path: &Path) -> Result<(), BackendError> {
        let path = path.to_path_buf();
        self.run(move |h| h.suspend_to(domid, &path))
    }

    fn resume_from(&self, path: &Path, config: &DomainConfig) -> Result<DomId, BackendError> {
        let (path, config) = (path.to_path_buf(), config.clone());
        self.run(move |h| h.resume_from(&path, &config))
    }

    fn set_memory_target(&self, domid: DomId, bytes: u64) -> Result<(), BackendError> {
        self.run(move |h| h.set_memory_target(domid, bytes))
    }

    fn set_vcpus(&self, domid: DomId, online: u32) -> Result<(), BackendError> {
        self.run(move |h| h.set_vcpus(domid, online))
    }

    fn domain_info(&self, domid: DomId) -> Result<DomainInfo, BackendError> {
        self.run(move |h| h.domain_info(domid))
    }

    fn list_domains(&self) -> Result<Vec<DomainInfo>, BackendError> {
        self.run(|h| h.list_domains())
    }

    fn plug_block(&self, domid: DomId, device: &BlockDevice) -> Result<(), BackendError> {
        let device = device.clone();
        self.run(move |h| h.plug_block(domid, &device))
    }

    fn unplug_block(&self, domid: DomId, devid: DevId, mode: UnplugMode) -> Result<(), BackendError> {
        self.run(move |h| h.unplug_block(domid, devid, mode))
    }

    fn plug_net(&self, domid: DomId, device: &NetDevice) -> Result<(), BackendError> {
        let device = device.clone();
        self.run(move |h| h.plug_net(domid, &device))
    }

    fn unplug_net(&self, domid: DomId, devid: DevId, mode: UnplugMode) -> Result<(), BackendError> {
        self.run(move |h| h.unplug_net(domid, devid, mode))
    }

    fn list_devices(&self, domid: DomId) -> Result<Vec<DeviceInfo>, BackendError> {
        self.run(move |h| h.list_devices(domid))
    }

    fn console_stream(&self, domid: DomId) -> Result<ConsoleStream, BackendError> {
        self.run(move |h| h.console_stream(domid))
    }

    fn vnc_stream(&self, domid: DomId) -> Result<ConsoleStream, BackendError> {
        self.run(move |h| h.vnc_stream(domid))
    }

    fn subscribe(&self) -> Result<EventReceiver, BackendError> {
        self.run(|h| h.subscribe())
    }

    fn guest_agent_keys(&self, domid: DomId) -> Result<BTreeMap<String, String>, BackendError> {
        self.run(move |h| h.guest_agent_keys(domid))
    }

    fn set_vif_ip_setting(
        &self,
        domid: DomId,
        devid: DevId,
        mac: &MacAddr,
        setting: &VifIpSetting,
    ) -> Result<(), BackendError> {
        let (mac, setting) = (*mac, setting.clone());
        self.run(move |h| h.set_vif_ip_setting(domid, devid, &mac, &setting))
    }

    fn fault_injection(&self) -> Option<&dyn FaultInjection> {
        self.inner.fault_injection()
    }

    fn guest_control(&self) -> Option<&dyn GuestControl> {
        self.inner.guest_control()
    }

    fn live_migration(&self) -> Option<&dyn LiveMigration> {
        self.inner.live_migration().map(|_| self as &dyn LiveMigration)
    }

    fn restart(&self, domid: DomId, config: &DomainConfig) -> Result<DomId, BackendError> {
        let config = config.clone();
        self.run(move |h| h.restart(domid, &config))
    }
}

/// The inner backend's live migration, each call on a privileged thread (the save and the
/// restore map the guest's memory; they run at once, on two of those threads).
impl<H: Hypervisor + 'static> LiveMigration for PrivilegedCalls<H> {
    fn send_live(&self, domid: DomId, out: OwnedFd) -> Result<LiveSent, BackendError> {
        self.run(move |h| live_migration_of(h)?.send_live(domid, out))
    }

    fn resume_suspended(&self, domid: DomId) -> Result<(), BackendError> {
        self.run(move |h| live_migration_of(h)?.resume_suspended(domid))
    }

    fn receive_live(&self, input: OwnedFd, config: &DomainConfig) -> Result<DomId, BackendError> {
        let config = config.clone();
        self.run(move |h| live_migration_of(h)?.receive_live(input, &config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{SimConfig, SimulatorBackend};

    /// The wrapper answers as the backend it wraps, whether or not the privileged threads
    /// run (the agent's tests start them in other tests of this binary).
    #[test]
    fn a_wrapped_backend_answers_as_itself() {
        let wrapped = PrivilegedCalls::new(SimulatorBackend::new(SimConfig::small_host()));
        let plain = SimulatorBackend::new(SimConfig::small_host());
        assert_eq!(wrapped.backend_name(), plain.backend_name());
        assert_eq!(wrapped.memory_free().unwrap(), plain.memory_free().unwrap());
        assert_eq!(
            wrapped.list_domains().unwrap().len(),
            plain.list_domains().unwrap().len()
        );
        assert!(matches!(
            wrapped.domain_info(4000),
            Err(BackendError::NoSuchDomain { .. })
        ));
    }
}
