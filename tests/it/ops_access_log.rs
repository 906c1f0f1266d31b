//! The access log through the real binary: json, combined and stdout; one
//! line per request and per TCP connection; reopened on SIGUSR1.

use std::{
    io::{ErrorKind, Read},
    net::SocketAddr,
    path::Path,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::common::{
    admin::*,
    backends::*,
    http::*,
    json::{self, field, Json},
    *,
};

/// Connect and wait (5 s) until ringlb closes the connection; bytes received.
fn until_closed(addr: SocketAddr) -> (SocketAddr, Vec<u8>) {
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let local = s.local_addr().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("connection to {addr} not closed by ringlb: {e}"),
        }
    }
    (local, got)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn num(s: &str, what: &str) -> i64 {
    assert!(
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
        "{what}: {s:?} is not a number"
    );
    s.parse().unwrap()
}

/// `2026-11-22T02:40:00.123Z` (UTC, milliseconds): epoch ms.
fn iso_time_ms(t: &str) -> i64 {
    let b = t.as_bytes();
    assert!(
        t.len() == 24
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'.'
            && b[23] == b'Z',
        "time {t:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ"
    );
    let days = days_from_civil(num(&t[0..4], t), num(&t[5..7], t), num(&t[8..10], t));
    let secs =
        days * 86_400 + num(&t[11..13], t) * 3600 + num(&t[14..16], t) * 60 + num(&t[17..19], t);
    secs * 1000 + num(&t[20..23], t)
}

/// `22/Nov/2026:02:40:00 +0000`: epoch ms.
fn clf_time_ms(t: &str) -> i64 {
    let b = t.as_bytes();
    assert!(
        t.len() == 26
            && b[2] == b'/'
            && b[6] == b'/'
            && b[11] == b':'
            && b[14] == b':'
            && b[17] == b':'
            && t.ends_with(" +0000"),
        "time {t:?} is not DD/Mon/YYYY:HH:MM:SS +0000"
    );
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS
        .iter()
        .position(|m| *m == &t[3..6])
        .unwrap_or_else(|| panic!("month in {t:?}")) as i64
        + 1;
    let days = days_from_civil(num(&t[7..11], t), m, num(&t[0..2], t));
    (days * 86_400 + num(&t[12..14], t) * 3600 + num(&t[15..17], t) * 60 + num(&t[18..20], t))
        * 1000
}

/// A log timestamp within a minute of now (UTC, not local time).
fn assert_recent(ms: i64, t: &str) {
    let d = (now_ms() - ms).abs();
    assert!(d < 60_000, "time {t:?} is {d} ms away from now");
}

/// Non-empty lines of a file (empty when it does not exist).
fn file_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Waits (5 s) until `p` has at least `n` lines; then 300 ms more so that
/// extra lines would show; returns them.
fn wait_lines(p: &Path, n: usize) -> Vec<String> {
    wait_until(Duration::from_secs(5), || file_lines(p).len() >= n);
    thread::sleep(Duration::from_millis(300));
    file_lines(p)
}

/// Parses every line as one JSON object.
fn json_lines(lines: &[String]) -> Vec<Json> {
    lines
        .iter()
        .map(|line| {
            assert!(!line.contains('\r'), "CR in {line:?}");
            let v = json::parse(line)
                .unwrap_or_else(|e| panic!("access log line is not JSON: {e}\n{line}"));
            assert!(matches!(v, Json::Obj(_)), "not an object: {line}");
            v
        })
        .collect()
}

/// Three upstreams behind four listeners: "web" (http, routes /api/ only),
/// "raw" (tcp echo greeting "hi\n"), "idle" (the same with a 300 ms idle
/// timeout) and "dead" (tcp, its only server refuses). Listeners need
/// distinct addresses (config validation), hence 127.0.0.2-4.
fn access_config(access: &str, app: SocketAddr, echo: SocketAddr) -> Cfg {
    const CT: &str = "connect_timeout = \"1s\"";
    Cfg::new(2)
        .admin()
        .table(access)
        .http("web", "")
        .listener_with(CT)
        .route("path_prefix = \"/api/\"\nupstream = \"app\"")
        .tcp("raw", "echo")
        .listener_with(&format!("listen = \"127.0.0.2:0\"\n{CT}"))
        .tcp("idle", "echo")
        .listener_with(&format!(
            "listen = \"127.0.0.3:0\"\n{CT}\nidle_timeout = \"300ms\""
        ))
        .tcp("dead", "gone")
        .listener_with(&format!("listen = \"127.0.0.4:0\"\n{CT}"))
        .upstream("app", &[app])
        .upstream("echo", &[echo])
        .upstream("gone", &[refused_addr()])
}

