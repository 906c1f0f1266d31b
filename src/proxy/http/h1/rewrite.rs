//! The heads ringlb sends: the request to the backend and the response to
//! the client, rebuilt from the parsed spans in one pass, without
//! hop-by-hop fields and with normalized framing fields.

use super::codec::{Framing, Kind, Request, Response, Span};
use crate::config::HeaderOps;

/// Request facts the rewriting needs beyond the parsed head.
pub struct RequestCtx<'a> {
    /// Path and query to send (after strip_prefix), written after a `/`
    /// when `lead_slash` (strip_prefix left a path without one).
    pub path: &'a [u8],
    pub lead_slash: bool,
    pub client_ip: &'a str,
    pub request_id: &'a str,
    /// `Some(protocol)` when the request is upgraded.
    pub upgrade: Option<&'a [u8]>,
    /// The peer is a trusted proxy: its forwarding fields go on.
    pub trusted: bool,
    /// The port the client connected to (X-Forwarded-Port).
    pub port: u16,
    /// The client connection is TLS (X-Forwarded-Proto: https).
    pub https: bool,
    /// The listener's `tls.headers`: these lines go in as they are
    /// (`X-TLS-Version: 1.3\r\n...`, made once per connection).
    pub tls_lines: &'a [u8],
    pub ops: &'a HeaderOps,
}

#[inline]
fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn nominated(buf: &[u8], noms: &[Span], name: &[u8]) -> bool {
    noms.iter().any(|n| n.get(buf).eq_ignore_ascii_case(name))
}

/// Removed or replaced by the route's header operations.
pub fn overridden(ops: &HeaderOps, name: &[u8]) -> bool {
    ops.remove
        .iter()
        .any(|r| r.as_bytes().eq_ignore_ascii_case(name))
        || ops
            .set
            .iter()
            .any(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
}

fn decimal(out: &mut Vec<u8>, n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut n = n;
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

fn te_field(out: &mut Vec<u8>, buf: &[u8], te: &[Span]) {
    out.extend_from_slice(b"Transfer-Encoding: ");
    for (i, v) in te.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v.get(buf));
    }
    out.extend_from_slice(b"\r\n");
}

