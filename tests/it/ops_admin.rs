//! The admin listener through the real binary: /healthz, /readyz following
//! health checks and circuits, /status listing listeners, upstreams and
//! backends, no listener without an [admin] table.

use std::{io::Write, thread, time::Duration};

use crate::common::{
    admin::*,
    cfg::HEALTH_FAST,
    http::*,
    json::{field, find_by, Json},
    *,
};

/// Issue 10: stalled admin clients (a request head that never ends, more
/// of them than a sequential server could wait out in time) do not hold
/// `/healthz` up for a probe that gives up after a second.
#[test]
fn stalled_admin_clients_do_not_hold_up_healthz() {
    let echo = EchoBackend::start();
    let lb = Ringlb::start(Cfg::tcp_proxy(&[echo.addr]).admin());
    let admin = lb.admin_addr();
    let stalled: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let mut s = connect(admin);
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a").unwrap();
            s
        })
        .collect();
    thread::sleep(Duration::from_millis(100));
    for _ in 0..3 {
        let mut c = Client::connect(admin);
        c.w.s
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        c.send(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n");
        let r = c.try_response(false).expect("healthz within a second");
        assert_eq!(r.status, 200);
    }
    drop(stalled);
}

#[test]
fn admin_healthz_and_unknown_paths() {
    let echo = EchoBackend::start();
    let lb = Ringlb::start(Cfg::tcp_proxy(&[echo.addr]).admin());
    let admin = lb.admin_addr();
    assert!(admin.ip().is_loopback(), "{admin}");
    assert_ne!(admin, lb.addr("l"));

    let r = admin_get(&lb, "/healthz");
    assert_eq!(r.status, 200, "{}", r.head.text());
    assert_eq!(r.text(), "ok\n");
    assert!(
        r.connection("close"),
        "no Connection: close\n{}",
        r.head.text()
    );
    // And it does close.
    let mut c = Client::connect(admin);
    c.send(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n");
    assert_eq!(c.response().status, 200);
    assert!(c.closed(), "admin connection left open");

    for path in ["/", "/nope", "/metricsx", "/healthz/extra"] {
        let r = admin_get(&lb, path);
        assert_eq!(r.status, 404, "{path}: {}", r.head.text());
    }
    // The proxy listener is unaffected.
    let mut s = connect(lb.addr("l"));
    assert_eq!(echo_roundtrip(&mut s, b"ping"), b"ping");
}

#[test]
fn no_admin_table_no_admin_listener() {
    let echo = EchoBackend::start();
    let lb = Ringlb::start(Cfg::tcp_proxy(&[echo.addr]));
    thread::sleep(Duration::from_millis(200));
    assert!(
        !lb.log_text().contains("admin listening on"),
        "{}",
        lb.log_text()
    );
}

#[test]
fn readyz_follows_active_health_checks() {
    let b = HttpBackend::named("only");
    let lb = Ringlb::start(
        Cfg::new(2)
            .admin()
            .http("web", "app")
            .listener_with("connect_timeout = \"1s\"")
            .upstream("app", &[b.addr])
            .upstream_with(HEALTH_FAST),
    );
    let r = admin_get(&lb, "/readyz");
    assert_eq!((r.status, r.text().as_str()), (200, "ready\n"));
    assert_eq!(get(lb.addr("web"), "t", "/a").status, 200);

    b.kill();
    let mut last = None;
    let down = wait_until(Duration::from_secs(5), || {
        let r = admin_get(&lb, "/readyz");
        let done = r.status == 503;
        last = Some(r);
        done
    });
    let r = last.unwrap();
    assert!(
        down,
        "readyz stayed {} after the only backend died",
        r.status
    );
    let body = r.text();
    assert!(
        body.ends_with('\n') && body.trim_end().lines().count() == 1 && !body.trim().is_empty(),
        "want a one-line reason, got {body:?}"
    );
    let st = status(&lb);
    let be = status_backend(&st, "app", b.addr);
    assert_eq!(field(&be, "health").str(), Some("down"), "{be}");
    assert_eq!(field(&be, "up").bool(), Some(false), "{be}");
    let bl = lbl(&[("upstream", "app"), ("backend", &b.addr.to_string())]);
    let m = scrape(&lb);
    assert_eq!(
        mismatches(&m, &[("ringlb_backend_up", bl.clone(), 0.0)]),
        Vec::<String>::new()
    );

    b.restart();
    assert!(
        wait_until(Duration::from_secs(5), || admin_get(&lb, "/readyz").status
            == 200),
        "readyz not ready again after the backend came back"
    );
    assert_eq!(admin_get(&lb, "/readyz").text(), "ready\n");
    let be = status_backend(&status(&lb), "app", b.addr);
    assert_eq!(field(&be, "health").str(), Some("up"), "{be}");
    assert_eq!(field(&be, "up").bool(), Some(true), "{be}");
    assert_eq!(get(lb.addr("web"), "t", "/b").status, 200);

    let mut down = bl.clone();
    down.push(("to".into(), "down".into()));
    let mut up = bl.clone();
    up.push(("to".into(), "up".into()));
    let want = [
        ("ringlb_backend_up", bl, 1.0),
        ("ringlb_health_transitions_total", down, 1.0),
        ("ringlb_health_transitions_total", up, 1.0),
    ];
    let m = assert_metrics(&lb, &want, "ringlb_");
    assert_schema(&m);
}

#[test]
fn readyz_503_when_every_circuit_is_open() {
    // Connect failures count for passive ejection: 2 per backend open both
    // circuits (no active checks), so no backend of "app" is available.
    let (a, b) = (refused_addr(), refused_addr());
    let lb = Ringlb::start(
        Cfg::new(1)
            .admin()
            .http("l", "app")
            .listener_with("connect_timeout = \"1s\"")
            .upstream("app", &[a, b])
            .upstream_with(
                "eject = { failures = 2, cooldown = \"10s\", max_ejected_percent = 100 }",
            ),
    );
    assert_eq!(admin_get(&lb, "/readyz").status, 200);
    let statuses: Vec<u16> = (0..6)
        .map(|i| get(lb.addr("l"), "t", &format!("/{i}")).status)
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 502 || *s == 503),
        "{statuses:?}"
    );
    assert!(lb.wait_log("circuit OPEN"), "{}", lb.log_text());
    let r = admin_get(&lb, "/readyz");
    assert_eq!(r.status, 503, "{}", r.text());
    let st = status(&lb);
    for addr in [a, b] {
        let be = status_backend(&st, "app", addr);
        assert_eq!(field(&be, "circuit").str(), Some("open"), "{be}");
        assert_eq!(field(&be, "up").bool(), Some(false), "{be}");
        // No active checks: health itself is not down.
        assert_eq!(field(&be, "health").str(), Some("up"), "{be}");
    }
    let m = scrape(&lb);
    assert_schema(&m);
    for addr in [a, b] {
        let f = m.sum(
            "ringlb_backend_failures_total",
            &[("upstream", "app"), ("backend", &addr.to_string())],
        );
        assert!(
            f >= 2.0,
            "{addr}: {f} failures\n{}",
            m.dump("ringlb_backend")
        );
    }
    // 5xx: whatever the route label of a listener-level upstream is.
    let m = scrape_until(&lb, |m| {
        m.sum(
            "ringlb_http_requests_total",
            &[("listener", "l"), ("class", "5xx")],
        ) == 6.0
    });
    assert_eq!(
        m.sum(
            "ringlb_http_requests_total",
            &[("listener", "l"), ("class", "5xx")]
        ),
        6.0,
        "\n{}",
        m.dump("ringlb_http")
    );
}

