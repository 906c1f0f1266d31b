//! An HTTP/2 stream forwarded to an HTTP/1.1 backend over the upstream's
//! keep-alive pool: the request becomes an HTTP/1.1 head (chunked when the
//! client gave no length), its DATA frames the body; the response head
//! becomes HTTP/2 fields and its body DATA frames. Both bodies move at
//! once, each bounded by the other side's pace.

use std::{
    cell::Cell,
    io,
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::future::{select, Either};
use h2::RecvStream;

use super::{
    super::{
        errors::{Kind, ProxyError},
        forward::{backend_stream, judge, Queued},
        h1::{
            body::timed_write,
            chunked::Chunked,
            client::{read_response_head, Interim, MAX_RESPONSE_HEAD},
            codec::{Framing, Response},
        },
        retry::Failure,
    },
    body::{from_src, send_all, PumpError},
    ctx::{pick, sticky_cookie, ConnCtx, Reply, Req, Trace},
    headers,
};
use crate::{
    backends::BackendId,
    io::{rbuf::RBuf, stream::Stream},
    upstream::Replica,
};

/// Methods a request without a body may be sent again for (on a fresh
/// connection, when a pooled one turns out closed).
fn idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::TRACE
    )
}

/// The HTTP/1.1 head for the backend (`host`: the :authority, or the
/// backend's address when the request had none).
fn head(req: &Req<'_>, host: &str, chunked: bool, has_body: bool) -> Result<Vec<u8>, Kind> {
    let p = req.parts;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(p.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    headers::request(
        &p.headers,
        &req.facts,
        &req.route.cfg.request_headers,
        req.authority,
        &mut |n, v| {
            out.extend_from_slice(n);
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        },
    )?;
    if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    } else if let Some(n) = req
        .content_length
        .filter(|_| has_body || req.content_length == Some(0))
    {
        out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

/// The client's DATA frames as the backend's body (chunked or as long as
/// the client said), window released only for what the backend took.
async fn send_body(
    body: &mut RecvStream,
    up: &Stream,
    chunked: bool,
    limit: u64,
    idle: Duration,
    patient: &Cell<bool>,
) -> Result<u64, PumpError> {
    let mut total = 0u64;
    // Chunked: the CRLF that ends one chunk goes out with the next chunk's
    // size line, so each DATA frame is one vectored send.
    let mut line: Vec<u8> = Vec::with_capacity(24);
    loop {
        let next = from_src(body.data(), idle, Some(patient)).await?;
        let chunk = match next {
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err(PumpError::Src(e)),
            None => break,
        };
        if chunk.is_empty() {
            continue;
        }
        let n = chunk.len();
        total += n as u64;
        if total > limit {
            return Err(PumpError::TooLarge);
        }
        let sent = if chunked {
            use std::io::Write as _;
            let first = total == n as u64;
            line.clear();
            if !first {
                line.extend_from_slice(b"\r\n");
            }
            // Writing into a Vec cannot fail.
            let _ = write!(line, "{n:x}\r\n");
            timed_write(up, &line, &chunk, idle).await
        } else {
            timed_write(up, &chunk, &[], idle).await
        };
        sent.map_err(|_| PumpError::Dst(None))?;
        let _ = body.flow_control().release_capacity(n);
    }
    // HTTP/1.1 trailers are not sent on: backends rarely read them, and a
    // gRPC call never comes this way.
    if chunked {
        let end: &[u8] = if total > 0 {
            b"\r\n0\r\n\r\n"
        } else {
            b"0\r\n\r\n"
        };
        timed_write(up, end, &[], idle)
            .await
            .map_err(|_| PumpError::Dst(None))?;
    }
    Ok(total)
}

/// Read more of the backend's response (`Dst(None)` at its end).
async fn fill(up: &Stream, buf: &mut RBuf, idle: Duration) -> Result<usize, PumpError> {
    match buf.fill_until(up, Instant::now() + idle).await {
        Ok(0) => Err(PumpError::Dst(None)),
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(PumpError::Timeout),
        Err(_) => Err(PumpError::Dst(None)),
    }
}

/// The backend's response body as DATA frames. Returns the bytes moved and
/// whether the message ended where its framing says (the connection may
/// then serve another request).
async fn relay_body(
    up: &Stream,
    buf: &mut RBuf,
    framing: Framing,
    reply: &Reply,
    idle: Duration,
) -> Result<u64, PumpError> {
    let mut moved = 0u64;
    match framing {
        Framing::None => return Ok(0),
        Framing::Length(mut left) => {
            while left > 0 {
                if buf.is_empty() {
                    fill(up, buf, idle).await?;
                }
                let take = (buf.len() as u64).min(left) as usize;
                let piece = Bytes::copy_from_slice(&buf.data()[..take]);
                buf.consume(take);
                left -= take as u64;
                moved += take as u64;
                send_all(&reply.body, piece, left == 0, idle).await?;
            }
        }
        Framing::Chunked => {
            let mut ch = Chunked::new();
            loop {
                if buf.is_empty() {
                    fill(up, buf, idle).await?;
                }
                let step = ch.step(buf.data()).map_err(|_| PumpError::Dst(None))?;
                if step.data && step.len > 0 {
                    let piece = Bytes::copy_from_slice(&buf.data()[..step.len]);
                    moved += step.len as u64;
                    buf.consume(step.len);
                    send_all(&reply.body, piece, false, idle).await?;
                } else {
                    buf.consume(step.len);
                }
                if ch.is_done() {
                    send_all(&reply.body, Bytes::new(), true, idle).await?;
                    break;
                }
                if step.len == 0 {
                    fill(up, buf, idle).await?;
                }
            }
        }
        Framing::UntilClose => loop {
            if buf.is_empty() {
                match fill(up, buf, idle).await {
                    Ok(_) => {}
                    Err(PumpError::Dst(None)) => {
                        send_all(&reply.body, Bytes::new(), true, idle).await?;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            let piece = Bytes::copy_from_slice(buf.data());
            moved += piece.len() as u64;
            buf.clear();
            send_all(&reply.body, piece, false, idle).await?;
        },
    }
    Ok(moved)
}

/// Forward the stream to an HTTP/1.1 backend of the route's upstream.
///
/// # Errors
/// Before the response began: no backend, connect or send failed, a bad,
/// late or missing response head, the client's body failed or was too
/// large. After: the body relay failed (the caller resets the stream).
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
    let chunked = has_body && req.content_length.is_none();
    let is_head = req.parts.method == http::Method::HEAD;
    let replayable = !has_body && idempotent(&req.parts.method);
    let mut tried: Vec<BackendId> = Vec::new();
    let mut queue = Queued::new(&up.upstream);
    let mut allow_pooled = true;
    let mut attempts = 0;
    let mut from_backend = RBuf::new(4096, 64 * 1024.max(MAX_RESPONSE_HEAD));
    let mut resp = Response::default();
    // The head depends on the backend only for a request without
    // :authority (Host is then the backend's address): built once, and a
    // refused field costs no backend connection.
    let fixed_head = if req.authority.is_empty() {
        None
    } else {
        Some(head(req, req.authority, chunked, has_body).map_err(ProxyError::from)?)
    };
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
        let Some((stream, reused)) = backend_stream(
            l,
            up,
            &picked,
            allow_pooled,
            false,
            cx.peer,
            req.facts.request_id,
        )
        .await
        else {
            tried.push(backend.id);
            // pick() says whether a try is left.
            if !l.may_retry(req.ri, Failure::Connect, replayable, || true) {
                return Err(ProxyError::from(Kind::BackendsFailed).at(addr));
            }
            continue;
        };
        let inflight = up.open(picked);
        trace.backend.set(Some(addr));
        backend.count_request();
        from_backend.clear();
        let built;
        let head: &[u8] = match &fixed_head {
            Some(h) => h,
            None => {
                built =
                    head(req, &addr.to_string(), chunked, has_body).map_err(ProxyError::from)?;
                &built
            }
        };
        if let Err(e) = timed_write(&stream, head, &[], timeout).await {
            if reused {
                allow_pooled = false;
                continue;
            }
            return Err(ProxyError::from(Kind::SendFailed(e)).at(addr));
        }
        let limit = if req.max_body > 0 {
            req.max_body
        } else {
            u64::MAX
        };
        // Once the answer streams, a quiet client is not timed out.
        let patient = Cell::new(false);
        let reusable = {
            // The body goes out while the response head is awaited.
            let mut pump = pin!(async {
                if has_body {
                    send_body(body, &stream, chunked, limit, timeout, &patient)
                        .await
                        .map(|_| ())
                } else {
                    Ok(())
                }
            });
            let sent_at = Instant::now();
            let interim = Interim {
                client: None,
                http11: false,
                write_timeout: timeout,
                ops: &req.route.cfg.response_headers,
            };
            // The whole body reached the backend (else the connection
            // cannot carry another request).
            let mut body_whole = true;
            let (read, mut pending) = {
                let read_head = pin!(read_response_head(
                    &stream,
                    &mut from_backend,
                    &mut resp,
                    is_head,
                    sent_at + l.http.response_timeout,
                    &interim,
                ));
                match select(pump.as_mut(), read_head).await {
                    Either::Left((Ok(()), read_head)) => (read_head.await, false),
                    Either::Left((Err(e), read_head)) => match e {
                        PumpError::Src(_) => {
                            return Err(
                                Kind::ClientGone(io::ErrorKind::ConnectionReset.into()).into()
                            )
                        }
                        PumpError::TooLarge => {
                            return Err(ProxyError::from(Kind::BodyTooLarge).at(addr))
                        }
                        PumpError::Timeout => {
                            return Err(ProxyError::from(Kind::BodyTooSlow).at(addr))
                        }
                        // The backend stopped reading: it may have answered.
                        PumpError::Dst(_) => {
                            body_whole = false;
                            (read_head.await, false)
                        }
                    },
                    Either::Right((read, _)) => (read, has_body),
                }
            };
            let status = resp.status;
            let room = || up.tried_in_set(&tried) + 1 < tries.min(up.len());
            let failure = match judge(l, up, &backend, read, status, sent_at, reused && replayable)
            {
                Ok(()) => Failure::Status(status),
                Err(err) => {
                    if let Kind::NoResponse(_) = &err.kind {
                        if err.retryable && from_backend.is_empty() {
                            l.metrics.listeners[l.li].retries.inc();
                            allow_pooled = false;
                            continue;
                        }
                    }
                    match Failure::of(&err.kind, from_backend.is_empty()) {
                        Some(f) if l.may_retry(req.ri, f, replayable, room) => f,
                        _ => return Err(err),
                    }
                }
            };
            if failure != Failure::Status(status) || l.may_retry(req.ri, failure, replayable, room)
            {
                tracing::debug!(listener = %l.cfg.name, request_id = %req.facts.request_id, backend = %addr, "{failure:?}; retrying on another backend");
                l.metrics.listeners[l.li].retries.inc();
                tried.push(backend.id);
                continue;
            }
            if status == 101 {
                return Err(ProxyError::from(Kind::UnexpectedSwitch).at(addr));
            }
            let mut fields = headers::from_h1(
                from_backend.data(),
                &resp,
                is_head,
                &req.route.cfg.response_headers,
            );
            sticky_cookie(req, &backend, &mut fields);
            let framing = resp.framing;
            let backend_keeps = resp.minor == 1 && !resp.conn.close;
            from_backend.consume(resp.head_len);
            let mut r = http::Response::new(());
            *r.status_mut() = http::StatusCode::from_u16(status)
                .map_err(|_| ProxyError::from(Kind::BadResponse("status code")).at(addr))?;
            *r.headers_mut() = fields;
            reply
                .head(r, framing == Framing::None)
                .map_err(|_| Kind::ClientGone(io::ErrorKind::ConnectionReset.into()))?;
            patient.set(true);
            let moved = {
                let relay = pin!(relay_body(
                    &stream,
                    &mut from_backend,
                    framing,
                    reply,
                    l.http.body_timeout
                ));
                if pending {
                    match select(pump.as_mut(), relay).await {
                        Either::Left((Ok(()), relay)) => {
                            pending = false;
                            relay.await
                        }
                        // The backend stopped reading: its answer still goes on.
                        Either::Left((Err(PumpError::Dst(_)), relay)) => {
                            pending = false;
                            body_whole = false;
                            relay.await
                        }
                        // The client's body failed under a streaming answer:
                        // the backend cannot be told, the exchange ends.
                        Either::Left((Err(e), _)) => {
                            return Err(ProxyError::from(match e {
                                PumpError::TooLarge => Kind::BodyTooLarge,
                                _ => Kind::ClientGone(io::ErrorKind::ConnectionReset.into()),
                            })
                            .at(addr))
                        }
                        Either::Right((r, _)) => r,
                    }
                } else {
                    relay.await
                }
            };
            let moved = match moved {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(listener = %l.cfg.name, backend = %addr, "response body cut short: {e:?}");
                    return Err(ProxyError::from(Kind::NoResponse(
                        io::ErrorKind::UnexpectedEof.into(),
                    ))
                    .at(addr));
                }
            };
            reply.bytes_out.set(moved);
            backend_keeps
                && framing != Framing::UntilClose
                && !pending
                && body_whole
                && from_backend.is_empty()
        };
        if reusable {
            up.put_idle(&inflight, stream);
        }
        return Ok(());
    }
}
