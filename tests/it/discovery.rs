//! Service discovery (issue 13, first part): backends from a watched file
//! and from DNS names, changed at run time through the backend-set seam,
//! with the safety rules (a failing source keeps the last set, no empty
//! set unless allowed, a panic threshold) visible in /status, /readyz and
//! the metrics.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::common::{
    admin::{admin_get, scrape, status},
    cfg::Cfg,
    http::{get, HttpBackend, Reply},
    json::Json,
    *,
};

use crate::common::{list, put};

/// Who answered `n` requests (HttpBackend::named bodies start with the name).
fn served_by(addr: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = get(addr, "t", "/");
        assert_eq!(r.status, 200, "{}", r.text());
        let who = r.text().split(' ').next().unwrap_or("").to_string();
        *seen.entry(who).or_insert(0) += 1;
    }
    seen
}

fn discovery_cfg(file: &std::path::Path, extra: &str) -> Cfg {
    Cfg::new(1)
        .admin()
        .http("web", "app")
        .listener_with("connect_timeout = \"1s\"")
        .upstream("app", &[])
        .upstream_with(&format!(
            "discovery = {{ file = \"{}\"{extra} }}",
            file.display()
        ))
}

fn upstream_discovery(lb: &Ringlb) -> Json {
    let st = status(lb);
    st.get("upstreams")
        .and_then(Json::arr)
        .and_then(|u| u.first())
        .and_then(|u| u.get("discovery"))
        .cloned()
        .expect("a discovery object in /status")
}