#[test]
fn status_lists_listeners_upstreams_and_backends() {
    let (b1, b2) = (HttpBackend::start(), HttpBackend::start());
    let echo = EchoBackend::start();
    let lb = Ringlb::start(
        Cfg::new(2)
            .admin()
            .http("web", "app")
            .listener_with("max_connections = 200")
            .tcp("raw", "echo")
            .listener_with("listen = \"127.0.0.2:0\"\nmax_connections = 50")
            .upstream("app", &[b1.addr])
            .server(b2.addr, "backup = true")
            .upstream("echo", &[echo.addr]),
    );
    let st = status(&lb);
    assert_eq!(
        field(&st, "version").str(),
        Some(env!("CARGO_PKG_VERSION")),
        "{st}"
    );
    assert_eq!(field(&st, "workers").uint(), Some(2), "{st}");
    let listeners = field(&st, "listeners");
    assert_eq!(listeners.arr().map(<[Json]>::len), Some(2), "{st}");
    for (name, mode, max) in [("web", "http", 200), ("raw", "tcp", 50)] {
        let li = find_by(listeners, "name", name);
        assert_eq!(field(li, "mode").str(), Some(mode), "{li}");
        assert_eq!(
            field(li, "listen").str(),
            Some(lb.addr(name).to_string().as_str()),
            "{li}"
        );
        assert_eq!(field(li, "active").uint(), Some(0), "{li}");
        assert_eq!(field(li, "max_connections").uint(), Some(max), "{li}");
    }
    let ups = field(&st, "upstreams");
    assert_eq!(ups.arr().map(<[Json]>::len), Some(2), "{st}");
    assert_eq!(
        field(find_by(ups, "name", "app"), "backends")
            .arr()
            .map(<[Json]>::len),
        Some(2)
    );
    for (up, addr, backup) in [
        ("app", b1.addr, false),
        ("app", b2.addr, true),
        ("echo", echo.addr, false),
    ] {
        let be = status_backend(&st, up, addr);
        assert_eq!(field(&be, "up").bool(), Some(true), "{be}");
        assert_eq!(field(&be, "health").str(), Some("up"), "{be}");
        assert_eq!(field(&be, "circuit").str(), Some("closed"), "{be}");
        assert_eq!(field(&be, "active").uint(), Some(0), "{be}");
        assert_eq!(field(&be, "backup").bool(), Some(backup), "{be}");
    }

    // One open tcp connection: active 1 on the listener and the backend.
    let mut s = connect(lb.addr("raw"));
    assert_eq!(echo_roundtrip(&mut s, b"hold"), b"hold");
    let active = |st: &Json| {
        (
            field(find_by(field(st, "listeners"), "name", "raw"), "active").uint(),
            field(&status_backend(st, "echo", echo.addr), "active").uint(),
        )
    };
    let mut seen = None;
    let ok = wait_until(Duration::from_secs(3), || {
        seen = Some(active(&status(&lb)));
        seen == Some((Some(1), Some(1)))
    });
    assert!(
        ok,
        "(listener, backend) active with one connection: {seen:?}"
    );
    drop(s);
    let ok = wait_until(Duration::from_secs(3), || {
        seen = Some(active(&status(&lb)));
        seen == Some((Some(0), Some(0)))
    });
    assert!(ok, "(listener, backend) active after it closed: {seen:?}");
}
