//! TLS termination (issue 11): certificates by SNI, ALPN, a plain client
//! on a TLS port, the handshake deadline, a trickled ClientHello, session
//! resumption across workers, bulk both ways, tcp listeners, `check`.
//! Clients: openssl s_client, curl, and rustls where bytes must be placed
//! by hand.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    thread,
    time::Duration,
};

use crate::common::{
    admin::scrape,
    http::{Client, Reply, Req},
    tls::{curl, s_client, subject_cn, Pair, Pki, SServer, TlsEcho},
    *,
};

/// A listener key `tls = { certs = [...] <extra> }`.
fn tls_key(certs: &[&Pair], extra: &str) -> String {
    let list: Vec<String> = certs.iter().map(|p| p.toml()).collect();
    let sep = if extra.is_empty() { "" } else { ", " };
    format!("tls = {{ certs = [{}]{sep}{extra} }}", list.join(", "))
}

/// A rustls client configuration trusting `pki`'s CA (ring provider).
fn rustls_client(pki: &Pki, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&pki.ca_file).unwrap();
    use rustls_pki_types::pem::PemObject;
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

/// A finished rustls session over a fresh socket to `addr` as `name`.
fn rustls_connect(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let conn = rustls::ClientConnection::new(Arc::clone(cfg), name.to_string().try_into().unwrap())
        .unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("handshake");
    }
    s
}

/// Send `data` over `s` a 64 KiB chunk at a time, reading each chunk's
/// echo back before the next goes (no deadlock on full buffers both ways);
/// returns what came back.
fn echo_through(
    s: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    data: &[u8],
) -> Vec<u8> {
    let mut w = s.sock.try_clone().unwrap();
    let mut back = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 65536];
    let mut sent = 0;
    while back.len() < data.len() {
        let end = (sent + 65536).min(data.len());
        s.conn.writer().write_all(&data[sent..end]).unwrap();
        while s.conn.wants_write() {
            s.conn.write_tls(&mut w).unwrap();
        }
        sent = end;
        while back.len() < sent {
            match s.read(&mut buf) {
                Ok(0) => panic!("closed after {} bytes", back.len()),
                Ok(n) => back.extend_from_slice(&buf[..n]),
                Err(e) => panic!("after {} bytes: {e}", back.len()),
            }
        }
    }
    back
}

/// Read one HTTP/1.1 response with a Content-Length body from `r`.
fn read_response(r: &mut impl Read) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = r.read(&mut buf).expect("response head");
        assert!(n > 0, "closed before a response head");
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = got[head_end..].to_vec();
    while body.len() < len {
        let n = r.read(&mut buf).expect("response body");
        assert!(n > 0, "closed mid-body");
        body.extend_from_slice(&buf[..n]);
    }
    (head, body)
}

#[test]
fn certificates_are_chosen_by_name_exact_then_wildcard_then_the_first() {
    let pki = Pki::new("tls-names");
    let a = pki.leaf("a", "a-cert", &["a.test", "*.wild.test"]);
    let b = pki.leaf("b", "b-cert", &["b.test"]);
    let exact = pki.leaf("exact", "exact-cert", &["x.wild.test"]);
    let be = HttpBackend::start();
    let lb =
        Ringlb::start(Cfg::http_proxy(&[be.addr]).listener_with(&tls_key(&[&a, &b, &exact], "")));
    let addr = lb.addr("web");
    let ca = pki.ca_file.display().to_string();
    for (sni, want) in [
        (Some("a.test"), "a-cert"),
        (Some("b.test"), "b-cert"),
        (Some("B.Test"), "b-cert"),
        (Some("y.wild.test"), "a-cert"),
        (Some("x.wild.test"), "exact-cert"),
        (Some("deep.y.wild.test"), "a-cert"),
        (Some("unknown.test"), "a-cert"),
        (None, "a-cert"),
    ] {
        let out = s_client(addr, sni, &["-CAfile", &ca]);
        assert_eq!(subject_cn(&out).as_deref(), Some(want), "{sni:?}:\n{out}");
        assert!(
            out.contains("Verify return code: 0 (ok)"),
            "{sni:?}:\n{out}"
        );
    }
}

