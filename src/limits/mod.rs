//! Process-wide traffic limits with bounded memory: token buckets for http
//! routes and concurrent-connection counters per client IP.
//!
//! Both are fixed arrays of atomics allocated at start, indexed by a hash
//! of the key. Memory never grows with the number of clients: a flood of
//! source addresses only makes keys share slots (two keys in one slot
//! share a bucket or a count, which errs on the strict side). Every worker
//! updates the same slot with a compare-and-swap, so a limit holds for the
//! whole process however the kernel spreads connections over workers.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Instant,
};

use crate::config::RateLimitConfig;

/// Token buckets per key. 16,384 slots of 8 bytes: 128 KiB per limited route.
pub const RATE_SLOTS: usize = 16 * 1024;
/// Per-IP counters per listener: 65,536 slots of 4 bytes, 256 KiB.
pub const IP_SLOTS: usize = 64 * 1024;

/// Token units per token (fixed point).
const UNIT: u64 = 256;
/// Low 40 bits: microseconds of the last refill; high 24 bits: tokens in 1/256.
const TIME_BITS: u32 = 40;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
/// A stored refill time this far after our clock reading is another
/// worker's later reading (or its carried-over fraction), not a wrap.
const AHEAD_TOLERANCE_US: u64 = 10_000_000;

fn now_us() -> u64 {
    use std::sync::OnceLock;
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// 64-bit hash of a key: the same in every worker, keyed with a seed drawn
/// at random once per process, so nobody outside can compute which slot a
/// key lands in and aim at a victim's bucket or count.
fn key_hash(bytes: &[u8]) -> u64 {
    use std::sync::OnceLock;
    static SEED: OnceLock<ahash::RandomState> = OnceLock::new();
    SEED.get_or_init(ahash::RandomState::new).hash_one(bytes)
}

/// The key a client address counts by: an IPv4 address whole, an IPv6
/// address by its first `v6_prefix` bits (the rest zero). Bytes 0..len of
/// the array.
pub fn client_key(ip: IpAddr, v6_prefix: u8) -> ([u8; 16], usize) {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&v4.octets());
            (out, 4)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return client_key(IpAddr::V4(v4), v6_prefix);
            }
            let bits = u128::from(v6);
            let keep = u32::from(v6_prefix.min(128));
            let masked = if keep == 0 {
                0
            } else {
                bits & (u128::MAX << (128 - keep))
            };
            (masked.to_be_bytes(), 16)
        }
    }
}

#[derive(Debug)]
pub struct RateLimiter {
    slots: Box<[AtomicU64]>,
    /// Rate in thousandths of a request per second (integer math: no drift).
    rate_milli: u64,
    burst_units: u64,
    pub cfg: RateLimitConfig,
}

/// A refused request: seconds until a token is back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

impl RateLimiter {
    pub fn new(cfg: &RateLimitConfig) -> RateLimiter {
        let n = if cfg.key == crate::config::RateKey::Route {
            1
        } else {
            RATE_SLOTS
        };
        RateLimiter {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            rate_milli: ((cfg.rate * 1000.0).round() as u64).max(1),
            burst_units: u64::from(cfg.burst) * UNIT,
            cfg: cfg.clone(),
        }
    }

    /// Microseconds that earn `units` token units.
    fn micros_for(&self, units: u64) -> u64 {
        (u128::from(units) * 1_000_000_000 / (u128::from(self.rate_milli) * u128::from(UNIT)))
            as u64
    }

    /// Take one token for `key`.
    ///
    /// # Errors
    /// The bucket is empty: how long until it holds a token again.
    pub fn take(&self, key: &[u8]) -> Result<(), RetryAfter> {
        self.take_at(key, now_us())
    }

