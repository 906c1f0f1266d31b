//! Per-pick cost of `ringlb::balancer` against naive baselines.
//!
//! Each algorithm is measured for 2, 16 and 256 servers next to a straightforward implementation
//! of the same policy:
//! * round robin vs a `Mutex`-wrapped shared counter (what one global balancer would cost,
//!   uncontended here, so this is a lower bound on the real shared cost);
//! * smooth WRR vs recomputing the position in an expanded weight list on every pick;
//! * random vs collecting the non-skipped servers into a fresh `Vec` and indexing it;
//! * least-conn (p2c) vs scanning every server for the minimum count;
//! * consistent hash (binary search) vs a linear scan of an equally sized sorted ring.
//!
//! Run: `cargo bench --bench balancer -- --warm-up-time 1 --measurement-time 2`

use std::sync::Mutex;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use ringlb::{
    backends::{self, Upstream},
    balancer::{hash_key, Algorithm, Balancer, ServerSpec},
};

const SIZES: [usize; 3] = [2, 16, 256];
const KEYS: usize = 1024;

fn server_ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1))
        .collect()
}

/// A config with one upstream over `n` servers ([`server_ids`]).
fn config_with(n: usize) -> ringlb::Config {
    let servers: String = server_ids(n)
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }},"))
        .collect();
    ringlb::Config::parse(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:1\"\nupstream = \"u\"\n[upstream.u]\nservers = [{servers}]\n"
    ))
    .expect("valid config")
}

/// Weights 1..=5 so weighted algorithms have something to do.
fn weight(i: usize) -> u32 {
    (i % 5) as u32 + 1
}

fn specs(ids: &[String]) -> Vec<ServerSpec<'_>> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| ServerSpec {
            id,
            weight: weight(i),
        })
        .collect()
}

fn bench_keys() -> Vec<u64> {
    (0..KEYS)
        .map(|i| hash_key(format!("192.168.{}.{}", i / 256, i % 256).as_bytes()))
        .collect()
}

fn no_skip(_: usize) -> bool {
    false
}

/// xorshift64* for the baselines (deterministic, no dependencies).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

// ------------------------------------------------------------------ baselines

/// A shared global round-robin counter behind a mutex.
struct MutexRoundRobin {
    next: Mutex<usize>,
    n: usize,
}

impl MutexRoundRobin {
    fn pick(&self, skip: impl Fn(usize) -> bool) -> Option<usize> {
        let mut next = self.next.lock().ok()?;
        for _ in 0..self.n {
            let i = *next;
            *next = (i + 1) % self.n;
            if !skip(i) {
                return Some(i);
            }
        }
        None
    }
}

/// WRR by expansion: server i appears weight(i) times; each pick recomputes the live total and
/// scans the expanded list to the `counter % total`-th live slot.
struct ExpandedWrr {
    slots: Vec<usize>,
    counter: usize,
}

impl ExpandedWrr {
    fn new(n: usize) -> Self {
        let slots = (0..n)
            .flat_map(|i| (0..weight(i)).map(move |_| i))
            .collect();
        ExpandedWrr { slots, counter: 0 }
    }

    fn pick(&mut self, skip: impl Fn(usize) -> bool) -> Option<usize> {
        let live = self.slots.iter().filter(|&&s| !skip(s)).count();
        if live == 0 {
            return None;
        }
        let target = self.counter % live;
        self.counter = self.counter.wrapping_add(1);
        self.slots.iter().copied().filter(|&s| !skip(s)).nth(target)
    }
}

/// Random by materialising the candidate list on every pick.
struct CollectRandom {
    n: usize,
    rng: XorShift,
}

impl CollectRandom {
    fn pick(&mut self, skip: impl Fn(usize) -> bool) -> Option<usize> {
        let live: Vec<usize> = (0..self.n).filter(|&i| !skip(i)).collect();
        if live.is_empty() {
            return None;
        }
        Some(live[(self.rng.next() % live.len() as u64) as usize])
    }
}

/// Least-conn by full scan (conn/weight, lowest index on ties).
struct ScanLeastConn {
    conns: Vec<u32>,
    weights: Vec<u32>,
}

impl ScanLeastConn {
    fn pick(&self, skip: impl Fn(usize) -> bool) -> Option<usize> {
        let mut best: Option<usize> = None;
        for i in 0..self.conns.len() {
            if skip(i) {
                continue;
            }
            best = match best {
                Some(b)
                    if u64::from(self.conns[b]) * u64::from(self.weights[i])
                        <= u64::from(self.conns[i]) * u64::from(self.weights[b]) =>
                {
                    Some(b)
                }
                _ => Some(i),
            };
        }
        best
    }
}

