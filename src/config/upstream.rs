//! `[upstream.NAME]`: balancing, pooling, queueing, its `servers`, active
//! `health` checks and passive `eject`ion.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use serde::Deserialize;

pub use super::server::ServerConfig;
use super::{
    values::{dur_or, is_token, nonzero_dur, one_of, parse_status_range, range, resolve},
    ConfigError,
};
use crate::balancer::Algorithm;

/// Key for consistent hashing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    /// The request target (http listeners).
    Uri,
    /// The value of this header, lower-case name (http listeners).
    Header(String),
    /// The TLS server name a client asked for (tls listeners' passthrough).
    Sni,
}

/// One `[upstream.NAME]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub balance: Algorithm,
    pub hash_key: HashKey,
    pub servers: Vec<ServerConfig>,
    /// Idle keep-alive connections pooled per backend per worker (http).
    pub keepalive: usize,
    /// A pooled connection idle longer than this is closed.
    pub keepalive_timeout: Duration,
    pub health: Option<HealthConfig>,
    /// Passive ejection; `None` when `eject.failures = 0`.
    pub eject: Option<EjectConfig>,
    /// Response statuses that count as a backend failure (for passive
    /// ejection and `ringlb_backend_failures_total`); `eject.statuses`,
    /// default 502, 503, 504. Any other status is the application's answer.
    pub failure_statuses: Vec<u16>,
    /// A backend coming back ramps its share over this (zero = off).
    pub slow_start: Duration,
    /// http: requests that may wait for a backend below its max_connections.
    pub queue: u32,
    pub queue_timeout: Duration,
    /// TLS to the backends (re-encryption).
    pub tls: Option<super::tls::UpstreamTls>,
    /// How http listeners talk to the servers: HTTP/1.1, h2 (over `tls`), h2c.
    pub protocol: super::h2::Protocol,
    /// Backends followed at run time (a file, DNS); `servers` then holds
    /// `static_servers` plus what the source listed when the config loaded.
    pub discovery: Option<super::discovery::DiscoveryConfig>,
    /// What the discovery source listed when the config loaded (some may
    /// also be static servers).
    pub discovered: Vec<ServerConfig>,
    /// The `servers` written in the config (kept beside discovered ones).
    pub static_servers: Vec<ServerConfig>,
    /// http: cookie affinity to a backend.
    pub sticky: Option<super::sticky::StickyConfig>,
}

/// Active health checks of an upstream.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub kind: HealthKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthKind {
    Tcp,
    Http {
        path: String,
        host: Option<String>,
        /// Accepted status range, inclusive.
        status: (u16, u16),
    },
    /// A datagram sent to the backend's port; passes when a reply comes
    /// that starts with `expect` (any reply when empty). An ICMP port
    /// unreachable or no reply within the timeout fails it.
    Udp {
        send: Vec<u8>,
        expect: Vec<u8>,
    },
}

