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
        drain::{Drain, Stop},
        limiter::Limiter,
        sockets::Listening,
        ticket::ConnTicket,
    },
    metrics::{access::AccessLog, WorkerMetrics},
    proxy::{Bound, Handler, WorkerParts},
    upstream::Replica,
};

/// Everything a worker thread is handed at spawn.
pub struct WorkerSpec {
    pub index: usize,
    pub cfg: Arc<Config>,
    /// Per listener, in config order: the bound sockets this worker accepts on.
    pub sockets: Vec<Vec<crate::listen::sockets::Listening>>,
    pub limiters: Vec<Arc<Limiter>>,
    /// Every upstream's backend set, shared by all workers.
    pub upstreams: Arc<crate::backends::Upstreams>,
    /// Process-wide rate limits and per-IP counters.
    pub limits: Arc<crate::limits::Limits>,
    /// This worker's metrics shard.
    pub metrics: Arc<WorkerMetrics>,
    pub access: Option<AccessLog>,
    /// Resolves when the generation commits (dropped: it did not).
    pub start: oneshot::Receiver<()>,
    /// Resolves with the drain deadline and kind when the worker must stop.
    pub shutdown: oneshot::Receiver<Stop>,
    /// splice(2) works here; when it does not, every listener copies.
    pub splice_ok: bool,
    /// Per listener: its TLS server configuration (shared by all workers).
    pub tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// Per upstream: its TLS to backends (shared by all workers).
    pub upstream_tls: Vec<Option<Arc<crate::tls::Client>>>,
}

/// A listening socket registered with this worker's runtime, and what its
/// accept loop needs.
struct Registered {
    li: usize,
    name: Rc<str>,
    socket: monoio::net::TcpListener,
    handler: Handler,
    ip_limit: Option<Arc<crate::limits::IpLimiter>>,
    limiter: Arc<Limiter>,
}

