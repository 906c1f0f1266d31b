//! L7: an HTTP/1.1 reverse proxy on one client connection.
//!
//! The keep-alive loop: read a head (deadline `header_timeout`) -> parse and
//! validate framing ([`codec`]) -> route ([`router`]) -> pick a backend ->
//! take a pooled keep-alive connection or connect -> send the rewritten head
//! ([`rewrite`]) and stream the body -> read the response head (deadline
//! `response_timeout`) -> stream the response body -> return the backend
//! connection to the pool when it can carry another request -> next
//! request. A `101 Switching Protocols` turns both connections into an L4
//! tunnel on the same relay as tcp listeners.
//!
//! Bodies are never buffered whole: each read is forwarded before the next.
//! Sockets are nonblocking; reads wait on readiness (an io_uring PollAdd
//! that holds no buffer) and every read and write has a deadline, so a
//! timeout only ever drops a readiness wait, never bytes.

pub mod h1;
pub mod router;

use std::{
    cell::RefCell,
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    rc::Rc,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use futures_util::future::{select, Either};
use monoio::net::TcpStream;

use self::{
    h1::{
        chunked::Chunked,
        codec::{self, Framing, HttpError, Limits, Request, Response},
        respond,
        rewrite::{self, RequestCtx, ResponseCtx},
    },
    router::Router,
};
use crate::{
    backends::{self, NoPick},
    balancer::{hash_ip, hash_key, ip_octets, rng::WyRand, Algorithm},
    config::{HashKey, HttpConfig, ListenerConfig, RateKey, RouteConfig},
    io::{
        pools::{PipeLease, Pools},
        rbuf::RBuf,
        relay::{self, Counts},
    },
    limits::{RateLimiter, RetryAfter},
    listen::ticket::ConnTicket,
    metrics::{
        access::{self, AccessLog},
        WorkerMetrics,
    },
    sys,
    upstream::replica::{InFlight, UpstreamRt},
};

/// First size of a connection's read buffers; they grow up to
/// [`BUF_MAX`] (or the head limit) only when a head or a burst needs it.
const BUF_INITIAL: usize = 4096;
const BUF_MAX: usize = 64 * 1024;
/// A request body this small that arrived with its head goes out in the
/// same write as the head.
const COALESCE_BODY: usize = 16 * 1024;
/// Most bytes of response head accepted from a backend.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

// === impl HttpListener ===

struct Route {
    cfg: RouteConfig,
    up: Rc<UpstreamRt>,
}

/// One http listener as one worker sees it.
pub struct HttpListener {
    pub cfg: ListenerConfig,
    http: HttpConfig,
    limits: Limits,
    router: Router,
    routes: Vec<Route>,
    pools: Rc<Pools>,
    ids: RefCell<WyRand>,
    /// Per route: the process-wide token buckets.
    rate_limits: Vec<Option<Arc<RateLimiter>>>,
    metrics: Arc<WorkerMetrics>,
    /// This listener's index in the config (and in the metrics).
    li: usize,
    access: Option<AccessLog>,
}

impl HttpListener {
    /// # Errors
    /// Two routes with the same host and prefix (config validation catches it first).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &ListenerConfig,
        upstreams: &[Rc<UpstreamRt>],
        pools: Rc<Pools>,
        worker: usize,
        rate_limits: Vec<Option<Arc<RateLimiter>>>,
        metrics: Arc<WorkerMetrics>,
        li: usize,
        access: Option<AccessLog>,
    ) -> Result<HttpListener, String> {
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
            let up = upstreams
                .get(r.upstream)
                .ok_or_else(|| "route names an unknown upstream".to_string())?;
            routes.push(Route {
                cfg: r.clone(),
                up: Rc::clone(up),
            });
        }
        Ok(HttpListener {
            cfg: cfg.clone(),
            limits: Limits {
                max_request_line: http.max_request_line,
                max_header_size: http.max_header_size,
                max_headers: http.max_headers,
            },
            http,
            router,
            routes,
            pools,
            ids: RefCell::new(WyRand::new(crate::balancer::rng::seed_for_worker(worker))),
            rate_limits,
            metrics,
            li,
            access,
        })
    }

    pub fn new_request_id(&self, out: &mut String) {
        let mut ids = self.ids.borrow_mut();
        let (a, b) = (ids.next_u64(), ids.next_u64());
        out.clear();
        use std::fmt::Write;
        let _ = write!(out, "{a:016x}{b:016x}");
    }
}

