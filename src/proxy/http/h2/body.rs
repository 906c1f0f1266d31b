//! Moving bodies between HTTP/2 streams with flow control that only gives
//! a sender more room once the other side took the bytes: ringlb reads the
//! next DATA frame only when the last one was accepted, so a stream holds
//! what h2 buffers for the receiver (`max_send_buffer`), however fast
//! either peer is.

use std::{
    cell::{Cell, RefCell},
    future::{poll_fn, Future},
    pin::pin,
    task::Poll,
    time::Duration,
};

use bytes::Bytes;
use h2::{RecvStream, SendStream};

/// Why a body stopped.
#[derive(Debug)]
pub(super) enum PumpError {
    /// The sending side failed or reset its stream.
    Src(h2::Error),
    /// The receiving side reset or closed its stream (`None`: closed).
    Dst(Option<h2::Error>),
    /// Nothing moved for the body timeout (a stalled reader or writer).
    Timeout,
    /// More than the route's max_body_size.
    TooLarge,
}

/// A send half that may not be there yet (before the response head) or
/// any more; polled in short borrows, so a watcher can look at it too.
pub(super) type Slot = RefCell<Option<SendStream<Bytes>>>;

/// Send `data` (then end the stream when `eos`), as fast as the peer's
/// window allows; each wait for room lasts at most `idle`.
///
/// # Errors
/// The stream was reset or closed, or no room came within `idle`.
pub(super) async fn send_all(
    dst: &Slot,
    mut data: Bytes,
    eos: bool,
    idle: Duration,
) -> Result<(), PumpError> {
    if data.is_empty() {
        return match dst.borrow_mut().as_mut() {
            Some(s) if eos => s
                .send_data(Bytes::new(), true)
                .map_err(|e| PumpError::Dst(Some(e))),
            Some(_) => Ok(()),
            None => Err(PumpError::Dst(None)),
        };
    }
    while !data.is_empty() {
        let want = data.len();
        match dst.borrow_mut().as_mut() {
            Some(s) => s.reserve_capacity(want),
            None => return Err(PumpError::Dst(None)),
        }
        let room = poll_fn(|cx| match dst.borrow_mut().as_mut() {
            Some(s) => s.poll_capacity(cx),
            None => Poll::Ready(None),
        });
        let n = match crate::io::timer::timeout(idle, room).await {
            Err(_) => return Err(PumpError::Timeout),
            Ok(None) => return Err(PumpError::Dst(None)),
            Ok(Some(Err(e))) => return Err(PumpError::Dst(Some(e))),
            Ok(Some(Ok(0))) => continue,
            Ok(Some(Ok(n))) => n,
        };
        let part = data.split_to(n.min(data.len()));
        let last = eos && data.is_empty();
        match dst.borrow_mut().as_mut() {
            Some(s) => s
                .send_data(part, last)
                .map_err(|e| PumpError::Dst(Some(e)))?,
            None => return Err(PumpError::Dst(None)),
        }
    }
    Ok(())
}

/// What a relayed body carried.
pub(super) struct Moved {
    pub bytes: u64,
    /// The `grpc-status` of its trailers, if any.
    pub grpc_status: Option<u32>,
}

/// Wait for the sending side: at most `idle`, unless `patient` says the
/// answer is streaming (then a quiet sender, a gRPC client between
/// messages, waits as long as the response does; the response side keeps
/// its own timeout).
pub(super) async fn from_src<F: Future>(
    fut: F,
    idle: Duration,
    patient: Option<&Cell<bool>>,
) -> Result<F::Output, PumpError> {
    let mut fut = pin!(fut);
    let patient = || patient.is_some_and(Cell::get);
    loop {
        if patient() {
            return Ok(fut.await);
        }
        match crate::io::timer::timeout(idle, fut.as_mut()).await {
            Ok(v) => return Ok(v),
            Err(_) if patient() => {}
            Err(_) => return Err(PumpError::Timeout),
        }
    }
}

/// Relay a whole body, trailers included, from `src` to `dst`, releasing
/// `src`'s window only for what `dst` took.
///
/// # Errors
/// Either side failed, stalled for `idle`, or the body passed `limit`.
pub(super) async fn pump(
    src: &mut RecvStream,
    dst: &Slot,
    idle: Duration,
    limit: u64,
    patient: Option<&Cell<bool>>,
) -> Result<Moved, PumpError> {
    let mut total = 0u64;
    loop {
        let next = from_src(src.data(), idle, patient).await?;
        match next {
            Some(Ok(chunk)) => {
                let n = chunk.len();
                total += n as u64;
                if total > limit {
                    return Err(PumpError::TooLarge);
                }
                send_all(dst, chunk, false, idle).await?;
                // Only now may the sender send more.
                let _ = src.flow_control().release_capacity(n);
            }
            Some(Err(e)) => return Err(PumpError::Src(e)),
            None => break,
        }
    }
    let trailers = from_src(src.trailers(), idle, patient)
        .await?
        .map_err(PumpError::Src)?;
    let grpc_status = trailers.as_ref().and_then(super::grpc::status);
    match (trailers, dst.borrow_mut().as_mut()) {
        (Some(t), Some(s)) => s.send_trailers(t).map_err(|e| PumpError::Dst(Some(e)))?,
        (None, Some(s)) => s
            .send_data(Bytes::new(), true)
            .map_err(|e| PumpError::Dst(Some(e)))?,
        (_, None) => return Err(PumpError::Dst(None)),
    }
    Ok(Moved {
        bytes: total,
        grpc_status,
    })
}