#[test]
fn a_watched_file_adds_and_removes_backends_at_run_time() {
    let a = HttpBackend::named("a");
    let b = HttpBackend::named("b");
    let dir = TempDir::new("disc-file");
    let file = dir.path("app.servers");
    put(&file, list(&[a.addr]));
    let lb = Ringlb::start(discovery_cfg(&file, ""));
    let web = lb.addr("web");
    assert_eq!(served_by(web, 4).get("a"), Some(&4));
    // Add b: it takes requests shortly after the file changes.
    let t = Instant::now();
    put(&file, list(&[a.addr, b.addr]));
    assert!(
        wait_until(Duration::from_secs(3), || served_by(web, 2)
            .contains_key("b")),
        "b never got a request"
    );
    eprintln!(
        "file change to first request on the new backend: {:?}",
        t.elapsed()
    );
    // Remove a, with a request in flight on it: that one finishes.
    let slow = HttpBackend::with(|r| Reply::ok(r, "slow").delayed(Duration::from_millis(800)));
    put(&file, list(&[slow.addr, b.addr]));
    assert!(wait_until(Duration::from_secs(3), || !served_by(web, 4)
        .contains_key("a")));
    let d = upstream_discovery(&lb);
    assert_eq!(d.get("members").and_then(Json::uint), Some(2), "{d:?}");
    assert!(d.get("error").is_some_and(Json::is_null), "{d:?}");
    assert!(
        d.get("updates").and_then(Json::uint).unwrap_or(0) >= 2,
        "{d:?}"
    );
    let m = scrape(&lb);
    assert_eq!(
        m.get("ringlb_discovery_members", &[("upstream", "app")]),
        Some(2.0)
    );
    assert_eq!(
        m.get("ringlb_discovery_failing", &[("upstream", "app")]),
        Some(0.0)
    );
    // An in-flight request on a backend that leaves the file completes.
    let web2 = web;
    let inflight = std::thread::spawn(move || {
        (0..4)
            .map(|_| get(web2, "t", "/"))
            .filter(|r| r.text().starts_with("slow"))
            .map(|r| r.status)
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(300));
    put(&file, list(&[b.addr]));
    let statuses = inflight.join().unwrap();
    assert!(
        !statuses.is_empty() && statuses.iter().all(|&s| s == 200),
        "{statuses:?}"
    );
}

#[test]
fn a_broken_or_empty_source_keeps_the_last_set_and_says_so() {
    let a = HttpBackend::named("a");
    let b = HttpBackend::named("b");
    let c = HttpBackend::named("c");
    let d_ = HttpBackend::named("d");
    let dir = TempDir::new("disc-safety");
    let file = dir.path("app.servers");
    put(&file, list(&[a.addr, b.addr, c.addr, d_.addr]));
    let lb = Ringlb::start(discovery_cfg(&file, ", max_remove = 0.5"));
    let web = lb.addr("web");
    let failing = |lb: &Ringlb| scrape(lb).get("ringlb_discovery_failing", &[("upstream", "app")]);
    // Malformed: the last set stays, the error is shown everywhere.
    put(&file, "127.0.0.1:1 weight=lots\n");
    assert!(wait_until(Duration::from_secs(3), || failing(&lb) == Some(1.0)));
    let d = upstream_discovery(&lb);
    let err = d.get("error").and_then(Json::str).unwrap_or("").to_string();
    assert!(err.contains("line 1") && err.contains("weight"), "{d:?}");
    let ready = admin_get(&lb, "/readyz");
    assert_eq!(ready.status, 200);
    assert!(
        ready.text().contains("keeps its last set"),
        "{}",
        ready.text()
    );
    assert_eq!(served_by(web, 8).len(), 4);
    // Empty: refused without allow_empty.
    put(&file, "# nothing\n");
    assert!(wait_until(Duration::from_secs(3), || {
        upstream_discovery(&lb)
            .get("error")
            .and_then(Json::str)
            .is_some_and(|e| e.contains("lists no backend"))
    }));
    assert_eq!(served_by(web, 8).len(), 4);
    // Three of four gone at once: over max_remove = 0.5, refused.
    put(&file, list(&[a.addr]));
    assert!(wait_until(Duration::from_secs(3), || {
        upstream_discovery(&lb)
            .get("error")
            .and_then(Json::str)
            .is_some_and(|e| e.contains("max_remove"))
    }));
    assert_eq!(served_by(web, 8).len(), 4);
    assert!(scrape(&lb).get("ringlb_discovery_refused_total", &[("upstream", "app")]) >= Some(2.0));
    // Two of four: allowed; the error clears.
    put(&file, list(&[a.addr, b.addr]));
    assert!(wait_until(Duration::from_secs(3), || failing(&lb) == Some(0.0)));
    let seen = served_by(web, 8);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(admin_get(&lb, "/readyz").text(), "ready\n");
}

/// A ringlb whose file source listed a, then b, and is then gone (a
/// registry that is down): it keeps serving b and says the source fails.
fn serving_b_with_the_source_gone(
    tag: &str,
) -> (
    HttpBackend,
    HttpBackend,
    TempDir,
    std::path::PathBuf,
    Ringlb,
) {
    let a = HttpBackend::named("a");
    let b = HttpBackend::named("b");
    let dir = TempDir::new(tag);
    let file = dir.path("app.servers");
    put(&file, list(&[a.addr]));
    let lb = Ringlb::start(discovery_cfg(&file, ""));
    put(&file, list(&[b.addr]));
    assert!(wait_until(Duration::from_secs(3), || served_by(
        lb.addr("web"),
        2
    )
    .contains_key("b")));
    std::fs::remove_file(&file).unwrap();
    assert!(wait_until(Duration::from_secs(3), || {
        upstream_discovery(&lb)
            .get("error")
            .is_some_and(|e| !e.is_null())
    }));
    (a, b, dir, file, lb)
}

#[test]
fn a_reload_keeps_the_discovered_set_without_a_gap() {
    let s = HttpBackend::named("s");
    let (a, _b, _dir, file, lb) = serving_b_with_the_source_gone("disc-reload");
    // A new generation (a listener key changed) starts from the running
    // set: the source is not asked, so its being down neither fails nor
    // delays the reload.
    lb.rewrite(discovery_cfg(&file, "").listener_with("connect_timeout = \"2s\""));
    lb.signal("HUP");
    assert!(lb.wait_log("configuration reloaded"), "{}", lb.log_text());
    let seen = served_by(lb.addr("web"), 6);
    assert_eq!(seen.get("b"), Some(&6), "{seen:?}");
    // A reload that changes only the static servers (in place) adds them
    // beside the discovered set, which stays as it is.
    lb.rewrite(
        Cfg::new(1)
            .admin()
            .http("web", "app")
            .listener_with("connect_timeout = \"2s\"")
            .upstream("app", &[s.addr])
            .upstream_with(&format!("discovery = {{ file = \"{}\" }}", file.display())),
    );
    lb.signal("HUP");
    assert!(
        lb.wait_count("backends updated in place", 1, Duration::from_secs(5)),
        "{}",
        lb.log_text()
    );
    let seen = served_by(lb.addr("web"), 8);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.contains_key("s") && seen.contains_key("b"), "{seen:?}");
    // The source comes back: the discovery thread follows it again, and
    // the static server stays (it is not the source's to remove).
    put(&file, list(&[a.addr]));
    assert!(wait_until(Duration::from_secs(3), || {
        let seen = served_by(lb.addr("web"), 6);
        seen.contains_key("a") && seen.contains_key("s") && !seen.contains_key("b")
    }));
}

