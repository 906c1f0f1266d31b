//! Sticky sessions on the wire: the token a request's `Cookie` fields
//! carry for an upstream's sticky cookie, and the `Set-Cookie` (with
//! `Cache-Control: private`, so no shared cache hands one client's cookie
//! to everyone) on a response from a backend the request did not name.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderValue};

use crate::config::StickyConfig;

/// The token of cookie `name` among `values` (each a `Cookie` field):
/// the first value of 16 hex digits, else `None` (absent, or none of them
/// ours: a stale or foreign cookie of the same name, as another
/// application on the host may set, does not hide ours).
pub(super) fn token<'a>(values: impl Iterator<Item = &'a [u8]>, name: &str) -> Option<u64> {
    for v in values {
        for pair in v.split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if &pair[..eq] != name.as_bytes() {
                continue;
            }
            let val = pair[eq + 1..].trim_ascii();
            let val = val
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(val);
            if val.len() != 16 || !val.iter().all(u8::is_ascii_hexdigit) {
                continue;
            }
            return std::str::from_utf8(val)
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok());
        }
    }
    None
}

/// The `Set-Cookie` value naming `token`: host-only, for every path,
/// HttpOnly; Secure when the client came over TLS.
fn set_cookie(cfg: &StickyConfig, token: u64, https: bool) -> String {
    let mut v = format!("{}={token:016x}; Path=/; HttpOnly", cfg.cookie);
    if let Some(age) = cfg.max_age {
        let _ = write!(v, "; Max-Age={}", age.as_secs());
    }
    if https {
        v.push_str("; Secure");
    }
    v
}

/// Whether the `Cache-Control` values keep shared caches away already.
fn private<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> bool {
    values.any(|v| {
        v.split(|&b| b == b',').any(|d| {
            let d = d.trim_ascii();
            let name = d.split(|&b| b == b'=').next().unwrap_or(d);
            name.eq_ignore_ascii_case(b"private") || name.eq_ignore_ascii_case(b"no-store")
        })
    })
}

/// The values of field `name` in a head as written (`name: value` lines).
fn written<'a>(head: &'a [u8], name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    head.split(|&b| b == b'\n').filter_map(move |line| {
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name)
            .then(|| line[colon + 1..].trim_ascii())
    })
}

/// Add the cookie to an HTTP/1.1 response head that ends in its blank
/// line, with `Cache-Control: private` unless the head (the backend's
/// fields after the route's rules) keeps shared caches away already.
pub(super) fn add_h1(head: &mut Vec<u8>, cfg: &StickyConfig, token: u64, https: bool) {
    if !head.ends_with(b"\r\n\r\n") {
        return;
    }
    let cached = private(written(head, b"cache-control"));
    head.truncate(head.len() - 2);
    head.extend_from_slice(b"Set-Cookie: ");
    head.extend_from_slice(set_cookie(cfg, token, https).as_bytes());
    head.extend_from_slice(b"\r\n");
    if !cached {
        head.extend_from_slice(b"Cache-Control: private\r\n");
    }
    head.extend_from_slice(b"\r\n");
}

/// Add the cookie to an HTTP/2 response's fields.
pub(super) fn add_h2(h: &mut HeaderMap, cfg: &StickyConfig, token: u64, https: bool) {
    let cached = private(
        h.get_all(http::header::CACHE_CONTROL)
            .iter()
            .map(|v| v.as_bytes()),
    );
    if let Ok(v) = HeaderValue::from_str(&set_cookie(cfg, token, https)) {
        h.append(http::header::SET_COOKIE, v);
    }
    if !cached {
        h.append(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("private"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_found_among_other_cookies() {
        let t = |v: &[&str]| token(v.iter().map(|s| s.as_bytes()), "srv");
        assert_eq!(t(&["a=1; srv=00000000000000ff; b=2"]), Some(255));
        assert_eq!(t(&["a=1", "srv=\"00000000000000fF\""]), Some(255));
        assert_eq!(t(&["xsrv=00000000000000ff"]), None);
        assert_eq!(t(&["srv=ff"]), None, "not 16 digits");
        assert_eq!(t(&["srv=zz000000000000ff"]), None);
        assert_eq!(
            t(&["srv=stale; srv=00000000000000ff"]),
            Some(255),
            "a foreign value of the name does not hide ours"
        );
        assert_eq!(t(&["srv=+00000000000000f"]), None, "hex digits only");
        assert_eq!(t(&[]), None);
    }

    #[test]
    fn the_cookie_goes_in_before_the_blank_line() {
        let cfg = StickyConfig {
            cookie: "srv".into(),
            max_age: Some(std::time::Duration::from_secs(60)),
        };
        let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec();
        add_h1(&mut head, &cfg, 0xab, true);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nSet-Cookie: srv=00000000000000ab; Path=/; HttpOnly; Max-Age=60; Secure\r\nCache-Control: private\r\n\r\n"
        );
        let mut head = b"HTTP/1.1 200 OK\r\ncache-control: max-age=5, no-store\r\n\r\n".to_vec();
        add_h1(&mut head, &cfg, 1, false);
        assert!(!String::from_utf8(head).unwrap().contains("Cache-Control"));
    }
}
