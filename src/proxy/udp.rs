//! udp proxying: datagrams from clients become flows, each pinned to one
//! backend on the worker whose socket took them, with one connected
//! upstream socket per flow (the kernel matches the backend's replies to
//! it, and reports its ICMP errors on it).
//!
//! Per listener socket, one task reads datagrams (readiness from the ring,
//! then nonblocking recvmsg until the queue is empty) and looks each up in
//! the worker's flow table: a new client gets a pick, a socket and a flow
//! task; a known one's datagram is sent on its flow's socket. The flow task
//! waits for replies and sends them back through the listener socket, from
//! the address the client sent to (IP_PKTINFO when bound to a wildcard
//! address). A flow ends when it has been idle for `idle_timeout`, when all
//! responses it expects came (`responses`), or when the backend refuses
//! (ICMP port unreachable); after `requests` datagrams the next one starts
//! a new flow. Nothing is shared between workers.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, RawFd},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::future::{select, Either};
use monoio::net::udp::UdpSocket;

use super::proxy_protocol;
use crate::{
    balancer::{hash_ip, Algorithm},
    config::{acl::admits, FlowKey, HashKey, ListenerConfig, ProxySend, UdpConfig},
    listen::drain::Drain,
    metrics::{
        access::{self, AccessLog},
        WorkerMetrics,
    },
    sys::{self, Datagram, PktInfo},
    upstream::Replica,
};

/// Datagrams taken from one socket before it is waited on again (the
/// other tasks of the worker get their turn).
const BATCH: usize = 64;

/// After a drain began, a flow that is idle this long ends (its client's
/// next datagram reaches the next generation, or nobody).
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// Why a datagram was dropped: the index into [`crate::metrics::UDP_DROPS`].
#[derive(Debug, Clone, Copy)]
enum Lost {
    MaxFlows = 0,
    NoBackend = 1,
    NoSocket = 2,
    Truncated = 3,
    BackendFull = 4,
    ClientFull = 5,
    Refused = 6,
    SendError = 7,
    /// The listener's allow/deny keeps the client out.
    Denied = 8,
}

/// What makes datagrams one flow: the client (its port 0 under `flow_key
/// = "addr"`) and, on a wildcard address, the local address it sent to.
type Key = (SocketAddr, Option<IpAddr>);

/// A udp listener as one worker sees it.
pub struct UdpProxy {
    pub cfg: ListenerConfig,
    pub udp: UdpConfig,
    pub upstream: Rc<Replica>,
    pub metrics: Arc<WorkerMetrics>,
    pub li: usize,
    pub access: Option<AccessLog>,
    /// One receive buffer for the worker's sockets and flows of this
    /// listener: borrowed only between two waits, never across one.
    buf: RefCell<Vec<u8>>,
    /// The worker's flows of this listener that take datagrams. Every flow
    /// whose task runs (retired ones too: each holds a socket until it
    /// ends) is in this worker's `udp.active` gauge: what `max_flows` bounds.
    flows: RefCell<HashMap<Key, Rc<Flow>, ahash::RandomState>>,
}

/// One client's exchange with one backend.
struct Flow {
    /// Connected to the backend.
    sock: UdpSocket,
    backend: SocketAddr,
    /// The listener socket the client's datagrams came in on; replies
    /// leave through it.
    listener: Rc<UdpSocket>,
    /// Where replies go (the client's port may change under `flow_key = "addr"`).
    client: Cell<SocketAddr>,
    /// The address the client sent to (wildcard listeners).
    dst: Cell<Option<PktInfo>>,
    /// The PROXY v2 header datagrams to the backend start with.
    header: RefCell<Option<Vec<u8>>>,
    /// Client datagrams sent on to the backend.
    requests: Cell<u32>,
    /// Backend datagrams received (sent to the client or not).
    responses: Cell<u32>,
    /// Replies sent to the client.
    sent: Cell<u64>,
    last: Cell<Instant>,
    bytes_in: Cell<u64>,
    bytes_out: Cell<u64>,
    /// Set when the flow must end now, and why (a send saw the backend's
    /// ICMP error); the flow task looks at it when woken.
    failed: Cell<Option<&'static str>>,
    wake: RefCell<Option<futures_channel::oneshot::Sender<()>>>,
    /// Out of the table: the next datagram of this client opens a new flow.
    retired: Cell<bool>,
}

impl UdpProxy {
    pub fn new(
        cfg: &ListenerConfig,
        upstream: Rc<Replica>,
        metrics: Arc<WorkerMetrics>,
        li: usize,
        access: Option<AccessLog>,
    ) -> Result<UdpProxy, String> {
        let udp = cfg.udp.clone().ok_or("udp listener without its udp keys")?;
        Ok(UdpProxy {
            cfg: cfg.clone(),
            buf: RefCell::new(vec![0; udp.max_datagram]),
            udp,
            upstream,
            metrics,
            li,
            access,
            flows: RefCell::new(HashMap::default()),
        })
    }