#[test]
fn a_binary_upgrade_starts_the_new_process_with_the_last_known_set() {
    let c = HttpBackend::named("c");
    // The source is down when the upgrade happens: the new process could
    // not load its config from it, but it starts with the handed-over set.
    let (_a, _b, _dir, file, mut lb) = serving_b_with_the_source_gone("disc-upgrade");
    let web = lb.addr("web");
    let pid = lb
        .upgrade()
        .unwrap_or_else(|| panic!("no upgrade: {}", lb.log_text()));
    // The old process drains and exits; the new one serves b.
    assert_eq!(
        lb.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        lb.log_text()
    );
    let seen = served_by(web, 6);
    // Its own source, once back, is followed.
    put(&file, list(&[c.addr]));
    let follows = wait_until(Duration::from_secs(3), || {
        served_by(web, 2).contains_key("c")
    });
    signal(pid, "TERM");
    assert_eq!(seen.get("b"), Some(&6), "{seen:?}\n{}", lb.log_text());
    assert!(follows, "the new process does not follow the source");
}

#[test]
fn a_growing_discovered_set_is_counted_in_the_fd_budget() {
    // 2000 pooled connections per backend: each discovered backend takes
    // 2000 fds of the budget, and the listener's cap follows.
    let backends: Vec<HttpBackend> = (0..4).map(|_| HttpBackend::named("x")).collect();
    let dir = TempDir::new("disc-budget");
    let file = dir.path("app.servers");
    put(&file, list(&[backends[0].addr]));
    let lb = Ringlb::start(
        Cfg::new(1)
            .admin()
            .http("web", "app")
            .upstream("app", &[])
            .upstream_with(&format!(
                "keepalive = 2000\ndiscovery = {{ file = \"{}\" }}",
                file.display()
            )),
    );
    let cap = |lb: &Ringlb| {
        scrape(lb)
            .get("ringlb_listener_max_connections", &[("listener", "web")])
            .unwrap_or(0.0)
    };
    let before = cap(&lb);
    let all: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    put(&file, list(&all));
    assert!(wait_until(Duration::from_secs(3), || cap(&lb) < before));
    let after = cap(&lb);
    // Three more backends: 6000 more pooled fds, 3000 fewer connections.
    assert!(
        (before - after - 3000.0).abs() < 1.0,
        "cap {before} -> {after}\n{}",
        lb.log_text()
    );
    assert!(lb
        .log_text()
        .contains("fd budget: the upstreams now have 4 backends"));
}

