//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/status` on a
//! plain-HTTP port (loopback by default). Its accept loop runs on its own
//! thread and serves each connection (one request, blocking sockets, one
//! deadline for the whole exchange) on a short-lived thread, at most
//! [`MAX_ACTIVE`] at once: a scrape never takes time from a worker, and a
//! slow or stalled client cannot hold `/healthz` up for everyone.

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

/// Requests served at once; past it a client gets 503 at once.
const MAX_ACTIVE: usize = 16;
/// Reading the request and writing the answer, together.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(5);
/// Of which the request head may take this much.
const HEAD_DEADLINE: Duration = Duration::from_secs(2);

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
            let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        if active.fetch_add(1, Ordering::Relaxed) >= MAX_ACTIVE {
                            active.fetch_sub(1, Ordering::Relaxed);
                            let _ = s.set_nonblocking(true);
                            let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                            continue;
                        }
                        // The current generation's registry (a reload swaps it).
                        let current = Arc::clone(&reg.read().unwrap_or_else(|e| e.into_inner()));
                        let done = Arc::clone(&active);
                        let spawned = thread::Builder::new()
                            .name("ringlb-admin-req".into())
                            .spawn(move || {
                                if let Err(e) = serve(s, &current) {
                                    tracing::debug!("admin request failed: {e}");
                                }
                                done.fetch_sub(1, Ordering::Relaxed);
                            });
                        if let Err(e) = spawned {
                            active.fetch_sub(1, Ordering::Relaxed);
                            tracing::warn!("admin: cannot start a request thread: {e}");
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

fn serve(s: TcpStream, reg: &Registry) -> io::Result<()> {
    let start = std::time::Instant::now();
    let mut s = Deadlined {
        s,
        deadline: start + EXCHANGE_DEADLINE,
    };
    s.s.set_nonblocking(false)?;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    // One deadline for the whole request head (a trickling client cannot
    // hold its thread).
    let deadline = start + HEAD_DEADLINE;
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
        s.s.set_read_timeout(Some(left))?;
        let n = s.s.read(&mut buf[len..])?;
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
            Ok(()) => match reg.degraded() {
                // Serving, but on a last known set: say so.
                Some(why) => respond(&mut s, 200, "text/plain", &format!("ready ({why})\n")),
                None => respond(&mut s, 200, "text/plain", "ready\n"),
            },
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

/// A stream whose writes share one deadline (a reader that takes the answer
/// a byte at a time cannot keep its thread for long).
struct Deadlined {
    s: TcpStream,
    deadline: std::time::Instant,
}

impl Deadlined {
    fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let left = self
                .deadline
                .saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.s.set_write_timeout(Some(left))?;
            let n = self.s.write(data)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            data = &data[n..];
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.s.flush()
    }
}

fn respond(s: &mut Deadlined, status: u16, ctype: &str, body: &str) -> io::Result<()> {
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
