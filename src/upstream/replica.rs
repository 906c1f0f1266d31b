//! One upstream as one worker sees it: balancer replica and keep-alive pool.

use std::{
    cell::RefCell, collections::VecDeque, net::SocketAddr, os::fd::AsRawFd, rc::Rc, sync::Arc,
    time::Instant,
};

use monoio::net::TcpStream;

use crate::{
    backends::{Slot, UpstreamState},
    balancer::Balancer,
    config::UpstreamConfig,
    sys,
};

// === impl UpstreamRt ===

/// One upstream as one worker sees it: balancer replica and keep-alive pool.
/// Shared by every http listener of the worker.
pub struct UpstreamRt {
    pub cfg: UpstreamConfig,
    pub addrs: Vec<SocketAddr>,
    pub balancer: RefCell<Balancer>,
    /// Per backend: idle connections, most recently used at the back.
    idle: RefCell<Vec<VecDeque<IdleConn>>>,
    /// Process-wide health, circuit and counts of these backends.
    pub state: Arc<UpstreamState>,
    /// Index in the config (and in the metrics).
    pub ui: usize,
}

struct IdleConn {
    stream: TcpStream,
    since: Instant,
}

impl UpstreamRt {
    pub fn new(
        cfg: &UpstreamConfig,
        worker: usize,
        state: Arc<UpstreamState>,
        ui: usize,
    ) -> Rc<UpstreamRt> {
        Rc::new(UpstreamRt {
            cfg: cfg.clone(),
            addrs: cfg.servers.iter().map(|s| s.addr).collect(),
            balancer: RefCell::new(balancer_for(cfg, worker)),
            idle: RefCell::new(cfg.servers.iter().map(|_| VecDeque::new()).collect()),
            state,
            ui,
        })
    }

    /// The most recently used idle connection to backend `idx` that still
    /// looks usable; stale ones are closed on the way.
    pub fn take_idle(&self, idx: usize) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        let q = idle.get_mut(idx)?;
        while let Some(c) = q.pop_back() {
            if c.since.elapsed() < self.cfg.keepalive_timeout
                && sys::idle_socket_usable(c.stream.as_raw_fd())
            {
                return Some(c.stream);
            }
        }
        None
    }

    pub fn put_idle(&self, idx: usize, stream: TcpStream) {
        if self.cfg.keepalive == 0 {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        if let Some(q) = idle.get_mut(idx) {
            if q.len() >= self.cfg.keepalive {
                q.pop_front();
            }
            q.push_back(IdleConn {
                stream,
                since: Instant::now(),
            });
        }
    }

    /// Close pooled connections that timed out or that the backend closed.
    /// Called about once a second per worker: O(pooled connections).
    pub fn sweep(&self) {
        let timeout = self.cfg.keepalive_timeout;
        for q in self.idle.borrow_mut().iter_mut() {
            q.retain(|c| {
                c.since.elapsed() < timeout && sys::idle_socket_usable(c.stream.as_raw_fd())
            });
        }
    }

    /// Close every pooled connection (shutdown).
    pub fn clear(&self) {
        for q in self.idle.borrow_mut().iter_mut() {
            q.clear();
        }
    }
}

/// Keeps the balancer's in-flight count and the backend's process-wide
/// slot for one request.
pub struct InFlight<'a> {
    up: &'a UpstreamRt,
    idx: usize,
    _slot: Slot,
}

impl<'a> InFlight<'a> {
    pub fn new(up: &'a UpstreamRt, idx: usize, slot: Slot) -> Self {
        up.balancer.borrow_mut().connection_opened(idx);
        InFlight {
            up,
            idx,
            _slot: slot,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.up.balancer.borrow_mut().connection_closed(self.idx);
    }
}

/// The replica for `up`'s servers, built by worker `worker`.
pub fn balancer_for(up: &UpstreamConfig, worker: usize) -> Balancer {
    let specs: Vec<crate::balancer::ServerSpec<'_>> = up
        .servers
        .iter()
        .map(|s| crate::balancer::ServerSpec {
            id: &s.id,
            weight: s.weight,
        })
        .collect();
    Balancer::new(up.balance, &specs, worker)
}
