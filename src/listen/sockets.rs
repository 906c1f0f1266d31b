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

/// What a listening socket is kept by: its transport and the address as
/// configured (a tcp and a udp listener may share a port, as DNS does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BindKey {
    pub udp: bool,
    pub addr: SocketAddr,
}

impl BindKey {
    pub fn of(l: &crate::config::ListenerConfig) -> BindKey {
        BindKey {
            udp: l.is_udp(),
            addr: l.listen,
        }
    }
}

/// A listening socket: a TCP listener, or a UDP socket bound to take
/// datagrams.
#[derive(Debug)]
pub enum Listening {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

impl Listening {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listening::Tcp(s) => s.local_addr(),
            Listening::Udp(s) => s.local_addr(),
        }
    }

    /// A duplicate (the same socket; workers get these).
    ///
    /// # Errors
    /// As dup(2).
    pub fn try_clone(&self) -> io::Result<Listening> {
        Ok(match self {
            Listening::Tcp(s) => Listening::Tcp(s.try_clone()?),
            Listening::Udp(s) => Listening::Udp(s.try_clone()?),
        })
    }
}

impl std::os::fd::AsRawFd for Listening {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Listening::Tcp(s) => s.as_raw_fd(),
            Listening::Udp(s) => s.as_raw_fd(),
        }
    }
}

impl From<crate::sys::Inherited> for Listening {
    fn from(s: crate::sys::Inherited) -> Listening {
        match s {
            crate::sys::Inherited::Tcp(t) => Listening::Tcp(t),
            crate::sys::Inherited::Udp(u) => Listening::Udp(u),
        }
    }
}

/// How an upgrade names a socket to the next process: `ADDR` (tcp, as
/// before udp existed) or `udp/ADDR`.
impl std::fmt::Display for BindKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.udp {
            write!(f, "udp/{}", self.addr)
        } else {
            write!(f, "{}", self.addr)
        }
    }
}

/// Bind `n` SO_REUSEPORT UDP sockets to `addr` (port 0: the first picks
/// it), after the same probe as [`bind_all`]. (On a wildcard address the
/// worker asks for each datagram's destination address when it registers
/// the socket: replies must leave from the address the client sent to.)
///
/// # Errors
/// As [`bind_all`].
pub fn bind_udp(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    if addr.port() != 0 {
        let probe = new_udp(addr, false)?;
        probe.bind(&addr.into())?;
        drop(probe);
    }
    let mut out = Vec::with_capacity(n);
    let mut at = addr;
    for _ in 0..n.max(1) {
        let s = new_udp(at, true)?;
        s.bind(&at.into())?;
        let u: std::net::UdpSocket = s.into();
        at = u.local_addr()?;
        out.push(u);
    }
    Ok(out)
}

/// One more SO_REUSEPORT UDP socket on an address this process already
/// has (a reload that needs more workers' sockets).
///
/// # Errors
/// As bind(2).
pub fn bind_udp_more(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let s = new_udp(addr, true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn new_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    // No SO_REUSEADDR: on UDP it would let two sockets share the port
    // unnoticed (the probe would pass next to a stale process's sockets).
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Room for bursts (the kernel caps it at net.core.rmem_max). The
    // destination-address option is set where every udp socket passes,
    // inherited ones too: `proxy::udp::register`.
    let _ = s.set_recv_buffer_size(4 << 20);
    Ok(s)
}
