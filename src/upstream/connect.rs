//! Connecting to a picked backend, timed for the upstream's histogram.

use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::{
    io::connect::{connect, ConnectError},
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
) -> Result<TcpStream, ConnectError> {
    let t = Instant::now();
    let r = connect(addr, timeout).await;
    if r.is_ok() {
        metrics.upstreams[ui].connect.record(t.elapsed());
    }
    r
}
