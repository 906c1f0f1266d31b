//! The SNI router (`mode = "tls"`): read the client's ClientHello without
//! terminating (rustls's `Acceptor` parses it: a hello split across TCP
//! segments or TLS records is joined, a malformed one refused), take its
//! server name, and either pass the TLS bytes through to an upstream (the
//! hello replayed first, then the tcp relay with its splice path) or hand
//! the connection, hello included, to a listener of this worker that
//! terminates it (http or tcp, with its certificates and settings). Exact
//! names first, then `*.parent`, then the `*` route, which also takes
//! clients that send no name.

use std::{collections::HashMap, io, net::SocketAddr, rc::Rc, time::Instant};

use rustls::server::Acceptor;

use super::{early, http, tcp, Handler};
use crate::{
    config::{acl::admits, ListenerConfig, SniTarget},
    io::{stream::Stream, tls},
    listen::ticket::ConnTicket,
    metrics::{TlsMetrics, TLS_HELLOS},
};

/// Most bytes of ClientHello read before giving up (post-quantum hellos
/// are ~1.8 KB; a hello may span several records).
pub const MAX_HELLO: usize = 16 * 1024;

/// Where a route sends a connection.
pub enum Target {
    /// Through to the route's upstream, untouched.
    Pass(Rc<tcp::TcpProxy>),
    /// To a listener that terminates the TLS.
    Hand(Handler),
}

/// One tls listener as one worker sees it.
pub struct SniRouter {
    pub cfg: ListenerConfig,
    exact: HashMap<String, usize, ahash::RandomState>,
    /// Keyed by the parent name ("example.com" for "*.example.com").
    wildcard: HashMap<String, usize, ahash::RandomState>,
    default: Option<usize>,
    targets: Vec<Target>,
    metrics: std::sync::Arc<crate::metrics::WorkerMetrics>,
    li: usize,
}

/// Why a hello did not route.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    NotTls,
    BadHello,
    TooLarge,
    Timeout,
    Io,
    NoRoute,
}

impl Refused {
    fn reason(&self) -> &'static str {
        match self {
            Refused::NotTls => "not_tls",
            Refused::BadHello => "bad_hello",
            Refused::TooLarge => "too_large",
            Refused::Timeout => "timeout",
            Refused::Io => "io",
            Refused::NoRoute => "no_route",
        }
    }
}

impl SniRouter {
    /// The router of listener `li` over `targets` (one per route, in order).
    pub fn new(
        cfg: &ListenerConfig,
        li: usize,
        targets: Vec<Target>,
        metrics: std::sync::Arc<crate::metrics::WorkerMetrics>,
    ) -> SniRouter {
        let mut exact = HashMap::default();
        let mut wildcard = HashMap::default();
        let mut default = None;
        for (i, r) in cfg.sni.iter().enumerate() {
            for n in &r.names {
                if n == "*" {
                    default = Some(i);
                } else if let Some(parent) = n.strip_prefix("*.") {
                    wildcard.insert(parent.to_string(), i);
                } else {
                    exact.insert(n.clone(), i);
                }
            }
        }
        SniRouter {
            cfg: cfg.clone(),
            exact,
            wildcard,
            default,
            targets,
            metrics,
            li,
        }
    }

    /// The route for a name (`None`: the client sent none).
    fn route(&self, name: Option<&str>) -> Option<usize> {
        let Some(name) = name else {
            return self.default;
        };
        if let Some(&i) = self.exact.get(name) {
            return Some(i);
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(&i) = self.wildcard.get(parent) {
                return Some(i);
            }
        }
        self.default
    }

    fn count(&self, result: &str) {
        let m: &TlsMetrics = &self.metrics.listeners[self.li].tls;
        if let Some(i) = TLS_HELLOS.iter().position(|n| *n == result) {
            m.hellos[i].inc();
        }
    }
}

