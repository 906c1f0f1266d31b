//! `[admin]`, `[log]` and `[access_log]`: what ringlb tells the operator and where.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{values::one_of, ConfigError};

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccessLog {
    pub path: Option<String>,
    pub format: Option<String>,
}

/// `[admin] listen`; `None` = no admin listener.
pub(super) fn admin(raw: Option<RawAdmin>) -> Result<Option<SocketAddr>, ConfigError> {
    match raw.and_then(|a| a.listen) {
        None => Ok(None),
        Some(t) => Ok(Some(t.parse::<SocketAddr>().map_err(|_| {
            ConfigError::new(
                "admin.listen",
                format!("{t:?} is not an ip:port address (e.g. 127.0.0.1:9900)"),
            )
        })?)),
    }
}

/// `[log] level`, "info" when not written.
pub(super) fn log_level(raw: Option<RawLog>) -> Result<String, ConfigError> {
    match raw.and_then(|l| l.level) {
        None => Ok("info".to_string()),
        Some(l) => match l.as_str() {
            "error" | "warn" | "info" | "debug" | "trace" => Ok(l),
            o => Err(one_of("log.level", o, &["error", "warn", "info", "debug"])),
        },
    }
}

/// `[access_log]`; `None` = no access log.
pub(super) fn access_log(
    raw: Option<RawAccessLog>,
) -> Result<Option<AccessLogConfig>, ConfigError> {
    let Some(a) = raw else {
        return Ok(None);
    };
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
    Ok(Some(AccessLogConfig { path, format }))
}
