//! Process start-up and control: size the fd budget, bind listeners, spawn
//! one pinned worker thread per core (each with its own monoio runtime),
//! report what was chosen, then wait for signals on the main thread.

pub mod drain;
pub mod worker;

use std::{
    sync::{mpsc, Arc},
    thread,
    time::Duration,
};

use futures_channel::oneshot;

use crate::{
    config::{Config, IoUringMode, Transfer},
    limiter::Limiter,
    listener, sys, Error,
};

/// Which monoio driver a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        })
    }
}

/// fds a worker needs besides connections: its ring, eventfd, and slack.
const FDS_PER_WORKER: u64 = 4;
/// fds kept for stdio, logs, the control thread and surprises.
const FDS_RESERVE: u64 = 64;

/// What the fd limit allows.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub soft: u64,
    pub hard: u64,
    /// Proxied connections (two sockets each) the limit leaves room for.
    pub connections: u64,
}

/// Raise RLIMIT_NOFILE towards what the config needs; cap every listener's
/// `max_connections` so that together they fit the budget.
pub fn apply_fd_budget(cfg: &mut Config, workers: usize) -> Budget {
    let w = workers as u64;
    let listeners = cfg.listeners.len() as u64;
    // Idle keep-alive connections pooled by http listeners, per worker.
    let mut pooled_ups: Vec<usize> = cfg
        .listeners
        .iter()
        .filter_map(|l| l.http.as_ref())
        .flat_map(|h| h.routes.iter().map(|r| r.upstream))
        .collect();
    pooled_ups.sort_unstable();
    pooled_ups.dedup();
    let pooled: u64 = pooled_ups
        .iter()
        .map(|&u| (cfg.upstreams[u].keepalive * cfg.upstreams[u].servers.len()) as u64)
        .sum();
    let fixed = FDS_RESERVE
        + w * FDS_PER_WORKER
        + w * listeners
        + w * 2 * cfg.runtime.pipe_pool as u64
        + w * pooled;
    let wanted_conns = cfg.total_max_connections() as u64;
    let needed = fixed + 2 * wanted_conns;
    let (soft, hard) = sys::raise_nofile(needed);
    let connections = soft.saturating_sub(fixed) / 2;
    if wanted_conns > connections {
        let explicit: Vec<&str> = cfg
            .listeners
            .iter()
            .filter(|l| !l.max_connections_default)
            .map(|l| l.name.as_str())
            .collect();
        let msg = format!(
            "RLIMIT_NOFILE is {soft} (hard limit {hard}) but max_connections totalling {wanted_conns} need {needed} fds \
             (2 per connection + {fixed} for listeners, pipes and keep-alive pools); capping to {connections} connections. \
             Raise the limit (systemd LimitNOFILE={needed}) to allow more"
        );
        if explicit.is_empty() {
            tracing::info!("{msg}");
        } else {
            tracing::warn!("{msg}");
        }
        for l in &mut cfg.listeners {
            let share = (l.max_connections as u128 * connections as u128
                / wanted_conns.max(1) as u128) as usize;
            l.max_connections = share.max(1);
        }
    }
    Budget {
        soft,
        hard,
        connections: connections.min(cfg.total_max_connections() as u64),
    }
}

/// Decide the driver from the config and what the kernel offers.
///
/// # Errors
/// `io_uring = "required"` and io_uring cannot be used.
pub fn choose_driver(mode: IoUringMode) -> Result<Driver, Error> {
    match mode {
        IoUringMode::Off => Ok(Driver::Epoll),
        _ if monoio::utils::detect_uring() => Ok(Driver::IoUring),
        IoUringMode::Required => Err(Error::Startup(
            "io_uring is required (runtime.io_uring = \"required\") but the kernel refused it \
             (old kernel, seccomp, or kernel.io_uring_disabled)"
                .into(),
        )),
        IoUringMode::Auto => {
            tracing::warn!("io_uring is not available (old kernel, seccomp, or kernel.io_uring_disabled); using the epoll driver");
            Ok(Driver::Epoll)
        }
    }
}