/// The backend for the access log tests: `/api/slow` takes 150 ms.
fn app_backend() -> HttpBackend {
    HttpBackend::with(|r| {
        if r.target.starts_with("/api/slow") {
            Reply::ok(r, "slow").delayed(Duration::from_millis(150))
        } else {
            Reply::ok(r, "ok")
        }
    })
}

/// The X-Request-Id the backend got for the request to `target`.
fn backend_id(b: &HttpBackend, target: &str) -> String {
    b.requests()
        .iter()
        .find(|r| r.target == target)
        .and_then(|r| r.header("x-request-id").map(str::to_string))
        .unwrap_or_else(|| panic!("the backend never got {target}"))
}

#[test]
fn access_log_json_one_line_per_request_and_connection() {
    let dir = TempDir::new("json");
    let path = dir.path("access.log");
    let b = app_backend();
    let echo = EchoBackend::greeting("hi");
    let lb = Ringlb::start(access_config(
        &format!(
            "[access_log]\npath = \"{}\"\nformat = \"json\"\n",
            path.display()
        ),
        b.addr,
        echo.addr,
    ));
    let web = lb.addr("web");
    let ua = "User-Agent: ops-test/1.0\r\n";

    // (request id, method, path, status, backend used, client, bytes: (body, all))
    struct Want {
        id: String,
        method: &'static str,
        path: &'static str,
        status: u16,
        backend: bool,
        client: SocketAddr,
        ua: bool,
        body: usize,
        all: usize,
        slow: bool,
    }
    let mut want = Vec::new();
    let mut push = |s: &Sent, id: String, method, path, backend, ua: bool| {
        want.push(Want {
            id,
            method,
            path,
            status: s.resp.status,
            backend,
            client: s.client,
            ua,
            body: s.resp.body.len(),
            all: s.resp_bytes,
            slow: path == "/api/slow",
        })
    };
    let s = send(
        web,
        &get_req(
            "/api/a?x=1&y=%20",
            "t",
            &format!("{ua}X-Request-Id: ops-json-1\r\n"),
        ),
    );
    assert_eq!(s.resp.status, 200);
    push(
        &s,
        "ops-json-1".into(),
        "GET",
        "/api/a?x=1&y=%20",
        true,
        true,
    );
    let s = send(web, &get_req("/api/b", "t", ua));
    assert_eq!(s.resp.status, 200);
    push(&s, backend_id(&b, "/api/b"), "GET", "/api/b", true, true);
    let s = send(web, &get_req("/api/slow", "t", ua));
    assert_eq!(s.resp.status, 200);
    push(
        &s,
        backend_id(&b, "/api/slow"),
        "GET",
        "/api/slow",
        true,
        true,
    );
    let s = send(
        web,
        &get_req(
            "/other",
            "t",
            &format!("{ua}X-Request-Id: ops-json-404\r\n"),
        ),
    );
    assert_error(&s.resp, 404, "not found");
    push(&s, "ops-json-404".into(), "GET", "/other", false, true);
    let s = send(web, "POST /api/post HTTP/1.1\r\nHost: t\r\nUser-Agent: ops-test/1.0\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(s.resp.status, 200);
    push(
        &s,
        backend_id(&b, "/api/post"),
        "POST",
        "/api/post",
        true,
        true,
    );
    let s = send(web, &get_req("/api/noua", "t", ""));
    assert_eq!(s.resp.status, 200);
    push(
        &s,
        backend_id(&b, "/api/noua"),
        "GET",
        "/api/noua",
        true,
        false,
    );
    // Two requests on one keep-alive connection: two lines.
    let mut c = Client::connect(web);
    let client = c.w.s.local_addr().unwrap();
    for (p, id) in [("/api/ka1", "ops-ka-1"), ("/api/ka2", "ops-ka-2")] {
        c.send(get_req(p, "t", &format!("{ua}X-Request-Id: {id}\r\n")).as_bytes());
        let r = c.response();
        assert_eq!(r.status, 200);
        let all = r.head.raw.len() + r.body.len();
        let s = Sent {
            resp_bytes: all,
            resp: r,
            req_bytes: 0,
            client,
        };
        push(&s, id.into(), "GET", p, true, true);
    }
    drop(c);

    // TCP: two echo sessions, one idle timeout, one with no backend.
    let raw1 = tcp_session(lb.addr("raw"), b"hi\n", &pseudo_random(10, 1));
    let raw2 = tcp_session(lb.addr("raw"), b"hi\n", &pseudo_random(2000, 2));
    let (idle, got) = until_closed(lb.addr("idle"));
    assert_eq!(got, b"hi\n");
    let (dead, got) = until_closed(lb.addr("dead"));
    assert!(got.is_empty());

    let lines = wait_lines(&path, want.len() + 4);
    let objs = json_lines(&lines);
    assert_eq!(
        lines.len(),
        want.len() + 4,
        "want {} http + 4 tcp lines:\n{}",
        want.len(),
        lines.join("\n")
    );
    let (http, tcp): (Vec<&Json>, Vec<&Json>) =
        objs.iter().partition(|o| o.get("method").is_some());
    assert_eq!(http.len(), want.len(), "{}", lines.join("\n"));

    for w in &want {
        let hits: Vec<&&Json> = http
            .iter()
            .filter(|o| o.get("request_id").and_then(Json::str) == Some(w.id.as_str()))
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "lines for request id {}:\n{}",
            w.id,
            lines.join("\n")
        );
        let o = hits[0];
        for k in [
            "time",
            "listener",
            "client",
            "method",
            "path",
            "status",
            "bytes_sent",
            "request_id",
            "backend",
            "duration_ms",
            "user_agent",
        ] {
            assert!(o.get(k).is_some(), "no {k:?} in {o}");
        }
        let t = field(o, "time")
            .str()
            .unwrap_or_else(|| panic!("time in {o}"));
        assert_recent(iso_time_ms(t), t);
        assert_eq!(field(o, "listener").str(), Some("web"), "{o}");
        assert_eq!(
            field(o, "client").str(),
            Some(w.client.to_string().as_str()),
            "{o}"
        );
        assert_eq!(field(o, "method").str(), Some(w.method), "{o}");
        assert_eq!(field(o, "path").str(), Some(w.path), "{o}");
        assert_eq!(field(o, "status").uint(), Some(w.status as u64), "{o}");
        let bytes = field(o, "bytes_sent")
            .uint()
            .unwrap_or_else(|| panic!("bytes_sent in {o}"));
        assert!(
            bytes as usize == w.body || bytes as usize == w.all,
            "bytes_sent {bytes}: neither the body ({}) nor all bytes ({}) sent: {o}",
            w.body,
            w.all
        );
        if w.backend {
            assert_eq!(
                field(o, "backend").str(),
                Some(b.addr.to_string().as_str()),
                "{o}"
            );
        } else {
            assert!(field(o, "backend").is_null(), "backend should be null: {o}");
        }
        let ms = field(o, "duration_ms")
            .num()
            .unwrap_or_else(|| panic!("duration_ms in {o}"));
        assert!((0.0..5000.0).contains(&ms), "duration_ms {ms}: {o}");
        if w.slow {
            assert!(ms >= 140.0, "the 150 ms request logged {ms} ms: {o}");
        }
        let ua = field(o, "user_agent");
        if w.ua {
            assert_eq!(ua.str(), Some("ops-test/1.0"), "{o}");
        } else {
            assert!(
                ua.is_null() || ua.str() == Some(""),
                "user_agent without one: {o}"
            );
        }
    }

    let echo_s = echo.addr.to_string();
    // (listener, client, backend, bytes in, bytes out, acceptable ends)
    type TcpWant<'a> = (
        &'a str,
        SocketAddr,
        Option<&'a str>,
        u64,
        u64,
        &'a [&'a str],
    );
    let tcp_want: [TcpWant; 4] = [
        ("raw", raw1, Some(&echo_s), 10, 13, &["closed"]),
        ("raw", raw2, Some(&echo_s), 2000, 2003, &["closed"]),
        ("idle", idle, Some(&echo_s), 0, 3, &["idle"]),
        ("dead", dead, None, 0, 0, &["no_backend", "error"]),
    ];
    for (listener, client, backend, bin, bout, ends) in tcp_want {
        let hits: Vec<&&Json> = tcp
            .iter()
            .filter(|o| o.get("client").and_then(Json::str) == Some(client.to_string().as_str()))
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "lines for tcp client {client}:\n{}",
            lines.join("\n")
        );
        let o = hits[0];
        for k in [
            "time",
            "listener",
            "client",
            "backend",
            "bytes_in",
            "bytes_out",
            "duration_ms",
            "end",
        ] {
            assert!(o.get(k).is_some(), "no {k:?} in {o}");
        }
        let t = field(o, "time")
            .str()
            .unwrap_or_else(|| panic!("time in {o}"));
        assert_recent(iso_time_ms(t), t);
        assert_eq!(field(o, "listener").str(), Some(listener), "{o}");
        match backend {
            Some(a) => assert_eq!(field(o, "backend").str(), Some(a), "{o}"),
            None => assert!(field(o, "backend").is_null(), "backend should be null: {o}"),
        }
        assert_eq!(field(o, "bytes_in").uint(), Some(bin), "{o}");
        assert_eq!(field(o, "bytes_out").uint(), Some(bout), "{o}");
        let end = field(o, "end").str().unwrap_or("");
        assert!(
            ends.contains(&end),
            "end {end:?}, want one of {ends:?}: {o}"
        );
        let ms = field(o, "duration_ms").num().unwrap_or(-1.0);
        assert!((0.0..5000.0).contains(&ms), "duration_ms {ms}: {o}");
        if listener == "idle" {
            assert!(ms >= 250.0, "closed for idleness after {ms} ms: {o}");
        }
    }

    let m = scrape(&lb);
    let dropped = m
        .family("ringlb_access_log_dropped_total")
        .unwrap_or_else(|| {
            panic!(
                "no ringlb_access_log_dropped_total\n{}",
                m.dump("ringlb_access")
            )
        });
    assert_eq!(dropped.kind, "counter");
    assert_eq!(m.sum("ringlb_access_log_dropped_total", &[]), 0.0);
}

