//! `[register]`: this process's ephemeral node in ZooKeeper, so operators
//! see the fleet (`ls /ringlb/fleet`). One thread for the process (not per
//! generation): it holds a session, creates `{path}/{name}-{pid}-{seq}`
//! with what this box serves (JSON), creates another after a lost session, and
//! deletes it when the process stops accepting (a drain or an upgrade's
//! hand-over), so the box leaves the listing at once rather than when its
//! session expires.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use zookeeper_client::{Acls, CreateMode};

use crate::config::{zk_connect, RegisterConfig};

/// The registration thread; [`Registration::stop`] removes the node.
pub struct Registration {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<()>,
}

/// How long one ZooKeeper operation may take before it counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(3);

async fn bounded<T>(
    what: &str,
    op: impl std::future::Future<Output = Result<T, zookeeper_client::Error>>,
) -> Result<T, String> {
    futures_lite::future::or(
        async { op.await.map_err(|e| format!("{what}: {e}")) },
        async {
            async_io::Timer::after(OP_TIMEOUT).await;
            Err(format!("{what}: no answer within {OP_TIMEOUT:?}"))
        },
    )
    .await
}

/// Start registering `data` (the box's description) under `cfg`.
///
/// # Errors
/// The thread could not be started.
pub fn start(cfg: &RegisterConfig, data: String) -> std::io::Result<Registration> {
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = cfg.clone();
    let flag = Arc::clone(&stop);
    let handle = thread::Builder::new()
        .name("ringlb-register".into())
        .spawn(move || futures_lite::future::block_on(run(&cfg, data.as_bytes(), &flag)))?;
    Ok(Registration { stop, handle })
}

impl Registration {
    /// Delete the node and end the session (bounded: at most 3 s when
    /// ZooKeeper does not answer; the node then goes with the session).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
    }
}

/// Wait for `d`, or less when `stop` is set.
async fn nap(d: Duration, stop: &AtomicBool) {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let t = left.min(step);
        async_io::Timer::after(t).await;
        left -= t;
    }
}

/// `fut`, unless `stop` is set first.
async fn unless_stopped<T>(
    stop: &AtomicBool,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        while !stop.load(Ordering::Relaxed) {
            async_io::Timer::after(Duration::from_millis(100)).await;
        }
        None
    })
    .await
}

async fn run(cfg: &RegisterConfig, data: &[u8], stop: &AtomicBool) {
    // Sequential: every node this process creates has a name of its own, so
    // a new session never has to remove an old one (which could be another
    // box's with the same name and pid, in containers); a node of a lost
    // session goes when that session expires.
    let prefix = format!(
        "{}/{}-{}-",
        cfg.path.trim_end_matches('/'),
        cfg.name,
        std::process::id()
    );
    // With digest auth only this identity may change the node.
    let acls = match &cfg.zk.source {
        crate::config::Source::ZooKeeper {
            digest: Some(_), ..
        } => Acls::creator_all(),
        _ => Acls::anyone_all(),
    };
    let mut backoff = Duration::from_millis(100);
    let mut last_error = String::new();
    while !stop.load(Ordering::Relaxed) {
        let attempt = async {
            let client = zk_connect(&cfg.zk).await?;
            bounded(
                &format!("zookeeper mkdir {}", cfg.path),
                client.mkdir(
                    &cfg.path,
                    &CreateMode::Persistent.with_acls(Acls::anyone_all()),
                ),
            )
            .await?;
            let (_, seq) = bounded(
                &format!("zookeeper create {prefix}"),
                client.create(
                    &prefix,
                    data,
                    &CreateMode::EphemeralSequential.with_acls(acls),
                ),
            )
            .await?;
            Ok::<_, String>((client, format!("{prefix}{seq}")))
        };
        let (client, node) = match unless_stopped(stop, attempt).await {
            None => return,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                if e != last_error {
                    tracing::warn!("register: {e}; trying again");
                    last_error = e;
                }
                nap(backoff, stop).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        last_error.clear();
        tracing::info!("registered as {node} in zookeeper {}", cfg.zk.describe());
        let mut state = client.state_watcher();
        loop {
            if stop.load(Ordering::Relaxed) {
                if let Err(e) = bounded(
                    &format!("zookeeper delete {node}"),
                    client.delete(&node, None),
                )
                .await
                {
                    tracing::warn!(
                        "register: cannot delete {node} ({e}); it goes with the session"
                    );
                }
                return;
            }
            let session = async { Some(state.changed().await) };
            let tick = async {
                async_io::Timer::after(Duration::from_millis(100)).await;
                None
            };
            match futures_lite::future::or(session, tick).await {
                Some(s) if s.is_terminated() => {
                    tracing::warn!(
                        "register: zookeeper session {s}, {node} is gone; registering again"
                    );
                    break;
                }
                _ => {}
            }
        }
    }
}