#[test]
fn dns_names_are_resolved_off_the_workers() {
    let a = HttpBackend::named("a");
    let lb = Ringlb::start(
        Cfg::new(1)
            .admin()
            .http("web", "app")
            .listener_with("connect_timeout = \"1s\"")
            .upstream("app", &[])
            .upstream_with(&format!(
                "discovery = {{ dns = \"localhost:{}\", interval = \"200ms\" }}",
                a.addr.port()
            )),
    );
    // localhost may resolve to ::1 too, where nothing listens: the retry
    // on the next backend covers it.
    assert_eq!(served_by(lb.addr("web"), 4).get("a"), Some(&4));
    let d = upstream_discovery(&lb);
    assert_eq!(
        d.get("source").and_then(Json::str),
        Some(format!("dns localhost:{}", a.addr.port()).as_str())
    );
    assert!(wait_until(Duration::from_secs(3), || upstream_discovery(
        &lb
    )
    .get("updates")
    .and_then(Json::uint)
    .unwrap_or(0)
        >= 2));
}

#[test]
fn check_refuses_bad_discovery_tables_and_names_the_file() {
    let dir = TempDir::new("disc-check");
    let missing = dir.path("nope.servers");
    let cases: Vec<(String, &str)> = vec![
        (
            format!("discovery = {{ file = \"{}\" }}", missing.display()),
            "nope.servers",
        ),
        (
            format!(
                "discovery = {{ file = \"{}\", dns = \"x:1\" }}",
                missing.display()
            ),
            "not both",
        ),
        ("discovery = { dns = \"localhost\" }".into(), "needs a port"),
        (
            "discovery = { dns = \"localhost:80\", kind = \"mx\" }".into(),
            "expected one of",
        ),
        (
            "discovery = { zookeeper = \"127.0.0.1:2181\" }".into(),
            "missing: the znode",
        ),
        (
            "discovery = { dns = \"localhost:80\", max_remove = 2.0 }".into(),
            "max_remove",
        ),
    ];
    for (keys, want) in &cases {
        let (rc, _, err) = check_config(Cfg::http_proxy(&[]).upstream_with(keys));
        assert_eq!(rc, 2, "{keys}: {err}");
        assert!(err.contains(want), "{keys}: {err}");
    }
    // An ensemble that does not answer at load: an error naming it.
    let (rc, _, err) = check_config(Cfg::http_proxy(&[]).upstream_with(&format!(
        "discovery = {{ zookeeper = \"{}\", path = \"/s\" }}",
        refused_addr()
    )));
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("zookeeper"), "{err}");
    // allow_empty: a missing file starts with no backend.
    let (rc, _, err) = check_config(Cfg::http_proxy(&[]).upstream_with(&format!(
        "discovery = {{ file = \"{}\", allow_empty = true }}",
        missing.display()
    )));
    assert_eq!(rc, 0, "{err}");
    // [register]: the ensemble is needed, the name must be a node name.
    let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (table, want) in [
        ("[register]\npath = \"/f\"", "register.zookeeper: missing"),
        (
            "[register]\nzookeeper = \"127.0.0.1:2181\"",
            "register.path: missing",
        ),
        (
            "[register]\nzookeeper = \"127.0.0.1:2181\"\npath = \"/f\"\nname = \"a/b\"",
            "register.name",
        ),
        (
            "[register]\nzookeeper = \"127.0.0.1:2181\"\npath = \"/f\"\nport = 1",
            "unknown field",
        ),
    ] {
        let (rc, _, err) = check_config(Cfg::http_proxy(&[a]).table(table));
        assert_eq!(rc, 2, "{table}: {err}");
        assert!(err.contains(want), "{table}: {err}");
    }
}

/// Who answered one request (None: no backend, or an error).
fn who(addr: SocketAddr) -> Option<String> {
    let r = get(addr, "t", "/");
    (r.status == 200).then(|| r.text().split(' ').next().unwrap_or("").to_string())
}

