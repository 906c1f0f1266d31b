//! One HTTP/2 stream: the request phases (request id, route, rate limit,
//! body size, path rewriting), the forward step toward an HTTP/1.1
//! ([`super::to_h1`]) or HTTP/2 ([`super::to_h2`]) upstream, and the one
//! place a [`ProxyError`] becomes an answer: ringlb's JSON error with its
//! status, or for gRPC a Trailers-Only response with the mapped
//! `grpc-status`; once the response began, trailers (gRPC) or a
//! RST_STREAM.

use std::{
    cell::{Cell, RefCell},
    future::poll_fn,
    net::SocketAddr,
    pin::pin,
    time::Instant,
};

use bytes::Bytes;
use futures_util::future::{select, Either};
use h2::{server::SendResponse, RecvStream};
use http::{request::Parts, HeaderValue, Method, StatusCode};

use super::{
    super::{
        errors::{Kind, ProxyError},
        h1::{codec, fields, path, respond},
        own, phases, sticky,
    },
    ctx::{ConnCtx, Reply, Req, Trace},
    grpc,
    headers::Facts,
    to_h1, to_h2,
};
use crate::{
    balancer::{hash_ip, hash_key, Algorithm},
    config::HashKey,
    metrics::access,
    upstream::Replica,
};

/// How a stream ended, for the connection's abuse counters.
pub(super) struct Ended {
    /// The client reset it before its response began.
    pub reset_early: bool,
}

/// Serve one stream to its end.
pub(super) async fn serve(
    cx: &ConnCtx<'_>,
    req: http::Request<RecvStream>,
    respond: SendResponse<Bytes>,
) -> Ended {
    let started = Instant::now();
    let l = cx.l;
    l.metrics.listeners[l.li].h2.streams.inc();
    let (parts, body) = req.into_parts();
    let mut id = String::new();
    match parts.headers.get("x-request-id") {
        Some(v) if fields::valid_request_id(v.as_bytes()) => {
            id.push_str(std::str::from_utf8(v.as_bytes()).unwrap_or("invalid"))
        }
        _ => l.new_request_id(&mut id),
    }
    let reply = Reply {
        respond: RefCell::new(respond),
        body: RefCell::new(None),
        grpc: grpc::is_grpc(&parts.headers),
        status: Cell::new(0),
        bytes_out: Cell::new(0),
    };
    let trace = Trace::default();
    let deadline = if reply.grpc {
        grpc::timeout(&parts.headers)
    } else {
        None
    };
    let outcome = {
        let work = run(cx, &parts, body, &reply, &id, &trace);
        let work = async {
            match deadline {
                // The deadline covers the whole call; passing it drops the
                // backend's stream (RST_STREAM CANCEL).
                Some(d) => crate::io::timer::timeout(d, work)
                    .await
                    .unwrap_or_else(|_| Err(Kind::DeadlineExceeded.into())),
                None => work.await,
            }
        };
        // Polled after the work, so it sees what the work holds now.
        let reset = poll_fn(|c| reply.poll_reset(c));
        match select(pin!(work), pin!(reset)).await {
            Either::Left((r, _)) => Some(r),
            Either::Right(_) => None,
        }
    };
    let log = |status: u16| log(cx, &parts, &reply, &trace, &id, status, started);
    match outcome {
        Some(Ok(())) => {
            log(reply.status.get());
            Ended { reset_early: false }
        }
        Some(Err(e)) => {
            // A reset the work saw first (on the request body) is a reset too.
            let early = matches!(e.kind, Kind::ClientGone(_)) && !reply.head_sent();
            if early {
                l.metrics.listeners[l.li].h2.client_resets.inc();
            }
            let status = answer(cx, &reply, &e, &id, trace.backend.get()).await;
            log(status);
            Ended { reset_early: early }
        }
        None => {
            // The client cancelled; the backend's side was dropped with
            // the work (an HTTP/2 backend gets RST_STREAM CANCEL).
            let early = !reply.head_sent();
            if early {
                l.metrics.listeners[l.li].h2.client_resets.inc();
            }
            log(499);
            Ended { reset_early: early }
        }
    }
}