/// Passive ejection (circuit breaker) of an upstream's backends.
#[derive(Debug, Clone)]
pub struct EjectConfig {
    /// Consecutive failures that open the circuit.
    pub failures: u32,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
    /// Requests (connections) let through while half-open.
    pub half_open: u32,
    /// At most this share of an upstream's backends is ejected at once, in
    /// percent (Envoy's `max_ejection_percent`); past it, failures are
    /// counted but nobody else is ejected.
    pub max_ejected_percent: u32,
    /// When every backend is ejected, send traffic to all of them anyway
    /// (panic mode, as Envoy) instead of answering 503. Backends marked down
    /// by active health checks stay out.
    pub panic: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub balance: Option<String>,
    pub hash_key: Option<String>,
    pub keepalive: Option<i64>,
    pub keepalive_timeout: Option<String>,
    pub health: Option<RawHealth>,
    pub eject: Option<RawEject>,
    pub slow_start: Option<String>,
    pub queue: Option<i64>,
    pub queue_timeout: Option<String>,
    pub tls: Option<super::tls::RawUpstreamTls>,
    pub protocol: Option<String>,
    pub discovery: Option<super::discovery::RawDiscovery>,
    pub sticky: Option<super::sticky::RawSticky>,
    #[serde(default)]
    pub servers: Vec<RawServer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub addr: String,
    pub weight: Option<i64>,
    pub backup: Option<bool>,
    pub max_connections: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub kind: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub status: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
    pub send: Option<String>,
    pub send_hex: Option<String>,
    pub expect: Option<String>,
    pub expect_hex: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEject {
    pub failures: Option<i64>,
    pub cooldown: Option<String>,
    pub max_cooldown: Option<String>,
    pub half_open: Option<i64>,
    pub statuses: Option<Vec<i64>>,
    pub max_ejected_percent: Option<i64>,
    pub panic: Option<bool>,
}

/// Upstream name -> index into [`super::Config::upstreams`].
pub(super) type UpstreamIndex = BTreeMap<String, usize>;

/// Every `[upstream.NAME]`, in name order, and the index listeners resolve names with.
pub(super) fn build(
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
            Some("sni") => HashKey::Sni,
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
                    &["client_ip", "uri", "header:NAME", "sni"],
                ))
            }
        };
        // Enough for a few hundred concurrent requests per worker without
        // closing and reopening backend connections (64 churned at 256
        // clients in perf/l7.sh); idle ones still close after keepalive_timeout.
        let keepalive = match u.keepalive {
            None => 256,
            Some(n) => range(&format!("{key}.keepalive"), n, 0, 100_000)? as usize,
        };
        let keepalive_timeout =
            nonzero_dur(&format!("{key}.keepalive_timeout"), u.keepalive_timeout, 60)?;
        let health = match u.health {
            None => None,
            Some(h) => Some(health(&format!("{key}.health"), h)?),
        };
        let (eject, failure_statuses) = eject(&format!("{key}.eject"), u.eject)?;
        let slow_start = dur_or(&format!("{key}.slow_start"), u.slow_start, Duration::ZERO)?;
        let queue = match u.queue {
            None => 0,
            Some(n) => range(&format!("{key}.queue"), n, 0, 1_000_000)? as u32,
        };
        let queue_timeout = nonzero_dur(&format!("{key}.queue_timeout"), u.queue_timeout, 5)?;
        let discovery = match u.discovery {
            Some(d) => Some(super::discovery::build(&format!("{key}.discovery"), d)?),
            None => None,
        };
        if u.servers.is_empty() && discovery.is_none() {
            return Err(ConfigError::new(
                format!("{key}.servers"),
                "must list at least one server (or set discovery)",
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
        let static_servers = servers.clone();
        // A discovered upstream is checked again once its list is in
        // (`discovery::seed`): the source may add the primaries.
        if discovery.is_none() && servers.iter().all(|s| s.backup) {
            return Err(all_backups(&key));
        }
        let protocol = super::h2::protocol(&format!("{key}.protocol"), u.protocol.as_deref())?;
        let mut tls = match u.tls {
            Some(t) => Some(super::tls::build_upstream(&format!("{key}.tls"), t)?),
            None => None,
        };
        match (protocol, &mut tls) {
            (super::h2::Protocol::H2, None) => {
                return Err(ConfigError::new(
                    format!("{key}.protocol"),
                    "\"h2\" is HTTP/2 over TLS: add a tls table (or write \"h2c\" for cleartext)",
                ))
            }
            (super::h2::Protocol::H2, Some(t)) => {
                if t.alpn.is_empty() {
                    t.alpn = vec!["h2".into()];
                } else if !t.alpn.iter().any(|p| p == "h2") {
                    return Err(ConfigError::new(
                        format!("{key}.tls.alpn"),
                        "protocol = \"h2\" needs \"h2\" in the ALPN list",
                    ));
                }
            }
            (super::h2::Protocol::H2c, Some(_)) => {
                return Err(ConfigError::new(
                    format!("{key}.protocol"),
                    "\"h2c\" is cleartext HTTP/2 but the upstream has a tls table (write \"h2\")",
                ))
            }
            _ => {}
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
            failure_statuses,
            slow_start,
            queue,
            queue_timeout,
            tls,
            protocol,
            discovery,
            static_servers,
            discovered: Vec::new(),
            sticky: super::sticky::build(&key, u.sticky)?,
        });
    }
    Ok((out, index))
}

/// Fill each discovered upstream's `servers`: its static servers, then
/// the source's list (known, or asked now), and check the result as the
/// upstream table's own rules would.
pub(super) fn seed_discovered(
    upstreams: &mut [UpstreamConfig],
    seed: &super::discovery::Seed,
) -> Result<(), ConfigError> {
    for u in upstreams.iter_mut() {
        let Some(d) = &u.discovery else { continue };
        let key = format!("upstream.{}", u.name);
        // Empty is known too (a source that listed nothing beside static
        // servers, or failed at a cold start with allow_empty).
        let known = seed.known.get(&(u.name.clone(), d.describe()));
        let found = match known {
            Some(list) => list.clone(),
            None if seed.no_fetch => continue,
            None => match super::discovery::fetch(d) {
                Ok(list) => list,
                Err(e) if d.allow_empty => {
                    tracing::warn!("{key}.discovery: {e}; starting without its backends");
                    Vec::new()
                }
                Err(e) => return Err(ConfigError::new(format!("{key}.discovery"), e)),
            },
        };
        for s in &found {
            if !u.servers.iter().any(|o| o.addr == s.addr) {
                u.servers.push(s.clone());
            }
        }
        u.discovered = found;
        if u.servers.is_empty() && !d.allow_empty {
            return Err(ConfigError::new(
                format!("{key}.discovery"),
                format!(
                    "{} lists no backend (set allow_empty = true to start with none)",
                    d.describe()
                ),
            ));
        }
        if !u.servers.is_empty() && u.servers.iter().all(|s| s.backup) {
            return Err(all_backups(&key));
        }
    }
    Ok(())
}

