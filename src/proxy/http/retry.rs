//! A route's retry policy at run time: which failure may send a request
//! to another backend, how many tries it has, and the budget that keeps
//! retries a share of the requests (per route, per worker: requests spread
//! evenly over the workers, so the share holds for the process).

use std::cell::Cell;

use super::{errors::Kind, HttpProxy};

/// What a try met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// The connect failed: nothing was sent.
    Connect,
    /// Closed or reset before any byte of a response.
    Reset,
    /// No response head within `response_timeout`.
    Timeout,
    /// A response with this status.
    Status(u16),
}

impl Failure {
    /// The failure a response-head read ended with, when it is one a
    /// policy can name (nothing of the response was read yet).
    pub(super) fn of(kind: &Kind, nothing_read: bool) -> Option<Failure> {
        match kind {
            Kind::NoResponse(_) if nothing_read => Some(Failure::Reset),
            Kind::ResponseTimeout if nothing_read => Some(Failure::Timeout),
            _ => None,
        }
    }
}

/// One retry, in the balance's units (thousandths: a share such as 0.1
/// adds up exactly).
const RETRY: u32 = 1000;

/// The most budgeted retries a route's balance holds: what a quiet route
/// may still retry beyond its share.
const BURST: u32 = 10 * RETRY;

/// One route's retry balance on one worker.
pub(super) struct Budget {
    /// What each request adds.
    share: u32,
    balance: Cell<u32>,
}

impl Budget {
    pub(super) fn new(share: f64) -> Budget {
        // The config keeps share within 0..=1.
        let share = (share.clamp(0.0, 1.0) * f64::from(RETRY)).round() as u32;
        Budget {
            share,
            balance: Cell::new(if share > 0 { BURST } else { 0 }),
        }
    }
}

impl HttpProxy {
    /// Tries in all for a request on route `ri`.
    pub(super) fn tries(&self, ri: usize) -> usize {
        match self.routes.get(ri).and_then(|r| r.cfg.retry.as_ref()) {
            Some(r) => r.tries as usize,
            None => self.cfg.connect_tries as usize,
        }
    }

    /// A request on route `ri` goes out: it adds its share to the budget.
    pub(super) fn retry_deposit(&self, ri: usize) {
        if let Some(b) = self.budgets.get(ri) {
            b.balance.set((b.balance.get() + b.share).min(BURST));
        }
    }

    /// Whether a request on route `ri` that met `f` may go to another
    /// backend. `replayable`: it is idempotent and every byte of it is
    /// still held; `room`: whether a try is left (asked only when the
    /// policy lists `f`). A reset, timeout or status retry spends one from
    /// the budget; a refusal is counted.
    pub(super) fn may_retry(
        &self,
        ri: usize,
        f: Failure,
        replayable: bool,
        room: impl FnOnce() -> bool,
    ) -> bool {
        let Some(r) = self.routes.get(ri).and_then(|r| r.cfg.retry.as_ref()) else {
            // No policy: connect failures only, as before policies existed.
            return f == Failure::Connect;
        };
        let listed = match f {
            Failure::Connect => r.connect,
            Failure::Reset => r.reset && replayable,
            Failure::Timeout => r.timeout && replayable,
            Failure::Status(s) => replayable && r.statuses.contains(&s),
        };
        if !listed || !room() {
            return false;
        }
        let rm = &self.metrics.listeners[self.li].routes[ri];
        if f != Failure::Connect {
            let Some(b) = self.budgets.get(ri) else {
                return false;
            };
            if b.balance.get() < RETRY {
                rm.retries_refused.inc();
                return false;
            }
            b.balance.set(b.balance.get() - RETRY);
        }
        rm.retries.inc();
        true
    }
}
