// Invariant checks shared by the cargo-fuzz targets (tests/fuzz/fuzz_targets/,
// `include!("../checks.rs")`) and the stable smoke test
// (tests/it/fuzz_smoke.rs, `include!("../fuzz/checks.rs")`). Every check
// takes arbitrary bytes and panics when a parser breaks one of its
// promises. Plain comments only: the file is `include!`d inside a module.
//
// Only properties that hold by the parsers' design are checked:
// - request/response heads: a complete head lies inside the buffer, every
//   span it exposes lies inside the head, the framing agrees with the
//   fields; reparsing into a reused struct gives what a fresh one gives; and
//   heads arrive in pieces: a prefix that parses gives exactly what the
//   whole gives, and a prefix of a complete, accepted head is "incomplete",
//   never refused (the server reparses from the start after every read);
// - the chunked scanner: no step consumes more than it is given, a step
//   over non-empty input makes progress unless the body is done, data_total
//   is the sum of the data steps, and how the body is split into reads
//   changes nothing (same data, same end, same error);
// - PROXY headers: a parsed header lies inside the buffer, the v1/v2-only
//   modes agree with "any" (or name the wrong version), and a header read
//   in pieces gives the same result.

use std::fmt::Debug;

use ringlb::config::ProxyAccept;
use ringlb::proxy::http::h1::chunked::{ChunkError, Chunked};
use ringlb::proxy::http::h1::client::MAX_RESPONSE_HEAD;
use ringlb::proxy::http::h1::codec::{
    classify, parse_request, parse_response, Framing, Limits, Request, Response, Span,
    MAX_HEADERS_HARD,
};
use ringlb::proxy::proxy_protocol::{self, HeaderError, Parsed, MAX_HEADER};

// ---------------------------------------------------------------- helpers

// FNV-1a: a cut point that depends on the input, so the fuzzer steers it.
fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// Cut points to try as "the first read": both sides of the head's end
// when there is one, the middle, and one chosen by the input.
fn cuts(data: &[u8], head_len: Option<usize>) -> Vec<usize> {
    let mut v = vec![
        data.len() / 2,
        (hash(data) % (data.len() as u64 + 1)) as usize,
    ];
    if let Some(n) = head_len {
        v.push(n);
        v.push(n.saturating_sub(1));
    }
    v.retain(|&c| c < data.len());
    v.sort_unstable();
    v.dedup();
    v
}

fn span_in(what: &str, s: Span, head_len: usize, data: &[u8]) {
    assert!(
        s.start <= s.end && (s.end as usize) <= head_len,
        "{what} span {s:?} outside the head (head_len {head_len}) of {data:?}"
    );
}

fn same<T: Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

// ---------------------------------------------------------------- request

const REQUEST_LIMITS: [Limits; 2] = [
    // The config's defaults.
    Limits {
        max_request_line: 8 << 10,
        max_header_size: 32 << 10,
        max_headers: 100,
        underscores: ringlb::config::Underscores::Drop,
    },
    // The smallest the config allows, and few headers.
    Limits {
        max_request_line: 64,
        max_header_size: 256,
        max_headers: 5,
        underscores: ringlb::config::Underscores::Allow,
    },
];

// Parsed first into the reused Request, so stale fields would show.
const REQUEST_PRIMER: &[u8] = b"POST http://primer.example:81/p?q HTTP/1.1\r\n\
Connection: keep-alive, close, upgrade, x-hop\r\nUpgrade: websocket\r\n\
Expect: 100-continue\r\nX-Request-Id: primer-1\r\nTransfer-Encoding: Chunked\r\n\r\n";

fn check_request_head(data: &[u8], limits: &Limits, r: &Request) {
    let n = r.head_len;
    assert!(n > 0 && n <= data.len(), "head_len {n} of {data:?}");
    assert!(n <= limits.max_header_size, "head_len {n} over the limit");
    let line = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    assert!(
        line <= limits.max_request_line,
        "request line of {line} accepted"
    );
    assert!(!r.method.is_empty(), "empty method");
    span_in("method", r.method, n, data);
    span_in("path", r.path, n, data);
    if let Some(h) = r.host {
        span_in("host", h, n, data);
    }
    if let Some(u) = r.upgrade {
        span_in("upgrade", u, n, data);
    }
    if let Some(id) = r.request_id {
        span_in("request id", id, n, data);
    }
    assert_eq!(r.headers.len(), r.kinds.len());
    assert!(r.headers.len() <= limits.max_headers.min(MAX_HEADERS_HARD));
    for (&(name, value), &kind) in r.headers.iter().zip(&r.kinds) {
        span_in("header name", name, n, data);
        span_in("header value", value, n, data);
        assert!(!name.is_empty(), "empty header name");
        assert_eq!(classify(name.get(data)), kind, "kind of {name:?}");
    }
    for &t in &r.te {
        span_in("transfer-encoding", t, n, data);
    }
    for &t in &r.conn.nominated {
        span_in("connection token", t, n, data);
    }
    assert_eq!(r.is_head, r.method.get(data) == b"HEAD");
    if r.minor == 1 {
        assert!(r.host.is_some(), "HTTP/1.1 request without a host");
    }
    match r.framing {
        Framing::None => {
            assert!(r.te.is_empty() && matches!(r.content_length, None | Some(0)));
        }
        Framing::Length(len) => {
            assert!(len > 0 && r.te.is_empty() && r.content_length == Some(len));
        }
        Framing::Chunked => {
            assert!(!r.te.is_empty() && r.content_length.is_none() && r.minor == 1);
        }
        Framing::UntilClose => panic!("a request framed until close"),
    }
}