/// Serve one accepted client connection to the end.
pub async fn handle(
    l: Rc<HttpListener>,
    client: std::net::TcpStream,
    peer: SocketAddr,
    ticket: Box<ConnTicket>,
) {
    let client = match TcpStream::from_std(client) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(listener = %l.cfg.name, %peer, "cannot register client socket: {e}");
            return;
        }
    };
    // Behind a front balancer: the client's real address from its PROXY header.
    let Some((origin, early)) = super::tcp::accept_proxy_header(&client, &l.cfg, peer).await else {
        return;
    };
    let peer = origin.map_or(peer, |(src, _)| src);
    let head_max = l.http.max_header_size + 1;
    let mut conn = Conn {
        l: &l,
        client,
        peer,
        ip: peer.ip().to_string(),
        ip_key: ip_octets(peer.ip()),
        cbuf: RBuf::new(BUF_INITIAL, BUF_MAX.max(head_max)),
        ubuf: RBuf::new(BUF_INITIAL, BUF_MAX.max(MAX_RESPONSE_HEAD)),
        wbuf: Vec::with_capacity(1024),
        hbuf: Vec::with_capacity(1024),
        req: Request::default(),
        resp: Response::default(),
        host: String::new(),
        id: String::new(),
        ticket: &ticket,
        served: 0,
        route_idx: l.routes.len(),
        bytes_out: 0,
        lf: LogFields::default(),
    };
    conn.cbuf.extend(&early);
    conn.serve().await;
}

/// What happens to the client connection after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

enum HeadRead {
    Ready,
    /// EOF, reset, keep-alive timeout or shutdown before a request started.
    Gone,
    /// Answer with this status and close.
    Refuse(u16, &'static str),
}

/// Why moving a body stopped short.
#[derive(Debug)]
enum BodyError {
    /// The sender closed or failed mid-body, or went quiet for body_timeout.
    Source(io::Error),
    /// The receiver failed or stopped reading for body_timeout.
    Dest(io::Error),
    /// Malformed chunked framing from the sender.
    Chunk(&'static str),
    /// A chunked request body passed max_body_size.
    TooLarge,
}

/// One client connection.
struct Conn<'a> {
    l: &'a HttpListener,
    client: TcpStream,
    peer: SocketAddr,
    ip: String,
    /// The client address's octets (rate-limit key), computed once.
    ip_key: ([u8; 16], usize),
    /// Bytes from the client not yet handled (pipelined requests stay here).
    cbuf: RBuf,
    /// Bytes from the current backend not yet handled.
    ubuf: RBuf,
    /// The request head for the backend (plus a small body).
    wbuf: Vec<u8>,
    /// The response head for the client.
    hbuf: Vec<u8>,
    req: Request,
    resp: Response,
    host: String,
    id: String,
    ticket: &'a ConnTicket,
    served: u64,
    /// The current request's route (`routes.len()` = none), for metrics.
    route_idx: usize,
    /// Bytes sent to the client for the current request.
    bytes_out: u64,
    /// Request fields kept for the access log (only filled when it is on).
    lf: LogFields,
}

#[derive(Default)]
struct LogFields {
    method: String,
    path: String,
    user_agent: String,
    referer: String,
    minor: u8,
}

impl Conn<'_> {
    async fn serve(&mut self) {
        loop {
            match self.read_head().await {
                HeadRead::Ready => {}
                HeadRead::Gone => return,
                HeadRead::Refuse(status, why) => {
                    self.l.new_request_id(&mut self.id);
                    tracing::debug!(listener = %self.l.cfg.name, peer = %self.peer, status, request_id = %self.id, "request refused: {why}");
                    self.route_idx = self.l.routes.len();
                    self.lf = LogFields::default();
                    self.fail(status, None, Instant::now(), true).await;
                    return;
                }
            }
            self.served += 1;
            if self.exchange().await == Next::Close {
                return;
            }
        }
    }

    /// Wait for the next request head and parse it.
    async fn read_head(&mut self) -> HeadRead {
        let http = &self.l.http;
        if self.cbuf.is_empty() {
            // Between requests: drop what a burst grew, then wait for a byte,
            // the keep-alive timeout or shutdown.
            self.cbuf.shrink(BUF_INITIAL);
            self.ubuf.shrink(BUF_INITIAL);
            for v in [&mut self.wbuf, &mut self.hbuf] {
                if v.capacity() > 4 * BUF_INITIAL {
                    *v = Vec::with_capacity(1024);
                }
            }
            let idle = if self.served == 0 {
                http.header_timeout
            } else {
                http.keepalive_timeout
            };
            let drain = self.ticket.drain();
            if drain.is_stopping() {
                return HeadRead::Gone;
            }
            let readable = std::pin::pin!(self.client.readable(false));
            let stop = std::pin::pin!(drain.stopped());
            match monoio::time::timeout(idle, select(readable, stop)).await {
                Ok(Either::Left((Ok(()), _))) => {}
                _ => return HeadRead::Gone,
            }
        }
        let deadline = Instant::now() + http.header_timeout;
        loop {
            if !self.cbuf.is_empty() {
                match codec::parse_request(self.cbuf.data(), &self.l.limits, &mut self.req) {
                    Ok(true) => return HeadRead::Ready,
                    Ok(false) => {}
                    Err(e) => return HeadRead::Refuse(respond::status_of(e), why(e)),
                }
            }
            match self.cbuf.fill_until(&self.client, deadline).await {
                Ok(0) => return HeadRead::Gone,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return if self.cbuf.is_empty() {
                        HeadRead::Gone
                    } else {
                        HeadRead::Refuse(408, "request head not received in time")
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                    return HeadRead::Refuse(431, "request head too large")
                }
                Err(_) => return HeadRead::Gone,
            }
        }
    }