    fn take_at(&self, key: &[u8], now: u64) -> Result<(), RetryAfter> {
        let idx = if self.slots.len() == 1 {
            0
        } else {
            (key_hash(key) % self.slots.len() as u64) as usize
        };
        let slot = &self.slots[idx];
        let now = now & TIME_MASK;
        let mut cur = slot.load(Relaxed);
        loop {
            let (tokens, t) = if cur == 0 {
                (self.burst_units, now)
            } else {
                (cur >> TIME_BITS, cur & TIME_MASK)
            };
            // Another worker may have stored a time a little after our `now`
            // (it read the clock later): that is no time elapsed, not a wrap.
            let ahead = t.wrapping_sub(now) & TIME_MASK;
            let elapsed = if ahead != 0 && ahead < AHEAD_TOLERANCE_US {
                0
            } else {
                now.wrapping_sub(t) & TIME_MASK
            };
            // Credit whole units only, and move the clock by exactly their
            // worth, so no fraction of a token is ever lost between calls.
            let earned = (u128::from(elapsed) * u128::from(self.rate_milli) * u128::from(UNIT)
                / 1_000_000_000)
                .min(u128::from(self.burst_units)) as u64;
            let (tokens, t) = if tokens + earned >= self.burst_units {
                (self.burst_units, now)
            } else if earned == 0 {
                (tokens, t)
            } else {
                let spent_us = self.micros_for(earned);
                (tokens + earned, (t + spent_us) & TIME_MASK)
            };
            if tokens < UNIT {
                let missing = UNIT - tokens;
                let us = self.micros_for(missing);
                return Err(RetryAfter(us.div_ceil(1_000_000).max(1)));
            }
            let next = ((tokens - UNIT) << TIME_BITS) | t;
            // A stored 0 means "never used"; a real state of 0 is harmless as a full bucket
            // only when tokens were 0 and t was 0, which the +1 avoids.
            let next = if next == 0 { 1 } else { next };
            match slot.compare_exchange_weak(cur, next, Relaxed, Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }
}

/// Concurrent connections per client IP, process-wide.
#[derive(Debug)]
pub struct IpLimiter {
    slots: Box<[AtomicU32]>,
    max: u32,
    v6_prefix: u8,
}

/// Holds one connection's place in its IP's count.
#[derive(Debug)]
pub struct IpPermit {
    lim: Arc<IpLimiter>,
    idx: usize,
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        self.lim.slots[self.idx].fetch_sub(1, Relaxed);
    }
}

impl IpLimiter {
    /// `max` connections per client, IPv6 clients by their `v6_prefix`.
    pub fn new(max: u32, v6_prefix: u8) -> IpLimiter {
        IpLimiter {
            slots: (0..IP_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            max,
            v6_prefix,
        }
    }

    /// Count a new connection from `ip`; `None` when it already has `max`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpPermit> {
        let (k, n) = client_key(ip, self.v6_prefix);
        let h = key_hash(&k[..n]);
        let idx = (h % self.slots.len() as u64) as usize;
        self.slots[idx]
            .fetch_update(Relaxed, Relaxed, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| IpPermit {
                lim: Arc::clone(self),
                idx,
            })
    }
}

/// The process-wide limits of one configuration: per listener, its per-IP
/// counters and its routes' token buckets. A reload keeps the counters of a
/// listener with the same name and `max_connections_per_ip`, and the bucket
/// of a route with the same listener, host, path prefix and `rate_limit`,
/// so a client cannot reset its limits by waiting for a reload.
#[derive(Debug, Default)]
pub struct Limits {
    /// Per listener: per-IP connection counters.
    pub ip: Vec<Option<Arc<IpLimiter>>>,
    /// Per listener, per route: token buckets.
    pub rate: Vec<Vec<Option<Arc<RateLimiter>>>>,
}

impl Limits {
    pub fn new(cfg: &crate::config::Config) -> Arc<Limits> {
        Self::carry_over(cfg, None)
    }

    /// Like [`Limits::new`], keeping `prev`'s state where the config did
    /// not change (`prev` is the previous config and its limits).
    pub fn carry_over(
        cfg: &crate::config::Config,
        prev: Option<(&crate::config::Config, &Limits)>,
    ) -> Arc<Limits> {
        let fresh = Self::fresh(cfg);
        let Some((old_cfg, old)) = prev else {
            return fresh;
        };
        let mut out = Arc::try_unwrap(fresh).unwrap_or_default();
        for (li, l) in cfg.listeners.iter().enumerate() {
            let Some((oi, ol)) = old_cfg
                .listeners
                .iter()
                .enumerate()
                .find(|(_, o)| o.name == l.name)
            else {
                continue;
            };
            if ol.max_connections_per_ip == l.max_connections_per_ip
                && ol.ipv6_prefix == l.ipv6_prefix
            {
                if let (Some(slot), Some(kept)) = (out.ip.get_mut(li), old.ip.get(oi)) {
                    *slot = kept.clone();
                }
            }
            let (Some(h), Some(oh)) = (&l.http, &ol.http) else {
                continue;
            };
            for (ri, r) in h.routes.iter().enumerate() {
                let same = oh.routes.iter().position(|o| {
                    o.host == r.host
                        && o.path_prefix == r.path_prefix
                        && o.rate_limit == r.rate_limit
                });
                let kept = same.and_then(|ori| old.rate.get(oi).and_then(|v| v.get(ori)));
                if let (Some(kept), Some(slot)) =
                    (kept, out.rate.get_mut(li).and_then(|v| v.get_mut(ri)))
                {
                    *slot = kept.clone();
                }
            }
        }
        Arc::new(out)
    }

