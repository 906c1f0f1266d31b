//! /metrics through the real binary: every family the spec names, strictly
//! parsed (common/prom.rs), checked against the traffic the test sent, and
//! cross-checked by promtool when it is installed.

use std::process::Command;

use crate::common::{admin::*, http::*, *};

/// `promtool check metrics` (parse and lint) must pass too, when promtool
/// is installed (on PATH, or named by $PROMTOOL); skipped otherwise.
fn promtool_check(text: &str) {
    use std::{io::Write, process::Stdio};
    let tool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let Ok(mut child) = Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("{tool} not found: skipping the promtool cross-check");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- text:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_parse_strictly_and_count_the_traffic() {
    let b = HttpBackend::with(|r| {
        if r.target.starts_with("/api/missing") {
            Reply::new(r, 404, &[("Content-Type", "text/plain")], b"no such thing")
        } else {
            Reply::ok(r, "ok")
        }
    });
    let echo = EchoBackend::greeting("hi");
    let lb = Ringlb::start(
        Cfg::new(2)
            .admin()
            .http("web", "")
            .listener_with("connect_timeout = \"1s\"\nmax_connections = 200")
            .route("path_prefix = \"/api/\"\nupstream = \"app\"")
            .route("host = \"api.example.com\"\npath_prefix = \"/v1/\"\nupstream = \"app\"")
            .route("path_prefix = \"/limited/\"\nupstream = \"app\"\nrate_limit = { rate = 0.001, burst = 2 }")
            .tcp("raw", "echo")
            .listener_with("listen = \"127.0.0.2:0\"\nconnect_timeout = \"1s\"\nmax_connections = 50")
            .upstream("app", &[b.addr])
            .upstream("echo", &[echo.addr]),
    );
    let web = lb.addr("web");

    // Before any traffic: valid, complete, nothing counted.
    let m = scrape(&lb);
    assert_schema(&m);
    assert_eq!(
        m.sum("ringlb_http_requests_total", &[]),
        0.0,
        "\n{}",
        m.dump("ringlb_http")
    );
    assert_eq!(m.sum("ringlb_connections_accepted_total", &[]), 0.0);

    // HTTP, one request per fresh connection (spread over both workers).
    let mut sent = Vec::new();
    for i in 0..6 {
        let s = send(web, &get_req(&format!("/api/ok/{i}"), "t", ""));
        assert_eq!(s.resp.status, 200);
        sent.push(s);
    }
    let s = send(web, &get_req("/v1/x", "api.example.com", ""));
    assert_eq!(s.resp.status, 200);
    sent.push(s);
    let s = send(web, &get_req("/api/missing", "t", ""));
    assert_eq!(s.resp.status, 404, "backend 404");
    sent.push(s);
    let s = send(web, &get_req("/other", "t", ""));
    assert_error(&s.resp, 404, "not found");
    sent.push(s);
    let mut limited = Vec::new();
    for i in 0..5 {
        let s = send(web, &get_req(&format!("/limited/{i}"), "t", ""));
        limited.push(s.resp.status);
        sent.push(s);
    }
    assert_eq!(limited, [200, 200, 429, 429, 429]);
    let req_bytes: usize = sent.iter().map(|s| s.req_bytes).sum();
    let resp_bytes: usize = sent.iter().map(|s| s.resp_bytes).sum();

    // TCP: 3 connections with known sizes; the backend greets with 3 bytes.
    let sizes = [100usize, 1000, 10_000];
    for (i, n) in sizes.iter().enumerate() {
        tcp_session(lb.addr("raw"), b"hi\n", &pseudo_random(*n, i as u64 + 1));
    }
    let tcp_in: usize = sizes.iter().sum();
    let tcp_out = tcp_in + 3 * sizes.len();

    let app = b.addr.to_string();
    let echo_s = echo.addr.to_string();
    let route = |r: &str, c: &str| lbl(&[("listener", "web"), ("route", r), ("class", c)]);
    let want = vec![
        ("ringlb_http_requests_total", route("*/api/", "2xx"), 6.0),
        (
            "ringlb_http_requests_total",
            route("api.example.com/v1/", "2xx"),
            1.0,
        ),
        ("ringlb_http_requests_total", route("*/api/", "4xx"), 1.0),
        ("ringlb_http_requests_total", route("none", "4xx"), 1.0),
        (
            "ringlb_http_requests_total",
            route("*/limited/", "2xx"),
            2.0,
        ),
        (
            "ringlb_http_requests_total",
            route("*/limited/", "4xx"),
            3.0,
        ),
        (
            "ringlb_rate_limited_total",
            lbl(&[("listener", "web"), ("route", "*/limited/")]),
            3.0,
        ),
        (
            "ringlb_connections_accepted_total",
            lbl(&[("listener", "web")]),
            14.0,
        ),
        (
            "ringlb_connections_accepted_total",
            lbl(&[("listener", "raw")]),
            3.0,
        ),
        (
            "ringlb_connections_active",
            lbl(&[("listener", "web")]),
            0.0,
        ),
        (
            "ringlb_connections_active",
            lbl(&[("listener", "raw")]),
            0.0,
        ),
        (
            "ringlb_listener_max_connections",
            lbl(&[("listener", "web")]),
            200.0,
        ),
        (
            "ringlb_listener_max_connections",
            lbl(&[("listener", "raw")]),
            50.0,
        ),
        (
            "ringlb_bytes_received_total",
            lbl(&[("listener", "raw")]),
            tcp_in as f64,
        ),
        (
            "ringlb_bytes_sent_total",
            lbl(&[("listener", "raw")]),
            tcp_out as f64,
        ),
        (
            "ringlb_bytes_received_total",
            lbl(&[("listener", "web")]),
            req_bytes as f64,
        ),
        (
            "ringlb_bytes_sent_total",
            lbl(&[("listener", "web")]),
            resp_bytes as f64,
        ),
        ("ringlb_retries_total", lbl(&[("listener", "web")]), 0.0),
        (
            "ringlb_backend_requests_total",
            lbl(&[("upstream", "app"), ("backend", &app)]),
            10.0,
        ),
        (
            "ringlb_backend_requests_total",
            lbl(&[("upstream", "echo"), ("backend", &echo_s)]),
            3.0,
        ),
        (
            "ringlb_backend_failures_total",
            lbl(&[("upstream", "app"), ("backend", &app)]),
            0.0,
        ),
        (
            "ringlb_backend_up",
            lbl(&[("upstream", "app"), ("backend", &app)]),
            1.0,
        ),
        (
            "ringlb_backend_up",
            lbl(&[("upstream", "echo"), ("backend", &echo_s)]),
            1.0,
        ),
        (
            "ringlb_backend_active",
            lbl(&[("upstream", "echo"), ("backend", &echo_s)]),
            0.0,
        ),
        (
            "ringlb_http_request_duration_seconds_count",
            lbl(&[("listener", "web")]),
            14.0,
        ),
        (
            "ringlb_upstream_response_duration_seconds_count",
            lbl(&[("upstream", "app")]),
            10.0,
        ),
        (
            "ringlb_upstream_connect_duration_seconds_count",
            lbl(&[("upstream", "app")]),
            b.conns() as f64,
        ),
        (
            "ringlb_upstream_connect_duration_seconds_count",
            lbl(&[("upstream", "echo")]),
            3.0,
        ),
    ];
    let m = assert_metrics(&lb, &want, "ringlb_");
    assert_schema(&m);
    promtool_check(&scrape_text(&lb).1);
    // The 14 requests are all there is; nothing counted for other labels.
    assert_eq!(m.sum("ringlb_http_requests_total", &[]), 14.0);
    assert_eq!(m.sum("ringlb_rate_limited_total", &[]), 3.0);
    for name in [
        "ringlb_connections_rejected_total",
        "ringlb_limiter_saturated_total",
        "ringlb_health_transitions_total",
    ] {
        assert_eq!(m.sum(name, &[]), 0.0, "{name}\n{}", m.dump(name));
    }
    // Durations are seconds: 14 quick loopback requests sum to well under 14 s.
    let sum = m
        .get(
            "ringlb_http_request_duration_seconds_sum",
            &[("listener", "web")],
        )
        .unwrap();
    assert!(sum > 0.0 && sum < 14.0, "request duration sum {sum}");
    let sum = m
        .get(
            "ringlb_upstream_response_duration_seconds_sum",
            &[("upstream", "app")],
        )
        .unwrap();
    assert!(
        sum > 0.0 && sum < 10.0,
        "upstream response duration sum {sum}"
    );
    // Everything took under 10 s: the le="10" bucket already holds them all.
    assert_eq!(
        m.get(
            "ringlb_http_request_duration_seconds_bucket",
            &[("listener", "web"), ("le", "10")]
        )
        .or_else(|| m.get(
            "ringlb_http_request_duration_seconds_bucket",
            &[("listener", "web"), ("le", "10.0")]
        )),
        Some(14.0),
        "\n{}",
        m.dump("ringlb_http_request_duration")
    );
}
