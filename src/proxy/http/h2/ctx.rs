//! What the steps of an HTTP/2 stream share: the client connection's
//! facts, the client's side of the stream ([`Reply`]), the request as the
//! forward steps need it, and the pick. A leaf of `h2`: the stream and the
//! forward steps import it, it imports none of them.

use std::{
    cell::{Cell, RefCell},
    net::SocketAddr,
    task::{Context, Poll},
};

use bytes::Bytes;
use h2::server::SendResponse;
use http::{request::Parts, HeaderName, HeaderValue};

use super::{
    super::{
        errors::{Kind, ProxyError},
        forward::Queued,
        HttpProxy, Route,
    },
    body::Slot,
    headers::Facts,
};
use crate::{
    backends::{Backend, BackendId, NoPick},
    io::tls::TlsInfo,
    upstream::{Picked, Replica},
};

/// What every stream of one client connection shares.
pub(super) struct ConnCtx<'a> {
    pub l: &'a HttpProxy,
    pub peer: SocketAddr,
    pub ip: String,
    pub ip_key: ([u8; 16], usize),
    pub trusted: bool,
    /// The port the client connected to, as X-Forwarded-Port writes it.
    pub local_port: String,
    pub tls: Option<TlsInfo>,
    pub tls_fields: Vec<(HeaderName, HeaderValue)>,
}

/// The client's side of one stream: the response head not sent yet, then
/// the body's send half.
pub(super) struct Reply {
    pub respond: RefCell<SendResponse<Bytes>>,
    pub body: Slot,
    pub grpc: bool,
    /// The status sent (0: no head yet).
    pub status: Cell<u16>,
    pub bytes_out: Cell<u64>,
}

impl Reply {
    /// Send the response head; `end`: no body or trailers follow.
    ///
    /// # Errors
    /// The client reset the stream or the connection is gone.
    pub fn head(&self, resp: http::Response<()>, end: bool) -> Result<(), h2::Error> {
        let status = resp.status().as_u16();
        let s = self.respond.borrow_mut().send_response(resp, end)?;
        self.status.set(status);
        if !end {
            *self.body.borrow_mut() = Some(s);
        }
        Ok(())
    }

    pub fn head_sent(&self) -> bool {
        self.status.get() != 0
    }

    /// The client reset the stream (whatever part of it is held now).
    pub fn poll_reset(&self, cx: &mut Context<'_>) -> Poll<h2::Reason> {
        let ready =
            |p: Poll<Result<h2::Reason, h2::Error>>| p.map(|r| r.unwrap_or(h2::Reason::CANCEL));
        if let Ok(mut b) = self.body.try_borrow_mut() {
            if let Some(s) = b.as_mut() {
                return ready(s.poll_reset(cx));
            }
        }
        match self.respond.try_borrow_mut() {
            Ok(mut r) if !self.head_sent() => ready(r.poll_reset(cx)),
            _ => Poll::Pending,
        }
    }
}

/// Where the stream went, for the log.
#[derive(Default)]
pub(super) struct Trace {
    pub route: Cell<Option<usize>>,
    pub backend: Cell<Option<SocketAddr>>,
}

/// What the forward steps need of the request.
pub(super) struct Req<'a> {
    pub parts: &'a Parts,
    pub route: &'a Route,
    /// The route's index.
    pub ri: usize,
    pub up: &'a Replica,
    /// Path and query for the backend (after strip_prefix).
    pub target: String,
    pub authority: &'a str,
    pub key: u64,
    /// The backend the request's sticky cookie names (its token).
    pub sticky: Option<u64>,
    pub facts: Facts<'a>,
    pub max_body: u64,
    pub content_length: Option<u64>,
}

/// Pick and reserve a backend not in `tried`, waiting in the upstream's
/// bounded queue when every backend is full.
///
/// # Errors
/// No backend (or none left untried), queue full or timed out.
pub(super) async fn pick(
    cx: &ConnCtx<'_>,
    req: &Req<'_>,
    tried: &[BackendId],
    queue: &mut Queued<'_>,
) -> Result<Picked, ProxyError> {
    let up = req.up;
    let tries = cx.l.tries(req.ri);
    loop {
        if up.tried_in_set(tried) >= tries.min(up.len()) {
            return Err(Kind::BackendsFailed.into());
        }
        match up.pick_sticky(req.sticky, req.key, tried) {
            Ok(p) => {
                queue.leave();
                return Ok(p);
            }
            Err(NoPick { full: true }) if tried.is_empty() && up.cfg.queue > 0 => {
                queue.wait(up.cfg.queue, up.cfg.queue_timeout).await?;
            }
            Err(_) => {
                return Err(if tried.is_empty() {
                    Kind::NoBackend
                } else {
                    Kind::BackendsFailed
                }
                .into())
            }
        }
    }
}

/// The sticky cookie for a response from `backend`, when the upstream is
/// sticky and the request's cookie named another backend (or none).
pub(super) fn sticky_cookie(req: &Req<'_>, backend: &Backend, h: &mut http::HeaderMap) {
    if let Some(s) = &req.up.cfg.sticky {
        if req.sticky != Some(backend.sticky) {
            super::super::sticky::add_h2(h, s, backend.sticky, req.facts.https);
        }
    }
}
