//! One client connection's state: the socket, its buffers, the request
//! and response being handled, and what the phases, the forward step and
//! the log share about them. A leaf of `http`: the steps import it, it
//! imports none of them.

use std::{net::SocketAddr, time::Duration};

use super::{
    h1::codec::{Request, Response},
    HttpProxy,
};
use crate::{
    io::{rbuf::RBuf, stream::Stream},
    listen::ticket::ConnTicket,
};

/// What happens to the client connection after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    KeepAlive,
    Close,
}

/// One client connection.
pub(super) struct Conn<'a> {
    pub l: &'a HttpProxy,
    pub client: Stream,
    pub peer: SocketAddr,
    pub ip: String,
    /// The client address's octets (rate-limit key), computed once.
    pub ip_key: ([u8; 16], usize),
    /// Bytes from the client not yet handled (pipelined requests stay here).
    pub from_client: RBuf,
    /// Bytes from the current backend not yet handled.
    pub from_backend: RBuf,
    /// The request head for the backend (plus a small body).
    pub request_head: Vec<u8>,
    /// The response head for the client.
    pub response_head: Vec<u8>,
    pub req: Request,
    pub resp: Response,
    /// The request's host, lower case, without port (routing key).
    pub host: String,
    /// The normalized path and query, when normalizing changed it.
    pub path: Vec<u8>,
    pub path_normalized: bool,
    pub id: String,
    pub ticket: &'a ConnTicket,
    pub served: u64,
    /// The current request's route (`routes.len()` = none), for metrics.
    pub route_idx: usize,
    /// Bytes sent to the client for the current request.
    pub bytes_out: u64,
    /// Request fields kept for the access log (only filled when it is on).
    pub lf: LogFields,
    /// The connection comes from a `trusted_proxies` address: its
    /// forwarding fields are passed on.
    pub trusted: bool,
    /// The port the client connected to.
    pub local_port: u16,
    /// TLS listeners: what the handshake agreed (for the access log).
    pub tls: Option<crate::io::tls::TlsInfo>,
    /// `tls.headers`: the request lines saying so, made once.
    pub tls_lines: Vec<u8>,
}

impl Conn<'_> {
    /// The write deadline for anything sent to the client or the backend.
    pub(super) fn write_timeout(&self) -> Duration {
        self.l.http.body_timeout
    }
}

/// Request fields kept for the access log (only filled when it is on).
#[derive(Default)]
pub(super) struct LogFields {
    pub method: String,
    pub path: String,
    pub user_agent: String,
    pub referer: String,
    pub minor: u8,
}