fn zk_cfg(hosts: &str) -> Cfg {
    Cfg::new(1)
        .admin()
        .http("web", "app")
        .listener_with("connect_timeout = \"1s\"")
        .upstream("app", &[])
        .upstream_with(&format!(
            "discovery = {{ zookeeper = \"{hosts}\", path = \"/services/api\", session_timeout = \"2s\", allow_empty = true }}"
        ))
}

/// The scale-out test: three ringlb processes follow one ZooKeeper path.
/// A backend registered by its own session reaches all three; killed with
/// SIGKILL, it leaves all three when its session expires; with ZooKeeper
/// down they keep serving their last set, and resync when it is back.
#[test]
fn three_ringlb_processes_follow_one_zookeeper_registry() {
    let mut zk = crate::common::zk::ZooKeeper::start();
    zk.ensure("/services/api");
    let a = HttpBackend::named("a");
    let b = HttpBackend::named("b");
    let c = HttpBackend::named("c");
    let lbs: Vec<Ringlb> = (0..3).map(|_| Ringlb::start(zk_cfg(&zk.hosts()))).collect();
    let webs: Vec<SocketAddr> = lbs.iter().map(|l| l.addr("web")).collect();
    // Register a: every box routes to it; report how long each took.
    let t = Instant::now();
    let mut reg_a = zk.register("/services/api", &a.addr.to_string(), 1.0);
    let mut delays = Vec::new();
    for w in &webs {
        assert!(
            wait_until(Duration::from_secs(10), || who(*w).as_deref() == Some("a")),
            "a box never routed to the registered backend"
        );
        delays.push(t.elapsed());
    }
    eprintln!("registration to first request routed, per box: {delays:?}");
    let reg_b = zk.register(
        "/services/api",
        // JSON, as Curator-style registrars write it.
        &format!(
            "{{\"name\": \"api\", \"address\": \"127.0.0.1\", \"port\": {}, \"weight\": 2}}",
            b.addr.port()
        ),
        10.0,
    );
    for w in &webs {
        assert!(wait_until(Duration::from_secs(10), || served_by(*w, 6)
            .contains_key("b")));
    }
    // SIGKILL a's registrant: its session expires (1 s) and a leaves every box.
    let t = Instant::now();
    reg_a.kill();
    for w in &webs {
        assert!(
            wait_until(Duration::from_secs(10), || !served_by(*w, 6)
                .contains_key("a")),
            "a box still sends to a backend whose session expired"
        );
    }
    eprintln!(
        "registrant killed to gone from all three boxes: {:?}",
        t.elapsed()
    );
    // ZooKeeper down: the last set (b) is still served, and said so.
    zk.stop();
    std::thread::sleep(Duration::from_millis(500));
    for (l, w) in lbs.iter().zip(&webs) {
        assert_eq!(served_by(*w, 4).get("b"), Some(&4));
        assert!(wait_until(Duration::from_secs(10), || admin_get(
            l, "/readyz"
        )
        .text()
        .contains("keeps its last set")));
    }
    // A reload while ZooKeeper is down (a new generation: a listener key
    // changed) starts from the running set, without asking the registry.
    let t = Instant::now();
    lbs[0].rewrite(zk_cfg(&zk.hosts()).listener_with("connect_timeout = \"2s\""));
    lbs[0].signal("HUP");
    assert!(
        lbs[0].wait_log("configuration reloaded"),
        "{}",
        lbs[0].log_text()
    );
    eprintln!("reload with ZooKeeper down: {:?}", t.elapsed());
    assert_eq!(served_by(webs[0], 4).get("b"), Some(&4));
    // Back: the boxes reconnect and follow new registrations. (b's
    // session, 10 s, survives the outage of the server's own clock.)
    zk.restart();
    let _reg_c = zk.register("/services/api", &c.addr.to_string(), 10.0);
    for (l, w) in lbs.iter().zip(&webs) {
        assert!(
            wait_until(Duration::from_secs(15), || served_by(*w, 9)
                .contains_key("c")),
            "a box did not resync after ZooKeeper came back: {}\n{}",
            l.log_text(),
            admin_get(l, "/status").text()
        );
    }
    drop(reg_b);
}