#[test]
fn https_requests_reach_the_backend_as_https_and_bulk_moves_intact() {
    let pki = Pki::new("tls-http");
    let a = pki.leaf("a", "a", &["a.test"]);
    let big = pseudo_random(20 << 20, 7);
    let big2 = big.clone();
    let be = HttpBackend::with(move |r: &Req| match r.target.as_str() {
        "/big" => Reply::new(r, 200, &[], &big2),
        _ => Reply::ok(r, &format!("got {}", r.body.len())),
    });
    let lb = Ringlb::start(Cfg::http_proxy(&[be.addr]).listener_with(&tls_key(&[&a], "")));
    let addr = lb.addr("web");
    let (code, body, err) = curl(addr, "a.test", "/hello", &pki.ca_file, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(body, b"got 0");
    let req = be.wait_requests(1).pop().unwrap();
    assert_eq!(
        req.header("x-forwarded-proto"),
        Some("https"),
        "{}",
        req.head.text()
    );

    let (code, body, err) = curl(addr, "a.test", "/big", &pki.ca_file, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        body == big,
        "20 MB download changed on the way ({} bytes)",
        body.len()
    );

    let upload = pki.dir.path("upload.bin");
    std::fs::write(&upload, pseudo_random(8 << 20, 9)).unwrap();
    let data = format!("@{}", upload.display());
    let (code, body, err) = curl(
        addr,
        "a.test",
        "/up",
        &pki.ca_file,
        &["--data-binary", &data],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(String::from_utf8_lossy(&body), format!("got {}", 8 << 20));
}

#[test]
fn alpn_picks_http11_and_refuses_a_client_that_only_speaks_h2() {
    let pki = Pki::new("tls-alpn");
    let a = pki.leaf("a", "a", &["a.test"]);
    let be = HttpBackend::start();
    let lb = Ringlb::start(Cfg::http_proxy(&[be.addr]).listener_with(&tls_key(&[&a], "")));
    let addr = lb.addr("web");
    let out = s_client(addr, Some("a.test"), &["-alpn", "h2,http/1.1"]);
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
    let out = s_client(addr, Some("a.test"), &["-alpn", "h2"]);
    assert!(
        out.contains("no application protocol") || out.contains("alert number 120"),
        "{out}"
    );
    // Versions: a 1.3-only listener refuses a TLS 1.2 client.
    let lb13 = Ringlb::start(
        Cfg::http_proxy(&[be.addr]).listener_with(&tls_key(&[&a], "versions = [\"1.3\"]")),
    );
    let out = s_client(lb13.addr("web"), Some("a.test"), &["-tls1_2"]);
    assert!(out.contains("alert protocol version"), "{out}");
    let out = s_client(lb13.addr("web"), Some("a.test"), &["-tls1_3"]);
    assert!(out.contains("TLSv1.3"), "{out}");
}

#[test]
fn a_plain_client_on_a_tls_port_is_told_and_a_silent_one_times_out() {
    let pki = Pki::new("tls-plain");
    let a = pki.leaf("a", "a", &["a.test"]);
    let be = HttpBackend::start();
    let lb = Ringlb::start(
        Cfg::http_proxy(&[be.addr])
            .admin()
            .listener_with(&tls_key(&[&a], "handshake_timeout = \"1s\"")),
    );
    let addr = lb.addr("web");
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    assert!(got.starts_with("HTTP/1.1 400"), "{got:?}");
    assert!(
        got.contains("plain HTTP request was sent to a TLS port"),
        "{got:?}"
    );
    // With a body still coming: the answer is not reset away.
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'x', 200_000));
    let _ = s.write_all(&req);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 400"), "{got:?}");

    // A hello's first bytes, then nothing: closed at the deadline.
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x02]).unwrap();
    let mut buf = [0u8; 64];
    let end = s.read(&mut buf);
    assert!(
        end.is_ok()
            || end
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "not closed by the handshake timeout: {end:?}"
    );
    let m = scrape(&lb);
    let failed = |why: &str| {
        m.sum(
            "ringlb_tls_handshakes_total",
            &[("listener", "web"), ("result", why)],
        )
    };
    assert_eq!(failed("not_tls"), 2.0);
    assert_eq!(failed("timeout"), 1.0);
    assert_eq!(be.wait_requests(0).len(), 0, "no backend touched");
}

