//! RawConfig -> Config. Every error names the key it is about, in the same
//! dotted form a user would write (`listener[0].connect_timeout`).

use std::{
    collections::{BTreeMap, HashSet},
    net::{SocketAddr, ToSocketAddrs},
    time::Duration,
};

use super::{
    raw::{
        RawConfig, RawEject, RawHeaderOps, RawHealth, RawListener, RawRateLimit, RawRoute,
        RawServer, RawSize, RawUpstream, RawWorkers,
    },
    AccessLogConfig, Config, ConfigError, EjectConfig, HashKey, HeaderOps, HealthConfig,
    HealthKind, HttpConfig, IoUringMode, ListenerConfig, LogFormat, Mode, ProxyAccept, ProxySend,
    RateKey, RateLimitConfig, RouteConfig, RuntimeConfig, ServerConfig, Transfer, UpstreamConfig,
    DEFAULT_MAX_CONNECTIONS,
};
use crate::balancer::Algorithm;

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::new(text);
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let line = inner
            .span()
            .map(|s| format!(" (line {})", line_of(text, s.start)))
            .unwrap_or_default();
        let key = if path == "." {
            "(toml)".to_string()
        } else {
            path
        };
        let msg = inner.message().trim().replace('\n', "; ");
        ConfigError::new(key, format!("{msg}{line}"))
    })?;
    build(raw)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn build(raw: RawConfig) -> Result<Config, ConfigError> {
    let runtime = runtime(raw.runtime)?;
    let (upstreams, index) = upstreams(raw.upstream)?;
    if raw.listener.is_empty() {
        return Err(ConfigError::new(
            "listener",
            "no [[listener]] defined; at least one is needed",
        ));
    }
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    let mut listeners = Vec::with_capacity(raw.listener.len());
    for (i, l) in raw.listener.into_iter().enumerate() {
        let l = listener(i, l, &index)?;
        if let (Mode::Tcp, Some(u)) = (l.mode, l.upstream) {
            let up = &upstreams[u];
            if up.hash_key != HashKey::ClientIp {
                return Err(ConfigError::new(
                    format!("upstream.{}.hash_key", up.name),
                    format!(
                        "tcp listener {:?} uses this upstream; tcp connections can only hash by client_ip",
                        l.name
                    ),
                ));
            }
        }
        if !names.insert(l.name.clone()) {
            return Err(ConfigError::new(
                format!("listener[{i}].name"),
                format!("duplicate listener name {:?}", l.name),
            ));
        }
        if !addrs.insert(l.listen) {
            return Err(ConfigError::new(
                format!("listener[{i}].listen"),
                format!("address {} is used by another listener", l.listen),
            ));
        }
        listeners.push(l);
    }
    let admin = match raw.admin.and_then(|a| a.listen) {
        None => None,
        Some(t) => Some(t.parse::<SocketAddr>().map_err(|_| {
            ConfigError::new(
                "admin.listen",
                format!("{t:?} is not an ip:port address (e.g. 127.0.0.1:9900)"),
            )
        })?),
    };
    let log_level = match raw.log.and_then(|l| l.level) {
        None => "info".to_string(),
        Some(l) => match l.as_str() {
            "error" | "warn" | "info" | "debug" | "trace" => l,
            o => return Err(one_of("log.level", o, &["error", "warn", "info", "debug"])),
        },
    };
    let access_log = match raw.access_log {
        None => None,
        Some(a) => {
            let format = match a.format.as_deref() {
                None | Some("combined") => LogFormat::Combined,
                Some("json") => LogFormat::Json,
                Some(o) => return Err(one_of("access_log.format", o, &["combined", "json"])),
            };
            let path = match a.path.as_deref() {
                None | Some("stdout") | Some("-") => None,
                Some("") => return Err(ConfigError::new("access_log.path", "is empty")),
                Some(p) => Some(std::path::PathBuf::from(p)),
            };
            Some(AccessLogConfig { path, format })
        }
    };
    Ok(Config {
        runtime,
        listeners,
        upstreams,
        admin,
        log_level,
        access_log,
    })
}

