//! Path normalization before routing: the form that routes, rate limits
//! and header rules see is the form the backend gets, so a path cannot
//! match one route here and mean another thing there.
//!
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!   decoded (`/ap%69` is `/api`);
//! - runs of `/` are merged (`//api//x` is `/api/x`);
//! - strict (the default): an encoded `/` or `\` (`%2F`, `%5C`), a raw `\`
//!   and `;` path parameters are refused, since backends disagree on what
//!   they mean (a segment separator or not).
//!
//! The query string is left as it is. Dot segments were refused by the
//! codec; decoding cannot create one, since `%2E` counts as a dot there.

/// Why a path was refused (400).
pub type PathError = &'static str;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalize `target` (path and query) into `out`. Returns false, with
/// `out` untouched, when the path is already normal (the common case: no
/// copy).
///
/// # Errors
/// In `strict` mode: an encoded or raw backslash, an encoded slash, a `;`.
pub fn normalize(target: &[u8], out: &mut Vec<u8>, strict: bool) -> Result<bool, PathError> {
    let split = target
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(target.len());
    let (path, query) = target.split_at(split);
    let mut changed = false;
    let mut i = 0;
    while i < path.len() {
        match path[i] {
            b'\\' if strict => return Err("backslash in the path"),
            b';' if strict => return Err("path parameters (;) in the path"),
            b'/' if path.get(i + 1) == Some(&b'/') => changed = true,
            b'%' => {
                let v = match (
                    path.get(i + 1).and_then(|&b| hex(b)),
                    path.get(i + 2).and_then(|&b| hex(b)),
                ) {
                    (Some(h), Some(l)) => h * 16 + l,
                    _ => return Err("bad percent-encoding in the path"),
                };
                if strict && (v == b'/' || v == b'\\') {
                    return Err("encoded slash or backslash in the path");
                }
                if unreserved(v) {
                    changed = true;
                }
                i += 2;
            }
            _ => {}
        }
        i += 1;
    }
    if !changed {
        return Ok(false);
    }
    out.clear();
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'/' && out.last() == Some(&b'/') {
            i += 1;
            continue;
        }
        if b == b'%' {
            // Checked above: two hex digits follow.
            let v = hex(path[i + 1]).unwrap_or(0) * 16 + hex(path[i + 2]).unwrap_or(0);
            if unreserved(v) {
                out.push(v);
            } else {
                out.extend_from_slice(&path[i..i + 3]);
            }
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    out.extend_from_slice(query);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str, strict: bool) -> Result<String, PathError> {
        let mut out = Vec::new();
        Ok(if normalize(p.as_bytes(), &mut out, strict)? {
            String::from_utf8(out).unwrap()
        } else {
            p.to_string()
        })
    }

    #[test]
    fn decodes_unreserved_and_merges_slashes() {
        assert_eq!(norm("/ap%69/x", true).unwrap(), "/api/x");
        assert_eq!(norm("//api//x///y", true).unwrap(), "/api/x/y");
        assert_eq!(norm("/a%7Eb%2d", true).unwrap(), "/a~b-");
        // Reserved characters stay encoded; the query is left alone.
        assert_eq!(norm("/a%20b?x=%69//", true).unwrap(), "/a%20b?x=%69//");
        assert_eq!(norm("/plain/path?q=1", true).unwrap(), "/plain/path?q=1");
    }

    #[test]
    fn strict_refuses_what_backends_read_differently() {
        for p in [
            "/a%2Fb",
            "/a%2fb",
            "/a%5Cb",
            "/a\\b",
            "/a;jsessionid=1/b",
            "/a%zz",
            "/a%2",
        ] {
            assert!(norm(p, true).is_err(), "{p}");
        }
        assert_eq!(norm("/a%2Fb", false).unwrap(), "/a%2Fb");
        assert_eq!(norm("/a;b", false).unwrap(), "/a;b");
        assert!(norm("/a%zz", false).is_err(), "malformed either way");
    }
}
