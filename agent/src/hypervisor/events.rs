//! Backend events and a small fan-out bus backends can share.
//!
//! Events are *hints*: they say what changed, never the new state. A
//! subscriber reacts by re-reading state with
//! [`domain_info`](super::Hypervisor::domain_info) or
//! [`list_devices`](super::Hypervisor::list_devices). Because of that, events
//! may be coalesced or (under overload) dropped, in which case the subscriber
//! gets [`BackendEvent::Resync`] and must re-read everything.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use super::types::{DevId, DeviceKind, DomId};

/// Something changed in the backend; re-read the affected state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendEvent {
    /// The domain's state, memory, vCPUs or existence changed (created,
    /// paused, shut down by itself, rebooted, crashed, destroyed, ...).
    DomainChanged(DomId),
    /// A device was plugged, unplugged or changed state.
    DeviceChanged {
        /// Domain owning the device.
        domid: DomId,
        /// Block or network.
        kind: DeviceKind,
        /// Device id within the domain.
        devid: DevId,
    },
    /// Events were dropped because this subscriber fell behind; re-read all
    /// domains and devices.
    Resync,
}

/// The receiving end of a subscription. Dropping it unsubscribes.
pub type EventReceiver = Receiver<BackendEvent>;

/// Default per-subscriber queue length of an [`EventBus`].
pub const DEFAULT_EVENT_QUEUE: usize = 4096;

struct Subscriber {
    tx: Sender<BackendEvent>,
    lagged: bool,
}

/// Fans events out to any number of subscribers without ever blocking the
/// publisher. Each subscriber has a bounded queue; when it is full the
/// subscriber is marked lagged, further events are dropped for it, and a
/// single [`BackendEvent::Resync`] is delivered as soon as there is room.
/// Subscribers whose receiver was dropped are forgotten.
pub struct EventBus {
    capacity: usize,
    subscribers: Mutex<Vec<Subscriber>>,
}

impl EventBus {
    /// A bus whose subscribers each queue up to `capacity` events (minimum 2).
    pub fn new(capacity: usize) -> Self {
        EventBus {
            capacity: capacity.max(2),
            subscribers: Mutex::new(Vec::new()),
        }
    }

    /// A new subscription receiving every event published from now on.
    pub fn subscribe(&self) -> EventReceiver {
        let (tx, rx) = crossbeam_channel::bounded(self.capacity);
        self.subscribers.lock().push(Subscriber { tx, lagged: false });
        rx
    }

    /// Number of live subscriptions (receivers not yet dropped, as of the
    /// last publish).
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.lock().len()
    }

    /// Delivers `event` to every subscriber; never blocks.
    pub fn publish(&self, event: BackendEvent) {
        tracing::trace!(?event, "backend event");
        let mut subs = self.subscribers.lock();
        subs.retain_mut(|sub| {
            if sub.lagged {
                match sub.tx.try_send(BackendEvent::Resync) {
                    Ok(()) => sub.lagged = false,
                    Err(TrySendError::Full(_)) => return true,
                    Err(TrySendError::Disconnected(_)) => return false,
                }
            }
            match sub.tx.try_send(event) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    sub.lagged = true;
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(DEFAULT_EVENT_QUEUE)
    }
}

/// Bridges a subscription into async code: a small thread blocks on `rx`
/// and forwards every event into a tokio channel of `capacity` events
/// (back-pressure, nothing is dropped). The thread ends when either side is
/// dropped. Returns `None` if the thread cannot be spawned.
pub fn forward_to_tokio(rx: EventReceiver, capacity: usize) -> Option<tokio::sync::mpsc::Receiver<BackendEvent>> {
    let (tx, out) = tokio::sync::mpsc::channel(capacity.max(1));
    let spawned = std::thread::Builder::new().name("hv-events".into()).spawn(move || {
        while let Ok(event) = rx.recv() {
            if tx.blocking_send(event).is_err() {
                break;
            }
        }
    });
    match spawned {
        Ok(_) => Some(out),
        Err(e) => {
            tracing::error!(error = %e, "cannot spawn the event forwarder");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_out_and_unsubscribe() {
        let bus = EventBus::new(8);
        let a = bus.subscribe();
        let b = bus.subscribe();
        bus.publish(BackendEvent::DomainChanged(3));
        assert_eq!(a.try_recv().unwrap(), BackendEvent::DomainChanged(3));
        assert_eq!(b.try_recv().unwrap(), BackendEvent::DomainChanged(3));
        drop(b);
        bus.publish(BackendEvent::DomainChanged(4));
        assert_eq!(bus.subscriber_count(), 1);
        assert_eq!(a.try_recv().unwrap(), BackendEvent::DomainChanged(4));
    }

    #[test]
    fn overflow_yields_resync() {
        let bus = EventBus::new(2);
        let rx = bus.subscribe();
        for d in 1..=5 {
            bus.publish(BackendEvent::DomainChanged(d));
        }
        assert_eq!(rx.try_recv().unwrap(), BackendEvent::DomainChanged(1));
        assert_eq!(rx.try_recv().unwrap(), BackendEvent::DomainChanged(2));
        assert!(rx.try_recv().is_err());
        bus.publish(BackendEvent::DomainChanged(6));
        assert_eq!(rx.try_recv().unwrap(), BackendEvent::Resync);
        assert_eq!(rx.try_recv().unwrap(), BackendEvent::DomainChanged(6));
    }

    #[test]
    fn forwards_into_tokio() {
        let bus = EventBus::new(8);
        let mut rx = forward_to_tokio(bus.subscribe(), 4).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        bus.publish(BackendEvent::DomainChanged(9));
        let got = rt.block_on(async { rx.recv().await });
        assert_eq!(got, Some(BackendEvent::DomainChanged(9)));
    }
}
