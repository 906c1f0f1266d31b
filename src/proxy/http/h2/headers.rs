//! Header sections across the versions: an HTTP/2 request's fields as a
//! backend gets them (HTTP/1.1 head or HTTP/2 header block), and a
//! backend's response fields as an HTTP/2 client gets them. The same rules
//! as HTTP/1.1 ([`super::super::h1::rewrite`]): hop-by-hop fields out (but
//! `te: trailers`), forwarding fields from trusted proxies only, ringlb's
//! own in, then the route's rules.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::super::{
    errors::Kind,
    h1::{
        codec::{self, Kind as F, Response},
        rewrite::overridden,
    },
};
use crate::config::{HeaderOps, Underscores};

/// Facts about the client connection the fields need.
pub(super) struct Facts<'a> {
    pub client_ip: &'a str,
    pub trusted: bool,
    pub https: bool,
    /// The port the client connected to, as text (made once per connection).
    pub port: &'a str,
    pub request_id: &'a str,
    /// `tls.headers`: (name, value) pairs, made once per connection.
    pub tls_fields: &'a [(HeaderName, HeaderValue)],
    pub underscores: Underscores,
}

/// The request fields for the backend, through `emit(name, value)`
/// (`authority`: the request's `:authority`, sent as `X-Forwarded-Host`).
///
/// # Errors
/// An underscore in a name when the listener refuses them.
pub(super) fn request(
    h: &HeaderMap,
    f: &Facts<'_>,
    ops: &HeaderOps,
    authority: &str,
    emit: &mut dyn FnMut(&[u8], &[u8]),
) -> Result<(), Kind> {
    let mut xff: Vec<&[u8]> = Vec::new();
    let (mut kept_host, mut kept_port, mut kept_proto) = (false, false, false);
    for (n, v) in h {
        let name = n.as_str().as_bytes();
        let value = v.as_bytes();
        if name.contains(&b'_') {
            match f.underscores {
                Underscores::Drop => continue,
                Underscores::Refuse => return Err(Kind::BadHead("underscore in a header name")),
                Underscores::Allow if codec::spoofs_ours(name) => continue,
                Underscores::Allow => {}
            }
        }
        match codec::classify(name) {
            F::Plain | F::Expect => {}
            // The one hop-by-hop field HTTP/2 keeps: gRPC needs it.
            F::Hop if name == b"te" && value.eq_ignore_ascii_case(b"trailers") => {}
            F::XForwardedFor => {
                let value = codec::trim(value);
                if f.trusted && !value.is_empty() {
                    xff.push(value);
                }
                continue;
            }
            F::Forwarding if f.trusted => match name {
                b"x-forwarded-host" => kept_host = true,
                b"x-forwarded-port" => kept_port = true,
                b"x-forwarded-proto" => kept_proto = true,
                _ => {}
            },
            // Content-Length goes on as the framing says; Host is :authority.
            _ => continue,
        }
        if (!ops.remove.is_empty() || !ops.set.is_empty()) && overridden(ops, name) {
            continue;
        }
        emit(name, value);
    }
    let mut line = Vec::with_capacity(64);
    for v in &xff {
        line.extend_from_slice(v);
        line.extend_from_slice(b", ");
    }
    line.extend_from_slice(f.client_ip.as_bytes());
    emit(b"x-forwarded-for", &line);
    emit(b"x-real-ip", f.client_ip.as_bytes());
    if !kept_proto {
        emit(
            b"x-forwarded-proto",
            if f.https { b"https" } else { b"http" },
        );
    }
    if !kept_host && !authority.is_empty() {
        emit(b"x-forwarded-host", authority.as_bytes());
    }
    if !kept_port {
        emit(b"x-forwarded-port", f.port.as_bytes());
    }
    emit(b"x-request-id", f.request_id.as_bytes());
    for (n, v) in f.tls_fields {
        emit(n.as_str().as_bytes(), v.as_bytes());
    }
    for (n, v) in &ops.set {
        emit(n.as_bytes(), v.as_bytes());
    }
    Ok(())
}

/// Put a field into an HTTP/2 header block (names are lower case there).
pub(super) fn insert(map: &mut HeaderMap, name: &[u8], value: &[u8]) {
    if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
        map.append(n, v);
    }
}

/// Fields HTTP/2 forbids (RFC 9113 8.2.2), whichever peer sent them.
fn connection_specific(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    )
}

