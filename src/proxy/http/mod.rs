//! http: an HTTP/1.1 reverse proxy on one client connection.
//!
//! A connection is a loop of exchanges ([`exchange`]). Each exchange runs
//! the same steps in a fixed order, as plain functions:
//!
//! 1. head: read and parse the request head ([`h1::server`], [`h1::codec`]);
//! 2. request phases ([`phases`]): request id, route ([`router`]), limits
//!    (rate limit, body size), upgrade, rewrite ([`h1::rewrite`]);
//! 3. forward ([`forward`]): pick or queue, reuse a pooled connection or
//!    connect, send the head (with a small body) and read the response
//!    head ([`h1::client`]), retrying as allowed;
//! 4. response ([`response`]): a longer request body goes out beside the
//!    response (early answers, full duplex; [`h1::body`]), the response
//!    body streams back, or on `101` the exchange becomes a tunnel
//!    ([`h1::tunnel`]); the backend connection returns to the pool;
//! 5. log ([`log`]): metrics and the access-log line.
//!
//! Any step may fail with one [`errors::ProxyError`]; it is answered,
//! reported to passive health and logged in one place.
//!
//! Bodies are never buffered whole: each read is forwarded before the next.
//! Sockets are nonblocking; reads wait on readiness (an io_uring PollAdd
//! that holds no buffer) and every read and write has a deadline, so a
//! timeout only ever drops a readiness wait, never bytes.

mod compress;
mod conn;
pub mod errors;
mod exchange;
mod forward;
pub mod h1;
mod h2;
mod log;
mod mirror;
mod own;
mod phases;
mod response;
mod retry;
pub mod router;
mod sticky;

use std::{cell::RefCell, net::SocketAddr, rc::Rc, sync::Arc};

use self::{h1::codec::Limits, router::Router};
use crate::{
    balancer::rng::WyRand,
    config::{HttpConfig, ListenerConfig, RouteConfig},
    io::pools::Pools,
    io::stream::Stream,
    limits::RateLimiter,
    listen::ticket::ConnTicket,
    metrics::{access::AccessLog, WorkerMetrics},
    upstream::Replica,
};

struct Route {
    cfg: RouteConfig,
    /// `None`: the route answers itself (`cfg.answer`).
    up: Option<Rc<Replica>>,
    /// Copies of a share of the requests to a shadow upstream.
    mirror: Option<mirror::Mirror>,
}

/// One http listener as one worker sees it.
pub struct HttpProxy {
    pub cfg: ListenerConfig,
    http: HttpConfig,
    limits: Limits,
    router: Router,
    routes: Vec<Route>,
    pools: Rc<Pools>,
    ids: RefCell<WyRand>,
    /// Per route: the process-wide token buckets.
    rate_limits: Vec<Option<Arc<RateLimiter>>>,
    /// Per route: this worker's retry budget.
    budgets: Vec<retry::Budget>,
    metrics: Arc<WorkerMetrics>,
    /// This listener's index in the config (and in the metrics).
    li: usize,
    access: Option<AccessLog>,
    /// The port the listener is bound to (X-Forwarded-Port), known at
    /// start: no getsockname per connection.
    port: u16,
    /// TLS termination: clients speak HTTPS here.
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// What an http listener is built from, besides its config.
pub struct HttpParts {
    /// The worker's replicas, by upstream index.
    pub upstreams: Vec<Rc<Replica>>,
    pub pools: Rc<Pools>,
    pub worker: usize,
    /// Per route: the process-wide token buckets.
    pub rate_limits: Vec<Option<Arc<RateLimiter>>>,
    pub metrics: Arc<WorkerMetrics>,
    pub li: usize,
    pub access: Option<AccessLog>,
    /// The bound port (the configured one may be 0).
    pub port: u16,
    /// TLS termination: clients speak HTTPS here.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl HttpProxy {
    /// # Errors
    /// Two routes with the same host and prefix (config validation catches it first).
    pub fn new(cfg: &ListenerConfig, p: HttpParts) -> Result<HttpProxy, String> {
        let http = cfg
            .http
            .clone()
            .ok_or_else(|| format!("listener {:?} is not an http listener", cfg.name))?;
        let router = Router::new(
            http.routes
                .iter()
                .map(|r| (r.host.as_deref(), r.path_prefix.as_str())),
        )
        .map_err(|d| format!("route[{}] repeats an earlier host and path_prefix", d.0))?;
        let mut routes = Vec::with_capacity(http.routes.len());
        for r in &http.routes {
            let up = match r.upstream {
                None => None,
                Some(u) => {
                    Some(Rc::clone(p.upstreams.get(u).ok_or_else(|| {
                        "route names an unknown upstream".to_string()
                    })?))
                }
            };
            let mirror = match &r.mirror {
                None => None,
                Some(m) => Some(mirror::Mirror::new(
                    Rc::clone(
                        p.upstreams
                            .get(m.upstream)
                            .ok_or_else(|| "route mirrors to an unknown upstream".to_string())?,
                    ),
                    m.share,
                )),
            };
            routes.push(Route {
                cfg: r.clone(),
                up,
                mirror,
            });
        }
        let budgets = http
            .routes
            .iter()
            .map(|r| retry::Budget::new(r.retry.as_ref().map_or(0.0, |r| r.budget)))
            .collect();
        Ok(HttpProxy {
            cfg: cfg.clone(),
            limits: Limits {
                max_request_line: http.max_request_line,
                max_header_size: http.max_header_size,
                max_headers: http.max_headers,
                underscores: http.underscores,
            },
            http,
            router,
            routes,
            pools: p.pools,
            ids: RefCell::new(WyRand::new(crate::balancer::rng::seed_for_worker(p.worker))),
            rate_limits: p.rate_limits,
            budgets,
            metrics: p.metrics,
            li: p.li,
            access: p.access,
            port: p.port,
            tls: p.tls,
        })
    }

    /// The minimum-rate check for one body, starting now.
    fn body_pace(&self) -> h1::body::Pace {
        h1::body::Pace::new(
            self.http.body_min_rate,
            self.http
                .body_timeout
                .min(std::time::Duration::from_secs(10)),
        )
    }

    pub fn new_request_id(&self, out: &mut String) {
        let mut ids = self.ids.borrow_mut();
        let (a, b) = (ids.next_u64(), ids.next_u64());
        out.clear();
        use std::fmt::Write;
        let _ = write!(out, "{a:016x}{b:016x}");
    }

    /// The whole answer to a client refused at accept (over its per-IP
    /// limit): a 429 with a fresh request id.
    pub fn refusal(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let mut id = String::new();
        self.new_request_id(&mut id);
        h1::respond::error(&mut out, 429, &id, true);
        out
    }
}

/// Serve one accepted client connection to the end.
pub async fn handle(
    l: Rc<HttpProxy>,
    client: std::net::TcpStream,
    peer: SocketAddr,
    ticket: Box<ConnTicket>,
) {
    let client = match Stream::from_std(client) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(listener = %l.cfg.name, %peer, "cannot register client socket: {e}");
            return;
        }
    };
    exchange::serve(&l, client, peer, &ticket, None).await;
}

/// Serve a connection an SNI router read the start of (`early`: its PROXY
/// addresses and the ClientHello, replayed into the handshake).
pub async fn handed(
    l: Rc<HttpProxy>,
    client: Stream,
    peer: SocketAddr,
    ticket: Box<ConnTicket>,
    early: crate::proxy::early::Early,
) {
    exchange::serve(&l, client, peer, &ticket, Some(early)).await;
}
