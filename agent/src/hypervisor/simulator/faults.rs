//! Per-operation latency and the table of armed faults.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::hypervisor::{Errno, Fault, Op};

/// How long each simulated operation takes. The simulator sleeps *before*
/// taking its state lock, so concurrent calls overlap the way independent
/// hypercalls on a real host do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latency {
    /// Latency of operations without an entry in `per_op`.
    pub default: Duration,
    /// Per-operation overrides.
    pub per_op: BTreeMap<Op, Duration>,
}

impl Latency {
    /// No latency anywhere (the default).
    pub fn none() -> Self {
        Latency::default()
    }

    /// The same latency for every operation.
    pub fn uniform(d: Duration) -> Self {
        Latency {
            default: d,
            per_op: BTreeMap::new(),
        }
    }

    /// Adds or replaces an override (builder style).
    pub fn with(mut self, op: Op, d: Duration) -> Self {
        self.per_op.insert(op, d);
        self
    }

    /// Whether every operation runs without added latency.
    pub fn is_none(&self) -> bool {
        self.default.is_zero() && self.per_op.values().all(Duration::is_zero)
    }

    /// The latency of `op`.
    pub fn for_op(&self, op: Op) -> Duration {
        self.per_op.get(&op).copied().unwrap_or(self.default)
    }
}

#[derive(Debug)]
struct Armed {
    op: Op,
    /// `None`: fails until cleared.
    remaining: Option<u32>,
    errno: Errno,
}

/// Faults armed by tests; consulted at the start of every operation.
#[derive(Debug, Default)]
pub(super) struct FaultTable {
    armed: Vec<Armed>,
}

impl FaultTable {
    pub(super) fn arm(&mut self, fault: Fault) {
        match fault {
            Fault::FailNext { op, count, errno } => {
                if count > 0 {
                    self.armed.push(Armed {
                        op,
                        remaining: Some(count),
                        errno,
                    });
                }
            }
            Fault::FailAlways { op, errno } => self.armed.push(Armed {
                op,
                remaining: None,
                errno,
            }),
        }
    }

    pub(super) fn clear(&mut self) {
        self.armed.clear();
    }

    /// If a fault is armed for `op`, consumes one shot of the oldest and
    /// returns its errno.
    pub(super) fn take(&mut self, op: Op) -> Option<Errno> {
        let idx = self.armed.iter().position(|a| a.op == op)?;
        let armed = &mut self.armed[idx];
        let errno = armed.errno;
        if let Some(n) = armed.remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.armed.remove(idx);
            }
        }
        Some(errno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_next_counts_down_in_order() {
        let mut t = FaultTable::default();
        t.arm(Fault::FailNext {
            op: Op::Build,
            count: 2,
            errno: Errno::EIO,
        });
        t.arm(Fault::FailNext {
            op: Op::Build,
            count: 1,
            errno: Errno::ENOMEM,
        });
        t.arm(Fault::FailNext {
            op: Op::Pause,
            count: 0,
            errno: Errno::EIO,
        });
        assert_eq!(t.take(Op::Pause), None);
        assert_eq!(t.take(Op::Build), Some(Errno::EIO));
        assert_eq!(t.take(Op::Build), Some(Errno::EIO));
        assert_eq!(t.take(Op::Build), Some(Errno::ENOMEM));
        assert_eq!(t.take(Op::Build), None);
    }

    #[test]
    fn fail_always_until_cleared() {
        let mut t = FaultTable::default();
        t.arm(Fault::FailAlways {
            op: Op::Destroy,
            errno: Errno::EBUSY,
        });
        for _ in 0..5 {
            assert_eq!(t.take(Op::Destroy), Some(Errno::EBUSY));
        }
        t.clear();
        assert_eq!(t.take(Op::Destroy), None);
    }

    #[test]
    fn latency_lookup() {
        let l = Latency::uniform(Duration::from_millis(5)).with(Op::Build, Duration::from_millis(9));
        assert_eq!(l.for_op(Op::Build), Duration::from_millis(9));
        assert_eq!(l.for_op(Op::Pause), Duration::from_millis(5));
        assert_eq!(Latency::none().for_op(Op::Pause), Duration::ZERO);
    }
}
