//! HTTP/2 and gRPC (issue 12): h2c with prior knowledge and h2 by ALPN on
//! the same listeners as HTTP/1.1, HTTP/2 clients in front of HTTP/1.1
//! backends, gRPC through h2c and h2 backends (grpcio on both ends), the
//! error model as HTTP/2 statuses and gRPC statuses, abuse limits (rapid
//! reset, CONTINUATION floods, too many streams, a zero-window reader) and
//! a drain that finishes open streams.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use crate::common::{
    admin::scrape,
    http::{rss_kib, HttpBackend, Reply},
    json::Json,
    py::{grpc_client, grpc_client_tls, run_json, GrpcServer},
    tls::{Pair, Pki},
    *,
};

/// curl over cleartext HTTP/2 (prior knowledge) or anything else `extra`
/// says; (exit code, stdout, stderr). `-D -` puts the head in stdout.
fn curl(url: &str, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-D", "-"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn code(j: &Json) -> &str {
    j.get("code").and_then(Json::str).unwrap_or("?")
}

fn h2_config(up: &str, extra_up: &str, servers: &[std::net::SocketAddr]) -> cfg::Cfg {
    cfg::Cfg::new(1)
        .admin()
        .http("web", up)
        .listener_with("connect_timeout = \"1s\"")
        .upstream(up, servers)
        .upstream_with(extra_up)
}