/// The request head for the backend, into `out` (cleared first).
pub fn request_head(out: &mut Vec<u8>, buf: &[u8], req: &Request, cx: &RequestCtx<'_>) {
    out.clear();
    out.extend_from_slice(req.method.get(buf));
    out.push(b' ');
    if cx.lead_slash {
        out.push(b'/');
    }
    out.extend_from_slice(cx.path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let noms = &req.conn.nominated;
    // Earlier hops' X-Forwarded-For values from a trusted proxy, in order
    // (no allocation unless present).
    let mut xff: Vec<&[u8]> = Vec::new();
    let mut host_written = false;
    // Forwarding fields a trusted proxy sent (then ours are not added).
    let (mut kept_host, mut kept_port, mut kept_proto) = (false, false, false);
    for (i, (n, v)) in req.headers.iter().enumerate() {
        let kind = req.kinds[i];
        match kind {
            Kind::Plain | Kind::XForwardedFor | Kind::Expect | Kind::Host => {}
            Kind::Forwarding if cx.trusted => {}
            _ => continue,
        }
        let name = n.get(buf);
        // `Connection` may not nominate Host away.
        if kind != Kind::Host && !noms.is_empty() && nominated(buf, noms, name) {
            continue;
        }
        if (!cx.ops.remove.is_empty() || !cx.ops.set.is_empty()) && overridden(cx.ops, name) {
            continue;
        }
        let value = v.get(buf);
        match kind {
            // Earlier hops count only when a trusted proxy reports them:
            // anyone else could write any address first in the list.
            Kind::XForwardedFor => {
                let value = super::codec::trim(value);
                if cx.trusted && !value.is_empty() {
                    xff.push(value);
                }
                continue;
            }
            Kind::Expect if req.expect_continue => continue,
            Kind::Forwarding => {
                if name.eq_ignore_ascii_case(b"x-forwarded-host") {
                    kept_host = true;
                } else if name.eq_ignore_ascii_case(b"x-forwarded-port") {
                    kept_port = true;
                } else if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
                    kept_proto = true;
                }
            }
            Kind::Host => {
                if req.absolute || host_written {
                    continue;
                }
                host_written = true;
            }
            _ => {}
        }
        field(out, name, value);
    }
    if req.absolute {
        if let Some(h) = req.host {
            field(out, b"Host", h.get(buf));
        }
    }
    match req.framing {
        // Normalized: the client's spelling and case never go on.
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        _ => {
            if let Some(n) = req.content_length {
                out.extend_from_slice(b"Content-Length: ");
                decimal(out, n);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    for v in &xff {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(cx.client_ip.as_bytes());
    out.extend_from_slice(b"\r\nX-Real-IP: ");
    out.extend_from_slice(cx.client_ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !kept_proto {
        out.extend_from_slice(if cx.https {
            b"X-Forwarded-Proto: https\r\n"
        } else {
            b"X-Forwarded-Proto: http\r\n"
        });
    }
    if !kept_host {
        if let Some(h) = req.host {
            field(out, b"X-Forwarded-Host", h.get(buf));
        }
    }
    if !kept_port {
        out.extend_from_slice(b"X-Forwarded-Port: ");
        decimal(out, u64::from(cx.port));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Request-Id: ");
    out.extend_from_slice(cx.request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(cx.tls_lines);
    if let Some(proto) = cx.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
        out.extend_from_slice(proto);
        out.extend_from_slice(b"\r\n");
    }
    for (n, v) in &cx.ops.set {
        field(out, n.as_bytes(), v.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// How the response travels to the client.
pub struct ResponseCtx<'a> {
    /// Add `Connection: close`.
    pub close: bool,
    /// Add `Connection: keep-alive` (an HTTP/1.0 client that asked for it).
    pub keep_alive_1_0: bool,
    /// The chunked body is decoded for an HTTP/1.0 client.
    pub dechunk: bool,
    /// A `101 Switching Protocols`: the backend's `Upgrade` and `Connection:
    /// upgrade` are for this hop too, and go on.
    pub switching: bool,
    pub ops: &'a HeaderOps,
    /// The body goes out compressed with this coding (chunked; a strong
    /// ETag becomes weak, as the bytes differ).
    pub encoding: Option<&'static str>,
    /// Add `Vary: Accept-Encoding` (the response depends on it).
    pub vary: bool,
    /// A strong ETag goes out weak (the body is, or would be, compressed).
    pub weak_etag: bool,
}

impl<'a> ResponseCtx<'a> {
    /// For an interim (1xx) head or a 101: no framing, no connection
    /// decision; the route's header rules still apply.
    pub fn interim(ops: &'a HeaderOps, switching: bool) -> Self {
        ResponseCtx {
            close: false,
            keep_alive_1_0: false,
            dechunk: false,
            switching,
            ops,
            encoding: None,
            vary: false,
            weak_etag: false,
        }
    }
}

/// The response head for the client, into `out` (cleared first).
pub fn response_head(out: &mut Vec<u8>, buf: &[u8], resp: &Response, cx: &ResponseCtx<'_>) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    decimal(out, u64::from(resp.status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.get(buf));
    out.extend_from_slice(b"\r\n");
    let noms = &resp.conn.nominated;
    let mut upgrade: Option<&[u8]> = None;
    for (i, (n, v)) in resp.headers.iter().enumerate() {
        match resp.kinds[i] {
            Kind::Upgrade if cx.switching => {
                upgrade.get_or_insert(v.get(buf));
                continue;
            }
            Kind::Hop | Kind::Upgrade | Kind::ContentLength | Kind::TransferEncoding => continue,
            _ => {}
        }
        let name = n.get(buf);
        if !noms.is_empty() && nominated(buf, noms, name) {
            continue;
        }
        if (!cx.ops.remove.is_empty() || !cx.ops.set.is_empty()) && overridden(cx.ops, name) {
            continue;
        }
        let value = v.get(buf);
        // A compressed body replaces the backend's `Content-Encoding:
        // identity` (no other coding is compressed).
        if cx.encoding.is_some() && name.eq_ignore_ascii_case(b"content-encoding") {
            continue;
        }
        if cx.weak_etag && name.eq_ignore_ascii_case(b"etag") && !value.starts_with(b"W/") {
            out.extend_from_slice(b"ETag: W/");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
            continue;
        }
        field(out, name, value);
    }
    let chunked_out = resp.framing == Framing::Chunked && !cx.dechunk;
    if cx.vary {
        out.extend_from_slice(b"Vary: Accept-Encoding\r\n");
    }
    if let Some(coding) = cx.encoding {
        out.extend_from_slice(b"Content-Encoding: ");
        out.extend_from_slice(coding.as_bytes());
        out.extend_from_slice(b"\r\nTransfer-Encoding: chunked\r\n");
    } else if chunked_out || (resp.framing == Framing::UntilClose && !resp.te.is_empty()) {
        te_field(out, buf, &resp.te);
    } else if let Some(n) = resp.content_length {
        if resp.te.is_empty() {
            out.extend_from_slice(b"Content-Length: ");
            decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(proto) = upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        field(out, b"Upgrade", proto);
    } else if cx.close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if cx.keep_alive_1_0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    for (n, v) in &cx.ops.set {
        field(out, n.as_bytes(), v.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::super::codec::{parse_request, Limits};
    use super::*;

    const LIMITS: Limits = Limits {
        max_request_line: 8192,
        max_header_size: 32768,
        max_headers: 100,
        underscores: crate::config::Underscores::Drop,
    };

    fn rewrite(raw: &[u8], ops: &HeaderOps) -> String {
        rewrite_from(raw, ops, false)
    }

    fn rewrite_from(raw: &[u8], ops: &HeaderOps, trusted: bool) -> String {
        let mut req = Request::default();
        assert!(parse_request(raw, &LIMITS, &mut req).unwrap());
        let mut out = Vec::new();
        let cx = RequestCtx {
            path: req.path.get(raw),
            lead_slash: false,
            client_ip: "10.0.0.9",
            request_id: "rid",
            upgrade: None,
            trusted,
            port: 80,
            https: false,
            tls_lines: b"",
            ops,
        };
        request_head(&mut out, raw, &req, &cx);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hop_by_hop_removed_and_forwarding_fields_added() {
        let got = rewrite(
            b"GET /a?b HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Connection: x\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-For: 1.1.1.1\r\nAccept: */*\r\nX-Forwarded-For: 2.2.2.2\r\nUser-Agent: t\r\n\r\n",
            &HeaderOps::default(),
        );
        assert_eq!(
            got,
            "GET /a?b HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nUser-Agent: t\r\nX-Forwarded-For: 10.0.0.9\r\nX-Real-IP: 10.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Forwarded-Port: 80\r\nX-Request-Id: rid\r\n\r\n"
        );
    }

    #[test]
    fn forwarding_fields_pass_only_from_trusted_proxies() {
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n\r\n";
        let untrusted = rewrite_from(raw, &HeaderOps::default(), false);
        assert!(
            untrusted.contains("\r\nX-Forwarded-For: 10.0.0.9\r\n"),
            "{untrusted}"
        );
        for gone in [
            "Forwarded: for",
            "evil",
            "X-Forwarded-Port: 1\r",
            "https",
            "1.1.1.1",
        ] {
            assert!(!untrusted.contains(gone), "{gone}: {untrusted}");
        }
        assert!(
            untrusted.contains("X-Forwarded-Host: h\r\nX-Forwarded-Port: 80\r\n"),
            "{untrusted}"
        );
        let trusted = rewrite_from(raw, &HeaderOps::default(), true);
        for kept in [
            "Forwarded: for=6.6.6.6",
            "X-Forwarded-Host: evil",
            "X-Forwarded-Port: 1\r",
            "X-Forwarded-Proto: https",
            "X-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\n",
        ] {
            assert!(trusted.contains(kept), "{kept}: {trusted}");
        }
        assert_eq!(trusted.matches("X-Forwarded-Host").count(), 1, "{trusted}");
        assert_eq!(trusted.matches("X-Forwarded-Proto").count(), 1, "{trusted}");
    }

    #[test]
    fn framing_is_normalized_and_ops_applied() {
        let ops = HeaderOps {
            set: vec![("X-Env".into(), "prod".into())],
            remove: vec!["x-debug".into()],
        };
        let got = rewrite(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\nX-Debug: 1\r\nX-Env: dev\r\nExpect: 100-continue\r\n\r\n",
            &ops,
        );
        assert_eq!(
            got,
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-Forwarded-For: 10.0.0.9\r\nX-Real-IP: 10.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Forwarded-Port: 80\r\nX-Request-Id: rid\r\nX-Env: prod\r\n\r\n"
        );
    }

    #[test]
    fn absolute_form_takes_its_host() {
        let got = rewrite(
            b"GET http://example.com:8080/x HTTP/1.1\r\nHost: other\r\n\r\n",
            &HeaderOps::default(),
        );
        assert!(
            got.starts_with("GET /x HTTP/1.1\r\nHost: example.com:8080\r\n"),
            "{got}"
        );
    }
}