/// A ketama ring of the same size (160 points per unit weight, plain crc32), looked up by a
/// linear scan.
struct LinearRing {
    ring: Vec<(u32, usize)>,
}

impl LinearRing {
    fn new(ids: &[String]) -> Self {
        let mut ring = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            for v in 0..160 * weight(i) {
                ring.push((crc32fast::hash(format!("{id}-{v}").as_bytes()), i));
            }
        }
        ring.sort_unstable();
        LinearRing { ring }
    }

    fn pick(&self, key: u64, skip: impl Fn(usize) -> bool) -> Option<usize> {
        let k = (key ^ (key >> 32)) as u32;
        let start = self.ring.iter().position(|&(p, _)| p >= k).unwrap_or(0);
        let len = self.ring.len();
        (0..len)
            .map(|step| self.ring[(start + step) % len].1)
            .find(|&s| !skip(s))
    }
}

// ------------------------------------------------------------------ benches

fn bench_round_robin(c: &mut Criterion) {
    let mut g = c.benchmark_group("round_robin");
    for n in SIZES {
        let ids = server_ids(n);
        let mut b = Balancer::new(Algorithm::RoundRobin, &specs(&ids), 0);
        g.bench_with_input(BenchmarkId::new("ringlb", n), &n, |bench, _| {
            bench.iter(|| b.pick(black_box(0), no_skip))
        });
        let base = MutexRoundRobin {
            next: Mutex::new(0),
            n,
        };
        g.bench_with_input(BenchmarkId::new("mutex_counter", n), &n, |bench, _| {
            bench.iter(|| base.pick(no_skip))
        });
    }
    g.finish();
}

fn bench_weighted_round_robin(c: &mut Criterion) {
    let mut g = c.benchmark_group("weighted_round_robin");
    for n in SIZES {
        let ids = server_ids(n);
        let mut b = Balancer::new(Algorithm::WeightedRoundRobin, &specs(&ids), 0);
        g.bench_with_input(BenchmarkId::new("ringlb", n), &n, |bench, _| {
            bench.iter(|| b.pick(black_box(0), no_skip))
        });
        let mut base = ExpandedWrr::new(n);
        g.bench_with_input(BenchmarkId::new("expanded_scan", n), &n, |bench, _| {
            bench.iter(|| base.pick(no_skip))
        });
    }
    g.finish();
}

fn bench_random(c: &mut Criterion) {
    let mut g = c.benchmark_group("random");
    for n in SIZES {
        let ids = server_ids(n);
        let mut b = Balancer::new(Algorithm::Random, &specs(&ids), 0);
        g.bench_with_input(BenchmarkId::new("ringlb", n), &n, |bench, _| {
            bench.iter(|| b.pick(black_box(0), no_skip))
        });
        let mut base = CollectRandom {
            n,
            rng: XorShift(0x9e37_79b9_7f4a_7c15),
        };
        g.bench_with_input(BenchmarkId::new("collect_vec", n), &n, |bench, _| {
            bench.iter(|| base.pick(no_skip))
        });
    }
    g.finish();
}

fn bench_least_conn(c: &mut Criterion) {
    let mut g = c.benchmark_group("least_conn");
    for n in SIZES {
        let ids = server_ids(n);
        let mut b = Balancer::new(Algorithm::LeastConn, &specs(&ids), 0);
        let mut rng = XorShift(42);
        let conns: Vec<u32> = (0..n).map(|_| (rng.next() % 100) as u32).collect();
        for (i, &k) in conns.iter().enumerate() {
            for _ in 0..k {
                b.connection_opened(i);
            }
        }
        g.bench_with_input(BenchmarkId::new("ringlb", n), &n, |bench, _| {
            bench.iter(|| b.pick(black_box(0), no_skip))
        });
        let base = ScanLeastConn {
            conns,
            weights: (0..n).map(weight).collect(),
        };
        g.bench_with_input(BenchmarkId::new("full_scan", n), &n, |bench, _| {
            bench.iter(|| base.pick(no_skip))
        });
    }
    g.finish();
}

fn bench_consistent_hash(c: &mut Criterion) {
    let mut g = c.benchmark_group("consistent_hash");
    let keys = bench_keys();
    for n in SIZES {
        let ids = server_ids(n);
        let mut b = Balancer::new(Algorithm::ConsistentHash, &specs(&ids), 0);
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("ringlb", n), &n, |bench, _| {
            bench.iter(|| {
                i = (i + 1) % KEYS;
                b.pick(black_box(keys[i]), no_skip)
            })
        });
        let base = LinearRing::new(&ids);
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("linear_ring", n), &n, |bench, _| {
            bench.iter(|| {
                i = (i + 1) % KEYS;
                base.pick(black_box(keys[i]), no_skip)
            })
        });
    }
    g.finish();
}