    /// Answer with ringlb's own error response, and log it.
    async fn fail(
        &mut self,
        status: u16,
        backend: Option<SocketAddr>,
        started: Instant,
        close: bool,
    ) {
        self.fail_with(status, backend, started, close, None).await;
    }

    /// [`Conn::fail`] with a `Retry-After` field.
    async fn fail_with(
        &mut self,
        status: u16,
        backend: Option<SocketAddr>,
        started: Instant,
        close: bool,
        retry_after: Option<u64>,
    ) {
        self.hbuf.clear();
        respond::error_with(&mut self.hbuf, status, &self.id, close, retry_after);
        self.bytes_out = self.hbuf.len() as u64;
        self.log(status, backend, started);
        let sent = timed_write(&self.client, &self.hbuf, &[], self.l.http.body_timeout).await;
        if close && sent.is_ok() {
            self.linger().await;
        }
    }

    /// Before closing after an error: send FIN, then read and discard what
    /// the client is still sending for a moment. Closing a socket with
    /// unread input sends a reset, which can destroy the answer on its way.
    async fn linger(&mut self) {
        let _ = sys::shutdown_write(self.client.as_raw_fd());
        let deadline = Instant::now() + LINGER;
        let mut drained = 0;
        while drained < LINGER_BYTES {
            self.cbuf.clear();
            match self.cbuf.fill_until(&self.client, deadline).await {
                Ok(n) if n > 0 => drained += n,
                _ => break,
            }
        }
        self.cbuf.clear();
    }

