//! The forward step: pick a backend (or wait in the upstream's bounded
//! queue), reuse a pooled connection or connect, send the head and the
//! body, read the response head; retry on the next backend or on a fresh
//! connection where that is safe. Health outcomes are reported here, from
//! the error's own verdict.

use futures_util::future::{select, Either};
use std::{
    io,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use super::{
    conn::Conn,
    errors::{Kind, ProxyError},
    h1::{
        body::{forward_body, timed_write, BodyError},
        client::{read_response_head, Interim},
    },
    phases::Plan,
};
use crate::{
    backends::{BackendId, NoPick, Upstream},
    io::stream::Stream,
    upstream::{connect::timed_connect, InFlight, Replica},
};

/// The failure reason for a response status that counts as one.
fn failure_status_reason(status: u16) -> &'static str {
    match status {
        502 => "502 response",
        503 => "503 response",
        504 => "504 response",
        _ => "failure-status response",
    }
}

/// While the request body goes out: wait for the backend to say something,
/// and report true once a final (non-1xx) response head is complete in
/// `from_backend`, false if the backend closed or failed first. Never
/// returns otherwise (interim responses and partial heads just stay
/// buffered for the response step).
async fn early_answer(
    backend: &Stream,
    from_backend: &mut crate::io::rbuf::RBuf,
    resp: &mut crate::proxy::http::h1::codec::Response,
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
            match crate::proxy::http::h1::codec::parse_response(
                data,
                crate::proxy::http::h1::client::MAX_RESPONSE_HEAD,
                is_head,
                resp,
            ) {
                Ok(true) if resp.status < 200 && resp.status != 101 => at += resp.head_len,
                Ok(true) => return true,
                // Malformed: the response step will say so.
                Err(_) => return true,
                Ok(false) => break,
            }
        }
    }
}

/// How often a queued request looks for a free backend slot.
const QUEUE_POLL: Duration = Duration::from_millis(2);
const QUEUE_POLL_MAX: Duration = Duration::from_millis(20);

/// A request's place in the upstream's queue (counted process-wide);
/// leaving it, however the request ends, gives the place back.
struct Queued<'a> {
    up: &'a Upstream,
    until: Option<Instant>,
    wait: Duration,
}

