//! Validated, typed configuration.
//!
//! The TOML file is read into serde mirrors (`Raw*`), then converted once
//! into [`Config`] ("parse, don't validate"). Past that point no code
//! re-checks a setting: durations are [`Duration`](std::time::Duration)s,
//! addresses are resolved [`SocketAddr`]s and upstream references are indices.
//!
//! Each TOML table has one file holding its mirror, its typed structs and
//! the conversion: `runtime.rs`, `listener.rs` (with `http.rs` for the http
//! keys and routes), `tls.rs` (a listener's `tls` table, its files read), `upstream.rs` and
//! `observe.rs` (`[admin]`, `[log]`,
//! `[access_log]`); `values.rs` parses the scalars they share. This file
//! ties the tables together and checks what spans them.

pub mod acl;
mod compress;
mod discovery;
mod h2;
mod http;
mod listener;
mod mirror;
mod observe;
mod reply;
mod retry;
mod runtime;
mod server;
mod sticky;
mod tls;
mod upstream;
mod values;

#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::Path,
};

use serde::Deserialize;

pub use compress::{Coding, CompressConfig};
pub use discovery::{
    fetch as fetch_discovered, fetch_with_ttl, zk_connect, zk_list, DiscoveryConfig,
    RegisterConfig, Seed, Source,
};
pub use h2::{H2Config, Protocol};
pub use http::{HeaderOps, HttpConfig, RateKey, RateLimitConfig, RouteConfig, Underscores};
pub use listener::{
    FlowKey, ListenerConfig, Mode, ProxyAccept, ProxySend, SniRoute, SniTarget, Transfer,
    UdpConfig, DEFAULT_MAX_CONNECTIONS,
};
pub use mirror::MirrorConfig;
pub use observe::{AccessLogConfig, LogFormat};
pub use reply::{Answer, Template, Var, Vars};
pub use retry::RetryConfig;
pub use runtime::{IoUringMode, RuntimeConfig};
pub use server::parse_list;
pub use sticky::StickyConfig;
pub use tls::{CertPair, ClientAuth, TlsConfig, TlsVersion, UpstreamTls};
pub use upstream::{EjectConfig, HashKey, HealthConfig, HealthKind, ServerConfig, UpstreamConfig};
pub use values::{parse_cidr, parse_duration, parse_size, Cidr};

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub runtime: RuntimeConfig,
    pub listeners: Vec<ListenerConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    /// `[admin] listen`: the admin/metrics listener.
    pub admin: Option<SocketAddr>,
    /// `[log] level` (error, warn, info, debug); RINGLB_LOG overrides.
    pub log_level: String,
    pub access_log: Option<AccessLogConfig>,
    /// `[register]`: this box's ephemeral node in ZooKeeper.
    pub register: Option<RegisterConfig>,
}

/// A configuration error: which key, and what is wrong with it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{key}: {msg}")]
pub struct ConfigError {
    pub key: String,
    pub msg: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, msg: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            msg: msg.into(),
        }
    }
}

/// A config file that could not be loaded: which file, and what is wrong in it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}: {err}")]
pub struct LoadError {
    pub file: String,
    pub err: ConfigError,
}

/// Serde mirror of the whole file. Every table denies unknown keys so a typo
/// is an error rather than a silently ignored setting. Nothing in a mirror is
/// trusted until converted.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    runtime: runtime::RawRuntime,
    #[serde(default)]
    listener: Vec<listener::RawListener>,
    #[serde(default)]
    upstream: BTreeMap<String, upstream::RawUpstream>,
    admin: Option<observe::RawAdmin>,
    log: Option<observe::RawLog>,
    access_log: Option<observe::RawAccessLog>,
    register: Option<discovery::RawRegister>,
}