#[test]
fn each_box_registers_itself_and_leaves_the_listing_when_it_stops() {
    let mut zk = crate::common::zk::ZooKeeper::start();
    let a = HttpBackend::named("a");
    let cfg = |name: &str| {
        Cfg::http_proxy(&[a.addr]).admin().table(&format!(
            "[register]\nzookeeper = \"{}\"\npath = \"/ringlb/fleet\"\nname = \"{name}\"\nsession_timeout = \"30s\"",
            zk.hosts()
        ))
    };
    let mut one = Ringlb::start(cfg("box1"));
    let two = Ringlb::start(cfg("box2"));
    let (p1, p2) = (
        format!("box1-{}-", one.pid()),
        format!("box2-{}-", two.pid()),
    );
    assert!(
        wait_until(Duration::from_secs(10), || zk
            .children("/ringlb/fleet")
            .len()
            == 2),
        "{:?}\n{}",
        zk.children("/ringlb/fleet"),
        one.log_text()
    );
    let fleet = zk.children("/ringlb/fleet");
    let node = |fleet: &std::collections::BTreeMap<String, String>, prefix: &str| {
        fleet.keys().find(|k| k.starts_with(prefix)).cloned()
    };
    let n1 = node(&fleet, &p1).expect("box1's node");
    let n2 = node(&fleet, &p2).expect("box2's node");
    let data = crate::common::json::parse(&fleet[&n1]).expect("JSON node data");
    assert_eq!(
        data.get("pid").and_then(Json::uint),
        Some(u64::from(one.pid()))
    );
    let listen = data
        .get("listeners")
        .and_then(Json::arr)
        .and_then(|l| l.first())
        .and_then(|l| l.get("listen"))
        .and_then(Json::str)
        .unwrap_or_default()
        .to_string();
    assert_eq!(listen, one.addr("web").to_string(), "{data:?}");
    // A stop deletes the node at once, not when the session (30 s) expires.
    one.signal("TERM");
    assert_eq!(one.wait_exit(Duration::from_secs(10)), Some(0));
    let left = zk.children("/ringlb/fleet");
    assert_eq!(left.keys().collect::<Vec<_>>(), vec![&n2], "{left:?}");
    // ZooKeeper restarted: the other box is (still, or again) listed.
    zk.restart();
    assert!(wait_until(Duration::from_secs(20), || node(
        &zk.children("/ringlb/fleet"),
        &p2
    )
    .is_some()));
    assert_eq!(served_by(two.addr("web"), 2).get("a"), Some(&2));
}

/// Backends churn every 200 ms (the file rewritten with a rotating subset)
/// under continuous http and tcp load through the same upstream: no
/// request fails, since every backend that leaves is still alive (its
/// in-flight requests finish; new ones go elsewhere).
#[test]
fn churning_backends_under_load_fail_no_request() {
    use std::sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    };
    let backs: Vec<HttpBackend> = (0..4)
        .map(|i| HttpBackend::named(&format!("b{i}")))
        .collect();
    let addrs: Vec<SocketAddr> = backs.iter().map(|b| b.addr).collect();
    let dir = TempDir::new("disc-churn");
    let file = dir.path("app.servers");
    put(&file, list(&addrs[..2]));
    let lb = Ringlb::start(
        discovery_cfg(&file, "")
            .tcp("raw", "app")
            .listener_with("listen = \"127.0.0.2:0\"\nconnect_timeout = \"1s\""),
    );
    let (web, raw) = (lb.addr("web"), lb.addr("raw"));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for k in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Half the clients through the http listener, half raw tcp.
                let r = if k % 2 == 0 {
                    get(web, "t", "/")
                } else {
                    crate::common::http::roundtrip(
                        raw,
                        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                    )
                };
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed
                        .lock()
                        .unwrap()
                        .push(format!("{} {}", r.status, r.text()));
                }
            }
        }));
    }
    // 15 changes, 200 ms apart: each list is two or three of the four.
    for i in 0..15 {
        std::thread::sleep(Duration::from_millis(200));
        let n = 2 + i % 2;
        let pick: Vec<SocketAddr> = (0..n).map(|j| addrs[(i + j) % 4]).collect();
        put(&file, list(&pick));
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let failed = failed.lock().unwrap();
    let d = upstream_discovery(&lb);
    eprintln!(
        "{} requests, {} failed, {:?} set updates",
        ok.load(Ordering::Relaxed),
        failed.len(),
        d.get("updates")
    );
    assert!(
        d.get("updates").and_then(Json::uint).unwrap_or(0) >= 10,
        "{d:?}"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "too little load: {}",
        ok.load(Ordering::Relaxed)
    );
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok.load(Ordering::Relaxed),
        &failed[..failed.len().min(5)]
    );
    // Every backend took requests at some point.
    for b in &backs {
        assert!(
            !b.reqs.lock().unwrap().is_empty(),
            "{} never got a request",
            b.addr
        );
    }
}

