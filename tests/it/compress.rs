//! Route `compress`: gzip and brotli by Accept-Encoding and type, streamed
//! (a chunk the backend sends reaches the client before the backend goes
//! on), never for small, already-encoded or no-transform bodies, always
//! with `Vary: Accept-Encoding` where it applies. Decoded with flate2 and
//! brotli, and with curl --compressed.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    sync::{mpsc, Mutex},
    time::Duration,
};

use crate::common::{backends::Server, cfg::Cfg, http::*, *};

fn page() -> Vec<u8> {
    let mut s = String::new();
    for i in 0..400 {
        s.push_str(&format!(
            "<li>item {i}: the quick brown fox jumps over the lazy dog</li>\n"
        ));
    }
    s.into_bytes()
}

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => flate2::read::GzDecoder::new(body).read_to_end(&mut out),
        "br" => brotli::Decompressor::new(body, 4096).read_to_end(&mut out),
        o => panic!("coding {o}"),
    }
    .expect("a valid compressed body");
    out
}

/// A backend whose answer depends on the path: `/chunked`, `/small`,
/// `/png`, `/encoded`, `/no-transform`, `/etag`, else a Content-Length page.
fn backend() -> HttpBackend {
    HttpBackend::with(|r| {
        let page = page();
        let html = ("Content-Type", "text/html; charset=utf-8");
        match r.target.as_str() {
            "/z/chunked" => {
                let mut raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for part in page.chunks(1000) {
                    raw.extend(format!("{:x}\r\n", part.len()).as_bytes());
                    raw.extend(part);
                    raw.extend(b"\r\n");
                }
                raw.extend(b"0\r\n\r\n");
                Reply::raw(raw)
            }
            "/z/small" => Reply::new(r, 200, &[html], b"<p>tiny</p>"),
            "/z/png" => Reply::new(r, 200, &[("Content-Type", "image/png")], &page),
            "/z/encoded" => Reply::new(r, 200, &[html, ("Content-Encoding", "gzip")], &page),
            "/z/no-transform" => {
                Reply::new(r, 200, &[html, ("Cache-Control", "no-transform")], &page)
            }
            "/z/etag" if r.header("if-none-match").is_some() => {
                Reply::raw(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n".to_vec())
            }
            "/z/etag" => Reply::new(r, 200, &[html, ("ETag", "\"v1\"")], &page),
            "/z/identity" => Reply::new(r, 200, &[html, ("Content-Encoding", "identity")], &page),
            "/z/gzip-te" => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&page).expect("gzip");
                let gz = gz.finish().expect("gzip");
                let mut raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec();
                raw.extend(format!("{:x}\r\n", gz.len()).as_bytes());
                raw.extend(&gz);
                raw.extend(b"\r\n0\r\n\r\n");
                Reply::raw(raw)
            }
            _ => Reply::new(r, 200, &[html], &page),
        }
    })
}

fn start(b: &HttpBackend) -> Ringlb {
    Ringlb::start(
        Cfg::http_proxy(&[b.addr])
            .route("path_prefix = \"/z/\"\nupstream = \"app\"\ncompress = true"),
    )
}

/// GET `path` with Accept-Encoding `ae` (none when empty) over HTTP/1.`minor`.
fn fetch(lb: &Ringlb, path: &str, ae: &str, minor: u8) -> Resp {
    let mut c = Client::connect(lb.addr("web"));
    let ae = if ae.is_empty() {
        String::new()
    } else {
        format!("Accept-Encoding: {ae}\r\n")
    };
    c.send(format!("GET {path} HTTP/1.{minor}\r\nHost: t\r\n{ae}\r\n").as_bytes());
    c.response()
}

#[test]
fn gzip_and_brotli_by_accept_encoding_for_length_and_chunked_bodies() {
    let b = backend();
    let lb = start(&b);
    for (path, ae, coding) in [
        ("/z/page", "gzip, deflate, br", "br"),
        ("/z/page", "gzip", "gzip"),
        ("/z/page", "br;q=0, gzip;q=0.5", "gzip"),
        ("/z/chunked", "gzip", "gzip"),
        ("/z/chunked", "*", "br"),
    ] {
        let r = fetch(&lb, path, ae, 1);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-encoding"),
            Some(coding),
            "{path} {ae}: {}",
            r.head.text()
        );
        assert!(
            r.chunked && r.header("content-length").is_none(),
            "{}",
            r.head.text()
        );
        assert!(r.head.lists("vary", "accept-encoding"), "{}", r.head.text());
        assert!(
            r.body.len() < page().len() / 4,
            "{path}: {} bytes",
            r.body.len()
        );
        assert_eq!(decode(coding, &r.body), page(), "{path} {ae}");
    }
    // curl decodes what it asked for.
    let out = Command::new("curl")
        .args(["-s", "--compressed", "--max-time", "5"])
        .arg(format!("http://{}/z/page", lb.addr("web")))
        .output()
        .expect("curl");
    assert_eq!(out.stdout, page());
    // A strong ETag names other bytes now: it becomes weak.
    let r = fetch(&lb, "/z/etag", "gzip", 1);
    assert_eq!(r.header("etag"), Some("W/\"v1\""), "{}", r.head.text());
}

