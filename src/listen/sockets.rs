//! Listening sockets: one SO_REUSEPORT socket per worker per listener,
//! made with socket2, bound before any worker starts.

use std::{io, net::SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

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
