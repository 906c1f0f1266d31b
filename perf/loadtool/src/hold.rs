//! `hold`: open up to N connections and keep them all open.
//!
//! Each attempt: socket, bind to the next source address (port chosen at connect), connect,
//! send a unique `--msg-len` message and read the echo ("idle after traffic"). At most
//! `--concurrency` attempts are in flight. At each checkpoint (an absolute count of open
//! connections) it stops launching, lets the in-flight attempts finish, prints
//! `checkpoint label=COUNT open=COUNT ...` and waits for the controller.
//!
//! It stops opening at the first `--max-failures` failures (default 1: the first connection the
//! machine's limits refuse, e.g. one that waits in a full proxy's accept queue until
//! `--echo-timeout-ms`, or EMFILE here), at `--count`, or at `--open-timeout`. Then, with every
//! connection still held, it checks that each one is still open (no EOF, no reset: MSG_PEEK),
//! sends a new message on a random sample and checks the echo, prints `final ...` and the
//! `checkpoint label=final` line, waits for the controller, and closes everything (RST with
//! `--close rst`, the default, so no TIME_WAIT is left here).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::ctl::Ctl;
use crate::net::{self, Fail, FailCounts};
use crate::Args;

struct Opts {
    target: std::net::SocketAddr,
    count: u64,
    sources: Vec<Ipv4Addr>,
    checkpoints: Vec<u64>,
    concurrency: usize,
    connect_to: Duration,
    echo_to: Duration,
    max_failures: u64,
    sample: usize,
    msg_len: usize,
    open_timeout: Duration,
    rst: bool,
}

fn opts(a: &Args) -> Result<Opts, String> {
    let mut checkpoints: Vec<u64> = match a.str("checkpoints") {
        None | Some("") => Vec::new(),
        Some(s) => s
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| {
                x.parse()
                    .map_err(|_| format!("--checkpoints: bad count '{x}'"))
            })
            .collect::<Result<_, _>>()?,
    };
    checkpoints.sort_unstable();
    checkpoints.dedup();
    let count = a.num("count", 0u64)?;
    if count == 0 {
        return Err("--count must be > 0".into());
    }
    checkpoints.retain(|&c| c < count);
    Ok(Opts {
        target: net::parse_addr(a.req("target")?)?,
        count,
        sources: net::parse_sources(a.str("sources"))?,
        checkpoints,
        concurrency: a.num("concurrency", 128usize)?.max(1),
        connect_to: a.ms("connect-timeout-ms", 3000)?,
        echo_to: a.ms("echo-timeout-ms", 3000)?,
        max_failures: a.num("max-failures", 1u64)?.max(1),
        sample: a.num("sample", 200usize)?,
        msg_len: a.num("msg-len", 16usize)?.max(1),
        open_timeout: Duration::from_secs(a.num("open-timeout", 120u64)?),
        rst: match a.str("close").unwrap_or("rst") {
            "rst" => true,
            "fin" => false,
            o => return Err(format!("--close: rst or fin, not '{o}'")),
        },
    })
}

async fn attempt(
    o: (
        std::net::SocketAddr,
        Option<Ipv4Addr>,
        Duration,
        Duration,
        usize,
    ),
    id: u64,
) -> Result<TcpStream, Fail> {
    let (target, src, connect_to, echo_to, len) = o;
    let mut s = net::connect(target, src, connect_to).await?;
    net::echo_once(&mut s, &net::message(id, 0, len), echo_to).await?;
    Ok(s)
}

