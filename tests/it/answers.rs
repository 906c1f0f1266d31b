//! Routes that answer themselves (`return`, `redirect`) and HSTS on TLS
//! listeners, with curl (HTTP/1.1 and HTTP/2) and a raw client for
//! keep-alive and bodies.

use std::{process::Command, sync::atomic::Ordering};

use crate::common::{cfg::Cfg, http::*, tls::Pki, *};

/// curl `-si` (head and body) with `extra`: (exit code, output).
fn curl_si(url: &str, extra: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-si", "--max-time", "5"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n"),
    )
}

fn answering() -> (HttpBackend, Ringlb) {
    let b = HttpBackend::start();
    let lb = Ringlb::start(
        Cfg::http_proxy(&[b.addr])
            .route("path_prefix = \"/healthz\"\nreturn = { status = 200, body = \"ok\\n\" }")
            .route("path_prefix = \"/gone/\"\nreturn = 410")
            .route("path_prefix = \"/reset\"\nreturn = 205")
            .route("path_prefix = \"/empty\"\nreturn = 204\nresponse_headers = { set = { \"Cache-Control\" = \"no-store\" } }")
            .route("path_prefix = \"/old/\"\nredirect = { to = \"https://$host/new$uri$is_args$args\", status = 308 }")
            .route("path_prefix = \"/moved\"\nredirect = \"$scheme://$host:$server_port/x$request_uri\""),
    );
    (b, lb)
}

#[test]
fn return_and_redirect_routes_answer_without_the_backend_on_h1_and_h2() {
    let (b, lb) = answering();
    let base = format!("http://{}", lb.addr("web"));
    let port = lb.addr("web").port();
    for v in ["--http1.1", "--http2-prior-knowledge"] {
        let (rc, out) = curl_si(&format!("{base}/healthz"), &[v]);
        assert_eq!(rc, 0, "{out}");
        assert!(out.contains(" 200"), "{v}: {out}");
        assert!(
            out.to_ascii_lowercase()
                .contains("content-type: text/plain; charset=utf-8"),
            "{out}"
        );
        assert!(out.ends_with("\n\nok\n"), "{v}: {out:?}");

        let (_, out) = curl_si(&format!("{base}/gone/x"), &[v]);
        assert!(out.contains(" 410"), "{v}: {out}");
        let low = out.to_ascii_lowercase();
        assert!(low.contains("content-length: 0"), "{v}: {out}");
        assert!(low.contains("x-request-id: "), "{v}: {out}");

        let (_, out) = curl_si(&format!("{base}/empty"), &[v]);
        let low = out.to_ascii_lowercase();
        assert!(out.contains(" 204"), "{v}: {out}");
        assert!(
            !low.contains("content-length"),
            "a 204 has no length: {out}"
        );
        assert!(
            low.contains("cache-control: no-store"),
            "route rules apply: {out}"
        );

        let (_, out) = curl_si(
            &format!("{base}/old/a/b?q=1&r=2"),
            &[v, "-H", "Host: Shop.Example:8080"],
        );
        assert!(out.contains(" 308"), "{v}: {out}");
        assert!(
            out.to_ascii_lowercase()
                .contains("location: https://shop.example/new/old/a/b?q=1&r=2\n"),
            "{v}: {out}"
        );
        let (_, out) = curl_si(
            &format!("{base}/old/plain"),
            &[v, "-H", "Host: shop.example"],
        );
        assert!(
            out.to_ascii_lowercase()
                .contains("location: https://shop.example/new/old/plain\n"),
            "no query, no `?`: {out}"
        );

        let (_, out) = curl_si(&format!("{base}/moved?k"), &[v, "-H", "Host: a.example"]);
        assert!(out.contains(" 301"), "the default redirect status: {out}");
        assert!(
            out.to_ascii_lowercase()
                .contains(&format!("location: http://a.example:{port}/x/moved?k\n")),
            "{v}: {out}"
        );
    }
    assert_eq!(
        b.heads.load(Ordering::SeqCst),
        0,
        "an answering route sent to the backend"
    );
    // Everything else still goes to the backend.
    let (rc, out) = curl_si(&format!("{base}/other"), &[]);
    assert_eq!(rc, 0);
    assert!(out.contains(" 200"), "{out}");
    assert_eq!(b.heads.load(Ordering::SeqCst), 1);
}

