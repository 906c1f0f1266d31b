//! tcp proxying: [PROXY header in] -> pick -> connect (next backend on
//! failure) -> [PROXY header out] -> relay both ways -> close.

use std::{net::SocketAddr, rc::Rc, sync::Arc, time::Duration};

use super::{early, handshake, proxy_protocol};
use crate::{
    backends::BackendId,
    balancer::{hash_ip, Algorithm},
    config::{acl::admits, HashKey, ListenerConfig, ProxySend},
    io::{
        pools::Pools,
        relay::{self, Counts, RelayEnd},
        stream::Stream,
    },
    listen::ticket::ConnTicket,
    metrics::{
        access::{self, AccessLog},
        WorkerMetrics,
    },
    upstream::{connect::timed_connect, InFlight, Replica},
};

/// A tcp listener as one worker sees it.
pub struct TcpProxy {
    pub cfg: ListenerConfig,
    /// The worker's replica of the listener's upstream (shared with every
    /// other listener of the worker that uses it).
    pub upstream: Rc<Replica>,
    pub pools: Rc<Pools>,
    pub metrics: Arc<WorkerMetrics>,
    /// The listener's index in the config (and in the metrics).
    pub li: usize,
    pub access: Option<AccessLog>,
    /// TLS termination: the client's TLS ends here, plain bytes go on.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl TcpProxy {
    /// Where this listener's handshakes happen (log and counters).
    fn tls_site(&self, peer: SocketAddr) -> handshake::Site<'_> {
        handshake::Site {
            listener: &self.cfg.name,
            peer,
            metrics: &self.metrics.listeners[self.li].tls,
            timeout: self
                .cfg
                .tls
                .as_ref()
                .map_or(Duration::from_secs(10), |t| t.handshake_timeout),
            http: false,
        }
    }
}

/// Where a connection's PROXY header and first bytes come from: read from
/// the socket (a connection this listener accepted), or already read (a
/// connection an SNI router hands over). A type, not a branch: each kind
/// gets its own future, and the accepted kind's stays as small as before.
#[allow(async_fn_in_trait)]
pub trait Prelude {
    /// The PROXY addresses and first bytes (taken: a second call gets none).
    async fn early(
        &mut self,
        l: &TcpProxy,
        client: &Stream,
        peer: SocketAddr,
    ) -> Option<early::Early>;

    /// The hash key the bytes read gave (an SNI router's server name; 0:
    /// none). Asked for after [`Prelude::early`], when the key is needed,
    /// so nothing of it is held across the waits in between.
    fn key(&self) -> u64 {
        0
    }

    /// The server name an SNI router read (for the access log).
    fn sni(&self) -> Option<&str> {
        None
    }
}

/// Read the PROXY header (when expected) from the socket.
pub struct ReadEarly;

impl Prelude for ReadEarly {
    async fn early(
        &mut self,
        l: &TcpProxy,
        client: &Stream,
        peer: SocketAddr,
    ) -> Option<early::Early> {
        early::read(client, &l.cfg, peer).await
    }
}

/// Already read by whoever accepted the connection (an SNI router: with
/// the hash of the server name the hello asked for).
pub struct Given(pub early::Early, pub u64, pub Option<Box<str>>);

impl Prelude for Given {
    async fn early(&mut self, _: &TcpProxy, _: &Stream, _: SocketAddr) -> Option<early::Early> {
        Some(std::mem::take(&mut self.0))
    }

    fn key(&self) -> u64 {
        self.1
    }

    fn sni(&self) -> Option<&str> {
        self.2.as_deref()
    }
}

/// Register an accepted client socket with this worker's runtime.
///
/// # Errors
/// The runtime cannot register it (logged here).
pub fn register(listener: &str, client: std::net::TcpStream, peer: SocketAddr) -> Option<Stream> {
    match Stream::from_std(client) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(%listener, %peer, "cannot register client socket: {e}");
            None
        }
    }
}

