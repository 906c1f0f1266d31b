//! A generation: one set of workers running one config. Starting one sizes
//! the fd budget, binds (or reuses) the listening sockets, carries the
//! listener limiters and the backend state over from the generation before,
//! and waits until every worker runs; a reload starts the next one.

use std::{
    collections::HashMap,
    sync::{atomic::AtomicBool, mpsc, Arc},
    thread,
    time::Duration,
};

use futures_channel::oneshot;

use crate::{
    config::{Config, IoUringMode},
    listen::{
        self,
        drain::Stop,
        limiter::Limiter,
        sockets::{BindKey, Listening},
    },
    sys, Error,
};

use super::{
    apply_fd_budget, choose_driver,
    threads::{worker_thread, Driver, TaskRun, WorkerReady},
    worker, Control,
};

/// The listening sockets the control thread keeps, by listener address as
/// configured. Workers get duplicates; because these originals stay open, a
/// reload hands the very same sockets (and their queued connections) to the
/// next generation of workers.
pub(super) type Sockets = HashMap<BindKey, Vec<Listening>>;

/// One set of workers running one config.
pub(super) struct Generation {
    pub cfg: Arc<Config>,
    pub stops: Vec<oneshot::Sender<Stop>>,
    pub handles: Vec<thread::JoinHandle<()>>,
    pub health_stop: Arc<AtomicBool>,
    pub registry: Arc<crate::metrics::Registry>,
    /// The "ringlb ... ready: driver=..." line.
    pub report: String,
}

/// What a listener's limiter is kept by across a reload: a listener with
/// the same name keeps its limiter, whatever the worker count (its waiters
/// are a list, not one slot per worker) and whatever its new cap (set when
/// the generation commits: the connections the old workers still hold
/// count against it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LimiterKey {
    pub listener: String,
    pub max_connections: usize,
}

/// Read, validate and start `path` as the next generation. On any error
/// nothing changes.
/// What a reload did.
pub(super) enum Reloaded {
    /// Only upstream server lists (addresses, weights, flags) changed: each
    /// upstream published a new backend-set version and the running
    /// workers follow it at their next pick. No thread started.
    InPlace {
        cfg: Arc<Config>,
        /// One line per upstream that changed.
        changed: Vec<String>,
    },
    /// Anything else: a new generation of workers took over.
    Generation(Generation),
}

/// True when `a` and `b` differ at most in their upstreams' `servers`.
/// Compared through `Debug`, which every config type derives over all of
/// its fields: a key added later is compared too, without a hand-written
/// comparison to forget it.
fn only_servers_differ(a: &Config, b: &Config) -> bool {
    let without_servers = |c: &Config| {
        let mut c = c.clone();
        for u in &mut c.upstreams {
            u.servers.clear();
            u.static_servers.clear();
            u.discovered.clear();
        }
        format!("{c:?}")
    };
    without_servers(a) == without_servers(b)
}

pub(super) fn reload(
    ctl: &mut Control,
    cur: &Generation,
    path: &std::path::Path,
) -> Result<Reloaded, Error> {
    // Discovered upstreams keep their running sets: no source is asked
    // again (no gap, and a registry that is down does not block or fail
    // the reload); the next generation's discovery follows on from them.
    let next = Config::load_seeded(path, &cur.registry.upstreams.known_sets())?;
    if only_servers_differ(&cur.cfg, &next) {
        // More servers can mean more pooled keep-alive fds: the budget is
        // sized again and the listeners' limiters follow its caps.
        let budget = apply_fd_budget(&next, cur.registry.workers.len());
        for ((key, limiter), &cap) in ctl.limiters.iter_mut().zip(&budget.caps) {
            limiter.set_max(cap);
            key.max_connections = cap;
        }
        let mut changed = Vec::new();
        for (up, new) in cur.registry.upstreams.all.iter().zip(&next.upstreams) {
            let before = up.version();
            let v = up.set_statics(&new.static_servers);
            if v != before {
                changed.push(format!(
                    "upstream {:?}: backend set version {v} ({} servers)",
                    up.name,
                    up.current().len()
                ));
            }
        }
        return Ok(Reloaded::InPlace {
            cfg: Arc::new(next),
            changed,
        });
    }
    if next.register != cur.cfg.register {
        tracing::warn!("reload: a changed [register] takes effect after a restart");
    }
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
    start_generation(ctl, next, false).map(Reloaded::Generation)
}

