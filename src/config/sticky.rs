//! `sticky = { cookie = "NAME" }` on an upstream: cookie-based session
//! affinity for http requests (HAProxy `cookie NAME insert indirect
//! nocache`). The cookie names a backend by a token derived from its stable
//! name, so every ringlb box (and every reload) agrees on it.

use std::time::Duration;

use serde::Deserialize;

use super::{values::parse_duration, ConfigError};

/// An upstream's cookie affinity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyConfig {
    /// The cookie's name.
    pub cookie: String,
    /// `Max-Age` of the cookie; `None`: a session cookie.
    pub max_age: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSticky {
    pub cookie: String,
    pub max_age: Option<String>,
}

/// Whether `s` may be a cookie name (an RFC 6265 token).
fn cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(super) fn build(
    key: &str,
    raw: Option<RawSticky>,
) -> Result<Option<StickyConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if !cookie_name(&raw.cookie) {
        return Err(ConfigError::new(
            format!("{key}.sticky.cookie"),
            format!(
                "{:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
                raw.cookie
            ),
        ));
    }
    let max_age = match raw.max_age {
        None => None,
        Some(v) => {
            let d = parse_duration(&v)
                .map_err(|m| ConfigError::new(format!("{key}.sticky.max_age"), m))?;
            if d.as_secs() == 0 {
                return Err(ConfigError::new(
                    format!("{key}.sticky.max_age"),
                    "must be at least 1s (leave it out for a session cookie)",
                ));
            }
            Some(d)
        }
    };
    Ok(Some(StickyConfig {
        cookie: raw.cookie,
        max_age,
    }))
}
