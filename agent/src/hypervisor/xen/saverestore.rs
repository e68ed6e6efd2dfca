//! `suspend_to` / `resume_from` on Xen: libxenguest's save/restore stream
//! (`xc_domain_save` / `xc_domain_restore`) behind a short header of the
//! toolstack's own.
//!
//! The image file is
//!
//! ```text
//! XAPID-XEN-SUSPEND 1\n
//! {"config": <DomainConfig>, "target": <bytes>, "vcpus": <n>, "device_model_state": <bytes>}\n
//! <the HVM device model's state: device_model_state bytes (none for PV and PVH)>
//! <Xen migration stream v2, as xc_domain_save writes it>
//! ```
//!
//! Suspending asks the guest (`control/shutdown = suspend`) and waits for Xen
//! to report the domain shut down with reason `suspend`; for HVM the device
//! model is then stopped and its devices' state taken through QMP
//! (`xen-save-devices-state`); then `xc_domain_save` writes the stream (its
//! suspend callback only checks that state), the file is synced, and the
//! domain destroyed. When the save fails after the guest suspended, the
//! guest is resumed (`xc_domain_resume`, cooperative; the device model told
//! to go on) and keeps running.
//! Resuming creates a domain of the image's VM (same uuid, kind, memory
//! target and vCPUs online), restores the stream into it, publishes its
//! rings and introduces it to xenstored; for HVM it then starts the device
//! model with the saved state as its incoming migration. The domain stays
//! paused; its PV devices are plugged by the caller.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use xenctrl::Transaction;

use super::super::{
    BackendError, BackendEvent, DomId, DomainConfig, DomainKind, DomainState, Hypervisor, LiveSent, Op, ShutdownCode,
    ShutdownReason,
};
use super::layout::{dom_path, mib_ceil, state_of};
use super::{devicemodel, publish_rings, xen_err, Rings, XenBackend};

/// First line of an image.
const MAGIC: &str = "XAPID-XEN-SUSPEND 1";
/// The largest header accepted.
const MAX_HEADER: usize = 1 << 20;
/// How long a guest may take to suspend once asked.
const SUSPEND_WAIT: Duration = Duration::from_secs(180);
/// How often the domain's state is polled while waiting.
const POLL: Duration = Duration::from_millis(50);

/// What the toolstack keeps of a saved domain besides Xen's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageHeader {
    /// The domain's configuration.
    pub config: DomainConfig,
    /// Balloon target when saved, bytes.
    pub target: u64,
    /// vCPUs online when saved.
    pub vcpus: u32,
    /// Length of the HVM device model's state that follows the header, bytes (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub device_model_state: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ImageHeader {
    /// The header's bytes: the magic line and one JSON line.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = format!("{MAGIC}\n").into_bytes();
        out.extend(serde_json::to_vec(self)?);
        out.push(b'\n');
        Ok(out)
    }

    /// Parses the header at the start of `bytes`; returns it and its length.
    pub fn decode(bytes: &[u8]) -> Result<(ImageHeader, usize), String> {
        let magic = MAGIC.as_bytes();
        if bytes.len() <= magic.len() || &bytes[..magic.len()] != magic || bytes[magic.len()] != b'\n' {
            return Err(format!("it does not start with '{MAGIC}'"));
        }
        let body = &bytes[magic.len() + 1..];
        let end = body
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| "its header line is not terminated".to_string())?;
        let header: ImageHeader =
            serde_json::from_slice(&body[..end]).map_err(|e| format!("its header is not valid: {e}"))?;
        Ok((header, magic.len() + 1 + end + 1))
    }
}

/// Reads an image's header from `input` a byte at a time (the stream after it is read by
/// libxenguest from the same descriptor, so nothing past the header may be consumed): the
/// header, or why the image is not one.
fn read_header(mut input: impl Read) -> std::io::Result<Result<ImageHeader, String>> {
    let mut head = Vec::new();
    let mut lines = 0;
    let mut byte = [0u8; 1];
    while lines < 2 {
        if head.len() >= MAX_HEADER {
            return Ok(Err(format!("its header is over {MAX_HEADER} bytes")));
        }
        if input.read(&mut byte)? == 0 {
            return Ok(Err("it ends inside its header".into()));
        }
        head.push(byte[0]);
        if byte[0] == b'\n' {
            lines += 1;
            if lines == 1 && head != format!("{MAGIC}\n").as_bytes() {
                return Ok(Err(format!("it does not start with '{MAGIC}'")));
            }
        }
    }
    Ok(ImageHeader::decode(&head).map(|(h, _)| h))
}

