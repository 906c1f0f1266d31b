//! The client side of an HTTP/1.1 backend connection: reading the response
//! head, relaying interim (1xx) responses to the client on the way.

use std::{io, time::Instant};

use super::{
    body::timed_write,
    codec::{self, HeadScan, Response},
    rewrite::{self, ResponseCtx},
};
use crate::{
    io::{rbuf::RBuf, stream::Stream},
    proxy::http::errors::Kind,
};

/// Most bytes of response head accepted from a backend.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Where interim responses go while a final one is awaited.
pub struct Interim<'a> {
    /// `None`: the client is not an HTTP/1.1 connection (an HTTP/2 stream).
    pub client: Option<&'a Stream>,
    /// The client speaks HTTP/1.1 (1.0 clients get no interim responses).
    pub http11: bool,
    pub write_timeout: std::time::Duration,
    /// The route's response header rules (interim heads get them too).
    pub ops: &'a crate::config::HeaderOps,
}

/// Read the backend's response head into `resp` within `deadline`,
/// relaying 1xx interim responses (but 101, and 100: ringlb answers Expect
/// itself) to the client. `is_head`: the request was HEAD (no body follows).
///
/// # Errors
/// `NoResponse` (closed or reset first), `ResponseTimeout`, `BadResponse`,
/// or `ClientGone` while relaying an interim response.
pub async fn read_response_head(
    up: &Stream,
    from_backend: &mut RBuf,
    resp: &mut Response,
    is_head: bool,
    deadline: Instant,
    interim: &Interim<'_>,
) -> Result<(), Kind> {
    let mut first = true;
    let mut scan = HeadScan::default();
    loop {
        if !from_backend.is_empty() && scan.should_parse(from_backend.data()) {
            match codec::parse_response(from_backend.data(), MAX_RESPONSE_HEAD, is_head, resp) {
                Ok(true) => {
                    let s = resp.status;
                    if s >= 200 || s == 101 {
                        return Ok(());
                    }
                    let n = resp.head_len;
                    if let (true, Some(client)) = (s != 100 && interim.http11, interim.client) {
                        // Through the same rewriting as a final head.
                        let mut head = Vec::with_capacity(n + 64);
                        rewrite::response_head(
                            &mut head,
                            from_backend.data(),
                            resp,
                            &ResponseCtx::interim(interim.ops, false),
                        );
                        if let Err(e) = timed_write(client, &head, &[], interim.write_timeout).await
                        {
                            return Err(Kind::ClientGone(e));
                        }
                    }
                    from_backend.consume(n);
                    scan = HeadScan::default();
                    continue;
                }
                Ok(false) => scan.parsed(from_backend.len()),
                Err(why) => return Err(Kind::BadResponse(why)),
            }
        }
        let read = if first {
            first = false;
            // Nothing can be there yet: wait first (saves a recv that finds nothing).
            from_backend.fill_after_wait(up, deadline).await
        } else {
            from_backend.fill_until(up, deadline).await
        };
        match read {
            Ok(0) => {
                return Err(Kind::NoResponse(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed",
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(Kind::ResponseTimeout),
            Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                return Err(Kind::BadResponse("response head too large"))
            }
            Err(e) => return Err(Kind::NoResponse(e)),
        }
    }
}
