//! `[[listener]]`: address, mode, connection limits and timeouts, PROXY
//! protocol and transfer; the http-only keys are converted by `http.rs`.

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

use super::{
    http::{self, HttpConfig, RawHttp, RawRoute},
    upstream::{upstream_ref, UpstreamIndex},
    values::{nonzero_dur, one_of, range, RawSize},
    ConfigError,
};

/// Default for `max_connections` before the fd budget caps it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;

/// Listener protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Tcp,
    Http,
}

/// PROXY protocol header sent to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxySend {
    Off,
    V1,
    V2,
}

/// PROXY protocol header expected from clients (a front load balancer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyAccept {
    Off,
    V1,
    V2,
    /// Either version.
    Any,
}

/// How a tcp listener (and an http tunnel) moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// Per direction: copy while bursts are small (request/response traffic),
    /// switch to splice once a burst fills a whole copy buffer (bulk), and
    /// back to copy when bursts get small again.
    Auto,
    /// splice(2) through a pipe taken from the worker's pool while bytes move.
    Splice,
    /// recv/send through a buffer taken from the worker's pool while bytes move.
    Copy,
}

/// One `[[listener]]`.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub mode: Mode,
    pub listen: SocketAddr,
    pub backlog: u32,
    /// Index into [`Config::upstreams`](super::Config::upstreams): required
    /// for tcp listeners; for http listeners the catch-all route (also
    /// present in `http.routes`).
    pub upstream: Option<usize>,
    pub max_connections: usize,
    /// True when `max_connections` was not written (it then follows the fd budget).
    pub max_connections_default: bool,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Backends tried per client connection before giving up.
    pub connect_tries: u32,
    pub proxy_protocol: ProxySend,
    pub accept_proxy_protocol: ProxyAccept,
    pub proxy_protocol_timeout: Duration,
    pub transfer: Transfer,
    /// Present for `mode = "http"`.
    pub http: Option<HttpConfig>,
    /// Concurrent connections per client IP, process-wide (0 = unlimited).
    pub max_connections_per_ip: u32,
    /// IPv6 clients count (per-IP limit, `client_ip` rate-limit keys) by
    /// this prefix of their address: one host usually holds a whole /64.
    pub ipv6_prefix: u8,
    /// Peers whose forwarding fields (`Forwarded`, `X-Forwarded-Host`,
    /// `-Port`, `-Proto`) are passed on; everyone else's are replaced.
    pub trusted_proxies: Vec<super::values::Cidr>,
    /// TLS termination: clients speak TLS to this listener.
    pub tls: Option<super::tls::TlsConfig>,
}

/// One `[[listener]]` as written: one flat table, so the http keys are here too.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub name: Option<String>,
    pub mode: Option<String>,
    pub listen: Option<String>,
    pub backlog: Option<i64>,
    pub upstream: Option<String>,
    pub max_connections: Option<i64>,
    pub connect_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub connect_tries: Option<i64>,
    pub proxy_protocol: Option<String>,
    pub accept_proxy_protocol: Option<String>,
    pub proxy_protocol_timeout: Option<String>,
    pub transfer: Option<String>,
    // http listeners
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
    pub max_connections_per_ip: Option<i64>,
    pub ipv6_prefix: Option<i64>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub tls: Option<super::tls::RawTls>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
}

