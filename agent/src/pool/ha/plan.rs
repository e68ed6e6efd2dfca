//! HA failover planning, on plain numbers: whether the protected VMs of any `n` failed hosts
//! can be restarted on the hosts left, by memory. The database side (which hosts are live,
//! which VMs are protected, what memory each has and needs) is gathered in `ha/mod.rs`.
//!
//! A scenario fails `n` of the live hosts; the protected VMs resident on them, and those not
//! running anywhere, are packed onto the survivors that are enabled, largest first, each on
//! the survivor with the most free memory left (`host_metrics.memory_free`, which already
//! counts the VMs running there). A plan exists for `n` when every scenario of `n` failures
//! packs. Scenarios are enumerated while there are at most [`MAX_SCENARIOS`]; past that, the
//! failures that hurt most by two measures (the hosts carrying the most protected memory, and
//! the hosts with the most free memory) are tried, an approximation the reference's planner
//! makes too (it answers from heuristics, not every scenario).
//!
//! A protected VM that can only run where it is (`VM.assert_agile` refuses it) cannot be
//! restarted elsewhere: with one on a failed host the answer is [`Outcome::ExcludingNonAgile`],
//! which, as in the reference, does not count as a plan.

use std::collections::BTreeMap;

/// Scenarios enumerated one by one before the planner falls back to the worst-looking ones.
pub const MAX_SCENARIOS: usize = 20_000;

/// A live host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub id: String,
    /// Bytes free now.
    pub free: i64,
    /// Whether it takes VMs (`host.enabled`); a disabled host may still fail.
    pub enabled: bool,
}

/// A protected VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    pub id: String,
    /// Bytes it needs to start.
    pub memory: i64,
    /// The host it runs on, if it runs.
    pub on: Option<String>,
    /// Whether it may run on any host (its disks and networks are everywhere).
    pub agile: bool,
}

/// Whether a plan exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every protected VM can be restarted.
    All,
    /// Every one but some that cannot leave their host.
    ExcludingNonAgile,
    /// Some cannot be restarted for lack of memory.
    None,
}

/// Packs `guests` onto `targets` (largest first, each on the target with the most memory
/// left); the host chosen for each, or `None` where it fits nowhere.
pub fn pack<'a>(targets: &[&Host], guests: &[&'a Guest]) -> Vec<(&'a Guest, Option<String>)> {
    let mut free: Vec<(String, i64)> = targets
        .iter()
        .filter(|h| h.enabled)
        .map(|h| (h.id.clone(), h.free))
        .collect();
    let mut order: Vec<&Guest> = guests.to_vec();
    order.sort_by(|a, b| b.memory.cmp(&a.memory).then_with(|| a.id.cmp(&b.id)));
    let mut out = Vec::with_capacity(order.len());
    for g in order {
        let best = free
            .iter_mut()
            .filter(|(_, f)| *f >= g.memory)
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)));
        let chosen = best.map(|(id, f)| {
            *f -= g.memory;
            id.clone()
        });
        out.push((g, chosen));
    }
    out
}

/// The outcome when exactly the hosts in `failed` fail.
pub fn scenario(hosts: &[Host], guests: &[Guest], failed: &[&str]) -> Outcome {
    let survivors: Vec<&Host> = hosts.iter().filter(|h| !failed.contains(&h.id.as_str())).collect();
    let survivor_ids: Vec<&str> = survivors.iter().map(|h| h.id.as_str()).collect();
    let mut to_place = Vec::new();
    let mut non_agile_lost = false;
    for g in guests {
        let stays = g.on.as_deref().is_some_and(|h| survivor_ids.contains(&h));
        if stays {
            continue;
        }
        if g.on.is_some() && !g.agile {
            non_agile_lost = true;
            continue;
        }
        to_place.push(g);
    }
    if pack(&survivors, &to_place).iter().any(|(_, h)| h.is_none()) {
        return Outcome::None;
    }
    if non_agile_lost {
        Outcome::ExcludingNonAgile
    } else {
        Outcome::All
    }
}

