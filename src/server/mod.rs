//! Process start-up and control: the signal loop on the main thread and the
//! process-wide pieces (`Control`) that outlive a generation of workers.
//! SIGHUP reloads the config file, SIGUSR1 reopens the access log, SIGUSR2
//! hands over to a new binary, a stop signal drains (a second one exits).
//!
//! The rest lives beside it: `generation` starts and reloads a set of
//! workers, `fd_budget` sizes RLIMIT_NOFILE and the connection caps,
//! `threads` picks the driver and runs a worker thread, `upgrade` does the
//! binary upgrade and the pid file, [`worker`] is one worker's task.

mod fd_budget;
mod generation;
mod threads;
mod upgrade;
pub mod worker;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, RwLock,
    },
    thread,
};

pub use fd_budget::{apply_fd_budget, Budget};
pub use threads::{choose_driver, Driver, TaskRun};
pub use upgrade::remember_exe;

use crate::{config::Config, listen::limiter::Limiter, sys, Error};
use generation::{reload, start_generation, stop_all, LimiterKey, Reloaded, Sockets};
pub use upgrade::Inherited;
use upgrade::{remove_pid_file, upgrade, write_pid_file};

/// Start everything and block until a stop signal and the drain are done.
/// Without a config path, SIGHUP cannot reload.
///
/// # Errors
/// Bind failures, io_uring required but missing, threads that cannot start.
pub fn run(cfg: Config) -> Result<(), Error> {
    run_with(cfg, None, Inherited::adopt())
}

/// Process-wide pieces that outlive a generation.
struct Control {
    cores: Vec<core_affinity::CoreId>,
    access: Option<crate::metrics::access::AccessLog>,
    access_dropped: Arc<std::sync::atomic::AtomicU64>,
    sockets: Sockets,
    /// The current generation's backend state (a reload carries it over).
    upstreams: Option<Arc<crate::backends::Upstreams>>,
    /// The current generation's config and its rate limits and per-IP
    /// counters (a reload keeps those of unchanged listeners and routes).
    limits: Option<(Arc<Config>, Arc<crate::limits::Limits>)>,
    /// The current generation's listener limiters, by listener, capped
    /// `max_connections` and worker count (a reload carries them over).
    limiters: Vec<(LimiterKey, Arc<Limiter>)>,
}

/// What this box's registration node says: who it is and what it serves.
fn describe_box(gen: &generation::Generation, admin: Option<std::net::SocketAddr>) -> String {
    let listeners: Vec<serde_json::Value> = gen
        .cfg
        .listeners
        .iter()
        .zip(&gen.registry.bound)
        .map(|(l, addr)| {
            serde_json::json!({
                "name": l.name,
                "mode": format!("{:?}", l.mode).to_ascii_lowercase(),
                "listen": addr.to_string(),
            })
        })
        .collect();
    serde_json::json!({
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "started_ms": crate::backends::set::unix_ms(),
        "listeners": listeners,
        "admin": admin.map(|a| a.to_string()),
    })
    .to_string()
}

/// Like [`run`]; with `path`, SIGHUP re-reads and applies that file.
///
/// # Errors
/// As [`run`].
pub fn run_with(cfg: Config, path: Option<PathBuf>, inherited: Inherited) -> Result<(), Error> {
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
        upstreams: None,
        limits: None,
        limiters: Vec::new(),
    };
    // Sockets handed over by a previous ringlb (upgrade) or systemd (socket
    // activation): they become this process's listening sockets, so the
    // port never closes and queued connections are not reset.
    let Inherited {
        listeners: inherited,
        upgrade: upgrade_fd,
        ..
    } = inherited;
    if !inherited.is_empty() {
        let n = inherited.len();
        for (key, sock) in inherited {
            if cfg
                .listeners
                .iter()
                .any(|l| crate::listen::sockets::BindKey::of(l) == key)
            {
                ctl.sockets.entry(key).or_default().push(sock);
            } else {
                tracing::warn!("inherited listening socket {key} matches no listener; closing it");
            }
        }
        tracing::info!("took over {n} listening socket(s)");
    }
    let mut gen = start_generation(&mut ctl, cfg, true)?;
    let registry_slot = Arc::new(RwLock::new(Arc::clone(&gen.registry)));
    let admin_stop = Arc::new(AtomicBool::new(false));
    let mut admin_bound = None;
    if let Some(addr) = gen.cfg.admin {
        let bound = crate::admin::start(addr, Arc::clone(&registry_slot), Arc::clone(&admin_stop))
            .map_err(|e| Error::Bind {
                name: "admin".into(),
                addr,
                msg: e.to_string(),
            })?;
        tracing::info!("admin listening on {bound} (/healthz /readyz /metrics /status)");
        admin_bound = Some(bound);
    }
    tracing::info!("{}", gen.report);
    let registration = match &gen.cfg.register {
        None => None,
        Some(r) => Some(
            crate::discovery::register::start(r, describe_box(&gen, admin_bound)).map_err(|e| {
                Error::Startup(format!("cannot start the registration thread: {e}"))
            })?,
        ),
    };
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
                    Ok(Reloaded::InPlace { cfg, changed }) => {
                        // The workers keep the config they started with:
                        // only its server lists are stale, and nothing
                        // reads those after start (replicas follow the sets).
                        gen.cfg = cfg;
                        tracing::info!(
                            "configuration reloaded from {}: backends updated in place, no new workers ({})",
                            path.display(),
                            if changed.is_empty() {
                                "nothing changed".to_string()
                            } else {
                                changed.join("; ")
                            }
                        );
                    }
                    Ok(Reloaded::Generation(next)) => {
                        let old = std::mem::replace(&mut gen, next);
                        *registry_slot.write().unwrap_or_else(|e| e.into_inner()) =
                            Arc::clone(&gen.registry);
                        // The old workers stop accepting and finish what they hold.
                        let grace = old.cfg.runtime.shutdown_timeout;
                        old.health_stop.store(true, Ordering::Relaxed);
                        stop_all(old.stops, grace, false);
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
                let sets = gen.registry.upstreams.known_sets();
                match upgrade(&ctl.sockets, &sets) {
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
    stop_all(gen.stops, grace, !upgraded);
    if !upgraded {
        // The workers accept what is queued and then close their copies;
        // with ours closed too, the listening sockets go away and later
        // clients are refused at once (under socket activation systemd
        // keeps its copy, and they wait for the next process). An upgrade
        // keeps ours until exit: the new process accepts from them.
        ctl.sockets.clear();
    }
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
    // No new connections here any more: out of the fleet listing at once
    // (bounded; a second stop signal still exits meanwhile).
    if let Some(r) = registration {
        r.stop();
    }
    for h in gen.handles.into_iter().chain(draining) {
        let _ = h.join();
    }
    if !upgraded {
        remove_pid_file(&gen.cfg);
    }
    tracing::info!("all workers stopped");
    Ok(())
}