#[test]
fn a_hello_trickled_one_byte_per_segment_completes() {
    let pki = Pki::new("tls-trickle");
    let a = pki.leaf("a", "a", &["a.test"]);
    let be = HttpBackend::start();
    let lb = Ringlb::start(Cfg::http_proxy(&[be.addr]).listener_with(&tls_key(&[&a], "")));
    let cfg = rustls_client(&pki, &["http/1.1"]);
    let mut conn =
        rustls::ClientConnection::new(Arc::clone(&cfg), "a.test".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    assert!(hello.len() > 100);
    let mut sock = connect(lb.addr("web"));
    sock.set_nodelay(true).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for b in &hello {
        sock.write_all(std::slice::from_ref(b)).unwrap();
        thread::sleep(Duration::from_millis(2));
    }
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .expect("handshake after a trickled hello");
    }
    s.write_all(b"GET /t HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok");
}

/// Tickets are made with one key for every worker: eight connections (on
/// two workers, spread by SO_REUSEPORT) all resume the first session.
#[test]
fn sessions_resume_on_any_worker() {
    let pki = Pki::new("tls-resume");
    let a = pki.leaf("a", "a", &["a.test"]);
    let be = HttpBackend::start();
    let lb = Ringlb::start(
        Cfg::http_proxy(&[be.addr])
            .runtime("workers = 2")
            .admin()
            .listener_with(&tls_key(&[&a], "")),
    );
    let addr = lb.addr("web");
    let cfg = rustls_client(&pki, &["http/1.1"]);
    let mut first = rustls_connect(&cfg, addr, "a.test");
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let (head, _) = read_response(&mut first);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(first);
    for i in 0..8 {
        let mut s = rustls_connect(&cfg, addr, "a.test");
        assert_eq!(
            s.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "connection {i} did not resume"
        );
        s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .unwrap();
        let (head, _) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    let m = scrape(&lb);
    assert!(m.sum("ringlb_tls_resumed_total", &[("listener", "web")]) >= 8.0);
}

#[test]
fn a_tcp_listener_terminates_tls_in_front_of_a_plain_service() {
    let pki = Pki::new("tls-tcp");
    let a = pki.leaf("a", "a", &["db.test"]);
    let echo = EchoBackend::start();
    let lb =
        Ringlb::start(Cfg::tcp_proxy(&[echo.addr]).listener_with(&tls_key(&[&a], "alpn = []")));
    let cfg = rustls_client(&pki, &[]);
    let mut s = rustls_connect(&cfg, lb.addr("l"), "db.test");
    let data = pseudo_random(4 << 20, 3);
    let back = echo_through(&mut s, &data);
    assert!(back == data, "4 MB echo changed through TLS termination");
}

#[test]
fn check_names_the_certificate_file_that_is_wrong() {
    let pki = Pki::new("tls-check");
    let a = pki.leaf("a", "a", &["a.test"]);
    let b = pki.leaf("b", "b", &["b.test"]);
    let missing = Pair {
        cert: a.cert.clone(),
        key: pki.dir.path("nope.key"),
    };
    let (code, _, err) =
        check_config(Cfg::http_proxy(&[refused_addr()]).listener_with(&tls_key(&[&missing], "")));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nope.key"), "{err}");
    let crossed = Pair {
        cert: a.cert.clone(),
        key: b.key.clone(),
    };
    let (code, _, err) =
        check_config(Cfg::http_proxy(&[refused_addr()]).listener_with(&tls_key(&[&crossed], "")));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a.pem") && err.contains("b.key"), "{err}");
    let not_pem = Pair {
        cert: pki.ca_file.clone(),
        key: pki.ca_file.clone(),
    };
    let (code, _, err) =
        check_config(Cfg::http_proxy(&[refused_addr()]).listener_with(&tls_key(&[&not_pem], "")));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("ca.pem") && err.contains("private key"),
        "{err}"
    );
}

