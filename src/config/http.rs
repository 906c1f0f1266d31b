//! The http part of a `[[listener]]`: request timeouts and size limits, its
//! `[[listener.route]]`s with their header operations and `rate_limit`.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use serde::Deserialize;

use super::{
    upstream::{upstream_ref, UpstreamIndex},
    values::{is_token, nonzero_dur, one_of, range, size, RawSize},
    ConfigError,
};

/// `underscores_in_headers`: request header names with `_` (nginx's
/// `underscores_in_headers off` drops them). CGI, PHP and Rack read
/// `X_Forwarded_For` and `X-Forwarded-For` as the same variable, so a client
/// could spoof a header ringlb sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underscores {
    /// Not forwarded (and not seen by rate-limit or hash keys): the default.
    Drop,
    /// The request is refused (400).
    Refuse,
    /// Forwarded as they are.
    Allow,
}

/// Settings of an http listener.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The whole request head must arrive within this (408).
    pub header_timeout: Duration,
    /// An idle keep-alive client connection is closed after this.
    pub keepalive_timeout: Duration,
    /// The backend's response head must start within this (504).
    pub response_timeout: Duration,
    /// A body (either way) that moves no byte for this long ends the exchange.
    pub body_timeout: Duration,
    pub max_request_line: usize,
    pub max_header_size: usize,
    pub max_headers: usize,
    /// The least average rate (bytes per second) a request or response body
    /// must keep after its first `body_timeout` (at most 10 s); 0 = off.
    pub body_min_rate: u64,
    /// Refuse `%2F`, `%5C`, `\` and `;` in request paths (backends read
    /// them differently); `path_strict = false` passes them on.
    pub path_strict: bool,
    /// What to do with request header names that contain `_`.
    pub underscores: Underscores,
    /// Routes, in config order; the listener's `upstream` is the last one (any host, "/").
    pub routes: Vec<RouteConfig>,
    /// HTTP/2 limits (h2 over TLS, h2c with prior knowledge).
    pub h2: super::h2::H2Config,
}

/// One `[[listener.route]]`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Lower-case host; `*.example.com` for a wildcard; `None` for any host.
    pub host: Option<String>,
    pub path_prefix: String,
    pub strip_prefix: bool,
    /// Index into [`Config::upstreams`](super::Config::upstreams); `None`
    /// for a route that answers itself (`answer`).
    pub upstream: Option<usize>,
    /// Largest request body accepted (413 above); 0 = unlimited.
    pub max_body_size: u64,
    /// Lower-case protocol names an `Upgrade` request may switch to.
    pub upgrade: Vec<String>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub rate_limit: Option<RateLimitConfig>,
    /// The route's `allow` / `deny` (403 for an address they keep out).
    pub access: Option<std::sync::Arc<super::acl::Acl>>,
    /// `return` / `redirect`: the route answers itself, no upstream.
    pub answer: Option<std::sync::Arc<super::reply::Answer>>,
    /// What the route retries (`None`: connect failures, up to the
    /// listener's `connect_tries`).
    pub retry: Option<super::retry::RetryConfig>,
    /// Response compression (`None`: responses go as they are).
    pub compress: Option<super::compress::CompressConfig>,
    /// Copies of a share of the requests to a shadow upstream.
    pub mirror: Option<super::mirror::MirrorConfig>,
}

/// A route's token bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// Tokens (requests) added per second.
    pub rate: f64,
    /// Bucket capacity.
    pub burst: u32,
    pub key: RateKey,
}

/// What a rate limit counts per.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    ClientIp,
    /// One bucket for the whole route.
    Route,
    /// The value of this header (lower-case name); without it, the client IP.
    Header(String),
}

/// Headers to set (replacing any of the same name) and to remove.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub set: Vec<(String, String)>,
    /// Lower-case names.
    pub remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub strip_prefix: Option<bool>,
    pub upstream: Option<String>,
    pub max_body_size: Option<RawSize>,
    pub upgrade: Option<Vec<String>>,
    pub request_headers: Option<RawHeaderOps>,
    pub response_headers: Option<RawHeaderOps>,
    pub rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(rename = "return")]
    pub ret: Option<super::reply::RawReturn>,
    pub redirect: Option<super::reply::RawRedirect>,
    pub retry: Option<super::retry::RawRetry>,
    pub compress: Option<super::compress::RawCompress>,
    pub mirror: Option<super::mirror::RawMirror>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaderOps {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub rate: f64,
    pub burst: Option<i64>,
    pub key: Option<String>,
}

