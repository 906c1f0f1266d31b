//! Operations through the real binary (issue 6): the admin listener
//! (/healthz, /readyz, /status, /metrics), Prometheus metrics checked by a
//! strict text-format parser (tests/common/prom.rs) and against the traffic
//! each test sent, the access log (json, combined, stdout; one line per
//! request and per TCP connection; reopened on SIGUSR1), sd_notify on a
//! NOTIFY_SOCKET the test binds, and the log level from `[log] level` and
//! RINGLB_LOG.
//!
//! Everything is on loopback with ephemeral ports; every socket has a read
//! timeout and every wait is bounded, so a missing feature fails a test
//! instead of hanging it.

mod common;

use std::{
    io::{ErrorKind, Read},
    net::{Shutdown, SocketAddr},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::{backends::*, http::*, json::Json, prom::Exposition, *};

/// The histogram buckets the spec fixes (upper bounds in seconds, then +Inf).
const BUCKETS: [f64; 15] = [
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    f64::INFINITY,
];

/// Every family the spec names: (name, type, label names of its samples
/// without `le`, sorted).
const FAMILIES: &[(&str, &str, &[&str])] = &[
    (
        "ringlb_connections_accepted_total",
        "counter",
        &["listener"],
    ),
    ("ringlb_connections_active", "gauge", &["listener"]),
    (
        "ringlb_connections_rejected_total",
        "counter",
        &["listener", "reason"],
    ),
    ("ringlb_listener_max_connections", "gauge", &["listener"]),
    ("ringlb_limiter_saturated_total", "counter", &["listener"]),
    ("ringlb_bytes_received_total", "counter", &["listener"]),
    ("ringlb_bytes_sent_total", "counter", &["listener"]),
    (
        "ringlb_http_requests_total",
        "counter",
        &["class", "listener", "route"],
    ),
    (
        "ringlb_rate_limited_total",
        "counter",
        &["listener", "route"],
    ),
    ("ringlb_retries_total", "counter", &["listener"]),
    (
        "ringlb_backend_requests_total",
        "counter",
        &["backend", "upstream"],
    ),
    (
        "ringlb_backend_failures_total",
        "counter",
        &["backend", "upstream"],
    ),
    ("ringlb_backend_up", "gauge", &["backend", "upstream"]),
    ("ringlb_backend_active", "gauge", &["backend", "upstream"]),
    (
        "ringlb_health_transitions_total",
        "counter",
        &["backend", "to", "upstream"],
    ),
    (
        "ringlb_http_request_duration_seconds",
        "histogram",
        &["listener"],
    ),
    (
        "ringlb_upstream_connect_duration_seconds",
        "histogram",
        &["upstream"],
    ),
    (
        "ringlb_upstream_response_duration_seconds",
        "histogram",
        &["upstream"],
    ),
];

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// Active tcp checks that decide at the first verdict, circuit breaker off.
const HEALTH_FAST: &str = "health = { kind = \"tcp\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }\neject = { failures = 0 }";

// ------------------------------------------------------------ helpers

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A temp directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("ringlb-ops-{}-{what}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `GET path` on the admin listener (fresh connection).
fn admin_get(lb: &Ringlb, path: &str) -> Resp {
    roundtrip(
        lb.admin_addr(),
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes(),
    )
}

/// /metrics, checked (200, content type) and strictly parsed.
fn scrape(lb: &Ringlb) -> Exposition {
    scrape_text(lb).0
}

/// /metrics parsed, and its text.
fn scrape_text(lb: &Ringlb) -> (Exposition, String) {
    let r = admin_get(lb, "/metrics");
    assert_eq!(r.status, 200, "{}{}", r.head.text(), r.text());
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("text/plain; version=0.0.4"),
        "content type {ct:?}"
    );
    let text = r.text();
    let m = common::prom::parse(&text).unwrap_or_else(|e| {
        panic!("/metrics is not valid exposition: {e}\n--- full text:\n{text}")
    });
    (m, text)
}

/// `promtool check metrics` (parse and lint) must pass too, when promtool
/// is installed (on PATH, or named by $PROMTOOL); skipped otherwise.
fn promtool_check(text: &str) {
    use std::{io::Write, process::Stdio};
    let tool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let Ok(mut child) = Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("{tool} not found: skipping the promtool cross-check");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- text:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// /status, parsed.
fn status(lb: &Ringlb) -> Json {
    let r = admin_get(lb, "/status");
    assert_eq!(r.status, 200, "{}{}", r.head.text(), r.text());
    let ct = r.header("content-type").unwrap_or("");
    assert!(ct.starts_with("application/json"), "content type {ct:?}");
    common::json::parse(&r.text())
        .unwrap_or_else(|e| panic!("/status is not JSON: {e}\n{}", r.text()))
}

/// The member `key` of a JSON object, or a panic naming it.
fn field<'a>(v: &'a Json, key: &str) -> &'a Json {
    v.get(key).unwrap_or_else(|| panic!("no {key:?} in {v}"))
}

/// The element of array `arr` whose `key` is the string `want`.
fn find_by<'a>(arr: &'a Json, key: &str, want: &str) -> &'a Json {
    arr.arr()
        .unwrap_or_else(|| panic!("not an array: {arr}"))
        .iter()
        .find(|v| v.get(key).and_then(Json::str) == Some(want))
        .unwrap_or_else(|| panic!("no element with {key} = {want:?} in {arr}"))
}

