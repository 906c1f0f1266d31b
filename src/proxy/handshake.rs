//! TLS termination of a client connection, after any PROXY header: the
//! first bytes are read here (a client that does not start with a TLS
//! handshake record is told so, plainly, and closed), the handshake runs
//! by the listener's deadline, and its outcome is counted.

use std::{
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{server::ServerConnection, Connection, HandshakeKind};

use crate::{
    io::{
        stream::Stream,
        tls::{self, HandshakeError},
    },
    metrics::{TlsMetrics, TLS_FAILURES, TLS_SUITES},
};

/// A TLS record's first byte when it carries a handshake message.
const HANDSHAKE_RECORD: u8 = 0x16;

/// What a plain HTTP client on an HTTPS port reads (nginx says the same).
const PLAIN_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 45\r\nConnection: close\r\n\r\nA plain HTTP request was sent to a TLS port.\n";

/// Where a handshake happens, for its log line and counters.
pub struct Site<'a> {
    pub listener: &'a str,
    pub peer: std::net::SocketAddr,
    pub metrics: &'a TlsMetrics,
    pub timeout: Duration,
    /// Answer a plain-HTTP client with a 400 it can read.
    pub http: bool,
}

/// Run the server side of a TLS handshake on `client` (a plain stream).
/// `early` holds bytes already read after a PROXY header (fed to the
/// handshake first; left empty). `None`: the handshake failed (logged and
/// counted) and the client is to be closed; else the connection to make
/// the stream TLS with ([`Stream::into_tls`]). Boxed: the caller's task
/// state holds one pointer, not the handshake's state, and the result is
/// one pointer too.
pub fn terminate<'a>(
    client: &'a Stream,
    early: &'a mut Vec<u8>,
    cfg: &'a Arc<rustls::ServerConfig>,
    site: Site<'a>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Box<Connection>>> + 'a>> {
    Box::pin(async move {
        let done = handshake(client, early, cfg, &site).await;
        match done {
            Ok(c) => Some(Box::new(c)),
            Err(e) => {
                tracing::debug!(listener = %site.listener, peer = %site.peer, reason = e.reason(), "{e}");
                None
            }
        }
    })
}

async fn handshake(
    client: &Stream,
    early: &mut Vec<u8>,
    cfg: &Arc<rustls::ServerConfig>,
    site: &Site<'_>,
) -> Result<Connection, HandshakeError> {
    let (m, timeout, http) = (site.metrics, site.timeout, site.http);
    let started = Instant::now();
    let result = run(client, early, cfg, started + timeout, http).await;
    match &result {
        Ok(c) => {
            m.duration.record(started.elapsed());
            let suite = c.negotiated_cipher_suite().and_then(|s| s.suite().as_str());
            if let Some(i) = TLS_SUITES.iter().position(|n| Some(*n) == suite) {
                m.ok[i].inc();
            }
            if c.handshake_kind() == Some(HandshakeKind::Resumed) {
                m.resumed.inc();
            }
        }
        Err(e) => {
            if let Some(i) = TLS_FAILURES.iter().position(|n| *n == e.reason()) {
                m.failed[i].inc();
            }
        }
    }
    result
}

async fn run(
    client: &Stream,
    early: &mut Vec<u8>,
    cfg: &Arc<rustls::ServerConfig>,
    deadline: Instant,
    http: bool,
) -> Result<Connection, HandshakeError> {
    let Some(sock) = client.as_plain() else {
        return Err(HandshakeError::Io(io::ErrorKind::InvalidInput.into()));
    };
    let fd = client.fd();
    // The first bytes: is this TLS at all?
    while early.is_empty() {
        let mut first = [0u8; 1024];
        match crate::sys::recv(fd, &mut first) {
            Ok(0) => return Err(HandshakeError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => early.extend_from_slice(&first[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tls::wait(sock, true, deadline).await?
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(HandshakeError::Io(e)),
        }
    }
    if early[0] != HANDSHAKE_RECORD {
        if http && early[0].is_ascii_uppercase() {
            let _ = crate::sys::send(fd, PLAIN_ON_TLS);
            // The lingering close of every error answer: what the client
            // still sends is read and dropped a moment, so closing on it
            // does not reset the answer away.
            let mut sink = crate::io::rbuf::RBuf::new(4096, 4096);
            crate::proxy::http::h1::server::linger(client, &mut sink).await;
        }
        return Err(HandshakeError::NotTls);
    }
    let conn = ServerConnection::new(Arc::clone(cfg)).map_err(HandshakeError::Tls)?;
    let conn = tls::handshake(sock, Connection::Server(conn), early, deadline).await?;
    early.clear();
    Ok(conn)
}