/// The http keys of a `[[listener]]`, taken out of its (flat) raw table by
/// `listener.rs`: serde's `flatten` does not combine with
/// `deny_unknown_fields`, so the listener table stays one struct.
#[derive(Debug, Default)]
pub(super) struct RawHttp {
    pub header_timeout: Option<String>,
    pub keepalive_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub max_request_line: Option<RawSize>,
    pub max_header_size: Option<RawSize>,
    pub max_headers: Option<i64>,
    pub max_body_size: Option<RawSize>,
    pub underscores_in_headers: Option<String>,
    pub body_min_rate: Option<RawSize>,
    pub path_strict: Option<bool>,
    pub h2: Option<super::h2::RawH2>,
    pub route: Vec<RawRoute>,
}

impl RawHttp {
    /// The first http key that is set (a tcp listener may set none).
    pub fn first_set(&self) -> Option<&'static str> {
        [
            ("header_timeout", self.header_timeout.is_some()),
            ("keepalive_timeout", self.keepalive_timeout.is_some()),
            ("response_timeout", self.response_timeout.is_some()),
            ("body_timeout", self.body_timeout.is_some()),
            ("max_request_line", self.max_request_line.is_some()),
            ("max_header_size", self.max_header_size.is_some()),
            ("max_headers", self.max_headers.is_some()),
            (
                "underscores_in_headers",
                self.underscores_in_headers.is_some(),
            ),
            ("body_min_rate", self.body_min_rate.is_some()),
            ("path_strict", self.path_strict.is_some()),
            ("h2", self.h2.is_some()),
            ("max_body_size", self.max_body_size.is_some()),
            ("route", !self.route.is_empty()),
        ]
        .into_iter()
        .find_map(|(f, set)| set.then_some(f))
    }
}

/// The http keys of a listener (`k` names its keys); `default_upstream`
/// becomes the catch-all route.
pub(super) fn build(
    k: &dyn Fn(&str) -> String,
    l: &mut RawHttp,
    default_upstream: Option<usize>,
    index: &UpstreamIndex,
) -> Result<HttpConfig, ConfigError> {
    let opt_size = |f: &str, v: Option<RawSize>, d: usize| -> Result<usize, ConfigError> {
        match v {
            None => Ok(d),
            Some(v) => size(&k(f), v),
        }
    };
    let max_request_line = opt_size("max_request_line", l.max_request_line.take(), 8 << 10)?;
    let max_header_size = opt_size("max_header_size", l.max_header_size.take(), 32 << 10)?;
    if !(64..=1 << 20).contains(&max_request_line) {
        return Err(ConfigError::new(
            k("max_request_line"),
            "must be within 64..=1m",
        ));
    }
    if !(256..=1 << 20).contains(&max_header_size) {
        return Err(ConfigError::new(
            k("max_header_size"),
            "must be within 256..=1m",
        ));
    }
    let max_headers = match l.max_headers {
        None => 100,
        // The parser holds at most 256 fields, whatever the config says.
        Some(n) => range(&k("max_headers"), n, 1, 256)? as usize,
    };
    let body_min_rate = opt_size("body_min_rate", l.body_min_rate.take(), 1024)? as u64;
    let underscores = match l.underscores_in_headers.take().as_deref() {
        None | Some("drop") => Underscores::Drop,
        Some("refuse") => Underscores::Refuse,
        Some("allow") => Underscores::Allow,
        Some(o) => {
            return Err(one_of(
                &k("underscores_in_headers"),
                o,
                &["drop", "refuse", "allow"],
            ))
        }
    };
    let max_body_size = opt_size("max_body_size", l.max_body_size.take(), 0)? as u64;
    let mut routes = Vec::with_capacity(l.route.len() + 1);
    for (j, r) in std::mem::take(&mut l.route).into_iter().enumerate() {
        routes.push(route(&k(&format!("route[{j}]")), r, max_body_size, index)?);
    }
    if let Some(up) = default_upstream {
        routes.push(RouteConfig {
            host: None,
            path_prefix: "/".into(),
            strip_prefix: false,
            upstream: Some(up),
            max_body_size,
            upgrade: vec!["websocket".into()],
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            rate_limit: None,
            access: None,
            answer: None,
            retry: None,
            compress: None,
            mirror: None,
        });
    }
    let mut seen = HashSet::new();
    let user_routes = routes.len() - usize::from(default_upstream.is_some());
    for (j, r) in routes.iter().enumerate() {
        if !seen.insert((r.host.clone(), r.path_prefix.clone())) {
            let key = if j < user_routes {
                k(&format!("route[{j}]"))
            } else {
                k("upstream")
            };
            return Err(ConfigError::new(
                key,
                format!(
                    "host {} and path_prefix {:?} are already routed by an earlier route",
                    r.host.as_deref().unwrap_or("(any)"),
                    r.path_prefix
                ),
            ));
        }
    }
    if routes.is_empty() {
        return Err(ConfigError::new(
            k("route"),
            "an http listener needs `upstream` or at least one [[listener.route]]",
        ));
    }
    Ok(HttpConfig {
        header_timeout: nonzero_dur(&k("header_timeout"), l.header_timeout.take(), 10)?,
        keepalive_timeout: nonzero_dur(&k("keepalive_timeout"), l.keepalive_timeout.take(), 60)?,
        response_timeout: nonzero_dur(&k("response_timeout"), l.response_timeout.take(), 60)?,
        body_timeout: nonzero_dur(&k("body_timeout"), l.body_timeout.take(), 60)?,
        max_request_line,
        max_header_size: max_header_size.max(max_request_line),
        max_headers,
        body_min_rate,
        path_strict: l.path_strict.take().unwrap_or(true),
        underscores,
        routes,
        h2: super::h2::build(&k("h2"), l.h2.take())?,
    })
}

