//! A TLS stream: rustls's sans-IO connection driven by the same readiness
//! waits and nonblocking calls as a plain socket, so the relay, the read
//! buffer, the body pump, the tunnel and the pool work on it unchanged.
//!
//! Reads: plaintext rustls already holds comes first; else one nonblocking
//! recv of records, processed, then plaintext (`WouldBlock` when a record
//! is still partial). Writes: what rustls still holds goes to the socket
//! first (`WouldBlock` while it cannot), then the new plaintext is taken
//! and pushed out as far as the socket allows; the rest leaves with the
//! next write or with [`TlsStream::try_flush`], which every write helper
//! calls before it reports a message written.
//!
//! The connection sits in a `RefCell`: one task uses the stream, and the
//! two directions of a relay never hold the borrow across an await.

use std::{
    cell::RefCell,
    io::{self, Read, Write},
    os::fd::{AsRawFd, RawFd},
    time::{Duration, Instant},
};

use monoio::net::TcpStream;
use rustls::Connection;

use crate::sys;

/// The socket as rustls's `Read`/`Write`: nonblocking recv/send.
struct Fd(RawFd);

impl Read for Fd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sys::recv(self.0, buf)
    }
}

impl Write for Fd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sys::send(self.0, buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        sys::with_sock(self.0, |s| {
            s.send_vectored_with_flags(bufs, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TLS connection over a nonblocking TCP socket.
pub struct TlsStream {
    sock: TcpStream,
    conn: RefCell<Connection>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("fd", &self.sock.as_raw_fd())
            .finish()
    }
}

/// Write what rustls holds for the socket until it holds nothing.
fn flush_conn(conn: &mut Connection, fd: RawFd) -> io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(&mut Fd(fd))?;
    }
    Ok(())
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    /// `conn` (its handshake done) over `sock`.
    pub fn new(sock: TcpStream, conn: Connection) -> TlsStream {
        TlsStream {
            sock,
            conn: RefCell::new(conn),
        }
    }

    pub fn sock(&self) -> &TcpStream {
        &self.sock
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Read the connection's state (negotiated version, ALPN, names).
    pub fn with_conn<R>(&self, f: impl FnOnce(&Connection) -> R) -> R {
        f(&self.conn.borrow())
    }

    /// Plaintext (or the peer's close) is waiting in rustls: a read now
    /// makes progress without the socket.
    pub fn has_buffered(&self) -> bool {
        match self.conn.borrow_mut().process_new_packets() {
            Ok(st) => st.plaintext_bytes_to_read() > 0 || st.peer_has_closed(),
            // The read reports it.
            Err(_) => true,
        }
    }

    /// As [`Stream::try_read`](super::stream::Stream::try_read).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.fd();
        let mut conn = self.conn.borrow_mut();
        loop {
            match conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Closed without close_notify: an end all the same (HTTP
                // framing catches a truncated message).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            conn.read_tls(&mut Fd(fd))?;
            if let Err(e) = conn.process_new_packets() {
                // The alert rustls queued, best effort.
                let _ = flush_conn(&mut conn, fd);
                return Err(tls_error(e));
            }
            // Post-handshake messages (tickets, key updates) answered now,
            // best effort: a write failure is the writer's to report, and
            // must not cost the plaintext just decrypted (a backend that
            // answers 413 and resets still has its answer read).
            if conn.wants_write() {
                let _ = flush_conn(&mut conn, fd);
            }
        }
    }

    /// As [`Stream::try_write`](super::stream::Stream::try_write).
    pub fn try_write(&self, a: &[u8], b: &[u8]) -> io::Result<usize> {
        let fd = self.fd();
        let mut conn = self.conn.borrow_mut();
        // Records already made go first: no new plaintext is taken while
        // the socket is full.
        flush_conn(&mut conn, fd)?;
        let mut n = conn.writer().write(a)?;
        if n == a.len() && !b.is_empty() {
            n += conn.writer().write(b)?;
        }
        match flush_conn(&mut conn, fd) {
            Ok(()) => Ok(n),
            // Taken: it leaves with the next write or flush.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(n)
            }
            Err(e) => Err(e),
        }
    }

    /// Send what rustls still holds; `WouldBlock` while the socket is full.
    pub fn try_flush(&self) -> io::Result<()> {
        let fd = self.fd();
        flush_conn(&mut self.conn.borrow_mut(), fd)
    }

    /// close_notify, waiting up to `limit` for room to send it (and
    /// anything still queued), then FIN. Best effort: the peer may be gone.
    pub async fn close_write(&self, limit: Duration) -> io::Result<()> {
        let fd = self.fd();
        self.conn.borrow_mut().send_close_notify();
        let deadline = Instant::now() + limit;
        loop {
            let flushed = flush_conn(&mut self.conn.borrow_mut(), fd);
            match flushed {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if wait(&self.sock, false, deadline).await.is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break,
            }
        }
        sys::shutdown_write(fd)
    }

    /// close_notify, then FIN (best effort: the peer may be gone; an alert
    /// that does not fit the socket now is not sent).
    pub fn shutdown_write(&self) -> io::Result<()> {
        let fd = self.fd();
        {
            let mut conn = self.conn.borrow_mut();
            conn.send_close_notify();
            let _ = flush_conn(&mut conn, fd);
        }
        sys::shutdown_write(fd)
    }
}

/// What a finished handshake agreed, for logs.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// The server name the client asked for (server side).
    pub sni: Option<Box<str>>,
    /// "1.2" or "1.3".
    pub version: &'static str,
    /// The verified client certificate's subject (RFC 4514), when one was
    /// presented.
    pub client_subject: Option<Box<str>>,
}

