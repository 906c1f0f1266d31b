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
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
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
}

/// Key for consistent hashing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
}

/// One `[upstream.NAME]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub balance: Algorithm,
    pub hash_key: HashKey,
    pub servers: Vec<ServerConfig>,
}

/// One backend server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// As written in the file (stable identity for hashing).
    pub id: String,
    pub addr: SocketAddr,
    pub weight: u32,
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