/// Serve a registered client connection to the end.
pub async fn serve(
    l: Rc<TcpProxy>,
    client: Stream,
    peer: SocketAddr,
    _ticket: Box<ConnTicket>,
    mut prelude: impl Prelude,
) {
    // The client's real address: from the PROXY header when a front balancer sends one.
    let Some(early::Early {
        origin,
        bytes: mut early,
    }) = prelude.early(&l, &client, peer).await
    else {
        return;
    };
    let src = origin.map_or(peer, |(s, _)| s);
    if !admits(&l.cfg.access, src.ip()) {
        l.metrics.listeners[l.li].denied.inc();
        tracing::debug!(listener = %l.cfg.name, %src, "denied by allow/deny; closing");
        let now = std::time::Instant::now();
        log_tcp(&l, (&client, &prelude), src, None, (0, 0), now, "denied");
        return;
    }
    let client = match &l.tls {
        // Boxed: its state would grow every plain connection's task.
        Some(tls) => match handshake::terminate(&client, &mut early, tls, l.tls_site(src)).await {
            Some(conn) => client.into_tls(conn),
            None => return,
        },
        None => client,
    };

    let up = &l.upstream;
    let key = match (up.cfg.balance, &up.cfg.hash_key) {
        (Algorithm::ConsistentHash, HashKey::ClientIp) => hash_ip(src.ip()),
        (Algorithm::ConsistentHash, HashKey::Sni) if prelude.key() != 0 => prelude.key(),
        _ => 0,
    };

    let started = std::time::Instant::now();
    let Some((backend, inflight)) = connect_any(&l, key, src).await else {
        log_tcp(
            &l,
            (&client, &prelude),
            src,
            None,
            (0, 0),
            started,
            "no_backend",
        );
        return;
    };
    let addr = inflight.backend().addr;

    if l.cfg.proxy_protocol != ProxySend::Off {
        let dst = match origin {
            Some((_, d)) => Some(d),
            None => client.local_addr().ok(),
        };
        if let Some(h) = dst.and_then(|d| proxy_protocol::encode(l.cfg.proxy_protocol, src, d)) {
            early.splice(0..0, h);
        }
    }
    if !early.is_empty() {
        if let Err(e) = relay::write_all(&backend, &early).await {
            tracing::debug!(listener = %l.cfg.name, %src, "backend write failed: {e}");
            return;
        }
    }
    // Sent: not kept for the connection's life (a hello buffer is KiBs).
    drop(early);

    let counts = Counts::default();
    let end = relay::relay(
        &client,
        &backend,
        &l.pools,
        l.cfg.transfer,
        l.cfg.idle_timeout,
        &counts,
    )
    .await;
    let (up, down) = (counts.up.get(), counts.down.get());
    let lm = &l.metrics.listeners[l.li];
    lm.bytes_in.add(up);
    lm.bytes_out.add(down);
    let how = match &end {
        RelayEnd::Closed => "closed",
        RelayEnd::Idle => "idle",
        RelayEnd::Error(_) => "error",
    };
    log_tcp(
        &l,
        (&client, &prelude),
        src,
        Some(addr),
        (up, down),
        started,
        how,
    );
    match end {
        RelayEnd::Closed => {
            tracing::debug!(listener = %l.cfg.name, %src, backend = %addr, up, down, "closed")
        }
        RelayEnd::Idle => {
            tracing::debug!(listener = %l.cfg.name, %src, backend = %addr, up, down, "idle timeout")
        }
        RelayEnd::Error(e) => {
            tracing::debug!(listener = %l.cfg.name, %src, backend = %addr, up, down, "ended: {e}")
        }
    }
    drop(inflight);
}

