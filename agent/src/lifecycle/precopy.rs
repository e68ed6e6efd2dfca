//! Live migration's pre-copy on the simulator (`VM.pool_migrate`, `lifecycle/migrate.rs`):
//! the guest's memory crosses to the destination as real bytes while the guest runs, in
//! rounds, before the short stop that carries the last dirty pages and the saved state.
//!
//! The simulated guest has no memory of its own to read, so a model stands in for it: the VM
//! has `memory_dynamic_max` bytes in [`PAGE`]-byte pages, and dirties pages at
//! `other_config:simulator-dirty-rate` MiB/s (default [`DEFAULT_DIRTY_MIB_S`]). Round 0 sends
//! every page; each later round sends the pages dirtied while the one before was on the wire
//! (its real duration × the rate, capped at the VM's size). Rounds stop when what is left is at
//! most [`STOP_BELOW`] bytes, after [`MAX_ROUNDS`], or when a round would not be smaller than
//! the one before (the guest dirties as fast as the link carries: more rounds cannot help);
//! then the guest is paused and saved, and the last dirty pages go with its state: the
//! downtime. So time and bytes grow with memory and with how busy the guest is, as on a real
//! hypervisor; the link is the pool's host-to-host HTTPS.
//!
//! Each page on the wire starts with its index and its round (two little-endian u64) and is
//! zero after them; the destination checks every page ([`Verifier`]) and counts them.
//! On Xen the move is stop-and-copy (the backend's suspend image); pre-copy is the
//! simulator's.

use std::time::{Duration, Instant};

/// Bytes per page.
pub const PAGE: u64 = 4096;
/// Rounds at most before the stop.
pub const MAX_ROUNDS: u32 = 30;
/// What may be left for the stop (bytes).
pub const STOP_BELOW: u64 = 1 << 20;
/// The dirty rate of a guest that names none, MiB/s.
pub const DEFAULT_DIRTY_MIB_S: u64 = 16;
/// The other-config key naming a simulated guest's dirty rate, MiB/s.
pub const DIRTY_RATE_KEY: &str = "simulator-dirty-rate";
/// Pages per chunk on the wire.
const CHUNK_PAGES: u64 = 256;

/// The guest's memory as the pre-copy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Model {
    /// Pages of memory.
    pub pages: u64,
    /// Bytes dirtied per second while it runs.
    pub dirty_per_s: u64,
}

impl Model {
    /// A VM of `memory` bytes dirtying `mib_s` MiB per second.
    pub fn new(memory: u64, mib_s: u64) -> Model {
        Model {
            pages: memory.div_ceil(PAGE).max(1),
            dirty_per_s: mib_s.saturating_mul(1 << 20),
        }
    }

    /// The pages dirtied while a round took `elapsed`.
    pub fn dirtied(&self, elapsed: Duration) -> u64 {
        let bytes = (self.dirty_per_s as f64 * elapsed.as_secs_f64()).min(u64::MAX as f64) as u64;
        bytes.div_ceil(PAGE).min(self.pages)
    }
}

/// What a migration's rounds did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Rounds sent while the guest ran.
    pub rounds: u32,
    /// Pages sent while the guest ran.
    pub live_pages: u64,
    /// Time the guest ran while its memory was sent.
    pub live: Duration,
    /// Pages left for the stop.
    pub final_pages: u64,
}

/// The pages of round `round` out of a VM of `total` pages: `count` indices (all of them in
/// order for round 0, else spread over the memory from a seed).
pub fn page_index(round: u32, i: u64, count: u64, total: u64) -> u64 {
    if round == 0 || count >= total {
        return i % total.max(1);
    }
    // A stride coprime with nothing in particular: the pages of a round spread over memory.
    let start = u64::from(round).wrapping_mul(0x9E37_79B9_7F4A_7C15) % total;
    (start + i.wrapping_mul(total / count.max(1)).wrapping_add(i)) % total
}

/// The bytes of pages `first..first + n` of a round, as the wire carries them.
pub fn chunk(round: u32, first: u64, n: u64, count: u64, total: u64) -> Vec<u8> {
    let mut out = vec![0u8; (n * PAGE) as usize];
    for k in 0..n {
        let at = (k * PAGE) as usize;
        let index = page_index(round, first + k, count, total);
        out[at..at + 8].copy_from_slice(&index.to_le_bytes());
        out[at + 8..at + 16].copy_from_slice(&u64::from(round).to_le_bytes());
    }
    out
}

/// The chunks of one round: `count` pages of a VM of `total` pages.
pub fn round_chunks(round: u32, count: u64, total: u64) -> impl Iterator<Item = Vec<u8>> {
    (0..count.div_ceil(CHUNK_PAGES)).map(move |c| {
        let first = c * CHUNK_PAGES;
        chunk(round, first, CHUNK_PAGES.min(count - first), count, total)
    })
}

/// Checks a round's bytes as they arrive: whole pages, each naming a page of the VM and this
/// round; then as many pages as announced.
#[derive(Debug)]
pub struct Verifier {
    round: u64,
    total: u64,
    expected: u64,
    seen: u64,
    partial: Vec<u8>,
}

