//! The request phases, in the order an exchange runs them: begin (metrics
//! and log fields), request id, route, limits, then upgrade and rewrite
//! (the head for the backend and what the forward step needs to know).
//! Version independent: HTTP/2 streams will run the same phases.

use super::{
    conn::Conn,
    errors::{Kind, ProxyError},
    h1::{
        codec::{self, Framing},
        fields, path,
        rewrite::{self, RequestCtx},
    },
    HttpProxy, Route,
};
use crate::{
    balancer::{hash_ip, hash_key, Algorithm},
    config::{acl::admits, HashKey, RateKey},
    limits::RetryAfter,
    upstream::Replica,
};

/// A request body this small that arrived with its head goes out in the
/// same write as the head.
const COALESCE_BODY: usize = 16 * 1024;

/// What the phases decided for the forward and response steps.
pub(super) struct Plan {
    /// The consistent-hash key (0 for other algorithms).
    pub key: u64,
    /// The backend the request's sticky cookie names (its token).
    pub sticky: Option<u64>,
    /// The route compresses and the client accepts this coding.
    pub wanted: Option<crate::config::Coding>,
    /// The client wants a coding and its If-None-Match holds a weak tag.
    pub weak_inm: bool,
    /// Where the head ends in `request_head` (a small body may follow).
    pub head_end: usize,
    /// An HTTP/1.0 request without Host: the backend's address goes in.
    pub needs_host: bool,
    pub framing: Framing,
    pub expect_continue: bool,
    pub client_minor: u8,
    pub client_close: bool,
    pub is_head: bool,
    /// The whole body (if any) is in `request_head` already.
    pub body_sent: bool,
    /// Only a request whose every byte we still hold can be sent again.
    pub replayable: bool,
    /// An upgrade was asked for and allowed.
    pub upgrading: bool,
    /// The route's max_body_size (0 = unlimited).
    pub max_body: u64,
    /// The backend answered before it had the whole body: the rest was not
    /// sent, and the client connection closes after the answer.
    pub early_answer: bool,
}

/// Count the head; reset per-request state; keep the log fields.
pub(super) fn begin(c: &mut Conn<'_>) {
    let l = c.l;
    let data = c.from_client.data();
    let req = &c.req;
    l.metrics.listeners[l.li].bytes_in.add(req.head_len as u64);
    c.route_idx = l.routes.len();
    c.bytes_out = 0;
    if l.access.is_some() {
        // Reused strings: no allocation per request once they have grown.
        let set = |dst: &mut String, v: Option<&[u8]>| {
            dst.clear();
            if let Some(v) = v {
                dst.push_str(&String::from_utf8_lossy(v));
            }
        };
        set(&mut c.lf.method, Some(req.method.get(data)));
        set(&mut c.lf.path, Some(req.path.get(data)));
        set(&mut c.lf.user_agent, req.header(data, b"user-agent"));
        set(&mut c.lf.referer, req.header(data, b"referer"));
        c.lf.minor = req.minor;
    }
}

/// The client's request id when acceptable (the codec checked it), else a fresh one.
pub(super) fn request_id(c: &mut Conn<'_>) {
    match c.req.request_id {
        Some(s) => {
            c.id.clear();
            c.id.push_str(std::str::from_utf8(s.get(c.from_client.data())).unwrap_or("invalid"));
        }
        None => c.l.new_request_id(&mut c.id),
    }
}

/// A refusal before anything was forwarded: when the request had no body
/// the connection stays usable, so its head is consumed.
fn refuse(c: &mut Conn<'_>, kind: Kind) -> ProxyError {
    let keep = c.req.keeps_alive_without_body();
    if keep {
        c.from_client.consume(c.req.head_len);
    }
    ProxyError::from(kind).keep_alive(keep)
}