impl TlsStream {
    /// The server name and version of this connection.
    /// The protocol ALPN agreed on is `proto` (`b"h2"`).
    pub fn alpn_is(&self, proto: &[u8]) -> bool {
        self.conn.borrow().alpn_protocol() == Some(proto)
    }

    pub fn info(&self) -> TlsInfo {
        let c = self.conn.borrow();
        let sni = match &*c {
            Connection::Server(s) => s.server_name().map(Box::from),
            Connection::Client(_) => None,
        };
        let version = match c.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
            _ => "",
        };
        let client_subject = match &*c {
            Connection::Server(_) => c
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(subject_of)
                .map(String::into_boxed_str),
            Connection::Client(_) => None,
        };
        TlsInfo {
            sni,
            version,
            client_subject,
        }
    }
}

impl TlsStream {
    /// Request header lines for the backend: version, cipher, the name
    /// asked for, and whether (and as whom) the client's certificate
    /// verified. Values are ASCII without control bytes.
    pub fn header_lines(&self) -> Vec<u8> {
        let info = self.info();
        let c = self.conn.borrow();
        let mut out = Vec::with_capacity(160);
        let mut line = |name: &str, value: &str| {
            let clean: String = value
                .chars()
                .map(|ch| {
                    if ch.is_ascii() && !ch.is_ascii_control() {
                        ch
                    } else {
                        '?'
                    }
                })
                .collect();
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(clean.as_bytes());
            out.extend_from_slice(b"\r\n");
        };
        line("X-TLS-Version", info.version);
        if let Some(s) = c.negotiated_cipher_suite().and_then(|s| s.suite().as_str()) {
            line("X-TLS-Cipher", s);
        }
        if let Some(n) = &info.sni {
            line("X-TLS-SNI", n);
        }
        match c.peer_certificates().and_then(|certs| certs.first()) {
            Some(der) => {
                line("X-Client-Verify", "SUCCESS");
                if let Some(dn) = subject_of(der) {
                    line("X-Client-Cert-Subject", &dn);
                }
            }
            None => line("X-Client-Verify", "NONE"),
        }
        out
    }
}

