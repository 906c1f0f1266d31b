//! Backend sets replaced at runtime: a reload that changes only upstream
//! servers (addresses, weights) publishes a new backend-set version to the
//! running workers — no new worker threads, connections in flight keep the
//! backend they have, new picks see the new set — while any other change
//! still starts a new generation of workers.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use crate::common::{cfg::Cfg, http::*, *};

const LOG_WAIT: Duration = Duration::from_secs(10);

/// The thread ids of ringlb's worker threads (named `ringlb-wN`).
fn worker_threads(pid: u32) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.starts_with("ringlb-w") {
            if let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                out.insert(tid);
            }
        }
    }
    out
}

/// An http listener "web" and a tcp listener "raw" on the same upstream.
fn cfg(servers: &[SocketAddr], idle: &str) -> Cfg {
    Cfg::new(2)
        .http("web", "app")
        .listener_with("connect_timeout = \"1s\"")
        .tcp("raw", "app")
        .listener_with(&format!(
            "listen = \"127.0.0.2:0\"\nidle_timeout = \"{idle}\""
        ))
        .upstream("app", servers)
}

/// Which backend answered (the backends answer "NAME TARGET").
fn who(r: &Resp) -> String {
    r.text().split(' ').next().unwrap_or("").to_string()
}

/// One GET on a client connection (kept alive), and who answered.
fn ask(c: &mut Client, path: &str) -> String {
    c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.text());
    who(&r)
}

/// Who answers `n` fresh requests on listener `name`.
fn fresh(p: &Ringlb, name: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let mut c = Client::connect(p.addr(name));
            ask(&mut c, &format!("/{i}"))
        })
        .collect()
}

#[test]
fn a_reload_that_only_changes_servers_keeps_the_workers_and_their_connections() {
    let a = HttpBackend::named("a");
    let b = HttpBackend::named("b");
    let p = Ringlb::start(cfg(&[a.addr], "30s"));
    let workers = worker_threads(p.pid());
    assert_eq!(workers.len(), 2, "two worker threads");
    assert!(fresh(&p, "web", 4).iter().all(|n| n == "a"));

    // Connections opened before the change: an http keep-alive client and
    // a tcp connection (through the tcp listener to the same upstream).
    let mut keep = Client::connect(p.addr("web"));
    assert_eq!(ask(&mut keep, "/before"), "a");
    let mut tunnel = Client::connect(p.addr("raw"));
    assert_eq!(ask(&mut tunnel, "/before"), "a");

    // Add b: published in place.
    p.rewrite(cfg(&[a.addr, b.addr], "30s"));
    p.signal("HUP");
    assert!(
        p.wait_count("backends updated in place", 1, LOG_WAIT),
        "{}",
        p.log_text()
    );
    assert_eq!(worker_threads(p.pid()), workers, "no new worker threads");
    let seen = fresh(&p, "web", 20);
    assert!(seen.iter().any(|n| n == "b"), "b never picked: {seen:?}");
    assert!(
        seen.iter().any(|n| n == "a"),
        "a no longer picked: {seen:?}"
    );
    let seen = fresh(&p, "raw", 20);
    assert!(
        seen.iter().any(|n| n == "b"),
        "tcp never picked b: {seen:?}"
    );
    // Connections from before go on.
    assert_eq!(ask(&mut tunnel, "/after-add"), "a");
    let again = ask(&mut keep, "/after-add");
    assert!(again == "a" || again == "b", "{again}");

    // Remove a: new picks only see b; the tcp connection to a keeps its backend.
    p.rewrite(cfg(&[b.addr], "30s"));
    p.signal("HUP");
    assert!(
        p.wait_count("backends updated in place", 2, LOG_WAIT),
        "{}",
        p.log_text()
    );
    assert_eq!(worker_threads(p.pid()), workers, "no new worker threads");
    assert!(fresh(&p, "web", 10).iter().all(|n| n == "b"));
    assert!(fresh(&p, "raw", 10).iter().all(|n| n == "b"));
    assert_eq!(ask(&mut tunnel, "/after-remove"), "a");
    assert_eq!(
        ask(&mut keep, "/after-remove"),
        "b",
        "pooled connections to a are gone"
    );

    // Any other change still starts a new generation of workers (the old
    // ones drain what they hold).
    drop((keep, tunnel));
    p.rewrite(cfg(&[b.addr], "31s"));
    p.signal("HUP");
    assert!(
        p.wait_count("configuration reloaded", 3, LOG_WAIT),
        "{}",
        p.log_text()
    );
    assert_eq!(p.count("backends updated in place"), 2);
    assert!(
        wait_until(LOG_WAIT, || {
            worker_threads(p.pid()).difference(&workers).count() == 2
        }),
        "a full reload starts two new workers"
    );
    assert!(fresh(&p, "web", 4).iter().all(|n| n == "b"));
}
