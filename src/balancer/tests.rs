//! Unit tests for the balancer replica.

use super::ring::{MAX_RING_WEIGHT, VNODES_PER_WEIGHT};
use super::*;

const ALL: [Algorithm; 5] = [
    Algorithm::RoundRobin,
    Algorithm::WeightedRoundRobin,
    Algorithm::Random,
    Algorithm::LeastConn,
    Algorithm::ConsistentHash,
];

fn ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1))
        .collect()
}

fn specs<'a>(ids: &'a [String], weights: &[u32]) -> Vec<ServerSpec<'a>> {
    ids.iter()
        .zip(weights.iter().copied().chain(std::iter::repeat(1)))
        .map(|(id, weight)| ServerSpec { id, weight })
        .collect()
}

fn never(_: usize) -> bool {
    false
}

fn picks(b: &mut Balancer, count: usize, skip: impl Fn(usize) -> bool) -> Vec<usize> {
    (0..count).map(|_| b.pick(0, &skip).unwrap()).collect()
}

fn counts(b: &mut Balancer, count: usize, skip: impl Fn(usize) -> bool) -> Vec<usize> {
    let mut c = vec![0; b.len()];
    for _ in 0..count {
        c[b.pick(0, &skip).unwrap()] += 1;
    }
    c
}

/// Deterministic keys for consistent-hash tests.
fn keys(count: usize) -> Vec<u64> {
    (0..count)
        .map(|i| hash_key(format!("client-{i}").as_bytes()))
        .collect()
}

// ---------------------------------------------------------------- common

#[test]
fn empty_set_returns_none_for_every_algorithm() {
    for algo in ALL {
        let mut b = Balancer::new(algo, &[], 3);
        assert!(b.is_empty());
        assert_eq!(b.len(), 0);
        assert_eq!(b.algorithm(), algo);
        assert_eq!(b.pick(42, never), None, "{algo:?}");
        // Bookkeeping on an empty set must not panic.
        b.connection_opened(0);
        b.connection_closed(0);
    }
}

#[test]
fn all_skipped_returns_none_for_every_algorithm() {
    let ids = ids(7);
    let s = specs(&ids, &[3, 1, 2]);
    for algo in ALL {
        for worker in 0..3 {
            let mut b = Balancer::new(algo, &s, worker);
            assert!(!b.is_empty());
            assert_eq!(b.len(), 7);
            for key in keys(50) {
                assert_eq!(b.pick(key, |_| true), None, "{algo:?}");
            }
        }
    }
}

#[test]
fn picks_are_in_range_and_never_skipped_for_every_algorithm() {
    let ids = ids(13);
    let s = specs(&ids, &[1, 2, 3, 4, 5, 0, 7]);
    let mut prng = WyRand::new(99);
    for algo in ALL {
        let mut b = Balancer::new(algo, &s, 1);
        for key in keys(2000) {
            let mask = prng.next_u64() & ((1 << 13) - 1);
            let skip = |i: usize| mask & (1 << i) != 0;
            match b.pick(key, skip) {
                Some(i) => {
                    assert!(i < 13, "{algo:?} picked {i}");
                    assert!(!skip(i), "{algo:?} picked skipped {i}");
                }
                None => assert_eq!(mask, (1 << 13) - 1, "{algo:?} gave up with a live server"),
            }
        }
    }
}

#[test]
fn single_server_is_always_picked() {
    let ids = ids(1);
    let s = specs(&ids, &[5]);
    for algo in ALL {
        let mut b = Balancer::new(algo, &s, 7);
        for key in keys(100) {
            assert_eq!(b.pick(key, never), Some(0), "{algo:?}");
        }
    }
}

// ---------------------------------------------------------------- round robin

#[test]
fn rr_cycles_exactly() {
    let ids = ids(4);
    let mut b = Balancer::new(Algorithm::RoundRobin, &specs(&ids, &[]), 0);
    assert_eq!(picks(&mut b, 10, never), [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]);
}