/// What an image of the domain of `record` starts with: its header, then the device model's
/// `state` (empty for PV and PVH).
fn image_start(op: Op, record: &super::layout::Record, state: &[u8]) -> Result<Vec<u8>, BackendError> {
    let mut bytes = ImageHeader {
        config: record.config.clone(),
        target: record.target,
        vcpus: record.vcpus,
        device_model_state: state.len() as u64,
    }
    .encode()
    .map_err(|e| BackendError::InvalidArgument {
        op,
        reason: format!("encoding the image header: {e}"),
    })?;
    bytes.extend_from_slice(state);
    Ok(bytes)
}

impl XenBackend {
    /// The record of a domain that can be saved: running (not paused) and built by this
    /// toolstack (`InvalidState` otherwise).
    fn saveable(&self, op: Op, domid: DomId) -> Result<super::layout::Record, BackendError> {
        self.with_handles(op, |xc, xs| {
            let dom = self.guest(op, xc, xs, domid)?;
            dom.ensure_alive(op)?;
            if dom.info.flags.paused {
                return Err(dom.invalid(op, "paused: only a running guest can suspend itself"));
            }
            match &dom.record {
                Some(r) if r.built => Ok(r.clone()),
                Some(_) => Err(dom.invalid(op, "not built yet")),
                None => Err(dom.invalid(op, "not created by this toolstack")),
            }
        })
    }

    /// `suspend_to`: see the module documentation.
    pub(super) fn save_domain(&self, domid: DomId, path: &Path) -> Result<(), BackendError> {
        let op = Op::SuspendTo;
        let record = self.saveable(op, domid)?;
        let io = |source| BackendError::Io {
            op,
            path: path.to_path_buf(),
            source,
        };
        let hvm = matches!(record.config.kind, DomainKind::Hvm(_));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        // The guest suspends before the save starts: libxenguest reads a PV guest's p2m
        // frame list from its shared info when it starts, which the guest kernel fills early
        // in its boot, before it can act on a suspend request. The callback then only checks.
        let started = Instant::now();
        if !self.suspend_guest(domid) {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(BackendError::Timeout {
                op,
                domid,
                waited: started.elapsed(),
            });
        }
        let suspended = true;
        let device_state = if hvm {
            self.device_model_state(domid)
        } else {
            Ok(Vec::new())
        };
        let header = device_state.and_then(|state| image_start(op, &record, &state));
        let saved = header
            .and_then(|header| file.write_all(&header).map_err(io))
            .and_then(|()| {
                self.xc.with(op, |xc| {
                    let mut check = || self.is_suspended(domid);
                    let mut logdirty = |enable| self.device_model_logdirty(domid, enable);
                    xc.domain_save(domid, file.as_fd(), false, &mut check, &mut logdirty)
                        .map_err(|e| xen_err(op, e))
                })
            });
        let result = saved.and_then(|()| file.sync_all().map_err(io));
        drop(file);
        if let Err(e) = result {
            let _ = std::fs::remove_file(path);
            if suspended {
                match self
                    .xc
                    .with(op, |xc| xc.domain_resume(domid).map_err(|e| xen_err(op, e)))
                {
                    Ok(()) => {
                        if hvm {
                            self.device_model_run(domid, true);
                        }
                        tracing::warn!(domid, error = %e, "xen: save failed; the guest was resumed")
                    }
                    Err(r) => {
                        tracing::error!(domid, error = %e, resume = %r, "xen: save failed and resuming the guest failed")
                    }
                }
                self.publish(BackendEvent::DomainChanged(domid));
            }
            return Err(e);
        }
        tracing::info!(domid, path = %path.display(), "xen: domain saved");
        self.destroy(domid)
    }

    /// The state of a suspended HVM domain's emulated devices, from its device model.
    fn device_model_state(&self, domid: DomId) -> Result<Vec<u8>, BackendError> {
        let dms = self.dms.lock();
        let dm = dms.get(&domid).ok_or_else(|| BackendError::InvalidArgument {
            op: Op::SuspendTo,
            reason: format!("HVM domain {domid} has no device model"),
        })?;
        let state = dm.save_state()?;
        tracing::info!(domid, bytes = state.len(), "xen: device model state saved");
        Ok(state)
    }

