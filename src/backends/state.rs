//! One backend's process-wide state: identity, the availability word
//! (active health, circuit, slow-start clock), live and total counts.
//!
//! A [`Backend`] is shared (an `Arc`) by every worker's replica and by the
//! health checker, and outlives the backend-set version that introduced it:
//! a later version that keeps the backend (same address, backup flag and
//! cap) keeps the same `Backend`, so its health, circuit, counts and id
//! carry over. Connections in flight hold their own `Arc`, so a backend
//! removed from the set stays valid until its last connection ends.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
};

/// A backend's identity for the life of the process: never reused, never a
/// slice index. Pools, metrics and logs follow it across set versions.
pub type BackendId = u32;

/// Bits of the state word's top byte.
pub(super) const DOWN: u64 = 1 << 56; // active checks failed
pub(super) const OPEN: u64 = 1 << 57; // circuit open (ejected)
pub(super) const HALF_OPEN: u64 = 1 << 58; // circuit half-open (probes allowed)
pub(super) const FLAGS: u64 = 0xff << 56;
/// The low 56 bits: when the backend (re)entered service, for slow start (0 = ramp over).
pub(super) const SINCE: u64 = !FLAGS;

/// Whether a backend may take a new connection or request, as seen by `pick`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Avail {
    Yes,
    /// Half-open: only if a probe slot is granted.
    Probe,
    No,
}

#[derive(Debug)]
pub struct Backend {
    pub id: BackendId,
    /// As written in the config or by the discovery source: the stable
    /// text consistent hashing derives ring points from.
    pub name: String,
    /// What a sticky cookie says for this backend: derived from `name`
    /// alone, so every ringlb box and every reload agrees on it.
    pub sticky: u64,
    pub addr: SocketAddr,
    pub backup: bool,
    pub max_connections: u32,
    /// Flags in the top byte, slow-start start time (ms) in the rest.
    pub(super) word: AtomicU64,
    /// Consecutive passive failures (process-wide).
    pub(super) fails: AtomicU32,
    /// Probes granted while half-open.
    pub(super) probes: AtomicU32,
    /// Current cool-down, ms (doubles on each re-open).
    pub(super) cooldown_ms: AtomicU64,
    /// When the open circuit may half-open (ms).
    pub(super) open_until: AtomicU64,
    /// Connections (tcp) / requests (http) in flight, process-wide.
    pub(super) active: AtomicU32,
    /// Connections (tcp) / requests (http) sent (metrics). On the same
    /// cache line as `active`, which every pick already writes.
    requests: AtomicU64,
    /// Failures reported (metrics).
    pub(super) failures: AtomicU64,
    /// Active-check transitions to up and to down (metrics).
    pub(super) went_up: AtomicU64,
    pub(super) went_down: AtomicU64,
    /// Set when a new set version dropped this backend: its health check
    /// ends; connections that hold it finish normally.
    retired: AtomicBool,
}

/// A backend's sticky-cookie token: 64 bits from two CRC-32s of its name
/// (one seeded), mixed. Opaque to clients (no address shows), stable
/// across processes and machines (unlike a seeded hasher).
pub fn sticky_token(name: &str) -> u64 {
    let a = crc32fast::hash(name.as_bytes());
    let mut h = crc32fast::Hasher::new_with_initial(0x5354_494b);
    h.update(name.as_bytes());
    let b = h.finalize();
    crate::balancer::rng::splitmix64((u64::from(a) << 32) | u64::from(b))
}

impl Backend {
    pub fn new(
        id: BackendId,
        name: &str,
        addr: SocketAddr,
        backup: bool,
        max_connections: u32,
    ) -> Self {
        Backend {
            id,
            name: name.to_string(),
            sticky: sticky_token(name),
            addr,
            backup,
            max_connections,
            word: AtomicU64::new(0),
            fails: AtomicU32::new(0),
            probes: AtomicU32::new(0),
            cooldown_ms: AtomicU64::new(0),
            open_until: AtomicU64::new(0),
            active: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            went_up: AtomicU64::new(0),
            went_down: AtomicU64::new(0),
            retired: AtomicBool::new(false),
        }
    }

    /// The pick path's single load.
    #[inline]
    pub fn word(&self) -> u64 {
        self.word.load(Relaxed)
    }

    /// Connections or requests in flight to this backend, all workers.
    pub fn active(&self) -> u32 {
        self.active.load(Relaxed)
    }

    /// Count one connection (tcp) or request (http) sent here.
    #[inline]
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    pub fn requests_total(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    pub fn failures_total(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    /// Active-check transitions: (to up, to down).
    pub fn transitions(&self) -> (u64, u64) {
        (self.went_up.load(Relaxed), self.went_down.load(Relaxed))
    }

    pub fn is_full(&self) -> bool {
        self.max_connections > 0 && self.active.load(Relaxed) >= self.max_connections
    }

    pub(super) fn set_flag(&self, flag: u64, on: bool) -> u64 {
        if on {
            self.word.fetch_or(flag, Relaxed)
        } else {
            self.word.fetch_and(!flag, Relaxed)
        }
    }

    /// Mark the start of a slow-start ramp (keeps the flags).
    pub(super) fn restart_ramp(&self, now: u64) {
        let _ = self
            .word
            .fetch_update(Relaxed, Relaxed, |w| Some((w & FLAGS) | (now & SINCE)));
    }

    /// Not down by active checks and circuit not open (half-open counts:
    /// it takes probes).
    pub fn available(&self) -> bool {
        self.word() & (DOWN | OPEN) == 0
    }

    pub fn is_down(&self) -> bool {
        self.word() & DOWN != 0
    }

    pub fn circuit(&self) -> &'static str {
        let w = self.word();
        if w & OPEN != 0 {
            "open"
        } else if w & HALF_OPEN != 0 {
            "half-open"
        } else {
            "closed"
        }
    }

    /// Back in service as far as the circuit breaker goes (closed, no
    /// failures counted); active-health verdicts stay.
    pub(super) fn close_circuit(&self) {
        let _ = self
            .word
            .fetch_update(Relaxed, Relaxed, |w| Some(w & !(OPEN | HALF_OPEN)));
        self.fails.store(0, Relaxed);
        self.probes.store(0, Relaxed);
    }

    /// True once a set version dropped this backend.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Relaxed)
    }

    pub(super) fn retire(&self, retired: bool) {
        self.retired.store(retired, Relaxed);
    }
}
