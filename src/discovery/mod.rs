//! The discovery thread: one per configuration generation, beside the
//! health checker, off the workers. It follows each upstream's `discovery`
//! source (a file, stat'ed every 100 ms and read when it changed; DNS names
//! resolved every `interval`) and publishes each new list through the
//! backend-set seam ([`Upstream::apply`]): workers see it at their next
//! pick, backends that stay keep their health and circuit state, removed
//! ones take no new connections while their own finish, and no thread is
//! started and no connection dropped.
//!
//! Safety: a source that fails keeps the last set (and says so in the log,
//! the metrics and `/status`); an empty list is applied only with
//! `allow_empty`; a list that removes more than `max_remove` of the
//! discovered backends at once is refused with a warning.

pub mod register;

use std::{
    collections::HashSet,
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    backends::{set::unix_ms, set::DiscoveryState, Update, Upstream, Upstreams},
    config::{
        fetch_discovered, fetch_with_ttl, zk_connect, zk_list, Config, DiscoveryConfig,
        ServerConfig, Source,
    },
};

/// How often files are looked at (and the stop flag).
const POLL: Duration = Duration::from_millis(100);

/// A file's identity and version, as stat says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(p: &std::path::Path) -> Result<Stamp, String> {
    let m = std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    Ok(Stamp {
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

struct Plan {
    up: Arc<Upstream>,
    d: DiscoveryConfig,
    /// Files: what was read last; `None` reads at the first poll.
    seen: Option<Stamp>,
    /// DNS: when to resolve next.
    next: Instant,
    /// Called after a change is applied (the fd budget follows the sizes).
    on_change: Arc<dyn Fn() + Send + Sync>,
}

/// Start the discovery thread for a generation's upstreams (none when no
/// upstream has a source). It stops when `stop` is set.
///
/// # Errors
/// The thread could not be started.
pub fn spawn(
    cfg: &Config,
    upstreams: &Upstreams,
    stop: Arc<AtomicBool>,
    on_change: Arc<dyn Fn() + Send + Sync>,
) -> std::io::Result<()> {
    let mut plans: Vec<Plan> = cfg
        .upstreams
        .iter()
        .zip(upstreams.all.iter())
        .filter_map(|(u, up)| {
            let d = u.discovery.clone()?;
            Some(Plan {
                up: Arc::clone(up),
                // At once: the set the config started with may be one a
                // reload or an upgrade carried over.
                next: Instant::now(),
                d,
                seen: None,
                on_change: Arc::clone(&on_change),
            })
        })
        .collect();
    // ZooKeeper sources: a thread each, blocked on the session's events.
    let (zk, polled): (Vec<Plan>, Vec<Plan>) = plans
        .drain(..)
        .partition(|p| matches!(p.d.source, Source::ZooKeeper { .. }));
    plans = polled;
    for mut p in zk {
        let stop = Arc::clone(&stop);
        thread::Builder::new()
            .name("ringlb-zk".into())
            .spawn(move || futures_lite::future::block_on(zk_follow(&mut p, &stop)))?;
    }
    if plans.is_empty() {
        return Ok(());
    }
    thread::Builder::new()
        .name("ringlb-discovery".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for p in &mut plans {
                    p.poll();
                }
                thread::sleep(POLL);
            }
        })
        .map(|_| ())
}

impl Plan {
    fn state(&self) -> Option<&Mutex<DiscoveryState>> {
        self.up.discovery.as_ref()
    }

