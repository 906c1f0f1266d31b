//! One worker: a pinned thread running its own monoio runtime, with its own
//! listening sockets, balancer replicas and pools. It is the only place that
//! wires listener, limiter and proxy together.

use std::{rc::Rc, sync::Arc, time::Duration};

use futures_channel::oneshot;
use futures_util::future::{select, Either};

use crate::{
    config::{Config, ListenerConfig, Mode, Transfer},
    io::pools::Pools,
    listen::{
        accept::{self, Accepted},
        drain::Drain,
        limiter::Limiter,
        ticket::ConnTicket,
    },
    metrics::{access::AccessLog, WorkerMetrics},
    proxy::{
        http::{self, HttpListener},
        tcp::{self, L4Listener, L4Obs},
    },
    upstream::replica::UpstreamRt,
};

/// Everything a worker thread is handed at spawn.
pub struct WorkerSpec {
    pub index: usize,
    pub cfg: Arc<Config>,
    /// Per listener, in config order: the bound sockets this worker accepts on.
    pub sockets: Vec<Vec<std::net::TcpListener>>,
    pub limiters: Vec<Arc<Limiter>>,
    /// Process-wide backend state and limits.
    pub shared: Arc<crate::backends::Shared>,
    /// Process-wide rate limits and per-IP counters.
    pub limits: Arc<crate::limits::Limits>,
    /// This worker's metrics shard.
    pub metrics: Arc<WorkerMetrics>,
    pub access: Option<AccessLog>,
    /// Resolves with the drain deadline when the process must stop.
    pub shutdown: oneshot::Receiver<Duration>,
    /// splice(2) works here; when it does not, every listener copies.
    pub splice_ok: bool,
}

