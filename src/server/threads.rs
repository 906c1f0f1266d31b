//! Driver and thread setup: which monoio driver workers run (io_uring or
//! epoll), how io_uring completions are delivered (task-run modes), and the
//! worker thread itself: pin to its core, build the runtime, report ready,
//! run the worker.

use std::sync::mpsc;

use crate::{config::IoUringMode, Error};

use super::worker;

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

/// How io_uring completions are delivered to the worker thread.
///
/// By default the kernel runs completion work with a signal-like
/// interruption of the task (TWA_SIGNAL) the moment it is ready: on a busy
/// proxy that is one forced kernel entry and exit per completion. DEFER_TASKRUN
/// (Linux 6.1+, needs SINGLE_ISSUER) runs it only when the worker asks for
/// events; COOP_TASKRUN (5.19+) runs it at the next natural kernel transition.
/// Measured here (wrk c64 through a tcp listener): proxy CPU per request 3.5 -> 1.7
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

/// A worker that started: where it is pinned and what it runs.
#[derive(Debug, Clone, Copy)]
pub(super) struct WorkerReady {
    /// The core it is pinned to, if pinning was asked for and worked.
    pub pinned_core: Option<usize>,
    pub driver: Driver,
    /// The io_uring task-run mode (None on epoll).
    pub taskrun: Option<TaskRun>,
}

/// Where a worker thread reports it started (or why it could not).
pub(super) type Ready = mpsc::Sender<Result<WorkerReady, String>>;

/// Report a worker that registered its sockets (or why it could not); the
/// sender is consumed, so it is not held while the worker runs.
fn report(
    ready: Ready,
    index: usize,
    result: Result<(), String>,
    pinned_core: Option<usize>,
    driver: Driver,
    taskrun: Option<TaskRun>,
) {
    let _ = ready.send(match result {
        Ok(()) => Ok(WorkerReady {
            pinned_core,
            driver,
            taskrun,
        }),
        Err(e) => Err(format!("worker {index}: {e}")),
    });
}

/// The body of worker thread `spec.index`: pin it to `core`, build a runtime
/// (io_uring with the best task-run mode that works, else epoll unless
/// io_uring is `required`), report on `ready`, then run the worker.
pub(super) fn worker_thread(
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
                    rt.block_on(worker::run(spec, |r| {
                        report(ready, index, r, pinned, Driver::IoUring, Some(mode))
                    }));
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
            rt.block_on(worker::run(spec, |r| {
                report(ready, index, r, pinned, Driver::Epoll, None)
            }));
        }
        Err(e) => {
            let _ = ready.send(Err(format!(
                "worker {index}: cannot start the epoll runtime: {e}"
            )));
        }
    }
}