    fn dropped(&self, why: Lost) {
        self.metrics.listeners[self.li].udp.dropped[why as usize].inc();
    }
}

/// Register a listener socket with this worker's runtime; on a wildcard
/// address it is asked for each datagram's destination (again: a socket
/// systemd made does not have it).
///
/// # Errors
/// The runtime cannot register it, or the option cannot be set.
pub fn register(sock: std::net::UdpSocket) -> io::Result<UdpSocket> {
    let at = sock.local_addr()?;
    if at.ip().is_unspecified() {
        sys::set_recv_pktinfo(sock.as_raw_fd(), at.is_ipv6())?;
    }
    UdpSocket::from_std(sock)
}

/// Serve one listener socket of this worker until the drain begins; the
/// flows it opened finish on their own (and hold the drain while they do).
pub async fn serve_socket(l: Rc<UdpProxy>, sock: UdpSocket, drain: Rc<Drain>) {
    let sock = Rc::new(sock);
    let local = sock.local_addr().ok();
    let wildcard = local.is_some_and(|a| a.ip().is_unspecified());
    let fd = sock.as_raw_fd();
    loop {
        let ready = std::pin::pin!(sock.readable(false));
        let stop = std::pin::pin!(drain.stopped());
        match select(ready, stop).await {
            Either::Right(_) => break,
            // Never give the socket up: it stays in the SO_REUSEPORT group
            // and its share of clients would go unanswered.
            Either::Left((Err(e), _)) => {
                tracing::warn!(listener = %l.cfg.name, "udp socket wait failed: {e}; trying again");
                monoio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Either::Left((Ok(()), _)) => {}
        }
        for _ in 0..BATCH {
            let mut buf = l.buf.borrow_mut();
            let d = match take(fd, &mut buf) {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(listener = %l.cfg.name, "udp receive: {e}");
                    break;
                }
            };
            let data = &buf[..d.len];
            let dst = if wildcard { d.dst } else { None };
            client_datagram(&l, &sock, data, d, dst, local, &drain);
        }
    }
}

