//! The server side of an HTTP/1.1 client connection: waiting for and
//! reading the next request head, and closing after an error answer
//! without destroying it.

use std::{
    io,
    time::{Duration, Instant},
};

use super::codec::{self, HeadScan, Limits, Request};
use crate::{
    io::{rbuf::RBuf, stream::Stream},
    listen::drain::Drain,
    proxy::http::errors::Kind,
};
use futures_util::future::{select, Either};

/// How long, and how much, an erroring connection is drained before close.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;

/// The outcome of waiting for a request head.
pub enum HeadRead {
    /// A complete head is parsed into the request.
    Ready,
    /// EOF, reset, keep-alive timeout or shutdown before a request started.
    Gone,
    /// Answer this and close.
    Refuse(Kind),
}

/// Deadlines for one head.
pub struct HeadWait<'a> {
    /// How long the connection may stay idle before the first byte.
    pub idle: Duration,
    /// How long the whole head may take once it started.
    pub header_timeout: Duration,
    pub limits: &'a Limits,
    pub drain: &'a Drain,
}

/// How long before the drain's deadline an idle connection is closed: a
/// clean FIN of ours, not the reset of a runtime torn down mid-request.
const DRAIN_MARGIN: Duration = Duration::from_millis(100);

/// Between requests: wait for the client's next byte, at most the idle
/// timeout. When the worker is draining (a reload, an upgrade, a stop), an
/// idle keep-alive connection is not closed at once, which would race the
/// request the client may be sending: it keeps waiting (within its idle
/// timeout and the drain's deadline) and its next request is answered with
/// `Connection: close`. Only a connection that stays idle is closed.
/// Returns false when the connection should close.
pub async fn wait_for_request(client: &Stream, w: &HeadWait<'_>) -> bool {
    let idle_until = Instant::now() + w.idle;
    if !w.drain.is_stopping() {
        let readable = std::pin::pin!(client.readable());
        let stop = std::pin::pin!(w.drain.stopped());
        match crate::io::timer::timeout(w.idle, select(readable, stop)).await {
            Ok(Either::Left((Ok(()), _))) => return true,
            Ok(Either::Right(_)) => {} // draining now: wait on below
            _ => return false,
        }
    }
    let until = match w.drain.deadline() {
        Some(d) => idle_until.min(d.checked_sub(DRAIN_MARGIN).unwrap_or(d)),
        None => idle_until,
    };
    let left = until.saturating_duration_since(Instant::now());
    matches!(
        crate::io::timer::timeout(left, client.readable()).await,
        Ok(Ok(()))
    )
}

/// Wait for the next request head (or reuse what is buffered) and parse it
/// into `req`.
pub async fn read_head(
    client: &Stream,
    from_client: &mut RBuf,
    req: &mut Request,
    w: &HeadWait<'_>,
) -> HeadRead {
    if from_client.is_empty() && !wait_for_request(client, w).await {
        return HeadRead::Gone;
    }
    let deadline = Instant::now() + w.header_timeout;
    let mut scan = HeadScan::default();
    loop {
        if !from_client.is_empty() && scan.should_parse(from_client.data()) {
            match codec::parse_request(from_client.data(), w.limits, req) {
                Ok(true) => return HeadRead::Ready,
                Ok(false) => scan.parsed(from_client.len()),
                Err(e) => return HeadRead::Refuse(e.into()),
            }
        }
        match from_client.fill_until(client, deadline).await {
            Ok(0) => return HeadRead::Gone,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return if from_client.is_empty() {
                    HeadRead::Gone
                } else {
                    HeadRead::Refuse(Kind::HeadTimeout)
                };
            }
            Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                return HeadRead::Refuse(Kind::HeadTooLarge)
            }
            Err(_) => return HeadRead::Gone,
        }
    }
}

/// Before closing after an error: send FIN, then read and discard what the
/// client is still sending for a moment. Closing a socket with unread input
/// sends a reset, which can destroy the answer on its way.
pub async fn linger(client: &Stream, from_client: &mut RBuf) {
    let _ = client.close_write(LINGER).await;
    let deadline = Instant::now() + LINGER;
    let mut drained = 0;
    while drained < LINGER_BYTES {
        from_client.clear();
        match from_client.fill_until(client, deadline).await {
            Ok(n) if n > 0 => drained += n,
            _ => break,
        }
    }
    from_client.clear();
}