fn runtime(r: super::raw::RawRuntime) -> Result<RuntimeConfig, ConfigError> {
    let workers = match r.workers {
        None => None,
        Some(RawWorkers::Word(w)) if w == "auto" => None,
        Some(RawWorkers::Word(w)) => {
            return Err(ConfigError::new(
                "runtime.workers",
                format!("expected \"auto\" or a number, got {w:?}"),
            ))
        }
        Some(RawWorkers::Count(n)) => Some(range("runtime.workers", n, 1, 1024)? as usize),
    };
    let io_uring = match r.io_uring.as_deref() {
        None | Some("auto") => IoUringMode::Auto,
        Some("required") => IoUringMode::Required,
        Some("off") => IoUringMode::Off,
        Some(o) => return Err(one_of("runtime.io_uring", o, &["auto", "required", "off"])),
    };
    let ring_entries = match r.ring_entries {
        None => 4096,
        Some(n) => {
            let n = range("runtime.ring_entries", n, 256, 32768)? as u32;
            if !n.is_power_of_two() {
                return Err(ConfigError::new(
                    "runtime.ring_entries",
                    format!("must be a power of two, got {n}"),
                ));
            }
            n
        }
    };
    let pipe_size = match r.pipe_size {
        None => 256 * 1024,
        Some(s) => {
            let n = size("runtime.pipe_size", s)?;
            if n != 0 && !(4096..=64 << 20).contains(&n) {
                return Err(ConfigError::new(
                    "runtime.pipe_size",
                    format!("must be 0 (kernel default) or between 4k and 64m, got {n}"),
                ));
            }
            n
        }
    };
    Ok(RuntimeConfig {
        workers,
        pin_cores: r.pin_cores.unwrap_or(true),
        io_uring,
        ring_entries,
        shutdown_timeout: dur_or(
            "runtime.shutdown_timeout",
            r.shutdown_timeout,
            Duration::from_secs(30),
        )?,
        pid_file: r
            .pid_file
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from),
        pipe_pool: match r.pipe_pool {
            None => 64,
            Some(n) => range("runtime.pipe_pool", n, 0, 100_000)? as usize,
        },
        pipe_size,
    })
}

type UpstreamIndex = BTreeMap<String, usize>;

fn upstreams(
    raw: BTreeMap<String, RawUpstream>,
) -> Result<(Vec<UpstreamConfig>, UpstreamIndex), ConfigError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut index = BTreeMap::new();
    for (name, u) in raw {
        let key = format!("upstream.{name}");
        let balance = match u.balance.as_deref() {
            None | Some("round_robin") => Algorithm::RoundRobin,
            Some("weighted_round_robin") => Algorithm::WeightedRoundRobin,
            Some("random") => Algorithm::Random,
            Some("least_conn") => Algorithm::LeastConn,
            Some("consistent_hash") => Algorithm::ConsistentHash,
            Some(o) => {
                return Err(one_of(
                    &format!("{key}.balance"),
                    o,
                    &[
                        "round_robin",
                        "weighted_round_robin",
                        "random",
                        "least_conn",
                        "consistent_hash",
                    ],
                ))
            }
        };
        let hash_key = match u.hash_key.as_deref() {
            None | Some("client_ip") => HashKey::ClientIp,
            Some("uri") => HashKey::Uri,
            Some(h) if h.starts_with("header:") => {
                let name = &h["header:".len()..];
                if !is_token(name) {
                    return Err(ConfigError::new(
                        format!("{key}.hash_key"),
                        format!("{name:?} is not a valid header name"),
                    ));
                }
                HashKey::Header(name.to_ascii_lowercase())
            }
            Some(o) => {
                return Err(one_of(
                    &format!("{key}.hash_key"),
                    o,
                    &["client_ip", "uri", "header:NAME"],
                ))
            }
        };
        let keepalive = match u.keepalive {
            None => 64,
            Some(n) => range(&format!("{key}.keepalive"), n, 0, 100_000)? as usize,
        };
        let keepalive_timeout =
            nonzero_dur(&format!("{key}.keepalive_timeout"), u.keepalive_timeout, 60)?;
        let health = match u.health {
            None => None,
            Some(h) => Some(health(&format!("{key}.health"), h)?),
        };
        let eject = eject(&format!("{key}.eject"), u.eject)?;
        let slow_start = dur_or(&format!("{key}.slow_start"), u.slow_start, Duration::ZERO)?;
        let queue = match u.queue {
            None => 0,
            Some(n) => range(&format!("{key}.queue"), n, 0, 1_000_000)? as u32,
        };
        let queue_timeout = nonzero_dur(&format!("{key}.queue_timeout"), u.queue_timeout, 5)?;
        if u.servers.is_empty() {
            return Err(ConfigError::new(
                format!("{key}.servers"),
                "must list at least one server",
            ));
        }
        let mut servers = Vec::with_capacity(u.servers.len());
        let mut seen = HashSet::new();
        for (j, s) in u.servers.into_iter().enumerate() {
            let s = server(&format!("{key}.servers[{j}]"), s)?;
            if !seen.insert(s.addr) {
                return Err(ConfigError::new(
                    format!("{key}.servers[{j}].addr"),
                    format!("{} is listed twice", s.addr),
                ));
            }
            servers.push(s);
        }
        if servers.iter().all(|s| s.backup) {
            return Err(ConfigError::new(
                format!("{key}.servers"),
                "every server is a backup; at least one must be a primary",
            ));
        }
        index.insert(name.clone(), out.len());
        out.push(UpstreamConfig {
            name,
            balance,
            hash_key,
            servers,
            keepalive,
            keepalive_timeout,
            health,
            eject,
            slow_start,
            queue,
            queue_timeout,
        });
    }
    Ok((out, index))
}