impl Config {
    /// Read and validate a config file.
    ///
    /// # Errors
    /// A [`LoadError`] whose text names the file, the key and the problem.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        Config::load_seeded(path, &Seed::default())
    }

    /// [`Config::load`], taking discovered lists from `seed` where it has
    /// them instead of asking their sources.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn load_seeded(path: &Path, seed: &Seed) -> Result<Config, LoadError> {
        let file = || path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| LoadError {
            file: file(),
            err: ConfigError::new("(file)", format!("cannot read: {e}")),
        })?;
        Config::parse_seeded(&text, seed).map_err(|err| LoadError { file: file(), err })
    }

    /// Parse and validate TOML text.
    ///
    /// # Errors
    /// The first problem found, naming its key in the same dotted form a
    /// user would write (`listener[0].connect_timeout`).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_seeded(text, &Seed::default())
    }

    /// [`Config::parse`] with discovered lists from `seed`.
    ///
    /// # Errors
    /// As [`Config::parse`].
    pub fn parse_seeded(text: &str, seed: &Seed) -> Result<Config, ConfigError> {
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
        let mut cfg = build(raw)?;
        upstream::seed_discovered(&mut cfg.upstreams, seed)?;
        Ok(cfg)
    }

    /// Total connections all stream listeners may hold at once (udp
    /// listeners bound their flows with `max_flows` instead).
    pub fn total_max_connections(&self) -> usize {
        self.listeners
            .iter()
            .filter(|l| !l.is_udp())
            .map(|l| l.max_connections)
            .sum()
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// SNI routes of tls listeners: a passthrough upstream hashes by client
/// ip or sni; a listener target exists, terminates TLS and is no router.
fn resolve_sni_targets(
    listeners: &mut [ListenerConfig],
    upstreams: &[UpstreamConfig],
) -> Result<(), ConfigError> {
    let names: Vec<(String, Mode, bool)> = listeners
        .iter()
        .map(|l| (l.name.clone(), l.mode, l.tls.is_some()))
        .collect();
    for (i, l) in listeners.iter_mut().enumerate() {
        for (j, r) in l.sni.iter_mut().enumerate() {
            let key = format!("listener[{i}].sni[{j}]");
            match (&mut r.target, &r.target_name) {
                (SniTarget::Upstream(u), _) => {
                    let up = &upstreams[*u];
                    if up.tls.is_some() {
                        return Err(ConfigError::new(
                            format!("{key}.upstream"),
                            format!("upstream {:?} has tls: passthrough sends the client's own TLS, which cannot go inside another TLS session", up.name),
                        ));
                    }
                    if !matches!(up.hash_key, HashKey::ClientIp | HashKey::Sni) {
                        return Err(ConfigError::new(
                            format!("upstream.{}.hash_key", up.name),
                            format!("tls listener {:?} passes connections to this upstream; they can hash by client_ip or sni", l.name),
                        ));
                    }
                }
                (SniTarget::Listener(li), Some(name)) => {
                    let Some(t) = names.iter().position(|(n, _, _)| n == name) else {
                        return Err(ConfigError::new(
                            format!("{key}.listener"),
                            format!("no listener named {name:?}"),
                        ));
                    };
                    let (_, mode, tls) = &names[t];
                    if *mode == Mode::Tls || !*tls {
                        return Err(ConfigError::new(
                            format!("{key}.listener"),
                            format!("listener {name:?} must be an http or tcp listener with tls = {{...}}: it ends the TLS of what it is handed"),
                        ));
                    }
                    *li = t;
                }
                (SniTarget::Listener(_), None) => {}
            }
        }
    }
    Ok(())
}

/// Convert every table, then check what spans them: at least one listener,
/// unique listener names and addresses, tcp listeners' upstreams hashing by
/// client ip.
fn build(raw: RawConfig) -> Result<Config, ConfigError> {
    let runtime = runtime::build(raw.runtime)?;
    let (upstreams, index) = upstream::build(raw.upstream)?;
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
        let l = listener::build(i, l, &index)?;
        if let (Mode::Tcp | Mode::Udp, Some(u)) = (l.mode, l.upstream) {
            let up = &upstreams[u];
            if up.hash_key != HashKey::ClientIp {
                return Err(ConfigError::new(
                    format!("upstream.{}.hash_key", up.name),
                    format!(
                        "{} listener {:?} uses this upstream; {} can only hash by client_ip",
                        l.mode.name(),
                        l.name,
                        if l.mode == Mode::Udp {
                            "udp flows"
                        } else {
                            "tcp connections"
                        }
                    ),
                ));
            }
        }
        if let (Mode::Udp, Some(u)) = (l.mode, l.upstream) {
            let up = &upstreams[u];
            if up.tls.is_some() {
                return Err(ConfigError::new(
                    format!("upstream.{}.tls", up.name),
                    format!(
                        "udp listener {:?} uses this upstream; datagrams cannot go over TLS",
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
        // A tcp and a udp listener may share a port (DNS does).
        if !addrs.insert((l.is_udp(), l.listen)) {
            return Err(ConfigError::new(
                format!("listener[{i}].listen"),
                format!("address {} is used by another listener", l.listen),
            ));
        }
        listeners.push(l);
    }
    resolve_sni_targets(&mut listeners, &upstreams)?;
    let admin = observe::admin(raw.admin)?;
    if let Some(a) = admin {
        // Same port on the same (or a wildcard) address: the admin socket
        // would join the listener's SO_REUSEPORT group and public clients
        // would reach /metrics.
        let clash = listeners.iter().find(|l| {
            a.port() != 0
                && l.listen.port() == a.port()
                && l.listen.is_ipv4() == a.is_ipv4()
                && (l.listen.ip() == a.ip()
                    || l.listen.ip().is_unspecified()
                    || a.ip().is_unspecified())
        });
        if let Some(l) = clash {
            return Err(ConfigError::new(
                "admin.listen",
                format!(
                    "{a} overlaps listener {:?} ({}); give the admin listener its own port",
                    l.name, l.listen
                ),
            ));
        }
    }
    Ok(Config {
        runtime,
        listeners,
        upstreams,
        admin,
        log_level: observe::log_level(raw.log)?,
        access_log: observe::access_log(raw.access_log)?,
        register: discovery::register(raw.register)?,
    })
}