/// Try available backends in balancer order, at most `connect_tries`
/// distinct ones. The returned guard counts toward the backend's
/// max_connections and the replica's live count for the connection's life.
async fn connect_any(l: &TcpProxy, key: u64, src: SocketAddr) -> Option<(Stream, InFlight<'_>)> {
    let up = &*l.upstream;
    let mut tried: Vec<BackendId> = Vec::new();
    for _ in 0..l.cfg.connect_tries {
        let picked = match up.pick(key, &tried) {
            Ok(p) => p,
            Err(_) if tried.is_empty() => {
                tracing::warn!(listener = %l.cfg.name, %src, "no backend available; closing client");
                return None;
            }
            Err(_) => break,
        };
        let b = std::sync::Arc::clone(picked.backend());
        tried.push(b.id);
        match timed_connect(
            b.addr,
            l.cfg.connect_timeout,
            &l.metrics,
            up.ui,
            up.tls.as_deref(),
        )
        .await
        {
            Ok(s) => {
                b.count_request();
                up.upstream.report_success(&b);
                return Some((s, up.open(picked)));
            }
            Err(e) => {
                l.metrics.listeners[l.li].retries.inc();
                // Out of fds or ports here is not the backend's fault.
                if !e.is_local() {
                    up.upstream.report_failure(&b, &e.to_string());
                }
                tracing::warn!(listener = %l.cfg.name, %src, "{e}; trying next backend");
            }
        }
    }
    tracing::warn!(listener = %l.cfg.name, %src, tries = tried.len(), "no backend answered; closing client");
    None
}

/// One access-log line per TCP connection.
fn log_tcp(
    l: &TcpProxy,
    (stream, prelude): (&Stream, &impl Prelude),
    client: SocketAddr,
    backend: Option<SocketAddr>,
    (bytes_in, bytes_out): (u64, u64),
    started: std::time::Instant,
    end: &str,
) {
    if let Some(a) = &l.access {
        // Asked for only now: nothing of it is held while bytes move.
        let info = stream.as_tls().map(|t| t.info());
        let sni = info
            .as_ref()
            .and_then(|i| i.sni.as_deref())
            .or_else(|| prelude.sni());
        a.send(access::tcp_line(
            a.format,
            &access::TcpEntry {
                listener: &l.cfg.name,
                client,
                backend,
                bytes_in,
                bytes_out,
                duration: started.elapsed(),
                end,
                sni,
                tls: info.as_ref().map(|i| i.version),
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    /// The per-connection task is the only user-space memory an idle proxied
    /// connection holds (no pipe, no buffer): keep its state machine small.
    #[test]
    fn connection_task_state_is_small() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let cfg = crate::Config::parse(
                "[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n[upstream.u]\nservers = [{ addr = \"127.0.0.1:1\" }]\n",
            )
            .unwrap();
            let pools = std::rc::Rc::new(super::Pools::new(1, 0));
            let up = crate::backends::Upstream::new(&cfg.upstreams[0]);
            let l = std::rc::Rc::new(super::TcpProxy {
                cfg: cfg.listeners[0].clone(),
                upstream: std::rc::Rc::new(crate::upstream::Replica::new(&cfg.upstreams[0], up, 0, 0)),
                pools,
                metrics: crate::metrics::WorkerMetrics::new(&cfg),
                li: 0,
                access: None,
                tls: None,
            });
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let limiter = crate::listen::limiter::Limiter::new(1);
            let permit = limiter.try_acquire().unwrap();
            let drain = crate::listen::drain::Drain::new();
            let ticket = crate::listen::ticket::ConnTicket::new(
                permit,
                drain.track(),
                None,
                crate::metrics::WorkerMetrics::new(&cfg),
                0,
            );
            let client = super::register("l", client, "127.0.0.1:9".parse().unwrap()).unwrap();
            let fut = super::serve(l, client, "127.0.0.1:9".parse().unwrap(), ticket, super::ReadEarly);
            let size = std::mem::size_of_val(&fut);
            eprintln!("connection task state: {size} bytes");
            // 2,304 bytes in debug and release builds before the re-homing
            // (nginx holds ~9.6 KB per connection); a nested helper future in
            // the relay shows up here (+128 B each). TLS termination in the
            // same handler took one such step (the boxed handshake's pointer
            // and what is live beside it: 2,432), whatever the layout of
            // the TLS step tried (by value, boxed, in place). The idle,
            // read and connect timeouts on `io::timer` (24 bytes, not
            // monoio's 640-byte, 128-byte-aligned Sleep) took it to 1,760,
            // with 8-byte alignment. It must not grow again.
            assert!(size <= 1760, "connection future is {size} bytes");
            assert!(std::mem::align_of_val(&fut) <= 16, "128-byte alignment is back");
        });
    }
}
