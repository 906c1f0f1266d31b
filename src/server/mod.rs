//! Process start-up and control: size the fd budget, bind listeners, spawn
//! one pinned worker thread per core (each with its own monoio runtime),
//! report what was chosen, then wait for signals on the main thread.

pub mod worker;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, RwLock,
    },
    thread,
    time::Duration,
};

use futures_channel::oneshot;

use crate::{
    config::{Config, IoUringMode, Transfer},
    listen::{self, limiter::Limiter},
    sys, Error,
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
/// Without a config path, SIGHUP cannot reload.
///
/// # Errors
/// Bind failures, io_uring required but missing, threads that cannot start.
pub fn run(cfg: Config) -> Result<(), Error> {
    run_with(cfg, None)
}

/// The listening sockets the control thread keeps, by listener address as
/// configured. Workers get duplicates; because these originals stay open, a
/// reload hands the very same sockets (and their queued connections) to the
/// next generation of workers.
type Sockets = HashMap<SocketAddr, Vec<std::net::TcpListener>>;

/// One set of workers running one config.
struct Generation {
    cfg: Arc<Config>,
    stops: Vec<oneshot::Sender<Duration>>,
    handles: Vec<thread::JoinHandle<()>>,
    health_stop: Arc<AtomicBool>,
    registry: Arc<crate::metrics::Registry>,
    report: String,
}

/// Process-wide pieces that outlive a generation.
struct Control {
    cores: Vec<core_affinity::CoreId>,
    access: Option<crate::metrics::access::AccessLog>,
    access_dropped: Arc<std::sync::atomic::AtomicU64>,
    sockets: Sockets,
    /// The current generation's backend state (a reload carries it over).
    shared: Option<Arc<crate::backends::Shared>>,
    /// The current generation's listener limiters, by (name, max, workers).
    limiters: Vec<((String, usize, usize), Arc<Limiter>)>,
}

/// Like [`run`]; with `path`, SIGHUP re-reads and applies that file.
///
/// # Errors
/// As [`run`].
pub fn run_with(cfg: Config, path: Option<PathBuf>) -> Result<(), Error> {
    // First, before any thread exists: every thread inherits the mask, so
    // control signals only ever reach the sigwait loop below (a thread that
    // did not block them would take the default action: exit, no drain).
    sys::block_signals().map_err(|e| Error::Startup(format!("cannot block signals: {e}")))?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let access_dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reopen_access = Arc::new(AtomicBool::new(false));
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
    let mut ctl = Control {
        cores,
        access,
        access_dropped,
        sockets: HashMap::new(),
        shared: None,
        limiters: Vec::new(),
    };
    // Sockets handed over by a previous ringlb (upgrade) or systemd (socket
    // activation): they become this process's listening sockets, so the
    // port never closes and queued connections are not reset.
    let inherited = sys::inherited_listeners();
    let upgrade_fd = take_upgrade_fd();
    if !inherited.is_empty() {
        let n = inherited.len();
        for (addr, sock) in inherited {
            if cfg.listeners.iter().any(|l| l.listen == addr) {
                ctl.sockets.entry(addr).or_default().push(sock);
            } else {
                tracing::warn!("inherited listening socket {addr} matches no listener; closing it");
            }
        }
        tracing::info!("took over {n} listening socket(s)");
    }
    let mut gen = start_generation(&mut ctl, cfg, true)?;
    let registry_slot = Arc::new(RwLock::new(Arc::clone(&gen.registry)));
    let admin_stop = Arc::new(AtomicBool::new(false));
    if let Some(addr) = gen.cfg.admin {
        let bound = crate::admin::start(addr, Arc::clone(&registry_slot), Arc::clone(&admin_stop))
            .map_err(|e| Error::Bind {
                name: "admin".into(),
                addr,
                msg: e.to_string(),
            })?;
        tracing::info!("admin listening on {bound} (/healthz /readyz /metrics /status)");
    }
    tracing::info!("{}", gen.report);
    sys::systemd::notify("READY=1");
    write_pid_file(&gen.cfg);
    if let Some(fd) = upgrade_fd {
        // Tell the process that started us (an upgrade) that we serve now.
        let mut f = fd;
        let _ = std::io::Write::write_all(&mut f, b"ready\n");
    }

    let mut draining: Vec<thread::JoinHandle<()>> = Vec::new();
    let mut upgraded = false;
    loop {
        match sys::wait_signal() {
            sys::Signal::Hup => {
                let Some(path) = &path else {
                    tracing::warn!("SIGHUP received, but ringlb was not started from a config file; nothing to reload");
                    continue;
                };
                sys::systemd::notify(&format!(
                    "RELOADING=1\nMONOTONIC_USEC={}",
                    sys::monotonic_usec()
                ));
                match reload(&mut ctl, &gen, path) {
                    Ok(next) => {
                        let old = std::mem::replace(&mut gen, next);
                        *registry_slot.write().unwrap_or_else(|e| e.into_inner()) =
                            Arc::clone(&gen.registry);
                        // The old workers stop accepting and finish what they hold.
                        let grace = old.cfg.runtime.shutdown_timeout;
                        old.health_stop.store(true, Ordering::Relaxed);
                        stop_all(old.stops, grace);
                        let handles = old.handles;
                        draining.push(thread::spawn(move || {
                            for h in handles {
                                let _ = h.join();
                            }
                            tracing::info!("previous configuration's workers finished");
                        }));
                        tracing::info!(
                            "configuration reloaded from {}: {}",
                            path.display(),
                            gen.report
                        );
                    }
                    Err(e) => tracing::error!(
                        "reload refused, still serving the previous configuration: {e}"
                    ),
                }
                sys::systemd::notify("READY=1");
            }
            sys::Signal::Usr1 => {
                reopen_access.store(true, Ordering::Relaxed);
                tracing::info!("SIGUSR1 received: reopening the access log");
            }
            sys::Signal::Usr2 => {
                tracing::info!("SIGUSR2 received: starting the new binary");
                match upgrade(&ctl) {
                    Ok(pid) => {
                        tracing::info!("the new process (pid {pid}) is serving; this one stops accepting and drains");
                        sys::systemd::notify(&format!("MAINPID={pid}"));
                        upgraded = true;
                        break;
                    }
                    Err(e) => tracing::error!("upgrade failed, still serving: {e}"),
                }
            }
            sys::Signal::Stop => break,
        }
    }
    let grace = gen.cfg.runtime.shutdown_timeout;
    if upgraded {
        tracing::info!("handing over to the new process: no new connections here; draining for up to {grace:?}");
    } else {
        tracing::info!("stop signal received: no new connections; draining for up to {grace:?} (signal again to exit at once)");
    }
    if !upgraded {
        sys::systemd::notify("STOPPING=1");
    }
    gen.health_stop.store(true, Ordering::Relaxed);
    admin_stop.store(true, Ordering::Relaxed);
    stop_all(gen.stops, grace);
    drop(ctl.access.take());
    // A second signal ends the process at once.
    let _ = thread::Builder::new()
        .name("ringlb-sig".into())
        .spawn(|| loop {
            if sys::wait_signal() == sys::Signal::Stop {
                tracing::warn!("second stop signal: exiting now");
                std::process::exit(0);
            }
        });
    for h in gen.handles.into_iter().chain(draining) {
        let _ = h.join();
    }
    if !upgraded {
        remove_pid_file(&gen.cfg);
    }
    tracing::info!("all workers stopped");
    Ok(())
}

fn write_pid_file(cfg: &Config) {
    if let Some(p) = &cfg.runtime.pid_file {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            tracing::warn!("cannot write pid file {}: {e}", p.display());
        }
    }
}