impl Verifier {
    /// A round `round` announced as `expected` pages of a VM of `total` pages.
    pub fn new(round: u32, expected: u64, total: u64) -> Verifier {
        Verifier {
            round: u64::from(round),
            total,
            expected,
            seen: 0,
            partial: Vec::new(),
        }
    }

    fn page(&mut self, p: &[u8]) -> Result<(), String> {
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&p[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let (index, round) = (word(0), word(8));
        if round != self.round {
            return Err(format!(
                "page {} of round {} names round {round}",
                self.seen, self.round
            ));
        }
        if index >= self.total {
            return Err(format!("page index {index} beyond the VM's {} pages", self.total));
        }
        self.seen += 1;
        if self.seen > self.expected {
            return Err(format!("more than the {} pages announced", self.expected));
        }
        Ok(())
    }

    /// Takes the next bytes.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        let page = PAGE as usize;
        if !self.partial.is_empty() {
            let need = page - self.partial.len();
            let take = need.min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() < page {
                return Ok(());
            }
            let p = std::mem::take(&mut self.partial);
            self.page(&p)?;
        }
        let mut pages = bytes.chunks_exact(page);
        for p in &mut pages {
            self.page(p)?;
        }
        self.partial.extend_from_slice(pages.remainder());
        Ok(())
    }

    /// The end of the round: the pages received.
    pub fn finish(self) -> Result<u64, String> {
        if !self.partial.is_empty() {
            return Err(format!("the round ends inside a page ({} bytes)", self.partial.len()));
        }
        if self.seen != self.expected {
            return Err(format!("{} pages announced, {} received", self.expected, self.seen));
        }
        Ok(self.seen)
    }
}

/// Runs the rounds with `send(round, pages)` carrying each one (and answering when the
/// destination has checked it); what was done, or the first failure.
pub async fn run<F, Fut>(model: Model, mut send: F) -> Result<Report, String>
where
    F: FnMut(u32, u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    let mut report = Report::default();
    let mut pages = model.pages;
    loop {
        let t = Instant::now();
        send(report.rounds, pages).await?;
        report.rounds += 1;
        report.live_pages += pages;
        let next = model.dirtied(t.elapsed());
        let converging = report.rounds == 1 || next < pages;
        if next * PAGE <= STOP_BELOW || report.rounds >= MAX_ROUNDS || !converging {
            report.final_pages = next;
            break;
        }
        pages = next;
    }
    report.live = started.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_verify_and_a_damaged_page_is_refused() {
        for (round, count, total) in [(0u32, 10u64, 10u64), (3, 7, 100), (1, 300, 1000)] {
            let mut v = Verifier::new(round, count, total);
            for c in round_chunks(round, count, total) {
                // In uneven pieces, as a connection delivers them.
                for piece in c.chunks(1000) {
                    v.feed(piece).unwrap();
                }
            }
            assert_eq!(v.finish().unwrap(), count);
        }
        let mut bytes: Vec<u8> = round_chunks(2, 5, 50).flatten().collect();
        bytes[PAGE as usize + 8] = 9;
        let mut v = Verifier::new(2, 5, 50);
        assert!(v.feed(&bytes).is_err());
        let short: Vec<u8> = round_chunks(0, 4, 4).flatten().take(3 * PAGE as usize + 5).collect();
        let mut v = Verifier::new(0, 4, 4);
        v.feed(&short).unwrap();
        assert!(v.finish().is_err());
        let mut v = Verifier::new(0, 2, 4);
        let more: Vec<u8> = round_chunks(0, 3, 4).flatten().collect();
        assert!(v.feed(&more).is_err());
    }

    #[test]
    fn page_indices_stay_inside_the_vm() {
        for round in 0..20 {
            for i in 0..200 {
                assert!(page_index(round, i, 37, 1000) < 1000);
            }
        }
    }

    #[tokio::test]
    async fn an_idle_guest_stops_after_one_round_and_a_busy_one_does_not_converge() {
        let idle = Model::new(64 << 20, 0);
        let r = run(idle, |_, _| async { Ok(()) }).await.unwrap();
        assert_eq!((r.rounds, r.live_pages, r.final_pages), (1, idle.pages, 0));
        // A guest dirtying faster than any round can carry: round 1 is the whole memory again.
        let busy = Model::new(64 << 20, 1 << 30);
        let r = run(busy, |_, _| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(r.rounds, 2);
        assert_eq!(r.final_pages, busy.pages);
        // A moderate one converges over several rounds.
        let mid = Model::new(256 << 20, 200);
        let r = run(mid, |_, pages| async move {
            // 1 GiB/s link.
            tokio::time::sleep(Duration::from_secs_f64((pages * PAGE) as f64 / (1u64 << 30) as f64)).await;
            Ok(())
        })
        .await
        .unwrap();
        assert!(r.rounds > 2, "{r:?}");
        assert!(r.final_pages * PAGE <= STOP_BELOW || r.rounds == MAX_ROUNDS, "{r:?}");
        let failed = run(mid, |_, _| async { Err("cut".to_owned()) }).await;
        assert_eq!(failed, Err("cut".to_owned()));
    }
}