pub fn check_request(data: &[u8]) {
    for limits in &REQUEST_LIMITS {
        let mut fresh = Request::default();
        let whole = parse_request(data, limits, &mut fresh);
        if whole == Ok(true) {
            check_request_head(data, limits, &fresh);
        }

        let mut reused = Request::default();
        assert_eq!(parse_request(REQUEST_PRIMER, limits, &mut reused), Ok(true));
        assert_eq!(
            parse_request(data, limits, &mut reused),
            whole,
            "reused Request"
        );
        if whole == Ok(true) {
            assert!(
                same(&fresh, &reused),
                "reused Request differs:\n{fresh:?}\n{reused:?}"
            );
        }

        let head_len = (whole == Ok(true)).then_some(fresh.head_len);
        for cut in cuts(data, head_len) {
            let mut part = Request::default();
            let got = parse_request(&data[..cut], limits, &mut part);
            if got == Ok(true) {
                assert_eq!(whole, Ok(true), "prefix {cut} complete, whole {whole:?}");
                assert!(same(&fresh, &part), "prefix {cut} parsed differently");
            }
            if let Some(n) = head_len {
                if cut < n {
                    assert_eq!(got, Ok(false), "prefix {cut} of a complete head of {n}");
                } else {
                    assert_eq!(got, Ok(true), "prefix {cut} holds the whole head of {n}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------- chunked

#[derive(Debug, PartialEq, Eq)]
enum ChunkEnd {
    // Done after this many bytes.
    Done(usize),
    // All input consumed, body not finished.
    Incomplete,
    Failed(ChunkError),
}

// Feed `body` in reads of the sizes `pieces` yields; the data bytes seen and how it ended.
fn feed_chunked(body: &[u8], mut pieces: impl FnMut() -> usize) -> (Vec<u8>, ChunkEnd) {
    let mut c = Chunked::new();
    let mut data = Vec::new();
    let mut at = 0;
    while at < body.len() && !c.is_done() {
        let end = (at + pieces().max(1)).min(body.len());
        // What the caller does with a read: step until it is used up.
        while at < end && !c.is_done() {
            let input = &body[at..end];
            let before = c.data_total;
            let s = match c.step(input) {
                Ok(s) => s,
                Err(e) => return (data, ChunkEnd::Failed(e)),
            };
            assert!(
                s.len <= input.len(),
                "step of {} over {} bytes",
                s.len,
                input.len()
            );
            assert!(s.len > 0 || c.is_done(), "no progress over {input:?}");
            if s.data {
                data.extend_from_slice(&input[..s.len]);
                assert_eq!(c.data_total, before + s.len as u64, "data_total");
            } else {
                assert_eq!(c.data_total, before, "data_total moved on framing");
            }
            assert_eq!(c.data_total, data.len() as u64, "data_total");
            at += s.len;
        }
    }
    if !c.is_done() {
        assert_eq!(at, body.len());
        // An empty read changes nothing.
        let total = c.data_total;
        assert_eq!(c.step(&[]).map(|s| s.len), Ok(0), "step over nothing");
        assert!(!c.is_done() && c.data_total == total);
        return (data, ChunkEnd::Incomplete);
    }
    // Done stays done and consumes nothing more.
    let s = c.step(&body[at..]).expect("step after the end");
    assert!(
        s.len == 0 && !s.data && c.is_done(),
        "step after the end: {s:?}"
    );
    assert_eq!(c.data_total, data.len() as u64);
    (data, ChunkEnd::Done(at))
}

// Input: one control byte (its low 3 bits: how many piece sizes follow),
// those piece sizes (1..=256 bytes each, used in turn), then the body.
pub fn check_chunked(input: &[u8]) {
    let Some((&ctl, rest)) = input.split_first() else {
        return;
    };
    let k = usize::from(ctl & 7).min(rest.len());
    let (sizes, body) = rest.split_at(k);

    let whole = feed_chunked(body, || body.len());
    let bytewise = feed_chunked(body, || 1);
    assert_eq!(whole, bytewise, "one read vs byte by byte of {body:?}");
    if !sizes.is_empty() {
        let mut i = 0;
        let split = feed_chunked(body, || {
            i += 1;
            usize::from(sizes[(i - 1) % sizes.len()]) + 1
        });
        assert_eq!(whole, split, "one read vs reads of {sizes:?} of {body:?}");
    }
}

// ---------------------------------------------------------------- response

fn check_response_head(data: &[u8], head_request: bool, r: &Response) {
    let n = r.head_len;
    assert!(n > 0 && n <= data.len(), "head_len {n} of {data:?}");
    assert!((100..=599).contains(&r.status), "status {}", r.status);
    span_in("reason", r.reason, n, data);
    assert_eq!(r.headers.len(), r.kinds.len());
    assert!(r.headers.len() <= MAX_HEADERS_HARD);
    for (&(name, value), &kind) in r.headers.iter().zip(&r.kinds) {
        span_in("header name", name, n, data);
        span_in("header value", value, n, data);
        assert_eq!(classify(name.get(data)), kind, "kind of {name:?}");
    }
    for &t in &r.te {
        span_in("transfer-encoding", t, n, data);
    }
    for &t in &r.conn.nominated {
        span_in("connection token", t, n, data);
    }
    let bodiless = head_request || r.status < 200 || r.status == 204 || r.status == 304;
    match r.framing {
        Framing::None => {
            assert!(bodiless || (r.te.is_empty() && r.content_length == Some(0)));
        }
        Framing::Length(len) => {
            assert!(!bodiless && len > 0 && r.te.is_empty() && r.content_length == Some(len));
        }
        Framing::Chunked => {
            assert!(!bodiless && !r.te.is_empty() && r.content_length.is_none());
        }
        Framing::UntilClose => {
            assert!(!bodiless && r.content_length.is_none());
        }
    }
}

// Everything but the framing, which HEAD changes.
fn same_head(a: &Response, b: &Response) -> bool {
    a.head_len == b.head_len
        && a.status == b.status
        && a.reason == b.reason
        && a.minor == b.minor
        && a.headers == b.headers
        && a.kinds == b.kinds
        && a.content_length == b.content_length
        && a.te == b.te
        && same(&a.conn, &b.conn)
}

const RESPONSE_PRIMER: &[u8] = b"HTTP/1.1 200 Primed\r\nConnection: close, x-hop\r\n\
Transfer-Encoding: gzip, chunked\r\nX-A: b\r\n\r\n";

pub fn check_response(data: &[u8]) {
    let mut heads: Vec<Response> = Vec::new();
    for head_request in [false, true] {
        for max_size in [MAX_RESPONSE_HEAD, 256] {
            let mut fresh = Response::default();
            let whole = parse_response(data, max_size, head_request, &mut fresh);
            if whole == Ok(true) {
                check_response_head(data, head_request, &fresh);
            }

            let mut reused = Response::default();
            assert_eq!(
                parse_response(RESPONSE_PRIMER, max_size, false, &mut reused),
                Ok(true)
            );
            let again = parse_response(data, max_size, head_request, &mut reused);
            assert_eq!(again, whole, "reused Response");
            if whole == Ok(true) {
                assert!(
                    same(&fresh, &reused),
                    "reused Response differs:\n{fresh:?}\n{reused:?}"
                );
            }

            let head_len = (whole == Ok(true)).then_some(fresh.head_len);
            for cut in cuts(data, head_len) {
                let mut part = Response::default();
                let got = parse_response(&data[..cut], max_size, head_request, &mut part);
                if got == Ok(true) {
                    assert_eq!(whole, Ok(true), "prefix {cut} complete, whole {whole:?}");
                    assert!(same(&fresh, &part), "prefix {cut} parsed differently");
                }
                if let Some(n) = head_len {
                    // A prefix as long as the limit is refused as too large.
                    if cut >= n {
                        assert_eq!(got, Ok(true), "prefix {cut} holds the whole head of {n}");
                    } else if cut < max_size {
                        assert_eq!(got, Ok(false), "prefix {cut} of a complete head of {n}");
                    }
                }
            }
            if whole == Ok(true) {
                heads.push(fresh);
            }
        }
    }
    // A HEAD request changes the framing only.
    for pair in heads.windows(2) {
        assert!(
            same_head(&pair[0], &pair[1]),
            "{:?}\n{:?}",
            pair[0],
            pair[1]
        );
    }
}

// ---------------------------------------------------------------- PROXY

fn check_parsed(data: &[u8], r: &Result<Option<Parsed>, HeaderError>) {
    if let Ok(Some(p)) = r {
        assert!(
            p.len > 0 && p.len <= data.len(),
            "len {} of {data:?}",
            p.len
        );
    }
}

// Known finding 1 (issue 10's fuzzing; regression tests in
// tests/it/fuzz_smoke.rs, ignored until src/ is fixed): the v1 reader waits
// for an LF before it calls ppp, but ppp 2.3 cuts a v1 line at the first CR
// (plus two bytes), or takes the whole buffer when there is no CR. So a
// buffer with an LF and no complete "CR + one byte" yet is judged early: a
// line ending in " \n" without CR is accepted, and an UNKNOWN line with an
// LF before its CRLF is refused, while the same bytes with more after them
// in the same read give the other answer. The fuzz target and the smoke
// test's mutations skip the read-in-pieces comparison for such a prefix, so
// the search goes on past it; the strict check does not (the finding is fixed; both run strict now),
// and also refuses a v1 header that does not end in CRLF.
fn judged_early(buf: &[u8]) -> bool {
    let n = buf.len().min(6);
    let cut_at = buf.iter().position(|&b| b == b'\r').map(|cr| cr + 2);
    buf[..n] == b"PROXY "[..n]
        && buf.contains(&b'\n')
        && !matches!(cut_at, Some(end) if end <= buf.len())
}

fn v1_without_crlf(buf: &[u8], r: &Result<Option<Parsed>, HeaderError>) -> bool {
    matches!(r, Ok(Some(p)) if buf.starts_with(b"PROXY") && !buf[..p.len].ends_with(b"\r\n"))
}

/// Strict since the finding is fixed (src/proxy/proxy_protocol.rs now
/// requires CRLF at the first CR or LF); `check_proxy_protocol_tolerant`
/// keeps the old tolerance for comparison runs.
pub fn check_proxy_protocol(data: &[u8]) {
    proxy_protocol_checks(data, true);
}

#[allow(dead_code)]
pub fn check_proxy_protocol_tolerant(data: &[u8]) {
    proxy_protocol_checks(data, false);
}

/// Without tolerating the known finding.
pub fn check_proxy_protocol_strict(data: &[u8]) {
    proxy_protocol_checks(data, true);
}

fn proxy_protocol_checks(data: &[u8], strict: bool) {
    let any = proxy_protocol::parse(data, ProxyAccept::Any);
    check_parsed(data, &any);
    if strict {
        assert!(
            !v1_without_crlf(data, &any),
            "v1 header without CRLF accepted: {any:?}"
        );
    }
    check_parsed(data, &proxy_protocol::parse(data, ProxyAccept::Off));
    let v1 = proxy_protocol::parse(data, ProxyAccept::V1);
    let v2 = proxy_protocol::parse(data, ProxyAccept::V2);
    check_parsed(data, &v1);
    check_parsed(data, &v2);
    let wrong =
        |r: &Result<Option<Parsed>, HeaderError>| matches!(r, Err(HeaderError::WrongVersion(..)));
    if let Ok(Some(_)) = any {
        // Exactly one version-only mode accepts it; the other names the version.
        assert!(
            (v1 == any && wrong(&v2)) || (v2 == any && wrong(&v1)),
            "any {any:?}, v1 {v1:?}, v2 {v2:?}"
        );
    } else {
        assert!(v1 == any && v2 == any, "any {any:?}, v1 {v1:?}, v2 {v2:?}");
    }

    // Read in pieces (the reader's buffer holds MAX_HEADER bytes at most).
    if data.len() > MAX_HEADER {
        return;
    }
    let header_len = match &any {
        Ok(Some(p)) => Some(p.len),
        _ => None,
    };
    // Every cut of a short input (parsing is cheap, and the result then does
    // not hang on a hashed cut point, so minimizing works).
    let cuts = if data.len() <= 256 {
        (0..data.len()).collect()
    } else {
        cuts(data, header_len)
    };
    for cut in cuts {
        let got = proxy_protocol::parse(&data[..cut], ProxyAccept::Any);
        if !strict && judged_early(&data[..cut]) {
            continue;
        }
        if let Ok(Some(p)) = got {
            assert_eq!(Ok(Some(p)), any, "prefix {cut} parsed, the whole did not");
        }
        if let Some(n) = header_len {
            if cut < n {
                assert_eq!(got, Ok(None), "prefix {cut} of a complete header of {n}");
            } else {
                assert_eq!(got, any, "prefix {cut} holds the whole header of {n}");
            }
        }
    }
}
