//! One upstream as one worker sees it: its view of the backend set, the
//! balancer replica built for that view, the keep-alive pool, and the
//! in-flight counts. One per upstream per worker, shared by every tcp and
//! http listener of the worker (so least_conn counts the same whatever the
//! protocol).
//!
//! A pick first compares the upstream's set version with the view's (one
//! relaxed load). When it moved, the view is rebuilt: a new balancer for
//! the new members, with the live counts and pooled connections of the
//! backends it kept, found by id. Connections in flight keep their backend
//! (their [`InFlight`] holds it) and are counted out of whichever view is
//! current when they end.

use std::{cell::RefCell, sync::Arc};

use super::{
    h2pool::{ConnState, H2Pool, Lease},
    pool::IdlePool,
};
use crate::{
    backends::{self, Backend, BackendId, BackendSet, NoPick, Slot, Upstream},
    balancer::{Balancer, ServerSpec},
    config::UpstreamConfig,
    io::stream::Stream,
};

pub struct Replica {
    pub cfg: UpstreamConfig,
    pub upstream: Arc<Upstream>,
    /// Index in the config (and in the metrics).
    pub ui: usize,
    worker: usize,
    view: RefCell<View>,
    /// TLS to the backends (the upstream's `tls`), shared by all workers.
    pub tls: Option<Arc<crate::tls::Client>>,
    /// `protocol = "h2" | "h2c"`: multiplexed connections to the backends.
    h2: RefCell<H2Pool>,
}

struct View {
    version: u64,
    set: Arc<BackendSet>,
    balancer: Balancer,
    pool: IdlePool,
}

/// How recently pooled a connection must be to be taken without a
/// liveness check for a replayable request: the sweep's period (it checks
/// every pooled connection that often).
const TRUST_RECENT: std::time::Duration = std::time::Duration::from_secs(1);

/// A backend chosen and reserved for one connection or request, not yet
/// counted as open by the balancer (a failed connect drops it).
pub struct Picked {
    slot: Slot,
    idx: usize,
    version: u64,
}

impl Picked {
    pub fn backend(&self) -> &Arc<Backend> {
        self.slot.backend()
    }
}

/// One open connection (tcp) or request (http) through this replica: the
/// backend's slot and the balancer's live count, released on drop.
pub struct InFlight<'a> {
    replica: &'a Replica,
    picked: Picked,
}

impl InFlight<'_> {
    pub fn backend(&self) -> &Arc<Backend> {
        self.picked.backend()
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut v = self.replica.view.borrow_mut();
        if let Some(i) = v.index(&self.picked) {
            v.balancer.connection_closed(i);
        }
    }
}

impl View {
    fn new(cfg: &UpstreamConfig, set: Arc<BackendSet>, worker: usize) -> View {
        View {
            version: set.version,
            balancer: balancer_for(cfg.balance, &set, worker),
            pool: IdlePool::new(set.len()),
            set,
        }
    }

    /// Where `p`'s backend is in this view (it may have left).
    fn index(&self, p: &Picked) -> Option<usize> {
        if p.version == self.version {
            Some(p.idx)
        } else {
            self.set.index_of(p.backend().id)
        }
    }
}

/// A balancer for `set`'s members, in set order.
pub fn balancer_for(algo: crate::balancer::Algorithm, set: &BackendSet, worker: usize) -> Balancer {
    let specs: Vec<ServerSpec<'_>> = set
        .members
        .iter()
        .map(|m| ServerSpec {
            id: &m.backend.name,
            weight: m.weight,
        })
        .collect();
    Balancer::new(algo, &specs, worker)
}

impl Replica {
    pub fn new(cfg: &UpstreamConfig, upstream: Arc<Upstream>, worker: usize, ui: usize) -> Replica {
        let set = upstream.current();
        Replica {
            cfg: cfg.clone(),
            view: RefCell::new(View::new(cfg, set, worker)),
            upstream,
            ui,
            worker,
            tls: None,
            h2: RefCell::new(H2Pool::default()),
        }
    }

