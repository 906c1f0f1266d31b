//! The response step. A request body that did not go out with its head is
//! sent here, beside the response: a backend may answer before it read the
//! whole body (a 413, a 401: the answer goes to the client at once, the
//! rest of the body is not sent, the connection closes after) or stream a
//! 2xx answer while it still reads (full duplex: both directions move
//! until each message ends). Then the response head is rewritten and its
//! body streamed back, or on `101` the exchange becomes a tunnel; the
//! backend connection goes back to the pool only when both messages ended
//! cleanly.

use futures_util::future::{select, Either};
use std::{io, pin::pin, time::Instant};

use super::{
    compress,
    conn::{Conn, Next},
    errors::{Kind, ProxyError},
    forward::judge,
    h1::{
        body::{forward_body, BodyError},
        client::{read_response_head, Interim, MAX_RESPONSE_HEAD},
        codec::{self, Framing, Response},
        rewrite::{self, ResponseCtx},
        server,
        tunnel::{self, TunnelOpts},
    },
    phases::Plan,
};
use crate::{
    io::{rbuf::RBuf, stream::Stream},
    upstream::{InFlight, Replica},
};

/// While the request body goes out: wait for the backend to say something,
/// and report true once a final (non-1xx) response head is complete in
/// `from_backend`, false if the backend closed or failed first. Never
/// returns otherwise (interim responses and partial heads just stay
/// buffered for the head read).
async fn early_answer(
    backend: &Stream,
    from_backend: &mut RBuf,
    resp: &mut Response,
    is_head: bool,
) -> bool {
    loop {
        // No timer: the body pump it races has its own deadlines.
        match from_backend.fill_unbounded(backend).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        // Skip over interim heads to see whether a final one is there.
        let mut at = 0;
        loop {
            let data = &from_backend.data()[at..];
            match codec::parse_response(data, MAX_RESPONSE_HEAD, is_head, resp) {
                Ok(true) if resp.status < 200 && resp.status != 101 => at += resp.head_len,
                Ok(true) => return true,
                // Malformed: the head read will say so.
                Err(_) => return true,
                Ok(false) => break,
            }
        }
    }
}

/// The error a failed request body becomes (before any answer began).
fn body_error(e: BodyError) -> Kind {
    match e {
        BodyError::Source(e) => Kind::ClientGone(e),
        BodyError::TooLarge => Kind::BodyTooLarge,
        BodyError::Chunk(why) => Kind::BadBody(why),
        BodyError::Dest(e) => Kind::BackendStoppedReading(e),
        BodyError::TooSlow => Kind::BodyTooSlow,
    }
}

/// How the concurrent part of the step ended.
enum Relayed {
    /// A 101 to an upgrade request, whole body sent: become a tunnel.
    Switch,
    /// A final response went out (or failed on the way).
    Final {
        status: u16,
        /// The response body: bytes moved, or why it stopped.
        moved: Result<u64, BodyError>,
        /// The request body: `Some(Ok)` sent whole, `Some(Err)` failed,
        /// `None` not sent to the end (the answer came first).
        body: Option<Result<u64, BodyError>>,
        /// The backend connection may serve another request.
        reusable: bool,
        close: bool,
    },
}

