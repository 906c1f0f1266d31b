//! `[runtime]`: worker threads, io_uring, shutdown, pid file and the splice pipe pool.

use std::time::Duration;

use serde::Deserialize;

use super::{
    values::{dur_or, one_of, range, size, RawSize},
    ConfigError,
};

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

/// `workers = "auto"` or `workers = 4`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawWorkers {
    Count(i64),
    Word(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRuntime {
    pub workers: Option<RawWorkers>,
    pub pin_cores: Option<bool>,
    pub io_uring: Option<String>,
    pub ring_entries: Option<i64>,
    pub shutdown_timeout: Option<String>,
    pub pid_file: Option<String>,
    pub pipe_pool: Option<i64>,
    pub pipe_size: Option<RawSize>,
}

/// `[runtime]` (all defaults when the table is absent).
pub(super) fn build(r: RawRuntime) -> Result<RuntimeConfig, ConfigError> {
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
