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
mod prometheus;
mod status;

use std::{
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use hdrhistogram::Histogram;

use crate::{
    backends::Upstreams,
    config::{Config, RouteConfig},
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
    /// Requests refused by the route's or the listener's allow/deny.
    pub denied: Counter,
    /// Tries the route's retry policy sent to another backend.
    pub retries: Counter,
    /// Retries the route's budget refused (the failure went to the client).
    pub retries_refused: Counter,
    /// Copies sent to the route's mirror that got a response.
    pub mirrored: Counter,
    /// Copies that failed (no shadow backend, connect, timeout, bad answer).
    pub mirror_failed: Counter,
    /// Requests due a copy that were not copied (body not held whole, or
    /// too many copies on their way).
    pub mirror_skipped: Counter,
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
    /// Connections closed at once by the listener's allow/deny (tcp).
    pub denied: Counter,
    pub saturated: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub retries: Counter,
    pub request_duration: Hist,
    /// One per route, then one for requests that matched none.
    pub routes: Vec<RouteMetrics>,
    /// TLS listeners: handshakes.
    pub tls: TlsMetrics,
    /// http listeners: HTTP/2 connections and streams.
    pub h2: H2Metrics,
    /// udp listeners: datagrams and flows.
    pub udp: UdpMetrics,
}

/// Why a udp listener dropped a datagram (the label of
/// `ringlb_udp_dropped_total`).
pub const UDP_DROPS: [&str; 9] = [
    "max_flows",
    "no_backend",
    "no_socket",
    "truncated",
    "backend_buffer_full",
    "client_buffer_full",
    "refused",
    "send_error",
    "denied",
];

/// One udp listener's datagrams and flows on one worker.
#[derive(Debug, Default)]
pub struct UdpMetrics {
    pub datagrams_in: Counter,
    pub datagrams_out: Counter,
    /// Bytes of client datagrams sent on to backends.
    pub bytes_in: Counter,
    /// Bytes of replies sent to clients.
    pub bytes_out: Counter,
    /// Flows opened.
    pub flows: Counter,
    /// Flows open now.
    pub active: Gauge,
    /// Flows that went idle with responses missing (`responses` set).
    pub unanswered: Counter,
    /// By reason ([`UDP_DROPS`]).
    pub dropped: [Counter; 9],
}

/// Why ringlb ended an HTTP/2 client connection with a GOAWAY (the label
/// of `ringlb_h2_goaway_total`).
pub const H2_GOAWAYS: [&str; 6] = [
    "drain",
    "idle",
    "rapid_reset",
    "ping_timeout",
    "protocol_error",
    "flood",
];

/// One listener's HTTP/2 clients on one worker.
#[derive(Debug, Default)]
pub struct H2Metrics {
    pub connections: Counter,
    pub streams: Counter,
    /// Streams the client reset before their response began.
    pub client_resets: Counter,
    /// Connections ringlb ended, by reason ([`H2_GOAWAYS`]).
    pub goaway: [Counter; 6],
}

/// The cipher suites the ring provider offers (TLS 1.3, then 1.2): the
/// label of a completed handshake.
pub const TLS_SUITES: [&str; 9] = [
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// Why a handshake failed (the label of a failed one).
pub const TLS_FAILURES: [&str; 6] = [
    "io",
    "protocol",
    "bad_certificate",
    "no_certificate",
    "timeout",
    "not_tls",
];

/// What became of a ClientHello an SNI router read.
pub const TLS_HELLOS: [&str; 8] = [
    "passed",
    "handed",
    "not_tls",
    "bad_hello",
    "too_large",
    "timeout",
    "io",
    "no_route",
];

/// One listener's TLS handshakes on one worker.
#[derive(Debug, Default)]
pub struct TlsMetrics {
    /// Completed, by suite ([`TLS_SUITES`]; the suite fixes the version).
    pub ok: [Counter; 9],
    /// Completed with a resumed session.
    pub resumed: Counter,
    /// Failed, by reason ([`TLS_FAILURES`]).
    pub failed: [Counter; 6],
    /// Handshake time (first byte read to handshake done).
    pub duration: Hist,
    /// SNI routers: hellos, by outcome ([`TLS_HELLOS`]).
    pub hellos: [Counter; 8],
}

#[derive(Debug, Default)]
pub struct UpstreamMetrics {
    pub connect: Hist,
    pub response: Hist,
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
                .map(|_| UpstreamMetrics::default())
                .collect(),
        })
    }
}

/// Everything `/metrics` and `/status` read.
#[derive(Debug, Clone)]
pub struct Registry {
    pub cfg: Arc<Config>,
    /// Every upstream's live backend set.
    pub upstreams: Arc<Upstreams>,
    pub workers: Vec<Arc<WorkerMetrics>>,
    pub access_dropped: Arc<AtomicU64>,
    /// Each listener's bound address (the configured one may say port 0).
    pub bound: Vec<std::net::SocketAddr>,
    /// Each listener's max_connections as its limiter enforces it (the fd
    /// budget may cap the configured one, and move it when discovery
    /// changes how many backends are pooled).
    pub max_connections: Vec<Arc<std::sync::atomic::AtomicUsize>>,
}

/// Route label: `HOST/PREFIX`, `*` for any host.
pub fn route_label(r: &RouteConfig) -> String {
    format!("{}{}", r.host.as_deref().unwrap_or("*"), r.path_prefix)
}

impl Registry {
    fn sum<F: Fn(&WorkerMetrics) -> u64>(&self, f: F) -> u64 {
        self.workers.iter().map(|w| f(w)).sum()
    }

    /// A listener's connection cap as the fd budget left it.
    fn max_connections(&self, li: usize) -> usize {
        let l = &self.cfg.listeners[li];
        if let Some(u) = &l.udp {
            // Flows, each a socket, across the workers.
            return u.max_flows * self.workers.len();
        }
        self.max_connections.get(li).map_or(l.max_connections, |m| {
            m.load(std::sync::atomic::Ordering::Relaxed)
        })
    }
}