#[test]
fn client_certificates_are_required_or_optional_as_configured() {
    let pki = Pki::new("tls-mtls");
    let a = pki.leaf("a", "a", &["a.test"]);
    let client = pki.leaf("client", "client-one", &["client.test"]);
    let other = Pki::with_ca_name("tls-mtls-other", "another CA");
    let stranger = other.leaf("stranger", "stranger", &["s.test"]);
    let be = HttpBackend::start();
    let ca = pki.ca_file.display().to_string();
    let key = |auth: &str| {
        tls_key(
            &[&a],
            &format!("client_ca = \"{ca}\", client_auth = \"{auth}\""),
        )
    };
    let required = Ringlb::start(Cfg::http_proxy(&[be.addr]).listener_with(&key("required")));
    let optional = Ringlb::start(Cfg::http_proxy(&[be.addr]).listener_with(&key("optional")));
    let with = |p: &Pair| {
        vec![
            "--cert".to_string(),
            p.cert.display().to_string(),
            "--key".to_string(),
            p.key.display().to_string(),
        ]
    };
    let run = |lb: &Ringlb, extra: &[String]| {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        curl(lb.addr("web"), "a.test", "/", &pki.ca_file, &extra)
    };
    // Required: no certificate, or one from another CA, is refused.
    let (code, body, err) = run(&required, &with(&client));
    assert_eq!((code, body.as_slice()), (0, &b"ok"[..]), "{err}");
    let (code, _, err) = run(&required, &[]);
    assert_ne!(code, 0, "served without a client certificate: {err}");
    let (code, _, err) = run(&required, &with(&stranger));
    assert_ne!(code, 0, "served a certificate from another CA: {err}");
    // Optional: none is fine, a bad one is not.
    let (code, body, err) = run(&optional, &[]);
    assert_eq!((code, body.as_slice()), (0, &b"ok"[..]), "{err}");
    let (code, _, err) = run(&optional, &with(&stranger));
    assert_ne!(code, 0, "optional still verifies what is sent: {err}");
}

/// A reload with a new certificate in the same files: new handshakes get
/// it, a connection opened before keeps working.
#[test]
fn a_reload_swaps_the_certificate_and_keeps_open_connections() {
    let pki = Pki::new("tls-reload");
    let a = pki.leaf("a", "before", &["a.test"]);
    let be = HttpBackend::start();
    let cfg = Cfg::http_proxy(&[be.addr]).listener_with(&tls_key(&[&a], ""));
    let lb = Ringlb::start(&cfg);
    let addr = lb.addr("web");
    let out = s_client(addr, Some("a.test"), &[]);
    assert_eq!(subject_cn(&out).as_deref(), Some("before"), "{out}");
    let client = rustls_client(&pki, &["http/1.1"]);
    let mut open = rustls_connect(&client, addr, "a.test");
    // The same file names, a new certificate.
    pki.leaf("a", "after", &["a.test"]);
    lb.rewrite(&cfg);
    lb.signal("HUP");
    assert!(lb.wait_log("configuration reloaded"), "{}", lb.log_text());
    assert!(
        wait_until(Duration::from_secs(5), || {
            subject_cn(&s_client(addr, Some("a.test"), &[])).as_deref() == Some("after")
        }),
        "new handshakes still get the old certificate"
    );
    open.write_all(b"GET /still HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut open);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok");
    // A broken key file on reload changes nothing and says which file.
    std::fs::write(&a.key, "not a key").unwrap();
    lb.rewrite(&cfg);
    lb.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || lb.log_text().contains("a.key")),
        "{}",
        lb.log_text()
    );
    let out = s_client(addr, Some("a.test"), &[]);
    assert_eq!(subject_cn(&out).as_deref(), Some("after"), "{out}");
}

/// A tls router on one port: `db.test` passes through to one TLS server,
/// `*.pass.test` to another, `app.test` is handed to an http listener that
/// terminates it, `*` passes through to the first.
fn router_cfg(pki: &Pki, db: SocketAddr, other: SocketAddr, app: SocketAddr) -> Cfg {
    let app_cert = pki.leaf("app", "ringlb-app", &["app.test"]);
    let log = pki.dir.path("access.log");
    Cfg::new(2)
        .admin()
        .table(&format!("[access_log]\npath = \"{}\"\nformat = \"json\"", log.display()))
        .http("web", "app")
        .listener_with(&tls_key(&[&app_cert], ""))
        .listener("edge", "tls", "")
        .listener_with(
            "listen = \"127.0.0.3:0\"\nhello_timeout = \"1s\"\nsni = [{ names = [\"db.test\"], upstream = \"db\" }, { names = [\"*.pass.test\"], upstream = \"other\" }, { names = [\"app.test\"], listener = \"web\" }, { names = [\"*\"], upstream = \"db\" }]",
        )
        .upstream("app", &[app])
        .upstream("db", &[db])
        .upstream("other", &[other])
}

