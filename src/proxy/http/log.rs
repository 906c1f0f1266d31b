//! Accounting for one answered request: route and listener metrics, the
//! access-log line and a debug line.

use std::{net::SocketAddr, time::Instant};

use super::conn::Conn;
use crate::metrics::access;

impl Conn<'_> {
    /// Account for one answered request.
    pub(super) fn log(&self, status: u16, backend: Option<SocketAddr>, started: Instant) {
        let l = self.l;
        let lm = &l.metrics.listeners[l.li];
        let took = started.elapsed();
        if let Some(r) = lm.routes.get(self.route_idx) {
            r.status(status);
        }
        lm.request_duration.record(took);
        lm.bytes_out.add(self.bytes_out);
        if let Some(a) = &l.access {
            a.send(access::http_line(
                a.format,
                &access::HttpEntry {
                    listener: &l.cfg.name,
                    client: self.peer,
                    method: &self.lf.method,
                    path: &self.lf.path,
                    protocol: if self.lf.minor == 0 {
                        "HTTP/1.0"
                    } else {
                        "HTTP/1.1"
                    },
                    status,
                    bytes_sent: self.bytes_out,
                    referer: &self.lf.referer,
                    user_agent: &self.lf.user_agent,
                    request_id: &self.id,
                    backend,
                    duration: took,
                    sni: self.tls.as_ref().and_then(|t| t.sni.as_deref()),
                    tls: self.tls.as_ref().map(|t| t.version),
                    client_cert: self.tls.as_ref().and_then(|t| t.client_subject.as_deref()),
                },
            ));
        }
        tracing::debug!(
            target: "ringlb::access",
            listener = %l.cfg.name,
            peer = %self.peer,
            status,
            backend = ?backend,
            request_id = %self.id,
            micros = took.as_micros() as u64,
        );
    }
}