/// DNS against a real server (dnsmasq): SRV records give targets, ports
/// and weights; a changed record set is followed within interval + 1 s.
#[test]
fn srv_records_from_dnsmasq_are_followed() {
    let a = HttpBackend::named("a");
    let b = HttpBackend::named("b");
    let hosts = [("a.test", "127.0.0.1"), ("b.test", "127.0.0.1")];
    let mut dns = crate::common::dns::Dnsmasq::start(
        &hosts,
        &[("_api._tcp.test", "a.test", a.addr.port(), 0, 5)],
    );
    let lb = Ringlb::start(
        Cfg::new(1)
            .admin()
            .http("web", "app")
            .listener_with("connect_timeout = \"1s\"")
            .upstream("app", &[])
            .upstream_with(&format!(
                "discovery = {{ dns = \"_api._tcp.test\", kind = \"srv\", resolver = \"{}\", interval = \"1s\" }}",
                dns.addr()
            )),
    );
    let web = lb.addr("web");
    assert_eq!(served_by(web, 4).get("a"), Some(&4));
    // b joins with the same priority: both serve.
    let t = Instant::now();
    dns.set(
        &hosts,
        &[
            ("_api._tcp.test", "a.test", a.addr.port(), 0, 5),
            ("_api._tcp.test", "b.test", b.addr.port(), 0, 5),
        ],
    );
    assert!(wait_until(Duration::from_secs(3), || served_by(web, 4)
        .contains_key("b")));
    eprintln!(
        "SRV change to first request on the new target: {:?}",
        t.elapsed()
    );
    // a moves to a higher priority number: a backup, only b serves.
    dns.set(
        &hosts,
        &[
            ("_api._tcp.test", "a.test", a.addr.port(), 10, 5),
            ("_api._tcp.test", "b.test", b.addr.port(), 0, 5),
        ],
    );
    assert!(wait_until(Duration::from_secs(3), || {
        let seen = served_by(web, 6);
        seen.get("b") == Some(&6)
    }));
    let st = status(&lb);
    let backends = st
        .get("upstreams")
        .and_then(Json::arr)
        .and_then(|u| u.first())
        .and_then(|u| u.get("backends"))
        .cloned()
        .expect("backends");
    let backup_a = backends.arr().unwrap_or(&[]).iter().any(|x| {
        x.get("addr").and_then(Json::str) == Some(&a.addr.to_string())
            && x.get("backup").and_then(Json::bool) == Some(true)
    });
    assert!(backup_a, "{st:?}");
    // The server gone: the last set stays.
    dns.stop();
    assert!(wait_until(Duration::from_secs(8), || admin_get(
        &lb, "/readyz"
    )
    .text()
    .contains("keeps its last set")));
    assert_eq!(served_by(web, 4).get("b"), Some(&4));
}