/// The phases, then the forward step for the route's upstream.
async fn run(
    cx: &ConnCtx<'_>,
    parts: &Parts,
    mut body: RecvStream,
    reply: &Reply,
    id: &str,
    trace: &Trace,
) -> Result<(), ProxyError> {
    let l = cx.l;
    if parts.method == Method::CONNECT {
        return Err(Kind::MethodNotAllowed.into());
    }
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("");
    // The checks the HTTP/1.1 codec makes of Host: no userinfo, nothing a
    // backend would read as another host.
    if !authority.is_empty()
        && (authority.contains('@') || !fields::valid_host(authority.as_bytes()))
    {
        return Err(Kind::BadHead("invalid :authority").into());
    }
    let mut host = String::new();
    codec::host_key(authority.as_bytes(), &mut host);
    let raw = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    // Routes match the path: a dot segment ("/api/../admin") would be
    // routed by its prefix and resolved by the backend elsewhere.
    if fields::has_dot_segment(raw.as_bytes()) {
        return Err(Kind::BadHead("dot segment in the path").into());
    }
    let mut norm = Vec::new();
    let normalized = path::normalize(raw.as_bytes(), &mut norm, l.http.path_strict)
        .map_err(|why| ProxyError::from(Kind::BadHead(why)))?;
    let path: &[u8] = if normalized { &norm } else { raw.as_bytes() };
    let lookup: &[u8] = if path.is_empty() || path == b"*" {
        b"/"
    } else {
        path
    };
    let ri = l.router.find(&host, lookup).ok_or(Kind::NoRoute)?;
    trace.route.set(Some(ri));
    if !phases::allowed(l, ri, cx.peer.ip()) {
        return Err(Kind::Forbidden.into());
    }
    let route = &l.routes[ri];
    let (ip, n) = cx.ip_key;
    phases::take_token(l, ri, &ip[..n], |name| {
        let mut vs = parts.headers.get_all(name).iter();
        match (vs.next(), vs.next()) {
            (_, Some(_)) => Err(Kind::BadHead("the rate-limit key header appears twice")),
            (Some(v), None) => Ok(Some(v.as_bytes())),
            (None, _) => Ok(None),
        }
    })?;
    let content_length = match parts.headers.get(http::header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(Kind::BadHead("bad content-length"))?,
        ),
    };
    let max_body = route.cfg.max_body_size;
    if max_body > 0 && content_length.is_some_and(|n| n > max_body) {
        return Err(Kind::BodyTooLarge.into());
    }
    // A route has an upstream or its own answer (the config sees to it).
    let up: &Replica = match (route.up.as_deref(), route.cfg.answer.as_deref()) {
        (Some(up), _) => up,
        (None, Some(a)) => {
            let vars = crate::config::Vars {
                https: l.tls.is_some(),
                host: &host,
                target: raw.as_bytes(),
                path: if normalized { &norm } else { b"" },
                port: cx.local_port.parse().unwrap_or(0),
                remote: cx.peer.ip(),
            };
            let location = own::location(a, &vars)?;
            let (head, text) = own::h2(a, location.as_deref(), &route.cfg.response_headers, id)?;
            let end = text.is_empty() || parts.method == Method::HEAD;
            if reply.head(head, end).is_ok() && !end {
                reply.bytes_out.set(text.len() as u64);
                let _ = super::body::send_all(&reply.body, text, true, l.http.body_timeout).await;
            }
            return Ok(());
        }
        (None, None) => return Err(Kind::NoRoute.into()),
    };
    let (fwd, lead_slash) = phases::forward_path(route, path)?;
    let mut target = String::with_capacity(fwd.len() + 1);
    if lead_slash {
        target.push('/');
    }
    target.push_str(&String::from_utf8_lossy(fwd));
    let key = if up.cfg.balance == Algorithm::ConsistentHash {
        match &up.cfg.hash_key {
            HashKey::ClientIp => hash_ip(cx.peer.ip()),
            HashKey::Uri => hash_key(path),
            HashKey::Header(name) => parts
                .headers
                .get(name.as_str())
                .map_or_else(|| hash_ip(cx.peer.ip()), |v| hash_key(v.as_bytes())),
            HashKey::Sni => hash_key(host.as_bytes()),
        }
    } else {
        0
    };
    let sticky = up.cfg.sticky.as_ref().and_then(|s| {
        let cookies = parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes());
        sticky::token(cookies, &s.cookie)
    });
    let req = Req {
        parts,
        route,
        ri,
        up,
        sticky,
        target,
        authority,
        key,
        facts: Facts {
            client_ip: &cx.ip,
            trusted: cx.trusted,
            https: l.tls.is_some(),
            port: &cx.local_port,
            request_id: id,
            tls_fields: &cx.tls_fields,
            underscores: l.http.underscores,
        },
        max_body,
        content_length,
    };
    if up.cfg.protocol.is_h2() {
        // Boxed: the forward steps are large state machines; boxed, the
        // stream future stays small and is not copied whole on the way
        // into the connection's set of streams.
        Box::pin(to_h2::forward(cx, &req, &mut body, reply, trace)).await
    } else if reply.grpc {
        Err(Kind::GrpcNeedsH2.into())
    } else {
        Box::pin(to_h1::forward(cx, &req, &mut body, reply, trace)).await
    }
}

