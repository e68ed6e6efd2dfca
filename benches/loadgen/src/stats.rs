//! Percentiles and latency summaries, computed the way the peer script computes them
//! (nearest rank, `round(p/100 * n + 0.5) - 1` with Python's half-to-even rounding), so both sides' p50/p99 mean the same thing.

use serde_json::{json, Value as Json};

/// The nearest-rank percentile of sorted values.
pub fn pct<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let k = ((p / 100.0 * n as f64 + 0.5).round_ties_even() as i64 - 1).clamp(0, n as i64 - 1) as usize;
    sorted.get(k).copied()
}

fn ms(ns: f64) -> f64 {
    (ns / 1e4).round() / 100.0
}

/// `{n, p50_ms, p90_ms, p99_ms, max_ms, mean_ms}` of nanosecond samples (signed: a delivery
/// may precede the acknowledgement it is measured from).
pub fn summary_ms(samples_ns: &[i64]) -> Json {
    let mut s = samples_ns.to_vec();
    s.sort_unstable();
    let Some(max) = s.last().copied() else {
        return json!({ "n": 0 });
    };
    let mean = s.iter().map(|&v| v as f64).sum::<f64>() / s.len() as f64;
    let p = |q: f64| pct(&s, q).map_or(0.0, |v| ms(v as f64));
    json!({
        "n": s.len(),
        "p50_ms": p(50.0),
        "p90_ms": p(90.0),
        "p99_ms": p(99.0),
        "max_ms": ms(max as f64),
        "mean_ms": ms(mean),
    })
}

/// The median of a few values.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied()
}

/// Rounds to 3 decimals for the JSON output.
pub fn r3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_like_the_peer() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(pct(&v, 50.0), Some(50));
        assert_eq!(pct(&v, 99.0), Some(100));
        assert_eq!(pct(&[7i64], 99.0), Some(7));
        assert_eq!(pct::<i64>(&[], 50.0), None);
        let s = summary_ms(&[1_000_000, 3_000_000, 2_000_000]);
        assert_eq!(s["p50_ms"], 2.0);
        assert_eq!(s["max_ms"], 3.0);
    }
}