fn choose(n: usize, k: usize) -> usize {
    let mut c: usize = 1;
    for i in 0..k.min(n) {
        c = c.saturating_mul(n - i) / (i + 1);
    }
    c
}

/// Every way of picking `k` of `0..n`, in order (`f` stops the walk by answering false).
fn each_combination(n: usize, k: usize, f: &mut dyn FnMut(&[usize]) -> bool) {
    let mut idx: Vec<usize> = (0..k).collect();
    loop {
        if !f(&idx) {
            return;
        }
        // The rightmost index that can still move right.
        let Some(i) = (0..k).rev().find(|&i| idx[i] < n - k + i) else {
            return;
        };
        idx[i] += 1;
        for j in i + 1..k {
            idx[j] = idx[j - 1] + 1;
        }
    }
}

/// Whether the protected VMs survive any `n` host failures.
pub fn for_failures(hosts: &[Host], guests: &[Guest], n: usize) -> Outcome {
    // With no failure the VMs not running must still find room.
    let base = scenario(hosts, guests, &[]);
    if base == Outcome::None {
        return Outcome::None;
    }
    if n == 0 {
        return base;
    }
    if n > hosts.len() {
        return Outcome::None;
    }
    let mut worst = Outcome::All;
    let mut note = |o: Outcome| {
        worst = match (worst, o) {
            (Outcome::None, _) | (_, Outcome::None) => Outcome::None,
            (Outcome::ExcludingNonAgile, _) | (_, Outcome::ExcludingNonAgile) => Outcome::ExcludingNonAgile,
            _ => Outcome::All,
        };
        worst != Outcome::None
    };
    if choose(hosts.len(), n) <= MAX_SCENARIOS {
        each_combination(hosts.len(), n, &mut |idx| {
            let failed: Vec<&str> = idx.iter().map(|&i| hosts[i].id.as_str()).collect();
            note(scenario(hosts, guests, &failed))
        });
        return worst;
    }
    let mut carried: BTreeMap<&str, i64> = BTreeMap::new();
    for g in guests {
        if let Some(h) = g.on.as_deref() {
            *carried.entry(h).or_default() += g.memory;
        }
    }
    let mut by_load: Vec<&Host> = hosts.iter().collect();
    by_load.sort_by_key(|h| std::cmp::Reverse(carried.get(h.id.as_str()).copied().unwrap_or(0)));
    let mut by_free: Vec<&Host> = hosts.iter().collect();
    by_free.sort_by_key(|h| std::cmp::Reverse(h.free));
    for list in [by_load, by_free] {
        let failed: Vec<&str> = list.iter().take(n).map(|h| h.id.as_str()).collect();
        if !note(scenario(hosts, guests, &failed)) {
            break;
        }
    }
    worst
}

