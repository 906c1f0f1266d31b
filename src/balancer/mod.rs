//! Backend selection for ringlb.
//!
//! ringlb is thread-per-core: every worker thread owns its own event loop, its own connections and
//! therefore its own [`Balancer`] replica. A replica is never shared, so it needs no locks and no
//! atomics; `pick` is a plain `&mut self` call that touches only this core's cache lines. The price
//! is that replicas do not see each other's decisions:
//!
//! * round robin / smooth WRR are exact per replica; summed over workers they are still exact
//!   over a full cycle. To stop N workers from all sending their first connection to server 0,
//!   each replica starts at a different offset derived from its worker index.
//! * least-conn counts only the connections *this* worker opened (which is what it can observe
//!   without sharing), using power-of-two-choices so replicas don't herd onto the same server.
//! * random uses a per-worker PRNG (wyrand) seeded from the worker index, a stack address and
//!   the clock.
//! * consistent hash is a pure function of the server ids and the key, so every replica agrees
//!   on where a key goes without coordination.
//!
//! All selection honours a caller-supplied `skip` predicate (servers already tried for this
//! connection, later unhealthy ones) without disturbing how the remaining servers share load,
//! and every loop is bounded by the number of servers (or ring points).

mod ring;
pub(crate) mod rng;

#[cfg(test)]
mod tests;

use ring::Ring;
use rng::WyRand;

/// Load-balancing algorithm of a [`Balancer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Cycle through the servers in order, skipping skipped ones.
    RoundRobin,
    /// nginx's smooth weighted round robin.
    WeightedRoundRobin,
    /// Uniformly random among non-skipped servers.
    Random,
    /// Power of two random choices on this replica's live connection counts (weight-aware).
    LeastConn,
    /// Ketama-style consistent hashing of the caller's key (see [`hash_key`]).
    ConsistentHash,
}

/// Description of one upstream server, borrowed for the duration of [`Balancer::new`].
#[derive(Debug, Clone, Copy)]
pub struct ServerSpec<'a> {
    /// Stable identity of the server (its "ip:port" text). Consistent-hash ring points derive from it,
    /// so removing one server does not move the others' points.
    pub id: &'a str,
    /// Weight >= 1 (callers validate; treat 0 as 1 defensively).
    pub weight: u32,
}

/// A per-worker replica: owned by one thread, never shared, no locks/atomics.
///
/// Server indices returned by [`pick`](Balancer::pick) refer to the `servers` slice given to
/// [`new`](Balancer::new). A configuration change builds a new `Balancer`.
#[derive(Debug)]
pub struct Balancer {
    algo: Algorithm,
    /// Effective weights (0 replaced by 1).
    weights: Vec<u32>,
    /// Round-robin cursor: the next index to try.
    rr_next: usize,
    /// Smooth-WRR `current_weight` per server (empty unless WeightedRoundRobin).
    wrr_current: Vec<i64>,
    /// Live connections opened through this replica, per server.
    conns: Vec<u32>,
    rng: WyRand,
    /// Consistent-hash ring (empty unless ConsistentHash).
    ring: Ring,
}

/// Random tries before [`Algorithm::Random`] falls back to scanning the non-skipped servers.
const RANDOM_TRIES: usize = 8;
/// Bound on the number of warm-up picks used to offset a worker's smooth-WRR state.
const MAX_WRR_WARMUP: u64 = 4096;

