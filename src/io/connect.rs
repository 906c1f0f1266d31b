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
}

/// Connect to `addr` within `timeout`. The socket is nonblocking, close-on-exec
/// and has TCP_NODELAY, ready for the relay.
///
/// # Errors
/// Refused, unreachable, out of fds, or timed out.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Stream, ConnectError> {
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
    let stream = TcpStream::from_std(std_stream).map_err(io_err)?;
    match monoio::time::timeout(timeout, stream.writable(false)).await {
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
