//! One client connection: the keep-alive loop of exchanges, each running
//! the request phases, the forward step and the response in a fixed order,
//! and the one place a [`ProxyError`] becomes an answer.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{
    conn::{Conn, LogFields, Next},
    errors::{Kind, ProxyError},
    forward,
    h1::{
        body::timed_write,
        client::MAX_RESPONSE_HEAD,
        codec::{Request, Response},
        respond,
        server::{self, HeadRead, HeadWait},
    },
    phases, HttpProxy,
};
use crate::{
    io::{rbuf::RBuf, stream::Stream},
    listen::ticket::ConnTicket,
    proxy::{early, handshake},
};

/// First size of a connection's read buffers; they grow up to
/// [`BUF_MAX`] (or the head limit) only when a head or a burst needs it.
const BUF_INITIAL: usize = 4096;
const BUF_MAX: usize = 64 * 1024;

/// Serve one client connection to the end. `pre`: its PROXY header and
/// first bytes, when an SNI router read them already.
pub(super) async fn serve(
    l: &HttpProxy,
    client: Stream,
    peer: SocketAddr,
    ticket: &ConnTicket,
    pre: Option<early::Early>,
) {
    // Behind a front balancer: the client's real address from its PROXY header.
    let pre = match pre {
        Some(p) => Some(p),
        None => early::read(&client, &l.cfg, peer).await,
    };
    let Some(mut early) = pre else {
        return;
    };
    let client = match (&l.tls, &l.cfg.tls) {
        (Some(tls), Some(t)) => {
            let site = handshake::Site {
                listener: &l.cfg.name,
                peer,
                metrics: &l.metrics.listeners[l.li].tls,
                timeout: t.handshake_timeout,
                http: true,
            };
            match handshake::terminate(&client, &mut early.bytes, tls, site).await {
                Some(conn) => client.into_tls(conn),
                None => return,
            }
        }
        _ => client,
    };
    // Trust is a property of the hop we talk to, not of the address a
    // PROXY header claims.
    let trusted = l.cfg.trusted_proxies.iter().any(|c| c.contains(peer.ip()));
    let local_port = early.origin.map(|(_, dst)| dst.port()).unwrap_or(l.port);
    let peer = early.origin.map_or(peer, |(src, _)| src);
    let head_max = l.http.max_header_size + 1;
    let mut from_client = RBuf::new(BUF_INITIAL, BUF_MAX.max(head_max));
    from_client.extend(&early.bytes);
    // The hello buffer of an SNI hand-over is not kept for the connection.
    early.bytes = Vec::new();
    let tls = if l.access.is_some() {
        client.as_tls().map(|t| t.info())
    } else {
        None
    };
    let tls_lines = match client.as_tls() {
        Some(t) if l.cfg.tls.as_ref().is_some_and(|t| t.headers) => t.header_lines(),
        _ => Vec::new(),
    };
    // HTTP/2: agreed by ALPN, or (cleartext) the client's first bytes are
    // the connection preface.
    let h2 = match client.as_tls() {
        Some(t) => t.alpn_is(b"h2"),
        None => match sniff_preface(
            &client,
            &mut from_client,
            &HeadWait {
                idle: l.http.header_timeout,
                header_timeout: l.http.header_timeout,
                limits: &l.limits,
                drain: ticket.drain(),
            },
        )
        .await
        {
            Some(h2) => h2,
            None => return,
        },
    };
    if h2 {
        let pre = bytes::Bytes::copy_from_slice(from_client.data());
        let tls = tls.or_else(|| client.as_tls().map(|t| t.info()));
        let handover = super::h2::Handover {
            peer,
            trusted,
            local_port,
            tls,
            tls_lines,
        };
        super::h2::serve(l, client, pre, handover, ticket).await;
        return;
    }
    let mut conn = Conn {
        l,
        client,
        peer,
        ip: peer.ip().to_string(),
        ip_key: crate::limits::client_key(peer.ip(), l.cfg.ipv6_prefix),
        from_client,
        from_backend: RBuf::new(BUF_INITIAL, BUF_MAX.max(MAX_RESPONSE_HEAD)),
        request_head: Vec::with_capacity(1024),
        response_head: Vec::with_capacity(1024),
        req: Request::default(),
        resp: Response::default(),
        host: String::new(),
        path: Vec::new(),
        path_normalized: false,
        id: String::new(),
        ticket,
        served: 0,
        route_idx: l.routes.len(),
        bytes_out: 0,
        lf: LogFields::default(),
        trusted,
        local_port,
        tls,
        tls_lines,
    };
    conn.run().await;
    // TLS: end with a close_notify, so the client can tell the end from a
    // truncation (a lingering close sent it already; a second is a no-op).
    if conn.client.as_tls().is_some() {
        let _ = conn.client.close_write(Duration::from_millis(500)).await;
    }
}

