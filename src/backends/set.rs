//! Versioned backend sets: what an upstream's backends are right now.
//!
//! An [`Upstream`] holds the current [`BackendSet`] (an immutable
//! snapshot) and its version number. A change (an [`Update`]: the static
//! `servers` list as the first version, a reload that only changes
//! servers, later a discovery source) builds the next snapshot off the data
//! path and publishes it under a short write lock; the version counter is
//! what workers look at: one load per pick (acquire: a plain load on x86),
//! and only a worker that
//! sees a new number takes the read lock to fetch the snapshot and rebuild
//! its replica. Backends that stay keep their `Arc<Backend>` (id, health,
//! circuit, counts); backends that leave are retired (their health check
//! stops) but stay valid for the connections that still hold them.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
};

use super::state::{Backend, BackendId};
use crate::config::{Config, EjectConfig, ServerConfig, UpstreamConfig};

/// Backend ids are unique in the process (across upstreams and reloads).
static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// One member of a set version: the shared backend and its weight in
/// this version.
#[derive(Debug, Clone)]
pub struct Member {
    pub backend: Arc<Backend>,
    pub weight: u32,
}

impl Member {
    /// The member as a server line (what an `Update` would say to keep it).
    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            id: self.backend.name.clone(),
            addr: self.backend.addr,
            weight: self.weight,
            backup: self.backend.backup,
            max_connections: self.backend.max_connections,
        }
    }
}

/// One version of an upstream's backends. Immutable once published.
#[derive(Debug)]
pub struct BackendSet {
    pub version: u64,
    pub members: Vec<Member>,
}

impl BackendSet {
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The index of backend `id` in this version.
    pub fn index_of(&self, id: BackendId) -> Option<usize> {
        self.members.iter().position(|m| m.backend.id == id)
    }
}

/// A change to an upstream's backend set.
#[derive(Debug, Clone)]
pub enum Update {
    /// Replace the whole list (static config, a reload, a full discovery snapshot).
    Reset(Vec<ServerConfig>),
    Add(ServerConfig),
    Remove(SocketAddr),
    Weight(SocketAddr, u32),
}

/// One upstream's backends, shared by all workers (and carried over by a
/// reload for the backends it keeps).
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub(super) eject: Option<EjectConfig>,
    /// As nginx: a lone server is never ejected (nowhere else to go).
    pub(super) ejectable: AtomicBool,
    pub(super) slow_start_ms: u64,
    /// Response statuses that count as a backend failure.
    failure_statuses: Vec<u16>,
    /// http requests waiting for a backend below its max_connections.
    pub queued: AtomicU32,
    version: AtomicU64,
    current: RwLock<Arc<BackendSet>>,
    /// Upstreams with a `discovery` source: how following it goes.
    pub discovery: Option<Mutex<DiscoveryState>>,
}

/// What `/status`, the metrics and `/readyz` know of an upstream's
/// discovery source.
#[derive(Debug, Default, Clone)]
pub struct DiscoveryState {
    /// "file /etc/ringlb/api.servers", "dns api.internal:8080".
    pub source: String,
    /// Lists applied (each a new set version, or the same set confirmed).
    pub updates: u64,
    /// Reads or resolutions that failed (the last set stayed).
    pub errors: u64,
    /// Lists refused by the safety rules (empty, or over max_remove).
    pub refused: u64,
    /// Unix milliseconds of the last list read successfully.
    pub last_ok_ms: u64,
    /// Why the last read failed or was refused; cleared by the next good one.
    pub last_error: Option<String>,
    /// The upstream's own `servers`, kept beside whatever the source lists
    /// (a reload that changes only them updates them here).
    pub statics: Vec<ServerConfig>,
    /// What the source listed last (applied), static addresses included.
    pub listed: Vec<ServerConfig>,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Arc<Upstream> {
        Self::carry_over(cfg, None)
    }

    /// Like [`Upstream::new`], reusing `prev`'s backend of every server
    /// that is still configured the same way (address, backup flag, cap):
    /// it keeps its id, health verdict, circuit and live counts.
    pub fn carry_over(cfg: &UpstreamConfig, prev: Option<&Upstream>) -> Arc<Upstream> {
        let up = Upstream {
            name: cfg.name.clone(),
            eject: cfg.eject.clone(),
            ejectable: AtomicBool::new(false),
            slow_start_ms: cfg.slow_start.as_millis() as u64,
            failure_statuses: cfg.failure_statuses.clone(),
            queued: AtomicU32::new(0),
            version: AtomicU64::new(0),
            current: RwLock::new(Arc::new(BackendSet {
                version: 0,
                members: Vec::new(),
            })),
            discovery: cfg.discovery.as_ref().map(|d| {
                Mutex::new(DiscoveryState {
                    source: d.describe(),
                    last_ok_ms: unix_ms(),
                    statics: cfg.static_servers.clone(),
                    listed: cfg.discovered.clone(),
                    ..DiscoveryState::default()
                })
            }),
        };
        let kept = prev.map(|p| p.current());
        let members = build(
            &cfg.servers,
            kept.as_deref().map_or(&[], |s| &s.members[..]),
        );
        let mut slot = up.current.write().unwrap_or_else(|e| e.into_inner());
        up.publish(&mut slot, members);
        drop(slot);
        Arc::new(up)
    }

    /// What the discovery source listed last (empty for an upstream
    /// without a source).
    pub fn discovered(&self) -> Vec<ServerConfig> {
        self.discovery.as_ref().map_or_else(Vec::new, |d| {
            d.lock().unwrap_or_else(|e| e.into_inner()).listed.clone()
        })
    }

