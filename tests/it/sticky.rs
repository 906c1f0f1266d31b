//! Sticky sessions (`sticky = { cookie = ... }`): the cookie a response
//! sets pins the client's next requests, over HTTP/1.1 and HTTP/2, across
//! ringlb processes and across a discovered set whose order changes; a
//! backend that is gone is replaced and the cookie re-set.

use std::{collections::HashMap, net::SocketAddr, process::Command, time::Duration};

use crate::common::{cfg::Cfg, http::*, *};

/// One GET with `cookie` (when given): (who answered, the srv cookie set).
fn ask(addr: SocketAddr, cookie: Option<&str>) -> (String, Option<String>, Resp) {
    let mut c = Client::connect(addr);
    let extra = cookie.map_or(String::new(), |v| {
        format!("Cookie: theme=dark; srv={v}\r\n")
    });
    c.send(format!("GET /page HTTP/1.1\r\nHost: shop\r\n{extra}\r\n").as_bytes());
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.text());
    let who = r.text().split(' ').next().unwrap_or("").to_string();
    let set = r
        .head
        .all("set-cookie")
        .iter()
        .find_map(|v| v.strip_prefix("srv="))
        .map(|v| v.split(';').next().unwrap_or("").to_string());
    (who, set, r)
}

fn sticky_cfg(servers: &[SocketAddr]) -> Cfg {
    Cfg::http_proxy(servers).upstream_with("sticky = { cookie = \"srv\", max_age = \"1h\" }")
}

#[test]
fn the_cookie_pins_a_client_to_its_backend_until_the_backend_is_gone() {
    let a = HttpBackend::named("a");
    let b = HttpBackend::named("b");
    let lb = Ringlb::start(sticky_cfg(&[a.addr, b.addr]));
    let web = lb.addr("web");
    // No cookie: round robin picks, and the response names the backend.
    let (first, cookie, r) = ask(web, None);
    let cookie = cookie.expect("a Set-Cookie for srv");
    assert_eq!(cookie.len(), 16, "{cookie}");
    let set = r.head.all("set-cookie").join(" | ");
    assert!(set.contains("Path=/; HttpOnly; Max-Age=3600"), "{set}");
    assert!(
        !set.contains("127.0.0.1"),
        "the cookie shows no address: {set}"
    );
    assert_eq!(
        r.header("cache-control"),
        Some("private"),
        "{}",
        r.head.text()
    );
    // With it: the same backend every time, and no cookie again (round
    // robin alone would alternate).
    for _ in 0..8 {
        let (who, again, r) = ask(web, Some(&cookie));
        assert_eq!(who, first);
        assert_eq!(again, None, "{}", r.head.text());
    }
    // HTTP/2 clients are pinned by the same cookie.
    for _ in 0..4 {
        let out = Command::new("curl")
            .args(["-s", "--http2-prior-knowledge", "--max-time", "5", "-b"])
            .arg(format!("srv={cookie}"))
            .arg(format!("http://{web}/h2"))
            .output()
            .expect("curl");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(&format!("{first} ")),
            "{out:?}"
        );
    }
    // The other backend's cookie, learnt from a cookie-less request.
    let other_cookie = loop {
        let (who, c, _) = ask(web, None);
        if who != first {
            break c.expect("a cookie");
        }
    };
    assert_ne!(other_cookie, cookie);
    // A cookie that names no backend: picked anew, and told.
    let (_, set, _) = ask(web, Some("00000000000000ff"));
    assert!(set.is_some());
    // Its backend gone: the client is served by the other one, which sets
    // its own cookie.
    let (gone, stays) = if first == "a" { (&a, "b") } else { (&b, "a") };
    gone.kill();
    let (who, set, _) = ask(web, Some(&cookie));
    assert_eq!(who, stays);
    assert_eq!(set.as_deref(), Some(other_cookie.as_str()));
}

