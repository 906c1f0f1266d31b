//! Process-wide backend state: active health, the passive circuit breaker,
//! slow start and per-backend connection counts.
//!
//! One [`UpstreamState`] per upstream is shared (an `Arc`) by every worker's
//! balancer replica. The pick path reads one relaxed atomic per candidate
//! ([`BackendState::word`]: availability bits and the slow-start clock in one
//! `u64`), plus the backend's live count only when it has `max_connections`.
//! Writers are the health-check thread (active verdicts, cool-down timers)
//! and the workers reporting outcomes (passive failures and successes,
//! counted for the whole process, so N workers do not eject N times late).

mod checker;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

pub use checker::spawn as spawn_checker;

use crate::config::{Config, EjectConfig, UpstreamConfig};

/// Milliseconds since the first call in this process (monotonic).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Bits of the state word's top byte.
const DOWN: u64 = 1 << 56; // active checks failed
const OPEN: u64 = 1 << 57; // circuit open (ejected)
const HALF_OPEN: u64 = 1 << 58; // circuit half-open (probes allowed)
const FLAGS: u64 = 0xff << 56;
/// The low 56 bits: when the backend (re)entered service, for slow start (0 = ramp over).
const SINCE: u64 = !FLAGS;

/// Whether a backend may take a new connection or request, as seen by `pick`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Avail {
    Yes,
    /// Half-open: only if a probe slot is granted.
    Probe,
    No,
}

#[derive(Debug)]
pub struct BackendState {
    pub addr: SocketAddr,
    pub backup: bool,
    pub max_connections: u32,
    /// Flags in the top byte, slow-start start time (ms) in the rest.
    word: AtomicU64,
    /// Consecutive passive failures (process-wide).
    fails: AtomicU32,
    /// Probes granted while half-open.
    probes: AtomicU32,
    /// Current cool-down, ms (doubles on each re-open).
    cooldown_ms: AtomicU64,
    /// When the open circuit may half-open (ms).
    open_until: AtomicU64,
    /// Connections (tcp) / requests (http) in flight, process-wide.
    active: AtomicU32,
    /// Failures reported (metrics).
    failures: AtomicU64,
    /// Active-check transitions to up and to down (metrics).
    went_up: AtomicU64,
    went_down: AtomicU64,
}