/// Send what is left of the request body beside the response, then relay
/// the response (or become a tunnel on `101`).
///
/// # Errors
/// Whatever failed before any response byte reached the client: the
/// request body (client gone, too large, malformed, too slow), the
/// backend (closed, stopped reading with nothing to say, a bad or late
/// head), an unexpected `101`.
pub(super) async fn respond(
    c: &mut Conn<'_>,
    route_idx: usize,
    up: &Replica,
    upstream: Stream,
    inflight: InFlight<'_>,
    plan: &mut Plan,
    started: Instant,
) -> Result<Next, ProxyError> {
    let l = c.l;
    let route = &l.routes[route_idx];
    // Borrowed from the in-flight guard: no reference count per request.
    let backend = &**inflight.backend();
    let addr = backend.addr;
    let timeout = c.write_timeout();
    let drain = c.ticket.drain();
    let http11 = c.req.minor == 1;
    // The forward step read the head already when the whole request went
    // out with it (a retry may follow a failed head read there).
    let head_read = plan.body_sent;
    let relayed = {
        let Conn {
            client,
            from_client,
            from_backend,
            resp,
            response_head,
            id,
            ..
        } = &mut *c;
        let client = &*client;
        let limit = if plan.max_body > 0 {
            plan.max_body
        } else {
            u64::MAX
        };
        let req_pace = l.body_pace();
        // Nothing is left to send when the body went out with the head.
        let framing = if plan.body_sent {
            Framing::None
        } else {
            plan.framing
        };
        let mut pump = pin!(forward_body(
            client,
            from_client,
            &upstream,
            framing,
            false,
            limit,
            timeout,
            &[],
            &l.pools,
            &req_pace,
        ));
        let mut body: Option<Result<u64, BodyError>> = plan.body_sent.then_some(Ok(0));
        if body.is_none() {
            let answer = pin!(early_answer(&upstream, from_backend, resp, plan.is_head));
            match select(pump.as_mut(), answer).await {
                Either::Left((r, _)) => body = Some(r),
                Either::Right((true, _)) => {}
                // The backend closed (or failed) while the body was going out.
                Either::Right((false, _)) => {
                    let eof = io::ErrorKind::UnexpectedEof.into();
                    return Err(ProxyError::from(Kind::BackendStoppedReading(eof)).at(addr));
                }
            }
        }
        // A body that failed on the client's side is answered for; one the
        // backend stopped reading may still have an answer behind it.
        let stopped_reading = match body.take() {
            Some(Err(BodyError::Dest(e))) => Some(e),
            Some(Err(e)) => return Err(ProxyError::from(body_error(e)).at(addr)),
            other => {
                body = other;
                None
            }
        };
        if !head_read {
            // Buffered already after an early answer; else the wait starts
            // now that the body is out.
            let sent_at = Instant::now();
            let interim = Interim {
                client: Some(client),
                http11,
                write_timeout: timeout,
                ops: &route.cfg.response_headers,
            };
            let read = read_response_head(
                &upstream,
                from_backend,
                resp,
                plan.is_head,
                sent_at + l.http.response_timeout,
                &interim,
            )
            .await;
            let status = resp.status;
            if let Err(e) = judge(l, up, backend, read, status, sent_at, false) {
                return Err(match stopped_reading {
                    Some(d) => ProxyError::from(Kind::BackendStoppedReading(d)).at(addr),
                    None => e,
                });
            }
        }
        if stopped_reading.is_some() {
            // Answered, but not all of the body was taken.
            plan.early_answer = true;
            plan.client_close = true;
        }
        let status = resp.status;
        let pending = body.is_none() && stopped_reading.is_none();
        if status == 101 {
            if !plan.upgrading || pending || stopped_reading.is_some() {
                return Err(ProxyError::from(Kind::UnexpectedSwitch).at(addr));
            }
            Relayed::Switch
        } else {
            // A 2xx while the body is still coming is a streamed answer:
            // both directions keep moving. Any other early answer (an
            // error, a redirect) stops the body now and closes after.
            let duplex = pending && (200..300).contains(&status);
            if pending && !duplex {
                plan.early_answer = true;
                plan.client_close = true;
            }
            let dechunk = plan.client_minor == 0 && resp.framing == Framing::Chunked;
            let close = plan.client_close
                || resp.framing == Framing::UntilClose
                || dechunk
                // Asked now, as the head goes out: a drain may have
                // begun while the backend was answering.
                || drain.is_stopping();
            let (choice, encoder) = match &route.cfg.compress {
                Some(z) => compress::choose(
                    z,
                    plan.wanted,
                    plan.client_minor == 1,
                    resp,
                    from_backend.data(),
                    plan.is_head,
                    plan.weak_inm,
                ),
                None => (compress::Choice::default(), None),
            };
            rewrite::response_head(
                response_head,
                from_backend.data(),
                resp,
                &ResponseCtx {
                    close,
                    keep_alive_1_0: plan.client_minor == 0 && !close,
                    dechunk,
                    switching: false,
                    ops: &route.cfg.response_headers,
                    encoding: choice.coding.map(|c| c.token()),
                    vary: choice.vary,
                    weak_etag: choice.weak_etag,
                },
            );
            if let Some(s) = &up.cfg.sticky {
                if plan.sticky != Some(backend.sticky) {
                    super::sticky::add_h1(response_head, s, backend.sticky, l.tls.is_some());
                }
            }
            let resp_framing = resp.framing;
            let backend_keeps = resp.minor == 1 && !resp.conn.close;
            from_backend.consume(resp.head_len);
            let resp_pace = l.body_pace();
            let moved = {
                let relay = pin!(async {
                    match encoder {
                        Some(enc) => {
                            compress::forward(
                                &upstream,
                                from_backend,
                                client,
                                resp_framing,
                                enc,
                                l.http.body_timeout,
                                response_head,
                                &resp_pace,
                            )
                            .await
                        }
                        None => {
                            forward_body(
                                &upstream,
                                from_backend,
                                client,
                                resp_framing,
                                dechunk,
                                u64::MAX,
                                l.http.body_timeout,
                                response_head,
                                &l.pools,
                                &resp_pace,
                            )
                            .await
                        }
                    }
                });
                if duplex {
                    match select(pump.as_mut(), relay).await {
                        Either::Left((Ok(n), relay)) => {
                            body = Some(Ok(n));
                            relay.await
                        }
                        // The backend stopped reading: what it sends still goes
                        // to the client, and both connections close after.
                        Either::Left((Err(BodyError::Dest(e)), relay)) => {
                            body = Some(Err(BodyError::Dest(e)));
                            relay.await
                        }
                        // The client failed mid-body after its answer began:
                        // nothing more can be said to it.
                        Either::Left((Err(e), _)) => {
                            let why = ProxyError::from(body_error(e));
                            tracing::debug!(listener = %l.cfg.name, request_id = %id, %addr, reason = why.reason(), "request body failed while its answer streamed: {why}");
                            Err(BodyError::Source(io::ErrorKind::ConnectionAborted.into()))
                        }
                        // The answer ended before the body: the rest is not sent.
                        Either::Right((r, _)) => r,
                    }
                } else {
                    relay.await
                }
            };
            let body_whole = matches!(body, Some(Ok(_)));
            Relayed::Final {
                status,
                moved,
                reusable: backend_keeps
                    && resp_framing != Framing::UntilClose
                    && body_whole
                    && from_backend.is_empty(),
                body,
                close,
            }
        }
    };
    match relayed {
        Relayed::Switch => switch(c, route_idx, upstream, addr, started).await,
        Relayed::Final {
            status,
            moved,
            body,
            reusable,
            close,
        } => {
            let lm = &l.metrics.listeners[l.li];
            if let (false, Some(Ok(n))) = (head_read, &body) {
                lm.bytes_in.add(*n);
            }
            c.bytes_out = c.response_head.len() as u64 + moved.as_ref().map_or(0, |m| *m);
            c.log(status, Some(addr), started);
            if let Err(e) = moved {
                tracing::debug!(listener = %l.cfg.name, request_id = %c.id, backend = %addr, "response body cut short: {e:?}");
                return Ok(Next::Close);
            }
            if reusable {
                up.put_idle(&inflight, upstream);
            }
            if !matches!(body, Some(Ok(_))) {
                // The client may still be sending the body we stopped
                // forwarding: close without a reset that could destroy the
                // answer on its way.
                server::linger(&c.client, &mut c.from_client).await;
                return Ok(Next::Close);
            }
            Ok(if close { Next::Close } else { Next::KeepAlive })
        }
    }
}