/// Size the budget, bind (or reuse) the sockets and start one worker per core.
pub(super) fn start_generation(
    ctl: &mut Control,
    cfg: Config,
    first: bool,
) -> Result<Generation, Error> {
    let cores = ctl.cores.clone();
    let workers = cfg.runtime.workers.unwrap_or(cores.len().max(1));
    let budget = apply_fd_budget(&cfg, workers);
    let driver = choose_driver(cfg.runtime.io_uring)?;
    let splice_ok = sys::splice_works();
    // TLS: certificates and keys built before anything else changes, so a
    // bad file fails the start (or the reload) with nothing touched. One
    // configuration per listener for every worker: sessions resume on any.
    let as_config_error = |err| {
        Error::Config(crate::config::LoadError {
            file: "(config)".to_string(),
            err,
        })
    };
    let tls = crate::tls::listener_configs(&cfg).map_err(as_config_error)?;
    let upstream_tls = crate::tls::upstream_configs(&cfg).map_err(as_config_error)?;
    // Without splice(2) the workers make every listener copy (see
    // `WorkerSpec::splice_ok`); the config stays as validated.
    if !splice_ok && first {
        tracing::warn!("splice(2) does not work here; tcp listeners will copy");
    }

    // Sockets: reuse those of listeners whose address is unchanged, bind the
    // others now (before any thread starts, so "address in use" is one clear
    // error and, on a reload, nothing has changed yet).
    let mut fresh: Sockets = HashMap::new();
    for l in &cfg.listeners {
        let key = BindKey::of(l);
        let have = ctl.sockets.get(&key).map_or(0, Vec::len);
        if have >= workers {
            continue;
        }
        let at = match ctl.sockets.get(&key).and_then(|s| s.first()) {
            Some(s) => s.local_addr().unwrap_or(l.listen),
            None => l.listen,
        };
        let bound: std::io::Result<Vec<Listening>> = match (l.is_udp(), have) {
            (true, 0) => listen::sockets::bind_udp(l.listen, workers)
                .map(|v| v.into_iter().map(Listening::Udp).collect()),
            // More workers than before: their sockets join the group (a
            // probe would find the port taken, by us).
            (true, _) => (0..workers - have)
                .map(|_| listen::sockets::bind_udp_more(at).map(Listening::Udp))
                .collect(),
            (false, 0) => listen::sockets::bind_all(l.listen, l.backlog, workers)
                .map(|v| v.into_iter().map(Listening::Tcp).collect()),
            (false, _) => listen::sockets::bind_more(at, l.backlog, workers - have)
                .map(|v| v.into_iter().map(Listening::Tcp).collect()),
        };
        let socks = bound.map_err(|e| Error::Bind {
            name: l.name.clone(),
            addr: l.listen,
            msg: e.to_string(),
        })?;
        fresh.insert(key, socks);
    }
    // The new sockets join the control thread's only when the generation
    // commits: a failure below closes them, and the previous state is
    // exactly as it was (no socket left in a SO_REUSEPORT group that
    // nobody accepts on).
    let mut per_worker: Vec<Vec<Vec<Listening>>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound_addrs = Vec::with_capacity(cfg.listeners.len());
    for (l, cap) in cfg.listeners.iter().zip(&budget.caps) {
        let key = BindKey::of(l);
        let socks: Vec<&Listening> = ctl
            .sockets
            .get(&key)
            .into_iter()
            .flatten()
            .chain(fresh.get(&key).into_iter().flatten())
            .collect();
        let bound = socks
            .first()
            .and_then(|s| s.local_addr().ok())
            .unwrap_or(l.listen);
        match &l.udp {
            Some(u) => tracing::info!(
                "listener {:?} listening on {bound} (udp, {} SO_REUSEPORT sockets, max_flows {} per worker)",
                l.name,
                socks.len(),
                u.max_flows
            ),
            None => tracing::info!(
                "listener {:?} listening on {bound} ({}, {} SO_REUSEPORT sockets, max_connections {})",
                l.name,
                l.mode.name(),
                socks.len(),
                cap
            ),
        }
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
    // A listener kept by a reload (same name and capped limit)
    // keeps its limiter: connections still held by the old workers count
    // against the same max_connections.
    let keys: Vec<LimiterKey> = cfg
        .listeners
        .iter()
        .zip(&budget.caps)
        .map(|(l, &cap)| LimiterKey {
            listener: l.name.clone(),
            max_connections: cap,
        })
        .collect();
    let limiters: Vec<Arc<Limiter>> = keys
        .iter()
        .map(|key| {
            match ctl
                .limiters
                .iter()
                .find(|(k, _)| k.listener == key.listener)
            {
                Some((_, lim)) => Arc::clone(lim),
                None => Limiter::new(key.max_connections),
            }
        })
        .collect();

    let cfg = Arc::new(cfg);
    // Backend health, circuit breakers and limits: one state for the process.
    let shared = crate::backends::Upstreams::carry_over(&cfg, ctl.upstreams.as_deref());
    let limits =
        crate::limits::Limits::carry_over(&cfg, ctl.limits.as_ref().map(|(c, l)| (&**c, &**l)));
    let health_stop = Arc::new(AtomicBool::new(false));
    let worker_metrics: Vec<Arc<crate::metrics::WorkerMetrics>> = (0..workers)
        .map(|_| crate::metrics::WorkerMetrics::new(&cfg))
        .collect();
    let registry = Arc::new(crate::metrics::Registry {
        cfg: Arc::clone(&cfg),
        upstreams: Arc::clone(&shared),
        workers: worker_metrics.clone(),
        access_dropped: Arc::clone(&ctl.access_dropped),
        bound: bound_addrs,
        max_connections: limiters.iter().map(|l| l.max_handle()).collect(),
    });

    let (ready_tx, ready_rx) = mpsc::channel::<Result<WorkerReady, String>>();
    let mut stops = Vec::with_capacity(workers);
    let mut starts = Vec::with_capacity(workers);
    let mut handles = Vec::with_capacity(workers);
    for (index, sockets) in per_worker.into_iter().enumerate() {
        let (stop_tx, stop_rx) = oneshot::channel();
        stops.push(stop_tx);
        let (start_tx, start_rx) = oneshot::channel();
        starts.push(start_tx);
        let spec = worker::WorkerSpec {
            index,
            cfg: Arc::clone(&cfg),
            sockets,
            limiters: limiters.clone(),
            upstreams: Arc::clone(&shared),
            limits: Arc::clone(&limits),
            metrics: Arc::clone(&worker_metrics[index]),
            access: ctl.access.clone(),
            start: start_rx,
            shutdown: stop_rx,
            splice_ok,
            tls: tls.clone(),
            upstream_tls: upstream_tls.clone(),
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
            .spawn(move || worker_thread(spec, core, driver, entries, required, ready));
        match h {
            Ok(h) => handles.push(h),
            // Dropping `starts` tells the workers already running to exit.
            Err(e) => return Err(Error::Startup(format!("cannot start worker thread: {e}"))),
        }
    }
    drop(ready_tx);

    let mut pinned = Vec::new();
    let mut drivers = Vec::new();
    let mut taskrun: Option<TaskRun> = None;
    for _ in 0..workers {
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(r)) => {
                pinned.extend(r.pinned_core);
                drivers.push(r.driver);
                taskrun = taskrun.or(r.taskrun);
            }
            // Dropping `starts` tells the workers that did start to exit
            // before they accept anything.
            Ok(Err(msg)) => return Err(Error::Startup(msg)),
            Err(_) => return Err(Error::Startup("a worker did not start within 10s".into())),
        }
    }
    pinned.sort_unstable();
    // The health checker starts only now: one started for a generation that
    // then failed would go on writing verdicts into the shared backend
    // state with the refused settings.
    if let Err(e) = crate::backends::spawn_checker(
        &cfg,
        Arc::clone(&shared),
        Arc::clone(&health_stop),
        &upstream_tls,
    ) {
        return Err(Error::Startup(format!(
            "cannot start the health-check thread: {e}"
        )));
    }
    // Discovery likewise: it writes new sets into the shared state.
    // A source that grows a set grows the keep-alive pools: the fd budget
    // is worked out again and the limiters follow.
    let on_change: Arc<dyn Fn() + Send + Sync> = {
        let (cfg, ups, lims) = (Arc::clone(&cfg), Arc::clone(&shared), limiters.clone());
        let stopped = Arc::clone(&health_stop);
        Arc::new(move || {
            // A generation that was replaced no longer sizes the limiters
            // (the next one shares them).
            if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let members: Vec<usize> = ups.all.iter().map(|u| u.current().len()).collect();
            let now: Vec<usize> = lims.iter().map(|l| l.max()).collect();
            let b = super::fd_budget::rebudget(&cfg, workers, &members, &now);
            for (l, &cap) in lims.iter().zip(&b.caps) {
                l.set_max(cap);
            }
        })
    };
    if let Err(e) = crate::discovery::spawn(&cfg, &shared, Arc::clone(&health_stop), on_change) {
        health_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        return Err(Error::Startup(format!(
            "cannot start the discovery thread: {e}"
        )));
    }
    for s in starts {
        let _ = s.send(());
    }
    for (addr, socks) in fresh {
        ctl.sockets.entry(addr).or_default().extend(socks);
    }
    // Committed. Sockets of listeners no longer configured close when the
    // old generation's workers let go of their duplicates.
    let wanted: std::collections::HashSet<BindKey> =
        cfg.listeners.iter().map(BindKey::of).collect();
    ctl.sockets.retain(|a, _| wanted.contains(a));
    ctl.upstreams = Some(Arc::clone(&shared));
    ctl.limits = Some((Arc::clone(&cfg), Arc::clone(&limits)));
    for (key, lim) in keys.iter().zip(&limiters) {
        lim.set_max(key.max_connections);
    }
    ctl.limiters = keys.into_iter().zip(limiters).collect();
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

/// Tell every worker of a generation to stop, draining for up to `grace`.
/// Tell every worker of a generation to stop; `last`: the process is
/// going away (see [`Stop::last`]).
pub(super) fn stop_all(stops: Vec<oneshot::Sender<Stop>>, grace: Duration, last: bool) {
    for s in stops {
        let _ = s.send(Stop { grace, last });
    }
}

#[cfg(test)]
mod tests {
    use super::only_servers_differ;
    use crate::Config;

    fn cfg(servers: &str, idle: &str) -> Config {
        Config::parse(&format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\nidle_timeout = \"{idle}\"\n[upstream.u]\nservers = [{servers}]\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_server_list_change_is_told_apart_from_any_other() {
        let one = "{ addr = \"127.0.0.1:2\" }";
        let two = "{ addr = \"127.0.0.1:2\", weight = 3 }, { addr = \"127.0.0.1:3\" }";
        assert!(only_servers_differ(&cfg(one, "10s"), &cfg(two, "10s")));
        assert!(only_servers_differ(&cfg(one, "10s"), &cfg(one, "10s")));
        assert!(!only_servers_differ(&cfg(one, "10s"), &cfg(one, "11s")));
        assert!(!only_servers_differ(&cfg(one, "10s"), &cfg(two, "11s")));
    }
}