#[test]
fn an_answer_keeps_the_connection_unless_a_body_is_left_unread() {
    let (b, lb) = answering();
    let mut c = Client::connect(lb.addr("web"));
    // Pipelined: the answer, then a proxied request, on one connection.
    c.send(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.response();
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    assert!(!r.connection("close"));
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.text());
    // A 205 says its body is empty (a client would otherwise read it until
    // the connection closes), and the connection goes on.
    c.send(b"GET /reset HTTP/1.1\r\nHost: a\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 205);
    assert_eq!(r.header("content-length"), Some("0"), "{:?}", r.head.text());
    assert_eq!(c.response().text(), "ok\n");
    // HEAD: the length, no body.
    c.send(b"HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.head_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("3"));
    // A request with a body: answered, then the connection closes (the body
    // is not read as a next request).
    c.send(b"POST /gone/x HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 410);
    assert!(r.connection("close"), "{:?}", r.head.text());
    assert_eq!(
        b.heads.load(Ordering::SeqCst),
        1,
        "only /x reached the backend"
    );
    assert!(b
        .reqs
        .lock()
        .unwrap()
        .iter()
        .all(|q| !q.target.contains("smuggled")));

    // An HTTP/1.0 client that asks to keep the connection is told it is kept.
    let mut c = Client::connect(lb.addr("web"));
    for _ in 0..2 {
        c.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = c.response();
        assert_eq!(r.text(), "ok\n");
        assert!(r.connection("keep-alive"), "{:?}", r.head.text());
    }
}

#[test]
fn plain_listener_redirects_to_https_and_the_tls_listener_sends_hsts() {
    let pki = Pki::new("hsts");
    let leaf = pki.leaf("hsts", "shop.test", &["shop.test"]);
    let b = HttpBackend::start();
    let lb = Ringlb::start(
        Cfg::new(1)
            .http("plain", "")
            .route("redirect = \"https://$host$request_uri\"")
            .http("secure", "app")
            .listener_with(&format!(
                "listen = \"127.0.0.2:0\"\ntls = {{ certs = [{}], alpn = [\"h2\", \"http/1.1\"], hsts = {{ max_age = \"1d\", include_subdomains = true }} }}",
                leaf.toml()
            ))
            .route("path_prefix = \"/ping\"\nreturn = 204")
            .upstream("app", &[b.addr]),
    );
    let (rc, out) = curl_si(
        &format!("http://{}/cart?id=7", lb.addr("plain")),
        &["-H", "Host: shop.test"],
    );
    assert_eq!(rc, 0, "{out}");
    assert!(out.starts_with("HTTP/1.1 301"), "{out}");
    assert!(
        out.contains("Location: https://shop.test/cart?id=7\n"),
        "{out}"
    );
    assert!(
        !out.to_ascii_lowercase()
            .contains("strict-transport-security"),
        "no HSTS over plain http: {out}"
    );

    let a = lb.addr("secure");
    let ca = pki.ca_file.to_string_lossy().into_owned();
    let resolve = format!("shop.test:{}:{}", a.port(), a.ip());
    for v in ["--http1.1", "--http2"] {
        for path in ["/cart", "/ping"] {
            let (rc, out) = curl_si(
                &format!("https://shop.test:{}{path}", a.port()),
                &[v, "--resolve", &resolve, "--cacert", &ca],
            );
            assert_eq!(rc, 0, "{out}");
            assert!(
                out.to_ascii_lowercase()
                    .contains("strict-transport-security: max-age=86400; includesubdomains\n"),
                "{v} {path}: {out}"
            );
        }
    }
}

#[test]
fn bad_answers_are_refused_by_check() {
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (route, what) in [
        (
            "redirect = \"https://$hostname/\"",
            "$hostname is not a variable",
        ),
        ("return = 302", "redirects are `redirect"),
        ("return = { status = 204, body = \"x\" }", "has no body"),
        (
            "redirect = { to = \"/x\", status = 200 }",
            "is not a redirect",
        ),
        ("return = 200\nredirect = \"/x\"", "not both"),
        (
            "return = 200\nupstream = \"app\"",
            "sends nothing to an upstream",
        ),
        ("path_prefix = \"/x\"", "or answer with `return`"),
    ] {
        let cfg = Cfg::http_proxy(&[up]).route(route);
        let (code, _out, err) = check_config(&cfg);
        assert_ne!(code, 0, "{route} accepted");
        assert!(err.contains(what), "{route}: {err}");
    }
    let pki = Pki::new("hsts-check");
    let leaf = pki.leaf("h", "h.test", &["h.test"]);
    for (tls, what) in [
        ("hsts = { preload = true }", "include_subdomains"),
        ("hsts = { max_age = \"0s\" }", "greater than 0"),
    ] {
        let cfg = Cfg::http_proxy(&[up])
            .listener_with(&format!("tls = {{ certs = [{}], {tls} }}", leaf.toml()));
        let (code, _out, err) = check_config(&cfg);
        assert_ne!(code, 0, "{tls} accepted");
        assert!(err.contains(what), "{tls}: {err}");
    }
    let cfg = Cfg::tcp_proxy(&[up]).listener_with(&format!(
        "tls = {{ certs = [{}], hsts = true }}",
        leaf.toml()
    ));
    let (code, _out, err) = check_config(&cfg);
    assert_ne!(code, 0);
    assert!(err.contains("tls.hsts") && err.contains("http"), "{err}");
}