    /// One request/response exchange; the head is parsed in `self.req`.
    async fn exchange(&mut self) -> Next {
        let started = Instant::now();
        let l = self.l;
        let http = &l.http;
        let data = self.cbuf.data();
        let req = &self.req;
        let lm = &l.metrics.listeners[l.li];
        lm.bytes_in.add(req.head_len as u64);
        self.route_idx = l.routes.len();
        self.bytes_out = 0;
        if l.access.is_some() {
            // Reused strings: no allocation per request once they have grown.
            let set = |dst: &mut String, v: Option<&[u8]>| {
                dst.clear();
                if let Some(v) = v {
                    dst.push_str(&String::from_utf8_lossy(v));
                }
            };
            set(&mut self.lf.method, Some(req.method.get(data)));
            set(&mut self.lf.path, Some(req.path.get(data)));
            set(&mut self.lf.user_agent, req.header(data, b"user-agent"));
            set(&mut self.lf.referer, req.header(data, b"referer"));
            self.lf.minor = req.minor;
        }

        // Request id: the client's when acceptable, else a fresh one.
        match req.request_id {
            Some(s) => {
                self.id.clear();
                self.id
                    .push_str(std::str::from_utf8(s.get(data)).unwrap_or("invalid"));
            }
            None => l.new_request_id(&mut self.id),
        }

        // Route.
        match req.host {
            Some(h) => codec::host_key(h.get(data), &mut self.host),
            None => self.host.clear(),
        }
        let path = req.path.get(data);
        let lookup: &[u8] = if path.is_empty() || path == b"*" {
            b"/"
        } else {
            path
        };
        let Some(route_idx) = l.router.find(&self.host, lookup) else {
            let keep = req.keeps_alive_without_body();
            self.cbuf.consume(self.req.head_len);
            self.fail(404, None, started, !keep).await;
            return if keep { Next::KeepAlive } else { Next::Close };
        };
        let route = &l.routes[route_idx];
        self.route_idx = route_idx;
        if let Some(Some(rl)) = l.rate_limits.get(route_idx) {
            let (ip, n) = self.ip_key;
            let key: &[u8] = match &rl.cfg.key {
                RateKey::Route => b"",
                RateKey::ClientIp => &ip[..n],
                RateKey::Header(name) => req.header(data, name.as_bytes()).unwrap_or(&ip[..n]),
            };
            if let Err(RetryAfter(secs)) = rl.take(key) {
                let keep = req.keeps_alive_without_body();
                self.cbuf.consume(self.req.head_len);
                lm.routes[route_idx].rate_limited.inc();
                self.fail_with(429, None, started, !keep, Some(secs)).await;
                return if keep { Next::KeepAlive } else { Next::Close };
            }
        }
        let max_body = route.cfg.max_body_size;
        if let Framing::Length(n) = req.framing {
            if max_body > 0 && n > max_body {
                self.fail(413, None, started, true).await;
                return Next::Close;
            }
        }

        // Upgrade only to protocols the route allows (never h2c: config refuses it).
        let upgrade = match req.upgrade {
            Some(u) if req.conn.upgrade && req.method.get(data) == b"GET" => {
                let value = codec::trim(u.get(data));
                let proto = value.split(|&b| b == b'/').next().unwrap_or(value);
                let allowed = route
                    .cfg
                    .upgrade
                    .iter()
                    .any(|p| p.as_bytes().eq_ignore_ascii_case(proto));
                allowed.then_some(value)
            }
            _ => None,
        };

        // Path after strip_prefix (a `/` goes in front when it lost its own).
        let (fwd_path, lead_slash): (&[u8], bool) = if path.is_empty() {
            (b"/", false)
        } else if route.cfg.strip_prefix && path.starts_with(route.cfg.path_prefix.as_bytes()) {
            let rest = &path[route.cfg.path_prefix.len()..];
            (rest, rest.first() != Some(&b'/'))
        } else {
            (path, false)
        };

        let up = &route.up;
        let key = if up.cfg.balance == Algorithm::ConsistentHash {
            match &up.cfg.hash_key {
                HashKey::ClientIp => hash_ip(self.peer.ip()),
                HashKey::Uri => hash_key(path),
                HashKey::Header(name) => req
                    .header(data, name.as_bytes())
                    .map_or_else(|| hash_ip(self.peer.ip()), hash_key),
            }
        } else {
            0
        };

        rewrite::request_head(
            &mut self.wbuf,
            data,
            req,
            &RequestCtx {
                path: fwd_path,
                lead_slash,
                client_ip: &self.ip,
                request_id: &self.id,
                upgrade,
                ops: &route.cfg.request_headers,
            },
        );
        let upgrading = upgrade.is_some();
        // An HTTP/1.0 request may come without Host; HTTP/1.1 backends need
        // one: the backend's address goes in once it is picked.
        let head_end = self.wbuf.len();
        let needs_host = req.host.is_none();
        let framing = req.framing;
        let expect_continue = req.expect_continue && req.minor == 1;
        let idempotent = req.idempotent;
        let client_minor = req.minor;
        let client_close = req.conn.close || (req.minor == 0 && !req.conn.keep_alive);
        let is_head = req.is_head;
        self.cbuf.consume(self.req.head_len);

        // A small Content-Length body already here goes out with the head.
        let mut body_sent = framing == Framing::None;
        if let Framing::Length(n) = framing {
            if n as usize <= COALESCE_BODY && self.cbuf.len() as u64 >= n {
                self.wbuf.extend_from_slice(&self.cbuf.data()[..n as usize]);
                self.cbuf.consume(n as usize);
                lm.bytes_in.add(n);
                body_sent = true;
            }
        }
        // Only a request whose every byte we still hold can be sent again.
        let replayable = idempotent && body_sent;

        // Pick, connect or reuse, send; retry as allowed.
        let tries = l.cfg.connect_tries as usize;
        let mut tried: Vec<usize> = Vec::new();
        let mut allow_pooled = true;
        let mut continue_sent = false;
        let mut attempts = 0;
        let mut queued_until: Option<Instant> = None;
        let mut queue_wait = Duration::ZERO;
        let (upstream, idx, _inflight) = loop {
            attempts += 1;
            if tried.len() >= tries.min(up.addrs.len()) || attempts > tries + 2 {
                self.fail(502, None, started, true).await;
                return Next::Close;
            }
            let picked = backends::pick(&mut up.balancer.borrow_mut(), &up.state, key, &tried);
            let (idx, slot) = match picked {
                Ok(p) => p,
                // Every backend is at max_connections: wait in the bounded queue.
                Err(NoPick { full: true }) if tried.is_empty() && up.cfg.queue > 0 => {
                    let deadline = match queued_until {
                        Some(d) => d,
                        None => {
                            let q = &up.state.queued;
                            if q.fetch_add(1, Ordering::Relaxed) >= up.cfg.queue {
                                q.fetch_sub(1, Ordering::Relaxed);
                                self.fail(503, None, started, true).await;
                                return Next::Close;
                            }
                            let d = Instant::now() + up.cfg.queue_timeout;
                            queued_until = Some(d);
                            d
                        }
                    };
                    if Instant::now() >= deadline {
                        up.state.queued.fetch_sub(1, Ordering::Relaxed);
                        self.fail(503, None, started, true).await;
                        return Next::Close;
                    }
                    // Slots free on any worker; look again shortly (backing
                    // off, so a long queue costs few picks per second).
                    queue_wait = (queue_wait * 2).clamp(QUEUE_POLL, QUEUE_POLL_MAX);
                    monoio::time::sleep(queue_wait).await;
                    attempts -= 1;
                    continue;
                }
                Err(_) => {
                    if queued_until.take().is_some() {
                        up.state.queued.fetch_sub(1, Ordering::Relaxed);
                    }
                    let status = if tried.is_empty() { 503 } else { 502 };
                    self.fail(status, None, started, true).await;
                    return Next::Close;
                }
            };
            if queued_until.take().is_some() {
                up.state.queued.fetch_sub(1, Ordering::Relaxed);
            }
            let pooled = if allow_pooled {
                up.take_idle(idx)
            } else {
                None
            };
            let reused = pooled.is_some();
            let stream = match pooled {
                Some(s) => s,
                None => match timed_connect(up, idx, l.cfg.connect_timeout, &l.metrics).await {
                    Ok(s) => s,
                    Err(e) => {
                        lm.retries.inc();
                        up.state.report_failure(idx, &e.to_string());
                        tracing::warn!(listener = %l.cfg.name, peer = %self.peer, request_id = %self.id, "{e}; trying next backend");
                        tried.push(idx);
                        continue;
                    }
                },
            };
            let inflight = InFlight::new(up, idx, slot);
            l.metrics.upstreams[up.ui].backends[idx].requests.inc();
            if expect_continue && !body_sent && !continue_sent {
                continue_sent = true;
                if timed_write(
                    &self.client,
                    b"HTTP/1.1 100 Continue\r\n\r\n",
                    &[],
                    http.body_timeout,
                )
                .await
                .is_err()
                {
                    return Next::Close;
                }
            }
            let sent = if needs_host && head_end >= 2 {
                let host = format!("Host: {}\r\n\r\n", up.addrs[idx]);
                let (head, body) = self.wbuf.split_at(head_end);
                let mut with_host = Vec::with_capacity(self.wbuf.len() + host.len());
                with_host.extend_from_slice(&head[..head.len() - 2]);
                with_host.extend_from_slice(host.as_bytes());
                with_host.extend_from_slice(body);
                timed_write(&stream, &with_host, &[], http.body_timeout).await
            } else {
                timed_write(&stream, &self.wbuf, &[], http.body_timeout).await
            };
            if let Err(e) = sent {
                if reused && replayable {
                    lm.retries.inc();
                    allow_pooled = false;
                    continue;
                }
                tracing::debug!(listener = %l.cfg.name, request_id = %self.id, "sending the request failed: {e}");
                self.fail(502, Some(up.addrs[idx]), started, true).await;
                return Next::Close;
            }
            if !body_sent {
                let limit = if max_body > 0 { max_body } else { u64::MAX };
                match forward_body(
                    &self.client,
                    &mut self.cbuf,
                    &stream,
                    framing,
                    false,
                    limit,
                    http.body_timeout,
                    &[],
                    &l.pools,
                )
                .await
                {
                    Ok(n) => {
                        lm.bytes_in.add(n);
                        body_sent = true;
                    }
                    Err(BodyError::Source(e)) => {
                        tracing::debug!(listener = %l.cfg.name, request_id = %self.id, "request body cut short: {e}");
                        return Next::Close;
                    }
                    Err(BodyError::TooLarge) => {
                        self.fail(413, Some(up.addrs[idx]), started, true).await;
                        return Next::Close;
                    }
                    Err(BodyError::Chunk(why)) => {
                        tracing::debug!(listener = %l.cfg.name, request_id = %self.id, "request body refused: {why}");
                        self.fail(400, Some(up.addrs[idx]), started, true).await;
                        return Next::Close;
                    }
                    Err(BodyError::Dest(e)) => {
                        tracing::debug!(listener = %l.cfg.name, request_id = %self.id, "backend stopped reading the body: {e}");
                        self.fail(502, Some(up.addrs[idx]), started, true).await;
                        return Next::Close;
                    }
                }
            }
            // Read the response head.
            self.ubuf.clear();
            let sent_at = Instant::now();
            let read = self.read_response_head(&stream, is_head).await;
            if read.is_ok() {
                l.metrics.upstreams[up.ui]
                    .response
                    .record(sent_at.elapsed());
            }
            match &read {
                Ok(()) if self.resp.status >= 500 => {
                    up.state.report_failure(idx, "5xx response");
                }
                Ok(()) => up.state.report_success(idx),
                Err(RespErr::Timeout) => up.state.report_failure(idx, "response timeout"),
                Err(RespErr::Bad(why)) => up.state.report_failure(idx, why),
                Err(RespErr::Gone(_)) if !(reused && replayable) => {
                    up.state.report_failure(idx, "closed without a response")
                }
                Err(_) => {}
            }
            match read {
                Ok(()) => break (stream, idx, inflight),
                Err(RespErr::Gone(e)) if self.ubuf.is_empty() && reused && replayable => {
                    tracing::debug!(listener = %l.cfg.name, request_id = %self.id, "pooled connection was closed by the backend ({e}); retrying on a new one");
                    lm.retries.inc();
                    allow_pooled = false;
                    continue;
                }
                Err(RespErr::Gone(e)) => {
                    tracing::warn!(listener = %l.cfg.name, request_id = %self.id, backend = %up.addrs[idx], "backend closed without a response: {e}");
                    self.fail(502, Some(up.addrs[idx]), started, true).await;
                    return Next::Close;
                }
                Err(RespErr::Timeout) => {
                    tracing::warn!(listener = %l.cfg.name, request_id = %self.id, backend = %up.addrs[idx], "no response within {:?}", http.response_timeout);
                    self.fail(504, Some(up.addrs[idx]), started, true).await;
                    return Next::Close;
                }
                Err(RespErr::Bad(why)) => {
                    tracing::warn!(listener = %l.cfg.name, request_id = %self.id, backend = %up.addrs[idx], "invalid response: {why}");
                    self.fail(502, Some(up.addrs[idx]), started, true).await;
                    return Next::Close;
                }
                Err(RespErr::Client) => return Next::Close,
            }
        };
        let backend = up.addrs[idx];

        // 101: become a tunnel (only when we asked for an upgrade).
        if self.resp.status == 101 {
            if !upgrading {
                self.fail(502, Some(backend), started, true).await;
                return Next::Close;
            }
            self.bytes_out = self.ubuf.len() as u64;
            self.log(101, Some(backend), started);
            // The 101 head as the backend sent it (its Connection/Upgrade
            // fields are for this hop too), and whatever followed it.
            if timed_write(&self.client, self.ubuf.data(), &[], http.body_timeout)
                .await
                .is_err()
            {
                return Next::Close;
            }
            if !self.cbuf.is_empty()
                && timed_write(&upstream, self.cbuf.data(), &[], http.body_timeout)
                    .await
                    .is_err()
            {
                return Next::Close;
            }
            let counts = Counts::default();
            let end = relay::relay(
                &self.client,
                &upstream,
                &l.pools,
                l.cfg.transfer,
                l.cfg.idle_timeout,
                &counts,
            )
            .await;
            lm.bytes_in.add(counts.up.get());
            lm.bytes_out.add(counts.down.get());
            tracing::debug!(listener = %l.cfg.name, request_id = %self.id, ?end, up = counts.up.get(), down = counts.down.get(), "tunnel closed");
            return Next::Close;
        }

        // The final response.
        let resp = &self.resp;
        let dechunk = client_minor == 0 && resp.framing == Framing::Chunked;
        let close = client_close
            || resp.framing == Framing::UntilClose
            || dechunk
            || self.ticket.drain().is_stopping();
        let status = resp.status;
        rewrite::response_head(
            &mut self.hbuf,
            self.ubuf.data(),
            resp,
            &ResponseCtx {
                close,
                keep_alive_1_0: client_minor == 0 && !close,
                dechunk,
                ops: &route.cfg.response_headers,
            },
        );
        let resp_framing = resp.framing;
        let backend_keeps = resp.minor == 1 && !resp.conn.close;
        self.ubuf.consume(resp.head_len);
        let moved = forward_body(
            &upstream,
            &mut self.ubuf,
            &self.client,
            resp_framing,
            dechunk,
            u64::MAX,
            http.body_timeout,
            &self.hbuf,
            &l.pools,
        )
        .await;
        self.bytes_out = self.hbuf.len() as u64 + moved.as_ref().map_or(0, |m| *m);
        self.log(status, Some(backend), started);
        match moved {
            Ok(_) => {
                if backend_keeps
                    && resp_framing != Framing::UntilClose
                    && body_sent
                    && self.ubuf.is_empty()
                {
                    up.put_idle(idx, upstream);
                }
                if close {
                    Next::Close
                } else {
                    Next::KeepAlive
                }
            }
            Err(e) => {
                tracing::debug!(listener = %l.cfg.name, request_id = %self.id, %backend, "response body cut short: {e:?}");
                Next::Close
            }
        }
    }

