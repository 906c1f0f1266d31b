//! Route retry policies (`retry = { on, tries, budget }`): a failure the
//! policy lists sends an idempotent, replayable request to another backend
//! (HTTP/1.1 and HTTP/2 clients alike); anything else gets the failure;
//! the budget keeps retries a share of the requests during an outage.

use std::{process::Command, sync::atomic::Ordering};

use crate::common::{admin::*, cfg::Cfg, http::*, *};

fn busy() -> HttpBackend {
    HttpBackend::with(|r| Reply::new(r, 503, &[], b"busy"))
}

fn gets(b: &HttpBackend) -> usize {
    b.reqs
        .lock()
        .unwrap()
        .iter()
        .filter(|q| q.method == "GET")
        .count()
}

fn route_retries(lb: &Ringlb, name: &str) -> f64 {
    scrape(lb)
        .get(name, &[("listener", "web"), ("route", "*/api/")])
        .unwrap_or(-1.0)
}

#[test]
fn a_listed_503_goes_to_another_backend_for_idempotent_requests_only() {
    let bad = busy();
    let good = HttpBackend::named("good");
    let lb = Ringlb::start(
        Cfg::http_proxy(&[bad.addr, good.addr])
            .admin()
            .upstream_with("eject = { failures = 0 }")
            .route("path_prefix = \"/api/\"\nupstream = \"app\"\nretry = { on = [\"503\"], tries = 2, budget = 1.0 }"),
    );
    let web = lb.addr("web");
    for i in 0..10 {
        let r = get(web, "t", &format!("/api/{i}"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().starts_with("good"));
    }
    // HTTP/2 clients too.
    for i in 0..4 {
        let out = Command::new("curl")
            .args([
                "-s",
                "--http2-prior-knowledge",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(format!("http://{web}/api/h2-{i}"))
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    }
    let retried = gets(&bad);
    assert!(
        retried >= 5,
        "round robin sent {retried} GETs to the busy backend"
    );
    let want = vec![(
        "ringlb_http_retries_total",
        lbl(&[("listener", "web"), ("route", "*/api/")]),
        retried as f64,
    )];
    assert_metrics(&lb, &want, "ringlb_http_retries");
    // A POST with a body is not replayed: the busy backend's 503 comes back.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let mut c = Client::connect(web);
        c.send(b"POST /api/p HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi");
        statuses.push(c.response().status);
    }
    assert!(
        statuses.contains(&503) && statuses.contains(&200),
        "{statuses:?}"
    );
    // Without a policy (the listener's catch-all route) a 503 is the answer.
    let plain: Vec<u16> = (0..4).map(|_| get(web, "t", "/other").status).collect();
    assert!(plain.contains(&503), "{plain:?}");
}

#[test]
fn a_reset_before_the_response_is_retried_when_listed() {
    let resetting = HttpBackend::with(|_| Reply::raw(Vec::new()).then(Then::Close));
    let good = HttpBackend::named("good");
    let lb = Ringlb::start(
        Cfg::http_proxy(&[resetting.addr, good.addr])
            .upstream_with("eject = { failures = 0 }")
            .route("path_prefix = \"/api/\"\nupstream = \"app\"\nretry = { on = [\"connect\", \"reset\"] }")
            .route("path_prefix = \"/bare/\"\nupstream = \"app\"\nretry = { on = [\"connect\"] }"),
    );
    let web = lb.addr("web");
    for i in 0..6 {
        let r = get(web, "t", &format!("/api/{i}"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(resetting.heads.load(Ordering::SeqCst) >= 3);
    // Not listed: the reset is a 502.
    let bare: Vec<u16> = (0..4)
        .map(|i| get(web, "t", &format!("/bare/{i}")).status)
        .collect();
    assert!(bare.contains(&502), "{bare:?}");
}

#[test]
fn the_budget_keeps_retries_a_share_of_requests_in_an_outage() {
    let (a, b) = (busy(), busy());
    let lb = Ringlb::start(
        Cfg::http_proxy(&[a.addr, b.addr])
            .admin()
            .upstream_with("eject = { failures = 0 }")
            .route("path_prefix = \"/api/\"\nupstream = \"app\"\nretry = { on = [\"503\"], tries = 2, budget = 0.1 }"),
    );
    let web = lb.addr("web");
    for i in 0..100 {
        // The last try's answer goes to the client.
        assert_eq!(get(web, "t", &format!("/api/{i}")).status, 503);
    }
    let retries = route_retries(&lb, "ringlb_http_retries_total");
    let refused = route_retries(&lb, "ringlb_http_retries_refused_total");
    // Ten in hand, then one per ten requests: about 20, never 100.
    assert!((15.0..=21.0).contains(&retries), "retries {retries}");
    assert_eq!(
        retries + refused,
        100.0,
        "retries {retries}, refused {refused}"
    );
    assert_eq!(gets(&a) + gets(&b), 100 + retries as usize);
}

#[test]
fn bad_retry_tables_are_refused_by_check() {
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (retry, what) in [
        ("retry = { on = [\"500\"] }", "not a failure ringlb retries"),
        ("retry = { tries = 0 }", "tries"),
        ("retry = { budget = 1.5 }", "within 0..=1"),
        ("retry = { attempts = 2 }", "unknown field"),
    ] {
        let cfg = Cfg::http_proxy(&[up]).route(&format!(
            "path_prefix = \"/a/\"\nupstream = \"app\"\n{retry}"
        ));
        let (code, _out, err) = check_config(&cfg);
        assert_ne!(code, 0, "{retry} accepted");
        assert!(err.contains(what), "{retry}: {err}");
    }
}

#[test]
fn an_h2_upstream_follows_the_route_policy_for_connect_failures() {
    use crate::common::{
        json::Json,
        py::{grpc_client, GrpcServer},
    };
    let code = |j: &Json| j.get("code").and_then(Json::str).unwrap_or("?").to_string();
    let mut dead = GrpcServer::start("gone");
    let gone = dead.addr;
    dead.kill();
    let live = GrpcServer::start("live");
    // Smooth weighted round robin picks the heavy (dead) backend first.
    let lb = Ringlb::start(
        Cfg::new(1)
            .http("web", "")
            .route("path_prefix = \"/ringlb.test.T/Unary\"\nupstream = \"g\"\nretry = { on = [\"reset\"] }")
            .route("path_prefix = \"/ringlb.test.T/Echo\"\nupstream = \"g\"")
            .upstream("g", &[])
            .upstream_with("protocol = \"h2c\"\nbalance = \"weighted_round_robin\"")
            .server(gone, "weight = 100")
            .server(live.addr, "weight = 1"),
    );
    let t = lb.addr("web");
    // A policy without `connect`: the failed connect is the answer.
    let j = grpc_client(t, "unary", &["x"]);
    assert_eq!(code(&j), "UNAVAILABLE", "{j:?}");
    // No policy: connect failures go to another backend, as ever.
    let j = grpc_client(t, "echo", &["10"]);
    assert_eq!(code(&j), "OK", "{j:?}");
}