impl Balancer {
    /// Build the replica owned by worker thread `worker` for `servers` (indices into this slice are
    /// what [`pick`](Balancer::pick) returns).
    ///
    /// Round-robin cursors and the smooth-WRR state start at a different offset per worker so N
    /// workers don't all hit server 0 first; the PRNG is seeded from the worker index, the address
    /// of a stack slot and the clock.
    ///
    /// Offsets: round robin starts at server `worker % n`. Smooth WRR starts in the state reached
    /// after `worker % min(total_weight, 4096)` unskipped picks from the all-zero state, i.e. worker
    /// `k` replays worker 0's sequence shifted by `k` positions (the sequence's period is the total
    /// weight, so every worker still serves the exact weight ratio over a full cycle).
    pub fn new(algo: Algorithm, servers: &[ServerSpec<'_>], worker: usize) -> Balancer {
        let n = servers.len();
        let weights: Vec<u32> = servers.iter().map(|s| s.weight.max(1)).collect();
        let mut b = Balancer {
            algo,
            weights,
            rr_next: if n == 0 { 0 } else { worker % n },
            wrr_current: Vec::new(),
            conns: vec![0; n],
            rng: WyRand::new(rng::seed_for_worker(worker)),
            ring: Ring::default(),
        };
        match algo {
            Algorithm::WeightedRoundRobin if n > 0 => {
                b.wrr_current = vec![0; n];
                let total: u64 = b.weights.iter().map(|&w| u64::from(w)).sum();
                let warmup = worker as u64 % total.min(MAX_WRR_WARMUP);
                for _ in 0..warmup {
                    let _ = b.pick_wrr(&|_| false);
                }
            }
            Algorithm::ConsistentHash => b.ring = Ring::new(servers),
            _ => {}
        }
        b
    }

    /// Pick a server index in `0..len()`.
    ///
    /// `key` is used only by [`Algorithm::ConsistentHash`] (compute it with [`hash_key`]).
    /// `skip(i) == true` means server `i` must not be chosen (already tried for this connection,
    /// unhealthy). Returns `None` when the set is empty or every server is skipped.
    ///
    /// Skipping does not disturb how the others share load: consistent hash walks clockwise to the
    /// next point of a non-skipped server (exactly where the key would go if the skipped servers
    /// were removed); smooth WRR behaves like nginx's (skipped peers take no part in that round).
    /// Work is bounded by `len()` calls of `skip` (ring length for consistent hash, plus a constant
    /// number of random draws for random/least-conn); nothing divides by a possibly-zero count.
    #[inline]
    pub fn pick(&mut self, key: u64, skip: impl Fn(usize) -> bool) -> Option<usize> {
        if self.weights.is_empty() {
            return None;
        }
        match self.algo {
            Algorithm::RoundRobin => self.pick_rr(&skip),
            Algorithm::WeightedRoundRobin => self.pick_wrr(&skip),
            Algorithm::Random => self.pick_random(&skip),
            Algorithm::LeastConn => self.pick_least_conn(&skip),
            Algorithm::ConsistentHash => self.ring.lookup(key, &skip),
        }
    }

    /// Record a connection opened to server `idx` through this replica (used by
    /// [`Algorithm::LeastConn`]; tracked, but unused, for the other algorithms).
    /// Out-of-range indices are ignored.
    #[inline]
    pub fn connection_opened(&mut self, idx: usize) {
        if let Some(c) = self.conns.get_mut(idx) {
            *c = c.saturating_add(1);
        }
    }

    /// Record that a connection to server `idx` (opened through this replica) has closed.
    /// Saturates at 0; out-of-range indices are ignored.
    #[inline]
    pub fn connection_closed(&mut self, idx: usize) {
        if let Some(c) = self.conns.get_mut(idx) {
            *c = c.saturating_sub(1);
        }
    }

    /// Live connections this replica counts for server `idx` (0 when out of range).
    #[inline]
    pub fn connections(&self, idx: usize) -> u32 {
        self.conns.get(idx).copied().unwrap_or(0)
    }

    /// Set the live count of server `idx`: a replica rebuilt for a new
    /// server list carries the counts of the servers it kept.
    #[inline]
    pub fn set_connections(&mut self, idx: usize, n: u32) {
        if let Some(c) = self.conns.get_mut(idx) {
            *c = n;
        }
    }

    /// Number of servers.
    #[inline]
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// `true` when there are no servers (every `pick` returns `None`).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The algorithm this replica was built with.
    #[inline]
    pub fn algorithm(&self) -> Algorithm {
        self.algo
    }

    fn pick_rr(&mut self, skip: &impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.weights.len();
        let mut idx = self.rr_next;
        for _ in 0..n {
            if !skip(idx) {
                self.rr_next = if idx + 1 == n { 0 } else { idx + 1 };
                return Some(idx);
            }
            idx = if idx + 1 == n { 0 } else { idx + 1 };
        }
        None
    }

    /// nginx `ngx_http_upstream_get_peer`: every non-skipped peer gains its weight, the peer with
    /// the largest current weight (lowest index on ties) wins and pays back the round's total.
    /// Skipped peers neither gain nor pay, exactly like nginx's `tried`/down peers.
    fn pick_wrr(&mut self, skip: &impl Fn(usize) -> bool) -> Option<usize> {
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        let mut best_current = i64::MIN;
        for (i, (cur, &w)) in self.wrr_current.iter_mut().zip(&self.weights).enumerate() {
            if skip(i) {
                continue;
            }
            let w = i64::from(w);
            *cur += w;
            total += w;
            if *cur > best_current {
                best_current = *cur;
                best = Some(i);
            }
        }
        let chosen = best?;
        self.wrr_current[chosen] -= total;
        Some(chosen)
    }

    /// Uniform among non-skipped servers: a few rejection-sampling tries, then an exact scan.
    #[inline]
    fn pick_random(&mut self, skip: &impl Fn(usize) -> bool) -> Option<usize> {
        self.random_excluding(usize::MAX, skip)
    }

    /// Uniform among non-skipped servers other than `exclude` (pass `usize::MAX` for none).
    /// Draws from the `n - 1` others directly rather than rejecting `exclude`, so p2c's second
    /// choice costs one draw even with two servers.
    fn random_excluding(&mut self, exclude: usize, skip: &impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.weights.len();
        let m = if exclude < n { n - 1 } else { n };
        if m == 0 {
            return None;
        }
        for _ in 0..RANDOM_TRIES {
            let mut i = self.rng.below(m);
            if i >= exclude {
                i += 1;
            }
            if !skip(i) {
                return Some(i);
            }
        }
        let live = (0..n).filter(|&i| i != exclude && !skip(i)).count();
        if live == 0 {
            return None;
        }
        let nth = self.rng.below(live);
        (0..n).filter(|&i| i != exclude && !skip(i)).nth(nth)
    }

    /// Power of two choices: two distinct random non-skipped servers, keep the one with fewer live
    /// connections per unit weight (`conns[a] / w[a] <= conns[b] / w[b]`, compared by
    /// cross-multiplication). Ties keep the first choice, which is itself random.
    fn pick_least_conn(&mut self, skip: &impl Fn(usize) -> bool) -> Option<usize> {
        let a = self.pick_random(skip)?;
        let Some(b) = self.random_excluding(a, skip) else {
            return Some(a);
        };
        let load = |x: usize, y: usize| u64::from(self.conns[x]) * u64::from(self.weights[y]);
        if load(b, a) < load(a, b) {
            Some(b)
        } else {
            Some(a)
        }
    }
}

/// Hash arbitrary key bytes (client IP octets, a URI, a header value) into the u64 key for `pick`, using crc32fast.
///
/// The crc32 is spread over 64 bits with a bijective mixer (splitmix64) so that the ring sees
/// well-distributed positions even for near-identical inputs (consecutive client IPs); distinct
/// inputs collide exactly when their crc32 collides.
pub fn hash_key(bytes: &[u8]) -> u64 {
    rng::splitmix64(u64::from(crc32fast::hash(bytes)))
}

/// An IP address's octets on the stack (4 or 16 bytes used), for hashing
/// and rate-limit keys without an allocation.
pub fn ip_octets(ip: std::net::IpAddr) -> ([u8; 16], usize) {
    let mut out = [0u8; 16];
    match ip {
        std::net::IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, 4)
        }
        std::net::IpAddr::V6(v6) => (v6.octets(), 16),
    }
}

/// [`hash_key`] of an IP address's octets (the `client_ip` key).
pub fn hash_ip(ip: std::net::IpAddr) -> u64 {
    let (o, n) = ip_octets(ip);
    hash_key(&o[..n])
}
