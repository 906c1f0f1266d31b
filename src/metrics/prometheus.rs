//! The Prometheus text exposition (format 0.0.4) of a [`Registry`]:
//! per-listener, per-route and per-backend families, histograms folded
//! into fixed buckets.

use std::{fmt::Write as _, sync::atomic::Ordering::Relaxed};

use hdrhistogram::Histogram;

use super::{route_label, Hist, ListenerMetrics, Registry, RouteMetrics, WorkerMetrics};
use crate::{backends::Backend, config::Mode};

/// Prometheus bucket bounds, seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Escape a label value (backslash, double quote, newline).
pub(super) fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Registry {
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
                    let denied = self.sum(|w| w.listeners[li].denied.get());
                    let _ = writeln!(
                        o,
                        "{name}{{listener=\"{}\",reason=\"denied\"}} {denied}",
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
                self.max_connections(li)
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
        type RouteField = fn(&RouteMetrics) -> u64;
        let per_route: [(&str, &str, RouteField); 7] = [
            (
                "ringlb_rate_limited_total",
                "HTTP requests refused by a rate limit.",
                |r| r.rate_limited.get(),
            ),
            (
                "ringlb_http_denied_total",
                "HTTP requests refused (403) by the listener's or the route's allow/deny.",
                |r| r.denied.get(),
            ),
            (
                "ringlb_http_retries_total",
                "Tries a route's retry policy sent to another backend.",
                |r| r.retries.get(),
            ),
            (
                "ringlb_http_retries_refused_total",
                "Retries a route's retry budget refused.",
                |r| r.retries_refused.get(),
            ),
            (
                "ringlb_http_mirrored_total",
                "Request copies the route's mirror sent and saw answered.",
                |r| r.mirrored.get(),
            ),
            (
                "ringlb_http_mirror_failed_total",
                "Request copies to the route's mirror that failed or timed out.",
                |r| r.mirror_failed.get(),
            ),
            (
                "ringlb_http_mirror_skipped_total",
                "Requests due a copy that were not copied (body not held whole, or 64 copies on their way).",
                |r| r.mirror_skipped.get(),
            ),
        ];
        for (name, help, field) in per_route {
            family(&mut o, name, "counter", help);
            for (li, l) in cfg.listeners.iter().enumerate() {
                let Some(h) = &l.http else { continue };
                for (ri, r) in h.routes.iter().enumerate() {
                    let v = self.sum(|w| field(&w.listeners[li].routes[ri]));
                    let _ = writeln!(
                        o,
                        "{name}{{listener=\"{}\",route=\"{}\"}} {v}",
                        esc(&l.name),
                        esc(&route_label(r))
                    );
                }
            }
        }

        // Per backend: the live set of each upstream (a backend set that
        // changed at runtime shows its current members), labelled by address.
        type BackendField = fn(&Backend) -> u64;
        let per_backend: [(&str, &str, &str, BackendField); 4] = [
            (
                "ringlb_backend_requests_total",
                "counter",
                "Connections (tcp) or requests (http) sent to a backend.",
                |b| b.requests_total(),
            ),
            (
                "ringlb_backend_failures_total",
                "counter",
                "Failures counted by passive ejection (connect failures, 5xx, timeouts).",
                |b| b.failures_total(),
            ),
            (
                "ringlb_backend_up",
                "gauge",
                "1 when the backend may take traffic (health up, circuit not open).",
                |b| u64::from(b.available()),
            ),
            (
                "ringlb_backend_active",
                "gauge",
                "Connections (tcp) or requests (http) in flight to a backend.",
                |b| u64::from(b.active()),
            ),
        ];
        let sets: Vec<_> = self
            .upstreams
            .all
            .iter()
            .map(|u| (u.name.clone(), u.current()))
            .collect();
        for (name, kind, help, f) in per_backend {
            family(&mut o, name, kind, help);
            for (up, set) in &sets {
                for m in &set.members {
                    let b = &m.backend;
                    let _ = writeln!(
                        o,
                        "{name}{{upstream=\"{}\",backend=\"{}\"}} {}",
                        esc(up),
                        b.addr,
                        f(b)
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
        for (up, set) in &sets {
            for m in &set.members {
                let b = &m.backend;
                let (to_up, to_down) = b.transitions();
                let _ = writeln!(o, "ringlb_health_transitions_total{{upstream=\"{}\",backend=\"{}\",to=\"up\"}} {to_up}", esc(up), b.addr);
                let _ = writeln!(o, "ringlb_health_transitions_total{{upstream=\"{}\",backend=\"{}\",to=\"down\"}} {to_down}", esc(up), b.addr);
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
        let routers: Vec<(usize, &crate::config::ListenerConfig)> = cfg
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| l.mode == Mode::Tls)
            .collect();
        if !routers.is_empty() {
            family(
                &mut o,
                "ringlb_tls_hellos_total",
                "counter",
                "SNI routers: ClientHellos read, by outcome (passed through, handed to a terminating listener, or why not).",
            );
            for &(li, l) in &routers {
                for (i, what) in super::TLS_HELLOS.iter().enumerate() {
                    let v = self.sum(|w| w.listeners[li].tls.hellos[i].get());
                    let _ = writeln!(
                        o,
                        "ringlb_tls_hellos_total{{listener=\"{}\",result=\"{what}\"}} {v}",
                        esc(&l.name)
                    );
                }
            }
        }
        let udp: Vec<(usize, &crate::config::ListenerConfig)> = cfg
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| l.mode == Mode::Udp)
            .collect();
        if !udp.is_empty() {
            type Field = fn(&super::UdpMetrics) -> u64;
            let series: [(&str, &str, &str, &str, Field); 7] = [
                ("ringlb_udp_datagrams_total", "counter", "Datagrams: in from clients, out to clients (replies).", "direction=\"in\"", |u| u.datagrams_in.get()),
                ("ringlb_udp_datagrams_total", "", "", "direction=\"out\"", |u| u.datagrams_out.get()),
                ("ringlb_udp_bytes_total", "counter", "Payload bytes: in (client datagrams sent to backends), out (replies sent to clients).", "direction=\"in\"", |u| u.bytes_in.get()),
                ("ringlb_udp_bytes_total", "", "", "direction=\"out\"", |u| u.bytes_out.get()),
                ("ringlb_udp_flows_total", "counter", "Flows opened (a client pinned to a backend with a socket of its own).", "", |u| u.flows.get()),
                ("ringlb_udp_flows_active", "gauge", "Flows open now.", "", |u| u.active.get().max(0) as u64),
                ("ringlb_udp_unanswered_total", "counter", "Flows that went idle with expected responses missing (responses set): each counts against the backend.", "", |u| u.unanswered.get()),
            ];
            for (name, kind, help, label, f) in series {
                if !kind.is_empty() {
                    family(&mut o, name, kind, help);
                }
                for &(li, l) in &udp {
                    let v = self.sum(|w| f(&w.listeners[li].udp));
                    let sep = if label.is_empty() { "" } else { "," };
                    let _ = writeln!(o, "{name}{{listener=\"{}\"{sep}{label}}} {v}", esc(&l.name));
                }
            }
            family(
                &mut o,
                "ringlb_udp_dropped_total",
                "counter",
                "Datagrams dropped, by reason (max_flows reached, no backend, no socket for a flow, truncated, a full socket buffer toward the backend or the client, the backend's port unreachable, another send error).",
            );
            for &(li, l) in &udp {
                for (i, why) in super::UDP_DROPS.iter().enumerate() {
                    let v = self.sum(|w| w.listeners[li].udp.dropped[i].get());
                    let _ = writeln!(
                        o,
                        "ringlb_udp_dropped_total{{listener=\"{}\",reason=\"{why}\"}} {v}",
                        esc(&l.name)
                    );
                }
            }
        }
        let discovered: Vec<(String, crate::backends::set::DiscoveryState)> = self
            .upstreams
            .all
            .iter()
            .filter_map(|u| {
                let d = u.discovery.as_ref()?;
                Some((
                    u.name.clone(),
                    d.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                ))
            })
            .collect();
        if !discovered.is_empty() {
            type Field = fn(&crate::backends::set::DiscoveryState) -> u64;
            let fields: [(&str, &str, &str, Field); 5] = [
                ("ringlb_discovery_updates_total", "counter", "Backend lists read from an upstream's discovery source and applied.", |d| d.updates),
                ("ringlb_discovery_errors_total", "counter", "Reads of a discovery source that failed (the last set stayed).", |d| d.errors),
                ("ringlb_discovery_refused_total", "counter", "Lists refused by the safety rules (empty without allow_empty, or over max_remove).", |d| d.refused),
                ("ringlb_discovery_members", "gauge", "Backends the discovery source listed last.", |d| d.listed.len() as u64),
                ("ringlb_discovery_failing", "gauge", "1 while the source fails or its last list was refused (a last known set is served).", |d| u64::from(d.last_error.is_some())),
            ];
            for (name, kind, help, f) in fields {
                family(&mut o, name, kind, help);
                for (up, d) in &discovered {
                    let _ = writeln!(o, "{name}{{upstream=\"{}\"}} {}", esc(up), f(d));
                }
            }
        }
        let http: Vec<(usize, &crate::config::ListenerConfig)> = cfg
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| l.http.is_some())
            .collect();
        if !http.is_empty() {
            for (name, help, get) in [
                (
                    "ringlb_h2_connections_total",
                    "HTTP/2 client connections (ALPN h2 or h2c prior knowledge).",
                    (|m: &super::H2Metrics| m.connections.get()) as fn(&super::H2Metrics) -> u64,
                ),
                (
                    "ringlb_h2_streams_total",
                    "HTTP/2 streams (requests) from clients.",
                    |m| m.streams.get(),
                ),
                (
                    "ringlb_h2_client_resets_total",
                    "HTTP/2 streams the client reset before their response began.",
                    |m| m.client_resets.get(),
                ),
            ] {
                family(&mut o, name, "counter", help);
                for &(li, l) in &http {
                    let v = self.sum(|w| get(&w.listeners[li].h2));
                    let _ = writeln!(o, "{name}{{listener=\"{}\"}} {v}", esc(&l.name));
                }
            }
            family(
                &mut o,
                "ringlb_h2_goaway_total",
                "counter",
                "HTTP/2 client connections ringlb ended with GOAWAY, by reason.",
            );
            for &(li, l) in &http {
                for (i, why) in super::H2_GOAWAYS.iter().enumerate() {
                    let v = self.sum(|w| w.listeners[li].h2.goaway[i].get());
                    let _ = writeln!(
                        o,
                        "ringlb_h2_goaway_total{{listener=\"{}\",reason=\"{why}\"}} {v}",
                        esc(&l.name)
                    );
                }
            }
        }
        let tls: Vec<(usize, &crate::config::ListenerConfig)> = cfg
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| l.tls.is_some())
            .collect();
        if !tls.is_empty() {
            family(
                &mut o,
                "ringlb_tls_handshakes_total",
                "counter",
                "TLS handshakes with clients: completed by version and cipher, failed by reason.",
            );
            for &(li, l) in &tls {
                let name = esc(&l.name);
                for (si, suite) in super::TLS_SUITES.iter().enumerate() {
                    let v = self.sum(|w| w.listeners[li].tls.ok[si].get());
                    let version = if suite.starts_with("TLS13") {
                        "1.3"
                    } else {
                        "1.2"
                    };
                    let _ = writeln!(
                        o,
                        "ringlb_tls_handshakes_total{{listener=\"{name}\",result=\"ok\",version=\"{version}\",cipher=\"{suite}\"}} {v}"
                    );
                }
                for (fi, why) in super::TLS_FAILURES.iter().enumerate() {
                    let v = self.sum(|w| w.listeners[li].tls.failed[fi].get());
                    let _ = writeln!(
                        o,
                        "ringlb_tls_handshakes_total{{listener=\"{name}\",result=\"{why}\"}} {v}"
                    );
                }
            }
            family(
                &mut o,
                "ringlb_tls_resumed_total",
                "counter",
                "TLS handshakes that resumed an earlier session.",
            );
            for &(li, l) in &tls {
                let v = self.sum(|w| w.listeners[li].tls.resumed.get());
                let _ = writeln!(
                    o,
                    "ringlb_tls_resumed_total{{listener=\"{}\"}} {v}",
                    esc(&l.name)
                );
            }
            family(
                &mut o,
                "ringlb_tls_handshake_duration_seconds",
                "histogram",
                "TLS handshake time with clients.",
            );
            for &(li, l) in &tls {
                let h = self.merge(|w| &w.listeners[li].tls.duration);
                histogram(
                    &mut o,
                    "ringlb_tls_handshake_duration_seconds",
                    &format!("listener=\"{}\"", esc(&l.name)),
                    &h,
                );
            }
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