/// The worker's main task: register its listening sockets and report on
/// `ready` (a failure is reported, not logged and skipped: a socket in the
/// SO_REUSEPORT group that nobody accepts on would strand its clients);
/// then wait for the generation to commit (`spec.start`), serve until
/// shutdown, and drain. A generation that fails elsewhere drops `start`:
/// the worker then exits without having accepted anything.
pub async fn run(spec: WorkerSpec, ready: impl FnOnce(Result<(), String>)) {
    let drain = Drain::new();
    let pools = Rc::new(Pools::new(
        spec.cfg.runtime.pipe_pool,
        spec.cfg.runtime.pipe_size,
    ));
    // One replica per upstream: the worker's view of its backend set,
    // balancer, keep-alive pool and in-flight counts, shared by every
    // listener of this worker (tcp and http alike).
    let upstreams: Vec<Rc<Replica>> = spec
        .cfg
        .upstreams
        .iter()
        .zip(spec.upstreams.all.iter())
        .enumerate()
        .map(|(ui, (u, st))| {
            Rc::new(
                Replica::new(u, Arc::clone(st), spec.index, ui)
                    .with_tls(spec.upstream_tls.get(ui).cloned().flatten()),
            )
        })
        .collect();
    let parts = WorkerParts {
        worker: spec.index,
        upstreams: &upstreams,
        pools: &pools,
        limits: &spec.limits,
        metrics: &spec.metrics,
        access: &spec.access,
    };
    // Without splice(2) the handlers get a clone that says `transfer =
    // copy` (they keep a clone of their ListenerConfig anyway), so the
    // config stays as validated and the relays never try splice.
    let lcfgs: Vec<ListenerConfig> = spec
        .cfg
        .listeners
        .iter()
        .map(|l| {
            if spec.splice_ok {
                l.clone()
            } else {
                ListenerConfig {
                    transfer: Transfer::Copy,
                    ..l.clone()
                }
            }
        })
        .collect();
    // The port every socket of a listener is bound to.
    let ports: Vec<u16> = lcfgs
        .iter()
        .zip(&spec.sockets)
        .map(|(l, socks)| {
            socks
                .first()
                .and_then(|s| s.local_addr().ok())
                .map_or(l.listen.port(), |a| a.port())
        })
        .collect();
    let bound = |li: usize| Bound {
        li,
        cfg: &lcfgs[li],
        port: ports[li],
        tls: spec.tls.get(li).cloned().flatten(),
    };
    // Handlers: the protocol handlers first, then the SNI routers, which
    // hand connections to them.
    let mut handlers: Vec<Option<Handler>> = vec![None; lcfgs.len()];
    // udp listeners: their own room, no accept loop.
    let mut datagrams: Vec<(
        Rc<crate::proxy::udp::UdpProxy>,
        Vec<monoio::net::udp::UdpSocket>,
    )> = Vec::new();
    for (li, l) in lcfgs.iter().enumerate() {
        if l.mode != Mode::Udp {
            continue;
        }
        let built = l
            .upstream
            .and_then(|u| upstreams.get(u))
            .ok_or_else(|| "udp listener without upstream".to_string())
            .and_then(|up| {
                crate::proxy::udp::UdpProxy::new(
                    l,
                    Rc::clone(up),
                    Arc::clone(&spec.metrics),
                    li,
                    spec.access.clone(),
                )
            });
        match built {
            Ok(p) => datagrams.push((Rc::new(p), Vec::new())),
            Err(e) => return ready(Err(format!("listener {:?}: {e}", l.name))),
        }
    }
    for (li, l) in lcfgs.iter().enumerate() {
        if l.mode == Mode::Tls || l.mode == Mode::Udp {
            continue;
        }
        match Handler::build(bound(li), &parts) {
            Ok(h) => handlers[li] = Some(h),
            Err(e) => return ready(Err(format!("listener {:?}: {e}", l.name))),
        }
    }
    for (li, l) in lcfgs.iter().enumerate() {
        if l.mode != Mode::Tls {
            continue;
        }
        match Handler::build_router(bound(li), &parts, &handlers) {
            Ok(h) => handlers[li] = Some(h),
            Err(e) => return ready(Err(format!("listener {:?}: {e}", l.name))),
        }
    }
    let mut registered = Vec::new();
    for (li, ((socks, limiter), handler)) in spec
        .sockets
        .into_iter()
        .zip(spec.limiters.iter())
        .zip(handlers)
        .enumerate()
    {
        let lcfg = &lcfgs[li];
        if lcfg.mode == Mode::Udp {
            let Some((_, slot)) = datagrams.iter_mut().find(|(p, _)| p.li == li) else {
                return ready(Err(format!("listener {:?}: no udp handler", lcfg.name)));
            };
            for sock in socks {
                match sock {
                    Listening::Udp(u) => match crate::proxy::udp::register(u) {
                        Ok(u) => slot.push(u),
                        Err(e) => {
                            return ready(Err(format!(
                                "listener {:?}: cannot register a udp socket: {e}",
                                lcfg.name
                            )))
                        }
                    },
                    Listening::Tcp(_) => {
                        return ready(Err(format!(
                            "listener {:?}: a tcp socket for a udp listener",
                            lcfg.name
                        )))
                    }
                }
            }
            continue;
        }
        let Some(handler) = handler else {
            return ready(Err(format!("listener {:?}: no handler", lcfg.name)));
        };
        let ip_limit = spec.limits.ip.get(li).cloned().flatten();
        for sock in socks {
            let Listening::Tcp(sock) = sock else {
                return ready(Err(format!(
                    "listener {:?}: a udp socket for a stream listener",
                    lcfg.name
                )));
            };
            match monoio::net::TcpListener::from_std(sock) {
                Ok(socket) => registered.push(Registered {
                    li,
                    name: Rc::from(lcfg.name.as_str()),
                    socket,
                    handler: handler.clone(),
                    ip_limit: ip_limit.clone(),
                    limiter: Arc::clone(limiter),
                }),
                Err(e) => {
                    return ready(Err(format!(
                        "listener {:?}: cannot register a listening socket: {e}",
                        lcfg.name
                    )))
                }
            }
        }
    }
    ready(Ok(()));
    if spec.start.await.is_err() {
        // The generation did not commit.
        return;
    }
    {
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
    for (proxy, socks) in datagrams {
        for sock in socks {
            monoio::spawn(crate::proxy::udp::serve_socket(
                Rc::clone(&proxy),
                sock,
                Rc::clone(&drain),
            ));
        }
    }
    for r in registered {
        let Registered {
            li,
            name,
            socket,
            handler,
            ip_limit,
            limiter,
        } = r;
        {
            let d = Rc::clone(&drain);
            let metrics = Arc::clone(&spec.metrics);
            monoio::spawn(async move {
                let conn_drain = Rc::clone(&d);
                let m_full = Arc::clone(&metrics);
                let on_full = move || m_full.listeners[li].saturated.inc();
                accept::accept_loop(socket, limiter, d, name, on_full, move |a: Accepted| {
                    let lm = &metrics.listeners[li];
                    // Per-client-IP limit (process-wide): over it, refuse at once.
                    let ip_permit = match &ip_limit {
                        None => None,
                        Some(lim) => match lim.acquire(a.peer.ip()) {
                            Some(p) => Some(p),
                            None => {
                                lm.rejected_per_ip.inc();
                                handler.refuse(&a.stream, a.peer);
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
                    handler.serve(a.stream, a.peer, ticket);
                })
                .await;
                // Dropping the listener here closes this worker's socket: only now,
                // when stopping, since closing a reuseport socket drops its queue.
            });
        }
    }

    let stop = spec.shutdown.await.unwrap_or(Stop {
        grace: Duration::ZERO,
        last: false,
    });
    let grace = stop.grace;
    drain.stop_as(stop);
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
