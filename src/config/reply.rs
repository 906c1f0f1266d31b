//! Answers ringlb gives itself instead of proxying: a route's `return`
//! (a fixed response) and `redirect` (a `Location` built from the request),
//! and the `hsts` header of a TLS listener.

use std::time::Duration;

use serde::Deserialize;

use super::{values::parse_duration, ConfigError};

/// A route's own answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// Redirects: where to (expanded per request).
    pub location: Option<Template>,
    pub body: String,
    /// The body's type (`None`: no Content-Type, as for an empty body).
    pub content_type: Option<String>,
}

/// A string with `$name` variables, split once at load.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Part>);

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Var(Var),
}

/// What a template may name (nginx's variables of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// `http` or `https`.
    Scheme,
    /// The request's host, lower-case, without its port.
    Host,
    /// The request target as sent: path and query.
    RequestUri,
    /// The normalized path, without the query.
    Uri,
    /// The query (after `?`), empty when none.
    Args,
    /// `?` when there is a query, else nothing (`$uri$is_args$args`).
    IsArgs,
    /// The port the client connected to.
    ServerPort,
    RemoteAddr,
}

const VARS: [(&str, Var); 8] = [
    ("scheme", Var::Scheme),
    ("host", Var::Host),
    ("request_uri", Var::RequestUri),
    ("uri", Var::Uri),
    ("args", Var::Args),
    ("is_args", Var::IsArgs),
    ("server_port", Var::ServerPort),
    ("remote_addr", Var::RemoteAddr),
];

/// One request's values for a [`Template`].
pub struct Vars<'a> {
    pub https: bool,
    pub host: &'a str,
    /// The request target as sent.
    pub target: &'a [u8],
    /// The normalized target (empty when normalizing changed nothing).
    pub path: &'a [u8],
    pub port: u16,
    pub remote: std::net::IpAddr,
}

impl Template {
    /// # Errors
    /// An unknown `$name`, or a control character.
    pub fn parse(s: &str) -> Result<Template, String> {
        if s.bytes().any(|b| b < b' ' || b == 0x7f) {
            return Err("a redirect target cannot contain control characters".into());
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            if i > 0 {
                parts.push(Part::Lit(rest[..i].to_string()));
            }
            let after = &rest[i + 1..];
            let n = after
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            // The longest name that is a variable: "$uri" in "$urix" is
            // not, as nginx reads names greedily too.
            let name = &after[..n];
            let Some(&(_, v)) = VARS.iter().find(|(k, _)| *k == name) else {
                let known: Vec<String> = VARS.iter().map(|(k, _)| format!("${k}")).collect();
                return Err(format!(
                    "${name} is not a variable here (known: {})",
                    known.join(", ")
                ));
            };
            parts.push(Part::Var(v));
            rest = &after[n..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Template(parts))
    }

    /// Whether the template names `v`.
    pub fn uses(&self, v: Var) -> bool {
        self.0.contains(&Part::Var(v))
    }

    /// The expansion for one request. Request values are what the codec
    /// accepted (no CR, LF or spaces), so the result is a valid field value.
    pub fn render(&self, v: &Vars<'_>, out: &mut Vec<u8>) {
        let (path, query) = match v.target.iter().position(|&b| b == b'?') {
            Some(q) => (&v.target[..q], &v.target[q + 1..]),
            None => (v.target, &b""[..]),
        };
        let uri = match v.path.iter().position(|&b| b == b'?') {
            _ if v.path.is_empty() => path,
            Some(q) => &v.path[..q],
            None => v.path,
        };
        for p in &self.0 {
            match p {
                Part::Lit(s) => out.extend_from_slice(s.as_bytes()),
                Part::Var(Var::Scheme) => {
                    out.extend_from_slice(if v.https { b"https" } else { b"http" })
                }
                Part::Var(Var::Host) => out.extend_from_slice(v.host.as_bytes()),
                Part::Var(Var::RequestUri) => out.extend_from_slice(v.target),
                Part::Var(Var::Uri) => out.extend_from_slice(uri),
                Part::Var(Var::Args) => out.extend_from_slice(query),
                Part::Var(Var::IsArgs) => {
                    if v.target.contains(&b'?') {
                        out.push(b'?');
                    }
                }
                Part::Var(Var::ServerPort) => out.extend_from_slice(v.port.to_string().as_bytes()),
                Part::Var(Var::RemoteAddr) => {
                    out.extend_from_slice(v.remote.to_string().as_bytes())
                }
            }
        }
    }
}

/// `return = 204` or `return = { status = 200, body = "ok\n", content_type = "text/plain" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub(super) enum RawReturn {
    Status(i64),
    Full {
        status: i64,
        body: Option<String>,
        content_type: Option<String>,
    },
}

/// `redirect = "https://$host$request_uri"` or `redirect = { to = "...", status = 308 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub(super) enum RawRedirect {
    To(String),
    Full { to: String, status: Option<i64> },
}