    /// This replica, connecting to its backends over TLS with `tls`.
    pub fn with_tls(mut self, tls: Option<Arc<crate::tls::Client>>) -> Replica {
        self.tls = tls;
        self
    }

    /// Rebuild the view when the set has a new version.
    fn refresh(&self, v: &mut View) {
        if self.upstream.version() == v.version {
            return;
        }
        let set = self.upstream.current();
        let old: ahash::AHashMap<BackendId, usize> = v
            .set
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.backend.id, i))
            .collect();
        let from: Vec<Option<usize>> = set
            .members
            .iter()
            .map(|m| old.get(&m.backend.id).copied())
            .collect();
        let mut balancer = balancer_for(self.cfg.balance, &set, self.worker);
        for (j, i) in from.iter().enumerate() {
            if let Some(i) = *i {
                balancer.set_connections(j, v.balancer.connections(i));
            }
        }
        v.pool.remap(&from);
        v.balancer = balancer;
        v.version = set.version;
        v.set = set;
    }

    /// Backends in the current set.
    pub fn len(&self) -> usize {
        let mut v = self.view.borrow_mut();
        self.refresh(&mut v);
        v.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many of `tried` are still in the current set (a backend removed
    /// mid-request no longer counts against the tries left).
    pub fn tried_in_set(&self, tried: &[BackendId]) -> usize {
        let mut v = self.view.borrow_mut();
        self.refresh(&mut v);
        tried
            .iter()
            .filter(|id| v.set.index_of(**id).is_some())
            .count()
    }

    /// Pick and reserve a backend not in `tried` (see [`backends::pick`]).
    ///
    /// # Errors
    /// Nothing is available.
    pub fn pick(&self, key: u64, tried: &[BackendId]) -> Result<Picked, NoPick> {
        let mut v = self.view.borrow_mut();
        self.refresh(&mut v);
        let View { set, balancer, .. } = &mut *v;
        let (idx, slot) = backends::pick(balancer, &self.upstream, set, key, tried)?;
        Ok(Picked {
            slot,
            idx,
            version: v.version,
        })
    }

    /// [`Replica::pick`], but first the backend a sticky cookie names
    /// (`token`) when this is the request's first try and it is available
    /// ([`backends::pick_sticky`]).
    ///
    /// # Errors
    /// Nothing is available.
    pub fn pick_sticky(
        &self,
        token: Option<u64>,
        key: u64,
        tried: &[BackendId],
    ) -> Result<Picked, NoPick> {
        if let (Some(t), true) = (token, tried.is_empty()) {
            let mut v = self.view.borrow_mut();
            self.refresh(&mut v);
            if let Some((idx, slot)) = backends::pick_sticky(&self.upstream, &v.set, t) {
                return Ok(Picked {
                    slot,
                    idx,
                    version: v.version,
                });
            }
        }
        self.pick(key, tried)
    }

    /// The picked backend is connected: count it open until the guard drops.
    pub fn open(&self, picked: Picked) -> InFlight<'_> {
        let mut v = self.view.borrow_mut();
        if let Some(i) = v.index(&picked) {
            v.balancer.connection_opened(i);
        }
        InFlight {
            replica: self,
            picked,
        }
    }

    /// A pooled connection to the picked backend, if one is usable.
    /// `replayable`: the request can go again on a new connection if this
    /// one was closed, so one pooled within the last sweep (1 s) is taken
    /// without the MSG_PEEK liveness check (one syscall per request saved;
    /// a backend's idle close is older than that and still found by it or
    /// by the sweep).
    pub fn take_idle(&self, picked: &Picked, replayable: bool) -> Option<Stream> {
        let mut v = self.view.borrow_mut();
        let i = v.index(picked)?;
        let trust = replayable.then_some(TRUST_RECENT);
        v.pool.take(i, self.cfg.keepalive_timeout, trust)
    }

    /// Keep a connection that can carry another request. A backend that
    /// left the set gets none: its connection closes.
    pub fn put_idle(&self, f: &InFlight<'_>, stream: Stream) {
        let mut v = self.view.borrow_mut();
        self.refresh(&mut v);
        if let Some(i) = v.index(&f.picked) {
            v.pool.put(i, stream, self.cfg.keepalive);
        }
    }

    /// An HTTP/2 connection to the picked backend with room for a stream.
    pub fn h2_take(
        &self,
        picked: &Picked,
    ) -> Option<(h2::client::SendRequest<bytes::Bytes>, Lease)> {
        self.h2.borrow_mut().take(picked.backend().id)
    }

    /// Keep a new HTTP/2 connection to the picked backend; the lease is
    /// the first stream's.
    pub fn h2_add(
        &self,
        picked: &Picked,
        send: h2::client::SendRequest<bytes::Bytes>,
        state: std::rc::Rc<ConnState>,
    ) -> Lease {
        self.h2.borrow_mut().add(picked.backend().id, send, state)
    }

    /// Close pooled connections that timed out or that the backend closed
    /// (about once a second per worker), and follow a new set version.
    pub fn sweep(&self) {
        let mut v = self.view.borrow_mut();
        self.refresh(&mut v);
        v.pool.sweep(self.cfg.keepalive_timeout);
        let set = &v.set;
        self.h2
            .borrow_mut()
            .sweep(self.cfg.keepalive_timeout, |id| set.index_of(id).is_some());
    }

    /// Close every pooled connection (shutdown).
    pub fn clear(&self) {
        self.view.borrow_mut().pool.clear();
        self.h2.borrow_mut().clear();
    }

    /// This replica's live count for backend `id` (tests, diagnostics).
    pub fn live(&self, id: BackendId) -> u32 {
        let v = self.view.borrow();
        v.set.index_of(id).map_or(0, |i| v.balancer.connections(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backends::Update, config::Config};

    fn replica(extra: &str) -> Replica {
        let cfg = Config::parse(&format!(
            "[[listener]]\nlisten = \"127.0.0.1:1\"\nupstream = \"u\"\n[upstream.u]\n{extra}\nservers = [{{ addr = \"127.0.0.1:2\" }}, {{ addr = \"127.0.0.1:3\" }}]\n"
        ))
        .unwrap();
        let up = Upstream::new(&cfg.upstreams[0]);
        Replica::new(&cfg.upstreams[0], up, 0, 0)
    }

    fn server(addr: &str) -> crate::config::ServerConfig {
        crate::config::ServerConfig {
            id: addr.to_string(),
            addr: addr.parse().unwrap(),
            weight: 1,
            backup: false,
            max_connections: 0,
        }
    }

    #[test]
    fn a_new_version_is_seen_at_the_next_pick_and_live_counts_follow_ids() {
        let r = replica("balance = \"least_conn\"");
        let p = r.pick(0, &[]).unwrap();
        let held_id = p.backend().id;
        let held = r.open(p);
        assert_eq!(r.live(held_id), 1);
        // Add a backend: the held one keeps its count in the rebuilt view.
        r.upstream.apply(Update::Add(server("127.0.0.1:4")));
        assert_eq!(r.len(), 3);
        assert_eq!(r.live(held_id), 1);
        // Remove the held backend: its connection goes on, and ending it
        // touches no other backend's count.
        let addr = held.backend().addr;
        r.upstream.apply(Update::Remove(addr));
        assert_eq!(r.len(), 2);
        assert_eq!(
            held.backend().active(),
            1,
            "the connection keeps its backend"
        );
        let others: Vec<BackendId> = r
            .upstream
            .current()
            .members
            .iter()
            .map(|m| m.backend.id)
            .collect();
        drop(held);
        for id in others {
            assert_eq!(r.live(id), 0);
        }
        // Picks only ever see the current members.
        for _ in 0..20 {
            let p = r.pick(0, &[]).unwrap();
            assert_ne!(p.backend().addr, addr);
        }
    }

    #[test]
    fn an_empty_set_picks_nothing() {
        let r = replica("");
        r.upstream.apply(Update::Reset(Vec::new()));
        assert!(r.is_empty());
        assert!(r.pick(0, &[]).is_err());
    }
}
