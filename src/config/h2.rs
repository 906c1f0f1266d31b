//! HTTP/2 keys: the `h2` table of an http listener (limits, with safe
//! defaults), and an upstream's `protocol`.

use std::time::Duration;

use serde::Deserialize;

use super::{
    values::{dur_or, range, size, RawSize},
    ConfigError,
};

/// An http listener's HTTP/2 limits (clients speaking h2 over TLS via ALPN,
/// or h2c with prior knowledge).
#[derive(Debug, Clone, PartialEq)]
pub struct H2Config {
    /// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Per-stream receive window: how much of a request body a client may
    /// send ahead before ringlb passed it on.
    pub initial_window: u32,
    /// The connection's receive window (all streams together).
    pub connection_window: u32,
    pub max_frame_size: u32,
    /// Response bytes ringlb holds per stream for a slow client (h2's send
    /// buffer; a connection holds at most streams x this).
    pub max_send_buffer: usize,
    /// Streams the client may reset before their response began, within
    /// `reset_window` (rapid reset, CVE-2023-44487); past it: GOAWAY.
    pub max_resets: u32,
    pub reset_window: Duration,
    /// Streams reset by the client before ringlb accepted them (h2's own
    /// counter); past it: GOAWAY.
    pub max_pending_accept_resets: usize,
    /// A PING to the client this often; zero = off.
    pub ping_interval: Duration,
    /// No PING answer within this: the connection is closed.
    pub ping_timeout: Duration,
}

impl Default for H2Config {
    fn default() -> Self {
        H2Config {
            max_concurrent_streams: 128,
            initial_window: 1 << 20,
            connection_window: 16 << 20,
            max_frame_size: 16 << 10,
            max_send_buffer: 256 << 10,
            max_resets: 100,
            reset_window: Duration::from_secs(10),
            max_pending_accept_resets: 20,
            ping_interval: Duration::from_secs(60),
            ping_timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawH2 {
    pub max_concurrent_streams: Option<i64>,
    pub initial_window_size: Option<RawSize>,
    pub connection_window_size: Option<RawSize>,
    pub max_frame_size: Option<RawSize>,
    pub max_send_buffer: Option<RawSize>,
    pub max_resets: Option<i64>,
    pub reset_window: Option<String>,
    pub max_pending_accept_resets: Option<i64>,
    pub ping_interval: Option<String>,
    pub ping_timeout: Option<String>,
}

/// The largest window HTTP/2 allows (2^31 - 1).
const MAX_WINDOW: usize = (1 << 31) - 1;

pub(super) fn build(key: &str, raw: Option<RawH2>) -> Result<H2Config, ConfigError> {
    let d = H2Config::default();
    let Some(r) = raw else {
        return Ok(d);
    };
    let k = |f: &str| format!("{key}.{f}");
    let sz = |f: &str, v: Option<RawSize>, dflt: usize, lo: usize, hi: usize| {
        let n = match v {
            None => return Ok(dflt),
            Some(v) => size(&k(f), v)?,
        };
        if !(lo..=hi).contains(&n) {
            return Err(ConfigError::new(
                k(f),
                format!("{n} is out of range ({lo}..={hi})"),
            ));
        }
        Ok(n)
    };
    let initial_window = sz(
        "initial_window_size",
        r.initial_window_size,
        d.initial_window as usize,
        65_535,
        MAX_WINDOW,
    )? as u32;
    let connection_window = sz(
        "connection_window_size",
        r.connection_window_size,
        (d.connection_window as usize).max(initial_window as usize),
        65_535,
        MAX_WINDOW,
    )? as u32;
    let ping_interval = dur_or(&k("ping_interval"), r.ping_interval, d.ping_interval)?;
    let ping_timeout = dur_or(&k("ping_timeout"), r.ping_timeout, d.ping_timeout)?;
    if !ping_interval.is_zero() && ping_timeout.is_zero() {
        return Err(ConfigError::new(
            k("ping_timeout"),
            "must be greater than 0 while ping_interval is on",
        ));
    }
    let reset_window = dur_or(&k("reset_window"), r.reset_window, d.reset_window)?;
    if reset_window.is_zero() {
        return Err(ConfigError::new(
            k("reset_window"),
            "must be greater than 0",
        ));
    }
    Ok(H2Config {
        max_concurrent_streams: match r.max_concurrent_streams {
            None => d.max_concurrent_streams,
            Some(n) => range(&k("max_concurrent_streams"), n, 1, 10_000)? as u32,
        },
        initial_window,
        connection_window,
        max_frame_size: sz(
            "max_frame_size",
            r.max_frame_size,
            d.max_frame_size as usize,
            16 << 10,
            (16 << 20) - 1,
        )? as u32,
        max_send_buffer: sz(
            "max_send_buffer",
            r.max_send_buffer,
            d.max_send_buffer,
            16 << 10,
            64 << 20,
        )?,
        max_resets: match r.max_resets {
            None => d.max_resets,
            Some(n) => range(&k("max_resets"), n, 1, 1_000_000)? as u32,
        },
        reset_window,
        max_pending_accept_resets: match r.max_pending_accept_resets {
            None => d.max_pending_accept_resets,
            Some(n) => range(&k("max_pending_accept_resets"), n, 1, 10_000)? as usize,
        },
        ping_interval,
        ping_timeout,
    })
}

/// How an upstream talks to its servers (http listeners).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Http1,
    /// HTTP/2 over the upstream's `tls` (ALPN h2).
    H2,
    /// HTTP/2 in cleartext, prior knowledge.
    H2c,
}

impl Protocol {
    pub fn is_h2(self) -> bool {
        self != Protocol::Http1
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::H2c => "h2c",
        }
    }
}

pub(super) fn protocol(key: &str, v: Option<&str>) -> Result<Protocol, ConfigError> {
    match v {
        None | Some("http1") => Ok(Protocol::Http1),
        Some("h2") => Ok(Protocol::H2),
        Some("h2c") => Ok(Protocol::H2c),
        Some(o) => Err(super::values::one_of(key, o, &["http1", "h2", "h2c"])),
    }
}