pub async fn run(a: &Args, nofile: u64) -> Result<i32, String> {
    let o = opts(a)?;
    let ctl = Ctl::from_args(a)?;
    println!(
        "hold target={} count={} sources={} concurrency={} nofile={nofile} checkpoints={:?}",
        o.target,
        o.count,
        o.sources.len(),
        o.concurrency,
        o.checkpoints
    );
    let mut held: Vec<TcpStream> = Vec::with_capacity(o.count.min(1 << 20) as usize);
    let mut inflight: JoinSet<Result<TcpStream, Fail>> = JoinSet::new();
    let mut fails = FailCounts::default();
    let mut first_failure: Option<(Fail, u64)> = None;
    let mut stop: Option<String> = None;
    let mut next_id = 0u64;
    let mut cps = o.checkpoints.iter().copied().peekable();
    let start = Instant::now();
    let mut last_progress = Instant::now();
    let mut paused = Duration::ZERO; // time spent waiting for the controller
    loop {
        // a checkpoint is reached when exactly that many are open and nothing is in flight
        while stop.is_none() && inflight.is_empty() && cps.peek() == Some(&(held.len() as u64)) {
            cps.next();
            let n = held.len();
            let p0 = Instant::now();
            ctl.checkpoint(
                &n.to_string(),
                &format!(
                    "checkpoint label={n} open={n} secs={:.3}",
                    start.elapsed().as_secs_f64()
                ),
            )
            .await;
            paused += p0.elapsed();
        }
        let goal = cps.peek().copied().unwrap_or(o.count);
        if stop.is_none() && start.elapsed().saturating_sub(paused) > o.open_timeout {
            stop = Some("open_timeout".into());
        }
        while stop.is_none()
            && ((held.len() + inflight.len()) as u64) < goal
            && inflight.len() < o.concurrency
        {
            let p = (
                o.target,
                net::pick_source(&o.sources, next_id),
                o.connect_to,
                o.echo_to,
                o.msg_len,
            );
            inflight.spawn(attempt(p, next_id));
            next_id += 1;
        }
        if inflight.is_empty() {
            if stop.is_none() && held.len() as u64 >= o.count {
                stop = Some("count_reached".into());
            }
            if stop.is_some() {
                break;
            }
            continue;
        }
        match inflight.join_next().await {
            Some(Ok(Ok(s))) => held.push(s),
            Some(Ok(Err(f))) => {
                fails.add(f);
                if first_failure.is_none() {
                    first_failure = Some((f, held.len() as u64));
                    eprintln!("loadtool hold: first failure at open={}: {f}", held.len());
                }
                if fails.total() >= o.max_failures && stop.is_none() {
                    stop = Some(format!("failure_{f}"));
                }
            }
            Some(Err(e)) => return Err(format!("attempt task: {e}")),
            None => {}
        }
        if last_progress.elapsed() > Duration::from_secs(1) {
            eprintln!(
                "loadtool hold: open={} inflight={} failures={} t={:.1}s",
                held.len(),
                inflight.len(),
                fails,
                start.elapsed().as_secs_f64()
            );
            last_progress = Instant::now();
        }
    }
    let open_secs = start.elapsed().saturating_sub(paused).as_secs_f64();
    let reason = stop.unwrap_or_else(|| "count_reached".into());

    // Let late resets/FINs arrive, then check every held connection without blocking.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut held_bad = FailCounts::default();
    for s in &held {
        if let Err(f) = net::peek_state(s) {
            held_bad.add(f);
        }
    }
    let (sample_n, sample_ok, sample_fails) = verify_sample(&mut held, &o).await;
    let ff = first_failure.map_or("none".to_string(), |(f, at)| format!("{f}@{at}"));
    println!(
        "final open={} requested={} stop={reason} first_failure={ff} failures={fails} attempts={next_id} \
         held_bad={held_bad} held_bad_total={} sample={sample_n} sample_ok={sample_ok} sample_fail={sample_fails} \
         open_secs={open_secs:.3} rate_per_s={:.0}",
        held.len(),
        o.count,
        held_bad.total(),
        held.len() as f64 / open_secs.max(1e-9)
    );
    ctl.checkpoint(
        "final",
        &format!("checkpoint label=final open={}", held.len()),
    )
    .await;
    for s in &held {
        if o.rst {
            net::set_linger0(s);
        }
    }
    let n = held.len();
    drop(held);
    println!("closed={n} close={}", if o.rst { "rst" } else { "fin" });
    Ok(0)
}

/// Send a new message on a random sample of the held connections, all others still held.
async fn verify_sample(held: &mut Vec<TcpStream>, o: &Opts) -> (usize, usize, FailCounts) {
    let n = o.sample.min(held.len());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = net::splitmix(seed ^ std::process::id() as u64);
    let mut set: JoinSet<(TcpStream, Result<(), Fail>)> = JoinSet::new();
    for k in 0..n {
        rng = net::splitmix(rng);
        let i = (rng % held.len() as u64) as usize;
        let mut s = held.swap_remove(i);
        let msg = net::message(k as u64, 0xfeed, o.msg_len.max(32));
        let to = o.echo_to;
        set.spawn(async move {
            let r = net::echo_once(&mut s, &msg, to).await;
            (s, r)
        });
    }
    let mut ok = 0;
    let mut fails = FailCounts::default();
    while let Some(r) = set.join_next().await {
        if let Ok((s, res)) = r {
            match res {
                Ok(()) => ok += 1,
                Err(f) => fails.add(f),
            }
            held.push(s);
        }
    }
    (n, ok, fails)
}
