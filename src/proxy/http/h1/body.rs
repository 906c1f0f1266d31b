//! Moving one message body from a source to a destination by its framing
//! (Content-Length, chunked, until close), never buffering it whole: each
//! read is forwarded before the next, a bulk Content-Length body moves
//! kernel-side through a pooled pipe, and every wait has a deadline.

use std::{
    io,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use super::{chunked::Chunked, codec::Framing};
use crate::{
    io::{
        pools::{PipeLease, Pools},
        rbuf::RBuf,
        relay,
        stream::Stream,
    },
    sys,
};

/// Why moving a body stopped short.
#[derive(Debug)]
pub enum BodyError {
    /// The sender closed or failed mid-body, or went quiet for body_timeout.
    Source(io::Error),
    /// The receiver failed or stopped reading for body_timeout.
    Dest(io::Error),
    /// Malformed chunked framing from the sender.
    Chunk(&'static str),
    /// A chunked request body passed max_body_size.
    TooLarge,
    /// Fewer bytes moved than the minimum rate allows (a trickle).
    TooSlow,
}

/// The minimum average rate a body must keep once its grace period is
/// over: one byte now and then within `body_timeout` must not hold a
/// backend slot, a pipe and buffers for ever.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    started: Instant,
    /// Bytes per second; 0 = no minimum.
    min_rate: u64,
    grace: Duration,
}

impl Pace {
    pub fn new(min_rate: u64, grace: Duration) -> Pace {
        Pace {
            started: Instant::now(),
            min_rate,
            grace,
        }
    }

    /// `moved` body bytes so far: still fast enough?
    pub fn check(&self, moved: u64) -> Result<(), BodyError> {
        if self.min_rate == 0 {
            return Ok(());
        }
        let over = self.started.elapsed().saturating_sub(self.grace);
        if over.is_zero() {
            return Ok(());
        }
        let due = (self.min_rate as f64 * over.as_secs_f64()) as u64;
        if moved < due {
            return Err(BodyError::TooSlow);
        }
        Ok(())
    }
}

/// Write `a` then `b` (one vectored send), each wait for room at most `limit`.
pub async fn timed_write(dst: &Stream, a: &[u8], b: &[u8], limit: Duration) -> io::Result<()> {
    relay::write_all_until(dst, a, b, Some(limit)).await
}

/// Move one message body from `src` (bytes already read are in `sbuf`) to
/// `dst`. `head` is written first, in the same send as the first body bytes.
/// `dechunk`: send only chunk data (for HTTP/1.0 clients). `limit`: most
/// body bytes accepted (chunked; Content-Length was checked before).
/// Returns the body bytes moved.
#[allow(clippy::too_many_arguments)]
pub async fn forward_body(
    src: &Stream,
    sbuf: &mut RBuf,
    dst: &Stream,
    framing: Framing,
    dechunk: bool,
    limit: u64,
    timeout: Duration,
    head: &[u8],
    pools: &Pools,
    pace: &Pace,
) -> Result<u64, BodyError> {
    let mut head = head;
    let mut moved = 0u64;
    match framing {
        Framing::None => {
            if !head.is_empty() {
                timed_write(dst, head, &[], timeout)
                    .await
                    .map_err(BodyError::Dest)?;
            }
        }
        Framing::Length(n) => {
            let mut left = n;
            while left > 0 {
                if sbuf.is_empty() {
                    if left >= SPLICE_MIN && src.as_plain().is_some() && dst.as_plain().is_some() {
                        // Bulk between plain sockets: what is left moves
                        // kernel-side through a pipe.
                        if let Some(lease) = pools.lease_pipe() {
                            if !head.is_empty() {
                                timed_write(dst, head, &[], timeout)
                                    .await
                                    .map_err(BodyError::Dest)?;
                                head = &[];
                            }
                            splice_exact(src, dst, left, lease, timeout, pace, moved).await?;
                            moved += left;
                            left = 0;
                            continue;
                        }
                    }
                    fill(src, sbuf, timeout).await?;
                    pace.check(moved)?;
                }
                let take = (sbuf.len() as u64).min(left) as usize;
                timed_write(dst, head, &sbuf.data()[..take], timeout)
                    .await
                    .map_err(BodyError::Dest)?;
                head = &[];
                sbuf.consume(take);
                left -= take as u64;
                moved += take as u64;
            }
            if !head.is_empty() {
                timed_write(dst, head, &[], timeout)
                    .await
                    .map_err(BodyError::Dest)?;
            }
        }
        Framing::Chunked => {
            let mut scan = Chunked::new();
            while !scan.is_done() {
                if sbuf.is_empty() {
                    fill(src, sbuf, timeout).await?;
                    pace.check(moved)?;
                }
                // Scan what is buffered; forward it in as few writes as possible.
                let data = sbuf.data();
                let mut at = 0;
                while at < data.len() && !scan.is_done() {
                    let step = scan.step(&data[at..]).map_err(|e| BodyError::Chunk(e.0))?;
                    if scan.data_total > limit {
                        return Err(BodyError::TooLarge);
                    }
                    if dechunk && step.data && step.len > 0 {
                        timed_write(dst, head, &data[at..at + step.len], timeout)
                            .await
                            .map_err(BodyError::Dest)?;
                        head = &[];
                    }
                    at += step.len;
                    if step.len == 0 {
                        break;
                    }
                }
                if !dechunk && at > 0 {
                    timed_write(dst, head, &data[..at], timeout)
                        .await
                        .map_err(BodyError::Dest)?;
                    head = &[];
                }
                sbuf.consume(at);
                moved = scan.data_total;
            }
            if !head.is_empty() {
                timed_write(dst, head, &[], timeout)
                    .await
                    .map_err(BodyError::Dest)?;
            }
        }
        Framing::UntilClose => {
            if !head.is_empty() || !sbuf.is_empty() {
                timed_write(dst, head, sbuf.data(), timeout)
                    .await
                    .map_err(BodyError::Dest)?;
                moved += sbuf.len() as u64;
                sbuf.clear();
            }
            loop {
                match sbuf.fill(src, timeout).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err(BodyError::Source(e)),
                }
                pace.check(moved)?;
                timed_write(dst, sbuf.data(), &[], timeout)
                    .await
                    .map_err(BodyError::Dest)?;
                moved += sbuf.len() as u64;
                sbuf.clear();
            }
            let _ = dst.close_write(relay::CLOSE_NOTIFY_WAIT).await;
        }
    }
    Ok(moved)
}