fn server(key: &str, s: RawServer) -> Result<ServerConfig, ConfigError> {
    let addr = resolve(&format!("{key}.addr"), &s.addr)?;
    let weight = match s.weight {
        None => 1,
        Some(w) => range(&format!("{key}.weight"), w, 1, 1000)? as u32,
    };
    let max_connections = match s.max_connections {
        None => 0,
        Some(n) => range(&format!("{key}.max_connections"), n, 0, 10_000_000)? as u32,
    };
    Ok(ServerConfig {
        id: s.addr,
        addr,
        weight,
        backup: s.backup.unwrap_or(false),
        max_connections,
    })
}

/// "ip:port" or "[v6]:port" directly; "host:port" through the resolver, once,
/// at load time (never per connection).
fn resolve(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !text.contains(':') {
        return Err(ConfigError::new(
            key,
            format!("{text:?} has no port (write host:port, e.g. 127.0.0.1:8080 or [::1]:8080)"),
        ));
    }
    match text.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| ConfigError::new(key, format!("{text:?} resolves to no address"))),
        Err(e) => Err(ConfigError::new(
            key,
            format!("cannot resolve {text:?}: {e}"),
        )),
    }
}

fn listener(
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
    if mode == Mode::Tcp {
        let http_only = [
            ("header_timeout", l.header_timeout.is_some()),
            ("keepalive_timeout", l.keepalive_timeout.is_some()),
            ("response_timeout", l.response_timeout.is_some()),
            ("body_timeout", l.body_timeout.is_some()),
            ("max_request_line", l.max_request_line.is_some()),
            ("max_header_size", l.max_header_size.is_some()),
            ("max_headers", l.max_headers.is_some()),
            ("max_body_size", l.max_body_size.is_some()),
            ("route", !l.route.is_empty()),
        ];
        if let Some((f, _)) = http_only.iter().find(|(_, set)| *set) {
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
        Mode::Http => Some(http(&k, &mut l, upstream, index)?),
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
    })
}

fn health(key: &str, h: RawHealth) -> Result<HealthConfig, ConfigError> {
    let kf = |f: &str| format!("{key}.{f}");
    let kind = match h.kind.as_deref() {
        None | Some("tcp") => {
            if h.path.is_some() || h.host.is_some() || h.status.is_some() {
                return Err(ConfigError::new(
                    kf("kind"),
                    "path, host and status need kind = \"http\"",
                ));
            }
            HealthKind::Tcp
        }
        Some("http") => {
            let path = h.path.unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(ConfigError::new(
                    kf("path"),
                    format!(
                        "{path:?} must start with / and contain no spaces or control characters"
                    ),
                ));
            }
            if let Some(host) = &h.host {
                if host.is_empty() || host.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return Err(ConfigError::new(
                        kf("host"),
                        format!("{host:?} is not a host"),
                    ));
                }
            }
            let status = match h.status.as_deref() {
                None => (200, 399),
                Some(t) => parse_status_range(t).ok_or_else(|| {
                    ConfigError::new(
                        kf("status"),
                        format!("{t:?} is not a status or range like \"200-399\""),
                    )
                })?,
            };
            HealthKind::Http {
                path,
                host: h.host,
                status,
            }
        }
        Some(o) => return Err(one_of(&kf("kind"), o, &["tcp", "http"])),
    };
    let interval = nonzero_dur(&kf("interval"), h.interval, 2)?;
    let timeout = nonzero_dur(&kf("timeout"), h.timeout, 1)?;
    Ok(HealthConfig {
        kind,
        interval,
        timeout,
        rise: match h.rise {
            None => 2,
            Some(n) => range(&kf("rise"), n, 1, 100)? as u32,
        },
        fall: match h.fall {
            None => 3,
            Some(n) => range(&kf("fall"), n, 1, 100)? as u32,
        },
    })
}