#[test]
fn rr_workers_start_at_different_offsets() {
    let ids = ids(4);
    let s = specs(&ids, &[]);
    let firsts: Vec<usize> = (0..4)
        .map(|w| {
            Balancer::new(Algorithm::RoundRobin, &s, w)
                .pick(0, never)
                .unwrap()
        })
        .collect();
    assert_eq!(firsts, [0, 1, 2, 3]);
    let mut b = Balancer::new(Algorithm::RoundRobin, &s, 6);
    assert_eq!(picks(&mut b, 5, never), [2, 3, 0, 1, 2]);
}

#[test]
fn rr_skips_skipped_servers() {
    let ids = ids(4);
    let mut b = Balancer::new(Algorithm::RoundRobin, &specs(&ids, &[]), 0);
    assert_eq!(picks(&mut b, 6, |i| i == 1), [0, 2, 3, 0, 2, 3]);
    // Skipping the next server moves on to the one after, then the cycle continues from there.
    assert_eq!(b.pick(0, |i| i == 0), Some(1));
    assert_eq!(picks(&mut b, 4, never), [2, 3, 0, 1]);
    // Only one live server.
    assert_eq!(picks(&mut b, 3, |i| i != 2), [2, 2, 2]);
}

// ---------------------------------------------------------------- smooth WRR

#[test]
fn wrr_exact_nginx_sequence() {
    let ids = ids(3);
    let mut b = Balancer::new(Algorithm::WeightedRoundRobin, &specs(&ids, &[5, 1, 1]), 0);
    let seq = picks(&mut b, 21, never);
    let cycle = [0, 0, 1, 0, 2, 0, 0];
    for chunk in seq.chunks(7) {
        assert_eq!(chunk, cycle);
    }
}

#[test]
fn wrr_ratio_is_exact_over_full_cycles() {
    let ids = ids(3);
    let s = specs(&ids, &[5, 1, 1]);
    for worker in 0..4 {
        let mut b = Balancer::new(Algorithm::WeightedRoundRobin, &s, worker);
        assert_eq!(
            counts(&mut b, 7000, never),
            [5000, 1000, 1000],
            "worker {worker}"
        );
    }
}

#[test]
fn wrr_skipped_server_leaves_others_ratio_intact() {
    let ids = ids(3);
    let s = specs(&ids, &[5, 1, 1]);
    // From a clean state: a and c share 5:1 exactly.
    let mut b = Balancer::new(Algorithm::WeightedRoundRobin, &s, 0);
    assert_eq!(counts(&mut b, 6000, |i| i == 1), [5000, 0, 1000]);
    // Starting to skip mid-cycle: still 5:1 up to the bounded carry-over of current weights.
    let mut b = Balancer::new(Algorithm::WeightedRoundRobin, &s, 0);
    let _ = picks(&mut b, 3, never);
    let c = counts(&mut b, 6000, |i| i == 1);
    assert_eq!(c[1], 0);
    assert!(
        c[0].abs_diff(5000) <= 2 && c[2].abs_diff(1000) <= 2,
        "{c:?}"
    );
    // And once the skip is lifted, all three go back to exactly 5:1:1 per cycle (within carry-over).
    let c = counts(&mut b, 7000, never);
    assert!(
        c[0].abs_diff(5000) <= 2 && c[1].abs_diff(1000) <= 2 && c[2].abs_diff(1000) <= 2,
        "{c:?}"
    );
}

