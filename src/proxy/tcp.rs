//! L4 (TCP) proxying: [PROXY header in] -> pick -> connect (next backend on
//! failure) -> [PROXY header out] -> relay both ways -> close.

use std::{cell::RefCell, io, net::SocketAddr, rc::Rc, sync::Arc};

use monoio::net::TcpStream;

use super::proxy_protocol::{self, MAX_HEADER};
use crate::{
    backends::{self, Slot, UpstreamState},
    balancer::{hash_ip, Algorithm, Balancer},
    config::{HashKey, ListenerConfig, ProxyAccept, ProxySend, UpstreamConfig},
    io::{
        pools::Pools,
        relay::{self, Counts, RelayEnd},
    },
    listen::ticket::ConnTicket,
    metrics::{
        access::{self, AccessLog},
        WorkerMetrics,
    },
};

/// One listener as one worker sees it: its config and its own balancer replica.
pub struct L4Listener {
    pub cfg: ListenerConfig,
    pub servers: Vec<SocketAddr>,
    pub hash_key: HashKey,
    pub balancer: RefCell<Balancer>,
    pub pools: Rc<Pools>,
    /// Process-wide health, circuit and connection counts of the upstream.
    pub state: Arc<UpstreamState>,
    pub obs: L4Obs,
}

/// Where an L4 listener reports: its metrics shard and the access log.
pub struct L4Obs {
    pub metrics: Arc<WorkerMetrics>,
    /// Listener and upstream indices in the config (and the metrics).
    pub li: usize,
    pub ui: usize,
    pub access: Option<AccessLog>,
}

impl L4Listener {
    pub fn new(
        cfg: &ListenerConfig,
        up: &UpstreamConfig,
        worker: usize,
        pools: Rc<Pools>,
        state: Arc<UpstreamState>,
        obs: L4Obs,
    ) -> Self {
        L4Listener {
            cfg: cfg.clone(),
            servers: up.servers.iter().map(|s| s.addr).collect(),
            hash_key: up.hash_key.clone(),
            balancer: RefCell::new(crate::upstream::replica::balancer_for(up, worker)),
            pools,
            state,
            obs,
        }
    }
}

/// Decrements the balancer's live count for the chosen backend on every exit path.
struct Picked<'a> {
    l: &'a L4Listener,
    idx: usize,
}

impl Drop for Picked<'_> {
    fn drop(&mut self) {
        self.l.balancer.borrow_mut().connection_closed(self.idx);
    }
}

/// Serve one accepted client connection to the end.
pub async fn handle(
    l: Rc<L4Listener>,
    client: std::net::TcpStream,
    peer: SocketAddr,
    _ticket: Box<ConnTicket>,
) {
    let client = match TcpStream::from_std(client) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(listener = %l.cfg.name, %peer, "cannot register client socket: {e}");
            return;
        }
    };

    // The client's real address: from the PROXY header when a front balancer sends one.
    let Some((origin, mut early)) = accept_proxy_header(&client, &l.cfg, peer).await else {
        return;
    };
    let src = origin.map_or(peer, |(s, _)| s);

    let key = match (l.balancer.borrow().algorithm(), &l.hash_key) {
        (Algorithm::ConsistentHash, HashKey::ClientIp) => hash_ip(src.ip()),
        _ => 0,
    };

    let started = std::time::Instant::now();
    let Some((backend, idx, _slot)) = connect_any(&l, key, src).await else {
        log_tcp(&l, src, None, 0, 0, started, "no_backend");
        return;
    };
    l.balancer.borrow_mut().connection_opened(idx);
    let _picked = Picked { l: &l, idx };

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
    let lm = &l.obs.metrics.listeners[l.obs.li];
    lm.bytes_in.add(up);
    lm.bytes_out.add(down);
    let how = match &end {
        RelayEnd::Closed => "closed",
        RelayEnd::Idle => "idle",
        RelayEnd::Error(_) => "error",
    };
    log_tcp(&l, src, Some(l.servers[idx]), up, down, started, how);
    match end {
        RelayEnd::Closed => {
            tracing::debug!(listener = %l.cfg.name, %src, backend = %l.servers[idx], up, down, "closed")
        }
        RelayEnd::Idle => {
            tracing::debug!(listener = %l.cfg.name, %src, backend = %l.servers[idx], up, down, "idle timeout")
        }
        RelayEnd::Error(e) => {
            tracing::debug!(listener = %l.cfg.name, %src, backend = %l.servers[idx], up, down, "ended: {e}")
        }
    }
}