/// Splits a combined line into fields: `[...]` and `"..."` (with `\`
/// escapes) are single fields.
fn clf_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = line.chars().peekable();
    loop {
        while it.peek() == Some(&' ') {
            it.next();
        }
        let Some(c) = it.next() else { break };
        let mut f = String::new();
        match c {
            '[' => {
                for c in it.by_ref() {
                    if c == ']' {
                        break;
                    }
                    f.push(c);
                }
            }
            '"' => {
                while let Some(c) = it.next() {
                    match c {
                        '"' => break,
                        '\\' => f.extend(it.next()),
                        _ => f.push(c),
                    }
                }
            }
            _ => {
                f.push(c);
                while let Some(&c) = it.peek() {
                    if c == ' ' {
                        break;
                    }
                    f.push(c);
                    it.next();
                }
            }
        }
        out.push(f);
    }
    out
}

#[test]
fn access_log_combined_is_the_default_format() {
    let dir = TempDir::new("combined");
    let path = dir.path("access.log");
    let b = app_backend();
    let echo = EchoBackend::greeting("hi");
    let lb = Ringlb::start(access_config(
        &format!("[access_log]\npath = \"{}\"\n", path.display()),
        b.addr,
        echo.addr,
    ));
    let web = lb.addr("web");
    let s1 = send(
        web,
        &get_req(
            "/api/c1?x=y",
            "t",
            "Referer: http://ref.example/page\r\nUser-Agent: ops-test/2.0 (x; y)\r\nX-Request-Id: ops-clf-1\r\n",
        ),
    );
    assert_eq!(s1.resp.status, 200);
    let s2 = send(
        web,
        "GET /api/slow HTTP/1.0\r\nHost: t\r\nX-Request-Id: ops-clf-2\r\n\r\n",
    );
    assert_eq!(s2.resp.status, 200);
    let s3 = send(
        web,
        &get_req("/nowhere", "t", "X-Request-Id: ops-clf-3\r\n"),
    );
    assert_error(&s3.resp, 404, "not found");
    let tcp_client = tcp_session(lb.addr("raw"), b"hi\n", b"12345");

    let lines = wait_lines(&path, 4);
    assert_eq!(lines.len(), 4, "{}", lines.join("\n"));
    let app = b.addr.to_string();
    let echo_s = echo.addr.to_string();
    // (request id, request, status, referer, ua, backend, sent, at least seconds)
    type ClfWant<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a Sent,
        f64,
    );
    let cases: [ClfWant; 3] = [
        (
            "ops-clf-1",
            "GET /api/c1?x=y HTTP/1.1",
            "200",
            "http://ref.example/page",
            "ops-test/2.0 (x; y)",
            &app,
            &s1,
            0.0,
        ),
        (
            "ops-clf-2",
            "GET /api/slow HTTP/1.0",
            "200",
            "-",
            "-",
            &app,
            &s2,
            0.14,
        ),
        (
            "ops-clf-3",
            "GET /nowhere HTTP/1.1",
            "404",
            "-",
            "-",
            "-",
            &s3,
            0.0,
        ),
    ];
    for (id, request, status, referer, ua, backend, sent, min_s) in cases {
        let hits: Vec<Vec<String>> = lines
            .iter()
            .map(|l| clf_fields(l))
            .filter(|f| f.get(9).map(String::as_str) == Some(id))
            .collect();
        assert_eq!(hits.len(), 1, "lines for {id}:\n{}", lines.join("\n"));
        let f = &hits[0];
        assert_eq!(f.len(), 14, "fields of {f:?}");
        // Not TLS: no server name, no version.
        assert_eq!((f[12].as_str(), f[13].as_str()), ("-", "-"), "{f:?}");
        assert_eq!(f[0], "127.0.0.1", "{f:?}");
        assert_eq!((f[1].as_str(), f[2].as_str()), ("-", "-"), "{f:?}");
        assert_recent(clf_time_ms(&f[3]), &f[3]);
        assert_eq!(f[4], request, "{f:?}");
        assert_eq!(f[5], status, "{f:?}");
        let bytes: usize = f[6].parse().unwrap_or_else(|_| panic!("bytes {:?}", f[6]));
        assert!(
            bytes == sent.resp.body.len() || bytes == sent.resp_bytes,
            "bytes {bytes}: neither the body ({}) nor all ({}): {f:?}",
            sent.resp.body.len(),
            sent.resp_bytes
        );
        assert_eq!(f[7], referer, "{f:?}");
        assert_eq!(f[8], ua, "{f:?}");
        assert_eq!(f[10], backend, "{f:?}");
        let secs: f64 = f[11]
            .parse()
            .unwrap_or_else(|_| panic!("duration {:?}", f[11]));
        assert!(secs >= min_s && secs < 5.0, "duration {secs} s: {f:?}");
    }
    // IP - - [time] "TCP LISTENER" - BYTES_OUT "-" "-" - BACKEND DURATION_S
    let tcp: Vec<Vec<String>> = lines
        .iter()
        .map(|l| clf_fields(l))
        .filter(|f| f.get(4).is_some_and(|r| r.starts_with("TCP ")))
        .collect();
    assert_eq!(tcp.len(), 1, "{}", lines.join("\n"));
    let f = &tcp[0];
    assert_eq!(f.len(), 14, "fields of {f:?}");
    assert_eq!((f[12].as_str(), f[13].as_str()), ("-", "-"), "{f:?}");
    assert_eq!(f[0], tcp_client.ip().to_string());
    assert_recent(clf_time_ms(&f[3]), &f[3]);
    assert_eq!(f[4], "TCP raw");
    assert_eq!(f[5], "-");
    assert_eq!(f[6], "8", "bytes to the client (3 greeting + 5 echoed)");
    assert_eq!(
        (f[7].as_str(), f[8].as_str(), f[9].as_str()),
        ("-", "-", "-")
    );
    assert_eq!(f[10], echo_s);
    let secs: f64 = f[11]
        .parse()
        .unwrap_or_else(|_| panic!("duration {:?}", f[11]));
    assert!((0.0..5.0).contains(&secs), "{f:?}");
    // The raw line: quotes exactly where the format puts them.
    let raw = lines.iter().find(|l| l.contains("\"TCP raw\"")).unwrap();
    assert!(
        raw.starts_with(&format!("{} - - [", tcp_client.ip()))
            && raw.contains("] \"TCP raw\" - 8 \"-\" \"-\" - "),
        "{raw}"
    );
}