/// An HTTP/1.1 backend's response head as HTTP/2 response fields.
pub(super) fn from_h1(buf: &[u8], resp: &Response, is_head: bool, ops: &HeaderOps) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(resp.headers.len() + ops.set.len());
    let noms = &resp.conn.nominated;
    for (i, (n, v)) in resp.headers.iter().enumerate() {
        match resp.kinds[i] {
            // The length goes out once, canonical, below.
            F::Hop | F::Upgrade | F::TransferEncoding | F::ContentLength => continue,
            _ => {}
        }
        let name = n.get(buf);
        if noms.iter().any(|m| m.get(buf).eq_ignore_ascii_case(name)) {
            continue;
        }
        if (!ops.remove.is_empty() || !ops.set.is_empty()) && overridden(ops, name) {
            continue;
        }
        insert(&mut out, name, v.get(buf));
    }
    // The length of this body; a HEAD or 304 answer keeps the one it
    // describes.
    let length = match resp.framing {
        codec::Framing::Length(n) => Some(n),
        _ if is_head || resp.status == 304 => resp.content_length,
        _ => None,
    };
    if let Some(n) = length {
        out.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    for (n, v) in &ops.set {
        insert(&mut out, n.as_bytes(), v.as_bytes());
    }
    out
}

/// An HTTP/2 backend's response fields for the client: connection-specific
/// ones out, the route's rules in.
pub(super) fn from_h2(h: &mut HeaderMap, ops: &HeaderOps) {
    let drop: Vec<HeaderName> = h
        .keys()
        .filter(|n| {
            connection_specific(n.as_str())
                || ops.remove.iter().any(|r| r == n.as_str())
                || ops
                    .set
                    .iter()
                    .any(|(s, _)| s.eq_ignore_ascii_case(n.as_str()))
        })
        .cloned()
        .collect();
    for n in drop {
        h.remove(n);
    }
    for (n, v) in &ops.set {
        insert(h, n.as_bytes(), v.as_bytes());
    }
}

/// `X-TLS-Version: 1.3\r\n...` lines as field pairs.
pub(super) fn tls_fields(lines: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
    lines
        .split(|&b| b == b'\n')
        .filter_map(|l| {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            let at = l.iter().position(|&b| b == b':')?;
            let name = HeaderName::from_bytes(&l[..at]).ok()?;
            let value = HeaderValue::from_bytes(codec::trim(&l[at + 1..])).ok()?;
            Some((name, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(trusted: bool) -> Facts<'a> {
        Facts {
            client_ip: "10.0.0.9",
            trusted,
            https: true,
            port: "443",
            request_id: "rid1",
            tls_fields: &[],
            underscores: Underscores::Drop,
        }
    }

    fn fields(h: &HeaderMap, f: &Facts<'_>, ops: &HeaderOps) -> Vec<(String, String)> {
        let mut out = Vec::new();
        request(h, f, ops, "api.test", &mut |n, v| {
            out.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        })
        .unwrap();
        out
    }

    #[test]
    fn hop_by_hop_out_te_trailers_kept_forwarding_ours() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("te", "trailers"),
            ("keep-alive", "5"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("x_forwarded_for", "7.7.7.7"),
            ("content-type", "application/grpc"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let got = fields(&h, &facts(false), &HeaderOps::default());
        let get = |n: &str| {
            got.iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("te"), ["trailers"]);
        assert_eq!(get("keep-alive"), Vec::<&str>::new());
        assert_eq!(
            get("x-forwarded-for"),
            ["10.0.0.9"],
            "an untrusted list is dropped"
        );
        assert_eq!(get("x-real-ip"), ["10.0.0.9"]);
        assert_eq!(get("x-forwarded-proto"), ["https"]);
        assert_eq!(get("x_forwarded_for"), Vec::<&str>::new());
        assert_eq!(get("x-forwarded-host"), ["api.test"]);
        assert_eq!(get("x-request-id"), ["rid1"]);
        assert_eq!(get("content-type"), ["application/grpc"]);
        // From a trusted proxy, its hops stay in front.
        let got = fields(&h, &facts(true), &HeaderOps::default());
        assert!(got.contains(&("x-forwarded-for".into(), "6.6.6.6, 10.0.0.9".into())));
    }

    #[test]
    fn connection_specific_response_fields_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close"));
        h.insert("server", HeaderValue::from_static("x"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        let ops = HeaderOps {
            set: vec![("X-Served-By".into(), "ringlb".into())],
            remove: vec!["server".into()],
        };
        from_h2(&mut h, &ops);
        assert!(h.get("connection").is_none());
        assert!(h.get("server").is_none());
        assert_eq!(h.get("x-keep").unwrap(), "1");
        assert_eq!(h.get("x-served-by").unwrap(), "ringlb");
    }
}