/// The route for the host and path.
///
/// # Errors
/// `NoRoute` (404).
pub(super) fn route(c: &mut Conn<'_>) -> Result<usize, ProxyError> {
    let data = c.from_client.data();
    match c.req.host {
        Some(h) => codec::host_key(h.get(data), &mut c.host),
        None => c.host.clear(),
    }
    let raw = c.req.path.get(data);
    // The normalized form is what routes, limits, rules and the backend see.
    c.path_normalized = path::normalize(raw, &mut c.path, c.l.http.path_strict)
        .map_err(|why| ProxyError::from(Kind::BadHead(why)))?;
    let path: &[u8] = if c.path_normalized { &c.path } else { raw };
    let lookup: &[u8] = if path.is_empty() || path == b"*" {
        b"/"
    } else {
        path
    };
    match c.l.router.find(&c.host, lookup) {
        Some(i) => {
            c.route_idx = i;
            if !allowed(c.l, i, c.peer.ip()) {
                return Err(refuse(c, Kind::Forbidden));
            }
            Ok(i)
        }
        None => Err(refuse(c, Kind::NoRoute)),
    }
}

/// Whether the listener's and route `ri`'s `allow` / `deny` let `ip` in
/// (the client's address, or the one its PROXY header gave); a refusal is
/// counted on the route.
pub(super) fn allowed(l: &HttpProxy, ri: usize, ip: std::net::IpAddr) -> bool {
    let ok = admits(&l.cfg.access, ip) && admits(&l.routes[ri].cfg.access, ip);
    if !ok {
        l.metrics.listeners[l.li].routes[ri].denied.inc();
    }
    ok
}

/// The route's rate limit and body size limit.
///
/// # Errors
/// `RateLimited` (429), `BodyTooLarge` (413).
pub(super) fn limits(c: &mut Conn<'_>, route_idx: usize) -> Result<(), ProxyError> {
    let l = c.l;
    let data = c.from_client.data();
    let (ip, n) = c.ip_key;
    let req = &c.req;
    let took = take_token(l, route_idx, &ip[..n], |name| {
        // Two of the key header: which one counts is anybody's guess (and
        // a client could pick a victim's bucket): refused.
        let mut values = req
            .headers
            .iter()
            .filter(|(hn, _)| hn.get(data).eq_ignore_ascii_case(name.as_bytes()));
        match (values.next(), values.next()) {
            (_, Some(_)) => Err(Kind::BadHead("the rate-limit key header appears twice")),
            (Some((_, v)), None) => Ok(Some(v.get(data))),
            (None, _) => Ok(None),
        }
    });
    match took {
        Ok(()) => {}
        Err(k @ Kind::RateLimited { .. }) => return Err(refuse(c, k)),
        Err(k) => return Err(k.into()),
    }
    let max_body = l.routes[route_idx].cfg.max_body_size;
    if let Framing::Length(n) = c.req.framing {
        if max_body > 0 && n > max_body {
            return Err(Kind::BodyTooLarge.into());
        }
    }
    Ok(())
}

/// A token from the route's rate limit, if it has one. `header` looks up
/// the key header's value (for `key = "header:NAME"`; `Ok(None)` when it is
/// absent: the client address counts instead).
///
/// # Errors
/// `RateLimited`, or the lookup's error (the key header appears twice).
pub(super) fn take_token<'a>(
    l: &HttpProxy,
    route_idx: usize,
    ip: &'a [u8],
    header: impl FnOnce(&str) -> Result<Option<&'a [u8]>, Kind>,
) -> Result<(), Kind> {
    let Some(Some(rl)) = l.rate_limits.get(route_idx) else {
        return Ok(());
    };
    let key: &[u8] = match &rl.cfg.key {
        RateKey::Route => b"",
        RateKey::ClientIp => ip,
        RateKey::Header(name) => header(name)?.unwrap_or(ip),
    };
    if let Err(RetryAfter(secs)) = rl.take(key) {
        l.metrics.listeners[l.li].routes[route_idx]
            .rate_limited
            .inc();
        return Err(Kind::RateLimited { retry_after: secs });
    }
    Ok(())
}

/// The path for the backend after the route's strip_prefix, and whether a
/// `/` goes in front of it (strip_prefix took the path's own).
///
/// # Errors
/// A strip_prefix that would leave a dot segment (`/api..` -> `/..`).
pub(super) fn forward_path<'p>(
    route: &Route,
    path: &'p [u8],
) -> Result<(&'p [u8], bool), ProxyError> {
    let (fwd_path, lead_slash): (&[u8], bool) = if path.is_empty() {
        (b"/", false)
    } else if route.cfg.strip_prefix && path.starts_with(route.cfg.path_prefix.as_bytes()) {
        let rest = &path[route.cfg.path_prefix.len()..];
        (rest, rest.first() != Some(&b'/'))
    } else {
        (path, false)
    };
    if lead_slash && fields::has_dot_segment(fwd_path) {
        return Err(Kind::BadHead("strip_prefix would leave a dot segment").into());
    }
    Ok((fwd_path, lead_slash))
}

