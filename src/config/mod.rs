//! Validated, typed configuration.
//!
//! The TOML file is read into the serde mirror in `raw.rs`, then converted
//! once into [`Config`] by `validate.rs` ("parse, don't validate"). Past that
//! point no code re-checks a setting: durations are [`Duration`]s, addresses
//! are resolved [`SocketAddr`]s and upstream references are indices.

mod raw;
mod validate;

use std::{net::SocketAddr, path::Path, time::Duration};

use crate::balancer::Algorithm;
pub use validate::{parse_duration, parse_size};

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
}

/// `[access_log]`.
#[derive(Debug, Clone)]
pub struct AccessLogConfig {
    /// `None` = stdout.
    pub path: Option<std::path::PathBuf>,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Combined,
    Json,
}

/// `[runtime]`.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// `None` = "auto": one worker per CPU in the affinity mask.
    pub workers: Option<usize>,
    pub pin_cores: bool,
    pub io_uring: IoUringMode,
    pub ring_entries: u32,
    pub shutdown_timeout: Duration,
    /// Where the serving process writes its pid (for `ringlb reload/upgrade`).
    pub pid_file: Option<std::path::PathBuf>,
    /// Idle pipes kept per worker for splice (each pipe is two fds).
    pub pipe_pool: usize,
    /// Pipe capacity requested with F_SETPIPE_SZ (0 = kernel default, 64 KiB; default 256 KiB).
    pub pipe_size: usize,
}

/// `runtime.io_uring`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoUringMode {
    /// Use io_uring when the kernel offers it, else fall back to epoll.
    Auto,
    /// Refuse to start without io_uring.
    Required,
    /// Always use the epoll driver.
    Off,
}

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

/// How an L4 listener moves bytes.
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
    /// Index into [`Config::upstreams`]: required for tcp listeners; for
    /// http listeners the catch-all route (also present in `http.routes`).
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
    /// Routes, in config order; the listener's `upstream` is the last one (any host, "/").
    pub routes: Vec<RouteConfig>,
}

/// One `[[listener.route]]`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Lower-case host; `*.example.com` for a wildcard; `None` for any host.
    pub host: Option<String>,
    pub path_prefix: String,
    pub strip_prefix: bool,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Largest request body accepted (413 above); 0 = unlimited.
    pub max_body_size: u64,
    /// Lower-case protocol names an `Upgrade` request may switch to.
    pub upgrade: Vec<String>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub rate_limit: Option<RateLimitConfig>,
}

/// A route's token bucket.
#[derive(Debug, Clone)]
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

/// Key for consistent hashing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    /// The request target (http listeners).
    Uri,
    /// The value of this header, lower-case name (http listeners).
    Header(String),
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
    /// A backend coming back ramps its share over this (zero = off).
    pub slow_start: Duration,
    /// http: requests that may wait for a backend below its max_connections.
    pub queue: u32,
    pub queue_timeout: Duration,
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
}

/// One backend server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// As written in the file (stable identity for hashing).
    pub id: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Used only when every primary is unavailable.
    pub backup: bool,
    /// Process-wide cap on connections (tcp) / requests in flight (http); 0 = none.
    pub max_connections: u32,
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

/// Default for `max_connections` before the fd budget caps it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;

impl Config {
    /// Read and validate a config file.
    ///
    /// # Errors
    /// A [`crate::Error::Config`] whose text names the file, the key and the problem.
    pub fn load(path: &Path) -> Result<Config, crate::Error> {
        let text = std::fs::read_to_string(path).map_err(|e| crate::Error::Config {
            file: path.display().to_string(),
            err: ConfigError::new("(file)", format!("cannot read: {e}")),
        })?;
        Config::parse(&text).map_err(|err| crate::Error::Config {
            file: path.display().to_string(),
            err,
        })
    }

    /// Parse and validate TOML text.
    ///
    /// # Errors
    /// The first problem found, naming its key.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        validate::parse(text)
    }

    /// Total connections all listeners may hold at once.
    pub fn total_max_connections(&self) -> usize {
        self.listeners.iter().map(|l| l.max_connections).sum()
    }
}
