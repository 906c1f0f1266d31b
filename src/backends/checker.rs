//! The health-check thread: one for the process, whatever the worker
//! count. It runs every upstream's active checks (one task per backend) and
//! the circuit-breaker timers, and publishes verdicts in the shared state.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
};

use super::{circuit::now_ms, set::Upstream, state::Backend, BackendId, Upstreams, TICK};
use crate::config::{Config, HealthConfig, HealthKind};

/// Start the checker thread. It stops when `stop` is set.
///
/// Every tick it also looks at each checked upstream's set version: a new
/// version starts a check loop for each backend it has not seen; a loop
/// ends when its backend is retired (dropped by a later version).
///
/// # Errors
/// The thread could not be started.
pub fn spawn(
    cfg: &Config,
    upstreams: Arc<Upstreams>,
    stop: Arc<AtomicBool>,
    tls: &[Option<Arc<crate::tls::Client>>],
) -> std::io::Result<()> {
    // An upstream with tls is checked over TLS: the handshake (and its
    // verification) is part of every check.
    type Plan = (Arc<Upstream>, HealthConfig, Option<Arc<crate::tls::Client>>);
    let plans: Vec<Plan> = cfg
        .upstreams
        .iter()
        .zip(upstreams.all.iter())
        .enumerate()
        .filter_map(|(ui, (u, s))| {
            u.health
                .clone()
                .map(|h| (Arc::clone(s), h, tls.get(ui).cloned().flatten()))
        })
        .collect();
    thread::Builder::new()
        .name("ringlb-health".into())
        .spawn(move || {
            let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build();
            let mut rt = match rt {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("health checks cannot run: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                // Per plan: the set version last looked at, and the backends
                // that have a loop.
                let mut seen: Vec<(u64, HashSet<BackendId>)> =
                    plans.iter().map(|_| (0, HashSet::new())).collect();
                while !stop.load(Ordering::Relaxed) {
                    for ((up, h, tls), (version, running)) in plans.iter().zip(seen.iter_mut()) {
                        if up.version() == *version {
                            continue;
                        }
                        let set = up.current();
                        *version = set.version;
                        running.retain(|id| set.index_of(*id).is_some());
                        for m in &set.members {
                            if running.insert(m.backend.id) {
                                monoio::spawn(check_loop(
                                    Arc::clone(up),
                                    Arc::clone(&m.backend),
                                    (h.clone(), tls.clone()),
                                    Arc::clone(&stop),
                                ));
                            }
                        }
                    }
                    let now = now_ms();
                    for u in &upstreams.all {
                        u.tick(now);
                    }
                    monoio::time::sleep(TICK).await;
                }
            });
        })
        .map(|_| ())
}

async fn check_loop(
    up: Arc<Upstream>,
    b: Arc<Backend>,
    (h, tls): (HealthConfig, Option<Arc<crate::tls::Client>>),
    stop: Arc<AtomicBool>,
) {
    let addr = b.addr;
    let (mut ok_run, mut fail_run) = (0u32, 0u32);
    // Until the first verdict a backend counts as up, as nginx and HAProxy
    // do; after a reload it keeps the verdict it had.
    let mut down = b.is_down();
    while !stop.load(Ordering::Relaxed) && !b.is_retired() {
        let result = match monoio::time::timeout(h.timeout, probe(addr, &h, tls.as_deref())).await {
            Ok(r) => r,
            Err(_) => Err(Probe::Failed(format!("no answer within {:?}", h.timeout))),
        };
        // Stopped (a newer generation, or one that failed) or retired while
        // the probe ran: its verdict must not land in the shared state.
        if b.is_retired() || stop.load(Ordering::Relaxed) {
            break;
        }
        match result {
            // Our own fds or ports ran out: says nothing about the backend.
            Err(Probe::Local(why)) => {
                tracing::debug!(upstream = %up.name, backend = %addr, "health check not run: {why}");
            }
            Ok(()) => {
                fail_run = 0;
                ok_run += 1;
                if down && ok_run >= h.rise {
                    down = false;
                    up.set_down(&b, false);
                    tracing::warn!(upstream = %up.name, backend = %addr, "backend is UP ({ok_run} checks passed)");
                }
            }
            Err(Probe::Failed(why)) => {
                ok_run = 0;
                fail_run += 1;
                if !down && fail_run >= h.fall {
                    down = true;
                    up.set_down(&b, true);
                    tracing::warn!(upstream = %up.name, backend = %addr, "backend is DOWN ({fail_run} checks failed: {why})");
                }
            }
        }
        monoio::time::sleep(h.interval).await;
    }
}

