use super::*;

const LIMITS: Limits = Limits {
    max_request_line: 64,
    max_header_size: 512,
    max_headers: 8,
    underscores: crate::config::Underscores::Drop,
};

fn req(raw: &[u8]) -> Result<Request, HttpError> {
    let mut r = Request::default();
    match parse_request(raw, &LIMITS, &mut r)? {
        true => Ok(r),
        false => panic!("incomplete: {:?}", String::from_utf8_lossy(raw)),
    }
}

fn bad(raw: &str) {
    match req(raw.as_bytes()) {
        Err(HttpError::Bad(_)) => {}
        other => panic!("{raw:?} gave {other:?}, want 400"),
    }
}

#[test]
fn framing_of_valid_requests() {
    let r = req(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(r.framing, Framing::None);
    assert!(r.idempotent && !r.is_head);
    let r = req(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n").unwrap();
    assert_eq!(r.framing, Framing::Length(12));
    let r =
        req(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n")
            .unwrap();
    assert_eq!(r.framing, Framing::Length(7));
    let r = req(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
    assert_eq!(r.framing, Framing::Chunked);
    let r = req(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(r.minor, 0);
    assert!(r.host.is_none());
}

#[test]
fn smuggling_shapes_are_refused() {
    bad("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
    bad("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n");
    bad("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
    bad("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n");
    bad("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n");
    bad("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n");
    bad("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n");
    bad("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n");
    bad("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n");
    bad("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n");
    // Codings other than chunked: 501, as nginx (never forwarded).
    for te in [
        "chunked, gzip",
        "gzip",
        "xchunked",
        "gzip, chunked",
        "gzip\r\nTransfer-Encoding: chunked",
    ] {
        let raw = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n");
        assert_eq!(
            req(raw.as_bytes()).err(),
            Some(HttpError::NotImplemented),
            "{te}"
        );
    }
    bad("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x=1\r\n\r\n");
    bad("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked\r\n\r\n");
    bad("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip,,chunked\r\n\r\n");
    bad("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
    // Field syntax (httparse).
    bad("GET / HTTP/1.1\r\nHost : a\r\n\r\n");
    bad("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n");
    bad("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n");
    bad("GET / HTTP/1.1\r\nHost: a\r\n\tX: b\r\n\r\n");
    bad("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n");
    bad("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n");
    bad("GET / HTTP/1.1\r\nHost: a\r\nX\0: b\r\n\r\n");
    bad("GET / HTTP/1.1\r\nHo(st: a\r\n\r\n");
    bad("G@T / HTTP/1.1\r\nHost: a\r\n\r\n");
    bad("GET / HTTP/2.0\r\nHost: a\r\n\r\n");
    bad("GET / HTTP/1.2\r\nHost: a\r\n\r\n");
    bad("GET / HTTPS/1.1\r\nHost: a\r\n\r\n");
    bad("GET  / HTTP/1.1\r\nHost: a\r\n\r\n");
    bad("GET / HTTP/1.1\rHost: a\r\n\r\n");
    // Host.
    bad("GET / HTTP/1.1\r\n\r\n");
    bad("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    bad("GET / HTTP/1.1\r\nHost: a b\r\n\r\n");
    bad("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n");
    // Targets.
    bad("GET x HTTP/1.1\r\nHost: a\r\n\r\n");
    bad("GET * HTTP/1.1\r\nHost: a\r\n\r\n");
    bad("GET https://a/ HTTP/1.1\r\nHost: a\r\n\r\n");
    bad("GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n");
    // Dot segments, plain or encoded (route bypass).
    bad("GET /api/../admin HTTP/1.1\r\nHost: a\r\n\r\n");
    bad("GET /api/%2e%2E/admin HTTP/1.1\r\nHost: a\r\n\r\n");
    bad("GET /api/.%2e HTTP/1.1\r\nHost: a\r\n\r\n");
    bad("GET /./x HTTP/1.1\r\nHost: a\r\n\r\n");
    bad("GET http://a/api/.. HTTP/1.1\r\nHost: a\r\n\r\n");
}

#[test]
fn dots_that_are_not_segments_pass() {
    for p in [
        "/a.b",
        "/...",
        "/.well-known/x",
        "/a/b..c",
        "/x?next=../y",
        "/%2e%2e%2e",
    ] {
        let raw = format!("GET {p} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(req(raw.as_bytes()).is_ok(), "{p}");
    }
}

#[test]
fn limits_have_their_status() {
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "x".repeat(80));
    assert_eq!(req(long.as_bytes()).err(), Some(HttpError::UriTooLong));
    // Still arriving, already too long.
    let mut r = Request::default();
    let partial = format!("GET /{}", "x".repeat(80));
    assert_eq!(
        parse_request(partial.as_bytes(), &LIMITS, &mut r).err(),
        Some(HttpError::UriTooLong)
    );
    let many: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
    let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    assert_eq!(req(raw.as_bytes()).err(), Some(HttpError::HeadersTooLarge));
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "v".repeat(600)
    );
    assert_eq!(req(big.as_bytes()).err(), Some(HttpError::HeadersTooLarge));
    let partial = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "v".repeat(600));
    assert_eq!(
        parse_request(partial.as_bytes(), &LIMITS, &mut r).err(),
        Some(HttpError::HeadersTooLarge)
    );
    assert_eq!(
        req(b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n").err(),
        Some(HttpError::MethodNotAllowed)
    );
}

#[test]
fn incomplete_heads_ask_for_more() {
    let mut r = Request::default();
    for raw in [
        &b"GET / HT"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r",
    ] {
        assert_eq!(parse_request(raw, &LIMITS, &mut r), Ok(false), "{raw:?}");
    }
}

#[test]
fn connection_upgrade_expect_and_ids() {
    let raw = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade, X-Foo\r\nUpgrade: websocket\r\nExpect: 100-continue\r\nX-Request-Id: abc-123\r\n\r\n";
    let r = req(raw).unwrap();
    assert!(r.conn.upgrade && r.conn.keep_alive && !r.conn.close);
    assert_eq!(r.conn.nominated.len(), 1);
    assert_eq!(r.conn.nominated[0].get(raw), b"X-Foo");
    assert_eq!(r.upgrade.map(|u| u.get(raw)), Some(&b"websocket"[..]));
    assert!(r.expect_continue);
    assert_eq!(r.request_id.map(|u| u.get(raw)), Some(&b"abc-123"[..]));
    let r = req(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: bad id!\r\n\r\n").unwrap();
    assert!(r.request_id.is_none());
}

#[test]
fn absolute_form_and_host_key() {
    let raw = b"GET http://Example.COM:80/p?q HTTP/1.1\r\nHost: other\r\n\r\n";
    let r = req(raw).unwrap();
    assert!(r.absolute);
    assert_eq!(r.path.get(raw), b"/p?q");
    let mut k = String::new();
    host_key(r.host.unwrap().get(raw), &mut k);
    assert_eq!(k, "example.com");
    host_key(b"[::1]:8080", &mut k);
    assert_eq!(k, "[::1]");
    host_key(b"a.b.", &mut k);
    assert_eq!(k, "a.b");
}

fn resp(raw: &[u8], head: bool) -> Result<Response, &'static str> {
    let mut r = Response::default();
    assert!(parse_response(raw, 4096, head, &mut r)?);
    Ok(r)
}

#[test]
fn response_framing() {
    let r = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false).unwrap();
    assert_eq!(r.framing, Framing::Length(5));
    let r = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).unwrap();
    assert_eq!(r.framing, Framing::None);
    assert_eq!(r.content_length, Some(5));
    for s in [
        b"204 No Content".as_slice(),
        b"304 Not Modified",
        b"103 Early Hints",
        b"101 Switching",
    ] {
        let raw = [b"HTTP/1.1 ".as_slice(), s, b"\r\nContent-Length: 5\r\n\r\n"].concat();
        assert_eq!(resp(&raw, false).unwrap().framing, Framing::None);
    }
    let r = resp(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(r.framing, Framing::Chunked);
    let r = resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false).unwrap();
    assert_eq!(r.framing, Framing::UntilClose);
    let r = resp(b"HTTP/1.0 200 OK\r\n\r\n", false).unwrap();
    assert_eq!(r.framing, Framing::UntilClose);
    let r = resp(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        false,
    )
    .unwrap();
    assert!(r.conn.close);
    assert_eq!(r.framing, Framing::None);
}

#[test]
fn reason_phrase_missing_or_not_ascii() {
    // httparse hands back a static "" for these: the span must stay inside the buffer.
    for raw in [
        &b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"[..],
        b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 404 N\u{e3}o encontrado\r\nContent-Length: 0\r\n\r\n".as_bytes(),
    ] {
        let r = resp(raw, false).unwrap();
        assert_eq!(
            r.status,
            raw[9..12]
                .iter()
                .fold(0u16, |a, &d| a * 10 + u16::from(d - b'0'))
        );
        let _ = r.reason.get(raw);
        assert!(r.reason.range().end <= raw.len());
    }
}

#[test]
fn bad_responses_are_refused() {
    for raw in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 099 X\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
    ] {
        assert!(
            resp(raw, false).is_err(),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn classify_is_case_insensitive() {
    assert_eq!(classify(b"content-LENGTH"), Kind::ContentLength);
    assert_eq!(classify(b"Proxy-Authorization"), Kind::Hop);
    assert_eq!(classify(b"X-Forwarded-For"), Kind::XForwardedFor);
    assert_eq!(classify(b"Accept"), Kind::Plain);
    assert_eq!(classify(b"proxy"), Kind::Plain);
}

#[test]
fn absolute_form_authority_is_checked_like_host() {
    for target in [
        "http://x#.good.com/",
        "http://a b/",
        "http://user@a/",
        "http:///x",
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
        match req(raw.as_bytes()) {
            Err(HttpError::Bad(_)) => {}
            other => panic!("{target} gave {other:?}"),
        }
    }
    let r = req(b"GET http://api.good.com:8080/x HTTP/1.1\r\nHost: other\r\n\r\n").unwrap();
    assert!(r.absolute);
}

#[test]
fn header_names_with_underscores_are_dropped_refused_or_kept() {
    use crate::config::Underscores;
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\nX-Ok: 1\r\nX_Client_Verify: SUCCESS\r\nX_Custom: c\r\nX_Real_IP: 6.6.6.6\r\n\r\n";
    let names = |u: Underscores| {
        let mut r = Request::default();
        let limits = Limits {
            underscores: u,
            ..LIMITS
        };
        parse_request(raw, &limits, &mut r).map(|_| {
            r.headers
                .iter()
                .map(|(n, _)| String::from_utf8_lossy(n.get(raw)).into_owned())
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(names(Underscores::Drop).unwrap(), ["Host", "X-Ok"]);
    // Allowed, except as spellings of fields ringlb writes itself.
    assert_eq!(
        names(Underscores::Allow).unwrap(),
        ["Host", "X-Ok", "X_Custom"]
    );
    assert!(matches!(names(Underscores::Refuse), Err(HttpError::Bad(_))));
}

#[test]
fn a_head_sent_a_byte_at_a_time_is_parsed_a_logarithmic_number_of_times() {
    let mut head = b"GET /x HTTP/1.1\r\nHost: a\r\n".to_vec();
    while head.len() < 8000 {
        head.extend_from_slice(b"X-Filler: abcdefghijklmnopqrstuvwxyz\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let mut scan = HeadScan::default();
    let mut r = Request::default();
    let mut parses = 0;
    let mut done = false;
    for n in 1..=head.len() {
        let data = &head[..n];
        if scan.should_parse(data) {
            parses += 1;
            let limits = Limits {
                max_header_size: 64 * 1024,
                max_headers: 256,
                ..LIMITS
            };
            match parse_request(data, &limits, &mut r) {
                Ok(true) => {
                    done = true;
                    assert_eq!(n, head.len(), "complete only at the end");
                }
                Ok(false) => scan.parsed(n),
                Err(e) => panic!("{e:?} at {n}"),
            }
        }
    }
    assert!(done, "never complete");
    // Once per doubling (about 13 for 8 KB), plus the end: not once per byte.
    assert!(
        parses <= 16,
        "{parses} full parses for {} bytes",
        head.len()
    );
}