/// Start everything and block until a stop signal and the drain are done.
///
/// # Errors
/// Bind failures, io_uring required but missing, threads that cannot start.
pub fn run(mut cfg: Config) -> Result<(), Error> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let workers = cfg.runtime.workers.unwrap_or(cores.len().max(1));
    let budget = apply_fd_budget(&mut cfg, workers);
    let driver = choose_driver(cfg.runtime.io_uring)?;
    let splice_ok = sys::splice_works();
    if !splice_ok {
        tracing::warn!("splice(2) does not work here; L4 listeners will copy");
        for l in &mut cfg.listeners {
            l.transfer = Transfer::Copy;
        }
    }

    // Bind every socket before starting threads, so "address in use" is one
    // clear error and exit code 1.
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..workers).map(|_| Vec::new()).collect();
    for l in &cfg.listeners {
        let socks = listener::bind_all(l.listen, l.backlog, workers).map_err(|e| Error::Bind {
            name: l.name.clone(),
            addr: l.listen,
            msg: e.to_string(),
        })?;
        let bound = socks
            .first()
            .and_then(|s| s.local_addr().ok())
            .unwrap_or(l.listen);
        tracing::info!(
            "listener {:?} listening on {bound} ({}, {workers} SO_REUSEPORT sockets, max_connections {})",
            l.name,
            match l.mode {
                crate::config::Mode::Tcp => "tcp",
                crate::config::Mode::Http => "http",
            },
            l.max_connections
        );
        for (w, s) in socks.into_iter().enumerate() {
            per_worker[w].push(s);
        }
    }
    let limiters: Vec<Arc<Limiter>> = cfg
        .listeners
        .iter()
        .map(|l| Limiter::new(l.max_connections, workers))
        .collect();

    sys::block_signals().map_err(|e| Error::Startup(format!("cannot block signals: {e}")))?;

    let cfg = Arc::new(cfg);
    // Backend health, circuit breakers and limits: one state for the process.
    let shared = crate::health::Shared::new(&cfg);
    let health_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    crate::health::spawn_checker(&cfg, Arc::clone(&shared), Arc::clone(&health_stop))
        .map_err(|e| Error::Startup(format!("cannot start the health-check thread: {e}")))?;
    // Metrics shards (one per worker), the access log writer, the admin listener.
    let worker_metrics: Vec<Arc<crate::metrics::WorkerMetrics>> = (0..workers)
        .map(|_| crate::metrics::WorkerMetrics::new(&cfg))
        .collect();
    let access_dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reopen_access = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let access = match &cfg.access_log {
        None => None,
        Some(a) => Some(
            crate::metrics::access::start(
                a,
                Arc::clone(&reopen_access),
                Arc::clone(&access_dropped),
            )
            .map_err(|e| {
                Error::Startup(format!(
                    "cannot open the access log {}: {e}",
                    a.path
                        .as_ref()
                        .map_or("stdout".into(), |p| p.display().to_string())
                ))
            })?,
        ),
    };
    if let Some(addr) = cfg.admin {
        let reg = Arc::new(crate::metrics::Registry {
            cfg: Arc::clone(&cfg),
            shared: Arc::clone(&shared),
            workers: worker_metrics.clone(),
            access_dropped: Arc::clone(&access_dropped),
        });
        let bound =
            crate::metrics::admin::start(addr, reg, Arc::clone(&health_stop)).map_err(|e| {
                Error::Bind {
                    name: "admin".into(),
                    addr,
                    msg: e.to_string(),
                }
            })?;
        tracing::info!("admin listening on {bound} (/healthz /readyz /metrics /status)");
    }
    let (ready_tx, ready_rx) =
        mpsc::channel::<Result<(usize, Option<usize>, Driver, Option<TaskRun>), String>>();
    let mut stops = Vec::with_capacity(workers);
    let mut handles = Vec::with_capacity(workers);
    for (index, sockets) in per_worker.into_iter().enumerate() {
        let (stop_tx, stop_rx) = oneshot::channel();
        stops.push(stop_tx);
        let spec = worker::WorkerSpec {
            index,
            cfg: Arc::clone(&cfg),
            sockets,
            limiters: limiters.clone(),
            shared: Arc::clone(&shared),
            metrics: Arc::clone(&worker_metrics[index]),
            access: access.clone(),
            shutdown: stop_rx,
        };
        let core = if cfg.runtime.pin_cores && !cores.is_empty() {
            Some(cores[index % cores.len()])
        } else {
            None
        };
        let ready = ready_tx.clone();
        let entries = cfg.runtime.ring_entries;
        let required = cfg.runtime.io_uring == IoUringMode::Required;
        let h = thread::Builder::new()
            .name(format!("ringlb-w{index}"))
            .spawn(move || worker_thread(spec, core, driver, entries, required, ready))
            .map_err(|e| Error::Startup(format!("cannot start worker thread: {e}")))?;
        handles.push(h);
    }
    drop(ready_tx);

    let mut pinned = Vec::new();
    let mut drivers = Vec::new();
    let mut taskrun: Option<TaskRun> = None;
    for _ in 0..workers {
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok((_, core, d, t))) => {
                pinned.extend(core);
                drivers.push(d);
                taskrun = taskrun.or(t);
            }
            Ok(Err(msg)) => {
                stop_all(stops, Duration::ZERO);
                return Err(Error::Startup(msg));
            }
            Err(_) => {
                stop_all(stops, Duration::ZERO);
                return Err(Error::Startup("a worker did not start within 10s".into()));
            }
        }
    }
    pinned.sort_unstable();
    let chosen = if drivers.iter().all(|d| *d == Driver::IoUring) {
        format!("io_uring (taskrun={})", taskrun.unwrap_or(TaskRun::Default))
    } else if drivers.iter().all(|d| *d == Driver::Epoll) {
        "epoll".to_string()
    } else {
        "mixed io_uring/epoll".to_string()
    };
    tracing::info!(
        "ringlb {} ready: driver={chosen} splice={} workers={workers} pinned_cores={:?} fd_limit={} (hard {}) connection_budget={} ring_entries={}",
        env!("CARGO_PKG_VERSION"),
        if splice_ok { "yes" } else { "no" },
        pinned,
        budget.soft,
        budget.hard,
        budget.connections,
        cfg.runtime.ring_entries,
    );
    sys::systemd::notify("READY=1");

    drop(access);
    loop {
        match sys::wait_signal() {
            sys::Signal::Hup => tracing::warn!(
                "SIGHUP received: configuration reload is not supported yet; ignoring"
            ),
            sys::Signal::Usr1 => {
                reopen_access.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!("SIGUSR1 received: reopening the access log");
            }
            sys::Signal::Stop => break,
        }
    }
    let grace = cfg.runtime.shutdown_timeout;
    tracing::info!("stop signal received: no new connections; draining for up to {grace:?} (signal again to exit at once)");
    sys::systemd::notify("STOPPING=1");
    health_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    stop_all(stops, grace);
    // A second signal ends the process at once.
    let _ = thread::Builder::new()
        .name("ringlb-sig".into())
        .spawn(|| loop {
            if sys::wait_signal() == sys::Signal::Stop {
                tracing::warn!("second stop signal: exiting now");
                std::process::exit(0);
            }
        });
    for h in handles {
        let _ = h.join();
    }
    tracing::info!("all workers stopped");
    Ok(())
}

