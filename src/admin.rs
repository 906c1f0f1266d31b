//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/status` on a
//! plain-HTTP port (loopback by default). It runs on its own small thread
//! with blocking sockets, one request per connection, so a scrape never
//! takes time from a worker.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, RwLock,
    },
    thread,
    time::Duration,
};

use crate::metrics::Registry;

/// Bind the admin address and serve it on a thread until `stop`.
///
/// # Errors
/// The address cannot be bound.
pub fn start(
    addr: SocketAddr,
    reg: Arc<RwLock<Arc<Registry>>>,
    stop: Arc<AtomicBool>,
) -> io::Result<SocketAddr> {
    // SO_REUSEPORT: during a binary upgrade the new process binds the same
    // admin address while the old one still holds it.
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.cloexec(),
        None,
    )?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    sock.listen(128)?;
    let listener: TcpListener = sock.into();
    let bound = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    thread::Builder::new()
        .name("ringlb-admin".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        // The current generation's registry (a reload swaps it).
                        let current = Arc::clone(&reg.read().unwrap_or_else(|e| e.into_inner()));
                        if let Err(e) = serve(s, &current) {
                            tracing::debug!("admin request failed: {e}");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        tracing::warn!("admin accept: {e}");
                        thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(bound)
}

fn serve(mut s: TcpStream, reg: &Registry) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    // One deadline for the whole request head (a trickling client cannot
    // hold the admin thread).
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n")
        && !buf[..len].windows(2).any(|w| w == b"\n\n")
    {
        if len == buf.len() {
            return respond(&mut s, 431, "text/plain", "request too large\n");
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        s.set_read_timeout(Some(left))?;
        let n = s.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let line = buf[..len].split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if method != b"GET" && method != b"HEAD" {
        return respond(&mut s, 405, "text/plain", "only GET\n");
    }
    match path {
        b"/healthz" => respond(&mut s, 200, "text/plain", "ok\n"),
        b"/readyz" => match reg.ready() {
            Ok(()) => respond(&mut s, 200, "text/plain", "ready\n"),
            Err(why) => respond(&mut s, 503, "text/plain", &format!("not ready: {why}\n")),
        },
        b"/metrics" => respond(&mut s, 200, "text/plain; version=0.0.4", &reg.render()),
        b"/status" => respond(&mut s, 200, "application/json", &reg.status_json()),
        _ => respond(
            &mut s,
            404,
            "text/plain",
            "not found (try /healthz /readyz /metrics /status)\n",
        ),
    }
}

fn respond(s: &mut TcpStream, status: u16, ctype: &str, body: &str) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    s.flush()
}