#[test]
fn wrr_worker_k_replays_worker_0_shifted_by_k() {
    let ids = ids(3);
    let s = specs(&ids, &[5, 1, 1]);
    let base = picks(
        &mut Balancer::new(Algorithm::WeightedRoundRobin, &s, 0),
        40,
        never,
    );
    for worker in 1..10 {
        let mut b = Balancer::new(Algorithm::WeightedRoundRobin, &s, worker);
        let shift = worker % 7;
        assert_eq!(
            picks(&mut b, 20, never),
            base[shift..shift + 20],
            "worker {worker}"
        );
    }
    // Different workers really do start differently.
    let first_two = |w| {
        picks(
            &mut Balancer::new(Algorithm::WeightedRoundRobin, &s, w),
            2,
            never,
        )
    };
    assert_ne!(first_two(0), first_two(1));
}

#[test]
fn wrr_zero_weight_is_treated_as_one() {
    let ids = ids(2);
    let mut b = Balancer::new(Algorithm::WeightedRoundRobin, &specs(&ids, &[0, 1]), 0);
    assert_eq!(picks(&mut b, 4, never), [0, 1, 0, 1]);
}

#[test]
fn wrr_huge_weights_do_not_overflow() {
    let ids = ids(3);
    let s = specs(&ids, &[u32::MAX, u32::MAX, 1]);
    let mut b = Balancer::new(Algorithm::WeightedRoundRobin, &s, 5);
    let c = counts(&mut b, 1000, never);
    assert!(c[0].abs_diff(500) <= 1 && c[1].abs_diff(500) <= 1, "{c:?}");
}

// ---------------------------------------------------------------- random

#[test]
fn random_is_roughly_uniform() {
    let ids = ids(4);
    let mut b = Balancer::new(Algorithm::Random, &specs(&ids, &[]), 0);
    let c = counts(&mut b, 100_000, never);
    for (i, &x) in c.iter().enumerate() {
        assert!(x.abs_diff(25_000) <= 1_250, "server {i}: {x} ({c:?})");
    }
}

#[test]
fn random_never_returns_skipped_and_stays_uniform_among_the_rest() {
    let ids = ids(5);
    let mut b = Balancer::new(Algorithm::Random, &specs(&ids, &[]), 2);
    let skip = |i: usize| i == 0 || i == 2;
    let c = counts(&mut b, 90_000, skip);
    assert_eq!((c[0], c[2]), (0, 0), "{c:?}");
    for i in [1, 3, 4] {
        assert!(c[i].abs_diff(30_000) <= 1_500, "{c:?}");
    }
}

#[test]
fn random_fallback_scan_is_uniform_when_most_are_skipped() {
    // 2 live out of 64: the 8 random tries usually miss, so the scan path does most of the work.
    let ids = ids(64);
    let mut b = Balancer::new(Algorithm::Random, &specs(&ids, &[]), 1);
    let skip = |i: usize| i != 17 && i != 40;
    let c = counts(&mut b, 20_000, skip);
    assert_eq!(c[17] + c[40], 20_000);
    assert!(c[17].abs_diff(10_000) <= 500, "{} vs {}", c[17], c[40]);
}

#[test]
fn random_excluding_is_uniform_over_the_others() {
    // The p2c second draw: never the excluded server, never a skipped one, uniform over the rest.
    let ids = ids(5);
    let mut b = Balancer::new(Algorithm::LeastConn, &specs(&ids, &[]), 0);
    let mut c = [0usize; 5];
    for _ in 0..60_000 {
        c[b.random_excluding(2, &|i| i == 4).unwrap()] += 1;
    }
    assert_eq!((c[2], c[4]), (0, 0), "{c:?}");
    for i in [0, 1, 3] {
        assert!(c[i].abs_diff(20_000) <= 1_000, "{c:?}");
    }
    assert_eq!(b.random_excluding(1, &|i| i != 1), None);
    assert_eq!(b.random_excluding(1, &|i| i != 3), Some(3));
    let mut one = Balancer::new(Algorithm::LeastConn, &specs(&ids[..1], &[]), 0);
    assert_eq!(one.random_excluding(0, &never), None);
}

