//! One error type per request, and the one place it is mapped to what the
//! client sees (status, `Retry-After`, the JSON body), what passive health
//! learns (the failure reported against the backend) and what the log says.
//! HTTP/2 and gRPC will map the same errors to their own codes here.

use std::{io, net::SocketAddr};

use super::h1::codec::HttpError;

/// Which side of the proxy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something refused, too much, too late, or left.
    Client,
    /// The backend failed: refused, reset, timed out, answered badly.
    Backend,
    /// ringlb itself has no capacity: no backend available, queue full.
    Proxy,
}

/// What went wrong.
#[derive(Debug)]
pub enum Kind {
    /// The request head is malformed (400).
    BadHead(&'static str),
    /// The request line is too long (414).
    UriTooLong,
    /// The header section is too large (431).
    HeadTooLarge,
    /// CONNECT (405).
    MethodNotAllowed,
    /// A transfer coding other than chunked (501).
    NotImplemented,
    /// The head did not arrive within `header_timeout` (408).
    HeadTimeout,
    /// No route matches the host and path (404).
    NoRoute,
    /// The listener's or the route's `allow` / `deny` keeps the client
    /// address out (403).
    Forbidden,
    /// The route's rate limit refused it (429, `Retry-After`).
    RateLimited { retry_after: u64 },
    /// The body is over `max_body_size` (413).
    BodyTooLarge,
    /// The request body came slower than `body_min_rate` (408).
    BodyTooSlow,
    /// The chunked body's framing is malformed (400).
    BadBody(&'static str),
    /// The client closed or failed mid-request; nobody to answer.
    ClientGone(io::Error),
    /// No backend is available (503).
    NoBackend,
    /// Every backend is at max_connections and the queue is full (503).
    QueueFull,
    /// Queued for `queue_timeout` without a free backend (503).
    QueueTimeout,
    /// One connect attempt failed (the next backend is tried).
    Connect(String),
    /// Every backend tried failed (502).
    BackendsFailed,
    /// Sending the request head failed (502).
    SendFailed(io::Error),
    /// The backend stopped reading the request body (502).
    BackendStoppedReading(io::Error),
    /// The backend closed before a complete response head (502).
    NoResponse(io::Error),
    /// No response head within `response_timeout` (504).
    ResponseTimeout,
    /// The response head is invalid (502).
    BadResponse(&'static str),
    /// `101 Switching Protocols` to a request that asked for no upgrade (502).
    UnexpectedSwitch,
    /// A gRPC call routed to an upstream that speaks HTTP/1.1 (502).
    GrpcNeedsH2,
    /// The backend reset the HTTP/2 stream, or its connection failed (502).
    Reset(h2::Reason),
    /// The call's `grpc-timeout` passed (504).
    DeadlineExceeded,
}

/// A failed request: what went wrong, whether it may be sent again (on a
/// fresh connection), and the backend it went to, if any.
#[derive(Debug)]
pub struct ProxyError {
    pub kind: Kind,
    /// The request can go again: it was idempotent, every byte is still
    /// held, and it failed on a pooled connection the backend had closed.
    pub retryable: bool,
    /// The client connection may carry the next request (a refusal that
    /// left the framing intact: no route, rate limited, no body).
    pub keep_alive: bool,
    pub backend: Option<SocketAddr>,
}

impl From<Kind> for ProxyError {
    fn from(kind: Kind) -> Self {
        ProxyError {
            kind,
            retryable: false,
            keep_alive: false,
            backend: None,
        }
    }
}

impl From<HttpError> for Kind {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::Bad(w) => Kind::BadHead(w),
            HttpError::UriTooLong => Kind::UriTooLong,
            HttpError::HeadersTooLarge => Kind::HeadTooLarge,
            HttpError::MethodNotAllowed => Kind::MethodNotAllowed,
            HttpError::NotImplemented => Kind::NotImplemented,
        }
    }
}

impl ProxyError {
    pub fn at(mut self, backend: SocketAddr) -> Self {
        self.backend = Some(backend);
        self
    }

    pub fn keep_alive(mut self, keep: bool) -> Self {
        self.keep_alive = keep;
        self
    }

    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    pub fn side(&self) -> Side {
        use Kind::*;
        match self.kind {
            BadHead(_)
            | UriTooLong
            | HeadTooLarge
            | MethodNotAllowed
            | NotImplemented
            | HeadTimeout
            | NoRoute
            | Forbidden
            | RateLimited { .. }
            | BodyTooLarge
            | BodyTooSlow
            | BadBody(_)
            | ClientGone(_) => Side::Client,
            NoBackend | QueueFull | QueueTimeout => Side::Proxy,
            Connect(_)
            | BackendsFailed
            | SendFailed(_)
            | BackendStoppedReading(_)
            | NoResponse(_)
            | ResponseTimeout
            | BadResponse(_)
            | UnexpectedSwitch
            | Reset(_)
            | DeadlineExceeded => Side::Backend,
            GrpcNeedsH2 => Side::Proxy,
        }
    }

