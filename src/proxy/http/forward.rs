//! The forward step: pick a backend (or wait in the upstream's bounded
//! queue), reuse a pooled connection or connect, send the head (with a
//! small body), read the response head; retry on the next backend or on a
//! fresh connection where that is safe. A body that did not fit the head's
//! write goes out in the response step, beside the response. Health outcomes are reported here, from
//! the error's own verdict.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use super::{
    conn::Conn,
    errors::{Kind, ProxyError},
    h1::{
        body::timed_write,
        client::{read_response_head, Interim},
    },
    phases::Plan,
    retry::Failure,
    HttpProxy,
};
use crate::{
    backends::{Backend, BackendId, NoPick, Upstream},
    io::stream::Stream,
    upstream::{connect::timed_connect, InFlight, Picked, Replica},
};

/// The failure reason for a response status that counts as one.
pub(super) fn failure_status_reason(status: u16) -> &'static str {
    match status {
        502 => "502 response",
        503 => "503 response",
        504 => "504 response",
        _ => "failure-status response",
    }
}

/// How often a queued request looks for a free backend slot.
const QUEUE_POLL: Duration = Duration::from_millis(2);
const QUEUE_POLL_MAX: Duration = Duration::from_millis(20);

/// A request's place in the upstream's queue (counted process-wide);
/// leaving it, however the request ends, gives the place back.
pub(super) struct Queued<'a> {
    up: &'a Upstream,
    until: Option<Instant>,
    wait: Duration,
}

impl<'a> Queued<'a> {
    pub(super) fn new(up: &'a Upstream) -> Self {
        Queued {
            up,
            until: None,
            wait: Duration::ZERO,
        }
    }

    /// Wait a little for a backend slot.
    ///
    /// # Errors
    /// `QueueFull` (no place), `QueueTimeout` (waited `queue_timeout`).
    pub(super) async fn wait(&mut self, max: u32, timeout: Duration) -> Result<(), ProxyError> {
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
        crate::io::timer::sleep(self.wait).await;
        Ok(())
    }

    pub(super) fn leave(&mut self) {
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
    let ri = c.route_idx;
    let tries = l.tries(ri);
    l.retry_deposit(ri);
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
        let picked = match up.pick_sticky(plan.sticky, plan.key, &tried) {
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
        let Some((stream, reused)) =
            backend_stream(l, up, &picked, allow_pooled, plan.replayable, c.peer, &c.id).await
        else {
            tried.push(backend.id);
            // The loop's first check says whether a try is left.
            if !l.may_retry(ri, Failure::Connect, plan.replayable, || true) {
                return Err(ProxyError::from(Kind::BackendsFailed).at(addr));
            }
            continue;
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
            // The body goes out in the response step, beside the response.
            return Ok((stream, inflight));
        }
        // Read the response head (bytes of it may be buffered already: they
        // came while the body went out).
        let sent_at = Instant::now();
        let interim = Interim {
            client: Some(&c.client),
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
        let status = c.resp.status;
        // Another try is left for a retry the route's policy allows (this
        // backend counts as tried).
        let room = || up.tried_in_set(&tried) + 1 < tries.min(up.len());
        let failure = match judge(
            l,
            up,
            &backend,
            read,
            status,
            sent_at,
            reused && plan.replayable,
        ) {
            Ok(()) => Failure::Status(status),
            Err(err) => {
                if let Kind::NoResponse(e) = &err.kind {
                    if err.retryable && c.from_backend.is_empty() {
                        tracing::debug!(listener = %l.cfg.name, request_id = %c.id, "pooled connection was closed by the backend ({e}); retrying on a new one");
                        lm.retries.inc();
                        allow_pooled = false;
                        continue;
                    }
                }
                match Failure::of(&err.kind, c.from_backend.is_empty()) {
                    Some(f) if l.may_retry(ri, f, plan.replayable, room) => f,
                    _ => return Err(err),
                }
            }
        };
        if let Failure::Status(s) = failure {
            if !l.may_retry(ri, failure, plan.replayable, room) {
                return Ok((stream, inflight));
            }
            tracing::debug!(listener = %l.cfg.name, request_id = %c.id, backend = %addr, "{s} response; retrying on another backend");
        } else {
            tracing::debug!(listener = %l.cfg.name, request_id = %c.id, backend = %addr, "{failure:?} before a response; retrying on another backend");
        }
        // This backend's connection and what it sent are dropped.
        lm.retries.inc();
        tried.push(backend.id);
        c.from_backend.clear();
    }
}

/// A connection to the picked backend: a pooled one when `allow_pooled`
/// and one is usable (then `true`), else a new one. `None`: connecting
/// failed, and that was counted and logged ([`connect_failed`]).
pub(super) async fn backend_stream(
    l: &HttpProxy,
    up: &Replica,
    picked: &Picked,
    allow_pooled: bool,
    replayable: bool,
    peer: std::net::SocketAddr,
    id: &str,
) -> Option<(Stream, bool)> {
    if allow_pooled {
        if let Some(s) = up.take_idle(picked, replayable) {
            return Some((s, true));
        }
    }
    let backend = picked.backend();
    match timed_connect(
        backend.addr,
        l.cfg.connect_timeout,
        &l.metrics,
        up.ui,
        up.tls.as_deref(),
    )
    .await
    {
        Ok(s) => Some((s, false)),
        Err(e) => {
            connect_failed(l, up, backend, &e, peer, id);
            None
        }
    }
}

/// A connect that failed: a retry counted, the backend's health told
/// (unless the cause was ours: out of fds or ports), a warning logged.
pub(super) fn connect_failed(
    l: &HttpProxy,
    up: &Replica,
    backend: &Backend,
    e: &crate::io::connect::ConnectError,
    peer: std::net::SocketAddr,
    id: &str,
) {
    l.metrics.listeners[l.li].retries.inc();
    let err = ProxyError::from(Kind::Connect(e.to_string()));
    match err.health() {
        Some(_) if e.is_local() => {}
        Some(why) => up.upstream.report_failure(backend, why),
        None => {}
    }
    tracing::warn!(listener = %l.cfg.name, %peer, request_id = %id, "{e}; trying next backend");
}

/// A response head read, judged: its time into the upstream's histogram,
/// its status (or its failure) into the backend's health.
///
/// # Errors
/// The read's failure, as the error to answer with.
pub(super) fn judge(
    l: &HttpProxy,
    up: &Replica,
    backend: &Backend,
    read: Result<(), Kind>,
    status: u16,
    sent_at: Instant,
    retryable: bool,
) -> Result<(), ProxyError> {
    match read {
        Ok(()) => {
            l.metrics.upstreams[up.ui]
                .response
                .record(sent_at.elapsed());
            if up.upstream.is_failure_status(status) {
                up.upstream
                    .report_failure(backend, failure_status_reason(status));
            } else {
                up.upstream.report_success(backend);
            }
            Ok(())
        }
        Err(kind) => {
            let err = ProxyError::from(kind).retryable(retryable).at(backend.addr);
            if let Some(why) = err.health() {
                up.upstream.report_failure(backend, why);
            }
            Err(err)
        }
    }
}