fn route(
    key: &str,
    r: RawRoute,
    listener_max_body: u64,
    index: &UpstreamIndex,
) -> Result<RouteConfig, ConfigError> {
    let kf = |f: &str| format!("{key}.{f}");
    let answer = super::reply::answer(&kf, r.ret, r.redirect)?;
    let upstream =
        match (r.upstream, &answer) {
            (Some(name), None) => Some(upstream_ref(&kf("upstream"), &name, index)?),
            (None, Some(_)) => None,
            (None, None) => {
                return Err(ConfigError::new(
                    kf("upstream"),
                    "missing: name an [upstream.NAME] table (or answer with `return` / `redirect`)",
                ))
            }
            (Some(_), Some(_)) => return Err(ConfigError::new(
                kf("upstream"),
                "a route that answers itself (`return` / `redirect`) sends nothing to an upstream",
            )),
        };
    let host = match r.host {
        None => None,
        Some(h) => {
            let h = h.to_ascii_lowercase();
            let bare = h.strip_prefix("*.").unwrap_or(&h);
            let ok = !bare.is_empty()
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
            if !ok {
                return Err(ConfigError::new(
                    kf("host"),
                    format!(
                        "{h:?} is not a host name (write \"api.example.com\" or \"*.example.com\")"
                    ),
                ));
            }
            Some(h)
        }
    };
    let path_prefix = r.path_prefix.unwrap_or_else(|| "/".into());
    if !path_prefix.starts_with('/') || path_prefix.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ConfigError::new(
            kf("path_prefix"),
            format!(
                "{path_prefix:?} must start with / and contain no spaces or control characters"
            ),
        ));
    }
    let upgrade = match r.upgrade {
        None => vec!["websocket".to_string()],
        Some(v) => {
            let mut out = Vec::with_capacity(v.len());
            for p in v {
                let p = p.to_ascii_lowercase();
                if p == "h2c" {
                    return Err(ConfigError::new(
                        kf("upgrade"),
                        "\"h2c\" cannot be tunnelled (ringlb speaks HTTP/1.1 to backends)",
                    ));
                }
                if !is_token(&p) {
                    return Err(ConfigError::new(
                        kf("upgrade"),
                        format!("{p:?} is not a protocol token"),
                    ));
                }
                out.push(p);
            }
            out
        }
    };
    Ok(RouteConfig {
        host,
        path_prefix,
        strip_prefix: r.strip_prefix.unwrap_or(false),
        upstream,
        max_body_size: match r.max_body_size {
            None => listener_max_body,
            Some(v) => size(&kf("max_body_size"), v)? as u64,
        },
        upgrade,
        request_headers: header_ops(&kf("request_headers"), r.request_headers)?,
        response_headers: header_ops(&kf("response_headers"), r.response_headers)?,
        rate_limit: match r.rate_limit {
            None => None,
            Some(rl) => Some(rate_limit(&kf("rate_limit"), rl)?),
        },
        access: super::acl::Acl::new(&r.allow, &r.deny)
            .map_err(|(list, m)| ConfigError::new(kf(list), m))?
            .map(std::sync::Arc::new),
        answer: answer.map(std::sync::Arc::new),
        retry: super::retry::build(key, r.retry)?,
        compress: super::compress::build(key, r.compress)?,
        mirror: super::mirror::build(key, r.mirror, upstream, index)?,
    })
}

