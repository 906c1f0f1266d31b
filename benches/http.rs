//! The L7 hot path's pure parts, and the head parser choice.
//!
//! * `parse_request`: ringlb's head parser (httparse for the grammar, then
//!   framing and smuggling checks, spans into the buffer, no allocation)
//!   against monoio-http's `RequestHeadDecoder` (httparse, then an owned
//!   `http::request::Parts` with a `HeaderMap`), and httparse alone as the
//!   floor. Same bytes for all three.
//! * `rewrite`: building the request head sent to the backend.
//! * `route`: host + longest-prefix lookup among 200 routes.
//! * `chunked`: scanning a 64 KiB chunked body in 1 KiB chunks.
//!
//! Run: `cargo bench --bench http -- --warm-up-time 1 --measurement-time 2`

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use monoio_codec::Decoder;
use ringlb::{
    config::HeaderOps,
    proxy::http::{
        h1::{
            chunked::Chunked,
            codec::{parse_request, Limits, Request},
            rewrite::{request_head, RequestCtx},
        },
        router::Router,
    },
};

const REQUEST: &[u8] = b"GET /api/v1/users/12345?fields=name,email HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n\
Accept: application/json, text/plain, */*\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Connection: keep-alive\r\n\
Cookie: session=8f14e45fceea167a5a36dedd4bea2543; theme=dark\r\n\
X-Forwarded-For: 203.0.113.7\r\n\
\r\n";

const LIMITS: Limits = Limits {
    max_request_line: 8192,
    max_header_size: 32768,
    max_headers: 100,
    underscores: ringlb::config::Underscores::Drop,
};

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_request");
    g.throughput(Throughput::Bytes(REQUEST.len() as u64));
    let mut req = Request::default();
    g.bench_function("ringlb", |b| {
        b.iter(|| {
            let ok = parse_request(black_box(REQUEST), &LIMITS, &mut req);
            black_box(ok.is_ok());
        })
    });
    g.bench_function("monoio_http", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(black_box(REQUEST));
            let head = monoio_http::h1::codec::decoder::RequestHeadDecoder.decode(&mut buf);
            black_box(head.is_ok());
        })
    });
    g.bench_function("httparse_only", |b| {
        b.iter(|| {
            let mut headers =
                [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 100];
            let mut r = httparse::Request::new(&mut []);
            black_box(
                r.parse_with_uninit_headers(black_box(REQUEST), &mut headers)
                    .is_ok(),
            );
        })
    });
    g.finish();
}

fn rewrite(c: &mut Criterion) {
    let mut req = Request::default();
    assert_eq!(parse_request(REQUEST, &LIMITS, &mut req), Ok(true));
    let ops = HeaderOps::default();
    let mut out = Vec::with_capacity(1024);
    c.bench_function("rewrite/request_head", |b| {
        b.iter(|| {
            let cx = RequestCtx {
                path: req.path.get(REQUEST),
                lead_slash: false,
                client_ip: "127.0.0.1",
                request_id: "0123456789abcdef0123456789abcdef",
                upgrade: None,
                trusted: false,
                port: 80,
                https: false,
                tls_lines: b"",
                ops: &ops,
            };
            request_head(&mut out, black_box(REQUEST), &req, &cx);
            black_box(out.len());
        })
    });
}

fn route(c: &mut Criterion) {
    let hosts: Vec<String> = (0..20).map(|i| format!("svc{i}.example.com")).collect();
    let prefixes: Vec<String> = (0..10).map(|i| format!("/api/v{i}/")).collect();
    let mut pairs = Vec::new();
    for h in &hosts {
        for p in &prefixes {
            pairs.push((Some(h.as_str()), p.as_str()));
        }
    }
    let router = Router::new(pairs.into_iter()).expect("distinct routes");
    c.bench_function("route/200_routes", |b| {
        b.iter(|| black_box(router.find(black_box("svc13.example.com"), b"/api/v7/users/42")))
    });
}

fn chunked(c: &mut Criterion) {
    let mut body = Vec::new();
    for _ in 0..64 {
        body.extend_from_slice(b"400\r\n");
        body.extend_from_slice(&[b'x'; 1024]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut g = c.benchmark_group("chunked");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("scan_64k_in_1k_chunks", |b| {
        b.iter(|| {
            let mut s = Chunked::new();
            let mut at = 0;
            while !s.is_done() {
                match s.step(&body[at..]) {
                    Ok(step) => at += step.len,
                    Err(_) => break,
                }
            }
            black_box(at);
        })
    });
    g.finish();
}

criterion_group!(benches, parse, rewrite, route, chunked);
criterion_main!(benches);