#[test]
fn one_tls_port_passes_some_names_through_and_terminates_others() {
    let pki = Pki::new("tls-router");
    let db_cert = pki.leaf("db", "backend-db", &["db.test"]);
    let other_cert = pki.leaf("other", "backend-other", &["x.pass.test"]);
    let db = SServer::start(&db_cert, &[]);
    let other = SServer::start(&other_cert, &[]);
    let app = HttpBackend::start();
    let lb = Ringlb::start(router_cfg(&pki, db.addr, other.addr, app.addr));
    let edge = lb.addr("edge");
    // Passthrough: the client sees the backend's own certificate.
    for (sni, want) in [
        (Some("db.test"), "backend-db"),
        (Some("x.pass.test"), "backend-other"),
        // A trailing dot names the same host.
        (Some("x.pass.test."), "backend-other"),
        (Some("unknown.test"), "backend-db"),
        (None, "backend-db"),
    ] {
        let out = s_client(edge, sni, &[]);
        assert_eq!(subject_cn(&out).as_deref(), Some(want), "{sni:?}:\n{out}");
    }
    // Termination: ringlb's certificate, and the http listener's routes.
    let out = s_client(edge, Some("app.test"), &[]);
    assert_eq!(subject_cn(&out).as_deref(), Some("ringlb-app"), "{out}");
    let (code, body, err) = curl(edge, "app.test", "/via-router", &pki.ca_file, &[]);
    assert_eq!((code, body.as_slice()), (0, &b"ok"[..]), "{err}");
    let req = app.wait_requests(1).pop().unwrap();
    assert_eq!(req.header("x-forwarded-proto"), Some("https"));
    // A TLS 1.2 client with a cipher rustls never speaks still passes
    // through: the router only reads the hello.
    let old = SServer::start(&db_cert, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"]);
    let lb2 = Ringlb::start(router_cfg(&pki, old.addr, other.addr, app.addr));
    let out = s_client(
        lb2.addr("edge"),
        Some("db.test"),
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"],
    );
    assert!(out.contains("Cipher is ECDHE-ECDSA-AES128-SHA"), "{out}");
    let m = crate::common::admin::scrape(&lb);
    let hellos = |r: &str| {
        m.sum(
            "ringlb_tls_hellos_total",
            &[("listener", "edge"), ("result", r)],
        )
    };
    assert_eq!(hellos("passed"), 5.0);
    assert_eq!(hellos("handed"), 2.0);
    // The access log names the server asked for, and the version where
    // ringlb ended the TLS.
    let log = pki.dir.path("access.log");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || text().contains("/via-router")
            && text().contains("\"sni\":\"x.pass.test\"")),
        "{}",
        text()
    );
    let t = text();
    let line = |needle: &str| {
        t.lines()
            .find(|l| l.contains(needle))
            .unwrap_or("")
            .to_string()
    };
    let http = line("/via-router");
    assert!(
        http.contains("\"sni\":\"app.test\",\"tls\":\"1.3\""),
        "{http}"
    );
    let pass = line("\"sni\":\"x.pass.test\"");
    assert!(
        pass.contains("\"listener\":\"edge\"") && pass.contains("\"tls\":null"),
        "{pass}"
    );
}

/// Passthrough moves the bytes untouched both ways (a rustls echo server
/// behind, 50 MB, sha256 compared), with the hello split across TLS records and sent a byte
/// per segment.
#[test]
fn passthrough_is_byte_exact_and_joins_a_fragmented_hello() {
    let pki = Pki::new("tls-pass");
    let db_cert = pki.leaf("db", "backend-db", &["db.test"]);
    let echo = TlsEcho::start(&db_cert);
    let app = HttpBackend::start();
    let lb = Ringlb::start(router_cfg(&pki, echo.addr, echo.addr, app.addr));
    let cfg = rustls_client(&pki, &[]);
    let mut conn =
        rustls::ClientConnection::new(Arc::clone(&cfg), "db.test".try_into().unwrap()).unwrap();
    let mut record = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut record).unwrap();
    }
    // One record -> two records, split inside the handshake message.
    let payload = &record[5..];
    let half = payload.len() / 2;
    let mut split = Vec::new();
    for part in [&payload[..half], &payload[half..]] {
        split.extend_from_slice(&[0x16, record[1], record[2]]);
        split.extend_from_slice(&(part.len() as u16).to_be_bytes());
        split.extend_from_slice(part);
    }
    let mut sock = connect(lb.addr("edge"));
    sock.set_nodelay(true).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for b in &split {
        sock.write_all(std::slice::from_ref(b)).unwrap();
        thread::sleep(Duration::from_millis(1));
    }
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .expect("handshake through the router");
    }
    let data = pseudo_random(50 << 20, 11);
    let back = echo_through(&mut s, &data);
    use sha2::Digest;
    assert_eq!(
        sha2::Sha256::digest(&back),
        sha2::Sha256::digest(&data),
        "50 MB changed on the way"
    );
}