    /// Read the backend's response head into `self.resp`, relaying 1xx
    /// interim responses (but 101) to the client.
    async fn read_response_head(&mut self, up: &TcpStream, is_head: bool) -> Result<(), RespErr> {
        let http = &self.l.http;
        let deadline = Instant::now() + http.response_timeout;
        let mut first = true;
        loop {
            if !self.ubuf.is_empty() {
                match codec::parse_response(
                    self.ubuf.data(),
                    MAX_RESPONSE_HEAD,
                    is_head,
                    &mut self.resp,
                ) {
                    Ok(true) => {
                        let s = self.resp.status;
                        if s >= 200 || s == 101 {
                            return Ok(());
                        }
                        // Interim: relay to HTTP/1.1 clients (not 100: ringlb
                        // answers Expect itself and does not forward it).
                        let n = self.resp.head_len;
                        if s != 100
                            && self.req.minor == 1
                            && timed_write(
                                &self.client,
                                &self.ubuf.data()[..n],
                                &[],
                                http.body_timeout,
                            )
                            .await
                            .is_err()
                        {
                            return Err(RespErr::Client);
                        }
                        self.ubuf.consume(n);
                        continue;
                    }
                    Ok(false) => {}
                    Err(why) => return Err(RespErr::Bad(why)),
                }
            }
            let read = if first {
                first = false;
                self.ubuf.fill_after_wait(up, deadline).await
            } else {
                self.ubuf.fill_until(up, deadline).await
            };
            match read {
                Ok(0) => {
                    return Err(RespErr::Gone(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed",
                    )))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(RespErr::Timeout),
                Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                    return Err(RespErr::Bad("response head too large"))
                }
                Err(e) => return Err(RespErr::Gone(e)),
            }
        }
    }

    /// Account for one answered request: metrics, the access log, and a
    /// debug line.
    fn log(&self, status: u16, backend: Option<SocketAddr>, started: Instant) {
        let l = self.l;
        let lm = &l.metrics.listeners[l.li];
        let took = started.elapsed();
        if let Some(r) = lm.routes.get(self.route_idx) {
            r.status(status);
        }
        lm.request_duration.record(took);
        lm.bytes_out.add(self.bytes_out);
        if let Some(a) = &l.access {
            a.send(access::http_line(
                a.format,
                &access::HttpEntry {
                    listener: &l.cfg.name,
                    client: self.peer,
                    method: &self.lf.method,
                    path: &self.lf.path,
                    minor: self.lf.minor,
                    status,
                    bytes_sent: self.bytes_out,
                    referer: &self.lf.referer,
                    user_agent: &self.lf.user_agent,
                    request_id: &self.id,
                    backend,
                    duration: took,
                },
            ));
        }
        tracing::debug!(
            target: "ringlb::access",
            listener = %self.l.cfg.name,
            peer = %self.peer,
            status,
            backend = ?backend,
            request_id = %self.id,
            micros = took.as_micros() as u64,
        );
    }
}

