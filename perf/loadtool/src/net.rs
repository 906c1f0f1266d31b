//! Sockets: limits, source-address binding, connect/echo with deadlines, and failures named
//! precisely (EMFILE here vs. a proxy that never answered vs. a reset).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Linux IP_BIND_ADDRESS_NO_PORT: bind(ip:0) does not reserve a port; connect() picks one that
/// is unique for the 4-tuple, so one source address gets a full ephemeral range per destination.
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;

/// Why one connection attempt (or one held connection) failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fail {
    /// socket() hit this process's RLIMIT_NOFILE.
    Emfile,
    /// socket() hit the system-wide file limit.
    Enfile,
    /// No local port/address left (ephemeral ports exhausted for that source and destination).
    AddrNotAvail,
    ConnectRefused,
    /// The SYN was not answered in time (accept queue full).
    ConnectTimeout,
    ConnectReset,
    ConnectOther(i32),
    /// Connected, sent, no echo in time: the connection waits in the proxy's accept queue (or
    /// the proxy never reached a backend).
    EchoTimeout,
    /// Closed by the peer before (or instead of) the echo.
    Eof,
    /// Reset by the peer.
    Reset,
    /// Echo came back different, or unexpected bytes arrived on an idle connection.
    Mismatch,
    IoOther(i32),
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Emfile => write!(f, "emfile"),
            Fail::Enfile => write!(f, "enfile"),
            Fail::AddrNotAvail => write!(f, "addr_not_avail"),
            Fail::ConnectRefused => write!(f, "connect_refused"),
            Fail::ConnectTimeout => write!(f, "connect_timeout"),
            Fail::ConnectReset => write!(f, "connect_reset"),
            Fail::ConnectOther(e) => write!(f, "connect_errno_{e}"),
            Fail::EchoTimeout => write!(f, "echo_timeout"),
            Fail::Eof => write!(f, "eof"),
            Fail::Reset => write!(f, "reset"),
            Fail::Mismatch => write!(f, "mismatch"),
            Fail::IoOther(e) => write!(f, "io_errno_{e}"),
        }
    }
}

/// Failure counts by kind, printed as `kind:n,kind:n` (`none` when empty).
#[derive(Default)]
pub struct FailCounts(pub BTreeMap<Fail, u64>);

impl FailCounts {
    pub fn add(&mut self, f: Fail) {
        *self.0.entry(f).or_default() += 1;
    }
    pub fn merge(&mut self, o: &FailCounts) {
        for (k, v) in &o.0 {
            *self.0.entry(*k).or_default() += v;
        }
    }
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl fmt::Display for FailCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "none");
        }
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        write!(f, "{}", parts.join(","))
    }
}

/// Raise RLIMIT_NOFILE's soft limit to the hard limit; returns (soft, hard) after.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on 64-bit Linux, not everywhere
pub fn raise_nofile() -> (u64, u64) {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return (0, 0);
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
    }
    (rl.rlim_cur as u64, rl.rlim_max as u64)
}

fn setsockopt<T>(fd: i32, level: libc::c_int, name: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: val points to a live T of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// SO_LINGER 0: the next close sends RST and leaves no TIME_WAIT on this side.
pub fn set_linger0(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &l);
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn classify_connect(e: &io::Error) -> Fail {
    match errno(e) {
        libc::EMFILE => Fail::Emfile,
        libc::ENFILE => Fail::Enfile,
        libc::EADDRNOTAVAIL | libc::EADDRINUSE => Fail::AddrNotAvail,
        libc::ECONNREFUSED => Fail::ConnectRefused,
        libc::ETIMEDOUT => Fail::ConnectTimeout,
        libc::ECONNRESET => Fail::ConnectReset,
        n => Fail::ConnectOther(n),
    }
}

pub fn classify_io(e: &io::Error) -> Fail {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => Fail::Eof,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Fail::Reset,
        _ => match errno(e) {
            libc::EMFILE => Fail::Emfile,
            n => Fail::IoOther(n),
        },
    }
}

/// Connect to `target`, from `src` (port chosen at connect time) when given.
pub async fn connect(
    target: SocketAddr,
    src: Option<Ipv4Addr>,
    to: Duration,
) -> Result<TcpStream, Fail> {
    let sock = TcpSocket::new_v4().map_err(|e| classify_connect(&e))?;
    if let Some(ip) = src {
        let _ = setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            &1i32,
        );
        sock.bind(SocketAddr::V4(SocketAddrV4::new(ip, 0)))
            .map_err(|e| classify_connect(&e))?;
    }
    match tokio::time::timeout(to, sock.connect(target)).await {
        Err(_) => Err(Fail::ConnectTimeout),
        Ok(Err(e)) => Err(classify_connect(&e)),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

/// Send `msg` and read exactly as many bytes back; they must be equal.
pub async fn echo_once(s: &mut TcpStream, msg: &[u8], to: Duration) -> Result<(), Fail> {
    let mut buf = vec![0u8; msg.len()];
    let io = async {
        s.write_all(msg).await?;
        s.read_exact(&mut buf).await?;
        Ok::<(), io::Error>(())
    };
    match tokio::time::timeout(to, io).await {
        Err(_) => Err(Fail::EchoTimeout),
        Ok(Err(e)) => Err(classify_io(&e)),
        Ok(Ok(())) if buf == msg => Ok(()),
        Ok(Ok(())) => Err(Fail::Mismatch),
    }
}

/// State of a held (idle) connection, without waiting: MSG_PEEK | MSG_DONTWAIT.
pub fn peek_state(s: &TcpStream) -> Result<(), Fail> {
    let mut b = [0u8; 1];
    // SAFETY: recv into a 1-byte local buffer.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n == 0 {
        return Err(Fail::Eof);
    }
    if n > 0 {
        return Err(Fail::Mismatch);
    }
    let e = io::Error::last_os_error();
    match errno(&e) {
        libc::EAGAIN => Ok(()),
        libc::ECONNRESET => Err(Fail::Reset),
        n => Err(Fail::IoOther(n)),
    }
}

/// A message unique to (id, salt), `len` bytes of printable text.
pub fn message(id: u64, salt: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.rotate_left(32);
    while out.len() < len {
        x = splitmix(x);
        out.extend_from_slice(format!("{x:016x}").as_bytes());
    }
    out.truncate(len);
    out
}

pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("bad address '{s}' (want IP:PORT)"))
}

pub fn parse_addrs(s: &str) -> Result<Vec<SocketAddr>, String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(parse_addr)
        .collect()
}

/// `--sources 127.0.0.2,127.0.0.3`: empty or absent = let the kernel choose (127.0.0.1).
pub fn parse_sources(s: Option<&str>) -> Result<Vec<Ipv4Addr>, String> {
    match s {
        None => Ok(Vec::new()),
        Some(s) => s
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.parse().map_err(|_| format!("bad source address '{x}'")))
            .collect(),
    }
}

pub fn pick_source(sources: &[Ipv4Addr], i: u64) -> Option<Ipv4Addr> {
    if sources.is_empty() {
        None
    } else {
        Some(sources[(i % sources.len() as u64) as usize])
    }
}

/// Entries in /proc/PID/fd (None if the process is gone).
pub fn count_fds(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}