/// The backend `addr` of upstream `up` in a /status answer.
fn status_backend(st: &Json, up: &str, addr: SocketAddr) -> Json {
    let u = find_by(field(st, "upstreams"), "name", up);
    find_by(field(u, "backends"), "addr", &addr.to_string()).clone()
}

/// Polls /metrics until `f` holds (5 s); returns the last scrape either way.
fn scrape_until(lb: &Ringlb, mut f: impl FnMut(&Exposition) -> bool) -> Exposition {
    let mut last = scrape(lb);
    for _ in 0..100 {
        if f(&last) {
            break;
        }
        thread::sleep(Duration::from_millis(50));
        last = scrape(lb);
    }
    last
}

fn lbl(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// A sample's expected value: (metric, exact labels, value).
type Expect<'a> = (&'a str, Vec<(String, String)>, f64);

/// The expectations that do not hold.
fn mismatches(m: &Exposition, want: &[Expect]) -> Vec<String> {
    want.iter()
        .filter_map(|(name, labels, v)| {
            let lv: Vec<(&str, &str)> = labels
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            let got = m.get(name, &lv);
            (got != Some(*v)).then(|| format!("{name}{labels:?}: want {v}, got {got:?}"))
        })
        .collect()
}

/// Every spec family is declared with its type; every sample carries
/// exactly the spec's labels; histograms have the spec's buckets; every
/// family is prefixed `ringlb_` and counters end in `_total`.
fn assert_schema(m: &Exposition) {
    for (name, kind, labels) in FAMILIES {
        let f = m
            .family(name)
            .unwrap_or_else(|| panic!("family {name} missing"));
        assert_eq!(f.kind, *kind, "type of {name}");
        for s in &f.samples {
            let mut names = s.label_names();
            names.retain(|n| *n != "le");
            assert_eq!(&names, labels, "labels of {} (line {})", s.name, s.line);
        }
        if *kind == "histogram" {
            let bucket = format!("{name}_bucket");
            let mut series: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
            for s in f.samples.iter().filter(|s| s.name == bucket) {
                let key = format!(
                    "{:?}",
                    s.labels
                        .iter()
                        .filter(|(n, _)| n != "le")
                        .collect::<Vec<_>>()
                );
                let le = common::prom::parse_value(s.label("le").unwrap()).unwrap();
                series.entry(key).or_default().push(le);
            }
            for (key, les) in series {
                assert_eq!(les, BUCKETS, "buckets of {name} {key}");
            }
        }
    }
    for f in &m.families {
        assert!(
            f.name.starts_with("ringlb_"),
            "family {} lacks the ringlb_ prefix",
            f.name
        );
        if f.kind == "counter" {
            assert!(
                f.name.ends_with("_total"),
                "counter {} does not end in _total",
                f.name
            );
        }
    }
    for s in m.samples("ringlb_http_requests_total") {
        let class = s.label("class").unwrap();
        assert!(
            ["1xx", "2xx", "3xx", "4xx", "5xx"].contains(&class),
            "class {class:?}"
        );
    }
}

/// One request on a fresh connection.
struct Sent {
    resp: Resp,
    /// Bytes written by the client.
    req_bytes: usize,
    /// Bytes of the response as received (head and body).
    resp_bytes: usize,
    client: SocketAddr,
}

fn send(addr: SocketAddr, raw: &str) -> Sent {
    let mut c = Client::connect(addr);
    let client = c.w.s.local_addr().unwrap();
    c.send(raw.as_bytes());
    let resp = c.response();
    let resp_bytes = resp.head.raw.len() + resp.body.len();
    Sent {
        resp,
        req_bytes: raw.len(),
        resp_bytes,
        client,
    }
}

fn get_req(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n")
}

/// A TCP session through an echo backend greeting with `greeting`: read
/// the greeting, echo `payload`, half-close, read to EOF. The client address.
fn tcp_session(addr: SocketAddr, greeting: &[u8], payload: &[u8]) -> SocketAddr {
    let mut s = connect(addr);
    let local = s.local_addr().unwrap();
    let mut g = vec![0u8; greeting.len()];
    s.read_exact(&mut g).unwrap();
    assert_eq!(g, greeting);
    if !payload.is_empty() {
        assert_eq!(echo_roundtrip(&mut s, payload), payload);
    }
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "bytes after the echo: {rest:?}");
    local
}

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
            let v = common::json::parse(line)
                .unwrap_or_else(|e| panic!("access log line is not JSON: {e}\n{line}"));
            assert!(matches!(v, Json::Obj(_)), "not an object: {line}");
            v
        })
        .collect()
}

/// The level field of a log line (`<time> LEVEL message`).
fn level(line: &str) -> Option<&str> {
    line.split_whitespace()
        .nth(1)
        .filter(|l| ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(l))
}

fn lines_at(lb: &Ringlb, lvl: &str) -> Vec<String> {
    lb.log_text()
        .lines()
        .filter(|l| level(l) == Some(lvl))
        .map(str::to_string)
        .collect()
}

/// A unix datagram socket for NOTIFY_SOCKET in a temp dir.
fn notify_socket(dir: &TempDir) -> (UnixDatagram, PathBuf) {
    let p = dir.path("notify.sock");
    let s = UnixDatagram::bind(&p).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (s, p)
}

/// Datagrams until one has the line `want` (up to `limit`); all received so
/// far, and whether `want` came.
fn recv_until(sock: &UnixDatagram, want: &str, limit: Duration, got: &mut Vec<String>) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let hit = msg.lines().any(|l| l == want);
            got.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

