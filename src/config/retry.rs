//! A route's `retry = { on = [...], tries = N, budget = 0.2 }`: which
//! failures send a request to another backend, how many tries in all, and
//! the share of requests that may be retries (a budget, as Envoy and
//! linkerd have, so retries cannot multiply the load of an outage).

use serde::Deserialize;

use super::{values::range, ConfigError};

/// What a route retries.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// A connect that failed (refused, unreachable, timed out): the
    /// request was not sent, so any request may go to the next backend.
    pub connect: bool,
    /// The backend closed or reset the connection before any byte of a
    /// response (idempotent, replayable requests only).
    pub reset: bool,
    /// No response head within `response_timeout` (idempotent only).
    pub timeout: bool,
    /// Response statuses that send an idempotent request to another
    /// backend (502, 503, 504); the last try's response goes to the client.
    pub statuses: Vec<u16>,
    /// Tries in all, the first included (the listener's `connect_tries`
    /// for routes without a `retry` table).
    pub tries: u32,
    /// Retries of reset, timeout and status failures allowed per request
    /// sent (0.2: one in five); connect retries are not counted.
    pub budget: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub on: Option<Vec<String>>,
    pub tries: Option<i64>,
    pub budget: Option<f64>,
}

const ON: [&str; 6] = ["connect", "reset", "timeout", "502", "503", "504"];

pub(super) fn build(key: &str, raw: Option<RawRetry>) -> Result<Option<RetryConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let kf = |f: &str| format!("{key}.retry.{f}");
    let mut cfg = RetryConfig {
        connect: false,
        reset: false,
        timeout: false,
        statuses: Vec::new(),
        tries: range(&kf("tries"), raw.tries.unwrap_or(3), 1, 10)? as u32,
        budget: raw.budget.unwrap_or(0.2),
    };
    if !(0.0..=1.0).contains(&cfg.budget) {
        return Err(ConfigError::new(
            kf("budget"),
            "must be within 0..=1 (a share of requests)",
        ));
    }
    let on = raw
        .on
        .unwrap_or_else(|| vec!["connect".into(), "reset".into()]);
    for what in on {
        match what.as_str() {
            "connect" => cfg.connect = true,
            "reset" => cfg.reset = true,
            "timeout" => cfg.timeout = true,
            "502" | "503" | "504" => cfg.statuses.push(what.parse().unwrap_or(502)),
            o => {
                return Err(ConfigError::new(
                    kf("on"),
                    format!(
                        "{o:?} is not a failure ringlb retries (one of {})",
                        ON.join(", ")
                    ),
                ))
            }
        }
    }
    Ok(Some(cfg))
}
