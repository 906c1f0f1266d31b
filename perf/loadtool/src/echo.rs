//! Echo backend on several ports. An idle connection holds its socket and a small task, no
//! buffer: reads go through one 64 KiB buffer per thread and are written back at once; only a
//! short write keeps a copy of the rest until it is sent.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

use crate::{net, Args};

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; 64 * 1024]);
}

#[derive(Default)]
struct Stats {
    accepted: AtomicU64,
    open: AtomicU64,
    max_open: AtomicU64,
    accept_errors: AtomicU64,
}

pub async fn run(a: &Args) -> Result<i32, String> {
    let addrs = net::parse_addrs(a.req("listen")?)?;
    let backlog: u32 = a.num("backlog", 4096)?;
    let stats = Arc::new(Stats::default());
    for addr in &addrs {
        let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        sock.set_reuseaddr(true)
            .map_err(|e| format!("SO_REUSEADDR: {e}"))?;
        sock.bind(*addr).map_err(|e| format!("bind {addr}: {e}"))?;
        let l = sock
            .listen(backlog)
            .map_err(|e| format!("listen {addr}: {e}"))?;
        tokio::spawn(accept_loop(l, *addr, stats.clone()));
    }
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    println!("echo listening={} backlog={backlog}", list.join(","));
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    println!(
        "echo stats accepted={} open={} max_open={} accept_errors={}",
        stats.accepted.load(Relaxed),
        stats.open.load(Relaxed),
        stats.max_open.load(Relaxed),
        stats.accept_errors.load(Relaxed)
    );
    Ok(0)
}

async fn accept_loop(l: TcpListener, addr: std::net::SocketAddr, stats: Arc<Stats>) {
    let mut last_log: Option<Instant> = None;
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                stats.accepted.fetch_add(1, Relaxed);
                let _ = s.set_nodelay(true);
                tokio::spawn(conn(s, stats.clone()));
            }
            Err(e) => {
                let n = stats.accept_errors.fetch_add(1, Relaxed) + 1;
                if last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    eprintln!(
                        "echo: accept error on {addr}: {e} (accept errors so far {n}, open {})",
                        stats.open.load(Relaxed)
                    );
                    last_log = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

enum Step {
    Again,
    Done,
    Rest(Vec<u8>),
}

async fn conn(s: TcpStream, stats: Arc<Stats>) {
    let open = stats.open.fetch_add(1, Relaxed) + 1;
    stats.max_open.fetch_max(open, Relaxed);
    let mut s = s;
    loop {
        if s.readable().await.is_err() {
            break;
        }
        let step = BUF.with(|b| {
            let mut b = b.borrow_mut();
            match s.try_read(&mut b[..]) {
                Ok(0) => Step::Done,
                Ok(n) => match s.try_write(&b[..n]) {
                    Ok(w) if w == n => Step::Again,
                    Ok(w) => Step::Rest(b[w..n].to_vec()),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        Step::Rest(b[..n].to_vec())
                    }
                    Err(_) => Step::Done,
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Step::Again,
                Err(_) => Step::Done,
            }
        });
        match step {
            Step::Again => {}
            Step::Done => break,
            Step::Rest(v) => {
                if s.write_all(&v).await.is_err() {
                    break;
                }
            }
        }
    }
    stats.open.fetch_sub(1, Relaxed);
}
