//! The admin listener from the client's side: GET on it, /status parsed
//! as JSON, /metrics strictly parsed (prom.rs) and checked against the
//! schema the spec fixes.

use std::{net::SocketAddr, thread, time::Duration};

use super::{
    http::{roundtrip, Resp},
    json::{self, field, find_by, Json},
    prom::{self, Exposition},
    Ringlb,
};

/// The histogram buckets the spec fixes (upper bounds in seconds, then +Inf).
pub const BUCKETS: [f64; 15] = [
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
pub const FAMILIES: &[(&str, &str, &[&str])] = &[
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

/// `GET path` on the admin listener (fresh connection).
pub fn admin_get(lb: &Ringlb, path: &str) -> Resp {
    roundtrip(
        lb.admin_addr(),
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes(),
    )
}

/// /metrics, checked (200, content type) and strictly parsed.
pub fn scrape(lb: &Ringlb) -> Exposition {
    scrape_text(lb).0
}

/// /metrics parsed, and its text.
pub fn scrape_text(lb: &Ringlb) -> (Exposition, String) {
    let r = admin_get(lb, "/metrics");
    assert_eq!(r.status, 200, "{}{}", r.head.text(), r.text());
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("text/plain; version=0.0.4"),
        "content type {ct:?}"
    );
    let text = r.text();
    let m = prom::parse(&text).unwrap_or_else(|e| {
        panic!("/metrics is not valid exposition: {e}\n--- full text:\n{text}")
    });
    (m, text)
}

/// /status, parsed.
pub fn status(lb: &Ringlb) -> Json {
    let r = admin_get(lb, "/status");
    assert_eq!(r.status, 200, "{}{}", r.head.text(), r.text());
    let ct = r.header("content-type").unwrap_or("");
    assert!(ct.starts_with("application/json"), "content type {ct:?}");
    json::parse(&r.text()).unwrap_or_else(|e| panic!("/status is not JSON: {e}\n{}", r.text()))
}

/// The backend `addr` of upstream `up` in a /status answer.
pub fn status_backend(st: &Json, up: &str, addr: SocketAddr) -> Json {
    let u = find_by(field(st, "upstreams"), "name", up);
    find_by(field(u, "backends"), "addr", &addr.to_string()).clone()
}

/// Polls /metrics until `f` holds (5 s); returns the last scrape either way.
pub fn scrape_until(lb: &Ringlb, mut f: impl FnMut(&Exposition) -> bool) -> Exposition {
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

pub fn lbl(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// A sample's expected value: (metric, exact labels, value).
pub type Expect<'a> = (&'a str, Vec<(String, String)>, f64);

/// The expectations that do not hold.
pub fn mismatches(m: &Exposition, want: &[Expect]) -> Vec<String> {
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

/// Scrape until every expectation holds (5 s at most), then assert they
/// all do, showing the `ringlb_` samples whose names start with `dump`
/// when one does not; the last scrape is returned for further checks.
pub fn assert_metrics(lb: &Ringlb, want: &[Expect], dump: &str) -> Exposition {
    let m = scrape_until(lb, |m| mismatches(m, want).is_empty());
    let bad = mismatches(&m, want);
    assert!(
        bad.is_empty(),
        "metrics do not match the traffic:\n  {}\n--- samples:\n{}",
        bad.join("\n  "),
        m.dump(dump)
    );
    m
}

/// Every spec family is declared with its type; every sample carries
/// exactly the spec's labels; histograms have the spec's buckets; every
/// family is prefixed `ringlb_` and counters end in `_total`.
pub fn assert_schema(m: &Exposition) {
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
                let le = prom::parse_value(s.label("le").unwrap()).unwrap();
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