/// `listener[i]`, its upstream names resolved through `index`.
pub(super) fn build(
    i: usize,
    mut l: RawListener,
    index: &UpstreamIndex,
) -> Result<ListenerConfig, ConfigError> {
    let k = |f: &str| format!("listener[{i}].{f}");
    let name = l.name.take().unwrap_or_else(|| format!("listener{i}"));
    let mode = match l.mode.as_deref() {
        None | Some("tcp") => Mode::Tcp,
        Some("http") => Mode::Http,
        Some(o) => return Err(one_of(&k("mode"), o, &["tcp", "http"])),
    };
    let listen_text = l
        .listen
        .take()
        .ok_or_else(|| ConfigError::new(k("listen"), "missing (e.g. listen = \"0.0.0.0:6380\")"))?;
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        ConfigError::new(
            k("listen"),
            format!("{listen_text:?} is not an ip:port address (e.g. 0.0.0.0:80 or [::]:80)"),
        )
    })?;
    let upstream = match (&l.upstream, mode) {
        (Some(name), _) => Some(upstream_ref(&k("upstream"), name, index)?),
        (None, Mode::Tcp) => {
            return Err(ConfigError::new(
                k("upstream"),
                "missing: name an [upstream.NAME] table",
            ))
        }
        (None, Mode::Http) => None,
    };
    let mut raw_http = RawHttp {
        header_timeout: l.header_timeout.take(),
        keepalive_timeout: l.keepalive_timeout.take(),
        response_timeout: l.response_timeout.take(),
        body_timeout: l.body_timeout.take(),
        max_request_line: l.max_request_line.take(),
        max_header_size: l.max_header_size.take(),
        max_headers: l.max_headers.take(),
        max_body_size: l.max_body_size.take(),
        underscores_in_headers: l.underscores_in_headers.take(),
        body_min_rate: l.body_min_rate.take(),
        path_strict: l.path_strict.take(),
        route: std::mem::take(&mut l.route),
    };
    if mode == Mode::Tcp {
        if let Some(f) = raw_http.first_set() {
            return Err(ConfigError::new(
                k(f),
                "only applies to mode = \"http\" listeners",
            ));
        }
    }
    let (max_connections, max_connections_default) = match l.max_connections {
        None => (DEFAULT_MAX_CONNECTIONS, true),
        Some(n) => (
            range(&k("max_connections"), n, 1, 10_000_000)? as usize,
            false,
        ),
    };
    let proxy_protocol = match l.proxy_protocol.as_deref() {
        None | Some("off") => ProxySend::Off,
        Some("v1") => ProxySend::V1,
        Some("v2") => ProxySend::V2,
        Some(o) => return Err(one_of(&k("proxy_protocol"), o, &["off", "v1", "v2"])),
    };
    let accept_proxy_protocol = match l.accept_proxy_protocol.as_deref() {
        None | Some("off") => ProxyAccept::Off,
        Some("v1") => ProxyAccept::V1,
        Some("v2") => ProxyAccept::V2,
        Some("any") => ProxyAccept::Any,
        Some(o) => {
            return Err(one_of(
                &k("accept_proxy_protocol"),
                o,
                &["off", "v1", "v2", "any"],
            ))
        }
    };
    if mode == Mode::Http && proxy_protocol != ProxySend::Off {
        return Err(ConfigError::new(
            k("proxy_protocol"),
            "cannot be sent on http listeners: their backend connections are pooled and shared by many clients (the client address goes in X-Forwarded-For / X-Real-IP)",
        ));
    }
    let http = match mode {
        Mode::Tcp => None,
        Mode::Http => Some(http::build(&k, &mut raw_http, upstream, index)?),
    };
    let tls = match l.tls.take() {
        Some(t) => Some(super::tls::build(&k, t)?),
        None => None,
    };
    let transfer = match l.transfer.as_deref() {
        None | Some("auto") => Transfer::Auto,
        Some("splice") => Transfer::Splice,
        Some("copy") => Transfer::Copy,
        Some(o) => return Err(one_of(&k("transfer"), o, &["auto", "splice", "copy"])),
    };
    Ok(ListenerConfig {
        name,
        mode,
        listen,
        backlog: match l.backlog {
            None => 1024,
            Some(n) => range(&k("backlog"), n, 1, 1 << 20)? as u32,
        },
        upstream,
        max_connections,
        max_connections_default,
        connect_timeout: nonzero_dur(&k("connect_timeout"), l.connect_timeout, 5)?,
        idle_timeout: nonzero_dur(&k("idle_timeout"), l.idle_timeout, 600)?,
        connect_tries: match l.connect_tries {
            None => 3,
            Some(n) => range(&k("connect_tries"), n, 1, 100)? as u32,
        },
        proxy_protocol,
        accept_proxy_protocol,
        proxy_protocol_timeout: nonzero_dur(
            &k("proxy_protocol_timeout"),
            l.proxy_protocol_timeout,
            5,
        )?,
        transfer,
        http,
        max_connections_per_ip: match l.max_connections_per_ip {
            None => 0,
            Some(_) if accept_proxy_protocol != ProxyAccept::Off => {
                return Err(ConfigError::new(
                    k("max_connections_per_ip"),
                    "cannot be combined with accept_proxy_protocol: connections are counted at accept, where every client has the front balancer's address",
                ))
            }
            Some(n) => range(&k("max_connections_per_ip"), n, 0, 10_000_000)? as u32,
        },
        trusted_proxies: l
            .trusted_proxies
            .iter()
            .map(|t| super::values::parse_cidr(t).map_err(|m| ConfigError::new(k("trusted_proxies"), m)))
            .collect::<Result<_, _>>()?,
        ipv6_prefix: match l.ipv6_prefix {
            None => 64,
            Some(n) => range(&k("ipv6_prefix"), n, 1, 128)? as u8,
        },
        tls,
    })
}