fn parse_status_range(t: &str) -> Option<(u16, u16)> {
    let (a, b) = t.split_once('-').unwrap_or((t, t));
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    ((100..=599).contains(&a) && (a..=599).contains(&b)).then_some((a, b))
}

fn eject(key: &str, e: Option<RawEject>) -> Result<Option<EjectConfig>, ConfigError> {
    let kf = |f: &str| format!("{key}.{f}");
    let (failures, cooldown, max_cooldown, half_open) = match e {
        None => (None, None, None, None),
        Some(e) => (e.failures, e.cooldown, e.max_cooldown, e.half_open),
    };
    let failures = match failures {
        None => 5,
        Some(n) => range(&kf("failures"), n, 0, 1_000_000)? as u32,
    };
    if failures == 0 {
        return Ok(None);
    }
    let cooldown = nonzero_dur(&kf("cooldown"), cooldown, 10)?;
    let max_cooldown = dur_or(&kf("max_cooldown"), max_cooldown, Duration::from_secs(300))?;
    if max_cooldown < cooldown {
        return Err(ConfigError::new(
            kf("max_cooldown"),
            "must be at least cooldown",
        ));
    }
    Ok(Some(EjectConfig {
        failures,
        cooldown,
        max_cooldown,
        half_open: match half_open {
            None => 1,
            Some(n) => range(&kf("half_open"), n, 1, 1000)? as u32,
        },
    }))
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

fn upstream_ref(key: &str, name: &str, index: &UpstreamIndex) -> Result<usize, ConfigError> {
    index
        .get(name)
        .copied()
        .ok_or_else(|| ConfigError::new(key, format!("no [upstream.{name}] is defined")))
}

/// RFC 9110 token (header names, methods).
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn http(
    k: &dyn Fn(&str) -> String,
    l: &mut RawListener,
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
        Some(n) => range(&k("max_headers"), n, 1, 1000)? as usize,
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
            upstream: up,
            max_body_size,
            upgrade: vec!["websocket".into()],
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            rate_limit: None,
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
        routes,
    })
}

fn route(
    key: &str,
    r: RawRoute,
    listener_max_body: u64,
    index: &UpstreamIndex,
) -> Result<RouteConfig, ConfigError> {
    let kf = |f: &str| format!("{key}.{f}");
    let upstream_name = r.upstream.ok_or_else(|| {
        ConfigError::new(kf("upstream"), "missing: name an [upstream.NAME] table")
    })?;
    let upstream = upstream_ref(&kf("upstream"), &upstream_name, index)?;
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
    })
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
        ops.remove.push(name.to_ascii_lowercase());
    }
    Ok(ops)
}

fn nonzero_dur(key: &str, v: Option<String>, default_secs: u64) -> Result<Duration, ConfigError> {
    let d = dur_or(key, v, Duration::from_secs(default_secs))?;
    if d.is_zero() {
        return Err(ConfigError::new(key, "must be greater than 0"));
    }
    Ok(d)
}

fn dur_or(key: &str, v: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(&s).map_err(|m| ConfigError::new(key, m)),
    }
}

fn range(key: &str, n: i64, lo: i64, hi: i64) -> Result<i64, ConfigError> {
    if n < lo || n > hi {
        return Err(ConfigError::new(
            key,
            format!("{n} is out of range ({lo}..={hi})"),
        ));
    }
    Ok(n)
}

fn one_of(key: &str, got: &str, allowed: &[&str]) -> ConfigError {
    ConfigError::new(
        key,
        format!(
            "unknown value {got:?} (expected one of: {})",
            allowed.join(", ")
        ),
    )
}

fn size(key: &str, s: RawSize) -> Result<usize, ConfigError> {
    match s {
        RawSize::Bytes(n) if n >= 0 => Ok(n as usize),
        RawSize::Bytes(n) => Err(ConfigError::new(key, format!("{n} is negative"))),
        RawSize::Text(t) => parse_size(&t).map_err(|m| ConfigError::new(key, m)),
    }
}