/// Read bytes into `buf` until the ClientHello in it is complete; return
/// its server name (lower case).
async fn read_hello(
    client: &Stream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<Option<String>, Refused> {
    let Some(sock) = client.as_plain() else {
        return Err(Refused::Io);
    };
    let mut acceptor = Acceptor::default();
    let mut fed = 0;
    loop {
        if let Some(&first) = buf.first() {
            if first != 0x16 {
                return Err(Refused::NotTls);
            }
        }
        while fed < buf.len() {
            match acceptor.read_tls(&mut &buf[fed..]) {
                Ok(0) => break,
                Ok(n) => fed += n,
                Err(_) => return Err(Refused::BadHello),
            }
        }
        if fed > 0 {
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let hello = accepted.client_hello();
                    // Lower case, a trailing dot dropped (as the
                    // certificate resolver does).
                    return Ok(hello
                        .server_name()
                        .map(|n| n.trim_end_matches('.').to_ascii_lowercase()));
                }
                Ok(None) => {}
                Err(_) => return Err(Refused::BadHello),
            }
        }
        if buf.len() >= MAX_HELLO {
            return Err(Refused::TooLarge);
        }
        // Grown a read at a time: most hellos fit the first 4 KiB.
        let at = buf.len();
        buf.resize((at + 4096).min(MAX_HELLO), 0);
        let got = crate::sys::recv(client.fd(), &mut buf[at..]);
        match got {
            Ok(0) => {
                buf.truncate(at);
                return Err(Refused::Io);
            }
            Ok(n) => buf.truncate(at + n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                buf.truncate(at);
                match tls::wait(sock, true, deadline).await {
                    Ok(()) => {}
                    Err(tls::HandshakeError::TimedOut) => return Err(Refused::Timeout),
                    Err(_) => return Err(Refused::Io),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(at),
            Err(_) => {
                buf.truncate(at);
                return Err(Refused::Io);
            }
        }
    }
}

/// Serve one accepted client connection: route it by its hello.
pub async fn handle(
    r: Rc<SniRouter>,
    client: std::net::TcpStream,
    peer: SocketAddr,
    ticket: Box<ConnTicket>,
) {
    let Some(client) = tcp::register(&r.cfg.name, client, peer) else {
        return;
    };
    let Some(mut early) = early::read(&client, &r.cfg, peer).await else {
        return;
    };
    let src = early.origin.map_or(peer, |(s, _)| s);
    if !admits(&r.cfg.access, src.ip()) {
        r.metrics.listeners[r.li].denied.inc();
        tracing::debug!(listener = %r.cfg.name, %src, "denied by allow/deny; closing");
        return;
    }
    let deadline = Instant::now() + r.cfg.hello_timeout;
    let routed = match read_hello(&client, &mut early.bytes, deadline).await {
        Ok(name) => match r.route(name.as_deref()) {
            Some(i) => Ok((i, name)),
            None => Err((Refused::NoRoute, name)),
        },
        Err(why) => Err((why, None)),
    };
    let (i, name) = match routed {
        Ok(x) => x,
        Err((why, name)) => {
            tracing::debug!(listener = %r.cfg.name, %src, sni = ?name, reason = why.reason(), "tls connection not routed");
            r.count(why.reason());
            return;
        }
    };
    tracing::debug!(listener = %r.cfg.name, %src, sni = ?name, route = i, "tls connection routed");
    let key = name
        .as_deref()
        .map_or(0, |n| crate::balancer::hash_key(n.as_bytes()));
    match &r.targets[i] {
        // Passthrough, or a tcp listener that terminates: the same relay.
        target @ (Target::Pass(t) | Target::Hand(Handler::Tcp(t))) => {
            r.count(if matches!(target, Target::Pass(_)) {
                "passed"
            } else {
                "handed"
            });
            let given = tcp::Given(early, key, name.map(String::into_boxed_str));
            tcp::serve(Rc::clone(t), client, peer, ticket, given).await;
        }
        Target::Hand(Handler::Http(h)) => {
            r.count("handed");
            http::handed(Rc::clone(h), client, peer, ticket, early).await;
        }
        // Refused by the config: a router never targets a router.
        Target::Hand(Handler::Tls(_)) => r.count("no_route"),
    }
}

/// The targets of a router's routes: passthrough relays built from the
/// router's own settings, or the handlers of the listeners named.
pub fn targets(
    cfg: &ListenerConfig,
    li: usize,
    w: &super::WorkerParts<'_>,
    handlers: &[Option<Handler>],
) -> Result<Vec<Target>, String> {
    cfg.sni
        .iter()
        .map(|route| match route.target {
            SniTarget::Upstream(u) => {
                let up = w.upstreams.get(u).ok_or("sni route without upstream")?;
                Ok(Target::Pass(Rc::new(tcp::TcpProxy {
                    cfg: cfg.clone(),
                    upstream: Rc::clone(up),
                    pools: Rc::clone(w.pools),
                    metrics: std::sync::Arc::clone(w.metrics),
                    li,
                    access: w.access.clone(),
                    tls: None,
                })))
            }
            SniTarget::Listener(t) => handlers
                .get(t)
                .and_then(Option::clone)
                .map(Target::Hand)
                .ok_or_else(|| {
                    format!(
                        "sni route to listener {:?}, which is not built",
                        route.target_name
                    )
                }),
        })
        .collect()
}