#[test]
fn what_is_not_compressed() {
    let b = backend();
    let lb = start(&b);
    let plain = |path: &str, ae: &str, minor: u8, vary: bool| {
        let r = fetch(&lb, path, ae, minor);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-encoding")
                .filter(|c| *c != "gzip" || path != "/z/encoded"),
            None,
            "{path}: {}",
            r.head.text()
        );
        assert_eq!(
            r.head.lists("vary", "accept-encoding"),
            vary,
            "{path} {ae}: {}",
            r.head.text()
        );
        r
    };
    // No Accept-Encoding: as it is, but Vary says it could differ.
    assert_eq!(plain("/z/page", "", 1, true).body, page());
    assert_eq!(plain("/z/page", "identity", 1, true).body, page());
    assert_eq!(plain("/z/page", "gzip;q=0", 1, true).body, page());
    // HTTP/1.0 cannot read chunked bodies.
    assert_eq!(plain("/z/page", "gzip", 0, true).body, page());
    // Small, not a listed type, encoded already, no-transform.
    assert_eq!(plain("/z/small", "gzip", 1, false).body, b"<p>tiny</p>");
    assert_eq!(plain("/z/png", "gzip", 1, false).body, page());
    let enc = plain("/z/encoded", "gzip", 1, false);
    assert_eq!(enc.header("content-encoding"), Some("gzip"));
    assert_eq!(enc.body, page(), "passed through, not compressed twice");
    assert_eq!(plain("/z/no-transform", "gzip", 1, false).body, page());
    // A route without `compress`.
    assert_eq!(plain("/other", "gzip", 1, false).body, page());
    // HEAD: no body to compress.
    let mut c = Client::connect(lb.addr("web"));
    c.send(b"HEAD /z/page HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n");
    let r = c.head_response();
    assert_eq!(r.header("content-encoding"), None);
}

#[test]
fn validators_codings_and_heads_agree_with_the_compressed_body() {
    let b = backend();
    let lb = start(&b);
    // The backend's `Content-Encoding: identity` gives way to the coding.
    let r = fetch(&lb, "/z/identity", "gzip", 1);
    assert_eq!(
        r.head.all("content-encoding"),
        ["gzip"],
        "{}",
        r.head.text()
    );
    assert_eq!(decode("gzip", &r.body), page());
    // A transfer coding besides chunked: passed on as it is, not read as
    // if it were only chunked (that would compress gzip bytes again).
    let r = fetch(&lb, "/z/gzip-te", "gzip", 1);
    assert_eq!(r.header("content-encoding"), None, "{}", r.head.text());
    assert_eq!(r.header("transfer-encoding"), Some("gzip, chunked"));
    assert_eq!(decode("gzip", &r.body), page());
    // HEAD and 304 describe the compressed body: Vary and the weak ETag.
    let mut c = Client::connect(lb.addr("web"));
    c.send(b"HEAD /z/etag HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n");
    let r = c.head_response();
    assert_eq!(r.header("etag"), Some("W/\"v1\""), "{}", r.head.text());
    assert!(r.head.lists("vary", "accept-encoding"), "{}", r.head.text());
    c.send(b"GET /z/etag HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nIf-None-Match: W/\"v1\"\r\n\r\n");
    let r = c.head_response();
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some("W/\"v1\""), "{}", r.head.text());
    assert!(r.head.lists("vary", "accept-encoding"), "{}", r.head.text());
}

#[test]
fn a_compressed_stream_is_not_held_back() {
    // The backend sends a first chunk and waits for the test to see it
    // (decoded) before it sends the rest.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let server = Server::start(move |mut s: TcpStream, _| {
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let first = b"data: first event\n\n";
        let _ = s.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
                first.len()
            )
            .as_bytes(),
        );
        let _ = s.write_all(first);
        let _ = s.write_all(b"\r\n");
        let waited = go_rx
            .lock()
            .map(|rx| rx.recv_timeout(Duration::from_secs(5)));
        let _ = waited;
        let _ = s.write_all(b"11\r\ndata: last event\n\r\n0\r\n\r\n");
    });
    let lb = Ringlb::start(
        Cfg::http_proxy(&[server.addr])
            .route("path_prefix = \"/events\"\nupstream = \"app\"\ncompress = { codings = [\"gzip\"], types = [\"text/*\"], min_length = 0 }"),
    );
    let mut c = Client::connect(lb.addr("web"));
    c.send(b"GET /events HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n");
    c.w.s
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let head = Head::parse(c.w.read_head().expect("head").expect("a head"));
    assert_eq!(
        head.get("content-encoding"),
        Some("gzip"),
        "{}",
        head.text()
    );
    let mut dec = flate2::write::GzDecoder::new(Vec::new());
    // Chunks until the first event decodes, with the backend still waiting.
    while !String::from_utf8_lossy(dec.get_ref()).contains("first event") {
        let size = c.w.read_line().expect("a chunk before the backend went on");
        let n = usize::from_str_radix(std::str::from_utf8(&size).unwrap().trim(), 16).unwrap();
        assert!(n > 0, "the stream ended early");
        let data = c.w.read_n(n + 2).expect("chunk data");
        dec.write_all(&data[..n]).unwrap();
        dec.flush().unwrap();
    }
    go_tx.send(()).unwrap();
    let mut rest = Vec::new();
    c.w.read_chunked(Some(&mut rest)).expect("the rest");
    dec.write_all(&rest).unwrap();
    let all = dec.finish().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&all),
        "data: first event\n\ndata: last event\n"
    );
}

#[test]
fn bad_compress_tables_are_refused_by_check() {
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (z, what) in [
        ("compress = [\"deflate\"]", "not a coding ringlb makes"),
        ("compress = { types = [\"html\"] }", "not a media type"),
        ("compress = { codings = [] }", "at least one coding"),
        ("compress = { level = 9 }", "compress"),
    ] {
        let cfg = Cfg::http_proxy(&[up])
            .route(&format!("path_prefix = \"/a/\"\nupstream = \"app\"\n{z}"));
        let (code, _out, err) = check_config(&cfg);
        assert_ne!(code, 0, "{z} accepted");
        assert!(err.contains(what), "{z}: {err}");
    }
}