#[test]
fn access_log_to_stdout() {
    let b = app_backend();
    let echo = EchoBackend::greeting("hi");
    let lb = Ringlb::start_opts(
        access_config(
            "[access_log]\npath = \"stdout\"\nformat = \"json\"\n",
            b.addr,
            echo.addr,
        ),
        Opts {
            stdout: true,
            ..Opts::default()
        },
    );
    for i in 0..3 {
        let s = send(
            lb.addr("web"),
            &get_req(
                &format!("/api/out{i}"),
                "t",
                &format!("X-Request-Id: ops-out-{i}\r\n"),
            ),
        );
        assert_eq!(s.resp.status, 200);
    }
    let out = || lb.stdout.lock().unwrap().clone();
    wait_until(Duration::from_secs(5), || out().len() >= 3);
    thread::sleep(Duration::from_millis(300));
    let lines = out();
    assert_eq!(lines.len(), 3, "stdout:\n{}", lines.join("\n"));
    let objs = json_lines(&lines);
    for i in 0..3 {
        let id = format!("ops-out-{i}");
        assert_eq!(
            objs.iter()
                .filter(|o| o.get("request_id").and_then(Json::str) == Some(id.as_str()))
                .count(),
            1,
            "{id}: {}",
            lines.join("\n")
        );
    }
    // The error log stays on stderr.
    assert!(lb.log_text().contains(" ready: "));
}

