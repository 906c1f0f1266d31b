//! The accept loop.
//!
//! It waits for its own socket to be readable, then takes a limiter permit,
//! then accepts: when the listener is full the worker stops accepting and
//! clients wait in the kernel backlog; nothing is accepted and then
//! dropped. EMFILE/ENFILE pause accepting with a growing back-off instead of
//! spinning.

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

use super::{drain::Drain, limiter::Limiter};
use crate::sys;

/// What the accept loop hands to the protocol layer.
pub struct Accepted {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    pub permit: super::limiter::Permit,
}

/// Accept until the worker stops. `on_conn` spawns the connection's task.
pub async fn accept_loop(
    listener: TcpListener,
    limiter: Arc<Limiter>,
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
                Either::Right(_) => return accept_queued(fd, &limiter, &drain, &mut on_conn),
            }
        }
        // Accept what is queued, one permit each.
        loop {
            let permit = match limiter.try_acquire() {
                Some(p) => p,
                None => {
                    on_full();
                    let acq = std::pin::pin!(limiter.acquire());
                    let stop = std::pin::pin!(drain.stopped());
                    match select(acq, stop).await {
                        Either::Left((p, _)) => p,
                        Either::Right(_) => {
                            return accept_queued(fd, &limiter, &drain, &mut on_conn)
                        }
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

/// On the last stop: hand over the connections the kernel already queued
/// (as far as the limit allows), so that closing the listening socket
/// afterwards resets none of them. A reload or an upgrade leaves the queue
/// to the next workers.
fn accept_queued(
    fd: std::os::fd::RawFd,
    limiter: &Arc<Limiter>,
    drain: &Drain,
    on_conn: &mut impl FnMut(Accepted),
) {
    if !drain.accept_queued() {
        return;
    }
    while let Some(permit) = limiter.try_acquire() {
        match sys::accept(fd) {
            Ok((stream, peer)) => on_conn(Accepted {
                stream,
                peer,
                permit,
            }),
            Err(e) if is_transient(&e) => {}
            Err(_) => return,
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
