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
    /// An SNI router: reads the ClientHello without terminating and passes
    /// the TLS bytes through, or hands the connection to a listener that
    /// terminates it.
    Tls,
    /// Datagrams: flows pinned to a backend, one connected socket each.
    Udp,
}

impl Mode {
    /// As written in the config (and in logs and `/status`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Tcp => "tcp",
            Mode::Http => "http",
            Mode::Tls => "tls",
            Mode::Udp => "udp",
        }
    }
}

/// What makes datagrams one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowKey {
    /// Client address and port (nginx's UDP sessions).
    AddrPort,
    /// Client address alone: every port of a client shares one flow (and
    /// one backend); replies go to the port it sent from last.
    Addr,
}

/// `mode = "udp"` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// Responses expected per client datagram; the flow closes once all
    /// came (nginx `proxy_responses`); 0: none, the flow closes once the
    /// datagram is sent on; `None` (unset): no limit, the flow lasts until
    /// it is idle.
    pub responses: Option<u32>,
    /// Client datagrams per flow; the next one starts a new flow (nginx
    /// `proxy_requests`); 0 = no limit.
    pub requests: u32,
    /// Flows per worker (each holds one socket); past it new flows are
    /// dropped and counted.
    pub max_flows: usize,
    pub flow_key: FlowKey,
    /// Largest datagram taken (bigger ones are dropped as truncated).
    pub max_datagram: usize,
}

/// Where an SNI route sends a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniTarget {
    /// Passthrough: the TLS bytes go to this upstream untouched.
    Upstream(usize),
    /// Termination: the connection is handed to this listener (its index,
    /// resolved once every listener is read), which ends the TLS.
    Listener(usize),
}

/// One `[[listener.sni]]`.
#[derive(Debug, Clone)]
pub struct SniRoute {
    /// Lower case: exact names, `*.parent` wildcards, or `*` (the default,
    /// which also takes clients that send no name).
    pub names: Vec<String>,
    pub target: SniTarget,
    /// The listener name of a `Listener` target, as written.
    pub target_name: Option<String>,
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
    /// `allow` / `deny`: who may connect (the client address, or the one
    /// a PROXY header gives); `None` when neither list is written.
    pub access: Option<std::sync::Arc<super::acl::Acl>>,
    /// TLS termination: clients speak TLS to this listener.
    pub tls: Option<super::tls::TlsConfig>,
    /// `mode = "tls"`: the SNI routes, in config order.
    pub sni: Vec<SniRoute>,
    /// `mode = "tls"`: deadline for the whole ClientHello.
    pub hello_timeout: Duration,
    /// Present for `mode = "udp"`.
    pub udp: Option<UdpConfig>,
}

impl ListenerConfig {
    /// True for datagram listeners (their sockets are UDP).
    pub fn is_udp(&self) -> bool {
        self.mode == Mode::Udp
    }
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
    pub h2: Option<super::h2::RawH2>,
    pub max_connections_per_ip: Option<i64>,
    pub ipv6_prefix: Option<i64>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    pub tls: Option<super::tls::RawTls>,
    pub hello_timeout: Option<String>,
    #[serde(default)]
    pub sni: Vec<RawSni>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
    // udp listeners
    pub responses: Option<i64>,
    pub requests: Option<i64>,
    pub max_flows: Option<i64>,
    pub flow_key: Option<String>,
    pub max_datagram_size: Option<RawSize>,
}

/// One `[[listener.sni]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSni {
    #[serde(default)]
    pub names: Vec<String>,
    pub upstream: Option<String>,
    pub listener: Option<String>,
}

/// A name as an SNI route may list it.
fn sni_name(key: &str, n: &str) -> Result<String, ConfigError> {
    let lower = n.trim_end_matches('.').to_ascii_lowercase();
    let host = lower.strip_prefix("*.").unwrap_or(&lower);
    let ok = lower == "*"
        || (!host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }));
    if !ok {
        return Err(ConfigError::new(
            key,
            format!("{n:?} is not a host name, a \"*.parent\" wildcard or \"*\""),
        ));
    }
    Ok(lower)
}