/// The 101 head through the same rewriting as any head (hop-by-hop fields
/// out, the route's rules in; Upgrade and Connection: upgrade kept for this
/// hop), then a tunnel until either side ends.
async fn switch(
    c: &mut Conn<'_>,
    route_idx: usize,
    upstream: Stream,
    addr: std::net::SocketAddr,
    started: Instant,
) -> Result<Next, ProxyError> {
    let l = c.l;
    rewrite::response_head(
        &mut c.response_head,
        c.from_backend.data(),
        &c.resp,
        &ResponseCtx::interim(&l.routes[route_idx].cfg.response_headers, true),
    );
    c.from_backend.consume(c.resp.head_len);
    c.bytes_out = (c.response_head.len() + c.from_backend.len()) as u64;
    c.log(101, Some(addr), started);
    let opts = TunnelOpts {
        pools: &l.pools,
        transfer: l.cfg.transfer,
        idle_timeout: l.cfg.idle_timeout,
        write_timeout: l.http.body_timeout,
    };
    let Some((counts, end)) = tunnel::run(
        &c.client,
        &upstream,
        &c.response_head,
        &c.from_backend,
        &c.from_client,
        &opts,
    )
    .await
    else {
        return Ok(Next::Close);
    };
    let lm = &l.metrics.listeners[l.li];
    lm.bytes_in.add(counts.up.get());
    lm.bytes_out.add(counts.down.get());
    tracing::debug!(listener = %l.cfg.name, request_id = %c.id, ?end, up = counts.up.get(), down = counts.down.get(), "tunnel closed");
    Ok(Next::Close)
}