#[test]
fn random_replicas_of_different_workers_diverge() {
    let ids = ids(16);
    let s = specs(&ids, &[]);
    let a = picks(&mut Balancer::new(Algorithm::Random, &s, 0), 64, never);
    let b = picks(&mut Balancer::new(Algorithm::Random, &s, 1), 64, never);
    assert_ne!(a, b);
}

// ---------------------------------------------------------------- least conn

#[test]
fn least_conn_avoids_the_loaded_server() {
    let ids = ids(4);
    let mut b = Balancer::new(Algorithm::LeastConn, &specs(&ids, &[]), 0);
    for _ in 0..100 {
        b.connection_opened(0);
    }
    let c = counts(&mut b, 10_000, never);
    assert!(c[0] < 500, "loaded server picked {} times ({c:?})", c[0]);
    for i in 1..4 {
        // The other three share evenly (each is in 1/2 of the pairs, ties keep a random choice).
        assert!(c[i].abs_diff(3_333) <= 400, "{c:?}");
    }
}

#[test]
fn least_conn_bookkeeping_counts_and_saturates() {
    let ids = ids(3);
    let mut b = Balancer::new(Algorithm::LeastConn, &specs(&ids, &[]), 0);
    b.connection_opened(1);
    b.connection_opened(1);
    b.connection_opened(2);
    assert_eq!(b.conns, [0, 2, 1]);
    b.connection_closed(1);
    assert_eq!(b.conns, [0, 1, 1]);
    for _ in 0..5 {
        b.connection_closed(1);
        b.connection_closed(0);
    }
    assert_eq!(b.conns, [0, 0, 1]);
    // Out-of-range indices are ignored rather than panicking.
    b.connection_opened(3);
    b.connection_closed(usize::MAX);
    assert_eq!(b.conns, [0, 0, 1]);
    // Two servers: p2c always compares both, so the least-loaded one wins deterministically.
    let mut b = Balancer::new(Algorithm::LeastConn, &specs(&ids[..2], &[]), 0);
    b.connection_opened(0);
    assert_eq!(picks(&mut b, 20, never), [1; 20]);
}

#[test]
fn least_conn_balances_live_connections() {
    let ids = ids(8);
    let mut b = Balancer::new(Algorithm::LeastConn, &specs(&ids, &[]), 3);
    for _ in 0..8_000 {
        let i = b.pick(0, never).unwrap();
        b.connection_opened(i);
    }
    let (min, max) = (b.conns.iter().min().unwrap(), b.conns.iter().max().unwrap());
    assert!(max - min <= 8, "{:?}", b.conns);
    // Drain a server's connections (closing more than were opened saturates at 0): it now wins
    // every pair it is drawn into, i.e. 1 - (7/8)(6/7) = 1/4 of the picks.
    for _ in 0..2_000 {
        b.connection_closed(5);
    }
    assert_eq!(b.conns[5], 0);
    let c = counts(&mut b, 4_000, never);
    assert!(c[5].abs_diff(1_000) <= 200, "{c:?}");
}

#[test]
fn least_conn_is_weight_aware() {
    let ids = ids(2);
    let mut b = Balancer::new(Algorithm::LeastConn, &specs(&ids, &[3, 1]), 0);
    for _ in 0..4_000 {
        let i = b.pick(0, never).unwrap();
        b.connection_opened(i);
    }
    assert!(b.conns[0].abs_diff(3_000) <= 3, "{:?}", b.conns);
}

#[test]
fn least_conn_single_candidate() {
    let ids = ids(5);
    let mut b = Balancer::new(Algorithm::LeastConn, &specs(&ids, &[]), 0);
    for _ in 0..50 {
        b.connection_opened(3);
    }
    // Only server 3 is not skipped: it is returned despite being loaded.
    assert_eq!(picks(&mut b, 10, |i| i != 3), [3; 10]);
}

// ---------------------------------------------------------------- consistent hash