    /// The status ringlb answers with; `None`: nobody to answer, close.
    pub fn status(&self) -> Option<u16> {
        use Kind::*;
        Some(match self.kind {
            BadHead(_) | BadBody(_) => 400,
            NoRoute => 404,
            Forbidden => 403,
            MethodNotAllowed => 405,
            BodyTooSlow => 408,
            NotImplemented => 501,
            HeadTimeout => 408,
            BodyTooLarge => 413,
            UriTooLong => 414,
            RateLimited { .. } => 429,
            HeadTooLarge => 431,
            Connect(_)
            | BackendsFailed
            | SendFailed(_)
            | BackendStoppedReading(_)
            | NoResponse(_)
            | BadResponse(_)
            | UnexpectedSwitch
            | GrpcNeedsH2
            | Reset(_) => 502,
            NoBackend | QueueFull | QueueTimeout => 503,
            ResponseTimeout | DeadlineExceeded => 504,
            ClientGone(_) => return None,
        })
    }

    /// Seconds for a `Retry-After` field.
    pub fn retry_after(&self) -> Option<u64> {
        match self.kind {
            Kind::RateLimited { retry_after } => Some(retry_after),
            _ => None,
        }
    }

    /// The failure to report against the backend for passive ejection, if
    /// this one counts: a pooled connection the backend closed while we
    /// could still retry does not (keep-alive races are not the backend
    /// failing).
    pub fn health(&self) -> Option<&str> {
        use Kind::*;
        match &self.kind {
            Connect(why) => Some(why),
            ResponseTimeout => Some("response timeout"),
            BadResponse(why) => Some(why),
            NoResponse(_) if !self.retryable => Some("closed without a response"),
            // REFUSED_STREAM: the backend did no work (a full or stopping
            // server); NO_ERROR/CANCEL are not failures.
            Reset(r) if *r == h2::Reason::REFUSED_STREAM => Some("refused the stream"),
            Reset(r) if *r != h2::Reason::NO_ERROR && *r != h2::Reason::CANCEL => {
                Some("reset the stream")
            }
            _ => None,
        }
    }

    /// A short stable reason for logs.
    pub fn reason(&self) -> &'static str {
        use Kind::*;
        match self.kind {
            BadHead(_) => "bad_request_head",
            UriTooLong => "uri_too_long",
            HeadTooLarge => "head_too_large",
            MethodNotAllowed => "method_not_allowed",
            NotImplemented => "not_implemented",
            HeadTimeout => "head_timeout",
            NoRoute => "no_route",
            Forbidden => "forbidden",
            RateLimited { .. } => "rate_limited",
            BodyTooLarge => "body_too_large",
            BodyTooSlow => "body_too_slow",
            BadBody(_) => "bad_body",
            ClientGone(_) => "client_gone",
            NoBackend => "no_backend",
            QueueFull => "queue_full",
            QueueTimeout => "queue_timeout",
            Connect(_) => "connect_failed",
            BackendsFailed => "backends_failed",
            SendFailed(_) => "send_failed",
            BackendStoppedReading(_) => "backend_stopped_reading",
            NoResponse(_) => "no_response",
            ResponseTimeout => "response_timeout",
            BadResponse(_) => "bad_response",
            UnexpectedSwitch => "unexpected_switch",
            GrpcNeedsH2 => "grpc_needs_h2",
            Reset(_) => "backend_reset",
            DeadlineExceeded => "deadline_exceeded",
        }
    }
}

impl std::fmt::Display for ProxyError {
    /// What the log says (the texts the proxy logged before the error type
    /// existed).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use Kind::*;
        match &self.kind {
            BadHead(w) => write!(f, "request refused: {w}"),
            UriTooLong => f.write_str("request refused: request line too long"),
            HeadTooLarge => f.write_str("request refused: header section too large"),
            MethodNotAllowed => f.write_str("request refused: CONNECT is not served"),
            NotImplemented => f.write_str("request refused: a transfer coding other than chunked"),
            HeadTimeout => f.write_str("request refused: request head not received in time"),
            NoRoute => f.write_str("no route for the host and path"),
            Forbidden => f.write_str("the client address is not allowed here (allow/deny)"),
            RateLimited { retry_after } => write!(f, "rate limited (retry after {retry_after}s)"),
            BodyTooLarge => f.write_str("request body over max_body_size"),
            BodyTooSlow => f.write_str("request body slower than body_min_rate"),
            BadBody(w) => write!(f, "request body refused: {w}"),
            ClientGone(e) => write!(f, "the client went away: {e}"),
            NoBackend => f.write_str("no backend available"),
            QueueFull => f.write_str("every backend is full and the queue too"),
            QueueTimeout => f.write_str("no backend slot within queue_timeout"),
            Connect(w) => f.write_str(w),
            BackendsFailed => f.write_str("no backend answered"),
            SendFailed(e) => write!(f, "sending the request failed: {e}"),
            BackendStoppedReading(e) => write!(f, "backend stopped reading the body: {e}"),
            NoResponse(e) => write!(f, "backend closed without a response: {e}"),
            ResponseTimeout => f.write_str("no response within response_timeout"),
            BadResponse(w) => write!(f, "invalid response: {w}"),
            UnexpectedSwitch => f.write_str("101 to a request that asked for no upgrade"),
            GrpcNeedsH2 => f.write_str(
                "a gRPC call to an upstream that speaks HTTP/1.1 (set protocol = \"h2c\" or \"h2\")",
            ),
            Reset(r) => write!(f, "the backend reset the stream ({r:?})"),
            DeadlineExceeded => f.write_str("the call's grpc-timeout passed"),
        }
    }
}