#[test]
fn route_cache_rules_and_stale_cookies_of_the_same_name() {
    let a = HttpBackend::named("a");
    let b = HttpBackend::named("b");
    let lb = Ringlb::start(sticky_cfg(&[a.addr, b.addr]).route(
        "path_prefix = \"/nc/\"\nupstream = \"app\"\nresponse_headers = { set = { \"Cache-Control\" = \"no-store\" } }",
    ));
    let web = lb.addr("web");
    // The route's own Cache-Control keeps caches away: no second field.
    let mut c = Client::connect(web);
    c.send(b"GET /nc/x HTTP/1.1\r\nHost: shop\r\n\r\n");
    let r = c.response();
    assert!(r
        .head
        .all("set-cookie")
        .iter()
        .any(|v| v.starts_with("srv=")));
    assert_eq!(
        r.head.all("cache-control"),
        ["no-store"],
        "{}",
        r.head.text()
    );
    // A foreign value under the same name (another application's, or a
    // stale one) does not hide ours.
    let (first, cookie, _) = ask(web, None);
    let cookie = cookie.expect("a cookie");
    for _ in 0..6 {
        let (who, set, r) = ask(web, Some(&format!("old; srv={cookie}")));
        assert_eq!(who, first);
        assert_eq!(set, None, "{}", r.head.text());
    }
}

#[test]
fn two_ringlb_processes_agree_on_the_cookie() {
    let a = HttpBackend::named("a");
    let b = HttpBackend::named("b");
    let one = Ringlb::start(sticky_cfg(&[a.addr, b.addr]));
    // The other box lists the servers in another order.
    let two = Ringlb::start(sticky_cfg(&[b.addr, a.addr]));
    let mut cookies: HashMap<String, String> = HashMap::new();
    for _ in 0..4 {
        let (who, c, _) = ask(one.addr("web"), None);
        cookies.insert(who, c.expect("a cookie"));
    }
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    for (who, c) in &cookies {
        for _ in 0..3 {
            assert_eq!(&ask(two.addr("web"), Some(c)).0, who);
        }
    }
}

#[test]
fn a_discovered_set_that_changes_order_keeps_the_client_on_its_backend() {
    let a = HttpBackend::named("a");
    let b = HttpBackend::named("b");
    let c = HttpBackend::named("c");
    let dir = TempDir::new("sticky-disc");
    let file = dir.path("app.servers");
    let put = |addrs: &[SocketAddr]| put(&file, list(addrs));
    put(&[a.addr, b.addr]);
    let lb = Ringlb::start(
        Cfg::new(1)
            .http("web", "app")
            .upstream("app", &[])
            .upstream_with(&format!(
                "sticky = {{ cookie = \"srv\" }}\ndiscovery = {{ file = \"{}\" }}",
                file.display()
            )),
    );
    let web = lb.addr("web");
    let cookie_b = loop {
        let (who, set, _) = ask(web, None);
        if who == "b" {
            break set.expect("a cookie");
        }
    };
    // b moves from index 1 to index 2, and c comes in front of it.
    put(&[c.addr, a.addr, b.addr]);
    assert!(
        wait_until(Duration::from_secs(5), || ask(web, None).0 == "c"),
        "c never joined"
    );
    for _ in 0..6 {
        let (who, set, _) = ask(web, Some(&cookie_b));
        assert_eq!(who, "b");
        assert_eq!(set, None);
    }
}

#[test]
fn bad_sticky_tables_are_refused_by_check() {
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (table, what) in [
        ("sticky = { cookie = \"a b\" }", "not a cookie name"),
        (
            "sticky = { cookie = \"s\", max_age = \"0s\" }",
            "at least 1s",
        ),
        ("sticky = { name = \"s\" }", "unknown field"),
    ] {
        let (code, _out, err) = check_config(Cfg::http_proxy(&[up]).upstream_with(table));
        assert_ne!(code, 0, "{table} accepted");
        assert!(err.contains(what), "{table}: {err}");
    }
}