/// A TLS listener's `hsts`: every route's responses carry the header
/// (unless the route's `response_headers` set it itself).
pub(super) fn add_hsts(
    k: &dyn Fn(&str) -> String,
    http: Option<&mut HttpConfig>,
    value: &str,
) -> Result<(), ConfigError> {
    let Some(http) = http else {
        return Err(ConfigError::new(
            k("tls.hsts"),
            "only applies to mode = \"http\" listeners",
        ));
    };
    const NAME: &str = "strict-transport-security";
    for r in &mut http.routes {
        if !r
            .response_headers
            .set
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(NAME))
        {
            r.response_headers.set.push((NAME.into(), value.into()));
        }
    }
    Ok(())
}

/// Fields that say how a message is framed or that belong to one hop:
/// header rules may neither set nor remove them.
fn is_framing_or_hop_by_hop(name: &str) -> bool {
    [
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "keep-alive",
        "trailer",
        "proxy-connection",
    ]
    .iter()
    .any(|f| f.eq_ignore_ascii_case(name))
}

fn header_ops(key: &str, raw: Option<RawHeaderOps>) -> Result<HeaderOps, ConfigError> {
    let Some(raw) = raw else {
        return Ok(HeaderOps::default());
    };
    let mut ops = HeaderOps::default();
    for (name, value) in raw.set {
        if !is_token(&name) {
            return Err(ConfigError::new(
                format!("{key}.set"),
                format!("{name:?} is not a valid header name"),
            ));
        }
        if is_framing_or_hop_by_hop(&name) {
            return Err(ConfigError::new(
                format!("{key}.set.{name}"),
                "framing and hop-by-hop fields are ringlb's to write (a rule here could desynchronize the message framing)",
            ));
        }
        if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err(ConfigError::new(
                format!("{key}.set.{name}"),
                "a header value cannot contain control characters",
            ));
        }
        ops.set.push((name, value));
    }
    for name in raw.remove {
        if !is_token(&name) {
            return Err(ConfigError::new(
                format!("{key}.remove"),
                format!("{name:?} is not a valid header name"),
            ));
        }
        if is_framing_or_hop_by_hop(&name) {
            return Err(ConfigError::new(
                format!("{key}.remove"),
                format!("{name:?} is a framing or hop-by-hop field; ringlb writes those itself"),
            ));
        }
        ops.remove.push(name.to_ascii_lowercase());
    }
    Ok(ops)
}

fn rate_limit(key: &str, r: RawRateLimit) -> Result<RateLimitConfig, ConfigError> {
    let kf = |f: &str| format!("{key}.{f}");
    if !(r.rate > 0.0 && r.rate <= 1_000_000.0) {
        return Err(ConfigError::new(
            kf("rate"),
            "must be within (0, 1000000] requests per second",
        ));
    }
    let burst = match r.burst {
        None => r.rate.ceil().max(1.0) as i64,
        Some(b) => b,
    };
    let burst = range(&kf("burst"), burst, 1, 65_535)? as u32;
    let key = match r.key.as_deref() {
        None | Some("client_ip") => RateKey::ClientIp,
        Some("route") => RateKey::Route,
        Some(h) if h.starts_with("header:") && is_token(&h["header:".len()..]) => {
            RateKey::Header(h["header:".len()..].to_ascii_lowercase())
        }
        Some(o) => {
            return Err(one_of(
                &kf("key"),
                o,
                &["client_ip", "route", "header:NAME"],
            ))
        }
    };
    Ok(RateLimitConfig {
        rate: r.rate,
        burst,
        key,
    })
}
