//! An HTTP/2 stream forwarded to an HTTP/2 backend (`protocol = "h2c"` or
//! `"h2"`): a stream on a pooled multiplexed connection to a backend picked
//! for this stream alone. Headers, DATA (with window released only for
//! what the other side took) and trailers go both ways; a client's reset
//! reaches the backend as RST_STREAM CANCEL when the stream's handles drop.

use std::{
    cell::{Cell, RefCell},
    future::poll_fn,
    io,
    pin::pin,
    sync::Arc,
    time::Instant,
};

use futures_util::future::{select, Either};
use h2::RecvStream;

use super::{
    super::{
        errors::{Kind, ProxyError},
        forward::{connect_failed, judge, Queued},
        retry::Failure,
    },
    body::{pump, PumpError, Slot},
    ctx::{pick, sticky_cookie, ConnCtx, Reply, Req, Trace},
    grpc, headers,
};
use crate::{
    backends::BackendId,
    upstream::{connect::timed_connect, h2pool, Replica},
};

/// The request for the backend.
fn request(
    req: &Req<'_>,
    backend: std::net::SocketAddr,
    tls: bool,
) -> Result<http::Request<()>, Kind> {
    let p = req.parts;
    let authority =
        if req.authority.is_empty() || req.authority.parse::<http::uri::Authority>().is_err() {
            backend.to_string()
        } else {
            req.authority.to_string()
        };
    let uri = http::Uri::builder()
        .scheme(if tls { "https" } else { "http" })
        .authority(authority)
        .path_and_query(req.target.as_str())
        .build()
        .map_err(|_| Kind::BadHead("invalid request target"))?;
    let mut r = http::Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = uri;
    let h = r.headers_mut();
    headers::request(
        &p.headers,
        &req.facts,
        &req.route.cfg.request_headers,
        req.authority,
        &mut |n, v| headers::insert(h, n, v),
    )?;
    if let Some(n) = req.content_length {
        h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
    }
    Ok(r)
}

fn client_gone() -> ProxyError {
    Kind::ClientGone(io::ErrorKind::ConnectionReset.into()).into()
}

/// The error a failed backend stream becomes.
fn stream_error(e: &h2::Error) -> Kind {
    match e.reason() {
        Some(r) if !e.is_io() => Kind::Reset(r),
        _ => Kind::NoResponse(io::Error::other(e.to_string())),
    }
}