#[test]
fn a_router_closes_what_is_not_a_hello_without_touching_a_backend() {
    let pki = Pki::new("tls-router-bad");
    let db_cert = pki.leaf("db", "backend-db", &["db.test"]);
    let echo = TlsEcho::start(&db_cert);
    let backend_conns = EchoBackend::start();
    let app = HttpBackend::start();
    let lb = Ringlb::start(router_cfg(
        &pki,
        backend_conns.addr,
        backend_conns.addr,
        app.addr,
    ));
    let edge = lb.addr("edge");
    let closed = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let end = s.read(&mut buf);
        assert!(
            matches!(end, Ok(0))
                || end
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "not closed: {end:?}"
        );
    };
    // Plain text.
    let mut s = connect(edge);
    s.write_all(b"GET / HTTP/1.1\r\nHost: db.test\r\n\r\n")
        .unwrap();
    closed(&mut s);
    // A handshake record that is no ClientHello.
    let mut s = connect(edge);
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00])
        .unwrap();
    closed(&mut s);
    // Half a hello, then silence: the hello deadline.
    let mut s = connect(edge);
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    closed(&mut s);
    // A record longer than any hello allowed.
    let mut s = connect(edge);
    let mut huge = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc];
    huge.extend(std::iter::repeat_n(0u8, 20_000));
    let _ = s.write_all(&huge);
    closed(&mut s);
    assert_eq!(backend_conns.recs().len(), 0, "a backend was reached");
    let m = crate::common::admin::scrape(&lb);
    let hellos = |r: &str| {
        m.sum(
            "ringlb_tls_hellos_total",
            &[("listener", "edge"), ("result", r)],
        )
    };
    assert_eq!(hellos("not_tls"), 1.0, "{}", m.dump("ringlb_tls_hellos"));
    assert_eq!(hellos("timeout"), 1.0, "{}", m.dump("ringlb_tls_hellos"));
    assert_eq!(
        hellos("bad_hello") + hellos("too_large"),
        2.0,
        "{}",
        m.dump("ringlb_tls_hellos")
    );
    drop(echo);
}

#[test]
fn check_refuses_sni_routes_that_cannot_work() {
    let up = refused_addr();
    let base = || {
        Cfg::new(1)
            .listener("edge", "tls", "")
            .upstream("db", &[up])
    };
    for (sni, needle) in [
        ("sni = []", "needs [[listener.sni]]"),
        ("sni = [{ names = [\"a.test\"] }]", "exactly one of upstream"),
        ("sni = [{ names = [\"a.test\"], upstream = \"db\" }, { names = [\"A.test\"], upstream = \"db\" }]", "claimed by an earlier"),
        ("sni = [{ names = [\"bad name\"], upstream = \"db\" }]", "not a host name"),
        ("sni = [{ names = [\"a.test\"], listener = \"nope\" }]", "no listener named"),
        ("sni = [{ names = [\"a.test\"], listener = \"edge\" }]", "must be an http or tcp listener with tls"),
    ] {
        let (code, _, err) = check_config(base().listener_with(sni));
        assert_eq!(code, 2, "{sni}: {err}");
        assert!(err.contains(needle), "{sni}: {err}");
    }
}

/// ringlb #2: an https listener for `names` (certificate from `pki`) in
/// front of `backend`, with metrics: a real TLS server with keep-alive.
fn tls_backend(pki: &Pki, names: &[&str], backend: SocketAddr) -> Ringlb {
    let cert = pki.leaf(&format!("srv-{}", names[0]), names[0], names);
    Ringlb::start(
        Cfg::http_proxy(&[backend])
            .admin()
            .listener_with(&tls_key(&[&cert], "")),
    )
}