/// Answer a failed stream; returns the status logged.
async fn answer(
    cx: &ConnCtx<'_>,
    reply: &Reply,
    e: &ProxyError,
    id: &str,
    backend: Option<SocketAddr>,
) -> u16 {
    let l = cx.l;
    match e.backend.or(backend) {
        Some(b) if e.is_warning() => {
            tracing::warn!(listener = %l.cfg.name, peer = %cx.peer, request_id = %id, backend = %b, side = ?e.side(), reason = e.reason(), "{e}")
        }
        b => {
            tracing::debug!(listener = %l.cfg.name, peer = %cx.peer, request_id = %id, backend = ?b, side = ?e.side(), reason = e.reason(), "{e}")
        }
    }
    let status = e.status().unwrap_or(499);
    if reply.head_sent() {
        // Too late for a status: gRPC ends the call with its trailers,
        // anything else with a reset.
        if let Some(s) = reply.body.borrow_mut().as_mut() {
            match (reply.grpc, e.grpc_status()) {
                (true, Some((code, msg))) => {
                    let _ = s.send_trailers(grpc::trailers(code, msg));
                }
                _ => s.send_reset(h2::Reason::INTERNAL_ERROR),
            }
        }
        return reply.status.get();
    }
    if reply.grpc {
        let Some((code, msg)) = e.grpc_status() else {
            reply.respond.borrow_mut().send_reset(h2::Reason::CANCEL);
            return 499;
        };
        let _ = reply.head(grpc::trailers_only(code, msg, id), true);
        return 200;
    }
    if e.status().is_none() {
        reply.respond.borrow_mut().send_reset(h2::Reason::CANCEL);
        return 499;
    }
    let text = respond::error_body(status, id);
    let mut r = http::Response::new(());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("x-request-id", v);
    }
    if let Some(s) = e.retry_after() {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(s));
    }
    if reply.head(r, false).is_ok() {
        reply.bytes_out.set(text.len() as u64);
        let _ =
            super::body::send_all(&reply.body, Bytes::from(text), true, l.http.body_timeout).await;
    }
    status
}

/// Account for one stream: route and listener metrics, the access log.
fn log(
    cx: &ConnCtx<'_>,
    parts: &Parts,
    reply: &Reply,
    trace: &Trace,
    id: &str,
    status: u16,
    started: Instant,
) {
    let l = cx.l;
    let lm = &l.metrics.listeners[l.li];
    let took = started.elapsed();
    let ri = trace.route.get().unwrap_or(l.routes.len());
    if let Some(r) = lm.routes.get(ri) {
        r.status(status);
    }
    lm.request_duration.record(took);
    lm.bytes_out.add(reply.bytes_out.get());
    if let Some(a) = &l.access {
        let ua = parts
            .headers
            .get(http::header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let referer = parts
            .headers
            .get(http::header::REFERER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        a.send(access::http_line(
            a.format,
            &access::HttpEntry {
                listener: &l.cfg.name,
                client: cx.peer,
                method: parts.method.as_str(),
                path: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
                protocol: "HTTP/2.0",
                status,
                bytes_sent: reply.bytes_out.get(),
                referer: &referer,
                user_agent: &ua,
                request_id: id,
                backend: trace.backend.get(),
                duration: took,
                sni: cx.tls.as_ref().and_then(|t| t.sni.as_deref()),
                tls: cx.tls.as_ref().map(|t| t.version),
                client_cert: cx.tls.as_ref().and_then(|t| t.client_subject.as_deref()),
            },
        ));
    }
    tracing::debug!(
        target: "ringlb::access",
        listener = %l.cfg.name,
        peer = %cx.peer,
        status,
        backend = ?trace.backend.get(),
        request_id = %id,
        micros = took.as_micros() as u64,
        "h2",
    );
}