#[test]
fn ch_same_key_same_server_across_replicas() {
    let ids = ids(10);
    let s = specs(&ids, &[]);
    let mut a = Balancer::new(Algorithm::ConsistentHash, &s, 0);
    let mut b = Balancer::new(Algorithm::ConsistentHash, &s, 5);
    for key in keys(5_000) {
        let x = a.pick(key, never);
        assert!(x.is_some());
        assert_eq!(x, a.pick(key, never));
        assert_eq!(x, b.pick(key, never));
    }
    assert_eq!(a.ring.len(), 10 * VNODES_PER_WEIGHT as usize);
}

#[test]
fn ch_removing_a_server_moves_only_its_keys() {
    let n = 10;
    let ids = ids(n);
    let s = specs(&ids, &[]);
    let mut full = Balancer::new(Algorithm::ConsistentHash, &s, 0);
    for removed in [0, 3, 9] {
        let mut rest: Vec<ServerSpec<'_>> = s.clone();
        rest.remove(removed);
        let mut smaller = Balancer::new(Algorithm::ConsistentHash, &rest, 0);
        let ks = keys(100_000);
        let mut moved = 0;
        for &key in &ks {
            let before = full.pick(key, never).unwrap();
            let after = smaller.pick(key, never).unwrap();
            let after = if after >= removed { after + 1 } else { after };
            if before == removed {
                moved += 1;
            } else {
                assert_eq!(before, after, "key {key:#x} moved off a surviving server");
            }
        }
        let frac = moved as f64 / ks.len() as f64;
        assert!((0.05..=0.15).contains(&frac), "removed {removed}: {frac}");
    }
}

#[test]
fn ch_adding_a_server_moves_about_one_in_n_plus_one() {
    let n = 10;
    let ids = ids(n + 1);
    let s = specs(&ids, &[]);
    let mut small = Balancer::new(Algorithm::ConsistentHash, &s[..n], 0);
    let mut big = Balancer::new(Algorithm::ConsistentHash, &s, 0);
    let ks = keys(100_000);
    let mut moved = 0;
    for &key in &ks {
        let before = small.pick(key, never).unwrap();
        let after = big.pick(key, never).unwrap();
        if before != after {
            assert_eq!(after, n, "a key moved between two old servers");
            moved += 1;
        }
    }
    let frac = moved as f64 / ks.len() as f64;
    assert!((0.05..=0.15).contains(&frac), "{frac}");
}

#[test]
fn ch_skip_walks_to_the_next_server_on_the_ring() {
    let n = 10;
    let ids = ids(n);
    let s = specs(&ids, &[]);
    let mut b = Balancer::new(Algorithm::ConsistentHash, &s, 0);
    // Building a ring per key is slow in debug builds; 300 keys suffice.
    for key in keys(300) {
        let owner = b.pick(key, never).unwrap();
        let next = b.pick(key, |i| i == owner).unwrap();
        assert_ne!(next, owner);
        // Walking past the owner's points is exactly what a ring without that server does.
        let mut rest = s.clone();
        rest.remove(owner);
        let without = Balancer::new(Algorithm::ConsistentHash, &rest, 0)
            .pick(key, never)
            .unwrap();
        let without = if without >= owner {
            without + 1
        } else {
            without
        };
        assert_eq!(next, without);
        // Skipping an unrelated server changes nothing.
        let other = (owner + 1) % n;
        if other != next {
            assert_eq!(b.pick(key, |i| i == other), Some(owner));
        }
        // Skipping all but one lands on that one.
        assert_eq!(b.pick(key, |i| i != 4), Some(4));
    }
}

#[test]
fn ch_skip_walks_clockwise_with_wraparound() {
    // Hand-built keys at and past the ring edges.
    let ids = ids(3);
    let s = specs(&ids, &[]);
    let mut b = Balancer::new(Algorithm::ConsistentHash, &s, 0);
    let points = b.ring.points().to_vec();
    let last = *points.last().unwrap();
    // A key past the last point wraps to the first point's owner.
    let first_owner = b.pick(0, never).unwrap();
    if last < u32::MAX {
        assert_eq!(b.pick(u64::from(last) + 1, never), Some(first_owner));
    }
    // A key exactly on a point maps to that point's owner.
    for &p in points.iter().step_by(37) {
        let owner = b.pick(u64::from(p), never).unwrap();
        let pos = points.partition_point(|&x| x < p);
        assert_eq!(owner, b.ring.owners()[pos] as usize);
    }
}

