//! `overload`: C clients against a proxy whose max_connections is M < C.
//!
//! All C clients connect at once, send a message and wait for its echo (up to the deadline).
//! Expected: M are served, C-M wait in the kernel accept queue (connected, unanswered, never
//! closed by the proxy). After `--settle-ms` it prints `overload phase=full ...` and waits for the
//! controller (which can look at the listen queue). Then the first C-M served clients leave
//! (normal close, FIN) and the waiting ones must be served; then every remaining client checks
//! one more echo and all close (RST).
//!
//! With `--watch-pid`, the proxy's open fds (/proc/PID/fd) are sampled every 10 ms for the
//! whole run (`--fd-csv FILE`: `t_ms,fds,phase`), and the base (before any client) and maximum
//! per phase are printed.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::ctl::Ctl;
use crate::net::{self, Fail, FailCounts};
use crate::Args;

const PHASES: [&str; 6] = ["base", "fill", "full", "release", "verify", "closed"];

enum Ev {
    Served(usize, Instant),
    Failed(usize, Fail, &'static str),
    Verified(Result<(), Fail>),
}

enum Cmd {
    Leave,
    VerifyThenClose,
}

enum Wake {
    Cmd(Result<Cmd, oneshot::error::RecvError>),
    Peer(std::io::Result<usize>),
}

async fn client(
    id: usize,
    target: SocketAddr,
    src: Option<Ipv4Addr>,
    connect_to: Duration,
    tx: mpsc::UnboundedSender<Ev>,
    mut rx: oneshot::Receiver<Cmd>,
) {
    let mut s: TcpStream = match net::connect(target, src, connect_to).await {
        Ok(s) => s,
        Err(f) => {
            let _ = tx.send(Ev::Failed(id, f, "connect"));
            return;
        }
    };
    // Waiting clients wait here, in the proxy's accept queue: no timeout but the deadline.
    if let Err(f) = net::echo_once(
        &mut s,
        &net::message(id as u64, 1, 16),
        Duration::from_secs(86_400),
    )
    .await
    {
        let _ = tx.send(Ev::Failed(id, f, "waiting"));
        return;
    }
    let _ = tx.send(Ev::Served(id, Instant::now()));
    let mut b = [0u8; 1];
    let wake = tokio::select! {
        c = &mut rx => Wake::Cmd(c),
        r = s.peek(&mut b) => Wake::Peer(r),
    };
    match wake {
        Wake::Peer(r) => {
            let f = match r {
                Ok(0) => Fail::Eof,
                Ok(_) => Fail::Mismatch,
                Err(e) => net::classify_io(&e),
            };
            let _ = tx.send(Ev::Failed(id, f, "held"));
        }
        Wake::Cmd(Ok(Cmd::Leave)) | Wake::Cmd(Err(_)) => drop(s), // FIN
        Wake::Cmd(Ok(Cmd::VerifyThenClose)) => {
            let r = net::echo_once(
                &mut s,
                &net::message(id as u64, 2, 32),
                Duration::from_secs(5),
            )
            .await;
            let _ = tx.send(Ev::Verified(r));
            net::set_linger0(&s);
        }
    }
}

struct Sampler {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
    task: Option<tokio::task::JoinHandle<Vec<(u32, u64, u8)>>>,
}

impl Sampler {
    fn start(pid: Option<u32>, t0: Instant) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU8::new(0));
        let task = pid.map(|pid| {
            let (stop, phase) = (stop.clone(), phase.clone());
            tokio::spawn(async move {
                let mut v = Vec::new();
                while !stop.load(Relaxed) {
                    if let Some(n) = net::count_fds(pid) {
                        v.push((t0.elapsed().as_millis() as u32, n, phase.load(Relaxed)));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                v
            })
        });
        Sampler { stop, phase, task }
    }
    fn set(&self, p: u8) {
        self.phase.store(p, Relaxed);
    }
    async fn finish(mut self) -> Vec<(u32, u64, u8)> {
        self.stop.store(true, Relaxed);
        match self.task.take() {
            Some(t) => t.await.unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

#[derive(Default)]
struct State {
    served: Vec<(usize, Instant)>,
    failed: Vec<(usize, Fail, &'static str)>,
    verify_ok: usize,
    verify_fail: FailCounts,
}

impl State {
    fn on(&mut self, ev: Ev) {
        match ev {
            Ev::Served(id, at) => self.served.push((id, at)),
            Ev::Failed(id, f, st) => self.failed.push((id, f, st)),
            Ev::Verified(Ok(())) => self.verify_ok += 1,
            Ev::Verified(Err(f)) => self.verify_fail.add(f),
        }
    }
}

/// Collect events into `st` until `done(st)` or `to`.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Ev>,
    st: &mut State,
    to: Duration,
    done: impl Fn(&State) -> bool,
) {
    let end = tokio::time::Instant::now() + to;
    while !done(st) {
        match tokio::time::timeout_at(end, rx.recv()).await {
            Ok(Some(ev)) => st.on(ev),
            Ok(None) | Err(_) => return,
        }
    }
}

pub async fn run(a: &Args) -> Result<i32, String> {
    let target = net::parse_addr(a.req("target")?)?;
    let clients: usize = a.num("clients", 300usize)?.max(1);
    let maxc: usize = a.num("max-connections", 0usize)?;
    if maxc == 0 {
        return Err("--max-connections (the proxy's) is required".into());
    }
    let pid: Option<u32> = a
        .str("watch-pid")
        .map(|p| p.parse().map_err(|_| "--watch-pid: bad pid".to_string()))
        .transpose()?;
    let sources = net::parse_sources(a.str("sources"))?;
    let settle = a.ms("settle-ms", 2000)?;
    let connect_to = a.ms("connect-timeout-ms", 5000)?;
    let ctl = Ctl::from_args(a)?;
    let expect_served = maxc.min(clients);
    let release = clients - expect_served;

    let t0 = Instant::now();
    let base_fds = pid.and_then(net::count_fds).unwrap_or(0);
    let sampler = Sampler::start(pid, t0);
    println!("overload start target={target} clients={clients} max_connections={maxc} base_fds={base_fds}");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut cmds: Vec<Option<oneshot::Sender<Cmd>>> = Vec::with_capacity(clients);
    sampler.set(1);
    for id in 0..clients {
        let (ctx, crx) = oneshot::channel();
        cmds.push(Some(ctx));
        tokio::spawn(client(
            id,
            target,
            net::pick_source(&sources, id as u64),
            connect_to,
            tx.clone(),
            crx,
        ));
    }
    drop(tx);

    let mut st = State::default();
    let fill_start = Instant::now();
    // fill: until M are served (or 15 s)
    collect(&mut rx, &mut st, Duration::from_secs(15), |st| {
        st.served.len() >= expect_served || st.served.len() + st.failed.len() >= clients
    })
    .await;
    // settle: no more than M may be served while nobody leaves
    sampler.set(2);
    collect(&mut rx, &mut st, settle, |_| false).await;
    let fill_ms = st
        .served
        .last()
        .map_or(0, |(_, at)| at.duration_since(fill_start).as_millis());
    let served_full = st.served.len();
    let failed_full = st.failed.len();
    let waiting = clients - served_full - failed_full;
    ctl.checkpoint(
        "full",
        &format!("overload phase=full served={served_full} waiting={waiting} failed={failed_full} fill_ms={fill_ms}"),
    )
    .await;

    // release: the first served clients leave (FIN); the waiting ones must now be served
    sampler.set(3);
    let t_rel = Instant::now();
    let leavers: Vec<usize> = st.served.iter().take(release).map(|(id, _)| *id).collect();
    for id in &leavers {
        if let Some(c) = cmds[*id].take() {
            let _ = c.send(Cmd::Leave);
        }
    }
    collect(&mut rx, &mut st, Duration::from_secs(20), |st| {
        st.served.len() + st.failed.len() >= clients
    })
    .await;
    let after: Vec<u128> = st.served[served_full..]
        .iter()
        .map(|(_, at)| at.duration_since(t_rel).as_millis())
        .collect();
    let served_after = after.len();
    let max_wait_after_ms = after.iter().copied().max().unwrap_or(0);

    // verify: every client still holding checks one more echo, then all close (RST)
    sampler.set(4);
    let mut asked = 0usize;
    for c in cmds.iter_mut() {
        if let Some(c) = c.take() {
            if c.send(Cmd::VerifyThenClose).is_ok() {
                asked += 1;
            }
        }
    }
    collect(&mut rx, &mut st, Duration::from_secs(10), |st| {
        st.verify_ok + st.verify_fail.total() as usize >= asked
    })
    .await;
    sampler.set(5);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = sampler.finish().await;
    let State {
        failed,
        verify_ok,
        verify_fail,
        ..
    } = st;

    let mut max_by_phase: [Option<u64>; PHASES.len()] = [None; PHASES.len()];
    for (_, n, p) in &samples {
        let p = *p as usize;
        max_by_phase[p] = Some(max_by_phase[p].map_or(*n, |m| m.max(*n)));
    }
    let phase_max = |p: usize| max_by_phase[p].map_or("none".to_string(), |m| m.to_string());
    let fds_max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    if let Some(path) = a.str("fd-csv") {
        let mut s = String::from("t_ms,fds,phase\n");
        for (t, n, p) in &samples {
            s.push_str(&format!("{t},{n},{}\n", PHASES[*p as usize]));
        }
        std::fs::write(path, s).map_err(|e| format!("{path}: {e}"))?;
    }
    let mut fail_counts = FailCounts::default();
    let mut dropped = 0usize;
    let mut connect_fail = 0usize;
    for (_, f, st) in &failed {
        fail_counts.add(*f);
        match *st {
            "connect" => connect_fail += 1,
            _ => dropped += 1,
        }
    }
    let failed_where: Vec<String> = failed
        .iter()
        .take(10)
        .map(|(id, f, st)| format!("{id}:{f}@{st}"))
        .collect();
    let ok = served_full == expect_served
        && dropped == 0
        && connect_fail == 0
        && served_after == release
        && verify_ok == asked
        && asked == clients - release;
    println!(
        "overload result ok={} clients={clients} max_connections={maxc} served_full={served_full} \
         waiting_full={waiting} released={} served_after_release={served_after} expected_after_release={release} \
         max_wait_after_release_ms={max_wait_after_ms} dropped={dropped} connect_fail={connect_fail} \
         failures={fail_counts} failed_first={} verify_asked={asked} verify_ok={} verify_fail={} \
         base_fds={base_fds} fds_max={fds_max} fds_max_fill={} fds_max_full={} fds_max_release={} \
         fds_max_verify={} fds_after_close={} samples={}",
        u8::from(ok),
        leavers.len(),
        if failed_where.is_empty() { "none".to_string() } else { failed_where.join(",") },
        verify_ok,
        verify_fail,
        phase_max(1),
        phase_max(2),
        phase_max(3),
        phase_max(4),
        samples.last().map_or(0, |s| s.1),
        samples.len()
    );
    Ok(if ok { 0 } else { 1 })
}
