//! The ticket an accepted connection carries for its whole life.

use std::sync::Arc;

use super::{
    drain::{ConnGuard, Drain},
    limiter::Permit,
};
use crate::{limits::IpPermit, metrics::WorkerMetrics};

/// Everything one accepted connection holds until it ends: its limiter
/// permit, its place in the drain count and in its IP's count, and the
/// listener's active-connections gauge. Dropping it releases them all.
pub struct ConnTicket {
    _permit: Permit,
    guard: ConnGuard,
    _ip: Option<IpPermit>,
    metrics: Arc<WorkerMetrics>,
    li: usize,
}

impl ConnTicket {
    pub fn new(
        permit: Permit,
        guard: ConnGuard,
        ip: Option<IpPermit>,
        metrics: Arc<WorkerMetrics>,
        li: usize,
    ) -> Box<ConnTicket> {
        let lm = &metrics.listeners[li];
        lm.accepted.inc();
        lm.active.add(1);
        // Boxed: the ticket lives in every connection's task state for its
        // whole life, and a pointer keeps that state small.
        Box::new(ConnTicket {
            _permit: permit,
            guard,
            _ip: ip,
            metrics,
            li,
        })
    }

    /// The worker's drain state (to notice shutdown mid-connection).
    pub fn drain(&self) -> &Drain {
        self.guard.drain()
    }
}

impl Drop for ConnTicket {
    fn drop(&mut self) {
        self.metrics.listeners[self.li].active.add(-1);
    }
}