/// A Content-Length body with at least this much left (and nothing
/// buffered) is spliced instead of copied.
const SPLICE_MIN: u64 = 16 * 1024;

/// Move exactly `left` bytes from `src` to `dst` through a leased pipe.
async fn splice_exact(
    src: &Stream,
    dst: &Stream,
    mut left: u64,
    mut lease: PipeLease<'_>,
    timeout: Duration,
    pace: &Pace,
    moved_before: u64,
) -> Result<(), BodyError> {
    let total = left;
    let Some(pipe) = lease.pipe() else {
        return Err(BodyError::Source(io::ErrorKind::Other.into()));
    };
    let (pr, pw) = (pipe.read.as_raw_fd(), pipe.write.as_raw_fd());
    let sfd = src.fd();
    let cap = pipe.capacity as u64;
    let mut result = Ok(());
    while left > 0 {
        let n = match sys::splice(sfd, pw, left.min(cap) as usize) {
            Ok(0) => {
                result = Err(BodyError::Source(io::ErrorKind::UnexpectedEof.into()));
                break;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match crate::io::timer::timeout(timeout, src.readable()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => result = Err(BodyError::Source(e)),
                    Err(_) => result = Err(BodyError::Source(io::ErrorKind::TimedOut.into())),
                }
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                result = Err(BodyError::Source(e));
                break;
            }
        };
        left -= n as u64;
        if let Err(e) = relay::pipe_to(pr, dst, n, Some(timeout)).await {
            result = Err(BodyError::Dest(e));
            break;
        }
        if let Err(e) = pace.check(moved_before + (total - left)) {
            result = Err(e);
            break;
        }
    }
    // A pipe left holding bytes is not returned to the pool.
    lease.set_clean(result.is_ok());
    result
}

/// Read more body bytes; EOF mid-body is an error.
async fn fill(src: &Stream, sbuf: &mut RBuf, timeout: Duration) -> Result<(), BodyError> {
    match sbuf.fill(src, timeout).await {
        Ok(0) => Err(BodyError::Source(io::ErrorKind::UnexpectedEof.into())),
        Ok(_) => Ok(()),
        Err(e) => Err(BodyError::Source(e)),
    }
}