/// Forward the stream to an HTTP/2 backend of the route's upstream.
///
/// # Errors
/// As [`super::to_h1::forward`]; a backend's reset is `Reset(reason)`.
pub(super) async fn forward(
    cx: &ConnCtx<'_>,
    req: &Req<'_>,
    body: &mut RecvStream,
    reply: &Reply,
    trace: &Trace,
) -> Result<(), ProxyError> {
    let l = cx.l;
    let up: &Replica = req.up;
    let timeout = l.http.body_timeout;
    let has_body = !body.is_end_stream();
    let mut tried: Vec<BackendId> = Vec::new();
    let mut queue = Queued::new(&up.upstream);
    let mut attempts = 0;
    // The route's retry policy, for connect failures: the body streams to
    // an HTTP/2 backend as it comes, so nothing after the connect replays.
    let tries = l.tries(req.ri);
    l.retry_deposit(req.ri);
    loop {
        attempts += 1;
        if attempts > tries + 2 {
            return Err(Kind::BackendsFailed.into());
        }
        let picked = pick(cx, req, &tried, &mut queue).await?;
        let backend = Arc::clone(picked.backend());
        let addr = backend.addr;
        let (mut send, lease) = match up.h2_take(&picked) {
            Some(c) => c,
            None => {
                let started = timed_connect(
                    addr,
                    l.cfg.connect_timeout,
                    &l.metrics,
                    up.ui,
                    up.tls.as_deref(),
                )
                .await;
                let handshake = match started {
                    Ok(s) => {
                        match crate::io::timer::timeout(
                            l.cfg.connect_timeout,
                            h2pool::handshake(s, addr),
                        )
                        .await
                        {
                            Ok(r) => r,
                            Err(_) => Err(crate::io::connect::ConnectError::Timeout(
                                addr,
                                l.cfg.connect_timeout,
                            )),
                        }
                    }
                    Err(e) => Err(e),
                };
                match handshake {
                    Ok((send, state)) => {
                        let lease = up.h2_add(&picked, send.clone(), state);
                        (send, lease)
                    }
                    Err(e) => {
                        connect_failed(l, up, &backend, &e, cx.peer, req.facts.request_id);
                        tried.push(backend.id);
                        // pick() says whether a try is left.
                        if !l.may_retry(req.ri, Failure::Connect, true, || true) {
                            return Err(ProxyError::from(Kind::BackendsFailed).at(addr));
                        }
                        continue;
                    }
                }
            }
        };
        let inflight = up.open(picked);
        trace.backend.set(Some(addr));
        backend.count_request();
        // Room for one more stream on this connection (the backend's
        // SETTINGS may have lowered the limit since).
        let ready =
            crate::io::timer::timeout(l.cfg.connect_timeout, poll_fn(|c| send.poll_ready(c))).await;
        match ready {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // GOAWAY or a dead connection: no new streams there; the
                // request has not gone out, so it may go on another.
                lease.close();
                tracing::debug!(listener = %l.cfg.name, backend = %addr, "h2 connection unusable ({e}); opening another");
                drop(inflight);
                continue;
            }
            Err(_) => {
                lease.close();
                return Err(ProxyError::from(Kind::Connect(format!(
                    "no stream to {addr} within connect_timeout"
                )))
                .at(addr));
            }
        }
        let r = request(req, addr, up.tls.is_some()).map_err(ProxyError::from)?;
        let (response, up_send) = match send.send_request(r, !has_body) {
            Ok(x) => x,
            Err(e) => {
                lease.close();
                if e.is_go_away() || e.is_io() {
                    drop(inflight);
                    continue;
                }
                return Err(ProxyError::from(stream_error(&e)).at(addr));
            }
        };
        let sent_at = Instant::now();
        let up_slot: Slot = RefCell::new(Some(up_send));
        let limit = if req.max_body > 0 {
            req.max_body
        } else {
            u64::MAX
        };
        // Once the answer streams, a quiet client (a gRPC stream between
        // messages) is not timed out; the response side keeps its timeout.
        let patient = Cell::new(false);
        let mut body_pump = pin!(async {
            if has_body {
                pump(body, &up_slot, timeout, limit, Some(&patient))
                    .await
                    .map(|_| ())
            } else {
                Ok(())
            }
        });
        let (answer, pending) = {
            let answer = pin!(crate::io::timer::timeout(l.http.response_timeout, response));
            match select(body_pump.as_mut(), answer).await {
                Either::Left((Ok(()), answer)) => (answer.await, false),
                Either::Left((Err(e), answer)) => {
                    let reset = |why| {
                        if let Some(s) = up_slot.borrow_mut().as_mut() {
                            s.send_reset(why);
                        }
                    };
                    match e {
                        PumpError::Src(_) => {
                            reset(h2::Reason::CANCEL);
                            return Err(client_gone());
                        }
                        PumpError::TooLarge => {
                            reset(h2::Reason::CANCEL);
                            return Err(ProxyError::from(Kind::BodyTooLarge).at(addr));
                        }
                        PumpError::Timeout => {
                            reset(h2::Reason::CANCEL);
                            return Err(ProxyError::from(Kind::BodyTooSlow).at(addr));
                        }
                        // The backend ended our request stream: it may
                        // have answered (an early response).
                        PumpError::Dst(_) => (answer.await, false),
                    }
                }
                Either::Right((answer, _)) => (answer, has_body),
            }
        };
        let response = match answer {
            Err(_) => Err(Kind::ResponseTimeout),
            Ok(Err(e)) => Err(stream_error(&e)),
            Ok(Ok(r)) => Ok(r),
        };
        let response = match response {
            Ok(r) => r,
            Err(kind) => {
                // A connection that timed out or failed takes no new streams
                // (a blackholed backend would otherwise keep getting them).
                if matches!(kind, Kind::ResponseTimeout | Kind::NoResponse(_)) {
                    lease.close();
                }
                let err = ProxyError::from(kind).at(addr);
                if let Some(why) = err.health() {
                    up.upstream.report_failure(&backend, why);
                }
                return Err(err);
            }
        };
        let (mut rparts, mut rbody) = response.into_parts();
        let status = rparts.status.as_u16();
        // A Trailers-Only UNAVAILABLE is the backend saying it cannot serve.
        if grpc::status(&rparts.headers) == Some(14) {
            up.upstream.report_failure(&backend, "grpc UNAVAILABLE");
        } else {
            judge(l, up, &backend, Ok(()), status, sent_at, false)?;
        }
        headers::from_h2(&mut rparts.headers, &req.route.cfg.response_headers);
        sticky_cookie(req, &backend, &mut rparts.headers);
        let end = rbody.is_end_stream();
        reply
            .head(http::Response::from_parts(rparts, ()), end)
            .map_err(|_| client_gone())?;
        if end {
            return Ok(());
        }
        patient.set(true);
        let moved = {
            let relay = pin!(pump(&mut rbody, &reply.body, timeout, u64::MAX, None));
            if pending {
                match select(body_pump.as_mut(), relay).await {
                    // The request ended, or the backend ended it (it
                    // answered without reading all): the answer goes on.
                    Either::Left((Ok(()) | Err(PumpError::Dst(_)), relay)) => relay.await,
                    // The client's side failed under a streaming answer: the
                    // backend's stream is cancelled, the client's reset.
                    Either::Left((Err(e), _)) => {
                        if let Some(s) = up_slot.borrow_mut().as_mut() {
                            s.send_reset(h2::Reason::CANCEL);
                        }
                        return Err(match e {
                            PumpError::TooLarge => ProxyError::from(Kind::BodyTooLarge).at(addr),
                            _ => client_gone(),
                        });
                    }
                    Either::Right((r, _)) => r,
                }
            } else {
                relay.await
            }
        };
        drop(lease);
        drop(inflight);
        return match moved {
            Ok(m) => {
                reply.bytes_out.set(m.bytes);
                if m.grpc_status == Some(14) {
                    up.upstream.report_failure(&backend, "grpc UNAVAILABLE");
                }
                Ok(())
            }
            // The backend reset its stream mid-response.
            Err(PumpError::Src(e)) => Err(ProxyError::from(stream_error(&e)).at(addr)),
            Err(PumpError::Dst(_)) => Err(client_gone()),
            Err(PumpError::Timeout) => Err(ProxyError::from(Kind::ResponseTimeout).at(addr)),
            Err(PumpError::TooLarge) => Err(ProxyError::from(Kind::BodyTooLarge).at(addr)),
        };
    }
}