/// Why a check did not pass.
enum Probe {
    /// The backend failed it.
    Failed(String),
    /// It could not be run here (our fds or ports ran out).
    Local(String),
}

/// One check: Ok when the backend passes.
async fn probe(
    addr: std::net::SocketAddr,
    h: &HealthConfig,
    tls: Option<&crate::tls::Client>,
) -> Result<(), Probe> {
    if let HealthKind::Udp { send, expect } = &h.kind {
        return udp_probe(addr, send, expect).await;
    }
    let started = std::time::Instant::now();
    let mut stream = crate::io::connect::connect(addr, h.timeout)
        .await
        .map_err(|e| {
            if e.is_local() {
                Probe::Local(e.to_string())
            } else {
                Probe::Failed(e.to_string())
            }
        })?;
    if let Some(c) = tls {
        let Some(sock) = stream.as_plain() else {
            return Err(Probe::Failed("not a plain socket".into()));
        };
        let conn = rustls::ClientConnection::new(Arc::clone(&c.config), c.name_for(addr))
            .map_err(|e| Probe::Failed(format!("TLS: {e}")))?;
        let done = crate::io::tls::handshake(
            sock,
            rustls::Connection::Client(conn),
            &[],
            started + h.timeout,
        )
        .await;
        match done {
            Ok(conn) => stream = stream.into_tls(Box::new(conn)),
            Err(e) => return Err(Probe::Failed(e.to_string())),
        }
    }
    http_check(&stream, addr, h).await.map_err(Probe::Failed)
}

/// A udp check: one datagram out, a reply starting with `expect` back (the
/// caller bounds the wait with the check's timeout).
async fn udp_probe(addr: std::net::SocketAddr, send: &[u8], expect: &[u8]) -> Result<(), Probe> {
    use std::os::fd::AsRawFd;
    let sock = crate::io::connect::connect_udp(addr)
        .map_err(|e| Probe::Local(format!("udp socket: {e}")))?;
    let fd = sock.as_raw_fd();
    let refused = |e: &std::io::Error| e.raw_os_error() == Some(libc::ECONNREFUSED);
    crate::sys::with_sock(fd, |s| s.send(send)).map_err(|e| {
        if refused(&e) {
            Probe::Failed("port unreachable".into())
        } else {
            Probe::Local(format!("udp send: {e}"))
        }
    })?;
    let mut buf = vec![0u8; expect.len().max(512)];
    loop {
        sock.readable(false)
            .await
            .map_err(|e| Probe::Local(format!("udp wait: {e}")))?;
        match crate::sys::udp_recv(fd, &mut buf) {
            Ok(d) if buf[..d.len].starts_with(expect) => return Ok(()),
            Ok(_) => return Err(Probe::Failed("unexpected reply".into())),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if refused(&e) => return Err(Probe::Failed("port unreachable".into())),
            Err(e) => return Err(Probe::Failed(format!("udp receive: {e}"))),
        }
    }
}

/// The http part of a check, on a connected stream (tcp checks pass here).
async fn http_check(
    stream: &crate::io::stream::Stream,
    addr: std::net::SocketAddr,
    h: &HealthConfig,
) -> Result<(), String> {
    let HealthKind::Http { path, host, status } = &h.kind else {
        return Ok(());
    };
    let host = host.clone().unwrap_or_else(|| addr.to_string());
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringlb-health\r\nConnection: close\r\n\r\n"
    );
    crate::io::relay::write_all_until(stream, req.as_bytes(), &[], Some(h.timeout))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; 1024];
    let mut len = 0;
    loop {
        let n = crate::io::relay::read_some(stream, &mut buf[len..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before a status line".into());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 0];
        let mut resp = httparse::Response::new(&mut headers);
        // Only the status line matters: more headers than slots is fine.
        match resp.parse(&buf[..len]) {
            Ok(_) | Err(httparse::Error::TooManyHeaders) => {}
            Err(e) => return Err(format!("bad response: {e}")),
        }
        if let Some(code) = resp.code {
            return if (status.0..=status.1).contains(&code) {
                Ok(())
            } else {
                Err(format!("status {code}"))
            };
        }
        if len == buf.len() {
            return Err("status line too long".into());
        }
    }
}
