//! Moving bytes both ways between two connected, nonblocking sockets.
//!
//! Each direction is a pump: wait until the source is readable (an
//! io_uring PollAdd, or epoll readiness on the fallback driver; it holds no
//! buffer), take a pipe (or a buffer) from the worker's pool, move what is
//! queued with nonblocking splice(2) (or recv/send) until the source is
//! drained and the pipe is empty, then give the pipe back. A destination that
//! is full parks the pump on a writability wait while it keeps its pipe.
//!
//! Why not io_uring's own splice op: the kernel always runs IORING_OP_SPLICE
//! in an io-wq worker thread (it cannot be issued nonblocking), so every
//! splice would cost a thread hand-off, and a splice waiting on an idle
//! socket would pin a kernel thread. Readiness through the ring plus direct
//! nonblocking splice keeps the zero-copy path and costs two syscalls per
//! burst, with no helper threads.
//!
//! `Transfer::Auto` (the default) picks per direction and per burst: copy
//! while bursts are small (a 100-byte request costs less to copy than to
//! splice), splice once a burst moves [`BULK_BURST`] or more, and back to
//! copy after [`SMALL_RUN`] splice bursts in a row moved less than [`SMALL_BURST`].
//!
//! Half-close: EOF on one source shuts down the write half of the other
//! socket (FIN) and the reverse pump keeps running until it ends too. An
//! error on either side (reset, broken pipe) ends both. The idle watchdog
//! ends both when neither pump moved a byte for `idle`.

use std::{
    cell::Cell,
    io,
    os::fd::{AsRawFd, RawFd},
    time::{Duration, Instant},
};

use futures_util::future::{select, try_join, Either};
use monoio::net::TcpStream;

use super::{
    pools::{PipeLease, Pools},
    stream::Stream,
};
use crate::{config::Transfer, sys};

/// How long a TLS stream waits for room to send its close_notify.
pub const CLOSE_NOTIFY_WAIT: Duration = Duration::from_secs(5);

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions reached EOF.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// A socket failed (reset, broken pipe...).
    Error(io::Error),
}

/// Bytes moved, per direction.
#[derive(Debug, Default)]
pub struct Counts {
    pub up: Cell<u64>,
    pub down: Cell<u64>,
}

struct Ctx<'a> {
    pools: &'a Pools,
    transfer: Transfer,
    last: Cell<Instant>,
}

/// Relay until both sides close, one fails, or `idle` passes with no bytes.
pub async fn relay(
    client: &Stream,
    backend: &Stream,
    pools: &Pools,
    transfer: Transfer,
    idle: Duration,
    counts: &Counts,
) -> RelayEnd {
    let ctx = Ctx {
        pools,
        transfer,
        last: Cell::new(Instant::now()),
    };
    let up = pump(client, backend, &ctx, &counts.up);
    let down = pump(backend, client, &ctx, &counts.down);
    let both = std::pin::pin!(try_join(up, down));
    let watchdog = std::pin::pin!(idle_watch(&ctx.last, idle));
    match select(both, watchdog).await {
        Either::Left((Ok(_), _)) => RelayEnd::Closed,
        Either::Left((Err(e), _)) => RelayEnd::Error(e),
        Either::Right(((), _)) => RelayEnd::Idle,
    }
}

async fn idle_watch(last: &Cell<Instant>, idle: Duration) {
    loop {
        let elapsed = last.get().elapsed();
        if elapsed >= idle {
            return;
        }
        super::timer::sleep(idle - elapsed).await;
    }
}

/// A copy burst of at least this many bytes switches an `Auto` direction to
/// splice (request/response messages are far smaller; a stream's bursts on
/// loopback are mostly 16-64 KiB, rarely a whole 64 KiB buffer).
const BULK_BURST: u64 = 16 * 1024;
/// A splice burst smaller than this counts towards going back to copying...
const SMALL_BURST: u64 = 4 * 1024;
/// ...which happens after this many small bursts in a row. Streams have an
/// occasional small burst (measured: about 1 in 4 on an iperf3 stream), and a
/// switch back costs a long copy burst, so one small burst is not enough.
const SMALL_RUN: u32 = 8;

/// One direction, until EOF (then FIN the destination) or an error.
async fn pump(src: &Stream, dst: &Stream, ctx: &Ctx<'_>, count: &Cell<u64>) -> io::Result<()> {
    // Splice moves bytes kernel-side between two plain sockets only.
    let plain = src.as_plain().zip(dst.as_plain());
    // Auto: start copying; one big burst means bulk, a run of small ones means not.
    let mut bulk = false;
    let mut small_run = 0u32;
    loop {
        src.readable().await?;
        let before = count.get();
        let use_splice = match ctx.transfer {
            Transfer::Splice => true,
            Transfer::Copy => false,
            Transfer::Auto => bulk,
        };
        let eof = match plain {
            Some((s, d)) if use_splice => match ctx.pools.lease_pipe() {
                Some(lease) => splice_burst(s.as_raw_fd(), d, lease, ctx, count).await?,
                None => copy_burst(src, dst, ctx, count).await?,
            },
            _ => copy_burst(src, dst, ctx, count).await?,
        };
        let moved = count.get() - before;
        if bulk {
            small_run = if moved < SMALL_BURST {
                small_run + 1
            } else {
                0
            };
            if small_run >= SMALL_RUN {
                bulk = false;
                small_run = 0;
            }
        } else {
            bulk = moved >= BULK_BURST;
        }
        if eof {
            // The peer may already be gone (ENOTCONN); the other pump will see it.
            let _ = dst.close_write(CLOSE_NOTIFY_WAIT).await;
            return Ok(());
        }
    }
}

