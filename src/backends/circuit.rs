//! Availability of a backend: active health verdicts, the passive circuit
//! breaker (closed -> open -> half-open -> closed) and the slow-start ramp.
//!
//! Writers are the health-check thread (verdicts, cool-down timers) and the
//! workers reporting outcomes (failures and successes counted for the whole
//! process, so N workers do not eject N times late). The pick path reads
//! one relaxed atomic per candidate, plus the live count only for a backend
//! with `max_connections`.

use std::sync::{
    atomic::Ordering::{self, Relaxed},
    OnceLock,
};
use std::time::Instant;

use super::{
    set::Upstream,
    state::{Avail, Backend, DOWN, FLAGS, HALF_OPEN, OPEN, SINCE},
};

/// Milliseconds since the first call in this process (monotonic).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Upstream {
    /// Availability of `b` for a new pick.
    #[inline]
    pub fn avail(&self, b: &Backend) -> Avail {
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

    fn eject(&self) -> Option<&crate::config::EjectConfig> {
        if self.ejectable.load(Ordering::Relaxed) {
            self.eject.as_ref()
        } else {
            None
        }
    }

    /// The half-open probe budget.
    pub(super) fn half_open_probes(&self) -> u32 {
        self.eject().map_or(1, |e| e.half_open)
    }

    /// A connection or request to `b` succeeded.
    pub fn report_success(&self, b: &Backend) {
        if b.fails.load(Relaxed) != 0 {
            b.fails.store(0, Relaxed);
        }
        if b.word() & HALF_OPEN != 0 {
            let prev = b.set_flag(HALF_OPEN, false);
            if prev & HALF_OPEN != 0 {
                if let Some(e) = self.eject() {
                    b.cooldown_ms.store(e.cooldown.as_millis() as u64, Relaxed);
                }
                b.restart_ramp(now_ms());
                tracing::warn!(upstream = %self.name, backend = %b.addr, "circuit CLOSED: the probe succeeded; back in rotation");
            }
        }
    }

    /// A connection or request to `b` failed (refused, timed out, reset,
    /// or an http 5xx).
    pub fn report_failure(&self, b: &Backend, why: &str) {
        b.failures.fetch_add(1, Relaxed);
        let Some(e) = self.eject() else {
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
            if !self.may_eject_one_more(e.max_ejected_percent) {
                tracing::debug!(upstream = %self.name, backend = %b.addr, "not ejected: max_ejected_percent of the backends are out already ({why})");
                return;
            }
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

    /// Whether ejecting one more backend keeps the ejected share within
    /// `max_percent` (so clients cannot get every backend ejected).
    fn may_eject_one_more(&self, max_percent: u32) -> bool {
        let set = self.current();
        let out = set
            .members
            .iter()
            .filter(|m| m.backend.word() & (OPEN | HALF_OPEN) != 0)
            .count();
        (out + 1) * 100 <= set.len() * max_percent as usize
    }

    /// Panic mode is on and there is a set to panic over.
    pub(super) fn panics(&self) -> bool {
        self.eject().is_some_and(|e| e.panic)
    }

    /// Timers, called by the checker thread every tick: open circuits whose
    /// cool-down passed become half-open; finished slow-start ramps end;
    /// half-open probes that never reported are granted again.
    pub(super) fn tick(&self, now: u64) {
        for m in &self.current().members {
            let b = &m.backend;
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

    /// Active check verdict for `b`.
    pub(super) fn set_down(&self, b: &Backend, down: bool) {
        b.set_flag(DOWN, down);
        if down {
            b.went_down.fetch_add(1, Relaxed);
        } else {
            b.went_up.fetch_add(1, Relaxed);
            b.fails.store(0, Relaxed);
            if self.slow_start_ms > 0 {
                b.restart_ramp(now_ms());
            }
        }
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