/// Every server of upstream `key` is a backup.
fn all_backups(key: &str) -> ConfigError {
    ConfigError::new(
        format!("{key}.servers"),
        "every server is a backup; at least one must be a primary",
    )
}

/// The index of upstream `name`, for a reference at `key`.
pub(super) fn upstream_ref(
    key: &str,
    name: &str,
    index: &UpstreamIndex,
) -> Result<usize, ConfigError> {
    index
        .get(name)
        .copied()
        .ok_or_else(|| ConfigError::new(key, format!("no [upstream.{name}] is defined")))
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

/// A probe payload: `text`, or `hex` digits (spaces allowed).
fn payload(
    key: &str,
    text: Option<String>,
    hex: Option<String>,
) -> Result<Option<Vec<u8>>, ConfigError> {
    match (text, hex) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            key,
            "give the text or the _hex form, not both",
        )),
        (Some(t), None) => Ok(Some(t.into_bytes())),
        (None, Some(h)) => {
            let digits: Vec<u8> = h.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
            if digits.len() % 2 != 0 {
                return Err(ConfigError::new(
                    format!("{key}_hex"),
                    "an odd number of hex digits",
                ));
            }
            digits
                .chunks(2)
                .map(|p| {
                    std::str::from_utf8(p)
                        .ok()
                        .and_then(|t| u8::from_str_radix(t, 16).ok())
                        .ok_or_else(|| {
                            ConfigError::new(format!("{key}_hex"), format!("{h:?} is not hex"))
                        })
                })
                .collect::<Result<Vec<u8>, _>>()
                .map(Some)
        }
        (None, None) => Ok(None),
    }
}

fn health(key: &str, h: RawHealth) -> Result<HealthConfig, ConfigError> {
    let kf = |f: &str| format!("{key}.{f}");
    let send = payload(&kf("send"), h.send, h.send_hex)?;
    let expect = payload(&kf("expect"), h.expect, h.expect_hex)?;
    if h.kind.as_deref() != Some("udp") && (send.is_some() || expect.is_some()) {
        return Err(ConfigError::new(
            kf("kind"),
            "send and expect need kind = \"udp\"",
        ));
    }
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
        Some("udp") => {
            if h.path.is_some() || h.host.is_some() || h.status.is_some() {
                return Err(ConfigError::new(
                    kf("kind"),
                    "path, host and status need kind = \"http\"",
                ));
            }
            let send = send.filter(|s| !s.is_empty()).ok_or_else(|| {
                ConfigError::new(
                    kf("send"),
                    "missing: the datagram a udp check sends (send = \"...\" or send_hex = \"...\")",
                )
            })?;
            HealthKind::Udp {
                send,
                expect: expect.unwrap_or_default(),
            }
        }
        Some(o) => return Err(one_of(&kf("kind"), o, &["tcp", "http", "udp"])),
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

/// The default statuses that count as backend failures: the proxy-class
/// errors. A 500 or a 501 is the application answering (a client can
/// provoke those at will, and must not get backends ejected with them).
pub const DEFAULT_FAILURE_STATUSES: [u16; 3] = [502, 503, 504];

fn eject(key: &str, e: Option<RawEject>) -> Result<(Option<EjectConfig>, Vec<u16>), ConfigError> {
    let kf = |f: &str| format!("{key}.{f}");
    let e = e.unwrap_or_default();
    let statuses = match e.statuses {
        None => DEFAULT_FAILURE_STATUSES.to_vec(),
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for s in list {
                out.push(range(&kf("statuses"), s, 400, 599)? as u16);
            }
            out.sort_unstable();
            out.dedup();
            out
        }
    };
    let failures = match e.failures {
        None => 5,
        Some(n) => range(&kf("failures"), n, 0, 1_000_000)? as u32,
    };
    if failures == 0 {
        return Ok((None, statuses));
    }
    let (cooldown, max_cooldown, half_open) = (e.cooldown, e.max_cooldown, e.half_open);
    let cooldown = nonzero_dur(&kf("cooldown"), cooldown, 10)?;
    let max_cooldown = dur_or(&kf("max_cooldown"), max_cooldown, Duration::from_secs(300))?;
    if max_cooldown < cooldown {
        return Err(ConfigError::new(
            kf("max_cooldown"),
            "must be at least cooldown",
        ));
    }
    let eject = EjectConfig {
        failures,
        cooldown,
        max_cooldown,
        half_open: match half_open {
            None => 1,
            Some(n) => range(&kf("half_open"), n, 1, 1000)? as u32,
        },
        max_ejected_percent: match e.max_ejected_percent {
            None => 50,
            Some(n) => range(&kf("max_ejected_percent"), n, 1, 100)? as u32,
        },
        panic: e.panic.unwrap_or(true),
    };
    Ok((Some(eject), statuses))
}
