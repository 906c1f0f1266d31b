//! Thin, audited wrappers over the Linux calls that std, socket2 and monoio
//! do not offer: nonblocking splice, pipes with O_CLOEXEC and a chosen size,
//! accept4 with SOCK_NONBLOCK, RLIMIT_NOFILE and synchronous signal waiting.
//! This is the only module allowed to use `unsafe`; every block says why it
//! is sound.
#![allow(unsafe_code)]

pub mod systemd;
mod udp;

pub use udp::{set_recv_pktinfo, udp_recv, udp_send, Datagram, PktInfo};

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

/// The result of a nonblocking call that may have nothing to do.
fn cvt(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A pipe used as the splice buffer between two sockets. Both ends are
/// O_NONBLOCK and O_CLOEXEC (no fd leaks into a re-executed binary).
#[derive(Debug)]
pub struct Pipe {
    pub read: OwnedFd,
    pub write: OwnedFd,
    /// Capacity the kernel actually granted (F_GETPIPE_SZ).
    pub capacity: usize,
}

impl Pipe {
    /// Create a pipe; `size` > 0 asks the kernel for that capacity (F_SETPIPE_SZ),
    /// falling back silently to the default if refused (pipe-max-size).
    ///
    /// # Errors
    /// EMFILE/ENFILE when the fd table is full.
    pub fn new(size: usize) -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid, writable array of two c_ints, as pipe2 requires.
        let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        if size > 0 {
            // SAFETY: fcntl on an fd we own; F_SETPIPE_SZ takes an int argument. Failure
            // (pipe-max-size, pipe-user-pages-soft) leaves the default size, read back below.
            unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
        }
        // SAFETY: fcntl on an fd we own; F_GETPIPE_SZ takes no argument.
        let got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        let capacity = if got > 0 { got as usize } else { 64 * 1024 };
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

/// splice(2) `len` bytes from `fd_in` to `fd_out`, never blocking.
/// One of the two must be a pipe. Returns 0 at EOF of `fd_in`.
///
/// # Errors
/// `WouldBlock` when the source is empty or the destination full; others as splice(2).
#[inline]
pub fn splice(fd_in: RawFd, fd_out: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on fds the caller keeps open for the duration; null offsets
    // mean "use the file position", which is what sockets and pipes need.
    cvt(unsafe {
        libc::splice(
            fd_in,
            std::ptr::null_mut(),
            fd_out,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    })
}

/// Nonblocking recv into `buf`. Returns 0 at EOF.
///
/// # Errors
/// `WouldBlock` when nothing is queued; others as recv(2).
#[inline]
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    cvt(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) })
}

/// True when an idle pooled connection still looks usable: nothing queued to
/// read (a backend that closed it has queued EOF; one that sent unsolicited
/// bytes is out of step) and no pending error.
pub fn idle_socket_usable(fd: RawFd) -> bool {
    let mut byte = [0u8; 1];
    // SAFETY: `byte` is valid for writes of 1 byte for the duration of the call.
    let r = cvt(unsafe {
        libc::recv(
            fd,
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_DONTWAIT | libc::MSG_PEEK,
        )
    });
    matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Nonblocking send of `buf` (no SIGPIPE).
///
/// # Errors
/// `WouldBlock` when the socket buffer is full; others as send(2).
#[inline]
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call.
    cvt(unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })
}

/// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC: the new socket is ready for our
/// nonblocking splice path without a second fcntl/ioctl.
///
/// # Errors
/// `WouldBlock` when the queue is empty, EMFILE/ENFILE when out of fds, others as accept4(2).
pub fn accept(listener: RawFd) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    // SAFETY: try_init hands us a zeroed sockaddr_storage and its length; accept4 writes at
    // most that many bytes into it and updates the length.
    let (fd, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            let fd = libc::accept4(
                listener,
                storage.cast(),
                len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            );
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(fd)
            }
        })?
    };
    // SAFETY: accept4 returned a new fd that nothing else owns.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let addr = addr
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "accepted a non-IP socket"))?;
    Ok((stream, addr))
}

/// shutdown(fd, SHUT_WR): send FIN, keep reading.
///
/// # Errors
/// As shutdown(2) (ENOTCONN when the peer already went away).
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on an fd the caller keeps open.
    let ret = unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// RLIMIT_NOFILE after trying to raise the soft limit to `wanted`
