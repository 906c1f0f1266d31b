//! Connecting to a picked backend, timed for the upstream's histogram.

use std::time::{Duration, Instant};

use crate::{
    io::{
        connect::{connect, ConnectError},
        stream::Stream,
    },
    metrics::WorkerMetrics,
};

/// Connect to `addr` within `timeout`; a success records the connect time
/// in upstream `ui`'s histogram.
///
/// # Errors
/// Refused, unreachable, out of fds, or timed out.
pub async fn timed_connect(
    addr: std::net::SocketAddr,
    timeout: Duration,
    metrics: &WorkerMetrics,
    ui: usize,
) -> Result<Stream, ConnectError> {
    let t = Instant::now();
    let r = connect(addr, timeout).await;
    if r.is_ok() {
        metrics.upstreams[ui].connect.record(t.elapsed());
    }
    r
}