/// Parse "500ms", "10s", "5m", "1h", "2d" (one number, one unit).
///
/// # Errors
/// A message saying what is wrong and what is expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("invalid duration {s:?} (write e.g. 500ms, 10s, 5m, 1h)");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86400)),
        _ => return Err(bad()),
    };
    Ok(d)
}

/// Parse "4096", "64k", "1m" (binary units).
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("invalid size {s:?} (write e.g. 65536, 64k, 1m)");
    let n: usize = num.parse().map_err(|_| bad())?;
    let mul = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        _ => return Err(bad()),
    };
    n.checked_mul(mul).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[[listener]]
name = "redis"
listen = "127.0.0.1:6380"
upstream = "redis"

[upstream.redis]
servers = [{ addr = "127.0.0.1:6379" }]
"#;

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MIN).unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.mode, Mode::Tcp);
        assert_eq!(l.connect_timeout, Duration::from_secs(5));
        assert_eq!(l.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert!(l.max_connections_default);
        assert_eq!(c.upstreams[l.upstream.unwrap()].servers[0].weight, 1);
        assert_eq!(c.runtime.workers, None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1.5s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert_eq!(parse_size("1m").unwrap(), 1 << 20);
        assert!(parse_size("1x").is_err());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(&MIN.replace(
            "upstream = \"redis\"\n",
            "upstream = \"redis\"\nconect_timeout = \"1s\"\n",
        ));
        assert!(
            e.contains("listener[0]") && e.contains("conect_timeout"),
            "{e}"
        );
        let e = err(&format!("{MIN}\n[runtime]\nworkerz = 2\n"));
        assert!(e.contains("runtime") && e.contains("workerz"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "listen = \"127.0.0.1:6380\"",
                "listen = \"nope\"",
                "listener[0].listen",
            ),
            (
                "upstream = \"redis\"",
                "upstream = \"nosuch\"",
                "listener[0].upstream",
            ),
            (
                "name = \"redis\"",
                "name = \"redis\"\nconnect_timeout = \"1x\"",
                "listener[0].connect_timeout",
            ),
            (
                "name = \"redis\"",
                "name = \"redis\"\nidle_timeout = \"0s\"",
                "listener[0].idle_timeout",
            ),
            (
                "name = \"redis\"",
                "name = \"redis\"\nmax_connections = 0",
                "listener[0].max_connections",
            ),
            (
                "name = \"redis\"",
                "name = \"redis\"\nproxy_protocol = \"v3\"",
                "listener[0].proxy_protocol",
            ),
            (
                "name = \"redis\"",
                "name = \"redis\"\nmode = \"udp\"",
                "listener[0].mode",
            ),
            (
                "{ addr = \"127.0.0.1:6379\" }",
                "{ addr = \"127.0.0.1\" }",
                "upstream.redis.servers[0].addr",
            ),
            (
                "{ addr = \"127.0.0.1:6379\" }",
                "{ addr = \"127.0.0.1:6379\", weight = 0 }",
                "upstream.redis.servers[0].weight",
            ),
            (
                "[upstream.redis]",
                "[upstream.redis]\nbalance = \"fastest\"",
                "upstream.redis.balance",
            ),
        ];
        for (from, to, key) in cases {
            let e = err(&MIN.replace(from, to));
            assert!(e.starts_with(key), "expected key {key}, got: {e}");
        }
    }

    #[test]
    fn structural_errors() {
        assert!(err("").starts_with("listener"));
        let e = err(&MIN.replace("servers = [{ addr = \"127.0.0.1:6379\" }]", "servers = []"));
        assert!(e.starts_with("upstream.redis.servers"), "{e}");
        let dup = format!("{MIN}\n[[listener]]\nname = \"redis\"\nlisten = \"127.0.0.1:6381\"\nupstream = \"redis\"\n");
        assert!(err(&dup).starts_with("listener[1].name"));
        let e = err("[[listener]\n");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn ipv6_and_workers() {
        let c = parse(&format!(
            "[runtime]\nworkers = 3\n{}",
            MIN.replace("127.0.0.1:6380", "[::1]:6380")
        ))
        .unwrap();
        assert!(c.listeners[0].listen.is_ipv6());
        assert_eq!(c.runtime.workers, Some(3));
        assert!(
            err(&format!("[runtime]\nworkers = \"many\"\n{MIN}")).starts_with("runtime.workers")
        );
    }

    const HTTP: &str = r#"
[[listener]]
name = "web"
mode = "http"
listen = "127.0.0.1:8080"
upstream = "app"
header_timeout = "2s"
max_body_size = "1m"
  [[listener.route]]
  host = "API.example.com"
  path_prefix = "/v1/"
  strip_prefix = true
  upstream = "api"
  max_body_size = "10k"
  request_headers = { set = { "X-Env" = "prod" }, remove = ["X-Debug"] }
  [[listener.route]]
  host = "*.example.com"
  upstream = "api"
  upgrade = []
[upstream.app]
servers = [{ addr = "127.0.0.1:9001" }]
[upstream.api]
balance = "consistent_hash"
hash_key = "header:X-User"
keepalive = 8
servers = [{ addr = "127.0.0.1:9002" }]
"#;

    #[test]
    fn http_listener_with_routes() {
        let c = parse(HTTP).unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.mode, Mode::Http);
        let h = l.http.as_ref().unwrap();
        assert_eq!(h.header_timeout, Duration::from_secs(2));
        assert_eq!(h.keepalive_timeout, Duration::from_secs(60));
        assert_eq!(h.routes.len(), 3, "two routes plus the listener's upstream");
        assert_eq!(h.routes[0].host.as_deref(), Some("api.example.com"));
        assert!(h.routes[0].strip_prefix);
        assert_eq!(h.routes[0].max_body_size, 10 * 1024);
        assert_eq!(h.routes[0].request_headers.remove, vec!["x-debug"]);
        assert_eq!(h.routes[1].upgrade, Vec::<String>::new());
        assert_eq!(h.routes[1].max_body_size, 1 << 20);
        assert_eq!(h.routes[2].path_prefix, "/");
        assert_eq!(h.routes[2].upgrade, vec!["websocket"]);
        let api = &c.upstreams[h.routes[0].upstream];
        assert_eq!(api.hash_key, HashKey::Header("x-user".into()));
        assert_eq!(api.keepalive, 8);
    }

    #[test]
    fn http_errors_name_their_key() {
        let cases = [
            (
                "upgrade = []",
                "upgrade = [\"h2c\"]",
                "listener[0].route[1].upgrade",
            ),
            (
                "path_prefix = \"/v1/\"",
                "path_prefix = \"v1\"",
                "listener[0].route[0].path_prefix",
            ),
            (
                "host = \"*.example.com\"",
                "host = \"bad host\"",
                "listener[0].route[1].host",
            ),
            (
                "host = \"*.example.com\"",
                "host = \"api.example.com\"\n  path_prefix = \"/v1/\"",
                "listener[0].route[1]",
            ),
            (
                "hash_key = \"header:X-User\"",
                "hash_key = \"cookie\"",
                "upstream.api.hash_key",
            ),
            (
                "header_timeout = \"2s\"",
                "header_timeout = \"0s\"",
                "listener[0].header_timeout",
            ),
            (
                "max_body_size = \"1m\"",
                "max_body_size = \"lots\"",
                "listener[0].max_body_size",
            ),
            (
                "\"X-Env\" = \"prod\"",
                "\"X Env\" = \"prod\"",
                "listener[0].route[0].request_headers.set",
            ),
            (
                "  upstream = \"api\"\n  max_body_size",
                "  upstream = \"nope\"\n  max_body_size",
                "listener[0].route[0].upstream",
            ),
        ];
        for (from, to, key) in cases {
            let text = HTTP.replacen(from, to, 1);
            assert_ne!(text, HTTP, "{from} not found");
            let e = err(&text);
            assert!(e.starts_with(key), "expected key {key}, got: {e}");
        }
        // An http listener needs somewhere to send requests.
        let e = err("[[listener]]\nmode = \"http\"\nlisten = \"127.0.0.1:1\"\n[upstream.a]\nservers = [{ addr = \"127.0.0.1:2\" }]\n");
        assert!(e.starts_with("listener[0].route"), "{e}");
        // http keys on a tcp listener, and tcp listeners hash by client ip only.
        let e = err(&MIN.replace(
            "name = \"redis\"",
            "name = \"redis\"\nheader_timeout = \"1s\"",
        ));
        assert!(e.starts_with("listener[0].header_timeout"), "{e}");
        let e = err(&MIN.replace("[upstream.redis]", "[upstream.redis]\nhash_key = \"uri\""));
        assert!(e.starts_with("upstream.redis.hash_key"), "{e}");
    }

    #[test]
    fn resilience_keys() {
        let text = HTTP
            .replace(
                "keepalive = 8",
                "keepalive = 8\nslow_start = \"30s\"\nqueue = 10\nqueue_timeout = \"2s\"\nhealth = { kind = \"http\", path = \"/hz\", status = \"200-299\", interval = \"1s\", rise = 3 }\neject = { failures = 4, cooldown = \"5s\", max_cooldown = \"1m\", half_open = 2 }",
            )
            .replace(
                "servers = [{ addr = \"127.0.0.1:9002\" }]",
                "servers = [{ addr = \"127.0.0.1:9002\", max_connections = 50 }, { addr = \"127.0.0.1:9003\", backup = true }]",
            )
            .replace(
                "upgrade = []",
                "upgrade = []\n  rate_limit = { rate = 2.5, burst = 10, key = \"header:X-Key\" }",
            )
            .replace("header_timeout = \"2s\"", "header_timeout = \"2s\"\nmax_connections_per_ip = 20");
        let c = parse(&text).unwrap();
        let api = c.upstreams.iter().find(|u| u.name == "api").unwrap();
        let h = api.health.as_ref().unwrap();
        assert_eq!(
            h.kind,
            HealthKind::Http {
                path: "/hz".into(),
                host: None,
                status: (200, 299)
            }
        );
        assert_eq!(
            (h.interval, h.timeout, h.rise, h.fall),
            (Duration::from_secs(1), Duration::from_secs(1), 3, 3)
        );
        let e = api.eject.as_ref().unwrap();
        assert_eq!((e.failures, e.half_open), (4, 2));
        assert_eq!(api.slow_start, Duration::from_secs(30));
        assert_eq!((api.queue, api.queue_timeout), (10, Duration::from_secs(2)));
        assert_eq!(api.servers[0].max_connections, 50);
        assert!(api.servers[1].backup);
        let l = &c.listeners[0];
        assert_eq!(l.max_connections_per_ip, 20);
        let rl = l.http.as_ref().unwrap().routes[1]
            .rate_limit
            .as_ref()
            .unwrap();
        assert_eq!((rl.rate, rl.burst), (2.5, 10));
        assert_eq!(rl.key, RateKey::Header("x-key".into()));
        // Defaults: passive ejection on (5 failures, 10 s), no active checks.
        let app = c.upstreams.iter().find(|u| u.name == "app").unwrap();
        assert!(app.health.is_none());
        assert_eq!(app.eject.as_ref().map(|e| e.failures), Some(5));

        let cases = [
            ("rise = 3", "rise = 0", "upstream.api.health.rise"),
            (
                "status = \"200-299\"",
                "status = \"299-200\"",
                "upstream.api.health.status",
            ),
            (
                "kind = \"http\"",
                "kind = \"icmp\"",
                "upstream.api.health.kind",
            ),
            (
                "max_cooldown = \"1m\"",
                "max_cooldown = \"1s\"",
                "upstream.api.eject.max_cooldown",
            ),
            (
                "rate = 2.5",
                "rate = 0.0",
                "listener[0].route[1].rate_limit.rate",
            ),
            (
                "burst = 10",
                "burst = 100000",
                "listener[0].route[1].rate_limit.burst",
            ),
            (
                "key = \"header:X-Key\"",
                "key = \"cookie\"",
                "listener[0].route[1].rate_limit.key",
            ),
        ];
        for (from, to, key) in cases {
            let t = text.replacen(from, to, 1);
            assert_ne!(t, text, "{from} not found");
            let e = err(&t);
            assert!(e.starts_with(key), "expected key {key}, got: {e}");
        }
        let all_backup = MIN.replace(
            "{ addr = \"127.0.0.1:6379\" }",
            "{ addr = \"127.0.0.1:6379\", backup = true }",
        );
        assert!(err(&all_backup).starts_with("upstream.redis.servers"));
        let tcp_health_path = MIN.replace(
            "[upstream.redis]",
            "[upstream.redis]\nhealth = { path = \"/\" }",
        );
        assert!(err(&tcp_health_path).starts_with("upstream.redis.health.kind"));
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let c = parse(include_str!("../../systemd/ringlb.toml")).unwrap();
        assert!(c.admin.is_some() && c.access_log.is_some());
        assert!(c.listeners.iter().any(|l| l.mode == Mode::Http));
    }
}
