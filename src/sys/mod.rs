//! Thin, audited wrappers over the Linux calls that std, socket2 and monoio
//! do not offer: nonblocking splice, pipes with O_CLOEXEC and a chosen size,
//! accept4 with SOCK_NONBLOCK, RLIMIT_NOFILE and synchronous signal waiting.
//! This is the only module allowed to use `unsafe`; every block says why it
//! is sound.
#![allow(unsafe_code)]

pub mod systemd;

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
            libc::sigwait(&set, &mut sig)
        };
        if ret != 0 {
            continue;
        }
        return match sig {
            libc::SIGHUP => Signal::Hup,
            libc::SIGUSR1 => Signal::Usr1,
            _ => Signal::Stop,
        };
    }
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