/// `listener[i].sni`: names checked (each claimed once), targets resolved
/// (listener targets by name later, in `Config::build`).
fn sni_routes(
    k: &dyn Fn(&str) -> String,
    raw: Vec<RawSni>,
    index: &UpstreamIndex,
) -> Result<Vec<SniRoute>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::new(
            k("sni"),
            "a tls listener needs [[listener.sni]] routes (names = [...] with upstream = \"...\" to pass through, or listener = \"...\" to terminate)",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (j, r) in raw.into_iter().enumerate() {
        let rk = k(&format!("sni[{j}]"));
        if r.names.is_empty() {
            return Err(ConfigError::new(
                format!("{rk}.names"),
                "missing: the names this route takes (\"*\" for everything else)",
            ));
        }
        let mut names = Vec::with_capacity(r.names.len());
        for n in &r.names {
            let n = sni_name(&format!("{rk}.names"), n)?;
            if !seen.insert(n.clone()) {
                return Err(ConfigError::new(
                    format!("{rk}.names"),
                    format!("{n:?} is claimed by an earlier sni route"),
                ));
            }
            names.push(n);
        }
        let (target, target_name) = match (&r.upstream, &r.listener) {
            (Some(u), None) => (
                SniTarget::Upstream(upstream_ref(&format!("{rk}.upstream"), u, index)?),
                None,
            ),
            (None, Some(l)) => (SniTarget::Listener(usize::MAX), Some(l.clone())),
            _ => {
                return Err(ConfigError::new(
                    rk,
                    "give exactly one of upstream (pass the TLS through) or listener (hand it to a listener that terminates it)",
                ))
            }
        };
        out.push(SniRoute {
            names,
            target,
            target_name,
        });
    }
    Ok(out)
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
        Some("tls") => Mode::Tls,
        Some("udp") => Mode::Udp,
        Some(o) => return Err(one_of(&k("mode"), o, &["tcp", "http", "tls", "udp"])),
    };
    let udp = udp(&k, mode, &mut l)?;
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
        (Some(_), Mode::Tls) => {
            return Err(ConfigError::new(
                k("upstream"),
                "a tls listener routes by [[listener.sni]]; for everything else add one with names = [\"*\"]",
            ))
        }
        (None, Mode::Tls) => None,
        (Some(name), _) => Some(upstream_ref(&k("upstream"), name, index)?),
        (None, Mode::Tcp | Mode::Udp) => {
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
        h2: l.h2.take(),
        route: std::mem::take(&mut l.route),
    };
    if mode != Mode::Http {
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
    let mut http = match mode {
        Mode::Tcp | Mode::Tls | Mode::Udp => None,
        Mode::Http => Some(http::build(&k, &mut raw_http, upstream, index)?),
    };
    let tls = match (l.tls.take(), mode) {
        (Some(_), Mode::Tls) => {
            return Err(ConfigError::new(
                k("tls"),
                "a tls listener does not terminate itself: route names to a listener with tls = {...} (listener = \"...\" in [[listener.sni]])",
            ))
        }
        (Some(t), _) => Some(super::tls::build(&k, t)?),
        (None, _) => None,
    };
    if let Some(v) = tls.as_ref().and_then(|t| t.hsts.as_deref()) {
        http::add_hsts(&k, http.as_mut(), v)?;
    }
    let sni = match mode {
        Mode::Tls => sni_routes(&k, std::mem::take(&mut l.sni), index)?,
        _ if !l.sni.is_empty() => {
            return Err(ConfigError::new(
                k("sni"),
                "only applies to mode = \"tls\" listeners",
            ))
        }
        _ => Vec::new(),
    };
    if mode != Mode::Tls && l.hello_timeout.is_some() {
        return Err(ConfigError::new(
            k("hello_timeout"),
            "only applies to mode = \"tls\" listeners",
        ));
    }
    let hello_timeout = nonzero_dur(&k("hello_timeout"), l.hello_timeout.take(), 5)?;
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
        // A udp flow holds a socket until it goes idle: 30 s, not the
        // 10 minutes of a tcp connection (which the client ends itself).
        idle_timeout: nonzero_dur(
            &k("idle_timeout"),
            l.idle_timeout,
            if mode == Mode::Udp { 30 } else { 600 },
        )?,
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
        access: super::acl::Acl::new(&l.allow, &l.deny)
            .map_err(|(list, m)| ConfigError::new(k(list), m))?
            .map(std::sync::Arc::new),
        ipv6_prefix: match l.ipv6_prefix {
            None => 64,
            Some(n) => range(&k("ipv6_prefix"), n, 1, 128)? as u8,
        },
        tls,
        sni,
        hello_timeout,
        udp,
    })
}