/// (never above the hard limit). Returns (soft, hard).
pub fn raise_nofile(wanted: u64) -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return (1024, 1024);
    }
    let target = wanted.min(lim.rlim_max);
    if target > lim.rlim_cur {
        let new = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            lim.rlim_cur = target;
        }
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// The process-control signals ringlb waits for on its control thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: graceful stop.
    Stop,
    /// SIGHUP: reload (reserved; today it is logged and ignored).
    Hup,
    /// SIGUSR1: reopen the access log.
    Usr1,
    /// SIGUSR2: upgrade to a new binary.
    Usr2,
}

/// Block SIGTERM, SIGINT and SIGHUP in the calling thread (and so in every
/// thread it spawns afterwards) so they can be taken synchronously with
/// [`wait_signal`] by one control thread instead of an async handler.
pub fn block_signals() -> io::Result<()> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it; pthread_sigmask
    // only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        let ret = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if ret != 0 {
            return Err(io::Error::from_raw_os_error(ret));
        }
    }
    Ok(())
}

/// Wait (blocking) for one of the signals blocked by [`block_signals`].
pub fn wait_signal() -> Signal {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: as in block_signals; sigwait writes the received signal number into `sig`.
        let ret = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGHUP);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            libc::sigwait(&set, &mut sig)
        };
        if ret != 0 {
            continue;
        }
        return match sig {
            libc::SIGHUP => Signal::Hup,
            libc::SIGUSR1 => Signal::Usr1,
            libc::SIGUSR2 => Signal::Usr2,
            _ => Signal::Stop,
        };
    }
}

/// Listening sockets handed to this process: by a previous ringlb during a
/// binary upgrade (`RINGLB_INHERIT_FDS=3,4,...`) or by systemd socket
/// activation (`LISTEN_FDS=n` with `LISTEN_PID` = our pid: fds 3..3+n).
/// Each comes back with the listener address it serves: the configured one
/// for `FD@ADDR` (tcp) and `FD@udp/ADDR` entries of a previous ringlb (so
/// `127.0.0.1:0` keeps its port), else its bound address. fds that are
/// neither listening TCP sockets nor bound UDP sockets are closed. The
/// variables are removed so children do not see them.
pub fn inherited_listeners() -> Vec<(SocketAddr, Inherited)> {
    let mut fds: Vec<(RawFd, Option<SocketAddr>)> = Vec::new();
    if let Ok(list) = std::env::var("RINGLB_INHERIT_FDS") {
        for entry in list.split(',') {
            let (fd, key) = entry.split_once('@').unwrap_or((entry, ""));
            let key = key.strip_prefix("udp/").unwrap_or(key);
            if let Ok(fd) = fd.trim().parse::<RawFd>() {
                if fd > 2 {
                    fds.push((fd, key.parse().ok()));
                }
            }
        }
    }
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    if ours {
        if let Some(n) = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|n| n.parse::<RawFd>().ok())
        {
            fds.extend((3..3 + n.clamp(0, 1024)).map(|fd| (fd, None)));
        }
    }
    std::env::remove_var("RINGLB_INHERIT_FDS");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDNAMES");
    fds.sort_unstable();
    fds.dedup_by_key(|e| e.0);
    let mut out = Vec::new();
    for (fd, key) in fds {
        // SAFETY: `fd` was handed to this process to own (the parent or systemd
        // gave it up); nothing else in this process uses it, and the Socket
        // takes sole ownership (closing it on drop if it is not usable).
        let sock = unsafe { <socket2::Socket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let kind = sock.r#type().ok();
        let addr = sock.local_addr().ok().and_then(|a| a.as_socket());
        match (addr, kind) {
            (Some(a), Some(socket2::Type::STREAM)) if sock.is_listener().unwrap_or(false) => {
                let _ = sock.set_nonblocking(true);
                let _ = sock.set_cloexec(true);
                out.push((key.unwrap_or(a), Inherited::Tcp(sock.into())));
            }
            (Some(a), Some(socket2::Type::DGRAM)) => {
                let _ = sock.set_nonblocking(true);
                let _ = sock.set_cloexec(true);
                out.push((key.unwrap_or(a), Inherited::Udp(sock.into())));
            }
            _ => drop(sock),
        }
    }
    out
}

/// A socket handed over by [`inherited_listeners`].
#[derive(Debug)]
pub enum Inherited {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// A close-on-exec pipe: (read end, write end).
///
/// # Errors
/// As pipe2(2).
pub fn pipe_pair() -> io::Result<(std::fs::File, std::fs::File)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as isize)?;
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    let (r, w) = unsafe {
        (
            <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]),
            <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]),
        )
    };
    Ok((r, w))
}