    fn with_state(&self, f: impl FnOnce(&mut DiscoveryState)) {
        if let Some(s) = self.state() {
            f(&mut s.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    fn poll(&mut self) {
        let list = match &self.d.source {
            Source::File(path) => match stamp(path) {
                Ok(st) if Some(st) == self.seen => return,
                Ok(st) => {
                    let r = fetch_discovered(&self.d);
                    if stamp(path).ok() != Some(st) {
                        // Written while we read it (a writer that truncates
                        // and then writes, not a rename): read it again at
                        // the next poll rather than offer half a list.
                        return;
                    }
                    // A list that failed to parse is read again only when
                    // the file changes again.
                    self.seen = Some(st);
                    r
                }
                Err(e) => {
                    self.seen = None;
                    Err(e)
                }
            },
            // Followed by its own thread ([`zk_follow`]).
            Source::ZooKeeper { .. } => return,
            Source::Dns { .. } => {
                let now = Instant::now();
                if now < self.next {
                    return;
                }
                // Again at the interval, or sooner when the answer's TTL
                // runs out first (but not more than once a second).
                match fetch_with_ttl(&self.d) {
                    Ok((list, ttl)) => {
                        let wait = ttl.map_or(self.d.interval, |t| {
                            t.max(Duration::from_secs(1)).min(self.d.interval)
                        });
                        self.next = now + wait;
                        Ok(list)
                    }
                    Err(e) => {
                        self.next = now + self.d.interval;
                        Err(e)
                    }
                }
            }
        };
        match list {
            Ok(list) => self.offer(list),
            Err(e) => self.failed(e),
        }
    }

    /// The source failed: the last set stays.
    fn failed(&self, e: String) {
        let name = self.up.name.clone();
        self.with_state(|s| {
            s.errors += 1;
            if s.last_error.as_deref() != Some(&e) {
                tracing::warn!(upstream = %name, "discovery: {e}; keeping the last set ({} backends)", s.listed.len());
            }
            s.last_error = Some(e);
        });
    }

    /// A list read from the source: applied, or refused by the safety rules.
    fn offer(&mut self, list: Vec<ServerConfig>) {
        let Some(state) = self.state() else { return };
        // Held over the whole change: a reload that changes the static
        // servers at the same time applies before or after, never between.
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        let statics: HashSet<SocketAddr> = s.statics.iter().map(|s| s.addr).collect();
        let current: HashSet<SocketAddr> = self
            .up
            .current()
            .members
            .iter()
            .map(|m| m.backend.addr)
            .filter(|a| !statics.contains(a))
            .collect();
        let listed: HashSet<SocketAddr> = list.iter().map(|s| s.addr).collect();
        let removed = current.difference(&listed).count();
        let refusal = if list.is_empty() && !current.is_empty() && !self.d.allow_empty {
            Some(format!(
                "{} lists no backend; keeping the last {} (allow_empty = false)",
                self.d.describe(),
                current.len()
            ))
        } else if !current.is_empty() && removed as f64 / current.len() as f64 > self.d.max_remove {
            Some(format!(
                "{} would remove {removed} of {} backends at once, over max_remove = {}; keeping the last set",
                self.d.describe(),
                current.len(),
                self.d.max_remove
            ))
        } else {
            None
        };
        let name = &self.up.name;
        if let Some(why) = refusal {
            s.refused += 1;
            if s.last_error.as_deref() != Some(&why) {
                tracing::warn!(upstream = %name, "discovery: {why}");
            }
            s.last_error = Some(why);
            return;
        }
        let added = listed.difference(&current).count();
        let mut full = s.statics.clone();
        full.extend(list.iter().filter(|s| !statics.contains(&s.addr)).cloned());
        let before = self.up.version();
        let v = self.up.apply(Update::Reset(full));
        if v != before {
            tracing::info!(upstream = %name, "discovery: backend set version {v} from {} ({} backends: {added} added, {removed} removed)", self.d.describe(), list.len());
        }
        s.updates += 1;
        s.last_ok_ms = unix_ms();
        s.last_error = None;
        s.listed = list;
        drop(s);
        if v != before {
            (self.on_change)();
        }
    }
}

/// What ended a wait on a ZooKeeper session.
enum ZkWake {
    /// A node under the path changed, or (a session event) the session
    /// ended: the watcher must not be asked again then (the client
    /// library panics on a watcher whose session is gone).
    Node(zookeeper_client::WatchedEvent),
    /// The session moved to this state.
    Session(zookeeper_client::SessionState),
    /// Nothing for a while: look at the stop flag.
    Tick,
}

async fn pause(d: Duration) {
    async_io::Timer::after(d).await;
}

/// Follow a ZooKeeper source: a session with a persistent recursive watch
/// on the path; every change under it lists the children again. A lost
/// session (expired, or the ensemble unreachable) keeps the last set and
/// reconnects with back-off (100 ms doubling to 5 s).
async fn zk_follow(p: &mut Plan, stop: &AtomicBool) {
    let Source::ZooKeeper { path, .. } = p.d.source.clone() else {
        return;
    };
    let mut backoff = Duration::from_millis(100);
    while !stop.load(Ordering::Relaxed) {
        let client = match zk_connect(&p.d).await {
            Ok(c) => c,
            Err(e) => {
                p.failed(e);
                pause(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut watcher = match client
            .watch(&path, zookeeper_client::AddWatchMode::PersistentRecursive)
            .await
        {
            Ok(w) => w,
            Err(e) => {
                p.failed(format!("zookeeper watch {path}: {e}"));
                pause(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut state = client.state_watcher();
        let mut dirty = true;
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if dirty {
                dirty = false;
                match zk_list(&client, &path).await {
                    Ok(list) => p.offer(list),
                    Err(e) => p.failed(e),
                }
            }
            let node = async { ZkWake::Node(watcher.changed().await) };
            let session = async { ZkWake::Session(state.changed().await) };
            let tick = async {
                pause(Duration::from_millis(200)).await;
                ZkWake::Tick
            };
            match futures_lite::future::or(node, futures_lite::future::or(session, tick)).await {
                ZkWake::Node(ev) if ev.event_type == zookeeper_client::EventType::Session => {
                    if ev.session_state.is_terminated() {
                        p.failed(format!(
                            "zookeeper session {}; reconnecting",
                            ev.session_state
                        ));
                        break;
                    }
                    dirty = true;
                }
                ZkWake::Node(_) => {
                    // A burst (a deploy registering many nodes) becomes one list.
                    pause(Duration::from_millis(20)).await;
                    dirty = true;
                }
                ZkWake::Session(s) if s.is_terminated() => {
                    p.failed(format!("zookeeper session {s}; reconnecting"));
                    break;
                }
                ZkWake::Session(zookeeper_client::SessionState::Disconnected) => {
                    p.failed("zookeeper disconnected; keeping the last set".to_string());
                }
                // Connected again within the session: changes may have
                // been missed while away.
                ZkWake::Session(_) => dirty = true,
                ZkWake::Tick => {}
            }
        }
    }
}