fn stop_all(stops: Vec<oneshot::Sender<Duration>>, grace: Duration) {
    for s in stops {
        let _ = s.send(grace);
    }
}

/// How io_uring completions are delivered to the worker thread.
///
/// By default the kernel runs completion work with a signal-like
/// interruption of the task (TWA_SIGNAL) the moment it is ready: on a busy
/// proxy that is one forced kernel entry and exit per completion. DEFER_TASKRUN
/// (Linux 6.1+, needs SINGLE_ISSUER) runs it only when the worker asks for
/// events; COOP_TASKRUN (5.19+) runs it at the next natural kernel transition.
/// Measured here (wrk c64 through L4): proxy CPU per request 3.5 -> 1.7
/// CPU-s/100k with either; DEFER was the cheaper of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskRun {
    Defer,
    Coop,
    Default,
}

impl std::fmt::Display for TaskRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TaskRun::Defer => "defer",
            TaskRun::Coop => "coop",
            TaskRun::Default => "default",
        })
    }
}

fn uring_builder(mode: TaskRun) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    match mode {
        TaskRun::Defer => {
            b.setup_single_issuer().setup_defer_taskrun();
        }
        TaskRun::Coop => {
            b.setup_coop_taskrun().setup_taskrun_flag();
        }
        TaskRun::Default => {}
    }
    b
}

/// The task-run modes to try, best first. RINGLB_URING_TASKRUN=defer|coop|default
/// forces one (for measurements).
fn taskrun_modes() -> Vec<TaskRun> {
    match std::env::var("RINGLB_URING_TASKRUN").as_deref() {
        Ok("default") => vec![TaskRun::Default],
        Ok("coop") => vec![TaskRun::Coop],
        Ok("defer") => vec![TaskRun::Defer],
        _ => vec![TaskRun::Defer, TaskRun::Coop, TaskRun::Default],
    }
}

type Ready = mpsc::Sender<Result<(usize, Option<usize>, Driver, Option<TaskRun>), String>>;

fn worker_thread(
    spec: worker::WorkerSpec,
    core: Option<core_affinity::CoreId>,
    driver: Driver,
    entries: u32,
    required: bool,
    ready: Ready,
) {
    let index = spec.index;
    let pinned = core.and_then(|c| {
        if core_affinity::set_for_current(c) {
            Some(c.id)
        } else {
            tracing::warn!(
                worker = index,
                core = c.id,
                "could not pin worker to its core"
            );
            None
        }
    });
    if driver == Driver::IoUring {
        let mut last_err = None;
        for mode in taskrun_modes() {
            match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .uring_builder(uring_builder(mode))
                .with_entries(entries)
                .enable_timer()
                .build()
            {
                Ok(mut rt) => {
                    let _ = ready.send(Ok((index, pinned, Driver::IoUring, Some(mode))));
                    drop(ready);
                    rt.block_on(worker::run(spec));
                    return;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let e = last_err.map_or_else(|| "unknown error".to_string(), |e| e.to_string());
        if required {
            let _ = ready.send(Err(format!(
                "worker {index}: cannot set up io_uring ({e}) and runtime.io_uring = \"required\""
            )));
            return;
        }
        tracing::warn!(worker = index, "cannot set up io_uring ({e}); this worker uses epoll (raise LimitMEMLOCK if this says ENOMEM)");
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => {
            let _ = ready.send(Ok((index, pinned, Driver::Epoll, None)));
            drop(ready);
            rt.block_on(worker::run(spec));
        }
        Err(e) => {
            let _ = ready.send(Err(format!(
                "worker {index}: cannot start the epoll runtime: {e}"
            )));
        }
    }
}