/// Remove the pid file if it still names this process.
fn remove_pid_file(cfg: &Config) {
    if let Some(p) = &cfg.runtime.pid_file {
        let ours = std::fs::read_to_string(p)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            == Some(std::process::id());
        if ours {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The write end of the pipe a parent ringlb waits on during an upgrade.
fn take_upgrade_fd() -> Option<std::fs::File> {
    let fd = std::env::var("RINGLB_UPGRADE_FD")
        .ok()?
        .parse::<i32>()
        .ok()?;
    std::env::remove_var("RINGLB_UPGRADE_FD");
    sys::pipe_file(fd)
}

/// How long an upgrade waits for the new process to say it serves.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// Start this program's binary (as it is on disk now) with our listening
/// sockets and wait until it serves. Returns its pid; on failure it is
/// stopped and we keep serving.
fn upgrade(ctl: &Control) -> Result<u32, String> {
    let exe = EXE.get().cloned().ok_or("the binary's path is unknown")?;
    let (ready_r, ready_w) = sys::pipe_pair().map_err(|e| format!("pipe: {e}"))?;
    let mut entries = Vec::new();
    for (addr, socks) in &ctl.sockets {
        for s in socks {
            let fd = std::os::fd::AsRawFd::as_raw_fd(s);
            sys::set_inheritable(fd, true).map_err(|e| format!("fcntl: {e}"))?;
            entries.push(format!("{fd}@{addr}"));
        }
    }
    let wfd = std::os::fd::AsRawFd::as_raw_fd(&ready_w);
    sys::set_inheritable(wfd, true).map_err(|e| format!("fcntl: {e}"))?;
    let spawned = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env("RINGLB_INHERIT_FDS", entries.join(","))
        .env("RINGLB_UPGRADE_FD", wfd.to_string())
        .spawn();
    // Our copies go back to close-on-exec whatever happened.
    for socks in ctl.sockets.values() {
        for s in socks {
            let _ = sys::set_inheritable(std::os::fd::AsRawFd::as_raw_fd(s), false);
        }
    }
    drop(ready_w);
    let mut child = spawned.map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let pid = child.id();
    // Wait for "ready" on the pipe; EOF (the child exited) or the timeout is failure.
    match sys::read_with_timeout(&ready_r, UPGRADE_TIMEOUT) {
        Ok(n) if n > 0 => Ok(pid),
        outcome => {
            let why = match outcome {
                Ok(_) => "it exited before serving".to_string(),
                Err(e) => format!("it did not report ready: {e}"),
            };
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("new process {pid}: {why}"))
        }
    }
}

/// The binary's path as started (argv[0] resolved at start): after the file
/// is replaced on disk, this names the new binary, which /proc/self/exe
/// would not.
static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Remember the binary's path for upgrades (call early in main).
pub fn remember_exe() {
    let from_args = std::env::args_os().next().map(PathBuf::from);
    let resolved = from_args.and_then(|p| {
        if p.components().count() > 1 {
            std::fs::canonicalize(&p).ok()
        } else {
            None
        }
    });
    let exe = resolved.or_else(|| std::env::current_exe().ok());
    if let Some(e) = exe {
        let _ = EXE.set(e);
    }
}

/// Read, validate and start `path` as the next generation. On any error
/// nothing changes.
fn reload(
    ctl: &mut Control,
    cur: &Generation,
    path: &std::path::Path,
) -> Result<Generation, Error> {
    let next = Config::load(path)?;
    if next.admin != cur.cfg.admin {
        tracing::warn!("reload: a changed [admin] listen address takes effect after a restart");
    }
    if next.access_log.as_ref().map(|a| (&a.path, a.format))
        != cur.cfg.access_log.as_ref().map(|a| (&a.path, a.format))
    {
        tracing::warn!("reload: a changed [access_log] takes effect after a restart");
    }
    if next.log_level != cur.cfg.log_level {
        tracing::warn!(
            "reload: a changed [log] level takes effect after a restart (RINGLB_LOG too)"
        );
    }
    start_generation(ctl, next, false)
}

/// Size the budget, bind (or reuse) the sockets and start one worker per core.
fn start_generation(ctl: &mut Control, mut cfg: Config, first: bool) -> Result<Generation, Error> {
    let cores = ctl.cores.clone();
    let workers = cfg.runtime.workers.unwrap_or(cores.len().max(1));
    let budget = apply_fd_budget(&mut cfg, workers);
    let driver = choose_driver(cfg.runtime.io_uring)?;
    let splice_ok = sys::splice_works();
    if !splice_ok {
        if first {
            tracing::warn!("splice(2) does not work here; L4 listeners will copy");
        }
        for l in &mut cfg.listeners {
            l.transfer = Transfer::Copy;
        }
    }

    // Sockets: reuse those of listeners whose address is unchanged, bind the
    // others now (before any thread starts, so "address in use" is one clear
    // error and, on a reload, nothing has changed yet).
    let mut fresh: Sockets = HashMap::new();
    for l in &cfg.listeners {
        let have = ctl.sockets.get(&l.listen).map_or(0, Vec::len);
        if have >= workers {
            continue;
        }
        let bound = if have == 0 {
            listen::sockets::bind_all(l.listen, l.backlog, workers)
        } else {
            let at = ctl.sockets[&l.listen][0].local_addr().unwrap_or(l.listen);
            listen::sockets::bind_more(at, l.backlog, workers - have)
        };
        let socks = bound.map_err(|e| Error::Bind {
            name: l.name.clone(),
            addr: l.listen,
            msg: e.to_string(),
        })?;
        fresh.insert(l.listen, socks);
    }
    // Committed: from here on the new sockets belong to the control thread.
    for (addr, socks) in fresh {
        ctl.sockets.entry(addr).or_default().extend(socks);
    }

    let mut per_worker: Vec<Vec<Vec<std::net::TcpListener>>> =
        (0..workers).map(|_| Vec::new()).collect();
    let mut bound_addrs = Vec::with_capacity(cfg.listeners.len());
    for l in &cfg.listeners {
        let socks = &ctl.sockets[&l.listen];
        let bound = socks
            .first()
            .and_then(|s| s.local_addr().ok())
            .unwrap_or(l.listen);
        tracing::info!(
            "listener {:?} listening on {bound} ({}, {} SO_REUSEPORT sockets, max_connections {})",
            l.name,
            match l.mode {
                crate::config::Mode::Tcp => "tcp",
                crate::config::Mode::Http => "http",
            },
            socks.len(),
            l.max_connections
        );
        bound_addrs.push(bound);
        for w in per_worker.iter_mut() {
            w.push(Vec::new());
        }
        // Worker w takes sockets w, w + N, ...: every socket has an owner even
        // when there are more sockets than workers (no queue is orphaned).
        for (i, s) in socks.iter().enumerate() {
            let dup = s
                .try_clone()
                .map_err(|e| Error::Startup(format!("cannot duplicate a listening socket: {e}")))?;
            if let Some(slot) = per_worker[i % workers].last_mut() {
                slot.push(dup);
            }
        }
    }
    // A listener kept by a reload (same name, limit and worker count) keeps
    // its limiter: connections still held by the old workers count against
    // the same max_connections.
    let limiters: Vec<Arc<Limiter>> = cfg
        .listeners
        .iter()
        .map(|l| {
            let key = (l.name.clone(), l.max_connections, workers);
            match ctl.limiters.iter().find(|(k, _)| *k == key) {
                Some((_, lim)) => Arc::clone(lim),
                None => Limiter::new(l.max_connections, workers),
            }
        })
        .collect();

    let cfg = Arc::new(cfg);
    // Backend health, circuit breakers and limits: one state for the process.
    let shared = crate::backends::Shared::carry_over(&cfg, ctl.shared.as_deref());
    let limits = crate::limits::Limits::new(&cfg);
    let health_stop = Arc::new(AtomicBool::new(false));
    crate::backends::spawn_checker(&cfg, Arc::clone(&shared), Arc::clone(&health_stop))
        .map_err(|e| Error::Startup(format!("cannot start the health-check thread: {e}")))?;
    let worker_metrics: Vec<Arc<crate::metrics::WorkerMetrics>> = (0..workers)
        .map(|_| crate::metrics::WorkerMetrics::new(&cfg))
        .collect();
    let registry = Arc::new(crate::metrics::Registry {
        cfg: Arc::clone(&cfg),
        shared: Arc::clone(&shared),
        workers: worker_metrics.clone(),
        access_dropped: Arc::clone(&ctl.access_dropped),
        bound: bound_addrs,
    });

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
            limits: Arc::clone(&limits),
            metrics: Arc::clone(&worker_metrics[index]),
            access: ctl.access.clone(),
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
                health_stop.store(true, Ordering::Relaxed);
                stop_all(stops, Duration::ZERO);
                return Err(Error::Startup(msg));
            }
            Err(_) => {
                health_stop.store(true, Ordering::Relaxed);
                stop_all(stops, Duration::ZERO);
                return Err(Error::Startup("a worker did not start within 10s".into()));
            }
        }
    }
    pinned.sort_unstable();
    // Committed. Sockets of listeners no longer configured close when the
    // old generation's workers let go of their duplicates.
    let wanted: std::collections::HashSet<SocketAddr> =
        cfg.listeners.iter().map(|l| l.listen).collect();
    ctl.sockets.retain(|a, _| wanted.contains(a));
    ctl.shared = Some(Arc::clone(&shared));
    ctl.limiters = cfg
        .listeners
        .iter()
        .zip(&limiters)
        .map(|(l, lim)| {
            (
                (l.name.clone(), l.max_connections, workers),
                Arc::clone(lim),
            )
        })
        .collect();
    let chosen = if drivers.iter().all(|d| *d == Driver::IoUring) {
        format!("io_uring (taskrun={})", taskrun.unwrap_or(TaskRun::Default))
    } else if drivers.iter().all(|d| *d == Driver::Epoll) {
        "epoll".to_string()
    } else {
        "mixed io_uring/epoll".to_string()
    };
    let report = format!(
        "ringlb {} ready: driver={chosen} splice={} workers={workers} pinned_cores={:?} fd_limit={} (hard {}) connection_budget={} ring_entries={}",
        env!("CARGO_PKG_VERSION"),
        if splice_ok { "yes" } else { "no" },
        pinned,
        budget.soft,
        budget.hard,
        budget.connections,
        cfg.runtime.ring_entries,
    );
    Ok(Generation {
        cfg,
        stops,
        handles,
        health_stop,
        registry,
        report,
    })
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