/// A route's `return` or `redirect` (at most one of them).
pub(super) fn answer(
    kf: &dyn Fn(&str) -> String,
    ret: Option<RawReturn>,
    redirect: Option<RawRedirect>,
) -> Result<Option<Answer>, ConfigError> {
    match (ret, redirect) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(ConfigError::new(
            kf("redirect"),
            "a route has either `return` or `redirect`, not both",
        )),
        (Some(r), None) => {
            let (status, body, content_type) = match r {
                RawReturn::Status(s) => (s, None, None),
                RawReturn::Full {
                    status,
                    body,
                    content_type,
                } => (status, body, content_type),
            };
            if !(200..=599).contains(&status) || (300..400).contains(&status) {
                return Err(ConfigError::new(
                    kf("return"),
                    format!("status {status}: write 200..=299 or 400..=599 (redirects are `redirect = \"URL\"`)"),
                ));
            }
            let body = body.unwrap_or_default();
            if !body.is_empty() && (status == 204 || status == 205) {
                return Err(ConfigError::new(
                    kf("return.body"),
                    format!("a {status} response has no body"),
                ));
            }
            if let Some(t) = &content_type {
                if t.is_empty() || t.bytes().any(|b| b < b' ' || b == 0x7f) {
                    return Err(ConfigError::new(
                        kf("return.content_type"),
                        "must be a media type such as \"text/plain\"",
                    ));
                }
            }
            let content_type = match content_type {
                Some(t) => Some(t),
                None if !body.is_empty() => Some("text/plain; charset=utf-8".to_string()),
                None => None,
            };
            Ok(Some(Answer {
                status: status as u16,
                location: None,
                body,
                content_type,
            }))
        }
        (None, Some(r)) => {
            let (to, status) = match r {
                RawRedirect::To(to) => (to, None),
                RawRedirect::Full { to, status } => (to, status),
            };
            let status = status.unwrap_or(301);
            if ![301, 302, 303, 307, 308].contains(&status) {
                return Err(ConfigError::new(
                    kf("redirect.status"),
                    format!("{status} is not a redirect: write 301, 302, 303, 307 or 308"),
                ));
            }
            if to.is_empty() {
                return Err(ConfigError::new(kf("redirect"), "the target is empty"));
            }
            let location = Template::parse(&to).map_err(|m| ConfigError::new(kf("redirect"), m))?;
            Ok(Some(Answer {
                status: status as u16,
                location: Some(location),
                body: String::new(),
                content_type: None,
            }))
        }
    }
}

/// `hsts = true` (a year) or `hsts = { max_age = "180d", include_subdomains = true, preload = true }`.
#[derive(Debug, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub(super) enum RawHsts {
    On(bool),
    Full {
        max_age: Option<String>,
        #[serde(default)]
        include_subdomains: bool,
        #[serde(default)]
        preload: bool,
    },
}

/// The `Strict-Transport-Security` value, `None` when off.
pub(super) fn hsts(key: &str, raw: RawHsts) -> Result<Option<String>, ConfigError> {
    let (age, sub, preload) = match raw {
        RawHsts::On(false) => return Ok(None),
        RawHsts::On(true) => (Duration::from_secs(365 * 86_400), false, false),
        RawHsts::Full {
            max_age,
            include_subdomains,
            preload,
        } => {
            // Years are usual here: not the 30-day cap of timeouts.
            let k = format!("{key}.max_age");
            let age = match max_age {
                None => Duration::from_secs(365 * 86_400),
                Some(v) => parse_duration(&v).map_err(|m| ConfigError::new(&k, m))?,
            };
            if age.is_zero() {
                return Err(ConfigError::new(k, "must be greater than 0"));
            }
            (age, include_subdomains, preload)
        }
    };
    if preload && (!sub || age < Duration::from_secs(365 * 86_400)) {
        return Err(ConfigError::new(
            format!("{key}.preload"),
            "browsers' preload lists require include_subdomains = true and a max_age of at least a year",
        ));
    }
    let mut v = format!("max-age={}", age.as_secs());
    if sub {
        v.push_str("; includeSubDomains");
    }
    if preload {
        v.push_str("; preload");
    }
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(t: &str, target: &str) -> String {
        let mut out = Vec::new();
        Template::parse(t).unwrap().render(
            &Vars {
                https: false,
                host: "example.com",
                target: target.as_bytes(),
                path: b"",
                port: 8080,
                remote: "192.0.2.1".parse().unwrap(),
            },
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn templates_expand_the_request() {
        assert_eq!(
            expand("https://$host$request_uri", "/a/b?x=1"),
            "https://example.com/a/b?x=1"
        );
        assert_eq!(
            expand("$scheme://new.example$uri$is_args$args", "/p?q"),
            "http://new.example/p?q"
        );
        assert_eq!(expand("/x$is_args$args", "/p"), "/x");
        assert_eq!(expand("/x$is_args", "/p?a=b"), "/x?");
        assert_eq!(expand("$remote_addr:$server_port", "/"), "192.0.2.1:8080");
        assert_eq!(expand("no vars", "/"), "no vars");
        let e = Template::parse("https://$hostname/").unwrap_err();
        assert!(e.contains("$hostname is not a variable"), "{e}");
        assert!(Template::parse("/a\r\nSet-Cookie: x").is_err());
    }

    #[test]
    fn hsts_values() {
        assert_eq!(
            hsts("k", RawHsts::On(true)).unwrap().unwrap(),
            "max-age=31536000"
        );
        assert_eq!(hsts("k", RawHsts::On(false)).unwrap(), None);
        let v = hsts(
            "k",
            RawHsts::Full {
                max_age: Some("730d".into()),
                include_subdomains: true,
                preload: true,
            },
        );
        assert_eq!(
            v.unwrap().unwrap(),
            "max-age=63072000; includeSubDomains; preload"
        );
        assert!(hsts(
            "k",
            RawHsts::Full {
                max_age: Some("1d".into()),
                include_subdomains: false,
                preload: true
            }
        )
        .is_err());
    }
}