/// gRPC status codes ringlb answers with (grpc/grpc doc/statuscodes.md).
pub mod grpc {
    pub const CANCELLED: u8 = 1;
    pub const INVALID_ARGUMENT: u8 = 3;
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
}

impl ProxyError {
    /// The gRPC status a call that failed this way gets (a Trailers-Only
    /// response), and the message sent with it; `None`: nobody to answer.
    pub fn grpc_status(&self) -> Option<(u8, &'static str)> {
        use grpc::*;
        use Kind::*;
        Some(match &self.kind {
            BadHead(_) | BadBody(_) | UriTooLong | HeadTooLarge | NotImplemented => {
                (INTERNAL, "ringlb: malformed request")
            }
            MethodNotAllowed => (UNIMPLEMENTED, "ringlb: method not allowed"),
            NoRoute => (UNIMPLEMENTED, "ringlb: no route"),
            Forbidden => (PERMISSION_DENIED, "ringlb: client address not allowed"),
            RateLimited { .. } => (RESOURCE_EXHAUSTED, "ringlb: rate limited"),
            BodyTooLarge => (RESOURCE_EXHAUSTED, "ringlb: request too large"),
            HeadTimeout | BodyTooSlow => (DEADLINE_EXCEEDED, "ringlb: request too slow"),
            NoBackend | QueueFull | QueueTimeout => (UNAVAILABLE, "ringlb: no backend available"),
            Connect(_) | BackendsFailed | SendFailed(_) | NoResponse(_) => {
                (UNAVAILABLE, "ringlb: backend unavailable")
            }
            BackendStoppedReading(_) | BadResponse(_) | UnexpectedSwitch => {
                (INTERNAL, "ringlb: invalid backend response")
            }
            GrpcNeedsH2 => (INTERNAL, "ringlb: the upstream does not speak HTTP/2"),
            Reset(r) if *r == h2::Reason::REFUSED_STREAM => {
                (UNAVAILABLE, "ringlb: the backend refused the stream")
            }
            Reset(r) if *r == h2::Reason::CANCEL => (CANCELLED, "ringlb: the backend cancelled"),
            Reset(r) if *r == h2::Reason::ENHANCE_YOUR_CALM => {
                (RESOURCE_EXHAUSTED, "ringlb: the backend is overloaded")
            }
            Reset(_) => (INTERNAL, "ringlb: the backend reset the stream"),
            ResponseTimeout | DeadlineExceeded => (DEADLINE_EXCEEDED, "ringlb: deadline exceeded"),
            ClientGone(_) => return None,
        })
    }
}

impl ProxyError {
    /// Worth a warning: the backend misbehaved (closed, too slow, invalid
    /// answer). Everything else is the client's doing or expected under
    /// load, and logs at debug.
    pub fn is_warning(&self) -> bool {
        matches!(
            self.kind,
            Kind::NoResponse(_) | Kind::ResponseTimeout | Kind::BadResponse(_)
        ) && !self.retryable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mapping_for_status_side_and_health() {
        let cases: [(Kind, Option<u16>, Side, bool); 9] = [
            (Kind::NoRoute, Some(404), Side::Client, false),
            (Kind::Forbidden, Some(403), Side::Client, false),
            (
                Kind::RateLimited { retry_after: 3 },
                Some(429),
                Side::Client,
                false,
            ),
            (
                Kind::ClientGone(io::ErrorKind::UnexpectedEof.into()),
                None,
                Side::Client,
                false,
            ),
            (Kind::NoBackend, Some(503), Side::Proxy, false),
            (Kind::QueueTimeout, Some(503), Side::Proxy, false),
            (Kind::ResponseTimeout, Some(504), Side::Backend, true),
            (Kind::BadResponse("x"), Some(502), Side::Backend, true),
            (Kind::BackendsFailed, Some(502), Side::Backend, false),
        ];
        for (kind, status, side, health) in cases {
            let e = ProxyError::from(kind);
            assert_eq!(e.status(), status, "{e}");
            assert_eq!(e.side(), side, "{e}");
            assert_eq!(e.health().is_some(), health, "{e}");
        }
        let e = ProxyError::from(Kind::RateLimited { retry_after: 3 });
        assert_eq!(e.retry_after(), Some(3));
        // A pooled connection closed under a retryable request is no failure.
        let gone = || Kind::NoResponse(io::ErrorKind::UnexpectedEof.into());
        assert_eq!(ProxyError::from(gone()).retryable(true).health(), None);
        assert!(ProxyError::from(gone()).health().is_some());
    }
}