/// The most host failures the protected VMs survive (0 when even none is too many), counting
/// up until a number has no plan (as the reference's, it takes more failures to never be
/// easier than fewer).
pub fn max_failures(hosts: &[Host], guests: &[Guest]) -> usize {
    let mut n = 0;
    while n < hosts.len() && for_failures(hosts, guests, n + 1) == Outcome::All {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: i64 = 1 << 30;

    fn host(id: &str, free_gib: i64) -> Host {
        Host {
            id: id.into(),
            free: free_gib * GIB,
            enabled: true,
        }
    }

    fn guest(id: &str, gib: i64, on: &str) -> Guest {
        Guest {
            id: id.into(),
            memory: gib * GIB,
            on: (!on.is_empty()).then(|| on.to_owned()),
            agile: true,
        }
    }

    #[test]
    fn three_hosts_with_room_for_two_failures() {
        let hosts = [host("a", 10), host("b", 10), host("c", 10)];
        let guests = [guest("1", 2, "a"), guest("2", 2, "b"), guest("3", 2, "c")];
        assert_eq!(for_failures(&hosts, &guests, 1), Outcome::All);
        assert_eq!(for_failures(&hosts, &guests, 2), Outcome::All);
        // Every host failing leaves nowhere to go.
        assert_eq!(for_failures(&hosts, &guests, 3), Outcome::None);
        assert_eq!(max_failures(&hosts, &guests), 2);
    }

    #[test]
    fn the_worst_pair_decides() {
        // b and c failing put 6 GiB onto a, which has 5 free.
        let hosts = [host("a", 5), host("b", 10), host("c", 10)];
        let guests = [guest("1", 3, "b"), guest("2", 3, "c"), guest("3", 1, "a")];
        assert_eq!(for_failures(&hosts, &guests, 1), Outcome::All);
        assert_eq!(scenario(&hosts, &guests, &["b", "c"]), Outcome::None);
        assert_eq!(for_failures(&hosts, &guests, 2), Outcome::None);
        assert_eq!(max_failures(&hosts, &guests), 1);
    }

    #[test]
    fn a_non_agile_vm_is_a_plan_only_while_its_host_stands() {
        let hosts = [host("a", 10), host("b", 10)];
        let mut g = guest("1", 1, "a");
        g.agile = false;
        let guests = [g];
        assert_eq!(for_failures(&hosts, &guests, 0), Outcome::All);
        assert_eq!(for_failures(&hosts, &guests, 1), Outcome::ExcludingNonAgile);
        assert_eq!(max_failures(&hosts, &guests), 0);
    }

    #[test]
    fn vms_not_running_need_room_even_without_failures() {
        let hosts = [host("a", 1), host("b", 1)];
        let guests = [guest("1", 2, "")];
        assert_eq!(for_failures(&hosts, &guests, 0), Outcome::None);
        assert_eq!(max_failures(&hosts, &guests), 0);
    }

    #[test]
    fn disabled_hosts_fail_but_take_nothing() {
        let mut b = host("b", 100);
        b.enabled = false;
        let hosts = [host("a", 1), b];
        let guests = [guest("1", 2, "a")];
        assert_eq!(scenario(&hosts, &guests, &["a"]), Outcome::None);
        assert_eq!(max_failures(&hosts, &guests), 0);
    }

    #[test]
    fn packing_puts_the_largest_first_where_most_is_left() {
        let hosts = [host("a", 4), host("b", 3)];
        let refs: Vec<&Host> = hosts.iter().collect();
        let guests = [guest("x", 1, ""), guest("y", 3, ""), guest("z", 3, "")];
        let gs: Vec<&Guest> = guests.iter().collect();
        let placed: Vec<(String, Option<String>)> =
            pack(&refs, &gs).into_iter().map(|(g, h)| (g.id.clone(), h)).collect();
        assert_eq!(
            placed,
            vec![
                ("y".into(), Some("a".into())),
                ("z".into(), Some("b".into())),
                ("x".into(), Some("a".into())),
            ]
        );
    }

    #[test]
    fn large_pools_fall_back_to_the_worst_looking_failures() {
        // 40 hosts choose 10 is far past the enumeration limit.
        let mut hosts: Vec<Host> = (0..40).map(|i| host(&format!("h{i:02}"), 4)).collect();
        hosts[0].free = 0;
        let guests: Vec<Guest> = (0..40)
            .map(|i| guest(&format!("v{i:02}"), 1, &format!("h{i:02}")))
            .collect();
        assert!(choose(40, 10) > MAX_SCENARIOS);
        assert_eq!(for_failures(&hosts, &guests, 10), Outcome::All);
        // 35 failed hosts' VMs onto 5 survivors with 4 GiB each (or 0): too many.
        assert_eq!(for_failures(&hosts, &guests, 35), Outcome::None);
    }

    #[test]
    fn combinations_are_all_walked() {
        let mut seen = Vec::new();
        each_combination(4, 2, &mut |i| {
            seen.push(i.to_vec());
            true
        });
        assert_eq!(seen.len(), choose(4, 2));
        assert_eq!(seen.first(), Some(&vec![0, 1]));
        assert_eq!(seen.last(), Some(&vec![2, 3]));
        let mut none = 0;
        each_combination(3, 0, &mut |i| {
            assert!(i.is_empty());
            none += 1;
            true
        });
        assert_eq!(none, 1);
    }
}