/// Read until the client's first bytes are, or cannot be, the HTTP/2
/// preface: `Some(true)` for h2c with prior knowledge, `Some(false)` for
/// anything else (HTTP/1.1 parses what was read), `None`: the client left
/// or sent nothing. The first wait is the HTTP/1.1 one (a drain keeps a new
/// connection until its first request, as it does an idle one).
async fn sniff_preface(client: &Stream, buf: &mut RBuf, w: &HeadWait<'_>) -> Option<bool> {
    let preface = super::h2::PREFACE;
    if buf.is_empty() && !server::wait_for_request(client, w).await {
        return None;
    }
    let deadline = Instant::now() + w.header_timeout;
    loop {
        let data = buf.data();
        let n = data.len().min(preface.len());
        if data[..n] != preface[..n] {
            return Some(false);
        }
        if n == preface.len() {
            return Some(true);
        }
        match buf.fill_until(client, deadline).await {
            Ok(0) => return None,
            Ok(_) => {}
            // Nothing read: the HTTP/1.1 path's idle close; a partial
            // preface there answers 408 or 400.
            Err(_) if buf.is_empty() => return None,
            Err(_) => return Some(false),
        }
    }
}

impl Conn<'_> {
    async fn run(&mut self) {
        loop {
            if self.from_client.is_empty() {
                self.between_requests();
            }
            let http = &self.l.http;
            let wait = HeadWait {
                idle: if self.served == 0 {
                    http.header_timeout
                } else {
                    http.keepalive_timeout
                },
                header_timeout: http.header_timeout,
                limits: &self.l.limits,
                drain: self.ticket.drain(),
            };
            match server::read_head(&self.client, &mut self.from_client, &mut self.req, &wait).await
            {
                HeadRead::Ready => {}
                HeadRead::Gone => return,
                HeadRead::Refuse(kind) => {
                    self.l.new_request_id(&mut self.id);
                    self.route_idx = self.l.routes.len();
                    self.lf = LogFields::default();
                    self.answer(kind.into(), Instant::now()).await;
                    return;
                }
            }
            self.served += 1;
            if self.exchange().await == Next::Close {
                return;
            }
        }
    }

    /// Between requests: give back what a burst grew.
    fn between_requests(&mut self) {
        self.from_client.shrink(BUF_INITIAL);
        self.from_backend.shrink(BUF_INITIAL);
        for v in [&mut self.request_head, &mut self.response_head] {
            if v.capacity() > 4 * BUF_INITIAL {
                *v = Vec::with_capacity(1024);
            }
        }
        // A long normalized path is not kept by an idle connection either.
        if self.path.capacity() > BUF_INITIAL {
            self.path = Vec::new();
        }
    }

    /// One request/response exchange; the head is parsed in `self.req`.
    async fn exchange(&mut self) -> Next {
        let started = Instant::now();
        match self.try_exchange(started).await {
            Ok(next) => next,
            Err(e) => self.answer(e, started).await,
        }
    }

    async fn try_exchange(&mut self, started: Instant) -> Result<Next, ProxyError> {
        let l = self.l;
        phases::begin(self);
        phases::request_id(self);
        let route_idx = phases::route(self)?;
        let route = &l.routes[route_idx];
        phases::limits(self, route_idx)?;
        // A route has an upstream or its own answer (the config sees to it).
        let up = match (route.up.as_deref(), route.cfg.answer.as_deref()) {
            (Some(up), _) => up,
            (None, Some(a)) => return self.own_answer(route, a, started).await,
            (None, None) => return Err(Kind::NoRoute.into()),
        };
        let mut plan = phases::rewrite(self, route, up)?;
        super::mirror::maybe(l, route_idx, &plan, &self.request_head);
        let (upstream, inflight) = forward::forward(self, up, &mut plan).await?;
        super::response::respond(self, route_idx, up, upstream, inflight, &mut plan, started).await
    }

    /// The one place a failed request is answered: ringlb's own JSON error
    /// (or nothing when the client is gone), logged once, then a lingering
    /// close unless the framing allows the next request.
    async fn answer(&mut self, e: ProxyError, started: Instant) -> Next {
        let l = self.l;
        match e.backend {
            Some(b) if e.is_warning() => {
                tracing::warn!(listener = %l.cfg.name, peer = %self.peer, request_id = %self.id, backend = %b, side = ?e.side(), reason = e.reason(), "{e}")
            }
            _ => {
                tracing::debug!(listener = %l.cfg.name, peer = %self.peer, request_id = %self.id, backend = ?e.backend, side = ?e.side(), reason = e.reason(), "{e}")
            }
        }
        let Some(status) = e.status() else {
            return Next::Close;
        };
        let close = !e.keep_alive;
        self.response_head.clear();
        respond::error_with(
            &mut self.response_head,
            status,
            &self.id,
            close,
            e.retry_after(),
        );
        self.bytes_out = self.response_head.len() as u64;
        self.log(status, e.backend, started);
        let sent = timed_write(&self.client, &self.response_head, &[], l.http.body_timeout).await;
        if close {
            if sent.is_ok() {
                server::linger(&self.client, &mut self.from_client).await;
            }
            Next::Close
        } else {
            Next::KeepAlive
        }
    }
}
