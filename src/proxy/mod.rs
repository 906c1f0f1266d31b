//! Protocol handlers for accepted connections: [`tcp`] (a byte relay) and
//! [`http`] (HTTP/1.1 reverse proxy). [`Handler`] is built per worker per
//! listener and holds the one `match` on a listener's protocol: a new
//! protocol is a new variant and a new room beside these.

pub mod early;
pub mod handshake;
pub mod http;
pub mod proxy_protocol;
pub mod sni;
pub mod tcp;
pub mod udp;

use std::{net::SocketAddr, os::fd::AsRawFd, rc::Rc, sync::Arc};

use self::{
    http::{HttpParts, HttpProxy},
    tcp::TcpProxy,
};
use crate::{
    config::{ListenerConfig, Mode},
    io::pools::Pools,
    limits::Limits,
    listen::ticket::ConnTicket,
    metrics::{access::AccessLog, WorkerMetrics},
    upstream::Replica,
};

/// What every handler of one worker is built from.
pub struct WorkerParts<'a> {
    pub worker: usize,
    /// The worker's replicas, by upstream index.
    pub upstreams: &'a [Rc<Replica>],
    pub pools: &'a Rc<Pools>,
    pub limits: &'a Limits,
    pub metrics: &'a Arc<WorkerMetrics>,
    pub access: &'a Option<AccessLog>,
}

/// A listener as one worker serves it: its config and the port its
/// sockets are bound to.
pub struct Bound<'a> {
    pub li: usize,
    pub cfg: &'a ListenerConfig,
    pub port: u16,
    /// The listener terminates TLS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// What serves a listener's connections on one worker.
#[derive(Clone)]
pub enum Handler {
    Tcp(Rc<TcpProxy>),
    Http(Rc<HttpProxy>),
    Tls(Rc<sni::SniRouter>),
}

impl Handler {
    /// The handler for listener `li`.
    ///
    /// # Errors
    /// A listener the validated config should not allow (no upstream, a
    /// repeated route); the listener is then left out, with this message.
    pub fn build(b: Bound<'_>, w: &WorkerParts<'_>) -> Result<Handler, String> {
        let Bound { li, cfg, port, tls } = b;
        Ok(match cfg.mode {
            Mode::Tls => return Err("a tls listener is built by build_router".into()),
            Mode::Udp => return Err("a udp listener is served by proxy::udp".into()),
            Mode::Tcp => {
                let up = cfg
                    .upstream
                    .and_then(|u| w.upstreams.get(u))
                    .ok_or("tcp listener without upstream")?;
                Handler::Tcp(Rc::new(TcpProxy {
                    cfg: cfg.clone(),
                    upstream: Rc::clone(up),
                    pools: Rc::clone(w.pools),
                    metrics: Arc::clone(w.metrics),
                    li,
                    access: w.access.clone(),
                    tls,
                }))
            }
            Mode::Http => Handler::Http(Rc::new(HttpProxy::new(
                cfg,
                HttpParts {
                    upstreams: w.upstreams.to_vec(),
                    pools: Rc::clone(w.pools),
                    worker: w.worker,
                    rate_limits: w.limits.rate.get(li).cloned().unwrap_or_default(),
                    metrics: Arc::clone(w.metrics),
                    li,
                    access: w.access.clone(),
                    port,
                    tls,
                },
            )?)),
        })
    }

    /// The SNI router of listener `b`, over the handlers already built for
    /// the other listeners (`handlers`, by listener index).
    ///
    /// # Errors
    /// A route whose target listener was not built.
    pub fn build_router(
        b: Bound<'_>,
        w: &WorkerParts<'_>,
        handlers: &[Option<Handler>],
    ) -> Result<Handler, String> {
        let targets = sni::targets(b.cfg, b.li, w, handlers)?;
        Ok(Handler::Tls(Rc::new(sni::SniRouter::new(
            b.cfg,
            b.li,
            targets,
            Arc::clone(w.metrics),
        ))))
    }

    /// Serve an admitted connection on its own task.
    pub fn serve(&self, stream: std::net::TcpStream, peer: SocketAddr, ticket: Box<ConnTicket>) {
        match self {
            Handler::Tcp(l) => {
                // Registered here, so the task is the relay's own future
                // (one level less of task state per connection).
                if let Some(client) = tcp::register(&l.cfg.name, stream, peer) {
                    monoio::spawn(tcp::serve(
                        Rc::clone(l),
                        client,
                        peer,
                        ticket,
                        tcp::ReadEarly,
                    ));
                }
            }
            Handler::Http(l) => {
                monoio::spawn(http::handle(Rc::clone(l), stream, peer, ticket));
            }
            Handler::Tls(r) => {
                monoio::spawn(sni::handle(Rc::clone(r), stream, peer, ticket));
            }
        }
    }

    /// A client over `max_connections_per_ip`: tcp is closed at once, http
    /// gets a 429 JSON answer first (one nonblocking send; it fits any
    /// socket buffer).
    pub fn refuse(&self, stream: &std::net::TcpStream, peer: SocketAddr) {
        tracing::debug!(%peer, "over max_connections_per_ip; refused");
        if let Handler::Http(l) = self {
            let _ = crate::sys::send(stream.as_raw_fd(), &l.refusal());
        }
    }
}
