//! The byte stream every handler works on: the relay, the read buffer, the
//! body pump, the tunnel and the keep-alive pool take a [`Stream`].
//!
//! Two variants: a plain, nonblocking TCP socket, and TLS over one
//! ([`super::tls`]: rustls's sans-IO connection driven by the same
//! readiness waits). Everything here is readiness plus a nonblocking call, so a timeout
//! only ever drops a readiness wait, never bytes. Splice is the fast path
//! between two plain streams only ([`Stream::as_plain`]); anything else
//! copies through [`Stream::try_read`] / [`Stream::try_write`].
//!
//! An enum, not a trait object: the relay's state machine is per
//! connection, and a `dyn` call per read would also cost a box per future.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, RawFd},
};

use monoio::net::TcpStream;

use super::tls::TlsStream;
use crate::sys;

/// A connected byte stream.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: most streams are plain, and a tcp connection's task state
    /// holds two of them.
    Tls(Box<TlsStream>),
}

impl Stream {
    /// Register an accepted (or connected) nonblocking socket with this
    /// worker's runtime.
    ///
    /// # Errors
    /// The runtime cannot register the socket.
    pub fn from_std(s: std::net::TcpStream) -> io::Result<Stream> {
        TcpStream::from_std(s).map(Stream::Plain)
    }

    /// The plain socket, when this stream is one (the splice fast path).
    #[inline]
    pub fn as_plain(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(_) => None,
        }
    }

    /// The socket's fd (liveness checks, shutdown).
    #[inline]
    pub fn fd(&self) -> RawFd {
        match self {
            Stream::Plain(s) => s.as_raw_fd(),
            Stream::Tls(t) => t.fd(),
        }
    }

    /// Wait until a read may make progress.
    ///
    /// # Errors
    /// The readiness wait failed.
    #[inline]
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.readable(false).await,
            Stream::Tls(t) => {
                if t.has_buffered() {
                    return Ok(());
                }
                t.sock().readable(false).await
            }
        }
    }

    /// Wait until a write may make progress.
    ///
    /// # Errors
    /// The readiness wait failed.
    #[inline]
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.writable(false).await,
            Stream::Tls(t) => t.sock().writable(false).await,
        }
    }

    /// Read what is there without waiting (`WouldBlock` when nothing is);
    /// 0 at EOF.
    ///
    /// # Errors
    /// As recv(2).
    #[inline]
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => sys::recv(s.as_raw_fd(), buf),
            Stream::Tls(t) => t.try_read(buf),
        }
    }

    /// Write `a` then `b` (one vectored send when both are there) without
    /// waiting; returns the bytes taken from the front of `a ++ b`.
    ///
    /// # Errors
    /// `WouldBlock` when there is no room; others as send(2).
    #[inline]
    pub fn try_write(&self, a: &[u8], b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => {
                let fd = s.as_raw_fd();
                if a.is_empty() {
                    sys::send(fd, b)
                } else if b.is_empty() {
                    sys::send(fd, a)
                } else {
                    sys::with_sock(fd, |s| {
                        s.send_vectored_with_flags(
                            &[io::IoSlice::new(a), io::IoSlice::new(b)],
                            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                        )
                    })
                }
            }
            Stream::Tls(t) => t.try_write(a, b),
        }
    }

    /// Send what a TLS stream still holds from earlier writes (nothing to
    /// do on a plain socket); `WouldBlock` while there is no room.
    ///
    /// # Errors
    /// `WouldBlock`, or as send(2).
    #[inline]
    pub fn try_flush(&self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(t) => t.try_flush(),
        }
    }

    /// Send FIN (the peer may already be gone).
    ///
    /// # Errors
    /// As shutdown(2).
    pub fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => sys::shutdown_write(s.as_raw_fd()),
            Stream::Tls(t) => t.shutdown_write(),
        }
    }

    /// End the write side: FIN on a plain socket; on TLS the close_notify
    /// first, waiting up to `limit` for room to send it. The rare (TLS)
    /// path is boxed so a plain connection's task does not carry it.
    ///
    /// # Errors
    /// As shutdown(2).
    pub async fn close_write(&self, limit: std::time::Duration) -> io::Result<()> {
        match self {
            Stream::Plain(s) => sys::shutdown_write(s.as_raw_fd()),
            Stream::Tls(t) => Box::pin(t.close_write(limit)).await,
        }
    }

    /// The local address (the one the client connected to).
    ///
    /// # Errors
    /// As getsockname(2).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Stream::Plain(s) => s.local_addr(),
            Stream::Tls(t) => t.sock().local_addr(),
        }
    }

    /// Whether an idle pooled connection still looks usable (not closed or
    /// reset by the peer, nothing unexpected waiting).
    pub fn idle_usable(&self) -> bool {
        match self {
            Stream::Plain(_) => sys::idle_socket_usable(self.fd()),
            // Records that came while idle (a late session ticket) are
            // taken in; a close_notify or stray data is not usable.
            Stream::Tls(t) => {
                let mut probe = [0u8; 1];
                matches!(t.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// This plain stream carrying `conn`, a TLS connection whose
    /// handshake ran on it (a TLS stream stays as it is).
    pub fn into_tls(self, conn: Box<rustls::Connection>) -> Stream {
        match self {
            Stream::Plain(s) => Stream::Tls(Box::new(TlsStream::new(s, *conn))),
            tls => tls,
        }
    }

    /// The TLS connection, when this stream is one.
    pub fn as_tls(&self) -> Option<&TlsStream> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(t) => Some(t),
        }
    }
}
