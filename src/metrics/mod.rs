//! Metrics: per-worker shards written only by their worker, merged when
//! the admin listener renders `/metrics`.
//!
//! A counter is an `AtomicU64` that only its worker writes, so an increment
//! is a plain load and store (no locked instruction, no shared cache line);
//! the scraper reads it with a relaxed load. Latency histograms are
//! hdrhistogram per worker behind a mutex that only the worker and, once per
//! scrape, the admin thread take; on scrape they are merged and folded into
//! Prometheus buckets.

pub mod access;

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use hdrhistogram::Histogram;

use crate::{
    backends::Shared,
    config::{Config, Mode, RouteConfig},
};

/// A counter written by one thread.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A gauge written by one thread (summed over workers on scrape).
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Latencies in microseconds, 1 µs to 100 s, 2 significant digits.
#[derive(Debug)]
pub struct Hist(Mutex<Histogram<u64>>);

const HIST_MAX_US: u64 = 100_000_000;

impl Default for Hist {
    fn default() -> Self {
        // Constant bounds, within hdrhistogram's limits.
        let h = Histogram::new_with_bounds(1, HIST_MAX_US, 2).expect("constant histogram bounds");
        Hist(Mutex::new(h))
    }
}

impl Hist {
    #[inline]
    pub fn record(&self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, HIST_MAX_US);
        if let Ok(mut h) = self.0.lock() {
            let _ = h.record(us);
        }
    }
}

#[derive(Debug, Default)]
pub struct RouteMetrics {
    /// Requests answered, by status class 1xx..5xx.
    pub classes: [Counter; 5],
    pub rate_limited: Counter,
}

impl RouteMetrics {
    #[inline]
    pub fn status(&self, status: u16) {
        let i = (usize::from(status / 100)).clamp(1, 5) - 1;
        self.classes[i].inc();
    }
}

#[derive(Debug, Default)]
pub struct ListenerMetrics {
    pub accepted: Counter,
    pub active: Gauge,
    pub rejected_per_ip: Counter,
    pub saturated: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub retries: Counter,
    pub request_duration: Hist,
    /// One per route, then one for requests that matched none.
    pub routes: Vec<RouteMetrics>,
}

#[derive(Debug, Default)]
pub struct BackendMetrics {
    pub requests: Counter,
}

#[derive(Debug, Default)]
pub struct UpstreamMetrics {
    pub connect: Hist,
    pub response: Hist,
    pub backends: Vec<BackendMetrics>,
}

/// One worker's shard.
#[derive(Debug)]
pub struct WorkerMetrics {
    pub listeners: Vec<ListenerMetrics>,
    pub upstreams: Vec<UpstreamMetrics>,
}

impl WorkerMetrics {
    pub fn new(cfg: &Config) -> Arc<WorkerMetrics> {
        Arc::new(WorkerMetrics {
            listeners: cfg
                .listeners
                .iter()
                .map(|l| ListenerMetrics {
                    routes: (0..l.http.as_ref().map_or(0, |h| h.routes.len()) + 1)
                        .map(|_| RouteMetrics::default())
                        .collect(),
                    ..ListenerMetrics::default()
                })
                .collect(),
            upstreams: cfg
                .upstreams
                .iter()
                .map(|u| UpstreamMetrics {
                    backends: u
                        .servers
                        .iter()
                        .map(|_| BackendMetrics::default())
                        .collect(),
                    ..UpstreamMetrics::default()
                })
                .collect(),
        })
    }
}

/// Everything `/metrics` and `/status` read.
#[derive(Debug)]
pub struct Registry {
    pub cfg: Arc<Config>,
    pub shared: Arc<Shared>,
    pub workers: Vec<Arc<WorkerMetrics>>,
    pub access_dropped: Arc<AtomicU64>,
    /// Each listener's bound address (the configured one may say port 0).
    pub bound: Vec<std::net::SocketAddr>,
    /// Each listener's max_connections as enforced (the fd budget may cap
    /// the configured one).
    pub max_connections: Vec<usize>,
}

