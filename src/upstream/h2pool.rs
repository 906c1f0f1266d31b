//! HTTP/2 connections to one upstream's backends, per worker: each
//! carries many streams at once, up to the backend's
//! SETTINGS_MAX_CONCURRENT_STREAMS; a full one makes another open. The
//! backend is picked per request (per stream), so one client connection's
//! calls spread over every backend.
//!
//! Each connection's frames are driven by a task of its own; a request
//! holds a [`Lease`] on the connection while its stream is open. A
//! connection the backend sent GOAWAY on (or that failed) takes no new
//! streams; the streams the backend accepted on it carry on.

use std::{
    cell::Cell,
    rc::Rc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2::client::SendRequest;

use crate::{
    backends::BackendId,
    io::{connect::ConnectError, h2io::H2Io, stream::Stream},
};

/// The stream windows ringlb asks backends for: large enough for bulk
/// responses (the client side's window bounds what is held per stream).
const STREAM_WINDOW: u32 = 1 << 20;
const CONN_WINDOW: u32 = 16 << 20;
/// Response heads larger than this are refused by h2 (a 502).
const MAX_RESPONSE_HEADERS: u32 = 64 << 10;

/// What the driver task and the requests know of one connection.
#[derive(Debug)]
pub struct ConnState {
    /// Closed, failed, or GOAWAY received: no new streams.
    pub closed: Cell<bool>,
    active: Cell<usize>,
    idle_since: Cell<Instant>,
}

/// One stream's hold on its connection.
pub struct Lease {
    state: Rc<ConnState>,
}

impl Lease {
    /// The backend said GOAWAY (or the connection failed): no new streams.
    pub fn close(&self) {
        self.state.closed.set(true);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let n = self.state.active.get().saturating_sub(1);
        self.state.active.set(n);
        if n == 0 {
            self.state.idle_since.set(Instant::now());
        }
    }
}

struct Conn {
    backend: BackendId,
    send: SendRequest<Bytes>,
    state: Rc<ConnState>,
}

/// The connections of one replica.
#[derive(Default)]
pub struct H2Pool {
    conns: Vec<Conn>,
}

impl H2Pool {
    /// A connection to `backend` with room for one more stream.
    pub fn take(&mut self, backend: BackendId) -> Option<(SendRequest<Bytes>, Lease)> {
        self.conns.retain(|c| !c.state.closed.get());
        let c = self.conns.iter().find(|c| {
            c.backend == backend && c.state.active.get() < c.send.current_max_send_streams()
        })?;
        c.state.active.set(c.state.active.get() + 1);
        Some((
            c.send.clone(),
            Lease {
                state: Rc::clone(&c.state),
            },
        ))
    }

    /// Keep a new connection (its first stream's lease is returned).
    pub fn add(
        &mut self,
        backend: BackendId,
        send: SendRequest<Bytes>,
        state: Rc<ConnState>,
    ) -> Lease {
        state.active.set(state.active.get() + 1);
        self.conns.push(Conn {
            backend,
            send,
            state: Rc::clone(&state),
        });
        Lease { state }
    }

    /// Drop connections that closed, that belong to a backend that left
    /// (`keep` says no), or that carried no stream for `idle`.
    pub fn sweep(&mut self, idle: Duration, keep: impl Fn(BackendId) -> bool) {
        self.conns.retain(|c| {
            let s = &c.state;
            !s.closed.get()
                && keep(c.backend)
                && (s.active.get() > 0 || s.idle_since.get().elapsed() < idle)
        });
    }

    pub fn clear(&mut self) {
        self.conns.clear();
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

/// Start HTTP/2 on a connected stream (TLS: ALPN must have agreed on h2):
/// the connection's driver runs as a task of this worker until the backend
/// or ringlb ends it.
///
/// # Errors
/// The backend did not agree to h2, or the preface could not be sent.
pub async fn handshake(
    stream: Stream,
    addr: std::net::SocketAddr,
) -> Result<(SendRequest<Bytes>, Rc<ConnState>), ConnectError> {
    if let Some(t) = stream.as_tls() {
        if !t.alpn_is(b"h2") {
            return Err(ConnectError::H2(
                addr,
                "the backend did not agree to h2 (ALPN)".into(),
            ));
        }
    }
    let io = H2Io::new(stream, Bytes::new());
    let (send, conn) = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_header_list_size(MAX_RESPONSE_HEADERS)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| ConnectError::H2(addr, e.to_string()))?;
    let state = Rc::new(ConnState {
        closed: Cell::new(false),
        active: Cell::new(0),
        idle_since: Cell::new(Instant::now()),
    });
    let st = Rc::clone(&state);
    monoio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(backend = %addr, "h2 connection to the backend ended: {e}");
        }
        st.closed.set(true);
    });
    Ok((send, state))
}