    fn fresh(cfg: &crate::config::Config) -> Arc<Limits> {
        Arc::new(Limits {
            ip: cfg
                .listeners
                .iter()
                .map(|l| {
                    (l.max_connections_per_ip > 0)
                        .then(|| Arc::new(IpLimiter::new(l.max_connections_per_ip, l.ipv6_prefix)))
                })
                .collect(),
            rate: cfg
                .listeners
                .iter()
                .map(|l| {
                    l.http
                        .as_ref()
                        .map(|h| {
                            h.routes
                                .iter()
                                .map(|r| {
                                    r.rate_limit
                                        .as_ref()
                                        .map(|rl| Arc::new(RateLimiter::new(rl)))
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateKey;

    fn limiter(rate: f64, burst: u32) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig {
            rate,
            burst,
            key: RateKey::ClientIp,
        })
    }

    #[test]
    fn burst_then_rate() {
        let l = limiter(10.0, 5);
        let t0 = 1_000_000;
        for _ in 0..5 {
            assert_eq!(l.take_at(b"a", t0), Ok(()));
        }
        assert_eq!(l.take_at(b"a", t0), Err(RetryAfter(1)));
        // Another key has its own bucket.
        assert_eq!(l.take_at(b"b", t0), Ok(()));
        // 10/s: one token per 100 ms.
        assert!(l.take_at(b"a", t0 + 99_000).is_err());
        assert_eq!(l.take_at(b"a", t0 + 100_000), Ok(()));
        // Over 10 s of steady calls every 1 ms, exactly rate x time pass.
        let mut ok = 0;
        for ms in 0..10_000u64 {
            if l.take_at(b"a", t0 + 100_000 + ms * 1000 + 1000).is_ok() {
                ok += 1;
            }
        }
        assert!((99..=101).contains(&ok), "{ok}");
    }

    #[test]
    fn fractional_rates_and_retry_after() {
        let l = limiter(0.5, 1);
        assert!(l.take_at(b"k", 10).is_ok());
        assert_eq!(l.take_at(b"k", 10), Err(RetryAfter(2)));
        assert!(l.take_at(b"k", 10 + 1_999_999).is_err());
        assert!(l.take_at(b"k", 10 + 2_000_000).is_ok());
    }

    #[test]
    fn a_later_time_stored_by_another_worker_is_not_a_wrap() {
        let l = limiter(10.0, 2);
        let t0 = 5_000_000;
        assert!(l.take_at(b"k", t0 + 1_000).is_ok());
        assert!(l.take_at(b"k", t0 + 1_000).is_ok());
        // A worker whose clock reading is 500 µs older must not see a full bucket.
        assert!(l.take_at(b"k", t0 + 500).is_err());
        assert!(l.take_at(b"k", t0).is_err());
    }

    #[test]
    fn idle_bucket_refills_to_burst_only() {
        let l = limiter(100.0, 3);
        for _ in 0..3 {
            assert!(l.take_at(b"k", 5).is_ok());
        }
        let later = 5 + 60_000_000;
        for _ in 0..3 {
            assert!(l.take_at(b"k", later).is_ok());
        }
        assert!(l.take_at(b"k", later).is_err());
    }

    #[test]
    fn ip_limiter_counts_and_releases() {
        let l = Arc::new(IpLimiter::new(2, 64));
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let a = l.acquire(ip).unwrap();
        let _b = l.acquire(ip).unwrap();
        assert!(l.acquire(ip).is_none());
        assert!(l.acquire("10.1.2.4".parse().unwrap()).is_some());
        drop(a);
        assert!(l.acquire(ip).is_some());
    }

    #[test]
    fn ipv6_clients_count_by_their_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a, 64), client_key(b, 64), "one /64");
        assert_ne!(client_key(a, 64), client_key(c, 64));
        assert_ne!(client_key(a, 128), client_key(b, 128));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(v4, 64), client_key(mapped, 64));
        // The per-IP limit: two addresses of one /64 share one count.
        let l = Arc::new(IpLimiter::new(1, 64));
        let _held = l.acquire(a).unwrap();
        assert!(l.acquire(b).is_none(), "same /64");
        assert!(l.acquire(c).is_some(), "another /64");
    }

    #[test]
    fn slot_hashes_are_keyed_not_the_public_crc() {
        // Same in every worker of the process...
        assert_eq!(key_hash(b"10.0.0.1"), key_hash(b"10.0.0.1"));
        // ...but not the unkeyed hash anybody can compute.
        assert_ne!(
            key_hash(b"10.0.0.1"),
            crate::balancer::hash_key(b"10.0.0.1")
        );
    }
}