/// The next queued datagram of `fd` (None: the queue is empty).
fn take(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<Datagram>> {
    loop {
        match sys::udp_recv(fd, buf) {
            Ok(d) => return Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One datagram from a client: to its flow (opened when new).
fn client_datagram(
    l: &Rc<UdpProxy>,
    listener: &Rc<UdpSocket>,
    data: &[u8],
    d: Datagram,
    dst: Option<PktInfo>,
    local: Option<SocketAddr>,
    drain: &Rc<Drain>,
) {
    let um = &l.metrics.listeners[l.li].udp;
    um.datagrams_in.inc();
    if d.truncated {
        l.dropped(Lost::Truncated);
        return;
    }
    let key = match l.udp.flow_key {
        FlowKey::AddrPort => (d.peer, dst.map(|p| p.addr)),
        FlowKey::Addr => (SocketAddr::new(d.peer.ip(), 0), dst.map(|p| p.addr)),
    };
    let found = l.flows.borrow().get(&key).cloned();
    let (flow, new) = match found {
        Some(f) => (f, false),
        None => {
            // Checked when a flow would open: a flow exists only for a
            // client the list lets in.
            if !admits(&l.cfg.access, d.peer.ip()) {
                l.dropped(Lost::Denied);
                return;
            }
            // This worker's shard: the flows of this socket's worker.
            let live = l.metrics.listeners[l.li].udp.active.get();
            if usize::try_from(live).unwrap_or(0) >= l.udp.max_flows {
                l.dropped(Lost::MaxFlows);
                return;
            }
            match open_flow(l, listener, key, d.peer, drain) {
                Some(f) => (f, true),
                None => return,
            }
        }
    };
    // Addresses (and the PROXY header naming them) are set when the flow
    // opens and again only if they change (`flow_key = "addr"`).
    if new || flow.client.get() != d.peer || flow.dst.get() != dst {
        flow.client.set(d.peer);
        flow.dst.set(dst);
        if l.cfg.proxy_protocol == ProxySend::V2 {
            let to = dst
                .map(|p| SocketAddr::new(p.addr, local.map_or(0, |a| a.port())))
                .or(local);
            *flow.header.borrow_mut() = to.and_then(|to| proxy_protocol::encode_dgram(d.peer, to));
        }
    }
    let sent = match &*flow.header.borrow() {
        Some(h) => sys::with_sock(flow.sock.as_raw_fd(), |s| {
            s.send_vectored(&[io::IoSlice::new(h), io::IoSlice::new(data)])
        }),
        None => sys::with_sock(flow.sock.as_raw_fd(), |s| s.send(data)),
    };
    match sent {
        Ok(_) => {
            um.bytes_in.add(data.len() as u64);
            flow.bytes_in.set(flow.bytes_in.get() + data.len() as u64);
        }
        Err(e) => {
            // Not sent on: not a request the backend owes an answer to.
            match e.raw_os_error() {
                _ if e.kind() == io::ErrorKind::WouldBlock => l.dropped(Lost::BackendFull),
                Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH) => {
                    l.dropped(Lost::Refused);
                    end_now(&flow, "refused");
                }
                _ => {
                    tracing::debug!(listener = %l.cfg.name, client = %d.peer, backend = %flow.backend, "udp send: {e}");
                    l.dropped(Lost::SendError);
                }
            }
            return;
        }
    }
    flow.last.set(Instant::now());
    let n = flow.requests.get() + 1;
    flow.requests.set(n);
    let limited = l.udp.requests > 0 && n >= l.udp.requests;
    if limited {
        retire(l, key, &flow);
    }
    // responses = 0: nothing is expected back; the flow is over once the
    // datagram went on (after `requests` of them, with a limit).
    if l.udp.responses == Some(0) && (l.udp.requests == 0 || limited) {
        end_now(&flow, "done");
    }
}

/// Tell the flow task to end at once.
fn end_now(flow: &Flow, why: &'static str) {
    flow.failed.set(Some(why));
    if let Some(tx) = flow.wake.borrow_mut().take() {
        let _ = tx.send(());
    }
}

/// Take the flow out of the table (if it is still there).
fn retire(l: &UdpProxy, key: Key, flow: &Rc<Flow>) {
    if flow.retired.replace(true) {
        return;
    }
    let mut t = l.flows.borrow_mut();
    if t.get(&key).is_some_and(|f| Rc::ptr_eq(f, flow)) {
        t.remove(&key);
    }
}

/// A new client: pick its backend, connect a socket to it, start its flow.
fn open_flow(
    l: &Rc<UdpProxy>,
    listener: &Rc<UdpSocket>,
    key: Key,
    peer: SocketAddr,
    drain: &Rc<Drain>,
) -> Option<Rc<Flow>> {
    let up = &l.upstream;
    let hash = match (up.cfg.balance, &up.cfg.hash_key) {
        (Algorithm::ConsistentHash, HashKey::ClientIp) => hash_ip(peer.ip()),
        _ => 0,
    };
    let Ok(picked) = up.pick(hash, &[]) else {
        l.dropped(Lost::NoBackend);
        return None;
    };
    let backend = picked.backend().addr;
    let sock = match crate::io::connect::connect_udp(backend) {
        Ok(s) => s,
        Err(e) => {
            // Out of fds (EMFILE) or ports: this datagram is dropped, the
            // process goes on.
            tracing::debug!(listener = %l.cfg.name, client = %peer, %backend, "udp flow socket: {e}");
            l.dropped(Lost::NoSocket);
            return None;
        }
    };
    let (tx, rx) = futures_channel::oneshot::channel();
    let flow = Rc::new(Flow {
        sock,
        backend,
        listener: Rc::clone(listener),
        client: Cell::new(peer),
        dst: Cell::new(None),
        header: RefCell::new(None),
        requests: Cell::new(0),
        responses: Cell::new(0),
        sent: Cell::new(0),
        last: Cell::new(Instant::now()),
        bytes_in: Cell::new(0),
        bytes_out: Cell::new(0),
        failed: Cell::new(None),
        wake: RefCell::new(Some(tx)),
        retired: Cell::new(false),
    });
    l.flows.borrow_mut().insert(key, Rc::clone(&flow));
    let um = &l.metrics.listeners[l.li].udp;
    um.flows.inc();
    um.active.add(1);
    let task = FlowTask {
        l: Rc::clone(l),
        flow: Rc::clone(&flow),
        key,
        drain: Rc::clone(drain),
    };
    monoio::spawn(task.run(picked, rx));
    Some(flow)
}

struct FlowTask {
    l: Rc<UdpProxy>,
    flow: Rc<Flow>,
    key: Key,
    drain: Rc<Drain>,
}

impl FlowTask {
    async fn run(
        self,
        picked: crate::upstream::Picked,
        mut wake: futures_channel::oneshot::Receiver<()>,
    ) {
        let _held = self.drain.track();
        let started = Instant::now();
        let l = &self.l;
        let inflight = l.upstream.open(picked);
        let b = Arc::clone(inflight.backend());
        b.count_request();
        let end = self.relay(&mut wake, &b).await;
        retire(l, self.key, &self.flow);
        let f = &self.flow;
        let um = &l.metrics.listeners[l.li].udp;
        um.active.add(-1);
        let want = l.udp.responses.unwrap_or(0);
        let expected = f.requests.get().saturating_mul(want);
        match end {
            "refused" => l.upstream.upstream.report_failure(&b, "udp: unreachable"),
            // Only a full idle timeout: a drain's shorter one ("drain")
            // says nothing about the backend.
            "idle" if want > 0 && f.responses.get() < expected => {
                um.unanswered.inc();
                l.upstream.upstream.report_failure(&b, "udp: no response")
            }
            _ => {}
        }
        if let Some(a) = &l.access {
            a.send(access::udp_line(
                a.format,
                &access::UdpEntry {
                    listener: &l.cfg.name,
                    client: f.client.get(),
                    backend: f.backend,
                    datagrams_in: u64::from(f.requests.get()),
                    datagrams_out: f.sent.get(),
                    bytes_in: f.bytes_in.get(),
                    bytes_out: f.bytes_out.get(),
                    duration: started.elapsed(),
                    end,
                },
            ));
        }
        drop(inflight);
    }

    /// Replies back to the client until the flow ends; how it ended.
    async fn relay(
        &self,
        wake: &mut futures_channel::oneshot::Receiver<()>,
        b: &Arc<crate::backends::Backend>,
    ) -> &'static str {
        let (l, f) = (&self.l, &self.flow);
        let fd = f.sock.as_raw_fd();
        let mut answered = false;
        loop {
            if let Some(why) = f.failed.get() {
                return why;
            }
            let draining = self.drain.is_stopping() && l.cfg.idle_timeout > DRAIN_IDLE;
            let idle = if draining {
                DRAIN_IDLE
            } else {
                l.cfg.idle_timeout
            };
            let deadline = f.last.get() + idle;
            if Instant::now() >= deadline {
                return if draining { "drain" } else { "idle" };
            }
            let ready = std::pin::pin!(f.sock.readable(false));
            let timer = std::pin::pin!(crate::io::timer::sleep_until(deadline));
            // Once the drain began its future is always ready: waited on
            // only before (it shortens the idle timeout), or this loop
            // would spin and starve the worker.
            let stop = std::pin::pin!(async {
                if self.drain.is_stopping() {
                    std::future::pending::<()>().await;
                }
                self.drain.stopped().await;
            });
            let woken = std::pin::pin!(async {
                // A sender taken (and used) or gone: nothing more to wait for.
                if (&mut *wake).await.is_err() {
                    std::future::pending::<()>().await;
                }
            });
            let others = select(timer, select(stop, woken));
            match select(ready, others).await {
                Either::Left((Ok(()), _)) => {}
                Either::Left((Err(_), _)) => return "error",
                // The timer, the drain or a wake: look again.
                Either::Right(_) => continue,
            }
            let mut got = false;
            for _ in 0..BATCH {
                let mut buf = l.buf.borrow_mut();
                let d = match take(fd, &mut buf) {
                    Ok(Some(d)) => d,
                    Ok(None) => break,
                    Err(e) => {
                        return match e.raw_os_error() {
                            Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH) => {
                                "refused"
                            }
                            _ => "error",
                        }
                    }
                };
                got = true;
                if !answered {
                    answered = true;
                    l.upstream.upstream.report_success(b);
                }
                // An answer too big to pass on still is one (counted, dropped).
                let data = if d.truncated {
                    l.dropped(Lost::Truncated);
                    None
                } else {
                    Some(&buf[..d.len])
                };
                if let Some(why) = self.reply(f.listener.as_raw_fd(), data) {
                    return why;
                }
            }
            if got {
                f.last.set(Instant::now());
            }
        }
    }

    /// Send one reply to the client (None: it was dropped, too big);
    /// `Some` when the flow is done.
    fn reply(&self, listener: RawFd, data: Option<&[u8]>) -> Option<&'static str> {
        let (l, f) = (&self.l, &self.flow);
        let um = &l.metrics.listeners[l.li].udp;
        if let Some(data) = data {
            match sys::udp_send(listener, data, f.client.get(), f.dst.get()) {
                Ok(_) => {
                    um.datagrams_out.inc();
                    um.bytes_out.add(data.len() as u64);
                    f.bytes_out.set(f.bytes_out.get() + data.len() as u64);
                    f.sent.set(f.sent.get() + 1);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => l.dropped(Lost::ClientFull),
                Err(e) => {
                    tracing::debug!(listener = %l.cfg.name, client = %f.client.get(), "udp reply: {e}");
                    l.dropped(Lost::SendError);
                }
            }
        }
        let n = f.responses.get() + 1;
        f.responses.set(n);
        let (limit, made) = (l.udp.requests, f.requests.get());
        let want = l.udp.responses?;
        // Every answer expected came; with a request limit, only once that
        // many requests were made (until then more may follow).
        (want > 0 && n >= made.saturating_mul(want) && (limit == 0 || made >= limit))
            .then_some("done")
    }
}