/// The whole pick as the proxy does it: balancer plus the process-wide
/// health state (one relaxed load per candidate) and the slot reservation
/// (one atomic add, one sub when the slot drops), next to the bare pick.
fn bench_pick_with_health(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick_with_health");
    for n in SIZES {
        let cfg = config_with(n);
        let st = Upstream::new(&cfg.upstreams[0]);
        let set = st.current();
        let ids = server_ids(n);
        let mut b = Balancer::new(Algorithm::RoundRobin, &specs(&ids), 0);
        g.bench_with_input(BenchmarkId::new("health_pick", n), &n, |bench, _| {
            bench.iter(|| {
                black_box(backends::pick(&mut b, &st, &set, black_box(0), &[]).map(|p| p.0))
            })
        });
        let mut b = Balancer::new(Algorithm::RoundRobin, &specs(&ids), 0);
        g.bench_with_input(BenchmarkId::new("bare_pick", n), &n, |bench, _| {
            bench.iter(|| b.pick(black_box(0), no_skip))
        });
    }
    g.finish();
}

/// A discovery update of a 1,000-member set: the new version published
/// (`Upstream::apply`, one backend swapped each time) and one worker's
/// replica following it at its next pick (its balancer rebuilt for the new
/// members, live counts carried by id). Every worker does the second part
/// once per version.
fn bench_set_update(c: &mut Criterion) {
    let mut g = c.benchmark_group("set_update");
    let n = 1000;
    let servers: String = (0..n)
        .map(|i| {
            format!(
                "{{ addr = \"10.{}.{}.{}:80\" }},",
                i / 65536,
                (i / 256) % 256,
                i % 256
            )
        })
        .collect();
    let cfg = ringlb::Config::parse(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:1\"\nupstream = \"u\"\n[upstream.u]\nbalance = \"least_conn\"\nservers = [{servers}]\n"
    ))
    .expect("valid config");
    let up = Upstream::new(&cfg.upstreams[0]);
    let replica =
        ringlb::upstream::Replica::new(&cfg.upstreams[0], std::sync::Arc::clone(&up), 0, 0);
    let base = cfg.upstreams[0].servers.clone();
    let spare = ringlb::config::ServerConfig {
        id: "10.99.0.1:80".into(),
        addr: "10.99.0.1:80".parse().expect("addr"),
        weight: 1,
        backup: false,
        max_connections: 0,
    };
    let mut flip = false;
    g.bench_function("apply_and_refresh_1000", |bench| {
        bench.iter(|| {
            let mut list = base.clone();
            flip = !flip;
            if flip {
                list[0] = spare.clone();
            }
            up.apply(backends::Update::Reset(list));
            black_box(replica.len())
        })
    });
    g.finish();
}

/// A worker's pick (the replica's, as the data path does it) on a 256-member
/// set while another thread publishes a new version every millisecond
/// (one member swapped): the cost of following a busy discovery source,
/// beside the quiet case.
fn bench_pick_during_updates(c: &mut Criterion) {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    let mut g = c.benchmark_group("pick_during_updates");
    let n = 256;
    let cfg = config_with(n);
    let up = Upstream::new(&cfg.upstreams[0]);
    let replica = ringlb::upstream::Replica::new(&cfg.upstreams[0], Arc::clone(&up), 0, 0);
    g.bench_function("quiet", |bench| {
        bench.iter(|| black_box(replica.pick(black_box(0), &[]).is_ok()))
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (up, stop) = (Arc::clone(&up), Arc::clone(&stop));
        let base = cfg.upstreams[0].servers.clone();
        std::thread::spawn(move || {
            let mut flip = false;
            while !stop.load(Ordering::Relaxed) {
                let mut list = base.clone();
                flip = !flip;
                if flip {
                    list.pop();
                }
                up.apply(backends::Update::Reset(list));
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    g.bench_function("updates_every_1ms", |bench| {
        bench.iter(|| black_box(replica.pick(black_box(0), &[]).is_ok()))
    });
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    g.finish();
}

criterion_group!(
    benches,
    bench_set_update,
    bench_pick_during_updates,
    bench_pick_with_health,
    bench_round_robin,
    bench_weighted_round_robin,
    bench_random,
    bench_least_conn,
    bench_consistent_hash
);
criterion_main!(benches);