fn check(text: &str) -> (i32, String) {
    let path = temp_file("ops-check", text);
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ------------------------------------------------ the parsers themselves

const GOOD_EXPOSITION: &str = r#"# HELP ringlb_x_total Things, with a \\ and a \n.
# TYPE ringlb_x_total counter
ringlb_x_total{listener="a",path="q\"uote\\back\nnl"} 3
ringlb_x_total{listener="b",} 0
# a comment
# HELP ringlb_g A gauge.
# TYPE ringlb_g gauge
ringlb_g -1.5e3
ringlb_g{a="1"} NaN
ringlb_g{a="2"} +Inf 1700000000000

# HELP ringlb_h_seconds Latency.
# TYPE ringlb_h_seconds histogram
ringlb_h_seconds_bucket{listener="a",le="0.1"} 1
ringlb_h_seconds_bucket{listener="a",le="1"} 3
ringlb_h_seconds_bucket{listener="a",le="+Inf"} 4
ringlb_h_seconds_sum{listener="a"} 7.25
ringlb_h_seconds_count{listener="a"} 4
ringlb_h_seconds_bucket{listener="b",le="0.1"} 0
ringlb_h_seconds_bucket{listener="b",le="+Inf"} 0
ringlb_h_seconds_sum{listener="b"} 0
ringlb_h_seconds_count{listener="b"} 0
"#;

#[test]
fn prometheus_parser_accepts_valid_and_rejects_invalid_text() {
    let m = common::prom::parse(GOOD_EXPOSITION).unwrap();
    assert_eq!(m.families.len(), 3);
    assert_eq!(
        m.get(
            "ringlb_x_total",
            &[("listener", "a"), ("path", "q\"uote\\back\nnl")]
        ),
        Some(3.0)
    );
    assert_eq!(
        m.family("ringlb_x_total").unwrap().help,
        "Things, with a \\ and a \n."
    );
    assert_eq!(m.get("ringlb_g", &[]), Some(-1500.0));
    assert_eq!(
        m.get("ringlb_h_seconds_count", &[("listener", "a")]),
        Some(4.0)
    );
    assert_eq!(m.sum("ringlb_h_seconds_count", &[]), 4.0);

    let head = "# HELP m_total x\n# TYPE m_total counter\n";
    let hist = "# HELP h x\n# TYPE h histogram\n";
    let bad: Vec<(String, &str)> = vec![
        ("m_total 1\n".into(), "no TYPE"),
        (format!("{head}m_total 1"), "no final newline"),
        ("# TYPE m_total counter\nm_total 1\n".into(), "no HELP"),
        ("# HELP m_total x\nm_total 1\n".into(), "HELP, no TYPE"),
        (format!("{head}# TYPE m_total counter\nm_total 1\n"), "TYPE twice"),
        (format!("{head}m_total 1\n# HELP m_total y\n"), "HELP twice"),
        ("# HELP m x\n# TYPE m countr\nm 1\n".into(), "unknown type"),
        ("# HELP m x\n# TYPE m gauge\n# TYPE m gauge\n".into(), "TYPE twice, no samples"),
        (format!("{head}m_total -1\n"), "negative counter"),
        (format!("{head}m_total NaN\n"), "NaN counter"),
        (format!("{head}m_total 1.2.3\n"), "bad value"),
        (format!("{head}m_total inf\n"), "inf (Go accepts it; not canonical)"),
        (format!("{head}m_total 0x10\n"), "hex value"),
        (format!("{head}m_total\n"), "no value"),
        (format!("{head}m_total  1\n"), "two spaces"),
        (format!("{head}m_total 1 \n"), "trailing blank"),
        (format!("{head} m_total 1\n"), "leading blank"),
        (format!("{head}m_total 1 12.5\n"), "float timestamp"),
        (format!("{head}m_total 1\r\n"), "CRLF"),
        (format!("{head}m_total{{a=\"1\"}} 1\nm_total{{a=\"1\"}} 2\n"), "series twice"),
        (format!("{head}m_total{{a=1}} 1\n"), "unquoted label value"),
        (format!("{head}m_total{{a=\"x\\t\"}} 1\n"), "bad label escape"),
        (format!("{head}m_total{{a=\"x}} 1\n"), "unterminated label value"),
        (format!("{head}m_total{{a=\"1\",a=\"2\"}} 1\n"), "label twice"),
        (format!("{head}m_total{{1a=\"1\"}} 1\n"), "bad label name"),
        (format!("{head}m_total{{__a=\"1\"}} 1\n"), "reserved label name"),
        (format!("{head}m_total{{a=\"1\"b=\"2\"}} 1\n"), "no comma between labels"),
        (format!("{head}m_total{{a=\"1\",,}} 1\n"), "two commas"),
        ("# HELP 1m x\n# TYPE 1m gauge\n1m 1\n".into(), "bad metric name"),
        ("# HELP m x\\t\n# TYPE m gauge\nm 1\n".into(), "bad HELP escape"),
        ("# HELP m \n# TYPE m gauge\nm 1\n".into(), "empty HELP"),
        (
            "# HELP a x\n# TYPE a gauge\na 1\n# HELP b x\n# TYPE b gauge\nb 1\na{x=\"1\"} 2\n".into(),
            "family not in one group",
        ),
        (format!("{head}m_total 1\n# TYPE m_total counter\n"), "TYPE after samples"),
        (format!("{hist}h_bucket{{le=\"1\"}} 1\nh_sum 1\nh_count 1\n"), "no +Inf bucket"),
        (
            format!("{hist}h_bucket{{le=\"1\"}} 2\nh_bucket{{le=\"+Inf\"}} 1\nh_sum 1\nh_count 1\n"),
            "not cumulative",
        ),
        (
            format!("{hist}h_bucket{{le=\"2\"}} 1\nh_bucket{{le=\"1\"}} 1\nh_bucket{{le=\"+Inf\"}} 1\nh_sum 1\nh_count 1\n"),
            "le not increasing",
        ),
        (
            format!("{hist}h_bucket{{le=\"+Inf\"}} 3\nh_sum 1\nh_count 2\n"),
            "count != +Inf",
        ),
        (format!("{hist}h_bucket{{le=\"+Inf\"}} 3\nh_count 3\n"), "no _sum"),
        (format!("{hist}h_bucket{{le=\"+Inf\"}} 3\nh_sum 1\n"), "no _count"),
        (format!("{hist}h_bucket 3\nh_sum 1\nh_count 3\n"), "bucket without le"),
        (format!("{hist}h_bucket{{le=\"x\"}} 3\nh_sum 1\nh_count 3\n"), "bad le"),
        (
            format!("{hist}h_bucket{{le=\"+Inf\"}} 1.5\nh_sum 1\nh_count 1.5\n"),
            "fractional bucket",
        ),
        (format!("{hist}h_bucket{{le=\"+Inf\"}} 1\nh_sum{{le=\"1\"}} 1\nh_count 1\n"), "le on _sum"),
        (format!("{hist}h 1\n"), "bare histogram sample"),
        (format!("{head}m_total_bucket{{le=\"1\"}} 1\n"), "bucket of a counter"),
    ];
    for (text, what) in bad {
        assert!(
            common::prom::parse(&text).is_err(),
            "accepted ({what}):\n{text}"
        );
    }
}

#[test]
fn json_parser_is_strict() {
    let v = common::json::parse(
        r#" {"a":[1,-2.5e3,true,null],"b":"x\"\\\n\u00e9\ud83d\ude00","c":{}} "#,
    )
    .unwrap();
    assert_eq!(field(&v, "b").str(), Some("x\"\\\né😀"));
    assert_eq!(field(&v, "a").arr().unwrap()[1].num(), Some(-2500.0));
    for bad in [
        "",
        "{",
        "{\"a\":1,}",
        "[1,]",
        "{\"a\":1,\"a\":2}",
        "01",
        "1.",
        "+1",
        "\"\t\"",
        "'x'",
        "{\"a\" 1}",
        "nul",
        "{} {}",
        "\"\\x\"",
        "\"\\ud800\"",
        "NaN",
    ] {
        assert!(common::json::parse(bad).is_err(), "accepted {bad:?}");
    }
}

// ------------------------------------------------------------ admin

#[test]
fn admin_healthz_and_unknown_paths() {
    let echo = Echo::start();
    let lb = Ringlb::start(&format!("{ADMIN}\n{}", l4_config(&[echo.addr], "", "", "")));
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
    let echo = Echo::start();
    let lb = Ringlb::start(&l4_config(&[echo.addr], "", "", ""));
    thread::sleep(Duration::from_millis(200));
    assert!(
        !lb.log_text().contains("admin listening on"),
        "{}",
        lb.log_text()
    );
}

#[test]
fn readyz_follows_active_health_checks() {
    let b = HttpBackend::start("only");
    let cfg = format!(
        "[runtime]\nworkers = 2\n\n{ADMIN}\n[[listener]]\nname = \"web\"\nmode = \"http\"\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\nconnect_timeout = \"1s\"\n\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n{HEALTH_FAST}\n",
        b.addr()
    );
    let lb = Ringlb::start(&cfg);
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
    let be = status_backend(&st, "app", b.addr());
    assert_eq!(field(&be, "health").str(), Some("down"), "{be}");
    assert_eq!(field(&be, "up").bool(), Some(false), "{be}");
    let bl = lbl(&[("upstream", "app"), ("backend", &b.addr().to_string())]);
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
    let be = status_backend(&status(&lb), "app", b.addr());
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
    let m = scrape_until(&lb, |m| mismatches(m, &want).is_empty());
    assert_eq!(
        mismatches(&m, &want),
        Vec::<String>::new(),
        "\n{}",
        m.dump("ringlb_")
    );
    assert_schema(&m);
}

#[test]
fn readyz_503_when_every_circuit_is_open() {
    // Connect failures count for passive ejection: 2 per backend open both
    // circuits (no active checks), so no backend of "app" is available.
    let (a, b) = (refused_addr(), refused_addr());
    let cfg = format!(
        "[runtime]\nworkers = 1\n\n{ADMIN}\n[[listener]]\nname = \"l\"\nmode = \"http\"\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\nconnect_timeout = \"1s\"\n\n[upstream.app]\nservers = [{{ addr = \"{a}\" }}, {{ addr = \"{b}\" }}]\neject = {{ failures = 2, cooldown = \"10s\" }}\n"
    );
    let lb = Ringlb::start(&cfg);
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
    let (b1, b2) = (Backend::start(), Backend::start());
    let echo = Echo::start();
    let cfg = format!(
        "[runtime]\nworkers = 2\n\n{ADMIN}\n\
         [[listener]]\nname = \"web\"\nmode = \"http\"\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\nmax_connections = 200\n\n\
         [[listener]]\nname = \"raw\"\nmode = \"tcp\"\nlisten = \"127.0.0.2:0\"\nupstream = \"echo\"\nmax_connections = 50\n\n\
         [upstream.app]\nservers = [{{ addr = \"{}\" }}, {{ addr = \"{}\", backup = true }}]\n\n\
         [upstream.echo]\nservers = [{{ addr = \"{}\" }}]\n",
        b1.addr, b2.addr, echo.addr
    );
    let lb = Ringlb::start(&cfg);
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

// ------------------------------------------------------------ metrics

#[test]
fn metrics_parse_strictly_and_count_the_traffic() {
    let b = Backend::with(|r| {
        if r.target.starts_with("/api/missing") {
            Reply::new(r, 404, &[("Content-Type", "text/plain")], b"no such thing")
        } else {
            Reply::ok(r, "ok")
        }
    });
    let echo = Echo::with_greeting(Some("hi\n"));
    let cfg = format!(
        "[runtime]\nworkers = 2\n\n{ADMIN}\n\
         [[listener]]\nname = \"web\"\nmode = \"http\"\nlisten = \"127.0.0.1:0\"\nconnect_timeout = \"1s\"\nmax_connections = 200\n\
         [[listener.route]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n\
         [[listener.route]]\nhost = \"api.example.com\"\npath_prefix = \"/v1/\"\nupstream = \"app\"\n\
         [[listener.route]]\npath_prefix = \"/limited/\"\nupstream = \"app\"\nrate_limit = {{ rate = 0.001, burst = 2 }}\n\n\
         [[listener]]\nname = \"raw\"\nmode = \"tcp\"\nlisten = \"127.0.0.2:0\"\nupstream = \"echo\"\nconnect_timeout = \"1s\"\nmax_connections = 50\n\n\
         [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n\n\
         [upstream.echo]\nservers = [{{ addr = \"{}\" }}]\n",
        b.addr, echo.addr
    );
    let lb = Ringlb::start(&cfg);
    let web = lb.addr("web");

    // Before any traffic: valid, complete, nothing counted.
    let m = scrape(&lb);
    assert_schema(&m);
    assert_eq!(
        m.sum("ringlb_http_requests_total", &[]),
        0.0,
        "\n{}",
        m.dump("ringlb_http")
    );
    assert_eq!(m.sum("ringlb_connections_accepted_total", &[]), 0.0);

    // HTTP, one request per fresh connection (spread over both workers).
    let mut sent = Vec::new();
    for i in 0..6 {
        let s = send(web, &get_req(&format!("/api/ok/{i}"), "t", ""));
        assert_eq!(s.resp.status, 200);
        sent.push(s);
    }
    let s = send(web, &get_req("/v1/x", "api.example.com", ""));
    assert_eq!(s.resp.status, 200);
    sent.push(s);
    let s = send(web, &get_req("/api/missing", "t", ""));
    assert_eq!(s.resp.status, 404, "backend 404");
    sent.push(s);
    let s = send(web, &get_req("/other", "t", ""));
    assert_error(&s.resp, 404, "not found");
    sent.push(s);
    let mut limited = Vec::new();
    for i in 0..5 {
        let s = send(web, &get_req(&format!("/limited/{i}"), "t", ""));
        limited.push(s.resp.status);
        sent.push(s);
    }
    assert_eq!(limited, [200, 200, 429, 429, 429]);
    let req_bytes: usize = sent.iter().map(|s| s.req_bytes).sum();
    let resp_bytes: usize = sent.iter().map(|s| s.resp_bytes).sum();

    // TCP: 3 connections with known sizes; the backend greets with 3 bytes.
    let sizes = [100usize, 1000, 10_000];
    for (i, n) in sizes.iter().enumerate() {
        tcp_session(lb.addr("raw"), b"hi\n", &pseudo_random(*n, i as u64 + 1));
    }
    let tcp_in: usize = sizes.iter().sum();
    let tcp_out = tcp_in + 3 * sizes.len();

    let app = b.addr.to_string();
    let echo_s = echo.addr.to_string();
    let route = |r: &str, c: &str| lbl(&[("listener", "web"), ("route", r), ("class", c)]);
    let want = vec![
        ("ringlb_http_requests_total", route("*/api/", "2xx"), 6.0),
        (
            "ringlb_http_requests_total",
            route("api.example.com/v1/", "2xx"),
            1.0,
        ),
        ("ringlb_http_requests_total", route("*/api/", "4xx"), 1.0),
        ("ringlb_http_requests_total", route("none", "4xx"), 1.0),
        (
            "ringlb_http_requests_total",
            route("*/limited/", "2xx"),
            2.0,
        ),
        (
            "ringlb_http_requests_total",
            route("*/limited/", "4xx"),
            3.0,
        ),
        (
            "ringlb_rate_limited_total",
            lbl(&[("listener", "web"), ("route", "*/limited/")]),
            3.0,
        ),
        (
            "ringlb_connections_accepted_total",
            lbl(&[("listener", "web")]),
            14.0,
        ),
        (
            "ringlb_connections_accepted_total",
            lbl(&[("listener", "raw")]),
            3.0,
        ),
        (
            "ringlb_connections_active",
            lbl(&[("listener", "web")]),
            0.0,
        ),
        (
            "ringlb_connections_active",
            lbl(&[("listener", "raw")]),
            0.0,
        ),
        (
            "ringlb_listener_max_connections",
            lbl(&[("listener", "web")]),
            200.0,
        ),
        (
            "ringlb_listener_max_connections",
            lbl(&[("listener", "raw")]),
            50.0,
        ),
        (
            "ringlb_bytes_received_total",
            lbl(&[("listener", "raw")]),
            tcp_in as f64,
        ),
        (
            "ringlb_bytes_sent_total",
            lbl(&[("listener", "raw")]),
            tcp_out as f64,
        ),
        (
            "ringlb_bytes_received_total",
            lbl(&[("listener", "web")]),
            req_bytes as f64,
        ),
        (
            "ringlb_bytes_sent_total",
            lbl(&[("listener", "web")]),
            resp_bytes as f64,
        ),
        ("ringlb_retries_total", lbl(&[("listener", "web")]), 0.0),
        (
            "ringlb_backend_requests_total",
            lbl(&[("upstream", "app"), ("backend", &app)]),
            10.0,
        ),
        (
            "ringlb_backend_requests_total",
            lbl(&[("upstream", "echo"), ("backend", &echo_s)]),
            3.0,
        ),
        (
            "ringlb_backend_failures_total",
            lbl(&[("upstream", "app"), ("backend", &app)]),
            0.0,
        ),
        (
            "ringlb_backend_up",
            lbl(&[("upstream", "app"), ("backend", &app)]),
            1.0,
        ),
        (
            "ringlb_backend_up",
            lbl(&[("upstream", "echo"), ("backend", &echo_s)]),
            1.0,
        ),
        (
            "ringlb_backend_active",
            lbl(&[("upstream", "echo"), ("backend", &echo_s)]),
            0.0,
        ),
        (
            "ringlb_http_request_duration_seconds_count",
            lbl(&[("listener", "web")]),
            14.0,
        ),
        (
            "ringlb_upstream_response_duration_seconds_count",
            lbl(&[("upstream", "app")]),
            10.0,
        ),
        (
            "ringlb_upstream_connect_duration_seconds_count",
            lbl(&[("upstream", "app")]),
            b.conns.load(Ordering::SeqCst) as f64,
        ),
        (
            "ringlb_upstream_connect_duration_seconds_count",
            lbl(&[("upstream", "echo")]),
            3.0,
        ),
    ];
    let m = scrape_until(&lb, |m| mismatches(m, &want).is_empty());
    let bad = mismatches(&m, &want);
    assert!(
        bad.is_empty(),
        "metrics do not match the traffic:\n  {}\n--- ringlb samples:\n{}",
        bad.join("\n  "),
        m.dump("ringlb_")
    );
    assert_schema(&m);
    promtool_check(&scrape_text(&lb).1);
    // The 14 requests are all there is; nothing counted for other labels.
    assert_eq!(m.sum("ringlb_http_requests_total", &[]), 14.0);
    assert_eq!(m.sum("ringlb_rate_limited_total", &[]), 3.0);
    for name in [
        "ringlb_connections_rejected_total",
        "ringlb_limiter_saturated_total",
        "ringlb_health_transitions_total",
    ] {
        assert_eq!(m.sum(name, &[]), 0.0, "{name}\n{}", m.dump(name));
    }
    // Durations are seconds: 14 quick loopback requests sum to well under 14 s.
    let sum = m
        .get(
            "ringlb_http_request_duration_seconds_sum",
            &[("listener", "web")],
        )
        .unwrap();
    assert!(sum > 0.0 && sum < 14.0, "request duration sum {sum}");
    let sum = m
        .get(
            "ringlb_upstream_response_duration_seconds_sum",
            &[("upstream", "app")],
        )
        .unwrap();
    assert!(
        sum > 0.0 && sum < 10.0,
        "upstream response duration sum {sum}"
    );
    // Everything took under 10 s: the le="10" bucket already holds them all.
    assert_eq!(
        m.get(
            "ringlb_http_request_duration_seconds_bucket",
            &[("listener", "web"), ("le", "10")]
        )
        .or_else(|| m.get(
            "ringlb_http_request_duration_seconds_bucket",
            &[("listener", "web"), ("le", "10.0")]
        )),
        Some(14.0),
        "\n{}",
        m.dump("ringlb_http_request_duration")
    );
}

// ------------------------------------------------------------ access log

/// Three upstreams behind four listeners: "web" (http, routes /api/ only),
/// "raw" (tcp echo greeting "hi\n"), "idle" (the same with a 300 ms idle
/// timeout) and "dead" (tcp, its only server refuses). Listeners need
/// distinct addresses (config validation), hence 127.0.0.2-4.
fn access_config(access: &str, app: SocketAddr, echo: SocketAddr) -> String {
    format!(
        "[runtime]\nworkers = 2\n\n{ADMIN}\n{access}\n\
         [[listener]]\nname = \"web\"\nmode = \"http\"\nlisten = \"127.0.0.1:0\"\nconnect_timeout = \"1s\"\n\
         [[listener.route]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n\n\
         [[listener]]\nname = \"raw\"\nmode = \"tcp\"\nlisten = \"127.0.0.2:0\"\nupstream = \"echo\"\nconnect_timeout = \"1s\"\n\n\
         [[listener]]\nname = \"idle\"\nmode = \"tcp\"\nlisten = \"127.0.0.3:0\"\nupstream = \"echo\"\nconnect_timeout = \"1s\"\nidle_timeout = \"300ms\"\n\n\
         [[listener]]\nname = \"dead\"\nmode = \"tcp\"\nlisten = \"127.0.0.4:0\"\nupstream = \"gone\"\nconnect_timeout = \"1s\"\n\n\
         [upstream.app]\nservers = [{{ addr = \"{app}\" }}]\n\n\
         [upstream.echo]\nservers = [{{ addr = \"{echo}\" }}]\n\n\
         [upstream.gone]\nservers = [{{ addr = \"{}\" }}]\n",
        refused_addr()
    )
}

/// The backend for the access log tests: `/api/slow` takes 150 ms.
fn app_backend() -> Backend {
    Backend::with(|r| {
        if r.target.starts_with("/api/slow") {
            Reply::ok(r, "slow").delayed(Duration::from_millis(150))
        } else {
            Reply::ok(r, "ok")
        }
    })
}

/// The X-Request-Id the backend got for the request to `target`.
fn backend_id(b: &Backend, target: &str) -> String {
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
    let echo = Echo::with_greeting(Some("hi\n"));
    let lb = Ringlb::start(&access_config(
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
    let echo = Echo::with_greeting(Some("hi\n"));
    let lb = Ringlb::start(&access_config(
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
        assert_eq!(f.len(), 12, "fields of {f:?}");
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
    assert_eq!(f.len(), 12, "fields of {f:?}");
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
    let echo = Echo::with_greeting(Some("hi\n"));
    let lb = Ringlb::start_opts(
        &access_config(
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
    let echo = Echo::with_greeting(Some("hi\n"));
    let mut lb = Ringlb::start(&access_config(
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

// ------------------------------------------------------------ sd_notify

#[test]
fn sd_notify_ready_after_listening_and_stopping_on_sigterm() {
    let dir = TempDir::new("notify");
    let (sock, sock_path) = notify_socket(&dir);
    let echo = Echo::start();
    let cfg = format!("{ADMIN}\n{}", l4_config(&[echo.addr], "", "", ""));
    let mut lb = Ringlb::start_opts(
        &cfg,
        Opts {
            env: &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
            no_wait: true,
            ..Opts::default()
        },
    );
    let mut got = Vec::new();
    assert!(
        recv_until(&sock, "READY=1", Duration::from_secs(15), &mut got),
        "no READY=1; got {got:?}; log:\n{}",
        lb.log_text()
    );
    // READY=1 means serving: the listener and the admin endpoint answer now.
    let mut s = connect(lb.addr("l"));
    assert_eq!(echo_roundtrip(&mut s, b"ready?"), b"ready?");
    drop(s);
    assert_eq!(admin_get(&lb, "/healthz").status, 200);
    assert!(
        !got.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "{got:?}"
    );

    lb.signal("TERM");
    assert!(
        recv_until(&sock, "STOPPING=1", Duration::from_secs(5), &mut got),
        "no STOPPING=1 after SIGTERM; got {got:?}"
    );
    assert_eq!(
        lb.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        lb.log_text()
    );
    let ready = got
        .iter()
        .filter(|m| m.lines().any(|l| l == "READY=1"))
        .count();
    assert_eq!(ready, 1, "READY=1 once: {got:?}");
}

#[test]
fn sd_notify_reloading_then_ready_around_sighup() {
    let dir = TempDir::new("notify-reload");
    let (sock, sock_path) = notify_socket(&dir);
    let echo = Echo::start();
    let cfg = l4_config(&[echo.addr], "", "", "");
    let mut lb = Ringlb::start_opts(
        &cfg,
        Opts {
            env: &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
            no_wait: true,
            ..Opts::default()
        },
    );
    let mut got = Vec::new();
    assert!(
        recv_until(&sock, "READY=1", Duration::from_secs(15), &mut got),
        "{got:?}"
    );
    got.clear();
    lb.signal("HUP");
    assert!(
        recv_until(&sock, "RELOADING=1", Duration::from_secs(10), &mut got),
        "no RELOADING=1 after SIGHUP; got {got:?}"
    );
    let reloading = got
        .iter()
        .find(|m| m.lines().any(|l| l == "RELOADING=1"))
        .unwrap();
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        usec.is_some_and(|u| u > 0),
        "RELOADING=1 without MONOTONIC_USEC: {reloading:?}"
    );
    got.clear();
    assert!(
        recv_until(&sock, "READY=1", Duration::from_secs(10), &mut got),
        "no READY=1 after the reload; got {got:?}\n{}",
        lb.log_text()
    );
    assert!(lb.wait_log("configuration reloaded"), "{}", lb.log_text());
    // Still serving.
    let mut s = connect(lb.addr("l"));
    assert_eq!(echo_roundtrip(&mut s, b"after"), b"after");
    drop(s);
    lb.signal("TERM");
    assert_eq!(lb.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn sd_notify_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!(
        "ringlb-ops-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let echo = Echo::start();
    let notify = format!("@{name}");
    let lb = Ringlb::start_with_env(
        &l4_config(&[echo.addr], "", "", ""),
        &[("NOTIFY_SOCKET", &notify)],
    );
    let mut got = Vec::new();
    assert!(
        recv_until(&sock, "READY=1", Duration::from_secs(5), &mut got),
        "no READY=1 on {notify}; got {got:?}"
    );
    lb.signal("TERM");
    assert!(
        recv_until(&sock, "STOPPING=1", Duration::from_secs(5), &mut got),
        "{got:?}"
    );
}

// ------------------------------------------------------------ log level

/// An http listener "web" in front of one backend, with `log` as the [log] table.
fn log_config(log: &str, b: SocketAddr) -> String {
    format!(
        "{log}\n[runtime]\nworkers = 1\n\n[[listener]]\nname = \"web\"\nmode = \"http\"\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\n[upstream.app]\nservers = [{{ addr = \"{b}\" }}]\n"
    )
}

/// A malformed request: ringlb answers 400 and logs why at debug level.
fn bad_request(addr: SocketAddr) {
    let r = roundtrip(addr, b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n");
    assert_eq!(r.status, 400, "{}", r.head.text());
}

#[test]
fn log_level_debug_from_config() {
    let b = Backend::start();
    let lb = Ringlb::start_opts(
        &log_config("[log]\nlevel = \"debug\"\n", b.addr),
        Opts {
            unset: &["RINGLB_LOG", "RUST_LOG"],
            ..Opts::default()
        },
    );
    bad_request(lb.addr("web"));
    assert!(
        wait_until(Duration::from_secs(5), || !lines_at(&lb, "DEBUG")
            .is_empty()),
        "no DEBUG line with level = \"debug\"; log:\n{}",
        lb.log_text()
    );
}

#[test]
fn ringlb_log_env_overrides_the_config_level() {
    let b = Backend::start();
    // level = debug, RINGLB_LOG=info (the harness default): no debug lines.
    let lb = Ringlb::start(&log_config("[log]\nlevel = \"debug\"\n", b.addr));
    bad_request(lb.addr("web"));
    assert_eq!(get(lb.addr("web"), "t", "/").status, 200);
    thread::sleep(Duration::from_millis(300));
    assert!(
        lines_at(&lb, "DEBUG").is_empty(),
        "RINGLB_LOG=info did not override level = \"debug\":\n{}",
        lb.log_text()
    );
    drop(lb);

    // level = warn, RINGLB_LOG=debug: info lines (the harness waits for the
    // ready line) and debug lines.
    let lb = Ringlb::start_opts(
        &log_config("[log]\nlevel = \"warn\"\n", b.addr),
        Opts {
            env: &[("RINGLB_LOG", "debug")],
            ..Opts::default()
        },
    );
    bad_request(lb.addr("web"));
    assert!(
        wait_until(Duration::from_secs(5), || !lines_at(&lb, "DEBUG")
            .is_empty()),
        "RINGLB_LOG=debug did not override level = \"warn\":\n{}",
        lb.log_text()
    );
}

#[test]
fn log_level_warn_hides_info_lines() {
    // The harness finds addresses in INFO lines, so readiness comes from
    // sd_notify here; a refused backend with fast checks logs a WARN.
    let dir = TempDir::new("warn");
    let (sock, sock_path) = notify_socket(&dir);
    let cfg = format!(
        "[log]\nlevel = \"warn\"\n\n[runtime]\nworkers = 1\n\n[[listener]]\nname = \"l\"\nmode = \"tcp\"\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n\n[upstream.u]\nservers = [{{ addr = \"{}\" }}]\n{HEALTH_FAST}\n",
        refused_addr()
    );
    let lb = Ringlb::start_opts(
        &cfg,
        Opts {
            env: &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
            unset: &["RINGLB_LOG", "RUST_LOG"],
            no_wait: true,
            ..Opts::default()
        },
    );
    let mut got = Vec::new();
    assert!(
        recv_until(&sock, "READY=1", Duration::from_secs(15), &mut got),
        "no READY=1; log:\n{}",
        lb.log_text()
    );
    assert!(
        lb.wait_log("is DOWN"),
        "no WARN DOWN line; log:\n{}",
        lb.log_text()
    );
    assert!(!lines_at(&lb, "WARN").is_empty(), "{}", lb.log_text());
    let noisy: Vec<String> = lb
        .log_text()
        .lines()
        .filter(|l| matches!(level(l), Some("INFO" | "DEBUG" | "TRACE")))
        .map(str::to_string)
        .collect();
    assert!(noisy.is_empty(), "lines below warn:\n{}", noisy.join("\n"));
}

// ------------------------------------------------------------ config

#[test]
fn check_validates_the_ops_tables() {
    let good = format!(
        "{ADMIN}\n[log]\nlevel = \"info\"\n\n[access_log]\npath = \"/tmp/ringlb-ops-check.log\"\nformat = \"json\"\n\n{}",
        l4_config(&["127.0.0.1:1".parse().unwrap()], "", "", "")
    );
    let (code, err) = check(&good);
    assert_eq!(code, 0, "{err}");
    for (level, ok) in [
        ("error", true),
        ("warn", true),
        ("debug", true),
        ("verbose", false),
    ] {
        let (code, err) = check(&good.replace("level = \"info\"", &format!("level = \"{level}\"")));
        assert_eq!(code == 0, ok, "level {level}: {err}");
    }
    for (fmt, ok) in [("combined", true), ("xml", false)] {
        let (code, err) = check(&good.replace("format = \"json\"", &format!("format = \"{fmt}\"")));
        assert_eq!(code == 0, ok, "format {fmt}: {err}");
    }
    let (code, _) = check(&good.replace("/tmp/ringlb-ops-check.log", "stdout"));
    assert_eq!(code, 0, "path = \"stdout\"");
    let cases = [
        (
            good.replace("level = \"info\"", "level = \"verbose\""),
            "log.level",
        ),
        (
            good.replace("format = \"json\"", "format = \"xml\""),
            "access_log.format",
        ),
        (
            good.replace(
                "listen = \"127.0.0.1:0\"\n\n[log]",
                "listen = \"localhost\"\n\n[log]",
            ),
            "admin.listen",
        ),
        (
            good.replace("[admin]\nlisten", "[admin]\nlisten_port = 1\nlisten"),
            "listen_port",
        ),
    ];
    for (text, key) in cases {
        let (code, err) = check(&text);
        assert_eq!(code, 2, "exit code for {key}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(key), "error should name {key}: {err}");
    }
}