/// A certificate's subject as an RFC 4514 string (`CN=client,O=Example`):
/// the last RDN first, `+` inside a multi-valued RDN, and every special or
/// non-printable byte escaped (`\,`, `\+`, `\C3\A9`), so a name cannot
/// pose as more parts than it has, and the string is plain ASCII.
pub fn subject_of(der: &rustls_pki_types::CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let mut rdns: Vec<String> = Vec::new();
    for rdn in cert.subject().iter_rdn() {
        let mut parts: Vec<String> = Vec::new();
        for atv in rdn.iter() {
            let oid = atv.attr_type();
            let name = x509_parser::objects::oid2abbrev(oid, registry)
                .map(str::to_string)
                .unwrap_or_else(|_| oid.to_id_string());
            let value = match atv.as_str() {
                Ok(v) => escape_4514(v),
                // Not a string type: the value's DER as #hex (RFC 4514 2.4).
                Err(_) => {
                    let mut h = String::from("#");
                    for b in atv.attr_value().data {
                        h.push_str(&format!("{b:02X}"));
                    }
                    h
                }
            };
            parts.push(format!("{name}={value}"));
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// An attribute value escaped as RFC 4514 asks, non-printable and
/// non-ASCII bytes as `\XX`.
fn escape_4514(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.len().saturating_sub(1);
    for (i, b) in v.bytes().enumerate() {
        let special = matches!(b, b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\')
            || (i == 0 && (b == b'#' || b == b' '))
            || (i == last && b == b' ');
        if special {
            out.push('\\');
            out.push(b as char);
        } else if b.is_ascii_graphic() || b == b' ' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\{b:02X}"));
        }
    }
    out
}

/// Why a handshake did not complete.
#[derive(Debug)]
pub enum HandshakeError {
    /// The peer closed, reset or went quiet past the deadline.
    Io(io::Error),
    /// The TLS exchange failed (bad record, no shared version or cipher,
    /// unknown name, certificate refused...).
    Tls(rustls::Error),
    TimedOut,
    /// The first byte is not a TLS handshake record (plain HTTP on a TLS
    /// port, a scanner).
    NotTls,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Io(e) => write!(f, "TLS handshake: {e}"),
            HandshakeError::Tls(e) => write!(f, "TLS handshake: {e}"),
            HandshakeError::TimedOut => f.write_str("TLS handshake timed out"),
            HandshakeError::NotTls => {
                f.write_str("not a TLS client (first byte is no handshake record)")
            }
        }
    }
}

impl HandshakeError {
    /// A short stable reason for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Io(_) => "io",
            HandshakeError::Tls(rustls::Error::InvalidCertificate(_)) => "bad_certificate",
            HandshakeError::Tls(rustls::Error::NoCertificatesPresented) => "no_certificate",
            HandshakeError::Tls(_) => "protocol",
            HandshakeError::TimedOut => "timeout",
            HandshakeError::NotTls => "not_tls",
        }
    }
}

/// Wait for `sock` to be readable (`read`) or writable by `deadline`.
///
/// # Errors
/// `TimedOut`, or the readiness wait failed.
pub async fn wait(sock: &TcpStream, read: bool, deadline: Instant) -> Result<(), HandshakeError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left == Duration::ZERO {
        return Err(HandshakeError::TimedOut);
    }
    let ready = if read {
        crate::io::timer::timeout(left, sock.readable(false)).await
    } else {
        crate::io::timer::timeout(left, sock.writable(false)).await
    };
    match ready {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(HandshakeError::Io(e)),
        Err(_) => Err(HandshakeError::TimedOut),
    }
}

/// Run `conn`'s handshake on `sock` by `deadline`; `pre` holds bytes of the
/// peer's already read from the socket (they are fed first).
///
/// # Errors
/// The peer failed, the TLS exchange failed (its alert is sent), or the
/// deadline passed.
pub async fn handshake(
    sock: &TcpStream,
    mut conn: Connection,
    mut pre: &[u8],
    deadline: Instant,
) -> Result<Connection, HandshakeError> {
    let fd = sock.as_raw_fd();
    let fail = |conn: &mut Connection, e: rustls::Error| {
        let _ = flush_conn(conn, fd);
        HandshakeError::Tls(e)
    };
    while !pre.is_empty() {
        match conn.read_tls(&mut pre) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(HandshakeError::Io(e)),
        }
        if let Err(e) = conn.process_new_packets() {
            return Err(fail(&mut conn, e));
        }
    }
    loop {
        while conn.wants_write() {
            match conn.write_tls(&mut Fd(fd)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait(sock, false, deadline).await?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(HandshakeError::Io(e)),
            }
        }
        if !conn.is_handshaking() {
            break;
        }
        match conn.read_tls(&mut Fd(fd)) {
            Ok(0) => return Err(HandshakeError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {
                if let Err(e) = conn.process_new_packets() {
                    return Err(fail(&mut conn, e));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(sock, true, deadline).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(HandshakeError::Io(e)),
        }
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::{escape_4514, subject_of};

    #[test]
    fn values_are_escaped_as_rfc_4514_asks() {
        assert_eq!(escape_4514("plain name"), "plain name");
        assert_eq!(escape_4514("alice, O=Admins"), "alice\\, O=Admins");
        assert_eq!(
            escape_4514("a+b;c<d>e\"f\\g"),
            "a\\+b\\;c\\<d\\>e\\\"f\\\\g"
        );
        assert_eq!(escape_4514("#lead"), "\\#lead");
        assert_eq!(escape_4514(" both "), "\\ both\\ ");
        assert_eq!(escape_4514("é\n"), "\\C3\\A9\\0A");
    }

    #[test]
    fn a_subject_reads_last_rdn_first_and_cannot_fake_parts() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "alice, O=Admins");
        let cert = p.self_signed(&key).unwrap();
        let der = rustls_pki_types::CertificateDer::from(cert.der().to_vec());
        assert_eq!(
            subject_of(&der).as_deref(),
            Some("CN=alice\\, O=Admins,O=Example")
        );
    }
}
