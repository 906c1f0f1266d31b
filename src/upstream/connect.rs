//! Connecting to a picked backend, timed for the upstream's histogram.

use std::time::{Duration, Instant};

use crate::{
    io::{
        connect::{connect, ConnectError},
        stream::Stream,
        tls,
    },
    metrics::WorkerMetrics,
};

/// Connect to `addr` within `timeout` (with `tls`: the handshake too, in
/// the same time); a success records the connect time in upstream `ui`'s
/// histogram.
///
/// # Errors
/// Refused, unreachable, out of fds, timed out, or the TLS handshake
/// failed (its reason: an unknown CA, a wrong name...).
pub async fn timed_connect(
    addr: std::net::SocketAddr,
    timeout: Duration,
    metrics: &WorkerMetrics,
    ui: usize,
    tls: Option<&crate::tls::Client>,
) -> Result<Stream, ConnectError> {
    let t = Instant::now();
    let mut r = connect(addr, timeout).await;
    if let (Some(c), Ok(s)) = (tls, &r) {
        // Boxed: plain connects do not carry the handshake's state.
        r = match Box::pin(handshake(s, c, addr, t + timeout, timeout)).await {
            Ok(conn) => match r {
                Ok(s) => Ok(s.into_tls(conn)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
    }
    if r.is_ok() {
        metrics.upstreams[ui].connect.record(t.elapsed());
    }
    r
}

async fn handshake(
    s: &Stream,
    c: &crate::tls::Client,
    addr: std::net::SocketAddr,
    deadline: Instant,
    timeout: Duration,
) -> Result<Box<rustls::Connection>, ConnectError> {
    let Some(sock) = s.as_plain() else {
        return Err(ConnectError::Tls(addr, "not a plain socket".into()));
    };
    let conn = rustls::ClientConnection::new(std::sync::Arc::clone(&c.config), c.name_for(addr))
        .map_err(|e| ConnectError::Tls(addr, e.to_string()))?;
    match tls::handshake(sock, rustls::Connection::Client(conn), &[], deadline).await {
        Ok(conn) => Ok(Box::new(conn)),
        Err(tls::HandshakeError::TimedOut) => Err(ConnectError::Timeout(addr, timeout)),
        Err(e) => Err(ConnectError::Tls(addr, e.to_string())),
    }
}