    /// Switches an HVM domain's device model's tracking of the guest pages it writes
    /// (`xen-set-global-dirty-log`), as libxenguest asks during a save; `true` when done (or
    /// when the domain has no device model).
    fn device_model_logdirty(&self, domid: DomId, enable: bool) -> bool {
        let dms = self.dms.lock();
        let Some(dm) = dms.get(&domid) else {
            return true;
        };
        match dm.qmp_with("xen-set-global-dirty-log", serde_json::json!({ "enable": enable })) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(domid, enable, error = %e, "xen: switching the device model's dirty log failed");
                false
            }
        }
    }

    /// Whether Xen reports the domain shut down for a suspend (`xc_domain_save`'s callback;
    /// it runs inside the save, so it uses a handle of its own from the pool).
    fn is_suspended(&self, domid: DomId) -> bool {
        let op = Op::SuspendTo;
        self.xc
            .with(op, |xc| {
                xc.domain_info(domid)
                    .map(|i| state_of(&i.flags, i.shutdown_reason))
                    .map_err(|e| xen_err(op, e))
            })
            .is_ok_and(|s| s == DomainState::Shutdown(ShutdownCode::Suspend))
    }

    /// Asks the guest to suspend and waits until Xen reports it did; `false` when it does
    /// something else or does not answer within [`SUSPEND_WAIT`].
    fn suspend_guest(&self, domid: DomId) -> bool {
        let op = Op::SuspendTo;
        let asked = self.xs.with(op, |xs| {
            xs.write(
                Transaction::NONE,
                &format!("{}/control/shutdown", dom_path(domid)),
                ShutdownReason::Suspend.as_xenstore_str().as_bytes(),
            )
            .map_err(|e| xen_err(op, e))
        });
        if let Err(e) = asked {
            tracing::warn!(domid, error = %e, "xen: cannot ask the guest to suspend");
            return false;
        }
        let deadline = Instant::now() + SUSPEND_WAIT;
        loop {
            let state = self.xc.with(op, |xc| {
                xc.domain_info(domid)
                    .map(|i| state_of(&i.flags, i.shutdown_reason))
                    .map_err(|e| xen_err(op, e))
            });
            match state {
                Ok(DomainState::Shutdown(ShutdownCode::Suspend)) => return true,
                Ok(DomainState::Running | DomainState::Paused) if Instant::now() < deadline => std::thread::sleep(POLL),
                Ok(other) => {
                    tracing::warn!(domid, state = %other, "xen: the guest did not suspend");
                    return false;
                }
                Err(e) => {
                    tracing::warn!(domid, error = %e, "xen: reading the domain while it suspends");
                    return false;
                }
            }
        }
    }

    /// `resume_from`: see the module documentation.
    pub(super) fn restore_domain(&self, path: &Path, config: &DomainConfig) -> Result<DomId, BackendError> {
        let op = Op::ResumeFrom;
        config.validate(op)?;
        let file = File::open(path).map_err(|source| BackendError::Io {
            op,
            path: path.to_path_buf(),
            source,
        })?;
        self.restore_stream(file, path, config, false)
    }

    /// Restores the image read from `file` (named `path` in errors) into a new domain of
    /// `config`. `incoming`: the stream arrives while the VM's sending domain still exists
    /// (a live migration to this host), which the new domain may then share its uuid with.
    fn restore_stream(
        &self,
        mut file: File,
        path: &Path,
        config: &DomainConfig,
        incoming: bool,
    ) -> Result<DomId, BackendError> {
        let op = Op::ResumeFrom;
        let io = |source| BackendError::Io {
            op,
            path: path.to_path_buf(),
            source,
        };
        let invalid = |reason: String| BackendError::InvalidImage {
            path: path.to_path_buf(),
            reason,
        };
        let header = read_header(&mut file).map_err(io)?.map_err(invalid)?;
        if header.config.uuid != config.uuid {
            return Err(invalid(format!(
                "it holds VM {}, not {}",
                header.config.uuid, config.uuid
            )));
        }
        if header.config.kind.as_str() != config.kind.as_str() {
            return Err(invalid(format!(
                "it holds a {} domain, the VM is {}",
                header.config.kind.as_str(),
                config.kind.as_str()
            )));
        }
        if header.target > config.memory_max || header.vcpus > config.vcpus_max {
            return Err(invalid(format!(
                "its memory target {} or {} vCPUs exceed the VM's maximum ({} bytes, {} vCPUs)",
                header.target, header.vcpus, config.memory_max, config.vcpus_max
            )));
        }
        let hvm = match &config.kind {
            DomainKind::Hvm(hvm) => Some(hvm),
            _ => None,
        };
        if hvm.is_some() != (header.device_model_state > 0) || header.device_model_state > devicemodel::MAX_STATE {
            return Err(invalid(format!(
                "it holds {} bytes of device model state for a {} domain",
                header.device_model_state,
                config.kind.as_str()
            )));
        }
        let mut device_state = Vec::new();
        (&mut file)
            .take(header.device_model_state)
            .read_to_end(&mut device_state)
            .map_err(io)?;
        if device_state.len() as u64 != header.device_model_state {
            return Err(invalid(format!(
                "it ends inside the device model state ({} of {} bytes)",
                device_state.len(),
                header.device_model_state
            )));
        }
        let mut cfg = config.clone();
        cfg.memory_target = header.target;
        cfg.vcpus_at_start = header.vcpus.max(1);
        let domid = self.create_domain_as(&cfg, incoming)?;
        let restored = self.with_handles(op, |xc, xs| {
            let err = |e| xen_err(op, e);
            let store_port = xc.evtchn_alloc_unbound(domid, 0).map_err(err)?;
            let console_port = xc.evtchn_alloc_unbound(domid, 0).map_err(err)?;
            if let DomainKind::Pvh(_) | DomainKind::Hvm(_) = cfg.kind {
                let mib = u32::try_from(mib_ceil(cfg.memory_target)).unwrap_or(u32::MAX);
                xc.set_paging_mempool_size(domid, xenctrl::pvh_paging_pool_bytes(mib, cfg.vcpus_max))
                    .map_err(err)?;
            }
            let rings = xc
                .domain_restore(domid, file.as_fd(), store_port, console_port)
                .map_err(err)?;
            publish_rings(
                xs,
                domid,
                Rings {
                    store_mfn: rings.store_mfn,
                    store_port,
                    console_mfn: rings.console_mfn,
                    console_port,
                },
            )?;
            self.reservations.lock().remove(&domid);
            if let Some(hvm) = hvm {
                self.start_device_model(xs, domid, &cfg, hvm, Some(&device_state))?;
            }
            Ok(())
        });
        if let Err(e) = restored {
            if let Err(d) = self.destroy(domid) {
                tracing::warn!(domid, error = %d, "xen: cleaning up after a failed restore");
            }
            return Err(e);
        }
        tracing::info!(domid, path = %path.display(), "xen: domain restored");
        self.publish(BackendEvent::DomainChanged(domid));
        Ok(domid)
    }

    /// [`LiveMigration::send_live`](super::super::LiveMigration::send_live): the header, then
    /// libxenguest's live save (rounds while the guest runs; the guest asked to suspend for
    /// the last one) into `out`. The domain is left suspended; on a failure after it
    /// suspended it runs on.
    pub(super) fn send_live(&self, domid: DomId, out: OwnedFd) -> Result<LiveSent, BackendError> {
        let op = Op::SuspendTo;
        let record = self.saveable(op, domid)?;
        if matches!(record.config.kind, DomainKind::Hvm(_)) {
            return Err(BackendError::InvalidArgument {
                op,
                reason: "an HVM guest moves stop-and-copy (its device model's state is taken once it stopped)".into(),
            });
        }
        let path = Path::new("live migration stream");
        let io = |source| BackendError::Io {
            op,
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::from(out);
        file.write_all(&image_start(op, &record, &[])?).map_err(io)?;
        let started = Instant::now();
        let mut suspended_at = None;
        let saved = self.xc.with(op, |xc| {
            let mut suspend = || {
                let done = self.suspend_guest(domid);
                suspended_at = Some(Instant::now());
                done
            };
            let mut logdirty = |enable| self.device_model_logdirty(domid, enable);
            xc.domain_save(domid, file.as_fd(), true, &mut suspend, &mut logdirty)
                .map_err(|e| xen_err(op, e))
        });
        drop(file);
        match (saved, suspended_at) {
            (Ok(()), Some(at)) => {
                tracing::info!(
                    domid,
                    live_ms = (at - started).as_millis() as u64,
                    "xen: live save done"
                );
                Ok(LiveSent { suspended_at: at })
            }
            (Ok(()), None) => Err(BackendError::InvalidArgument {
                op,
                reason: "the live save ended without suspending the guest".into(),
            }),
            (Err(e), at) => {
                if at.is_some() && self.is_suspended(domid) {
                    if let Err(r) = self.resume_suspended(domid) {
                        tracing::error!(domid, error = %e, resume = %r, "xen: live save failed and resuming the guest failed");
                    }
                }
                Err(e)
            }
        }
    }

    /// Lets a guest that suspended for a save run on (`xc_domain_resume`, cooperative).
    pub(super) fn resume_suspended(&self, domid: DomId) -> Result<(), BackendError> {
        let op = Op::ResumeFrom;
        self.xc
            .with(op, |xc| xc.domain_resume(domid).map_err(|e| xen_err(op, e)))?;
        tracing::warn!(domid, "xen: the suspended guest runs on");
        self.publish(BackendEvent::DomainChanged(domid));
        Ok(())
    }

    /// [`LiveMigration::receive_live`](super::super::LiveMigration::receive_live): the image
    /// read from `input` as it arrives, into a new domain (the VM's sending domain may still
    /// exist: the uuid is shared meanwhile).
    pub(super) fn receive_live(&self, input: OwnedFd, config: &DomainConfig) -> Result<DomId, BackendError> {
        config.validate(Op::ResumeFrom)?;
        self.restore_stream(File::from(input), Path::new("live migration stream"), config, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ImageHeader {
        ImageHeader {
            config: DomainConfig::pv("saved", 128 << 20, 2, "/boot/vmlinuz"),
            target: 64 << 20,
            vcpus: 1,
            device_model_state: 0,
        }
    }

    #[test]
    fn header_round_trips_and_says_where_the_stream_starts() {
        let h = header();
        let mut bytes = h.encode().unwrap();
        let len = bytes.len();
        bytes.extend_from_slice(b"XenSavedDomv2-stream");
        let (back, offset) = ImageHeader::decode(&bytes).unwrap();
        assert_eq!(back, h);
        assert_eq!(offset, len);
        assert_eq!(&bytes[offset..], b"XenSavedDomv2-stream");
    }

    #[test]
    fn an_hvm_header_says_how_much_device_state_follows_and_older_ones_have_none() {
        let mut h = header();
        h.device_model_state = 4242;
        let bytes = h.encode().unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("\"device_model_state\":4242"));
        assert_eq!(ImageHeader::decode(&bytes).unwrap().0.device_model_state, 4242);
        let plain = header().encode().unwrap();
        assert!(!String::from_utf8_lossy(&plain).contains("device_model_state"));
        assert_eq!(ImageHeader::decode(&plain).unwrap().0.device_model_state, 0);
    }

    #[test]
    fn foreign_and_damaged_headers_are_refused() {
        assert!(ImageHeader::decode(b"").is_err());
        assert!(ImageHeader::decode(b"XAPIDSIM-SUSPEND 1 0 0\n{}").is_err());
        assert!(ImageHeader::decode(b"XAPID-XEN-SUSPEND 1\n{\"config\":").is_err());
        assert!(ImageHeader::decode(b"XAPID-XEN-SUSPEND 1\n{}\n").is_err());
        let mut bytes = header().encode().unwrap();
        bytes.truncate(bytes.len() - 1);
        assert!(ImageHeader::decode(&bytes).is_err());
    }

    #[test]
    fn a_stream_is_read_up_to_the_end_of_its_header_and_no_further() {
        let h = header();
        let mut bytes = h.encode().unwrap();
        let len = bytes.len();
        bytes.extend_from_slice(b"Xen's stream follows");
        let mut input = std::io::Cursor::new(bytes);
        assert_eq!(read_header(&mut input).unwrap().unwrap(), h);
        assert_eq!(input.position() as usize, len);
        // Cut short, foreign, or endless: refused without reading on.
        let cut = &h.encode().unwrap()[..len - 1];
        assert!(read_header(cut).unwrap().is_err());
        assert!(read_header(&b"XAPIDSIM-SUSPEND 1 0 0\n{}\n"[..]).unwrap().is_err());
        let mut endless = b"XAPID-XEN-SUSPEND 1\n".to_vec();
        endless.resize(endless.len() + MAX_HEADER + 1, b'x');
        assert!(read_header(&endless[..]).unwrap().is_err());
    }
}
