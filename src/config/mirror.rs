//! A route's `mirror = { upstream = "shadow", share = 0.1 }`: a copy of a
//! share of its requests goes to a shadow upstream, fire and forget
//! (nginx `mirror`).

use serde::Deserialize;

use super::{
    upstream::{upstream_ref, UpstreamIndex},
    ConfigError,
};

/// Where a route's copies go.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorConfig {
    /// Index into the config's upstreams.
    pub upstream: usize,
    /// The share of requests copied, 0..=1.
    pub share: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMirror {
    pub upstream: String,
    pub share: Option<f64>,
}

pub(super) fn build(
    key: &str,
    raw: Option<RawMirror>,
    main: Option<usize>,
    index: &UpstreamIndex,
) -> Result<Option<MirrorConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let k = format!("{key}.mirror");
    let upstream = upstream_ref(&format!("{k}.upstream"), &raw.upstream, index)?;
    if main.is_none() {
        return Err(ConfigError::new(
            k,
            "a route that answers itself has no requests to copy",
        ));
    }
    if main == Some(upstream) {
        return Err(ConfigError::new(
            format!("{k}.upstream"),
            "is the route's own upstream (a copy would double its load)",
        ));
    }
    let share = raw.share.unwrap_or(1.0);
    if !(share > 0.0 && share <= 1.0) {
        return Err(ConfigError::new(
            format!("{k}.share"),
            "must be within (0, 1] (a share of requests)",
        ));
    }
    Ok(Some(MirrorConfig { upstream, share }))
}