#[test]
fn ch_equal_weights_distribution_is_fair() {
    let n = 10;
    let ids = ids(n);
    let mut b = Balancer::new(Algorithm::ConsistentHash, &specs(&ids, &[]), 0);
    let mut c = vec![0usize; n];
    for key in keys(100_000) {
        c[b.pick(key, never).unwrap()] += 1;
    }
    for (i, &x) in c.iter().enumerate() {
        assert!(x.abs_diff(10_000) <= 2_500, "server {i}: {x} ({c:?})");
    }
    // Uniformly random 64-bit keys too (no dependence on hash_key's input pattern).
    let mut prng = WyRand::new(7);
    let mut c = vec![0usize; n];
    for _ in 0..100_000 {
        c[b.pick(prng.next_u64(), never).unwrap()] += 1;
    }
    for (i, &x) in c.iter().enumerate() {
        assert!(x.abs_diff(10_000) <= 2_500, "server {i}: {x} ({c:?})");
    }
}

#[test]
fn ch_weights_are_roughly_respected() {
    let ids = ids(4);
    let weights = [1, 2, 3, 4];
    let mut b = Balancer::new(Algorithm::ConsistentHash, &specs(&ids, &weights), 0);
    assert_eq!(b.ring.len(), 10 * VNODES_PER_WEIGHT as usize);
    let mut c = [0usize; 4];
    for key in keys(100_000) {
        c[b.pick(key, never).unwrap()] += 1;
    }
    for (i, &w) in weights.iter().enumerate() {
        let fair = 10_000.0 * f64::from(w);
        let ratio = c[i] as f64 / fair;
        assert!(
            (0.75..=1.25).contains(&ratio),
            "server {i}: {} ({c:?})",
            c[i]
        );
    }
}

#[test]
fn ch_weight_is_clamped_and_zero_is_one() {
    let ids = ids(2);
    let b = Balancer::new(Algorithm::ConsistentHash, &specs(&ids, &[0, 1_000_000]), 0);
    assert_eq!(
        b.ring.len(),
        (1 + MAX_RING_WEIGHT as usize) * VNODES_PER_WEIGHT as usize
    );
}

#[test]
fn ch_points_do_not_depend_on_other_servers_or_order() {
    let ids = ids(6);
    let s = specs(&ids, &[2, 1, 3]);
    let mut reversed = s.clone();
    reversed.reverse();
    let mut a = Balancer::new(Algorithm::ConsistentHash, &s, 0);
    let mut b = Balancer::new(Algorithm::ConsistentHash, &reversed, 1);
    assert_eq!(a.ring.points(), b.ring.points());
    for key in keys(10_000) {
        let x = a.pick(key, never).unwrap();
        let y = b.pick(key, never).unwrap();
        assert_eq!(s[x].id, reversed[y].id);
    }
}

#[test]
fn hash_key_is_deterministic_and_spreads_similar_inputs() {
    assert_eq!(hash_key(b"10.1.2.3"), hash_key(b"10.1.2.3"));
    assert_ne!(hash_key(b"10.1.2.3"), hash_key(b"10.1.2.4"));
    // Consecutive client IPs land all over the ring: the top byte of the folded key takes many values.
    let mut seen = std::collections::HashSet::new();
    for last in 0..=255u8 {
        let key = hash_key(&[192, 168, 1, last]);
        seen.insert(ring::fold_key(key) >> 24);
    }
    assert!(seen.len() > 140, "{}", seen.len());
}