/// Build the head for the backend (upgrade allowed or not, path after
/// strip_prefix, header rules), take a small body along, and note what
/// the forward step needs. Consumes the head from the client buffer.
///
/// # Errors
/// A strip_prefix that would leave a dot segment (`/api..` -> `/..`).
pub(super) fn rewrite(c: &mut Conn<'_>, route: &Route, up: &Replica) -> Result<Plan, ProxyError> {
    let data = c.from_client.data();
    let req = &c.req;
    let path: &[u8] = if c.path_normalized {
        &c.path
    } else {
        req.path.get(data)
    };

    // Upgrade only to protocols the route allows (never h2c: config refuses it).
    let upgrade = match req.upgrade {
        Some(u) if req.conn.upgrade && req.method.get(data) == b"GET" => {
            let value = codec::trim(u.get(data));
            let proto = value.split(|&b| b == b'/').next().unwrap_or(value);
            let allowed = route
                .cfg
                .upgrade
                .iter()
                .any(|p| p.as_bytes().eq_ignore_ascii_case(proto));
            allowed.then_some(value)
        }
        _ => None,
    };

    // Path after strip_prefix (a `/` goes in front when it lost its own).
    let (fwd_path, lead_slash) = forward_path(route, path)?;

    let key = if up.cfg.balance == Algorithm::ConsistentHash {
        match &up.cfg.hash_key {
            HashKey::ClientIp => hash_ip(c.peer.ip()),
            HashKey::Uri => hash_key(path),
            HashKey::Header(name) => req
                .header(data, name.as_bytes())
                .map_or_else(|| hash_ip(c.peer.ip()), hash_key),
            // The name asked for: over TLS the SNI routed on it.
            HashKey::Sni => hash_key(c.host.as_bytes()),
        }
    } else {
        0
    };

    rewrite::request_head(
        &mut c.request_head,
        data,
        req,
        &RequestCtx {
            path: fwd_path,
            lead_slash,
            client_ip: &c.ip,
            request_id: &c.id,
            upgrade,
            trusted: c.trusted,
            port: c.local_port,
            https: c.l.tls.is_some(),
            tls_lines: &c.tls_lines,
            ops: &route.cfg.request_headers,
        },
    );
    let sticky = up.cfg.sticky.as_ref().and_then(|s| {
        super::sticky::token(codec::values(&req.headers, data, b"cookie"), &s.cookie)
    });
    let wanted = route.cfg.compress.as_ref().and_then(|z| {
        super::compress::wanted(z, codec::values(&req.headers, data, b"accept-encoding"))
    });
    let weak_inm = wanted.is_some()
        && codec::values(&req.headers, data, b"if-none-match")
            .any(|v| v.windows(2).any(|w| w == b"W/"));
    let mut plan = Plan {
        key,
        sticky,
        wanted,
        weak_inm,
        head_end: c.request_head.len(),
        needs_host: req.host.is_none(),
        framing: req.framing,
        expect_continue: req.expect_continue && req.minor == 1,
        client_minor: req.minor,
        client_close: req.conn.close || (req.minor == 0 && !req.conn.keep_alive),
        is_head: req.is_head,
        body_sent: req.framing == Framing::None,
        replayable: false,
        upgrading: upgrade.is_some(),
        max_body: route.cfg.max_body_size,
        early_answer: false,
    };
    let idempotent = req.idempotent;
    c.from_client.consume(c.req.head_len);

    // A small Content-Length body already here goes out with the head.
    if let Framing::Length(n) = plan.framing {
        if n as usize <= COALESCE_BODY && c.from_client.len() as u64 >= n {
            c.request_head
                .extend_from_slice(&c.from_client.data()[..n as usize]);
            c.from_client.consume(n as usize);
            c.l.metrics.listeners[c.l.li].bytes_in.add(n);
            plan.body_sent = true;
        }
    }
    plan.replayable = idempotent && plan.body_sent;
    Ok(plan)
}