enum RespErr {
    /// Closed or reset before a complete head.
    Gone(io::Error),
    Timeout,
    Bad(&'static str),
    /// The client went away while we relayed an interim response.
    Client,
}

fn why(e: HttpError) -> &'static str {
    match e {
        HttpError::Bad(w) => w,
        HttpError::UriTooLong => "request line too long",
        HttpError::HeadersTooLarge => "header section too large",
        HttpError::MethodNotAllowed => "CONNECT is not served",
    }
}

/// Connect to backend `idx`, recording the connect time.
async fn timed_connect(
    up: &UpstreamRt,
    idx: usize,
    timeout: Duration,
    m: &WorkerMetrics,
) -> Result<TcpStream, crate::io::connect::ConnectError> {
    let t = Instant::now();
    let r = crate::io::connect::connect(up.addrs[idx], timeout).await;
    if r.is_ok() {
        m.upstreams[up.ui].connect.record(t.elapsed());
    }
    r
}

/// How long, and how much, an erroring connection is drained before close.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;

/// How often a queued request looks for a free backend slot.
const QUEUE_POLL: Duration = Duration::from_millis(2);
const QUEUE_POLL_MAX: Duration = Duration::from_millis(20);

/// Write `a` then `b` (one vectored send), each wait for room at most `limit`.
async fn timed_write(dst: &TcpStream, a: &[u8], b: &[u8], limit: Duration) -> io::Result<()> {
    relay::write_all_until(dst, a, b, Some(limit)).await
}

