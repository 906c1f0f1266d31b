//! Scalar values: every parser and range check the tables share (durations,
//! sizes, addresses, numbers, enumerations, tokens), each error naming its key.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    time::Duration,
};

use serde::Deserialize;

use super::ConfigError;

/// A byte size: `65536` or `"64k"`, `"1m"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawSize {
    Bytes(i64),
    Text(String),
}

/// "ip:port" or "[v6]:port" directly; "host:port" through the resolver, once,
/// at load time (never per connection).
pub(super) fn resolve(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
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

/// An HTTP status or inclusive range of them: "200" or "200-399".
pub(super) fn parse_status_range(t: &str) -> Option<(u16, u16)> {
    let (a, b) = t.split_once('-').unwrap_or((t, t));
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    ((100..=599).contains(&a) && (a..=599).contains(&b)).then_some((a, b))
}

/// RFC 9110 token (header names, methods).
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A duration that must not be zero; `default_secs` when not written.
/// An address block, `10.0.0.0/8` or `2001:db8::/32` (a bare address is
/// its own /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let bits = |a: IpAddr| match a {
            IpAddr::V4(v) => (u128::from(u32::from(v)) << 96, 32u32),
            IpAddr::V6(v) => (u128::from(v), 128u32),
        };
        let ((net, w1), (x, w2)) = (bits(self.addr), bits(ip));
        if w1 != w2 {
            return false;
        }
        let p = u32::from(self.prefix);
        p == 0 || (net ^ x) >> (128 - p) == 0
    }
}

/// Parse a [`Cidr`].
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: std::net::IpAddr = a
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an address or address/prefix (e.g. 10.0.0.0/8)"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        None => max,
        Some(p) => match p.trim().parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("{s:?}: the prefix must be 0..={max}")),
        },
    };
    Ok(Cidr { addr, prefix })
}

/// The longest duration any key accepts: every deadline is `now + d`, and
/// a duration near `u64::MAX` seconds would overflow the clock (a panic at
/// the first request instead of an error from `ringlb check`).
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

pub(super) fn nonzero_dur(
    key: &str,
    v: Option<String>,
    default_secs: u64,
) -> Result<Duration, ConfigError> {
    let d = dur_or(key, v, Duration::from_secs(default_secs))?;
    if d.is_zero() {
        return Err(ConfigError::new(key, "must be greater than 0"));
    }
    Ok(d)
}

/// A duration; `default` when not written.
pub(super) fn dur_or(
    key: &str,
    v: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => {
            let d = parse_duration(&s).map_err(|m| ConfigError::new(key, m))?;
            if d > MAX_DURATION {
                return Err(ConfigError::new(
                    key,
                    format!("{s:?} is longer than the longest allowed duration, 30d"),
                ));
            }
            Ok(d)
        }
    }
}

/// `n` if it is within `lo..=hi`.
pub(super) fn range(key: &str, n: i64, lo: i64, hi: i64) -> Result<i64, ConfigError> {
    if n < lo || n > hi {
        return Err(ConfigError::new(
            key,
            format!("{n} is out of range ({lo}..={hi})"),
        ));
    }
    Ok(n)
}

/// The error for a word that is none of `allowed`.
pub(super) fn one_of(key: &str, got: &str, allowed: &[&str]) -> ConfigError {
    ConfigError::new(
        key,
        format!(
            "unknown value {got:?} (expected one of: {})",
            allowed.join(", ")
        ),
    )
}

/// A byte size written as a number or as text.
pub(super) fn size(key: &str, s: RawSize) -> Result<usize, ConfigError> {
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
