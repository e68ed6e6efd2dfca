//! Which domains' text consoles have readers, and when each last gave them bytes. The data path
//! notes both ([`ConsoleWatch`]); the lifecycle asks [`ConsoleWatches::settle`] before it
//! destroys a domain that has shut down: on Xen the console is a pty whose far end xenconsoled
//! closes when the domain goes, and the hang-up discards what a reader had not read yet, so the
//! guest's last lines (its `reboot: Power down`) would be lost to a console left open.

use crate::hypervisor::DomId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Least wait after a shutdown is seen, for bytes still on their way (the ring, xenconsoled,
/// the pty) to reach a reader.
const AT_LEAST: Duration = Duration::from_millis(500);
/// Then, until the readers got nothing for this long.
const QUIET: Duration = Duration::from_millis(300);
/// Never longer than this in all.
const AT_MOST: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Entry {
    readers: usize,
    last: Option<Instant>,
}

/// Every domain's console readers.
#[derive(Default)]
pub struct ConsoleWatches {
    by_domain: Mutex<HashMap<DomId, Entry>>,
}

impl ConsoleWatches {
    /// A reader of `domid`'s console, counted until dropped.
    pub fn watch(self: &Arc<Self>, domid: DomId) -> ConsoleWatch {
        self.by_domain.lock().entry(domid).or_default().readers += 1;
        ConsoleWatch {
            watches: self.clone(),
            domid,
        }
    }

    fn output(&self, domid: DomId) {
        if let Some(e) = self.by_domain.lock().get_mut(&domid) {
            e.last = Some(Instant::now());
        }
    }

    /// How long to wait still for `domid`'s readers, `since` the shutdown was seen: `None` when
    /// there is no reader or the wait is over.
    fn wait_left(&self, domid: DomId, since: Instant, now: Instant) -> Option<Duration> {
        let map = self.by_domain.lock();
        let e = map.get(&domid).filter(|e| e.readers > 0)?;
        let until = (since + AT_LEAST)
            .max(e.last.map_or(since, |l| l + QUIET))
            .min(since + AT_MOST);
        (until > now).then(|| until - now)
    }

    /// Waits until the bytes a shut-down domain wrote last have reached its console's readers
    /// (at once when nobody reads it).
    pub async fn settle(&self, domid: DomId) {
        let since = Instant::now();
        while let Some(left) = self.wait_left(domid, since, Instant::now()) {
            tokio::time::sleep(left.min(Duration::from_millis(50))).await;
        }
    }
}

/// One reader of a domain's console; notes each chunk it reads.
pub struct ConsoleWatch {
    watches: Arc<ConsoleWatches>,
    domid: DomId,
}

impl ConsoleWatch {
    /// The reader got bytes.
    pub fn output(&self) {
        self.watches.output(self.domid);
    }
}

impl Drop for ConsoleWatch {
    fn drop(&mut self) {
        let mut map = self.watches.by_domain.lock();
        if let Some(e) = map.get_mut(&self.domid) {
            e.readers = e.readers.saturating_sub(1);
            if e.readers == 0 {
                map.remove(&self.domid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_without_readers_is_not_waited_for() {
        let w = Arc::new(ConsoleWatches::default());
        let now = Instant::now();
        assert_eq!(w.wait_left(7, now, now), None);
        let reader = w.watch(7);
        assert_eq!(w.wait_left(7, now, now), Some(AT_LEAST));
        drop(reader);
        assert_eq!(w.wait_left(7, now, now), None);
    }

    #[test]
    fn readers_still_getting_bytes_are_waited_for_until_quiet_or_the_cap() {
        let w = Arc::new(ConsoleWatches::default());
        let reader = w.watch(3);
        let _other = w.watch(3);
        let since = Instant::now();
        reader.output();
        let last = w.by_domain.lock()[&3].last.unwrap();
        // Past the least wait, bytes that keep coming keep it going, up to the cap.
        let later = since + AT_LEAST + Duration::from_millis(10);
        let expected = (last + QUIET).max(since + AT_LEAST);
        assert_eq!(w.wait_left(3, since, later), expected.checked_duration_since(later));
        assert_eq!(w.wait_left(3, since, since + AT_MOST), None);
        drop(reader);
        // One reader left: still counted.
        assert!(w.wait_left(3, since, since).is_some());
    }
}