    /// A reload changed only the static `servers` of a discovered upstream:
    /// they replace the old ones beside what the source listed, under the
    /// discovery lock (a list applied at the same time is not lost).
    /// Without a source, the list is `statics`. Returns the version.
    pub fn set_statics(&self, statics: &[ServerConfig]) -> u64 {
        let Some(d) = &self.discovery else {
            return self.apply(Update::Reset(statics.to_vec()));
        };
        let mut st = d.lock().unwrap_or_else(|e| e.into_inner());
        let mut full = statics.to_vec();
        full.extend(
            st.listed
                .iter()
                .filter(|s| !statics.iter().any(|o| o.addr == s.addr))
                .cloned(),
        );
        st.statics = statics.to_vec();
        self.apply(Update::Reset(full))
    }

    /// Whether a response with `status` counts as a backend failure.
    #[inline]
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.failure_statuses.contains(&status)
    }

    /// The current version number: the one load a worker does per pick.
    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<BackendSet> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Apply a change and publish the next version; returns its number.
    /// Removing or re-adding an address that is not there changes nothing
    /// (and publishes nothing).
    pub fn apply(&self, update: Update) -> u64 {
        // Writers serialize on the write lock for the whole change, so two
        // sources cannot lose each other's update.
        let mut slot = self.current.write().unwrap_or_else(|e| e.into_inner());
        let cur = Arc::clone(&slot);
        let mut servers: Vec<ServerConfig> = cur.members.iter().map(Member::server).collect();
        let changed = match update {
            Update::Reset(list) => {
                servers = list;
                true
            }
            Update::Add(s) => {
                if servers.iter().any(|o| o.addr == s.addr) {
                    false
                } else {
                    servers.push(s);
                    true
                }
            }
            Update::Remove(addr) => {
                let before = servers.len();
                servers.retain(|s| s.addr != addr);
                servers.len() != before
            }
            Update::Weight(addr, w) => match servers.iter_mut().find(|s| s.addr == addr) {
                Some(s) if s.weight != w => {
                    s.weight = w;
                    true
                }
                _ => false,
            },
        };
        if !changed {
            return cur.version;
        }
        let members = build(&servers, &cur.members);
        let same = members.len() == cur.members.len()
            && members
                .iter()
                .zip(&cur.members)
                .all(|(m, o)| Arc::ptr_eq(&m.backend, &o.backend) && m.weight == o.weight);
        if same {
            // A reset to what is already there (an unchanged upstream in a
            // reload): no new version, no replica rebuilds.
            return cur.version;
        }
        for old in &cur.members {
            if !members
                .iter()
                .any(|m| Arc::ptr_eq(&m.backend, &old.backend))
            {
                old.backend.retire(true);
            }
        }
        self.publish(&mut slot, members)
    }

    fn publish(&self, slot: &mut Arc<BackendSet>, members: Vec<Member>) -> u64 {
        for m in &members {
            m.backend.retire(false);
        }
        self.ejectable.store(members.len() > 1, Ordering::Relaxed);
        if let [only] = &members[..] {
            // A lone server is never ejected: one left open or half-open by
            // a larger set goes back into service.
            only.backend.close_circuit();
        }
        let version = slot.version + 1;
        *slot = Arc::new(BackendSet { version, members });
        self.version.store(version, Ordering::Release);
        version
    }
}

/// The members for `servers`, reusing the backends of `kept` that match.
/// Duplicate addresses keep the first (config validation refuses them; a
/// discovery source might not).
fn build(servers: &[ServerConfig], kept: &[Member]) -> Vec<Member> {
    let mut out: Vec<Member> = Vec::with_capacity(servers.len());
    for s in servers {
        if out.iter().any(|m| m.backend.addr == s.addr) {
            continue;
        }
        let backend = kept
            .iter()
            .find(|m| {
                let b = &m.backend;
                // The name too: it is the consistent-hash ring key, and a
                // kept backend must hash as a freshly built one would.
                b.addr == s.addr
                    && b.name == s.id
                    && b.backup == s.backup
                    && b.max_connections == s.max_connections
            })
            .map_or_else(
                || {
                    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                    Arc::new(Backend::new(id, &s.id, s.addr, s.backup, s.max_connections))
                },
                |m| Arc::clone(&m.backend),
            );
        out.push(Member {
            backend,
            weight: s.weight.max(1),
        });
    }
    out
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Every upstream's shared state, in config order.
#[derive(Debug)]
pub struct Upstreams {
    pub all: Vec<Arc<Upstream>>,
}

impl Upstreams {
    pub fn new(cfg: &Config) -> Arc<Upstreams> {
        Self::carry_over(cfg, None)
    }

    /// Every discovered upstream's current list, for a reload or an
    /// upgrade to start from instead of asking the sources again.
    pub fn known_sets(&self) -> crate::config::Seed {
        let mut seed = crate::config::Seed::default();
        for u in &self.all {
            let Some(d) = &u.discovery else { continue };
            let source = d.lock().unwrap_or_else(|e| e.into_inner()).source.clone();
            seed.known.insert((u.name.clone(), source), u.discovered());
        }
        seed
    }

    /// For a reload: backends kept by the new config keep their state
    /// (matched by upstream name and address).
    pub fn carry_over(cfg: &Config, prev: Option<&Upstreams>) -> Arc<Upstreams> {
        Arc::new(Upstreams {
            all: cfg
                .upstreams
                .iter()
                .map(|u| {
                    let old = prev.and_then(|p| p.all.iter().find(|o| o.name == u.name));
                    Upstream::carry_over(u, old.map(|o| &**o))
                })
                .collect(),
        })
    }
}