impl BackendState {
    fn new(addr: SocketAddr, backup: bool, max_connections: u32) -> Self {
        BackendState {
            addr,
            backup,
            max_connections,
            word: AtomicU64::new(0),
            fails: AtomicU32::new(0),
            probes: AtomicU32::new(0),
            cooldown_ms: AtomicU64::new(0),
            open_until: AtomicU64::new(0),
            active: AtomicU32::new(0),
            failures: AtomicU64::new(0),
            went_up: AtomicU64::new(0),
            went_down: AtomicU64::new(0),
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

    fn set_flag(&self, flag: u64, on: bool) -> u64 {
        if on {
            self.word.fetch_or(flag, Relaxed)
        } else {
            self.word.fetch_and(!flag, Relaxed)
        }
    }

    /// Mark the start of a slow-start ramp (keeps the flags).
    fn restart_ramp(&self, now: u64) {
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
}

/// One upstream's backends, shared by all workers.
#[derive(Debug)]
pub struct UpstreamState {
    pub name: String,
    /// Shared with the previous generation's state for backends a reload
    /// kept (same upstream, address, backup flag and cap), so health,
    /// circuit and live counts carry over.
    pub backends: Vec<Arc<BackendState>>,
    eject: Option<EjectConfig>,
    slow_start_ms: u64,
    /// http requests waiting for a backend below its max_connections.
    pub queued: AtomicU32,
}

/// A reserved slot on a backend: counts toward its max_connections (and
/// its half-open probe budget) until dropped.
#[derive(Debug)]
pub struct Slot {
    up: Arc<UpstreamState>,
    idx: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(b) = self.up.backends.get(self.idx) {
            b.active.fetch_sub(1, Relaxed);
        }
    }
}

impl UpstreamState {
    pub fn new(cfg: &UpstreamConfig) -> Arc<UpstreamState> {
        Self::carry_over(cfg, None)
    }

    /// Like [`UpstreamState::new`], reusing `prev`'s state of every backend
    /// that is still configured the same way.
    pub fn carry_over(cfg: &UpstreamConfig, prev: Option<&UpstreamState>) -> Arc<UpstreamState> {
        Arc::new(UpstreamState {
            name: cfg.name.clone(),
            backends: cfg
                .servers
                .iter()
                .map(|s| {
                    prev.and_then(|p| {
                        p.backends.iter().find(|b| {
                            b.addr == s.addr
                                && b.backup == s.backup
                                && b.max_connections == s.max_connections
                        })
                    })
                    .map_or_else(
                        || Arc::new(BackendState::new(s.addr, s.backup, s.max_connections)),
                        Arc::clone,
                    )
                })
                .collect(),
            // As nginx: a lone server is never ejected (there is nowhere else to go).
            eject: if cfg.servers.len() > 1 {
                cfg.eject.clone()
            } else {
                None
            },
            slow_start_ms: cfg.slow_start.as_millis() as u64,
            queued: AtomicU32::new(0),
        })
    }

    /// Availability of backend `i` for a new pick.
    #[inline]
    pub fn avail(&self, i: usize) -> Avail {
        let Some(b) = self.backends.get(i) else {
            return Avail::No;
        };
        let w = b.word();
        if w & (DOWN | OPEN) != 0 {
            return Avail::No;
        }
        if b.max_connections > 0 && b.active.load(Relaxed) >= b.max_connections {
            return Avail::No;
        }
        if w & HALF_OPEN != 0 {
            return Avail::Probe;
        }
        let since = w & SINCE;
        if since != 0 && self.slow_start_ms > 0 {
            // Ramping up: admit with probability elapsed / slow_start.
            let elapsed = now_ms().saturating_sub(since);
            if elapsed < self.slow_start_ms
                && fast_rand() % self.slow_start_ms >= elapsed.max(self.slow_start_ms / 20)
            {
                return Avail::No;
            }
        }
        Avail::Yes
    }

    /// True when backend `i` is usable apart from being full (for queueing).
    pub fn alive_but_full(&self, i: usize) -> bool {
        self.backends
            .get(i)
            .is_some_and(|b| b.available() && b.is_full())
    }

    /// Reserve a slot on backend `i` after a pick: fails when it filled up
    /// meanwhile, or when it is half-open and its probes are taken.
    pub fn reserve(self: &Arc<Self>, i: usize, avail: Avail) -> Option<Slot> {
        let b = self.backends.get(i)?;
        if avail == Avail::Probe {
            let limit = self.eject.as_ref().map_or(1, |e| e.half_open);
            if b.probes
                .fetch_update(Relaxed, Relaxed, |p| (p < limit).then_some(p + 1))
                .is_err()
            {
                return None;
            }
        }
        let n = b.active.fetch_add(1, Relaxed);
        if b.max_connections > 0 && n >= b.max_connections {
            b.active.fetch_sub(1, Relaxed);
            return None;
        }
        Some(Slot {
            up: Arc::clone(self),
            idx: i,
        })
    }

    /// A connection or request to backend `i` succeeded.
    pub fn report_success(&self, i: usize) {
        let Some(b) = self.backends.get(i) else {
            return;
        };
        if b.fails.load(Relaxed) != 0 {
            b.fails.store(0, Relaxed);
        }
        if b.word() & HALF_OPEN != 0 {
            let prev = b.set_flag(HALF_OPEN, false);
            if prev & HALF_OPEN != 0 {
                if let Some(e) = &self.eject {
                    b.cooldown_ms.store(e.cooldown.as_millis() as u64, Relaxed);
                }
                b.restart_ramp(now_ms());
                tracing::warn!(upstream = %self.name, backend = %b.addr, "circuit CLOSED: the probe succeeded; back in rotation");
            }
        }
    }

    /// A connection or request to backend `i` failed (refused, timed out,
    /// reset, or an http 5xx).
    pub fn report_failure(&self, i: usize, why: &str) {
        if let Some(b) = self.backends.get(i) {
            b.failures.fetch_add(1, Relaxed);
        }
        let (Some(b), Some(e)) = (self.backends.get(i), &self.eject) else {
            return;
        };
        let fails = b.fails.fetch_add(1, Relaxed) + 1;
        let w = b.word();
        let now = now_ms();
        if w & HALF_OPEN != 0 {
            // The probe failed: open again, for longer.
            let cd = (b.cooldown_ms.load(Relaxed) * 2).clamp(
                e.cooldown.as_millis() as u64,
                e.max_cooldown.as_millis() as u64,
            );
            b.cooldown_ms.store(cd, Relaxed);
            b.open_until.store(now + cd, Relaxed);
            let prev = b
                .word
                .fetch_update(Relaxed, Relaxed, |w| Some((w & !HALF_OPEN) | OPEN));
            if prev.is_ok_and(|p| p & HALF_OPEN != 0) {
                tracing::warn!(upstream = %self.name, backend = %b.addr, cooldown_ms = cd, "circuit OPEN again: the probe failed ({why})");
            }
        } else if w & OPEN == 0 && fails >= e.failures {
            let mut cd = b.cooldown_ms.load(Relaxed);
            if cd == 0 {
                cd = e.cooldown.as_millis() as u64;
                b.cooldown_ms.store(cd, Relaxed);
            }
            b.open_until.store(now + cd, Relaxed);
            let prev = b.set_flag(OPEN, true);
            if prev & OPEN == 0 {
                tracing::warn!(upstream = %self.name, backend = %b.addr, failures = fails, cooldown_ms = cd, "circuit OPEN: backend ejected ({why})");
            }
        }
    }

    /// Timers, called by the checker thread every tick: open circuits whose
    /// cool-down passed become half-open; finished slow-start ramps end;
    /// half-open probes that never reported are granted again.
    fn tick(&self, now: u64) {
        for b in &self.backends {
            let w = b.word();
            if w & OPEN != 0 && now >= b.open_until.load(Relaxed) {
                b.probes.store(0, Relaxed);
                b.fails.store(0, Relaxed);
                b.open_until
                    .store(now + b.cooldown_ms.load(Relaxed).max(100), Relaxed);
                let _ = b
                    .word
                    .fetch_update(Relaxed, Relaxed, |w| Some((w & !OPEN) | HALF_OPEN));
                tracing::warn!(upstream = %self.name, backend = %b.addr, "circuit HALF-OPEN: letting a probe through");
            } else if w & HALF_OPEN != 0 && now >= b.open_until.load(Relaxed) {
                // Probes granted but never reported (the client went away): grant again.
                b.probes.store(0, Relaxed);
                b.open_until
                    .store(now + b.cooldown_ms.load(Relaxed).max(100), Relaxed);
            }
            let since = w & SINCE;
            if since != 0 && now.saturating_sub(since) >= self.slow_start_ms {
                let _ = b.word.fetch_update(Relaxed, Relaxed, |w| Some(w & FLAGS));
            }
        }
    }

    /// Active check verdict for backend `i`.
    fn set_down(&self, i: usize, down: bool) {
        if let Some(b) = self.backends.get(i) {
            b.set_flag(DOWN, down);
            if down {
                b.went_down.fetch_add(1, Relaxed);
            } else {
                b.went_up.fetch_add(1, Relaxed);
            }
            if !down {
                b.fails.store(0, Relaxed);
                if self.slow_start_ms > 0 {
                    b.restart_ramp(now_ms());
                }
            }
        }
    }
}

/// Why [`pick`] found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoPick {
    /// Some backend not yet tried is healthy but at its max_connections
    /// (a request may wait for it).
    pub full: bool,
}

/// Pick a backend for a new connection or request: primaries first, then
/// backups, skipping those `tried`, unavailable (down, ejected, full,
/// ramping) and reserving a slot on the one chosen.
///
/// # Errors
/// Nothing is available.
pub fn pick(
    bal: &mut crate::balancer::Balancer,
    st: &Arc<UpstreamState>,
    key: u64,
    tried: &[usize],
) -> Result<(usize, Slot), NoPick> {
    let mut excluded: Vec<usize> = Vec::new();
    for backups in [false, true] {
        loop {
            let picked = bal.pick(key, |i| {
                tried.contains(&i)
                    || excluded.contains(&i)
                    || !st.backends.get(i).is_some_and(|b| b.backup == backups)
                    || st.avail(i) == Avail::No
            });
            let Some(idx) = picked else {
                break;
            };
            let kind = if st.backends[idx].word() & HALF_OPEN != 0 {
                Avail::Probe
            } else {
                Avail::Yes
            };
            match st.reserve(idx, kind) {
                Some(slot) => return Ok((idx, slot)),
                None => excluded.push(idx),
            }
        }
        // Backups only when no primary is available at all (not merely tried).
        let primary_alive = st
            .backends
            .iter()
            .enumerate()
            .any(|(i, b)| !b.backup && b.available() && !tried.contains(&i));
        if primary_alive {
            break;
        }
    }
    let full = (0..st.backends.len()).any(|i| !tried.contains(&i) && st.alive_but_full(i));
    Err(NoPick { full })
}

/// Every upstream's shared state, in config order.
#[derive(Debug)]
pub struct Shared {
    pub upstreams: Vec<Arc<UpstreamState>>,
}

impl Shared {
    pub fn new(cfg: &Config) -> Arc<Shared> {
        Self::carry_over(cfg, None)
    }

