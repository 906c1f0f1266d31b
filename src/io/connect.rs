//! Outgoing connections to backends. Knows a `SocketAddr` and a deadline,
//! nothing about balancers or listeners.

use std::{io, net::SocketAddr, os::fd::AsRawFd, time::Duration};

use monoio::net::TcpStream;

use super::stream::Stream;
use socket2::{Domain, Protocol, Socket, Type};

/// Why a connect attempt failed, for logs and the retry decision.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out after {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("connect to {0}: {1}")]
    Io(SocketAddr, io::Error),
    /// The TLS handshake with the backend failed (certificate refused,
    /// no shared version, reset...).
    #[error("TLS to {0}: {1}")]
    Tls(SocketAddr, String),
    /// HTTP/2 could not start (no ALPN agreement, the preface failed).
    #[error("HTTP/2 to {0}: {1}")]
    H2(SocketAddr, String),
}

impl ConnectError {
    /// Our own resources ran out (fds, ephemeral ports, buffers), not the
    /// backend: never a reason to eject it or mark it down.
    pub fn is_local(&self) -> bool {
        match self {
            ConnectError::Timeout(..) | ConnectError::Tls(..) | ConnectError::H2(..) => false,
            ConnectError::Io(_, e) => matches!(
                e.raw_os_error(),
                Some(
                    libc::EMFILE
                        | libc::ENFILE
                        | libc::ENOBUFS
                        | libc::ENOMEM
                        | libc::EADDRNOTAVAIL
                        | libc::EAGAIN
                )
            ),
        }
    }
}

/// Connect to `addr` within `timeout`. The socket is nonblocking, close-on-exec
/// and has TCP_NODELAY, ready for the relay.
///
/// When our own fds or ports run out ([`ConnectError::is_local`]) the
/// attempt is repeated, with a growing pause, until `timeout` has passed:
/// at a full fd table the sockets of connections that just ended are
/// still being closed (on io_uring a close is a ring op that completes on
/// the worker's next round), so the client that took the freed slot waits
/// a moment instead of being dropped.
///
/// # Errors
/// Refused, unreachable, out of fds for the whole `timeout`, or timed out.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Stream, ConnectError> {
    let deadline = std::time::Instant::now() + timeout;
    let stream = {
        let mut pause = Duration::from_millis(1);
        loop {
            match start(addr) {
                Ok(stream) => break stream,
                Err(e) if e.is_local() => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Err(e);
                    }
                    tracing::debug!("{e}; trying again in {:?}", pause.min(left));
                    super::timer::sleep(pause.min(left)).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    };
    let io_err = |e| ConnectError::Io(addr, e);
    match super::timer::timeout_at(deadline, stream.writable(false)).await {
        Err(_) => return Err(ConnectError::Timeout(addr, timeout)),
        Ok(Err(e)) => return Err(io_err(e)),
        Ok(Ok(())) => {}
    }
    // POLLOUT fires on success and on failure alike; SO_ERROR tells which.
    match crate::sys::with_sock(stream.as_raw_fd(), |s| s.take_error()) {
        Ok(None) => Ok(Stream::Plain(stream)),
        Ok(Some(e)) | Err(e) => Err(io_err(e)),
    }
}

/// A nonblocking connect begun (socket(2), connect(2)) and registered.
fn start(addr: SocketAddr) -> Result<TcpStream, ConnectError> {
    let io_err = |e| ConnectError::Io(addr, e);
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(io_err)?;
    sock.set_nodelay(true).map_err(io_err)?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(io_err(e)),
    }
    let std_stream: std::net::TcpStream = sock.into();
    TcpStream::from_std(std_stream).map_err(io_err)
}

/// A nonblocking UDP socket connected to `addr` (a udp flow's, or a udp
/// health check's): the kernel delivers only `addr`'s datagrams to it and
/// reports `addr`'s ICMP errors on it.
///
/// # Errors
/// Out of fds or ports; as socket(2), bind(2), connect(2).
pub fn connect_udp(addr: SocketAddr) -> io::Result<monoio::net::udp::UdpSocket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    // connect(2) binds an ephemeral port itself: no bind(2) of our own.
    s.connect(&addr.into())?;
    monoio::net::udp::UdpSocket::from_std(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_exhaustion_is_local_the_backends_refusal_is_not() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let io = |errno| ConnectError::Io(addr, io::Error::from_raw_os_error(errno));
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(io(errno).is_local(), "{errno}");
        }
        for errno in [libc::ECONNREFUSED, libc::EHOSTUNREACH, libc::ECONNRESET] {
            assert!(!io(errno).is_local(), "{errno}");
        }
        assert!(!ConnectError::Timeout(addr, Duration::from_secs(1)).is_local());
    }
}