/// The `mode = "udp"` keys, and the keys that mean nothing for datagrams
/// refused on udp listeners (and the udp keys on the others).
fn udp(
    k: &dyn Fn(&str) -> String,
    mode: Mode,
    l: &mut RawListener,
) -> Result<Option<UdpConfig>, ConfigError> {
    let udp_keys = [
        ("responses", l.responses.is_some()),
        ("requests", l.requests.is_some()),
        ("max_flows", l.max_flows.is_some()),
        ("flow_key", l.flow_key.is_some()),
        ("max_datagram_size", l.max_datagram_size.is_some()),
    ];
    if mode != Mode::Udp {
        if let Some((f, _)) = udp_keys.iter().find(|(_, set)| *set) {
            return Err(ConfigError::new(
                k(f),
                "only applies to mode = \"udp\" listeners",
            ));
        }
        return Ok(None);
    }
    let stream_only = [
        ("backlog", l.backlog.is_some()),
        ("max_connections", l.max_connections.is_some()),
        ("connect_timeout", l.connect_timeout.is_some()),
        ("connect_tries", l.connect_tries.is_some()),
        ("accept_proxy_protocol", l.accept_proxy_protocol.is_some()),
        ("proxy_protocol_timeout", l.proxy_protocol_timeout.is_some()),
        ("transfer", l.transfer.is_some()),
        ("max_connections_per_ip", l.max_connections_per_ip.is_some()),
        ("tls", l.tls.is_some()),
        ("hello_timeout", l.hello_timeout.is_some()),
    ];
    if let Some((f, _)) = stream_only.iter().find(|(_, set)| *set) {
        return Err(ConfigError::new(
            k(f),
            "does not apply to mode = \"udp\" listeners (datagrams have no connection; max_flows bounds the flows)",
        ));
    }
    if l.proxy_protocol.as_deref() == Some("v1") {
        return Err(ConfigError::new(
            k("proxy_protocol"),
            "udp listeners send \"v2\" (v1 has no datagram form)",
        ));
    }
    let flow_key = match l.flow_key.as_deref() {
        None | Some("addr_port") => FlowKey::AddrPort,
        Some("addr") => FlowKey::Addr,
        Some(o) => return Err(one_of(&k("flow_key"), o, &["addr_port", "addr"])),
    };
    Ok(Some(UdpConfig {
        responses: match l.responses {
            None => None,
            Some(n) => Some(range(&k("responses"), n, 0, 1_000_000)? as u32),
        },
        requests: match l.requests {
            None => 0,
            Some(n) => range(&k("requests"), n, 0, 1_000_000_000)? as u32,
        },
        max_flows: match l.max_flows {
            None => 4096,
            Some(n) => range(&k("max_flows"), n, 1, 1_000_000)? as usize,
        },
        flow_key,
        max_datagram: match l.max_datagram_size.take() {
            None => 65_535,
            Some(v) => {
                let n = super::values::size(&k("max_datagram_size"), v)?;
                if !(512..=65_535).contains(&n) {
                    return Err(ConfigError::new(
                        k("max_datagram_size"),
                        format!("{n} is not between 512 and 65535 bytes"),
                    ));
                }
                n
            }
        },
    }))
}
