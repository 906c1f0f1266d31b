//! Route `mirror`: copies of a share of the requests go to a shadow
//! upstream; the client is answered by the route's upstream alone, never
//! waits for the shadow and never sees it fail.

use std::{sync::atomic::Ordering, time::Duration};

use crate::common::{admin::*, cfg::Cfg, http::*, *};

fn mirrored(lb: &Ringlb, name: &str) -> f64 {
    scrape(lb)
        .get(name, &[("listener", "web"), ("route", "*/m/")])
        .unwrap_or(-1.0)
}

fn cfg(main: &HttpBackend, shadow: std::net::SocketAddr, mirror: &str) -> Cfg {
    Cfg::http_proxy(&[main.addr])
        .admin()
        .route(&format!(
            "path_prefix = \"/m/\"\nupstream = \"app\"\nmirror = {{ upstream = \"shadow\"{mirror} }}"
        ))
        .upstream("shadow", &[shadow])
}

#[test]
fn every_request_is_copied_to_the_shadow_and_answered_by_the_main_upstream() {
    let main = HttpBackend::named("main");
    let shadow = HttpBackend::named("shadow");
    let lb = Ringlb::start(cfg(&main, shadow.addr, ""));
    let mut c = Client::connect(lb.addr("web"));
    for i in 0..10 {
        c.send(format!("GET /m/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = c.response();
        assert_eq!(r.text(), format!("main /m/{i}"));
    }
    c.send(b"POST /m/form HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(c.response().text(), "main /m/form");
    assert!(
        wait_until(Duration::from_secs(5), || shadow.reqs.lock().unwrap().len()
            == 11),
        "the shadow got {} of 11",
        shadow.reqs.lock().unwrap().len()
    );
    let reqs = shadow.reqs.lock().unwrap().clone();
    // Each copy is its own task, on its own pooled connection when one is
    // busy: they may arrive in any order, but each exactly once.
    let mut got: Vec<&str> = reqs.iter().map(|q| q.target.as_str()).collect();
    got.sort_unstable();
    let mut want: Vec<String> = (0..10).map(|i| format!("/m/{i}")).collect();
    want.push("/m/form".into());
    want.sort_unstable();
    assert_eq!(got, want);
    let post = reqs
        .iter()
        .find(|q| q.method == "POST")
        .expect("the POST copy");
    assert_eq!(post.body, b"hello");
    assert_eq!(post.header("x-forwarded-for"), Some("127.0.0.1"));
    // Copies of a keep-alive client share pooled shadow connections.
    assert!(
        shadow.server.conns() < 11,
        "{} shadow connections",
        shadow.server.conns()
    );
    let want = vec![(
        "ringlb_http_mirrored_total",
        lbl(&[("listener", "web"), ("route", "*/m/")]),
        11.0,
    )];
    assert_metrics(&lb, &want, "ringlb_http_mirror");
    // Another route is not copied.
    assert_eq!(get(lb.addr("web"), "t", "/other").text(), "main /other");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(shadow.reqs.lock().unwrap().len(), 11);
}

#[test]
fn a_slow_or_dead_shadow_never_holds_or_fails_the_client() {
    let main = HttpBackend::named("main");
    let slow = HttpBackend::with(|r| Reply::ok(r, "late").delayed(Duration::from_secs(5)));
    let lb = Ringlb::start(cfg(&main, slow.addr, ""));
    let mut c = Client::connect(lb.addr("web"));
    for i in 0..5 {
        c.send(format!("GET /m/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(c.response().status, 200);
    }
    // All five answered while no copy has had its (5 s late) answer.
    assert_eq!(mirrored(&lb, "ringlb_http_mirrored_total"), 0.0);
    assert!(wait_until(Duration::from_secs(3), || slow
        .heads
        .load(Ordering::SeqCst)
        == 5));

    let dead = refused_addr();
    let lb = Ringlb::start(cfg(&main, dead, ""));
    for i in 0..4 {
        assert_eq!(get(lb.addr("web"), "t", &format!("/m/{i}")).status, 200);
    }
    assert!(
        wait_until(Duration::from_secs(5), || mirrored(
            &lb,
            "ringlb_http_mirror_failed_total"
        ) == 4.0),
        "failed copies: {}",
        mirrored(&lb, "ringlb_http_mirror_failed_total")
    );
}

#[test]
fn a_share_copies_that_share_and_big_bodies_are_skipped() {
    let main = HttpBackend::named("main");
    let shadow = HttpBackend::named("shadow");
    let lb = Ringlb::start(cfg(&main, shadow.addr, ", share = 0.25"));
    let mut c = Client::connect(lb.addr("web"));
    for i in 0..40 {
        c.send(format!("GET /m/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(c.response().status, 200);
    }
    assert!(wait_until(Duration::from_secs(5), || shadow
        .reqs
        .lock()
        .unwrap()
        .len()
        == 10));
    // A body larger than what goes out with the head is not held: not copied.
    let lb = Ringlb::start(cfg(&main, shadow.addr, ""));
    let body = vec![b'x'; 100 * 1024];
    let mut c = Client::connect(lb.addr("web"));
    c.send(
        format!(
            "POST /m/big HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    c.send(&body);
    assert_eq!(c.response().text(), "main /m/big");
    assert!(wait_until(Duration::from_secs(5), || mirrored(
        &lb,
        "ringlb_http_mirror_skipped_total"
    ) == 1.0));
    assert_eq!(mirrored(&lb, "ringlb_http_mirrored_total"), 0.0);
}

#[test]
fn bad_mirror_tables_are_refused_by_check() {
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (route, what) in [
        (
            "upstream = \"app\"\nmirror = { upstream = \"nope\" }",
            "no [upstream.nope]",
        ),
        (
            "upstream = \"app\"\nmirror = { upstream = \"app\" }",
            "route's own upstream",
        ),
        (
            "upstream = \"app\"\nmirror = { upstream = \"shadow\", share = 0.0 }",
            "within (0, 1]",
        ),
        (
            "return = 204\nmirror = { upstream = \"shadow\" }",
            "answers itself",
        ),
    ] {
        let cfg = Cfg::http_proxy(&[up])
            .route(&format!("path_prefix = \"/a/\"\n{route}"))
            .upstream("shadow", &[up]);
        let (code, _out, err) = check_config(&cfg);
        assert_ne!(code, 0, "{route} accepted");
        assert!(err.contains(what), "{route}: {err}");
    }
}