/// Move one message body from `src` (bytes already read are in `sbuf`) to
/// `dst`. `head` is written first, in the same send as the first body bytes.
/// `dechunk`: send only chunk data (for HTTP/1.0 clients). `limit`: most
/// body bytes accepted (chunked; Content-Length was checked before).
/// Returns the body bytes moved.
#[allow(clippy::too_many_arguments)]
async fn forward_body(
    src: &TcpStream,
    sbuf: &mut RBuf,
    dst: &TcpStream,
    framing: Framing,
    dechunk: bool,
    limit: u64,
    timeout: Duration,
    head: &[u8],
    pools: &Pools,
) -> Result<u64, BodyError> {
    let mut head = head;
    let mut moved = 0u64;
    match framing {
        Framing::None => {
            if !head.is_empty() {
                timed_write(dst, head, &[], timeout)
                    .await
                    .map_err(BodyError::Dest)?;
            }
        }
        Framing::Length(n) => {
            let mut left = n;
            while left > 0 {
                if sbuf.is_empty() {
                    if left >= SPLICE_MIN {
                        // Bulk: what is left moves kernel-side through a pipe.
                        if let Some(lease) = pools.lease_pipe() {
                            if !head.is_empty() {
                                timed_write(dst, head, &[], timeout)
                                    .await
                                    .map_err(BodyError::Dest)?;
                                head = &[];
                            }
                            splice_exact(src, dst, left, lease, timeout).await?;
                            moved += left;
                            left = 0;
                            continue;
                        }
                    }
                    fill(src, sbuf, timeout).await?;
                }
                let take = (sbuf.len() as u64).min(left) as usize;
                timed_write(dst, head, &sbuf.data()[..take], timeout)
                    .await
                    .map_err(BodyError::Dest)?;
                head = &[];
                sbuf.consume(take);
                left -= take as u64;
                moved += take as u64;
            }
            if !head.is_empty() {
                timed_write(dst, head, &[], timeout)
                    .await
                    .map_err(BodyError::Dest)?;
            }
        }
        Framing::Chunked => {
            let mut scan = Chunked::new();
            while !scan.is_done() {
                if sbuf.is_empty() {
                    fill(src, sbuf, timeout).await?;
                }
                // Scan what is buffered; forward it in as few writes as possible.
                let data = sbuf.data();
                let mut at = 0;
                while at < data.len() && !scan.is_done() {
                    let step = scan.step(&data[at..]).map_err(|e| BodyError::Chunk(e.0))?;
                    if scan.data_total > limit {
                        return Err(BodyError::TooLarge);
                    }
                    if dechunk && step.data && step.len > 0 {
                        timed_write(dst, head, &data[at..at + step.len], timeout)
                            .await
                            .map_err(BodyError::Dest)?;
                        head = &[];
                    }
                    at += step.len;
                    if step.len == 0 {
                        break;
                    }
                }
                if !dechunk && at > 0 {
                    timed_write(dst, head, &data[..at], timeout)
                        .await
                        .map_err(BodyError::Dest)?;
                    head = &[];
                }
                sbuf.consume(at);
                moved = scan.data_total;
            }
            if !head.is_empty() {
                timed_write(dst, head, &[], timeout)
                    .await
                    .map_err(BodyError::Dest)?;
            }
        }
        Framing::UntilClose => {
            if !head.is_empty() || !sbuf.is_empty() {
                timed_write(dst, head, sbuf.data(), timeout)
                    .await
                    .map_err(BodyError::Dest)?;
                moved += sbuf.len() as u64;
                sbuf.clear();
            }
            loop {
                match sbuf.fill(src, timeout).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err(BodyError::Source(e)),
                }
                timed_write(dst, sbuf.data(), &[], timeout)
                    .await
                    .map_err(BodyError::Dest)?;
                moved += sbuf.len() as u64;
                sbuf.clear();
            }
            let _ = sys::shutdown_write(dst.as_raw_fd());
        }
    }
    Ok(moved)
}