/// The worker's main task: serve until shutdown, then drain.
pub async fn run(spec: WorkerSpec) {
    let drain = Drain::new();
    let pools = Rc::new(Pools::new(
        spec.cfg.runtime.pipe_pool,
        spec.cfg.runtime.pipe_size,
    ));
    // Per-worker upstream state for http listeners: balancer replica and
    // keep-alive pool, shared by every http listener of this worker.
    let upstreams: Vec<Rc<UpstreamRt>> = spec
        .cfg
        .upstreams
        .iter()
        .zip(spec.shared.upstreams.iter())
        .enumerate()
        .map(|(ui, (u, st))| UpstreamRt::new(u, spec.index, Arc::clone(st), ui))
        .collect();
    if spec.cfg.listeners.iter().any(|l| l.mode == Mode::Http) {
        let ups = upstreams.clone();
        let d = Rc::clone(&drain);
        monoio::spawn(async move {
            loop {
                let tick = std::pin::pin!(monoio::time::sleep(Duration::from_secs(1)));
                let stop = std::pin::pin!(d.stopped());
                if let Either::Right(_) = select(tick, stop).await {
                    break;
                }
                for u in &ups {
                    u.sweep();
                }
            }
            for u in &ups {
                u.clear();
            }
        });
    }
    for (li, ((lcfg, socks), limiter)) in spec
        .cfg
        .listeners
        .iter()
        .zip(spec.sockets)
        .zip(spec.limiters.iter())
        .enumerate()
    {
        let ip_limit = spec.limits.ip.get(li).cloned().flatten();
        // Without splice(2) the handlers get a clone that says `transfer =
        // copy` (they keep a clone of their ListenerConfig anyway), so the
        // config stays as validated and the relays never try splice.
        let copying;
        let lcfg = if spec.splice_ok {
            lcfg
        } else {
            copying = ListenerConfig {
                transfer: Transfer::Copy,
                ..lcfg.clone()
            };
            &copying
        };
        let handler = match lcfg.mode {
            Mode::Tcp => {
                let Some(u) = lcfg.upstream else {
                    tracing::error!(listener = %lcfg.name, "tcp listener without upstream");
                    continue;
                };
                Handler::Tcp(Rc::new(L4Listener::new(
                    lcfg,
                    &spec.cfg.upstreams[u],
                    spec.index,
                    Rc::clone(&pools),
                    Arc::clone(&spec.shared.upstreams[u]),
                    L4Obs {
                        metrics: Arc::clone(&spec.metrics),
                        li,
                        ui: u,
                        access: spec.access.clone(),
                    },
                )))
            }
            Mode::Http => {
                let rate_limits = spec.limits.rate.get(li).cloned().unwrap_or_default();
                match HttpListener::new(
                    lcfg,
                    &upstreams,
                    Rc::clone(&pools),
                    spec.index,
                    rate_limits,
                    Arc::clone(&spec.metrics),
                    li,
                    spec.access.clone(),
                ) {
                    Ok(h) => Handler::Http(Rc::new(h)),
                    Err(e) => {
                        tracing::error!(listener = %lcfg.name, "{e}");
                        continue;
                    }
                }
            }
        };
        for sock in socks {
            let handler = handler.clone();
            let ip_limit = ip_limit.clone();
            let listener = match monoio::net::TcpListener::from_std(sock) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(worker = spec.index, listener = %lcfg.name, "cannot register listening socket: {e}");
                    continue;
                }
            };
            let d = Rc::clone(&drain);
            let name: Rc<str> = Rc::from(lcfg.name.as_str());
            let limiter = Arc::clone(limiter);
            let metrics = Arc::clone(&spec.metrics);
            let worker = spec.index;
            monoio::spawn(async move {
                let conn_drain = Rc::clone(&d);
                let m_full = Arc::clone(&metrics);
                let on_full = move || m_full.listeners[li].saturated.inc();
                accept::accept_loop(
                    listener,
                    limiter,
                    worker,
                    d,
                    name,
                    on_full,
                    move |a: Accepted| {
                        let lm = &metrics.listeners[li];
                        // Per-client-IP limit (process-wide): over it, refuse at once.
                        let ip_permit = match &ip_limit {
                            None => None,
                            Some(lim) => match lim.acquire(a.peer.ip()) {
                                Some(p) => Some(p),
                                None => {
                                    lm.rejected_per_ip.inc();
                                    refuse_over_ip_limit(&handler, &a);
                                    return;
                                }
                            },
                        };
                        let ticket = ConnTicket::new(
                            a.permit,
                            conn_drain.track(),
                            ip_permit,
                            Arc::clone(&metrics),
                            li,
                        );
                        match &handler {
                            Handler::Tcp(l) => {
                                monoio::spawn(tcp::handle(Rc::clone(l), a.stream, a.peer, ticket));
                            }
                            Handler::Http(l) => {
                                monoio::spawn(http::handle(Rc::clone(l), a.stream, a.peer, ticket));
                            }
                        }
                    },
                )
                .await;
                // Dropping the listener here closes this worker's socket: only now,
                // when stopping, since closing a reuseport socket drops its queue.
            });
        }
    }

    let grace = spec.shutdown.await.unwrap_or(Duration::ZERO);
    drain.stop();
    let active = drain.active();
    if active > 0 {
        tracing::info!(
            worker = spec.index,
            active,
            "draining connections for up to {grace:?}"
        );
        let idle = std::pin::pin!(drain.idle());
        let timer = std::pin::pin!(monoio::time::sleep(grace));
        if let Either::Right(_) = select(idle, timer).await {
            tracing::warn!(
                worker = spec.index,
                left = drain.active(),
                "shutdown_timeout reached; closing remaining connections"
            );
        }
    }
}

/// What serves a listener's connections.
#[derive(Clone)]
enum Handler {
    Tcp(Rc<L4Listener>),
    Http(Rc<HttpListener>),
}

/// A client over `max_connections_per_ip`: tcp is closed at once, http gets
/// a 429 JSON answer first (one nonblocking send; it fits any socket buffer).
fn refuse_over_ip_limit(handler: &Handler, a: &Accepted) {
    tracing::debug!(peer = %a.peer, "over max_connections_per_ip; refused");
    if let Handler::Http(l) = handler {
        let mut out = Vec::with_capacity(256);
        let mut id = String::new();
        l.new_request_id(&mut id);
        http::h1::respond::error(&mut out, 429, &id, true);
        let _ = crate::sys::send(std::os::fd::AsRawFd::as_raw_fd(&a.stream), &out);
    }
}
