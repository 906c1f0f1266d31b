//! `rate`: short-lived connections as fast as possible for `--duration` seconds.
//!
//! `--concurrency` workers each loop: socket, bind to the next source address (port chosen at
//! connect), connect, send `--msg-len` (64) bytes, read the same bytes back, close. With
//! `--close rst` (the default) the client closes with SO_LINGER 0 (RST): no TIME_WAIT piles up on
//! the client side (common in connection-rate benchmarks); `--close fin` closes normally and
//! relies on the several source addresses and net.ipv4.tcp_tw_reuse for ports.
//!
//! Prints one line: `rate ok=.. secs=.. cps=.. errors=.. err=kind:n,.. p50_us=.. p99_us=..`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::net::{self, FailCounts};
use crate::Args;

struct Out {
    ok: u64,
    fails: FailCounts,
    lat_us: Vec<u32>,
}

pub async fn run(a: &Args) -> Result<i32, String> {
    let target = net::parse_addr(a.req("target")?)?;
    let duration = Duration::from_secs_f64(a.num("duration", 5.0f64)?);
    let conc: u64 = a.num("concurrency", 64u64)?.max(1);
    let sources = Arc::new(net::parse_sources(a.str("sources"))?);
    let len: usize = a.num("msg-len", 64usize)?.max(1);
    let to = a.ms("timeout-ms", 2000)?;
    let rst = match a.str("close").unwrap_or("rst") {
        "rst" => true,
        "fin" => false,
        o => return Err(format!("--close: rst or fin, not '{o}'")),
    };
    let start = Instant::now();
    let end = start + duration;
    let mut set = tokio::task::JoinSet::new();
    for w in 0..conc {
        set.spawn(worker(w, conc, target, sources.clone(), len, to, rst, end));
    }
    let mut ok = 0;
    let mut fails = FailCounts::default();
    let mut lat: Vec<u32> = Vec::new();
    while let Some(r) = set.join_next().await {
        let o = r.map_err(|e| format!("worker: {e}"))?;
        ok += o.ok;
        fails.merge(&o.fails);
        lat.extend(o.lat_us);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| -> u32 {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize]
        }
    };
    println!(
        "rate target={target} concurrency={conc} close={} secs={secs:.3} ok={ok} cps={:.0} errors={} err={fails} \
         p50_us={} p90_us={} p99_us={} max_us={}",
        if rst { "rst" } else { "fin" },
        ok as f64 / secs,
        fails.total(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        lat.last().copied().unwrap_or(0)
    );
    Ok(0)
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    w: u64,
    conc: u64,
    target: SocketAddr,
    sources: Arc<Vec<Ipv4Addr>>,
    len: usize,
    to: Duration,
    rst: bool,
    end: Instant,
) -> Out {
    let mut out = Out {
        ok: 0,
        fails: FailCounts::default(),
        lat_us: Vec::new(),
    };
    let msg = net::message(w, 64, len);
    let mut i = w;
    while Instant::now() < end {
        let t0 = Instant::now();
        let src = net::pick_source(&sources, i);
        i += conc;
        match net::connect(target, src, to).await {
            Err(f) => {
                out.fails.add(f);
                // out of fds or ports: do not spin
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(mut s) => {
                match net::echo_once(&mut s, &msg, to).await {
                    Ok(()) => {
                        out.ok += 1;
                        out.lat_us
                            .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Err(f) => out.fails.add(f),
                }
                if rst {
                    net::set_linger0(&s);
                }
            }
        }
    }
    out
}