/// A Content-Length body with at least this much left (and nothing
/// buffered) is spliced instead of copied.
const SPLICE_MIN: u64 = 16 * 1024;

/// Move exactly `left` bytes from `src` to `dst` through a leased pipe.
async fn splice_exact(
    src: &TcpStream,
    dst: &TcpStream,
    mut left: u64,
    mut lease: PipeLease<'_>,
    timeout: Duration,
) -> Result<(), BodyError> {
    let Some(pipe) = lease.pipe() else {
        return Err(BodyError::Source(io::ErrorKind::Other.into()));
    };
    let (pr, pw) = (pipe.read.as_raw_fd(), pipe.write.as_raw_fd());
    let sfd = src.as_raw_fd();
    let cap = pipe.capacity as u64;
    let mut result = Ok(());
    while left > 0 {
        let n = match sys::splice(sfd, pw, left.min(cap) as usize) {
            Ok(0) => {
                result = Err(BodyError::Source(io::ErrorKind::UnexpectedEof.into()));
                break;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match monoio::time::timeout(timeout, src.readable(false)).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => result = Err(BodyError::Source(e)),
                    Err(_) => result = Err(BodyError::Source(io::ErrorKind::TimedOut.into())),
                }
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                result = Err(BodyError::Source(e));
                break;
            }
        };
        left -= n as u64;
        if let Err(e) = relay::pipe_to(pr, dst, n, Some(timeout)).await {
            result = Err(BodyError::Dest(e));
            break;
        }
    }
    // A pipe left holding bytes is not returned to the pool.
    lease.set_clean(result.is_ok());
    result
}

/// Read more body bytes; EOF mid-body is an error.
async fn fill(src: &TcpStream, sbuf: &mut RBuf, timeout: Duration) -> Result<(), BodyError> {
    match sbuf.fill(src, timeout).await {
        Ok(0) => Err(BodyError::Source(io::ErrorKind::UnexpectedEof.into())),
        Ok(_) => Ok(()),
        Err(e) => Err(BodyError::Source(e)),
    }
}