#[test]
fn reencryption_verifies_the_backend_and_pools_its_connections() {
    let pki = Pki::new("tls-up");
    let app = HttpBackend::start();
    let server = tls_backend(&pki, &["api.test"], app.addr);
    let backend = server.addr("web");
    let ca = pki.ca_file.display().to_string();
    let front = |tls: &str| {
        Ringlb::start(Cfg::http_proxy(&[backend]).upstream_with(&format!("tls = {{ {tls} }}")))
    };
    // Verified, by name, and reused: five requests, one handshake.
    let lb = front(&format!("server_name = \"api.test\", ca = \"{ca}\""));
    let mut c = Client::connect(lb.addr("web"));
    for i in 0..5 {
        c.send(format!("GET /r{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let r = c.response();
        assert_eq!(r.status, 200, "{}", r.head.text());
        assert_eq!(r.text(), "ok");
    }
    let reqs = app.wait_requests(5);
    assert_eq!(
        reqs[4].header("x-forwarded-proto"),
        Some("https"),
        "ringlb #2 saw TLS"
    );
    let m = scrape(&server);
    let handshakes = m.sum(
        "ringlb_tls_handshakes_total",
        &[("listener", "web"), ("result", "ok")],
    );
    assert_eq!(
        handshakes, 1.0,
        "the TLS connection to the backend was not reused"
    );

    // A wrong CA, a wrong name: 502, the reason in the log.
    let other = Pki::with_ca_name("tls-up-other", "another CA");
    let wrong_ca = other.ca_file.display().to_string();
    for (tls, why) in [
        (
            format!("server_name = \"api.test\", ca = \"{wrong_ca}\""),
            "UnknownIssuer",
        ),
        (
            format!("server_name = \"other.test\", ca = \"{ca}\""),
            "not valid for name",
        ),
    ] {
        let lb = front(&tls);
        let mut c = Client::connect(lb.addr("web"));
        c.send(b"GET /bad HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = c.response();
        assert_eq!(r.status, 502, "{tls}: {}", r.head.text());
        assert!(lb.wait_log(why), "{tls}: {}", lb.log_text());
    }
    // verify = false takes any certificate.
    let lb = front("server_name = \"other.test\", verify = false");
    let mut c = Client::connect(lb.addr("web"));
    c.send(b"GET /any HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.response().status, 200);
}

#[test]
fn a_tcp_listener_reencrypts_to_a_tls_backend() {
    let pki = Pki::new("tls-up-tcp");
    let echo = TlsEcho::start(&pki.leaf("echo", "echo", &["echo.test"]));
    let ca = pki.ca_file.display().to_string();
    let lb = Ringlb::start(Cfg::tcp_proxy(&[echo.addr]).upstream_with(&format!(
        "tls = {{ server_name = \"echo.test\", ca = \"{ca}\" }}"
    )));
    let mut s = connect(lb.addr("l"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let data = pseudo_random(256 << 10, 5);
    s.write_all(&data).unwrap();
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).unwrap();
    assert!(back == data, "256 KiB echo changed through re-encryption");
}

/// Health checks of a TLS upstream run over TLS: an http check through
/// the handshake passes; with a CA that does not sign the backend's
/// certificate the check fails and the backend goes DOWN.
#[test]
fn health_checks_speak_tls_to_tls_backends() {
    let pki = Pki::new("tls-health");
    let app = HttpBackend::start();
    let server = tls_backend(&pki, &["api.test"], app.addr);
    let backend = server.addr("web");
    let ca = pki.ca_file.display().to_string();
    let other = Pki::with_ca_name("tls-health-other", "another CA");
    let wrong = other.ca_file.display().to_string();
    let health = "health = { kind = \"http\", path = \"/health\", interval = \"100ms\", timeout = \"1s\", rise = 1, fall = 1 }";
    let with_ca = |ca: &str| {
        Cfg::http_proxy(&[backend]).upstream_with(&format!(
            "tls = {{ server_name = \"api.test\", ca = \"{ca}\" }}\n{health}"
        ))
    };
    let good = Ringlb::start(with_ca(&ca));
    assert!(
        wait_until(Duration::from_secs(5), || app
            .wait_requests(0)
            .iter()
            .any(|r| r.target == "/health")),
        "no health check reached the backend through TLS"
    );
    assert_eq!(good.count("is DOWN"), 0, "{}", good.log_text());
    let bad = Ringlb::start(with_ca(&wrong));
    assert!(bad.wait_log("is DOWN"), "{}", bad.log_text());
    assert!(
        bad.log_text().contains("UnknownIssuer"),
        "{}",
        bad.log_text()
    );
}

/// `tls.headers`: the backend is told the version, cipher, name asked for
/// and the verified client certificate's subject; the same fields sent by
/// a client never reach it.
#[test]
fn tls_headers_tell_the_backend_what_the_handshake_agreed() {
    let pki = Pki::new("tls-headers");
    let a = pki.leaf("a", "a", &["a.test"]);
    let client = pki.leaf("client", "client-one", &["client.test"]);
    let be = HttpBackend::start();
    let ca = pki.ca_file.display().to_string();
    let log = pki.dir.path("access.log");
    let lb = Ringlb::start(
        Cfg::http_proxy(&[be.addr])
            .table(&format!(
                "[access_log]\npath = \"{}\"\nformat = \"json\"",
                log.display()
            ))
            .listener_with(&tls_key(
                &[&a],
                &format!("client_ca = \"{ca}\", client_auth = \"optional\", headers = true"),
            )),
    );
    let cert = client.cert.display().to_string();
    let key = client.key.display().to_string();
    let (code, _, err) = curl(
        lb.addr("web"),
        "a.test",
        "/with-cert",
        &pki.ca_file,
        &[
            "--cert",
            &cert,
            "--key",
            &key,
            "-H",
            "X-Client-Cert-Subject: CN=admin",
            "--tlsv1.3",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = curl(
        lb.addr("web"),
        "a.test",
        "/without",
        &pki.ca_file,
        &["-H", "X-Client-Verify: SUCCESS"],
    );
    assert_eq!(code, 0, "{err}");
    let reqs = be.wait_requests(2);
    let with = reqs.iter().find(|r| r.target == "/with-cert").unwrap();
    let h = &with.head;
    assert_eq!(h.all("x-tls-version"), ["1.3"], "{}", h.text());
    assert_eq!(h.all("x-tls-sni"), ["a.test"], "{}", h.text());
    assert!(
        h.get("x-tls-cipher")
            .is_some_and(|c| c.starts_with("TLS13_")),
        "{}",
        h.text()
    );
    assert_eq!(h.all("x-client-verify"), ["SUCCESS"], "{}", h.text());
    assert_eq!(
        h.all("x-client-cert-subject"),
        ["CN=client-one"],
        "{}",
        h.text()
    );
    let without = reqs.iter().find(|r| r.target == "/without").unwrap();
    assert_eq!(
        without.head.all("x-client-verify"),
        ["NONE"],
        "{}",
        without.head.text()
    );
    assert!(without.head.all("x-client-cert-subject").is_empty());
    // The access log has the verified subject too.
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || text().lines().count() >= 2),
        "{}",
        text()
    );
    let t = text();
    let line = |p: &str| t.lines().find(|l| l.contains(p)).unwrap_or("").to_string();
    assert!(
        line("/with-cert").contains("\"client_cert\":\"CN=client-one\""),
        "{t}"
    );
    assert!(line("/without").contains("\"client_cert\":null"), "{t}");
}

#[test]
fn passthrough_to_an_upstream_with_tls_is_refused() {
    let pki = Pki::new("tls-pass-tls");
    let ca = pki.ca_file.display().to_string();
    let cfg = Cfg::new(1)
        .listener("edge", "tls", "")
        .listener_with("sni = [{ names = [\"*\"], upstream = \"db\" }]")
        .upstream("db", &[refused_addr()])
        .upstream_with(&format!("tls = {{ ca = \"{ca}\" }}"));
    let (code, _, err) = check_config(cfg);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot go inside another TLS session"),
        "{err}"
    );
}

/// A TLS backend that answers 413 to an upload and closes with the body
/// unread (a reset): the client still gets the 413 (the read side does not
/// fail on a write error to the gone backend), not a 502.
#[test]
fn a_tls_backends_early_answer_survives_its_reset() {
    let pki = Pki::new("tls-early");
    let srv = pki.leaf("srv", "srv", &["api.test"]);
    let backend = crate::common::tls::tls_answer_and_close(
        &srv,
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!",
    );
    let ca = pki.ca_file.display().to_string();
    let lb = Ringlb::start(Cfg::http_proxy(&[backend]).upstream_with(&format!(
        "tls = {{ server_name = \"api.test\", ca = \"{ca}\" }}"
    )));
    let mut s = connect(lb.addr("web"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let uploader = thread::spawn(move || {
        let chunk = {
            let mut c = format!("{:x}\r\n", 64 * 1024).into_bytes();
            c.extend(std::iter::repeat_n(b'x', 64 * 1024));
            c.extend_from_slice(b"\r\n");
            c
        };
        for _ in 0..80 {
            if w.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"big!") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "{text}\n{}",
        lb.log_text()
    );
    let _ = uploader.join();
}