/// Count `n` bytes forwarded and note the activity for the idle watchdog.
/// Done per chunk, not per burst: a burst lasts as long as the source keeps
/// the buffer full, and may wait on a slow destination for longer than the
/// idle timeout while bytes still move.
fn progress(ctx: &Ctx<'_>, count: &Cell<u64>, n: usize) {
    count.set(count.get() + n as u64);
    ctx.last.set(Instant::now());
}

/// Move everything queued on `sfd` through the leased pipe into `dst`.
/// Returns true at EOF. The pipe goes back to the pool only if drained.
async fn splice_burst(
    sfd: RawFd,
    dst: &TcpStream,
    mut lease: PipeLease<'_>,
    ctx: &Ctx<'_>,
    count: &Cell<u64>,
) -> io::Result<bool> {
    let Some(pipe) = lease.pipe() else {
        return Ok(false);
    };
    let chunk = pipe.capacity;
    let (pr, pw) = (pipe.read.as_raw_fd(), pipe.write.as_raw_fd());
    let dfd = dst.as_raw_fd();
    let mut result = Ok(false);
    'burst: loop {
        let n = match sys::splice(sfd, pw, chunk) {
            Ok(0) => {
                result = Ok(true);
                break;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        // The drain loop of `pipe_to`, inline: a nested future here would
        // grow every tcp connection's task state by 128 bytes (measured by
        // `connection_task_state_is_small`, release and debug alike).
        let mut left = n;
        while left > 0 {
            match sys::splice(pr, dfd, left) {
                Ok(0) => {
                    result = Err(io::ErrorKind::WriteZero.into());
                    break 'burst;
                }
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = dst.writable(false).await {
                        result = Err(e);
                        break 'burst;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    result = Err(e);
                    break 'burst;
                }
            }
        }
        progress(ctx, count, n);
        if n < chunk {
            // Short read: the socket is (very likely) drained; go back to waiting.
            break;
        }
    }
    lease.set_clean(result.is_ok());
    result
}

/// The same with reads and writes through a pooled buffer (any stream).
async fn copy_burst(
    src: &Stream,
    dst: &Stream,
    ctx: &Ctx<'_>,
    count: &Cell<u64>,
) -> io::Result<bool> {
    let mut buf = ctx.pools.take_buf();
    let result = async {
        loop {
            let n = match src.try_read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            write_all(dst, &buf[..n]).await?;
            progress(ctx, count, n);
            if n < buf.len() {
                return Ok(false);
            }
        }
    }
    .await;
    ctx.pools.put_buf(buf);
    result
}

/// Write all of `data` to a nonblocking socket, waiting for room as needed.
///
/// # Errors
/// The peer reset or closed the connection.
pub async fn write_all(dst: &Stream, mut data: &[u8]) -> io::Result<()> {
    // Not write_all_until: this runs inside every tcp connection's task, and
    // its pair of slices and optional timer add 128 bytes to that state
    // (`connection_task_state_is_small`). One await point, for the same
    // reason: the flush of a TLS stream's last records shares it.
    loop {
        let step = if data.is_empty() {
            dst.try_flush().map(|()| 0)
        } else {
            dst.try_write(data, &[])
        };
        match step {
            Ok(0) if data.is_empty() => return Ok(()),
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Write `a` then `b` (one vectored send when both are there), waiting for
/// room as needed, each wait at most `limit` when given.
///
/// # Errors
/// `TimedOut`, or the peer reset or closed the connection.
pub async fn write_all_until(
    dst: &Stream,
    mut a: &[u8],
    mut b: &[u8],
    limit: Option<Duration>,
) -> io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        match dst.try_write(a, b) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(mut n) => {
                let from_a = n.min(a.len());
                a = &a[from_a..];
                n -= from_a;
                b = &b[n.min(b.len())..];
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(dst, limit).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // TLS: the last records may still be in rustls.
    while let Err(e) = dst.try_flush() {
        match e.kind() {
            io::ErrorKind::WouldBlock => writable(dst, limit).await?,
            io::ErrorKind::Interrupted => {}
            _ => return Err(e),
        }
    }
    Ok(())
}

/// Move the `n` bytes waiting in a pipe (read end `pr`) into `dst`, a
/// plain stream (the caller checked: splice needs a socket on both ends).
///
/// # Errors
/// `TimedOut` (a wait for room passed `limit`), or as splice(2).
pub async fn pipe_to(
    pr: RawFd,
    dst: &Stream,
    mut n: usize,
    limit: Option<Duration>,
) -> io::Result<()> {
    let dfd = dst.fd();
    while n > 0 {
        match sys::splice(pr, dfd, n) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => n -= m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(dst, limit).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Wait for room in `dst`'s send buffer, at most `limit` when given.
/// Not an async fn: the untimed wait (the tcp relay's) carries no timer.
fn writable(
    dst: &Stream,
    limit: Option<Duration>,
) -> Either<
    impl std::future::Future<Output = io::Result<()>> + '_,
    impl std::future::Future<Output = io::Result<()>> + '_,
> {
    match limit {
        None => Either::Left(dst.writable()),
        Some(d) => Either::Right(async move {
            match super::timer::timeout(d, dst.writable()).await {
                Ok(r) => r,
                Err(_) => Err(io::ErrorKind::TimedOut.into()),
            }
        }),
    }
}

/// Read once from a stream into `buf`, waiting until readable.
/// Returns the bytes read (0 at EOF).
///
/// # Errors
/// As recv(2).
pub async fn read_some(src: &Stream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match src.try_read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => src.readable().await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
