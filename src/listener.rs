//! Listening sockets (one SO_REUSEPORT socket per worker per listener, made
//! with socket2) and the accept loop.
//!
//! The accept loop waits for its own socket to be readable, then takes a
//! limiter permit, then accepts: when the listener is full the worker stops
//! accepting and clients wait in the kernel backlog; nothing is accepted and
//! then dropped. EMFILE/ENFILE pause accepting with a growing back-off
//! instead of spinning.

use std::{
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::future::{select, Either};
use monoio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use crate::{limiter::Limiter, runtime::drain::Drain, sys};

/// Bind `n` SO_REUSEPORT sockets to `addr`. With port 0 the first socket
/// picks the port and the others join it.
///
/// Before binding, a probe without SO_REUSEPORT makes sure no other process
/// (say a stale ringlb) holds the port: with SO_REUSEPORT it would silently
/// share the traffic instead of failing.
///
/// # Errors
/// Address in use, permission denied (ports < 1024 need CAP_NET_BIND_SERVICE),
/// address not available.
pub fn bind_all(
    addr: SocketAddr,
    backlog: u32,
    n: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        let probe = new_socket(addr, false)?;
        probe.bind(&addr.into())?;
        drop(probe);
    }
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n.max(1) {
        let s = new_socket(addr, true)?;
        s.bind(&addr.into())?;
        s.listen(backlog.min(i32::MAX as u32) as i32)?;
        let l: std::net::TcpListener = s.into();
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// `n` more SO_REUSEPORT sockets on an address this process already listens
/// on (a reload that needs more workers' sockets).
///
/// # Errors
/// As bind(2)/listen(2).
pub fn bind_more(
    addr: SocketAddr,
    backlog: u32,
    n: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let s = new_socket(addr, true)?;
        s.bind(&addr.into())?;
        s.listen(backlog.min(i32::MAX as u32) as i32)?;
        out.push(s.into());
    }
    Ok(out)
}

fn new_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: set it
    // once here instead of one setsockopt per accepted connection.
    s.set_nodelay(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        // "[::]:80" means IPv6 only, as in nginx; list "0.0.0.0:80" too for IPv4.
        s.set_only_v6(true)?;
    }
    Ok(s)
}

/// What the accept loop hands to the protocol layer.
pub struct Accepted {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    pub permit: crate::limiter::Permit,
}

/// Accept until the worker stops. `on_conn` spawns the connection's task.
pub async fn accept_loop(
    listener: TcpListener,
    limiter: Arc<Limiter>,
    worker: usize,
    drain: Rc<Drain>,
    name: Rc<str>,
    on_full: impl Fn(),
    mut on_conn: impl FnMut(Accepted),
) {
    let fd = listener.as_raw_fd();
    let mut backoff = Duration::ZERO;
    let mut last_warn: Option<Instant> = None;
    loop {
        // Wait for a pending connection (or stop).
        {
            let ready = std::pin::pin!(listener.readable(false));
            let stop = std::pin::pin!(drain.stopped());
            match select(ready, stop).await {
                Either::Left((Ok(()), _)) => {}
                Either::Left((Err(e), _)) => {
                    tracing::warn!(listener = &*name, "waiting on listening socket: {e}");
                    monoio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Either::Right(_) => return,
            }
        }
        // Accept what is queued, one permit each.
        loop {
            let permit = match limiter.try_acquire() {
                Some(p) => p,
                None => {
                    on_full();
                    let acq = std::pin::pin!(limiter.acquire(worker));
                    let stop = std::pin::pin!(drain.stopped());
                    match select(acq, stop).await {
                        Either::Left((p, _)) => p,
                        Either::Right(_) => return,
                    }
                }
            };
            match sys::accept(fd) {
                Ok((stream, peer)) => {
                    backoff = Duration::ZERO;
                    on_conn(Accepted {
                        stream,
                        peer,
                        permit,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    drop(permit);
                    // Out of fds or memory: pause, then retry. Never spin.
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    if last_warn.map_or(true, |t| t.elapsed() > Duration::from_secs(5)) {
                        tracing::warn!(
                            listener = &*name,
                            open_fds = sys::open_fds(),
                            "accept failed: {e}; pausing accepts for {backoff:?}"
                        );
                        last_warn = Some(Instant::now());
                    }
                    let sleep = std::pin::pin!(monoio::time::sleep(backoff));
                    let stop = std::pin::pin!(drain.stopped());
                    if let Either::Right(_) = select(sleep, stop).await {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

/// Errors about one connection that died in the queue: just go on.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EINTR
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::EHOSTUNREACH
        )
    )
}
