//! A route's own answer (`return`, `redirect`), the same for HTTP/1.1 and
//! HTTP/2: the status, a `Location` expanded from the request, the body,
//! and the route's `response_headers` (HSTS among them), which win over
//! the fields written here.

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::{
    conn::{Conn, Next},
    errors::{Kind, ProxyError},
    h1::{body::timed_write, server},
    Route,
};
use crate::config::{Answer, HeaderOps, Var, Vars};

/// The `Location` of a redirect for this request (`None` for a `return`).
///
/// # Errors
/// `BadHead` (400): the target names `$host` and the request had none (an
/// HTTP/1.0 request without Host).
pub(super) fn location(a: &Answer, v: &Vars<'_>) -> Result<Option<Vec<u8>>, ProxyError> {
    let Some(t) = &a.location else {
        return Ok(None);
    };
    if v.host.is_empty() && t.uses(Var::Host) {
        return Err(Kind::BadHead("a redirect to $host needs a Host field").into());
    }
    let mut out = Vec::with_capacity(64 + v.target.len());
    t.render(v, &mut out);
    Ok(Some(out))
}

/// The fields of an answer, before the route's rules: (name, value).
fn fields<'a>(
    a: &'a Answer,
    location: Option<&'a [u8]>,
    id: &'a str,
) -> [(&'static str, &'a [u8]); 3] {
    [
        ("Location", location.unwrap_or_default()),
        (
            "Content-Type",
            a.content_type.as_deref().unwrap_or_default().as_bytes(),
        ),
        ("X-Request-Id", id.as_bytes()),
    ]
}

/// Whether a field of ours goes out: it has a value and no rule of the
/// route sets or removes it.
fn kept(ops: &HeaderOps, name: &str, value: &[u8]) -> bool {
    !value.is_empty()
        && !ops.remove.iter().any(|r| r.eq_ignore_ascii_case(name))
        && !ops.set.iter().any(|(s, _)| s.eq_ignore_ascii_case(name))
}

/// Whether an answer with this status says how long its (empty or not)
/// body is: all but 204 (RFC 9110 8.6). A 205 has no body but must say so
/// (`Content-Length: 0`, RFC 9110 15.3.6), or an HTTP/1.1 client would
/// read until the connection closes.
fn has_length(status: u16) -> bool {
    status != 204
}

/// What the `Connection` field of an HTTP/1.x answer says.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Persist {
    /// Nothing: HTTP/1.1 keeps the connection by default.
    Default,
    /// `Connection: keep-alive`, for an HTTP/1.0 client that asked for it.
    KeepAlive,
    /// `Connection: close`.
    Close,
}

/// The whole HTTP/1.1 answer. `is_head`: no body (Content-Length still
/// says its length).
pub(super) fn h1(
    out: &mut Vec<u8>,
    a: &Answer,
    location: Option<&[u8]>,
    ops: &HeaderOps,
    id: &str,
    persist: Persist,
    is_head: bool,
) {
    let reason = StatusCode::from_u16(a.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", a.status).as_bytes());
    for (name, value) in fields(a, location, id) {
        if kept(ops, name, value) {
            for part in [name.as_bytes(), b": ", value, b"\r\n"] {
                out.extend_from_slice(part);
            }
        }
    }
    for (name, value) in &ops.set {
        for part in [name.as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
    if has_length(a.status) {
        out.extend_from_slice(format!("Content-Length: {}\r\n", a.body.len()).as_bytes());
    }
    match persist {
        Persist::Default => {}
        Persist::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        Persist::Close => out.extend_from_slice(b"Connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    if !is_head {
        out.extend_from_slice(a.body.as_bytes());
    }
}

/// The HTTP/2 answer: the head and the body (empty for none).
///
/// # Errors
/// `BadHead` (400): the expanded `Location` is not a valid field value
/// (the request's target or authority put bytes in it that no field may
/// carry); a redirect without its target would be wrong.
pub(super) fn h2(
    a: &Answer,
    location: Option<&[u8]>,
    ops: &HeaderOps,
    id: &str,
) -> Result<(http::Response<()>, Bytes), ProxyError> {
    if location.is_some_and(|l| HeaderValue::from_bytes(l).is_err()) {
        return Err(Kind::BadHead("the redirect target is not a valid field value").into());
    }
    let mut r = http::Response::new(());
    *r.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK);
    let h: &mut HeaderMap = r.headers_mut();
    for (name, value) in fields(a, location, id) {
        if kept(ops, name, value) {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                h.insert(n, v);
            }
        }
    }
    if has_length(a.status) {
        h.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(a.body.len()),
        );
    }
    for (n, v) in &ops.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(n, v);
        }
    }
    Ok((r, Bytes::from(a.body.clone().into_bytes())))
}

impl Conn<'_> {
    /// Answer with route `ri`'s own answer; the connection stays open when
    /// the request had no body to read past.
    pub(super) async fn own_answer(
        &mut self,
        route: &Route,
        a: &Answer,
        started: Instant,
    ) -> Result<Next, ProxyError> {
        let l = self.l;
        let data = self.from_client.data();
        let target = self.req.path.get(data);
        let vars = Vars {
            https: l.tls.is_some(),
            host: &self.host,
            target,
            path: if self.path_normalized {
                &self.path
            } else {
                b""
            },
            port: self.local_port,
            remote: self.peer.ip(),
        };
        let location = location(a, &vars)?;
        let is_head = self.req.method.get(data) == b"HEAD";
        let keep = self.req.keeps_alive_without_body();
        let persist = match (keep, self.req.minor) {
            (false, _) => Persist::Close,
            (true, 0) => Persist::KeepAlive,
            (true, _) => Persist::Default,
        };
        self.response_head.clear();
        h1(
            &mut self.response_head,
            a,
            location.as_deref(),
            &route.cfg.response_headers,
            &self.id,
            persist,
            is_head,
        );
        if keep {
            self.from_client.consume(self.req.head_len);
        }
        self.bytes_out = self.response_head.len() as u64;
        self.log(a.status, None, started);
        let sent = timed_write(&self.client, &self.response_head, &[], l.http.body_timeout).await;
        if let Err(e) = sent {
            tracing::debug!(listener = %l.cfg.name, peer = %self.peer, request_id = %self.id, "client gone before the answer was sent: {e}");
            return Ok(Next::Close);
        }
        if keep {
            Ok(Next::KeepAlive)
        } else {
            server::linger(&self.client, &mut self.from_client).await;
            Ok(Next::Close)
        }
    }
}
