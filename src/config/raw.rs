//! Serde mirror of the TOML file. Every table denies unknown keys so a typo
//! is an error rather than a silently ignored setting. Nothing here is
//! trusted: `validate.rs` turns it into the typed [`crate::config::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub upstream: BTreeMap<String, RawUpstream>,
    pub admin: Option<RawAdmin>,
    pub log: Option<RawLog>,
    pub access_log: Option<RawAccessLog>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    pub path: Option<String>,
    pub format: Option<String>,
}

/// `workers = "auto"` or `workers = 4`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawWorkers {
    Count(i64),
    Word(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRuntime {
    pub workers: Option<RawWorkers>,
    pub pin_cores: Option<bool>,
    pub io_uring: Option<String>,
    pub ring_entries: Option<i64>,
    pub shutdown_timeout: Option<String>,
    pub pid_file: Option<String>,
    pub pipe_pool: Option<i64>,
    pub pipe_size: Option<RawSize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
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
    pub max_connections_per_ip: Option<i64>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub strip_prefix: Option<bool>,
    pub upstream: Option<String>,
    pub max_body_size: Option<RawSize>,
    pub upgrade: Option<Vec<String>>,
    pub request_headers: Option<RawHeaderOps>,
    pub response_headers: Option<RawHeaderOps>,
    pub rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderOps {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub balance: Option<String>,
    pub hash_key: Option<String>,
    pub keepalive: Option<i64>,
    pub keepalive_timeout: Option<String>,
    pub health: Option<RawHealth>,
    pub eject: Option<RawEject>,
    pub slow_start: Option<String>,
    pub queue: Option<i64>,
    pub queue_timeout: Option<String>,
    #[serde(default)]
    pub servers: Vec<RawServer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub addr: String,
    pub weight: Option<i64>,
    pub backup: Option<bool>,
    pub max_connections: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub kind: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub status: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEject {
    pub failures: Option<i64>,
    pub cooldown: Option<String>,
    pub max_cooldown: Option<String>,
    pub half_open: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub rate: f64,
    pub burst: Option<i64>,
    pub key: Option<String>,
}

/// A byte size: `65536` or `"64k"`, `"1m"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSize {
    Bytes(i64),
    Text(String),
}