    /// For a reload: backends kept by the new config keep their health,
    /// circuit state and live counts (matched by upstream name and address).
    pub fn carry_over(cfg: &Config, prev: Option<&Shared>) -> Arc<Shared> {
        Arc::new(Shared {
            upstreams: cfg
                .upstreams
                .iter()
                .map(|u| {
                    let old = prev.and_then(|p| p.upstreams.iter().find(|o| o.name == u.name));
                    UpstreamState::carry_over(u, old.map(|o| &**o))
                })
                .collect(),
        })
    }
}

/// A cheap per-thread random number (slow-start admission only).
fn fast_rand() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(crate::balancer::rng::seed_for_worker(0) | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

/// How long the checker sleeps between timer ticks.
const TICK: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn state(extra: &str) -> Arc<UpstreamState> {
        let cfg = Config::parse(&format!(
            "[[listener]]\nlisten = \"127.0.0.1:1\"\nupstream = \"u\"\n[upstream.u]\n{extra}\nservers = [{{ addr = \"127.0.0.1:2\" }}, {{ addr = \"127.0.0.1:3\", max_connections = 2 }}]\n"
        ))
        .unwrap();
        UpstreamState::new(&cfg.upstreams[0])
    }

    #[test]
    fn failures_open_then_half_open_then_close() {
        let u = state("eject = { failures = 3, cooldown = \"1s\", max_cooldown = \"4s\" }");
        assert_eq!(u.avail(0), Avail::Yes);
        u.report_failure(0, "t");
        u.report_failure(0, "t");
        u.report_success(0); // a success resets the count
        u.report_failure(0, "t");
        u.report_failure(0, "t");
        assert_eq!(u.avail(0), Avail::Yes);
        u.report_failure(0, "t");
        assert_eq!(u.avail(0), Avail::No, "3 in a row open the circuit");
        let b = &u.backends[0];
        u.tick(b.open_until.load(Relaxed) - 1);
        assert_eq!(u.avail(0), Avail::No);
        u.tick(b.open_until.load(Relaxed));
        assert_eq!(u.avail(0), Avail::Probe);
        let probe = u.reserve(0, Avail::Probe).expect("one probe");
        assert!(u.reserve(0, Avail::Probe).is_none(), "only one probe");
        u.report_failure(0, "t");
        drop(probe);
        assert_eq!(u.avail(0), Avail::No, "failed probe re-opens");
        assert_eq!(b.cooldown_ms.load(Relaxed), 2000, "cool-down doubled");
        u.tick(b.open_until.load(Relaxed));
        u.report_failure(0, "t");
        assert_eq!(b.cooldown_ms.load(Relaxed), 4000);
        u.tick(b.open_until.load(Relaxed));
        u.report_failure(0, "t");
        assert_eq!(b.cooldown_ms.load(Relaxed), 4000, "capped");
        u.tick(b.open_until.load(Relaxed));
        u.report_success(0);
        assert_eq!(u.avail(0), Avail::Yes, "a good probe closes it");
        assert_eq!(b.cooldown_ms.load(Relaxed), 1000, "cool-down reset");
    }

    #[test]
    fn max_connections_and_down() {
        let u = state("");
        let a = u.reserve(1, Avail::Yes).unwrap();
        let _b = u.reserve(1, Avail::Yes).unwrap();
        assert!(u.reserve(1, Avail::Yes).is_none());
        assert_eq!(u.avail(1), Avail::No);
        assert!(u.alive_but_full(1));
        drop(a);
        assert_eq!(u.avail(1), Avail::Yes);
        u.set_down(0, true);
        assert_eq!(u.avail(0), Avail::No);
        assert!(!u.alive_but_full(0));
        u.set_down(0, false);
        assert_eq!(u.avail(0), Avail::Yes);
    }

    #[test]
    fn a_reload_carries_over_kept_backends_only() {
        let text = |second: &str| {
            format!(
                "[[listener]]\nlisten = \"127.0.0.1:1\"\nupstream = \"u\"\n[upstream.u]\nservers = [{{ addr = \"127.0.0.1:2\" }}, {{ addr = \"{second}\", max_connections = 2 }}]\n"
            )
        };
        let before = Config::parse(&text("127.0.0.1:3")).unwrap();
        let old = Shared::new(&before);
        old.upstreams[0].set_down(0, true);
        let _held = old.upstreams[0].reserve(1, Avail::Yes).unwrap();
        // Same backends: the verdict and the live count carry over.
        let same = Shared::carry_over(&before, Some(&old));
        assert!(same.upstreams[0].backends[0].is_down());
        assert_eq!(same.upstreams[0].backends[1].active(), 1);
        // A changed backend starts afresh; the kept one keeps its state.
        let after = Config::parse(&text("127.0.0.1:4")).unwrap();
        let new = Shared::carry_over(&after, Some(&old));
        assert!(new.upstreams[0].backends[0].is_down());
        assert_eq!(new.upstreams[0].backends[1].active(), 0);
    }

    #[test]
    fn slow_start_ramps_admission() {
        let u = state("slow_start = \"400ms\"");
        u.set_down(0, true);
        u.set_down(0, false);
        let admitted = (0..10_000).filter(|_| u.avail(0) == Avail::Yes).count();
        assert!(admitted < 2000, "just back: {admitted} of 10000 admitted");
        // Half-way through the ramp: about half.
        std::thread::sleep(Duration::from_millis(200));
        let admitted = (0..10_000).filter(|_| u.avail(0) == Avail::Yes).count();
        assert!((3500..7000).contains(&admitted), "{admitted}");
        u.tick(now_ms() + 400);
        assert_eq!(u.avail(0), Avail::Yes);
        assert_eq!(u.backends[0].word() & SINCE, 0, "ramp over");
    }
}