/// Route label: `HOST/PREFIX`, `*` for any host.
pub fn route_label(r: &RouteConfig) -> String {
    format!("{}{}", r.host.as_deref().unwrap_or("*"), r.path_prefix)
}

/// Prometheus bucket bounds, seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Escape a label value (backslash, double quote, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Registry {
    fn sum<F: Fn(&WorkerMetrics) -> u64>(&self, f: F) -> u64 {
        self.workers.iter().map(|w| f(w)).sum()
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(16 * 1024);
        let cfg = &self.cfg;
        let family = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {kind}");
        };

        type Field = fn(&ListenerMetrics) -> u64;
        let per_listener: [(&str, &str, &str, Field); 6] = [
            (
                "ringlb_connections_accepted_total",
                "counter",
                "Client connections accepted.",
                |l| l.accepted.get(),
            ),
            (
                "ringlb_limiter_saturated_total",
                "counter",
                "Times a worker stopped accepting because the listener was at max_connections.",
                |l| l.saturated.get(),
            ),
            (
                "ringlb_bytes_received_total",
                "counter",
                "Bytes received from clients.",
                |l| l.bytes_in.get(),
            ),
            (
                "ringlb_bytes_sent_total",
                "counter",
                "Bytes sent to clients.",
                |l| l.bytes_out.get(),
            ),
            (
                "ringlb_retries_total",
                "counter",
                "Backends or fresh connections tried again after a failure.",
                |l| l.retries.get(),
            ),
            (
                "ringlb_connections_rejected_total",
                "counter",
                "Client connections refused, by reason.",
                |l| l.rejected_per_ip.get(),
            ),
        ];
        for (name, kind, help, f) in per_listener {
            family(&mut o, name, kind, help);
            for (li, l) in cfg.listeners.iter().enumerate() {
                let v = self.sum(|w| f(&w.listeners[li]));
                if name == "ringlb_connections_rejected_total" {
                    let _ = writeln!(
                        o,
                        "{name}{{listener=\"{}\",reason=\"per_ip\"}} {v}",
                        esc(&l.name)
                    );
                } else {
                    let _ = writeln!(o, "{name}{{listener=\"{}\"}} {v}", esc(&l.name));
                }
            }
        }
        family(
            &mut o,
            "ringlb_connections_active",
            "gauge",
            "Client connections open now.",
        );
        for (li, l) in cfg.listeners.iter().enumerate() {
            let v: i64 = self
                .workers
                .iter()
                .map(|w| w.listeners[li].active.get())
                .sum();
            let _ = writeln!(
                o,
                "ringlb_connections_active{{listener=\"{}\"}} {}",
                esc(&l.name),
                v.max(0)
            );
        }
        family(
            &mut o,
            "ringlb_listener_max_connections",
            "gauge",
            "Connections the listener may hold at once.",
        );
        for (li, l) in cfg.listeners.iter().enumerate() {
            let _ = writeln!(
                o,
                "ringlb_listener_max_connections{{listener=\"{}\"}} {}",
                esc(&l.name),
                self.max_connections
                    .get(li)
                    .copied()
                    .unwrap_or(l.max_connections)
            );
        }

        family(
            &mut o,
            "ringlb_http_requests_total",
            "counter",
            "HTTP requests answered, by status class.",
        );
        for (li, l) in cfg.listeners.iter().enumerate() {
            let Some(h) = &l.http else { continue };
            for ri in 0..=h.routes.len() {
                let label = h
                    .routes
                    .get(ri)
                    .map_or_else(|| "none".to_string(), route_label);
                for (ci, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                    let v = self.sum(|w| w.listeners[li].routes[ri].classes[ci].get());
                    let _ = writeln!(o, "ringlb_http_requests_total{{listener=\"{}\",route=\"{}\",class=\"{class}\"}} {v}", esc(&l.name), esc(&label));
                }
            }
        }
        family(
            &mut o,
            "ringlb_rate_limited_total",
            "counter",
            "HTTP requests refused by a rate limit.",
        );
        for (li, l) in cfg.listeners.iter().enumerate() {
            let Some(h) = &l.http else { continue };
            for (ri, r) in h.routes.iter().enumerate() {
                let v = self.sum(|w| w.listeners[li].routes[ri].rate_limited.get());
                let _ = writeln!(
                    o,
                    "ringlb_rate_limited_total{{listener=\"{}\",route=\"{}\"}} {v}",
                    esc(&l.name),
                    esc(&route_label(r))
                );
            }
        }

        type BackendField = fn(&Registry, usize, usize) -> u64;
        let per_backend: [(&str, &str, &str, BackendField); 4] = [
            (
                "ringlb_backend_requests_total",
                "counter",
                "Connections (tcp) or requests (http) sent to a backend.",
                |r, ui, bi| r.sum(|w| w.upstreams[ui].backends[bi].requests.get()),
            ),
            (
                "ringlb_backend_failures_total",
                "counter",
                "Failures counted by passive ejection (connect failures, 5xx, timeouts).",
                |r, ui, bi| r.shared.upstreams[ui].backends[bi].failures_total(),
            ),
            (
                "ringlb_backend_up",
                "gauge",
                "1 when the backend may take traffic (health up, circuit not open).",
                |r, ui, bi| u64::from(r.shared.upstreams[ui].backends[bi].available()),
            ),
            (
                "ringlb_backend_active",
                "gauge",
                "Connections (tcp) or requests (http) in flight to a backend.",
                |r, ui, bi| u64::from(r.shared.upstreams[ui].backends[bi].active()),
            ),
        ];
        for (name, kind, help, f) in per_backend {
            family(&mut o, name, kind, help);
            for (ui, u) in cfg.upstreams.iter().enumerate() {
                for (bi, s) in u.servers.iter().enumerate() {
                    let _ = writeln!(
                        o,
                        "{name}{{upstream=\"{}\",backend=\"{}\"}} {}",
                        esc(&u.name),
                        s.addr,
                        f(self, ui, bi)
                    );
                }
            }
        }
        family(
            &mut o,
            "ringlb_health_transitions_total",
            "counter",
            "Active health check transitions.",
        );
        for (ui, u) in cfg.upstreams.iter().enumerate() {
            for (bi, s) in u.servers.iter().enumerate() {
                let (up, down) = self.shared.upstreams[ui].backends[bi].transitions();
                let _ = writeln!(o, "ringlb_health_transitions_total{{upstream=\"{}\",backend=\"{}\",to=\"up\"}} {up}", esc(&u.name), s.addr);
                let _ = writeln!(o, "ringlb_health_transitions_total{{upstream=\"{}\",backend=\"{}\",to=\"down\"}} {down}", esc(&u.name), s.addr);
            }
        }
        family(
            &mut o,
            "ringlb_access_log_dropped_total",
            "counter",
            "Access log lines dropped because the writer fell behind.",
        );
        let _ = writeln!(
            o,
            "ringlb_access_log_dropped_total {}",
            self.access_dropped.load(Relaxed)
        );

        family(
            &mut o,
            "ringlb_http_request_duration_seconds",
            "histogram",
            "HTTP request time, head received to response sent.",
        );
        for (li, l) in cfg.listeners.iter().enumerate() {
            if l.mode != Mode::Http {
                continue;
            }
            let h = self.merge(|w| &w.listeners[li].request_duration);
            histogram(
                &mut o,
                "ringlb_http_request_duration_seconds",
                &format!("listener=\"{}\"", esc(&l.name)),
                &h,
            );
        }
        family(
            &mut o,
            "ringlb_upstream_connect_duration_seconds",
            "histogram",
            "Time to connect to a backend.",
        );
        for (ui, u) in cfg.upstreams.iter().enumerate() {
            let h = self.merge(|w| &w.upstreams[ui].connect);
            histogram(
                &mut o,
                "ringlb_upstream_connect_duration_seconds",
                &format!("upstream=\"{}\"", esc(&u.name)),
                &h,
            );
        }
        family(
            &mut o,
            "ringlb_upstream_response_duration_seconds",
            "histogram",
            "HTTP: request sent to response head received.",
        );
        for (ui, u) in cfg.upstreams.iter().enumerate() {
            let h = self.merge(|w| &w.upstreams[ui].response);
            histogram(
                &mut o,
                "ringlb_upstream_response_duration_seconds",
                &format!("upstream=\"{}\"", esc(&u.name)),
                &h,
            );
        }
        o
    }

    fn merge(&self, pick: impl Fn(&WorkerMetrics) -> &Hist) -> Option<Histogram<u64>> {
        let mut out: Option<Histogram<u64>> = None;
        for w in &self.workers {
            let Ok(h) = pick(w).0.lock() else { continue };
            match &mut out {
                None => out = Some(h.clone()),
                Some(acc) => {
                    let _ = acc.add(&*h);
                }
            }
        }
        out
    }

    /// True when every upstream has an available backend.
    pub fn ready(&self) -> Result<(), String> {
        for u in &self.shared.upstreams {
            if !u.backends.iter().any(|b| b.available()) {
                return Err(format!("upstream {:?} has no available backend", u.name));
            }
        }
        Ok(())
    }

    /// `/status` as JSON.
    pub fn status_json(&self) -> String {
        let mut o = String::with_capacity(1024);
        let _ = write!(
            o,
            "{{\"version\":\"{}\",\"workers\":{},\"listeners\":[",
            env!("CARGO_PKG_VERSION"),
            self.workers.len()
        );
        for (li, l) in self.cfg.listeners.iter().enumerate() {
            let active: i64 = self
                .workers
                .iter()
                .map(|w| w.listeners[li].active.get())
                .sum();
            let _ = write!(
                o,
                "{}{{\"name\":{},\"mode\":\"{}\",\"listen\":\"{}\",\"active\":{},\"max_connections\":{}}}",
                if li > 0 { "," } else { "" },
                access::json_str(&l.name),
                if l.mode == Mode::Http { "http" } else { "tcp" },
                self.bound.get(li).copied().unwrap_or(l.listen),
                active.max(0),
                self.max_connections
                    .get(li)
                    .copied()
                    .unwrap_or(l.max_connections)
            );
        }
        o.push_str("],\"upstreams\":[");
        for (ui, u) in self.cfg.upstreams.iter().enumerate() {
            let st = &self.shared.upstreams[ui];
            let _ = write!(
                o,
                "{}{{\"name\":{},\"backends\":[",
                if ui > 0 { "," } else { "" },
                access::json_str(&u.name)
            );
            for (bi, b) in st.backends.iter().enumerate() {
                let _ = write!(
                    o,
                    "{}{{\"addr\":\"{}\",\"up\":{},\"health\":\"{}\",\"circuit\":\"{}\",\"active\":{},\"backup\":{}}}",
                    if bi > 0 { "," } else { "" },
                    b.addr,
                    b.available(),
                    if b.is_down() { "down" } else { "up" },
                    b.circuit(),
                    b.active(),
                    b.backup
                );
            }
            o.push_str("]}");
        }
        o.push_str("]}\n");
        o
    }
}

fn histogram(o: &mut String, name: &str, labels: &str, h: &Option<Histogram<u64>>) {
    let (count, sum_us) = match h {
        Some(h) => (
            h.len(),
            h.iter_recorded()
                .map(|v| v.value_iterated_to() * v.count_at_value())
                .sum::<u64>(),
        ),
        None => (0, 0),
    };
    for b in BUCKETS {
        let le_us = (b * 1e6) as u64;
        let n = h.as_ref().map_or(0, |h| h.count_between(0, le_us));
        let _ = writeln!(o, "{name}_bucket{{{labels},le=\"{b}\"}} {n}");
    }
    let _ = writeln!(o, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(o, "{name}_sum{{{labels}}} {}", sum_us as f64 / 1e6);
    let _ = writeln!(o, "{name}_count{{{labels}}} {count}");
}
