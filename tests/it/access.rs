//! `allow` / `deny` lists: on tcp and http listeners, on http routes (both
//! HTTP/1.1 and HTTP/2), on the PROXY-protocol address, with real clients
//! from several loopback source addresses.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use crate::common::{admin::*, http::*, udp::kdig_from, *};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A request from `src` (a 127.0.0.0/8 address) and its status.
fn status_from(src: &str, addr: SocketAddr, path: &str) -> (u16, String) {
    let mut c = Client {
        w: Wire::new(connect_from(ip(src), addr).expect("connect")),
    };
    c.send(format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\n\r\n").as_bytes());
    let r = c.response();
    (r.status, r.text())
}

/// The status curl gets over HTTP/2 (prior knowledge) from `src`.
fn h2_status_from(src: &str, addr: SocketAddr, path: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .args([
            "--http2-prior-knowledge",
            "--max-time",
            "5",
            "--interface",
            src,
        ])
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tcp_listener_closes_a_denied_client_at_once_and_serves_the_rest() {
    let echo = EchoBackend::start();
    let lb = Ringlb::start(
        Cfg::tcp_proxy(&[echo.addr])
            .listener_with("allow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.3\", \"127.9.0.0/16\"]")
            .admin(),
    );
    let addr = lb.addr("l");
    for src in ["127.0.0.3", "127.9.1.2"] {
        let mut s = connect_from(ip(src), addr).expect("connect");
        let t0 = Instant::now();
        let _ = s.write_all(b"hello");
        let mut b = [0u8; 8];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{src}: a denied client got {other:?}"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "{src}: closed only after {:?}",
            t0.elapsed()
        );
    }
    assert_eq!(echo.conns(), 0, "a denied client reached the backend");
    for src in ["127.0.0.1", "127.0.0.4", "127.8.0.1"] {
        let mut s = connect_from(ip(src), addr).expect("connect");
        s.write_all(b"hello").unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b)
            .unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(&b, b"hello");
    }
    let want = vec![(
        "ringlb_connections_rejected_total",
        lbl(&[("listener", "l"), ("reason", "denied")]),
        2.0,
    )];
    assert_metrics(&lb, &want, "ringlb_");
}

/// Without an `allow` list everything not denied passes; the PROXY
/// header's address is the one judged, not the front balancer's.
#[test]
fn tcp_deny_judges_the_proxy_protocol_address() {
    let echo = EchoBackend::start();
    let lb = Ringlb::start(
        Cfg::tcp_proxy(&[echo.addr])
            .listener_with("accept_proxy_protocol = \"v1\"\ndeny = [\"203.0.113.0/24\"]"),
    );
    let addr = lb.addr("l");
    let try_as = |client: &str| -> bool {
        let mut s = connect(addr);
        s.write_all(format!("PROXY TCP4 {client} 127.0.0.1 4000 80\r\nping").as_bytes())
            .unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).is_ok() && &b == b"ping"
    };
    assert!(!try_as("203.0.113.7"), "denied PROXY address served");
    assert!(try_as("198.51.100.7"), "allowed PROXY address refused");
    assert_eq!(echo.conns(), 1);
}

#[test]
fn http_route_and_listener_lists_answer_403_on_h1_and_h2() {
    let b = HttpBackend::start();
    let lb = Ringlb::start(
        Cfg::http_proxy(&[b.addr])
            .listener_with("deny = [\"127.0.0.3\"]")
            .route(
                "path_prefix = \"/private/\"\nupstream = \"app\"\nallow = [\"127.0.0.2\", \"::1\"]",
            )
            .admin(),
    );
    let addr = lb.addr("web");
    let cases = [
        ("127.0.0.1", "/private/x", 403),
        ("127.0.0.2", "/private/x", 200),
        ("127.0.0.1", "/open", 200),
        ("127.0.0.3", "/open", 403),
        ("127.0.0.3", "/private/x", 403),
    ];
    for (src, path, want) in cases {
        let (status, body) = status_from(src, addr, path);
        assert_eq!(status, want, "{src} {path}: {body}");
        if want == 403 {
            assert!(
                body.contains("\"error\":\"forbidden\""),
                "{src} {path}: {body}"
            );
        }
    }
    for (src, path, want) in [
        ("127.0.0.1", "/private/x", "2 403"),
        ("127.0.0.2", "/private/x", "2 200"),
        ("127.0.0.3", "/open", "2 403"),
    ] {
        assert_eq!(h2_status_from(src, addr, path), want, "h2 {src} {path}");
    }
    // Served requests reached the backend; refused ones did not.
    assert_eq!(b.requests().len(), 3);
    let route = |r: &str| lbl(&[("listener", "web"), ("route", r)]);
    let want = vec![
        ("ringlb_http_denied_total", route("*/private/"), 3.0),
        ("ringlb_http_denied_total", route("*/"), 2.0),
    ];
    assert_metrics(&lb, &want, "ringlb_http_denied");
}

#[test]
fn bad_lists_are_refused_by_check() {
    for (lines, key, what) in [
        ("allow = [\"10.0.0.0/33\"]", "allow", "prefix"),
        ("deny = [\"not-an-address\"]", "deny", "not an address"),
        (
            "allow = [\"10.0.0.0/8\"]\ndeny = [\"10.1.2.3/8\"]",
            "deny",
            "both allow and deny",
        ),
    ] {
        let cfg = Cfg::tcp_proxy(&["127.0.0.1:9".parse().unwrap()]).listener_with(lines);
        let (code, _out, err) = check_config(&cfg);
        assert_ne!(code, 0, "{lines} accepted");
        assert!(err.contains(key) && err.contains(what), "{lines}: {err}");
    }
}

/// udp: a denied client's datagrams open no flow and are counted as
/// dropped; the others are answered.
#[test]
fn udp_listener_drops_a_denied_clients_datagrams() {
    let dns = crate::common::dns::Dnsmasq::start(&[("a.test", "10.1.1.1")], &[]);
    let server: SocketAddr = dns.addr().parse().expect("dnsmasq addr");
    let lb = Ringlb::start(
        Cfg::new(2)
            .admin()
            .listener("dns", "udp", "r")
            .listener_with("responses = 1\ndeny = [\"127.0.0.3\"]")
            .upstream("r", &[server]),
    );
    let addr = lb.addr("dns");
    assert_eq!(
        kdig_from(Some("127.0.0.3"), addr, "a.test"),
        None,
        "a denied client was answered"
    );
    assert_eq!(
        kdig_from(Some("127.0.0.2"), addr, "a.test").as_deref(),
        Some("10.1.1.1")
    );
    let want = vec![
        (
            "ringlb_udp_dropped_total",
            lbl(&[("listener", "dns"), ("reason", "denied")]),
            1.0,
        ),
        ("ringlb_udp_flows_total", lbl(&[("listener", "dns")]), 1.0),
    ];
    assert_metrics(&lb, &want, "ringlb_udp");
}