#[test]
fn h2c_with_prior_knowledge_and_http11_share_one_port() {
    let be = HttpBackend::with(|r| {
        let body = format!(
            "{} {} host={} xff={} proto={} id={}",
            r.method,
            r.target,
            r.header("host").unwrap_or("-"),
            r.header("x-forwarded-for").unwrap_or("-"),
            r.header("x-forwarded-proto").unwrap_or("-"),
            r.header("x-request-id").is_some(),
        );
        Reply::ok(r, &body)
    });
    let lb = Ringlb::start(cfg::Cfg::http_proxy(&[be.addr]));
    let base = format!("http://{}", lb.addr("web"));
    let (rc, out, err) = curl(&format!("{base}/a/b?c=d"), &["--http2-prior-knowledge"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    let host = format!("host={}", lb.addr("web"));
    assert!(
        out.contains(&format!(
            "GET /a/b?c=d {host} xff=127.0.0.1 proto=http id=true"
        )),
        "{out}"
    );
    // The same port still speaks HTTP/1.1, and Upgrade: h2c is not taken.
    let (rc, out, err) = curl(&format!("{base}/one"), &["--http1.1"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let (rc, out, err) = curl(&format!("{base}/up"), &["--http2"]);
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "an h2c upgrade stays refused: {out}"
    );
    // Several streams on one connection (nghttp multiplexes its URLs).
    let urls: Vec<String> = (0..5).map(|i| format!("{base}/m{i}")).collect();
    let out = Command::new("nghttp")
        .args(["-t", "20"])
        .args(&urls)
        .output()
        .expect("nghttp (Debian: nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    for i in 0..5 {
        assert!(text.contains(&format!("GET /m{i} ")), "{text}");
    }
}

#[test]
fn h2_is_offered_by_alpn_on_tls_listeners_that_list_it() {
    let pki = Pki::new("h2-alpn");
    let leaf: Pair = pki.leaf("h2", "h2.test", &["h2.test"]);
    let be = HttpBackend::with(|r| {
        let proto = r.header("x-forwarded-proto").unwrap_or("-").to_string();
        Reply::ok(r, &proto)
    });
    let lb = Ringlb::start(
        cfg::Cfg::http_proxy(&[be.addr])
            .listener_with(&format!(
                "tls = {{ certs = [{}], alpn = [\"h2\", \"http/1.1\"] }}",
                leaf.toml()
            ))
            .http("plain11", "app")
            .listener_with(&format!(
                "listen = \"127.0.0.2:0\"\ntls = {{ certs = [{}] }}",
                leaf.toml()
            )),
    );
    let run = |listener: &str, v: &str| {
        let a = lb.addr(listener);
        let resolve = format!("h2.test:{}:{}", a.port(), a.ip());
        let ca = pki.ca_file.to_string_lossy().into_owned();
        curl(
            &format!("https://h2.test:{}/x", a.port()),
            &[v, "--resolve", &resolve, "--cacert", &ca],
        )
    };
    let (rc, out, err) = run("web", "--http2");
    assert_eq!(rc, 0, "{err}");
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.ends_with("https"), "{out}");
    let (rc, out, _) = run("web", "--http1.1");
    assert_eq!(rc, 0);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // A listener whose ALPN list has no h2 stays HTTP/1.1.
    let (rc, out, _) = run("plain11", "--http2");
    assert_eq!(rc, 0);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[test]
fn h2_bodies_stream_both_ways_through_an_http1_backend() {
    let big = pseudo_random(3 << 20, 12);
    let want = format!("{}", big.len());
    let be = HttpBackend::with(|r| {
        if r.target == "/fill" {
            return Reply::raw("HTTP/1.1 200 OK\r\nContent-Length: 8388608\r\n\r\n")
                .then(crate::common::http::Then::KeepAlive)
                .fill(8 << 20);
        }
        let sum: u64 = r.body.iter().map(|&b| u64::from(b)).sum();
        Reply::ok(
            r,
            &format!(
                "{} {sum} {}",
                r.body.len(),
                r.header("transfer-encoding").unwrap_or("-")
            ),
        )
    });
    let chunked =
        HttpBackend::chunked_response(vec![b"one ".to_vec(), b"two ".to_vec(), b"three".to_vec()]);
    let lb = Ringlb::start(
        cfg::Cfg::http_proxy(&[be.addr])
            .route("path_prefix = \"/chunked\"\nupstream = \"ch\"")
            .upstream("ch", &[chunked.addr]),
    );
    let base = format!("http://{}", lb.addr("web"));
    let file = temp_file("h2-body", "");
    std::fs::write(&file, &big).unwrap();
    let sum: u64 = big.iter().map(|&b| u64::from(b)).sum();
    let at = format!("@{}", file.display());
    // With a length (curl sends content-length) ...
    let (rc, out, err) = curl(
        &format!("{base}/up"),
        &["--http2-prior-knowledge", "--data-binary", &at],
    );
    assert_eq!(rc, 0, "{err}");
    assert!(out.ends_with(&format!("{want} {sum} -")), "{out}");
    // ... and without one: the backend gets it chunked.
    let (rc, out, err) = curl(
        &format!("{base}/up"),
        &[
            "--http2-prior-knowledge",
            "--data-binary",
            &at,
            "-H",
            "content-length:",
        ],
    );
    assert_eq!(rc, 0, "{err}");
    assert!(out.ends_with(&format!("{want} {sum} chunked")), "{out}");
    // 8 MiB down, and a chunked answer as DATA frames.
    let (rc, out, err) = curl(
        &format!("{base}/fill"),
        &[
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
        ],
    );
    assert_eq!(rc, 0, "{err}");
    assert!(out.ends_with("8388608"), "{out}");
    let (rc, out, err) = curl(&format!("{base}/chunked"), &["--http2-prior-knowledge"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.ends_with("one two three"), "{out}");
    assert!(!out.contains("transfer-encoding"), "{out}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn h2_errors_are_statuses_with_ringlb_json() {
    let be = HttpBackend::start();
    let lb = Ringlb::start(
        cfg::Cfg::new(1)
            .http("web", "")
            .route(
                "path_prefix = \"/api\"\nupstream = \"app\"\nrate_limit = { rate = 1, burst = 1 }",
            )
            .route("path_prefix = \"/dead\"\nupstream = \"dead\"")
            .upstream("app", &[be.addr])
            .upstream("dead", &[refused_addr()]),
    );
    let base = format!("http://{}", lb.addr("web"));
    let (_, out, _) = curl(&format!("{base}/nothing"), &["--http2-prior-knowledge"]);
    assert!(out.starts_with("HTTP/2 404"), "{out}");
    assert!(
        out.contains("{\"status\":404,\"error\":\"not found\",\"request_id\":\""),
        "{out}"
    );
    let (_, out, _) = curl(&format!("{base}/api"), &["--http2-prior-knowledge"]);
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    let (_, out, _) = curl(&format!("{base}/api"), &["--http2-prior-knowledge"]);
    assert!(out.starts_with("HTTP/2 429"), "{out}");
    assert!(out.contains("retry-after: "), "{out}");
    let (_, out, _) = curl(&format!("{base}/dead"), &["--http2-prior-knowledge"]);
    assert!(out.starts_with("HTTP/2 502"), "{out}");
}

#[test]
fn grpc_calls_of_every_shape_pass_through_an_h2c_backend() {
    let g = GrpcServer::start("g1");
    let lb = Ringlb::start(h2_config("grpc", "protocol = \"h2c\"", &[g.addr]));
    let t = lb.addr("web");
    let j = grpc_client(t, "unary", &["hello"]);
    assert_eq!(code(&j), "OK", "{j:?}");
    assert_eq!(
        j.get("reply").and_then(Json::str),
        Some("g1:hello:127.0.0.1")
    );
    let j = grpc_client(t, "echo", &["4194000"]);
    assert_eq!(
        (code(&j), j.get("same").and_then(Json::bool)),
        ("OK", Some(true)),
        "{j:?}"
    );
    let j = grpc_client(t, "server_stream", &["50", "65536"]);
    assert_eq!(code(&j), "OK", "{j:?}");
    assert_eq!(j.get("count").and_then(Json::uint), Some(50));
    assert_eq!(j.get("same").and_then(Json::bool), Some(true));
    let j = grpc_client(t, "client_stream", &["50", "65536"]);
    assert_eq!(
        j.get("reply").and_then(Json::str),
        Some("50,3276800"),
        "{j:?}"
    );
    let j = grpc_client(t, "bidi", &["20", "100000"]);
    assert_eq!(code(&j), "OK", "{j:?}");
    assert_eq!(j.get("same").and_then(Json::bool), Some(true), "{j:?}");
    // Trailers come back, and so does a non-zero status with its message.
    let j = grpc_client(t, "trailers", &[]);
    let tr = j.get("trailers").expect("trailers");
    assert_eq!(
        tr.get("x-served-by").and_then(Json::str),
        Some("g1"),
        "{j:?}"
    );
    let j = grpc_client(t, "unary", &["fail:thing"]);
    assert_eq!(code(&j), "NOT_FOUND", "{j:?}");
    assert_eq!(
        j.get("details").and_then(Json::str),
        Some("no such thing: thing")
    );
}

#[test]
fn grpc_deadlines_and_cancels_reach_the_backend() {
    let g = GrpcServer::start("slow");
    let lb = Ringlb::start(h2_config("grpc", "protocol = \"h2c\"", &[g.addr]));
    let t = lb.addr("web");
    let started = Instant::now();
    let j = grpc_client(t, "deadline", &["300", "5000"]);
    assert_eq!(code(&j), "DEADLINE_EXCEEDED", "{j:?}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(
        wait_until(Duration::from_secs(3), || g.events().contains("cancelled")),
        "the backend saw no cancel: {}",
        g.events()
    );
    let before = g.events().matches("cancelled").count();
    let j = grpc_client(t, "cancel", &["5000", "300"]);
    assert_eq!(code(&j), "CANCELLED", "{j:?}");
    assert!(
        wait_until(Duration::from_secs(3), || g
            .events()
            .matches("cancelled")
            .count()
            > before),
        "the client's cancel did not reach the backend: {}",
        g.events()
    );
}

#[test]
fn grpc_failures_get_grpc_statuses_not_bare_502s() {
    let be = HttpBackend::start();
    let mut g = GrpcServer::start("gone");
    let gone = g.addr;
    g.kill();
    let lb = Ringlb::start(
        cfg::Cfg::new(1)
            .http("web", "")
            .route("path_prefix = \"/ringlb.test.T/Unary\"\nupstream = \"dead\"")
            .route("path_prefix = \"/ringlb.test.T/Echo\"\nupstream = \"h1\"")
            .route("path_prefix = \"/ringlb.test.T/Slow\"\nupstream = \"limited\"\nrate_limit = { rate = 1, burst = 1 }")
            .upstream("dead", &[gone])
            .upstream_with("protocol = \"h2c\"")
            .upstream("h1", &[be.addr])
            .upstream("limited", &[gone])
            .upstream_with("protocol = \"h2c\""),
    );
    let t = lb.addr("web");
    let j = grpc_client(t, "unary", &["x"]);
    assert_eq!(code(&j), "UNAVAILABLE", "{j:?}");
    let j = grpc_client(t, "echo", &["10"]);
    assert_eq!(code(&j), "INTERNAL", "{j:?}");
    assert!(
        j.get("details")
            .and_then(Json::str)
            .unwrap_or("")
            .contains("HTTP/2"),
        "{j:?}"
    );
    let _ = grpc_client(t, "deadline", &["1000", "1"]);
    let j = grpc_client(t, "deadline", &["1000", "1"]);
    assert_eq!(code(&j), "RESOURCE_EXHAUSTED", "{j:?}");
}

#[test]
fn grpc_calls_on_one_connection_spread_over_the_backends() {
    let a = GrpcServer::start("a");
    let b = GrpcServer::start("b");
    let lb = Ringlb::start(h2_config("grpc", "protocol = \"h2c\"", &[a.addr, b.addr]));
    let j = grpc_client(lb.addr("web"), "spread", &["40"]);
    assert_eq!(code(&j), "OK", "{j:?}");
    let names = j.get("names").expect("names");
    let (na, nb) = (
        names.get("a").and_then(Json::uint).unwrap_or(0),
        names.get("b").and_then(Json::uint).unwrap_or(0),
    );
    assert_eq!(na + nb, 40, "{j:?}");
    assert!(
        na >= 10 && nb >= 10,
        "one connection's calls stayed on one backend: {j:?}"
    );
}

#[test]
fn rapid_resets_close_the_connection_with_goaway() {
    let be = HttpBackend::with(|r| Reply::ok(r, "slow").delayed(Duration::from_millis(300)));
    let lb = Ringlb::start(h2_config("app", "", &[be.addr]));
    let a = lb.addr("web");
    let (host, port) = (a.ip().to_string(), a.port().to_string());
    // Streams reset after ringlb took them (forwarded, waiting on the backend).
    let j = run_json(
        "h2_attack.py",
        &[
            "rapid_reset".into(),
            host.clone(),
            port.clone(),
            "400".into(),
            "3".into(),
        ],
    );
    assert_eq!(
        j.get("goaway").and_then(Json::str),
        Some("ENHANCE_YOUR_CALM"),
        "{j:?}"
    );
    let sent = j.get("sent").and_then(Json::uint).unwrap_or(0);
    assert!(
        (100..400).contains(&sent),
        "closed after {sent} resets: {j:?}"
    );
    // POSTs reset while ringlb reads their body count the same.
    let j = run_json(
        "h2_attack.py",
        &[
            "rapid_reset".into(),
            host.clone(),
            port.clone(),
            "400".into(),
            "3".into(),
            "post".into(),
        ],
    );
    assert_eq!(
        j.get("goaway").and_then(Json::str),
        Some("ENHANCE_YOUR_CALM"),
        "{j:?}"
    );
    // Reset before ringlb could take them: h2's own pending-reset cap.
    let j = run_json(
        "h2_attack.py",
        &["rapid_reset".into(), host, port, "2000".into(), "0".into()],
    );
    assert_eq!(
        j.get("goaway").and_then(Json::str),
        Some("ENHANCE_YOUR_CALM"),
        "{j:?}"
    );
    let m = scrape(&lb);
    assert!(m.sum("ringlb_h2_goaway_total", &[("reason", "rapid_reset")]) >= 1.0);
    assert!(m.sum("ringlb_h2_client_resets_total", &[]) >= 100.0);
    // Other clients are served.
    let (rc, out, err) = curl(&format!("http://{a}/after"), &["--http2-prior-knowledge"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.starts_with("HTTP/2 200"), "{out}");
}

#[test]
fn continuation_floods_and_stream_floods_are_cut_off() {
    let be = HttpBackend::with(|r| Reply::ok(r, "slow").delayed(Duration::from_millis(500)));
    let lb = Ringlb::start(
        h2_config("app", "", &[be.addr]).listener_with("h2 = { max_concurrent_streams = 10 }"),
    );
    let a = lb.addr("web");
    let (host, port) = (a.ip().to_string(), a.port().to_string());
    let (rss0, _) = rss_kib(lb.pid());
    let j = run_json(
        "h2_attack.py",
        &[
            "continuation".into(),
            host.clone(),
            port.clone(),
            "20000".into(),
        ],
    );
    assert_eq!(
        j.get("goaway").and_then(Json::str),
        Some("ENHANCE_YOUR_CALM"),
        "no GOAWAY for a CONTINUATION flood: {j:?}"
    );
    let sent = j.get("sent").and_then(Json::uint).unwrap_or(0);
    assert!(sent < 20000, "every CONTINUATION frame was taken: {j:?}");
    let (rss1, _) = rss_kib(lb.pid());
    assert!(
        rss1 < rss0 + 32 * 1024,
        "RSS grew from {rss0} to {rss1} KiB"
    );
    // Streams past max_concurrent_streams are refused, the first ten served.
    let j = run_json(
        "h2_attack.py",
        &["streams".into(), host, port, "30".into(), "/s".into()],
    );
    let refused = j.get("reset_REFUSED_STREAM").and_then(Json::uint);
    let answered = j.get("headers").and_then(Json::uint);
    assert_eq!((answered, refused), (Some(10), Some(20)), "{j:?}");
    let (rc, out, _) = curl(&format!("http://{a}/after"), &["--http2-prior-knowledge"]);
    assert_eq!(rc, 0);
    assert!(out.starts_with("HTTP/2 200"), "{out}");
}

#[test]
fn a_zero_window_reader_holds_bounded_memory_and_is_timed_out() {
    let be = HttpBackend::with(|_r| {
        Reply::raw("HTTP/1.1 200 OK\r\nContent-Length: 33554432\r\n\r\n").fill(32 << 20)
    });
    let mut lb =
        Ringlb::start(h2_config("app", "", &[be.addr]).listener_with("body_timeout = \"2s\""));
    let a = lb.addr("web");
    let pid = lb.pid();
    let (rss0, _) = rss_kib(pid);
    let attacker = std::thread::spawn(move || {
        run_json(
            "h2_attack.py",
            &[
                "zero_window".into(),
                a.ip().to_string(),
                a.port().to_string(),
                "20".into(),
                "/big".into(),
                "5".into(),
            ],
        )
    });
    std::thread::sleep(Duration::from_millis(1500));
    // 20 streams x 32 MiB wait on a client that gives no window: ringlb
    // holds a buffer's worth per stream, not the bodies.
    let (rss1, _) = rss_kib(pid);
    assert!(
        rss1 < rss0 + 48 * 1024,
        "RSS grew from {rss0} to {rss1} KiB"
    );
    let (rc, out, err) = curl(
        &format!("http://{a}/small"),
        &["--http2-prior-knowledge", "--max-filesize", "1"],
    );
    assert!(out.starts_with("HTTP/2 200"), "{rc} {out} {err}");
    let j = attacker.join().unwrap();
    // Each stalled stream is reset once body_timeout passes.
    assert_eq!(
        j.get("reset_INTERNAL_ERROR").and_then(Json::uint),
        Some(20),
        "the stalled streams were not timed out: {j:?}"
    );
    lb.signal("TERM");
    assert_eq!(lb.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn reload_and_sigterm_send_goaway_and_finish_open_streams() {
    let g = GrpcServer::start("drain");
    let cfg = |n: u64| {
        h2_config("grpc", "protocol = \"h2c\"", &[g.addr])
            .runtime("shutdown_timeout = \"10s\"")
            .listener_with(&format!("connect_timeout = \"{}ms\"", 1000 + n))
    };
    let mut lb = Ringlb::start(cfg(0));
    let t = lb.addr("web");
    // A reload (a new generation: a listener key changed) under an open call.
    let call = std::thread::spawn(move || grpc_client(t, "deadline", &["8000", "1500"]));
    assert!(wait_until(Duration::from_secs(5), || g
        .events()
        .contains("slow-start")));
    lb.rewrite(cfg(1));
    lb.signal("HUP");
    assert!(lb.wait_log("configuration reloaded"), "{}", lb.log_text());
    let j = call.join().unwrap();
    assert_eq!(
        code(&j),
        "OK",
        "the open call failed across the reload: {j:?}"
    );
    let j = grpc_client(t, "unary", &["after-reload"]);
    assert_eq!(code(&j), "OK", "{j:?}");
    // SIGTERM under an open call.
    let before = g.events().matches("slow-start").count();
    let call = std::thread::spawn(move || grpc_client(t, "deadline", &["8000", "1500"]));
    assert!(wait_until(Duration::from_secs(5), || g
        .events()
        .matches("slow-start")
        .count()
        > before));
    lb.signal("TERM");
    let j = call.join().unwrap();
    assert_eq!(code(&j), "OK", "the open call failed in the drain: {j:?}");
    assert_eq!(lb.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn grpc_over_tls_on_both_sides_alpn_h2_in_and_protocol_h2_out() {
    let pki = Pki::new("grpc-tls");
    let front = pki.leaf("front", "api.test", &["api.test"]);
    let back = pki.leaf("back", "grpc.internal", &["grpc.internal"]);
    let g = GrpcServer::start_with("tls-backend", Some((&back.cert, &back.key)));
    let lb = Ringlb::start(
        h2_config(
            "grpc",
            &format!(
                "protocol = \"h2\"\ntls = {{ server_name = \"grpc.internal\", ca = \"{}\" }}",
                pki.ca_file.display()
            ),
            &[g.addr],
        )
        .listener_with(&format!(
            "tls = {{ certs = [{}], alpn = [\"h2\", \"http/1.1\"] }}",
            front.toml()
        )),
    );
    let tls = Some((pki.ca_file.as_path(), "api.test"));
    let t = lb.addr("web");
    let j = grpc_client_tls(t, tls, "unary", &["over-tls"]);
    assert_eq!(code(&j), "OK", "{j:?}");
    assert_eq!(
        j.get("reply").and_then(Json::str),
        Some("tls-backend:over-tls:127.0.0.1")
    );
    let j = grpc_client_tls(t, tls, "bidi", &["10", "200000"]);
    assert_eq!(j.get("same").and_then(Json::bool), Some(true), "{j:?}");
    // One backend connection carried every call (the pool multiplexes).
    let j = grpc_client_tls(t, tls, "spread", &["20"]);
    assert_eq!(code(&j), "OK", "{j:?}");
}

#[test]
fn h2_streams_are_logged_and_counted() {
    let dir = TempDir::new("h2-log");
    let path = dir.path("access.log");
    let be = HttpBackend::start();
    let lb = Ringlb::start(
        cfg::Cfg::http_proxy(&[be.addr])
            .admin()
            .table(&format!("[access_log]\npath = \"{}\"\n", path.display())),
    );
    let base = format!("http://{}", lb.addr("web"));
    let (rc, out, err) = curl(
        &format!("{base}/logged?q=1"),
        &["--http2-prior-knowledge", "-H", "x-request-id: h2-log-1"],
    );
    assert_eq!(rc, 0, "{err}");
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&path)
            .unwrap_or_default()
            .contains("h2-log-1")),
        "no access-log line"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text.lines().find(|l| l.contains("h2-log-1")).unwrap();
    assert!(line.contains("\"GET /logged?q=1 HTTP/2.0\" 200 "), "{line}");
    let m = scrape(&lb);
    assert_eq!(m.sum("ringlb_h2_connections_total", &[]), 1.0);
    assert_eq!(m.sum("ringlb_h2_streams_total", &[]), 1.0);
    assert!(m.family("ringlb_h2_goaway_total").is_some());
}

#[test]
fn check_refuses_inconsistent_http2_keys() {
    let pki = Pki::new("h2-check");
    let ca = pki.ca_file.display().to_string();
    let cases: [(String, &str); 5] = [
        ("protocol = \"h2\"".into(), "add a tls table"),
        (
            format!("protocol = \"h2c\"\ntls = {{ ca = \"{ca}\" }}"),
            r#"(write "h2")"#,
        ),
        (
            format!("protocol = \"h2\"\ntls = {{ ca = \"{ca}\", alpn = [\"http/1.1\"] }}"),
            r#"needs "h2" in the ALPN list"#,
        ),
        (
            "protocol = \"h3\"".into(),
            "expected one of: http1, h2, h2c",
        ),
        ("protocol = \"h2c\"".into(), ""),
    ];
    for (up, want) in &cases {
        let (rc, _, err) = check_config(cfg::Cfg::http_proxy(&[refused_addr()]).upstream_with(up));
        if want.is_empty() {
            assert_eq!(rc, 0, "{up}: {err}");
        } else {
            assert_eq!(rc, 2, "{up}: {err}");
            assert!(err.contains(want), "{up}: {err}");
        }
    }
    for (l, want) in [
        (
            "h2 = { max_concurrent_streams = 0 }",
            "h2.max_concurrent_streams",
        ),
        (
            "h2 = { initial_window_size = \"1k\" }",
            "h2.initial_window_size",
        ),
        ("h2 = { max_frame_size = \"32m\" }", "h2.max_frame_size"),
        ("h2 = { reset_window = \"0s\" }", "h2.reset_window"),
        ("h2 = { nonsense = 1 }", "nonsense"),
    ] {
        let (rc, _, err) = check_config(cfg::Cfg::http_proxy(&[refused_addr()]).listener_with(l));
        assert_eq!(rc, 2, "{l}: {err}");
        assert!(err.contains(want), "{l}: {err}");
    }
    let (rc, _, err) = check_config(
        cfg::Cfg::tcp_proxy(&[refused_addr()])
            .listener_with("h2 = { max_concurrent_streams = 10 }"),
    );
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("only applies to mode = \"http\""), "{err}");
}

#[test]
fn h2_paths_and_authorities_get_the_http11_checks() {
    let be = HttpBackend::named("app");
    let lb = Ringlb::start(
        cfg::Cfg::http_proxy(&[be.addr]).route("path_prefix = \"/public/\"\nupstream = \"app\""),
    );
    let a = lb.addr("web");
    let get = |path: &str, authority: &str| {
        let j = run_json(
            "h2_attack.py",
            &[
                "get".into(),
                a.ip().to_string(),
                a.port().to_string(),
                path.into(),
                authority.into(),
            ],
        );
        j.get("status").and_then(Json::uint)
    };
    let auth = a.to_string();
    assert_eq!(get("/public/x", &auth), Some(200));
    // A dot segment would be routed by /public/ and resolved elsewhere.
    assert_eq!(get("/public/../admin", &auth), Some(400));
    assert_eq!(get("/public/%2e%2e/admin", &auth), Some(400));
    assert_eq!(get("/x", &format!("user@{auth}")), Some(400));
    assert_eq!(
        be.reqs
            .lock()
            .unwrap()
            .iter()
            .filter(|r| !r.health())
            .count(),
        1
    );
    // HEAD keeps the length of the body it describes.
    let (rc, out, err) = curl(
        &format!("http://{a}/public/h"),
        &["--http2-prior-knowledge", "-I"],
    );
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("content-length: "), "{out}");
}

#[test]
fn a_quiet_grpc_client_is_not_timed_out_while_its_answer_streams() {
    let g = GrpcServer::start("bidi");
    let lb = Ringlb::start(
        h2_config("grpc", "protocol = \"h2c\"", &[g.addr]).listener_with("body_timeout = \"1s\""),
    );
    // The server ticks every 300 ms while the client sends three messages
    // 2.5 s apart: the request side is quiet longer than body_timeout while
    // the answer streams, and each of its messages still arrives.
    let j = grpc_client(lb.addr("web"), "ticker", &["3", "2500"]);
    assert_eq!(code(&j), "OK", "{j:?}");
    assert_eq!(j.get("last").and_then(Json::str), Some("got:3"), "{j:?}");
}

#[test]
fn a_backend_goaway_drains_its_connection_without_failing_its_calls() {
    let a = GrpcServer::start("a");
    let b = GrpcServer::start("b");
    let lb = Ringlb::start(h2_config("grpc", "protocol = \"h2c\"", &[a.addr, b.addr]));
    let t = lb.addr("web");
    // Warm both backends' connections, then start a long call on each.
    let j = grpc_client(t, "spread", &["4"]);
    assert_eq!(code(&j), "OK", "{j:?}");
    let calls: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || grpc_client(t, "deadline", &["8000", "2000"])))
        .collect();
    assert!(wait_until(Duration::from_secs(5), || a
        .events()
        .contains("slow-start")
        && b.events().contains("slow-start")));
    // Backend a stops gracefully: GOAWAY, its call runs to the end.
    a.term();
    assert!(wait_until(Duration::from_secs(3), || a
        .events()
        .contains("stopping")));
    for c in calls {
        let j = c.join().unwrap();
        assert_eq!(
            code(&j),
            "OK",
            "a call the backend had accepted failed: {j:?}"
        );
    }
    // New calls go to b (a closed its port after the GOAWAY).
    let j = grpc_client(t, "spread", &["10"]);
    assert_eq!(code(&j), "OK", "{j:?}");
    assert_eq!(
        j.get("names").and_then(|n| n.get("b")).and_then(Json::uint),
        Some(10),
        "{j:?}"
    );
}