/// Own an inherited pipe fd (the upgrade readiness pipe), if it is one.
pub fn pipe_file(fd: RawFd) -> Option<std::fs::File> {
    if fd < 3 {
        return None;
    }
    // SAFETY: fcntl(F_GETFD) only queries the descriptor.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // It must be a pipe (a FIFO): a stale variable could name any fd.
    // SAFETY: `st` is a plain struct fstat fills in; fstat only reads the fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return None;
    }
    // SAFETY: the fd is open and was handed to this process to own.
    let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let _ = set_inheritable(fd, false);
    Some(f)
}

/// An anonymous in-memory file holding `data`, positioned at its start
/// (close-on-exec until made inheritable): how an upgrade hands the
/// discovered backend sets to the new process.
///
/// # Errors
/// As memfd_create(2) and write(2).
pub fn memfd_with(name: &str, data: &[u8]) -> io::Result<std::fs::File> {
    use std::io::{Seek, Write};
    let cname =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
    let fd = cvt(unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) } as isize)?;
    // SAFETY: memfd_create succeeded: the fd is open and owned by nobody else.
    let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) };
    f.write_all(data)?;
    f.rewind()?;
    Ok(f)
}

/// Own an inherited regular file fd (the upgrade's memfd), if it is one,
/// and read it whole (at most `limit` bytes).
pub fn read_inherited_file(fd: RawFd, limit: u64) -> Option<String> {
    use std::io::Read;
    if fd < 3 {
        return None;
    }
    // SAFETY: `st` is a plain struct fstat fills in; fstat only reads the fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; a closed fd makes fstat fail.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    // SAFETY: the fd is open and was handed to this process to own.
    let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut text = String::new();
    f.take(limit).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Read once from `f`, waiting at most `limit`. Ok(0) at EOF.
///
/// # Errors
/// `TimedOut`, or as poll(2)/read(2).
pub fn read_with_timeout(f: &std::fs::File, limit: std::time::Duration) -> io::Result<usize> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(f);
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = limit.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    let n = cvt(unsafe { libc::poll(&mut pfd, 1, ms) } as isize)?;
    if n == 0 {
        return Err(io::ErrorKind::TimedOut.into());
    }
    let mut buf = [0u8; 16];
    std::io::Read::read(&mut &*f, &mut buf)
}

/// Let `fd` survive exec (for handing it to a new binary).
///
/// # Errors
/// As fcntl(2).
pub fn set_inheritable(fd: RawFd, inherit: bool) -> io::Result<()> {
    with_sock(fd, |s| s.set_cloexec(!inherit))
}

/// Send `sig` (a libc signal number) to process `pid`.
///
/// # Errors
/// No such process, or not permitted.
pub fn send_signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    if pid <= 0 {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: kill(2) with a positive pid only sends a signal; no memory is involved.
    cvt(unsafe { libc::kill(pid, sig) } as isize).map(|_| ())
}

/// CLOCK_MONOTONIC in microseconds (for systemd's RELOADING=1 MONOTONIC_USEC).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if ret != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Number of open fds of this process (for the capability report and tests).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Run `f` with a socket2 view of `fd` (for socket options on sockets that
/// monoio owns, which implement `AsRawFd` but not `AsFd`).
/// The caller must pass an fd that stays open for the duration of the call.
pub fn with_sock<R>(fd: RawFd, f: impl FnOnce(socket2::SockRef<'_>) -> R) -> R {
    // SAFETY: the caller holds the object owning `fd` across this call, so the fd is open
    // and is not closed or reused while the borrowed view exists (it does not escape `f`).
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    f(socket2::SockRef::from(&borrowed))
}

/// Probe splice(2) once at startup: move one byte from a socket into a pipe.
pub fn splice_works() -> bool {
    let Ok((a, b)) = std::os::unix::net::UnixStream::pair() else {
        return false;
    };
    let Ok(pipe) = Pipe::new(0) else {
        return false;
    };
    use std::io::Write;
    if (&a).write_all(b"x").is_err() {
        return false;
    }
    matches!(splice(b.as_raw_fd(), pipe.write.as_raw_fd(), 1), Ok(1))
}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;

    #[test]
    fn only_a_pipe_is_adopted_as_the_upgrade_pipe() {
        let (_r, w) = super::pipe_pair().unwrap();
        assert!(super::pipe_file(w.into_raw_fd()).is_some(), "a pipe");
        let file = std::fs::File::open("/dev/null").unwrap();
        // Not adopted (and so not closed): it stays ours to drop.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        assert!(super::pipe_file(fd).is_none(), "/dev/null is no pipe");
        assert!(super::pipe_file(2).is_none(), "stdio is never adopted");
        drop(file);
    }
}
