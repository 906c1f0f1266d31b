//! A route's `compress`: response compression by the client's
//! Accept-Encoding and the response's type (nginx `gzip on; gzip_types`,
//! HAProxy `compression algo gzip`).

use serde::Deserialize;

use super::{
    values::{size, RawSize},
    ConfigError,
};

/// A content coding ringlb can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Br,
    Gzip,
}

impl Coding {
    /// The Content-Encoding token.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }
}

/// What a route compresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressConfig {
    /// Codings offered, in ringlb's order of preference.
    pub codings: Vec<Coding>,
    /// Lower-case media types (`text/html`), or `type/*`.
    pub types: Vec<String>,
    /// A response whose Content-Length is below this is sent as it is.
    pub min_length: u64,
}

/// nginx's `gzip_types` plus what browsers fetch most.
const TYPES: [&str; 9] = [
    "text/html",
    "text/plain",
    "text/css",
    "text/javascript",
    "application/javascript",
    "application/json",
    "application/xml",
    "image/svg+xml",
    "application/wasm",
];

/// `compress = true`, `compress = ["gzip"]`, or
/// `compress = { codings = [...], types = [...], min_length = "1k" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub(super) enum RawCompress {
    On(bool),
    Codings(Vec<String>),
    Full {
        codings: Option<Vec<String>>,
        types: Option<Vec<String>>,
        min_length: Option<RawSize>,
    },
}

pub(super) fn build(
    key: &str,
    raw: Option<RawCompress>,
) -> Result<Option<CompressConfig>, ConfigError> {
    let k = format!("{key}.compress");
    let (codings, types, min_length) = match raw {
        None | Some(RawCompress::On(false)) => return Ok(None),
        Some(RawCompress::On(true)) => (None, None, None),
        Some(RawCompress::Codings(c)) => (Some(c), None, None),
        Some(RawCompress::Full {
            codings,
            types,
            min_length,
        }) => (codings, types, min_length),
    };
    let codings = match codings {
        None => vec![Coding::Br, Coding::Gzip],
        Some(list) => {
            let mut out = Vec::new();
            for c in list {
                let coding = match c.to_ascii_lowercase().as_str() {
                    "br" => Coding::Br,
                    "gzip" => Coding::Gzip,
                    o => {
                        return Err(ConfigError::new(
                            format!("{k}.codings"),
                            format!("{o:?} is not a coding ringlb makes (\"br\", \"gzip\")"),
                        ))
                    }
                };
                if !out.contains(&coding) {
                    out.push(coding);
                }
            }
            if out.is_empty() {
                return Err(ConfigError::new(
                    format!("{k}.codings"),
                    "name at least one coding (or write compress = false)",
                ));
            }
            out
        }
    };
    let types = match types {
        None => TYPES.iter().map(|t| t.to_string()).collect(),
        Some(list) => {
            let mut out = Vec::new();
            for t in list {
                let t = t.trim().to_ascii_lowercase();
                let ok = t.split_once('/').is_some_and(|(a, b)| {
                    !a.is_empty()
                        && !b.is_empty()
                        && t.bytes()
                            .all(|c| c.is_ascii_alphanumeric() || b"/+-.*_".contains(&c))
                });
                if !ok {
                    return Err(ConfigError::new(
                        format!("{k}.types"),
                        format!("{t:?} is not a media type (write \"text/html\" or \"text/*\")"),
                    ));
                }
                out.push(t);
            }
            out
        }
    };
    let min_length = match min_length {
        None => 1024,
        Some(v) => size(&format!("{k}.min_length"), v)? as u64,
    };
    Ok(Some(CompressConfig {
        codings,
        types,
        min_length,
    }))
}