#[test]
fn access_log_reopens_on_sigusr1() {
    let dir = TempDir::new("reopen");
    let path = dir.path("access.log");
    let rotated = dir.path("access.log.1");
    let b = app_backend();
    let echo = EchoBackend::greeting("hi");
    let mut lb = Ringlb::start(access_config(
        &format!(
            "[access_log]\npath = \"{}\"\nformat = \"json\"\n",
            path.display()
        ),
        b.addr,
        echo.addr,
    ));
    let web = lb.addr("web");
    let ids = |lines: &[String]| -> Vec<String> {
        json_lines(lines)
            .iter()
            .map(|o| field(o, "request_id").str().unwrap_or("").to_string())
            .collect()
    };
    let burst = |tag: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|i| {
                let id = format!("ops-{tag}-{i}");
                let s = send(
                    web,
                    &get_req(
                        &format!("/api/{tag}{i}"),
                        "t",
                        &format!("X-Request-Id: {id}\r\n"),
                    ),
                );
                assert_eq!(s.resp.status, 200);
                id
            })
            .collect()
    };

    let old = burst("old", 3);
    assert_eq!(ids(&wait_lines(&path, 3)), old);

    // logrotate: rename, then SIGUSR1.
    std::fs::rename(&path, &rotated).unwrap();
    lb.signal("USR1");
    // The file may be created at once or at the next line.
    wait_until(Duration::from_secs(1), || path.exists());
    let new = burst("new", 4);
    assert_eq!(
        ids(&wait_lines(&path, 4)),
        new,
        "new lines at the configured path"
    );
    assert_eq!(
        ids(&file_lines(&rotated)),
        old,
        "the rotated file keeps the old lines only"
    );

    // SIGUSR1 without a rename: the same file, appended to, not truncated.
    lb.signal("USR1");
    thread::sleep(Duration::from_millis(200));
    let more = burst("more", 2);
    let all: Vec<String> = new.iter().chain(more.iter()).cloned().collect();
    assert_eq!(ids(&wait_lines(&path, 6)), all);
    assert_eq!(ids(&file_lines(&rotated)), old);

    // Still serving, and still alive (SIGUSR1's default action would kill it).
    assert!(matches!(lb.child.try_wait(), Ok(None)), "{}", lb.log_text());
    let mut s = connect(lb.addr("raw"));
    let mut g = [0u8; 3];
    s.read_exact(&mut g).unwrap();
    assert_eq!(&g, b"hi\n");
}