/// Try available backends in balancer order, at most `connect_tries`
/// distinct ones. The slot counts toward the backend's max_connections for
/// the connection's life.
async fn connect_any(
    l: &L4Listener,
    key: u64,
    src: SocketAddr,
) -> Option<(TcpStream, usize, Slot)> {
    let mut tried: Vec<usize> = Vec::new();
    for _ in 0..l.cfg.connect_tries {
        let (idx, slot) = match backends::pick(&mut l.balancer.borrow_mut(), &l.state, key, &tried)
        {
            Ok(p) => p,
            Err(_) if tried.is_empty() => {
                tracing::warn!(listener = %l.cfg.name, %src, "no backend available; closing client");
                return None;
            }
            Err(_) => break,
        };
        tried.push(idx);
        let addr = l.servers[idx];
        let t = std::time::Instant::now();
        let um = &l.obs.metrics.upstreams[l.obs.ui];
        match crate::io::connect::connect(addr, l.cfg.connect_timeout).await {
            Ok(s) => {
                um.connect.record(t.elapsed());
                um.backends[idx].requests.inc();
                l.state.report_success(idx);
                return Some((s, idx, slot));
            }
            Err(e) => {
                l.obs.metrics.listeners[l.obs.li].retries.inc();
                l.state.report_failure(idx, &e.to_string());
                tracing::warn!(listener = %l.cfg.name, %src, "{e}; trying next backend");
            }
        }
    }
    tracing::warn!(listener = %l.cfg.name, %src, tries = tried.len(), "no backend answered; closing client");
    None
}

/// One access-log line per TCP connection.
fn log_tcp(
    l: &L4Listener,
    client: SocketAddr,
    backend: Option<SocketAddr>,
    bytes_in: u64,
    bytes_out: u64,
    started: std::time::Instant,
    end: &str,
) {
    if let Some(a) = &l.obs.access {
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
            },
        ));
    }
}

/// When the listener expects a PROXY header: read it (within the
/// listener's deadline) and return the addresses it carries and the bytes
/// that followed it. `None`: refused or late (logged); close the client.
pub(crate) async fn accept_proxy_header(
    client: &TcpStream,
    cfg: &ListenerConfig,
    peer: SocketAddr,
) -> Option<(Option<(SocketAddr, SocketAddr)>, Vec<u8>)> {
    if cfg.accept_proxy_protocol == ProxyAccept::Off {
        return Some((None, Vec::new()));
    }
    let read = read_proxy_header(client, cfg.accept_proxy_protocol);
    match monoio::time::timeout(cfg.proxy_protocol_timeout, read).await {
        Ok(Ok(found)) => Some(found),
        Ok(Err(e)) => {
            tracing::debug!(listener = %cfg.name, %peer, "PROXY header refused: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(listener = %cfg.name, %peer, "no PROXY header within {:?}", cfg.proxy_protocol_timeout);
            None
        }
    }
}

/// Read a PROXY header; return the addresses it carries and any bytes that
/// followed it in the same read.
async fn read_proxy_header(
    client: &TcpStream,
    accept: ProxyAccept,
) -> io::Result<(Option<(SocketAddr, SocketAddr)>, Vec<u8>)> {
    let mut buf = vec![0u8; MAX_HEADER];
    let mut len = 0;
    loop {
        let n = relay::read_some(client, &mut buf[len..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the PROXY header ended",
            ));
        }
        len += n;
        match proxy_protocol::parse(&buf[..len], accept) {
            Ok(Some(p)) => {
                let rest = buf[p.len..len].to_vec();
                return Ok((p.addrs, rest));
            }
            Ok(None) if len < buf.len() => continue,
            Ok(None) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    proxy_protocol::HeaderError::TooLong,
                ))
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
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
            let l = std::rc::Rc::new(super::L4Listener::new(
                &cfg.listeners[0],
                &cfg.upstreams[0],
                0,
                pools,
                crate::backends::UpstreamState::new(&cfg.upstreams[0]),
                super::L4Obs {
                    metrics: crate::metrics::WorkerMetrics::new(&cfg),
                    li: 0,
                    ui: 0,
                    access: None,
                },
            ));
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let limiter = crate::listen::limiter::Limiter::new(1, 1);
            let permit = limiter.try_acquire().unwrap();
            let drain = crate::listen::drain::Drain::new();
            let ticket = crate::listen::ticket::ConnTicket::new(
                permit,
                drain.track(),
                None,
                crate::metrics::WorkerMetrics::new(&cfg),
                0,
            );
            let fut = super::handle(l, client, "127.0.0.1:9".parse().unwrap(), ticket);
            let size = std::mem::size_of_val(&fut);
            eprintln!("connection task state: {size} bytes");
            // 2,304 bytes in debug and release builds (nginx holds ~9.6 KB per
            // connection); a nested helper future in the relay shows up here.
            assert!(size < 3072, "connection future is {size} bytes");
        });
    }
}