impl Queued<'_> {
    /// Wait a little for a backend slot.
    ///
    /// # Errors
    /// `QueueFull` (no place), `QueueTimeout` (waited `queue_timeout`).
    async fn wait(&mut self, max: u32, timeout: Duration) -> Result<(), ProxyError> {
        let deadline = match self.until {
            Some(d) => d,
            None => {
                if self.up.queued.fetch_add(1, Ordering::Relaxed) >= max {
                    self.up.queued.fetch_sub(1, Ordering::Relaxed);
                    return Err(Kind::QueueFull.into());
                }
                let d = Instant::now() + timeout;
                self.until = Some(d);
                d
            }
        };
        if Instant::now() >= deadline {
            self.leave();
            return Err(Kind::QueueTimeout.into());
        }
        // Slots free on any worker; look again shortly (backing off, so a
        // long queue costs few picks per second).
        self.wait = (self.wait * 2).clamp(QUEUE_POLL, QUEUE_POLL_MAX);
        monoio::time::sleep(self.wait).await;
        Ok(())
    }

    fn leave(&mut self) {
        if self.until.take().is_some() {
            self.up.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Forward the request to a backend of `up` and read its response head
/// into `c.resp`. Returns the backend connection and its in-flight guard.
///
/// # Errors
/// Whatever ended the attempts: no backend, queue full or timed out, every
/// try failed, the client or the backend failed mid-request.
pub(super) async fn forward<'r>(
    c: &mut Conn<'_>,
    up: &'r Replica,
    plan: &mut Plan,
) -> Result<(Stream, InFlight<'r>), ProxyError> {
    let l = c.l;
    let lm = &l.metrics.listeners[l.li];
    let response_ops = &l.routes[c.route_idx].cfg.response_headers;
    let write_timeout = c.write_timeout();
    let tries = l.cfg.connect_tries as usize;
    let mut tried: Vec<BackendId> = Vec::new();
    let mut allow_pooled = true;
    let mut continue_sent = false;
    let mut attempts = 0;
    let mut queue = Queued {
        up: &up.upstream,
        until: None,
        wait: Duration::ZERO,
    };
    loop {
        attempts += 1;
        if up.tried_in_set(&tried) >= tries.min(up.len()) || attempts > tries + 2 {
            return Err(Kind::BackendsFailed.into());
        }
        let picked = match up.pick(plan.key, &tried) {
            Ok(p) => p,
            // Every backend is at max_connections: wait in the bounded queue.
            Err(NoPick { full: true }) if tried.is_empty() && up.cfg.queue > 0 => {
                queue.wait(up.cfg.queue, up.cfg.queue_timeout).await?;
                attempts -= 1;
                continue;
            }
            Err(_) => {
                return Err(if tried.is_empty() {
                    Kind::NoBackend
                } else {
                    Kind::BackendsFailed
                }
                .into())
            }
        };
        queue.leave();
        let backend = Arc::clone(picked.backend());
        let addr = backend.addr;
        let pooled = if allow_pooled {
            up.take_idle(&picked)
        } else {
            None
        };
        let reused = pooled.is_some();
        let stream = match pooled {
            Some(s) => s,
            None => match timed_connect(addr, l.cfg.connect_timeout, &l.metrics, up.ui).await {
                Ok(s) => s,
                Err(e) => {
                    lm.retries.inc();
                    let err = ProxyError::from(Kind::Connect(e.to_string()));
                    match err.health() {
                        // Out of fds or ports here: not the backend's fault.
                        Some(_) if e.is_local() => {}
                        Some(why) => up.upstream.report_failure(&backend, why),
                        None => {}
                    }
                    tracing::warn!(listener = %l.cfg.name, peer = %c.peer, request_id = %c.id, "{e}; trying next backend");
                    tried.push(backend.id);
                    continue;
                }
            },
        };
        let inflight = up.open(picked);
        // This attempt's response starts here (a retry leaves nothing behind).
        c.from_backend.clear();
        backend.count_request();
        if plan.expect_continue && !plan.body_sent && !continue_sent {
            continue_sent = true;
            if let Err(e) = timed_write(
                &c.client,
                b"HTTP/1.1 100 Continue\r\n\r\n",
                &[],
                write_timeout,
            )
            .await
            {
                return Err(Kind::ClientGone(e).into());
            }
        }
        let sent = if plan.needs_host && plan.head_end >= 2 {
            let host = format!("Host: {addr}\r\n\r\n");
            let (head, body) = c.request_head.split_at(plan.head_end);
            let mut with_host = Vec::with_capacity(c.request_head.len() + host.len());
            with_host.extend_from_slice(&head[..head.len() - 2]);
            with_host.extend_from_slice(host.as_bytes());
            with_host.extend_from_slice(body);
            timed_write(&stream, &with_host, &[], write_timeout).await
        } else {
            timed_write(&stream, &c.request_head, &[], write_timeout).await
        };
        if let Err(e) = sent {
            if reused && plan.replayable {
                lm.retries.inc();
                allow_pooled = false;
                continue;
            }
            return Err(ProxyError::from(Kind::SendFailed(e)).at(addr));
        }
        if !plan.body_sent {
            let limit = if plan.max_body > 0 {
                plan.max_body
            } else {
                u64::MAX
            };
            let pace = l.body_pace();
            let pump = std::pin::pin!(forward_body(
                &c.client,
                &mut c.from_client,
                &stream,
                plan.framing,
                false,
                limit,
                write_timeout,
                &[],
                &l.pools,
                &pace,
            ));
            // Meanwhile the backend may answer before it read the whole body
            // (a 413, a 401): that answer goes to the client at once, the
            // rest of the body is not sent, and the connection closes after.
            let answer = std::pin::pin!(early_answer(
                &stream,
                &mut c.from_backend,
                &mut c.resp,
                plan.is_head
            ));
            let moved = match select(pump, answer).await {
                Either::Left((moved, _)) => moved,
                Either::Right((true, _)) => {
                    plan.early_answer = true;
                    plan.client_close = true;
                    Ok(0)
                }
                // The backend closed (or failed) while the body was going out.
                Either::Right((false, _)) => {
                    Err(BodyError::Dest(io::ErrorKind::UnexpectedEof.into()))
                }
            };
            match moved {
                Ok(_) if plan.early_answer => {}
                Ok(n) => {
                    lm.bytes_in.add(n);
                    plan.body_sent = true;
                }
                Err(e) => {
                    let kind = match e {
                        BodyError::Source(e) => Kind::ClientGone(e),
                        BodyError::TooLarge => Kind::BodyTooLarge,
                        BodyError::Chunk(why) => Kind::BadBody(why),
                        BodyError::Dest(e) => Kind::BackendStoppedReading(e),
                        BodyError::TooSlow => Kind::BodyTooSlow,
                    };
                    return Err(ProxyError::from(kind).at(addr));
                }
            }
        }
        // Read the response head (bytes of it may be buffered already: they
        // came while the body went out).
        let sent_at = Instant::now();
        let interim = Interim {
            client: &c.client,
            http11: c.req.minor == 1,
            write_timeout,
            ops: response_ops,
        };
        let read = read_response_head(
            &stream,
            &mut c.from_backend,
            &mut c.resp,
            plan.is_head,
            sent_at + l.http.response_timeout,
            &interim,
        )
        .await;
        match read {
            Ok(()) => {
                l.metrics.upstreams[up.ui]
                    .response
                    .record(sent_at.elapsed());
                let status = c.resp.status;
                if up.upstream.is_failure_status(status) {
                    up.upstream
                        .report_failure(&backend, failure_status_reason(status));
                } else {
                    up.upstream.report_success(&backend);
                }
                return Ok((stream, inflight));
            }
            Err(kind) => {
                let err = ProxyError::from(kind)
                    .retryable(reused && plan.replayable)
                    .at(addr);
                if let Some(why) = err.health() {
                    up.upstream.report_failure(&backend, why);
                }
                if let Kind::NoResponse(e) = &err.kind {
                    if err.retryable && c.from_backend.is_empty() {
                        tracing::debug!(listener = %l.cfg.name, request_id = %c.id, "pooled connection was closed by the backend ({e}); retrying on a new one");
                        lm.retries.inc();
                        allow_pooled = false;
                        continue;
                    }
                }
                return Err(err);
            }
        }
    }
}
