//! Field-value grammar shared by the request and response parsers:
//! Content-Length and Transfer-Encoding values, Connection tokens, Host,
//! request ids, and the small token helpers (RFC 9110 / 9112); and the
//! types both parsers hand out: spans, connection facts, head errors.

use std::ops::Range;

/// A byte range of the buffer the head was parsed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The span of `part` inside `buf`; empty when `part` is not a slice of
    /// `buf` (httparse returns a static `""` for a missing or non-ASCII
    /// reason phrase, which points elsewhere).
    pub(super) fn of(buf: &[u8], part: &[u8]) -> Span {
        let base = buf.as_ptr() as usize;
        let at = part.as_ptr() as usize;
        match at.checked_sub(base) {
            Some(start) if start + part.len() <= buf.len() && !part.is_empty() => Span {
                start: start as u32,
                end: (start + part.len()) as u32,
            },
            _ => Span::default(),
        }
    }

    #[inline]
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.range()]
    }

    #[inline]
    pub fn range(&self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// Why a head was refused; [`super::respond`] maps it to a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// 400, with the reason for the log.
    Bad(&'static str),
    /// 414: the request line is longer than allowed.
    UriTooLong,
    /// 431: header section too large or too many fields.
    HeadersTooLarge,
    /// 405: a method a reverse proxy does not serve (CONNECT).
    MethodNotAllowed,
    /// 501: a transfer coding other than `chunked` (as nginx).
    NotImplemented,
}

/// Connection-level facts gathered from a head.
#[derive(Debug, Default, Clone)]
pub struct ConnInfo {
    /// `Connection: close`.
    pub close: bool,
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Connection: upgrade`.
    pub upgrade: bool,
    /// Other tokens of `Connection`: header names to drop (hop-by-hop).
    pub nominated: Vec<Span>,
}

/// 1*DIGIT, or a list of identical 1*DIGIT values ("5, 5"), RFC 9110 8.6.
pub(super) fn parse_content_length(v: &[u8]) -> Option<u64> {
    let mut out = None;
    for part in v.split(|&b| b == b',') {
        let part = trim(part);
        if part.is_empty() || part.len() > 18 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part
            .iter()
            .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
        if out.is_some_and(|o| o != n) {
            return None;
        }
        out = Some(n);
    }
    out
}

/// True when the list of codings ends with exactly one `chunked`, last.
/// How many codings the Transfer-Encoding fields list (the syntax was
/// checked by [`te_ends_chunked`] first).
pub(super) fn te_codings(buf: &[u8], values: &[Span]) -> Result<usize, HttpError> {
    Ok(values
        .iter()
        .map(|v| v.get(buf).split(|&b| b == b',').count())
        .sum())
}

pub(super) fn te_ends_chunked(buf: &[u8], values: &[Span]) -> Result<bool, HttpError> {
    let mut codings = 0;
    let mut chunked_at = None;
    for v in values {
        for coding in v.get(buf).split(|&b| b == b',') {
            let coding = trim(coding);
            if coding.is_empty() {
                return Err(HttpError::Bad("empty Transfer-Encoding item"));
            }
            // Exactly a token: no parameters, no empty items, nothing another
            // parser might read differently.
            let name = coding;
            if !name.iter().all(|&b| is_tchar(b)) || name.is_empty() {
                return Err(HttpError::Bad("bad Transfer-Encoding"));
            }
            if name.eq_ignore_ascii_case(b"chunked") {
                if chunked_at.is_some() {
                    return Err(HttpError::Bad("chunked applied twice"));
                }
                chunked_at = Some(codings);
            }
            codings += 1;
        }
    }
    if codings == 0 {
        return Err(HttpError::Bad("empty Transfer-Encoding"));
    }
    Ok(chunked_at == Some(codings - 1))
}

pub(super) fn scan_connection(buf: &[u8], value: &[u8], conn: &mut ConnInfo) {
    for tok in value.split(|&b| b == b',') {
        let tok = trim(tok);
        if tok.is_empty() {
            continue;
        }
        if tok.eq_ignore_ascii_case(b"close") {
            conn.close = true;
        } else if tok.eq_ignore_ascii_case(b"keep-alive") {
            conn.keep_alive = true;
        } else if tok.eq_ignore_ascii_case(b"upgrade") {
            conn.upgrade = true;
        } else {
            conn.nominated.push(Span::of(buf, tok));
        }
    }
}

pub fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[inline]
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// host [":" port], or an IPv6 literal in brackets.
pub fn valid_host(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 255
        && v.iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

/// An X-Request-Id kept from the client: 1..=128 of `[A-Za-z0-9._:-]`.
pub fn valid_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The host part of a Host value, lower-cased into `out` (port and IPv6
/// brackets handled).
pub fn host_key(v: &[u8], out: &mut String) {
    out.clear();
    let host = if v.first() == Some(&b'[') {
        match v.iter().position(|&b| b == b']') {
            Some(p) => &v[..=p],
            None => v,
        }
    } else {
        match v.iter().rposition(|&b| b == b':') {
            Some(p) => &v[..p],
            None => v,
        }
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    out.extend(host.iter().map(|&b| char::from(b.to_ascii_lowercase())));
}

/// True when a segment of the path (before any query) is `.` or `..`,
/// written plainly or percent-encoded.
pub fn has_dot_segment(path: &[u8]) -> bool {
    let path = path.split(|&b| b == b'?').next().unwrap_or(path);
    path.split(|&b| b == b'/').any(|seg| {
        let mut dots = 0;
        let mut i = 0;
        while i < seg.len() {
            if seg[i] == b'.' {
                i += 1;
            } else if seg.len() >= i + 3
                && seg[i] == b'%'
                && seg[i + 1] == b'2'
                && seg[i + 2].eq_ignore_ascii_case(&b'e')
            {
                i += 3;
            } else {
                return false;
            }
            dots += 1;
        }
        (1..=2).contains(&dots)
    })
}

/// True when `list` (a comma-separated field value) contains `token`.
pub fn list_has(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}
