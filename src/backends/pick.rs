//! The pick policy: primaries first, then backups; skip what was tried,
//! what is down, ejected, full or ramping; reserve a slot on the winner.
//! The balancer (pure, per worker) only orders the candidates.

use std::sync::{atomic::Ordering::Relaxed, Arc};

use super::{
    set::{BackendSet, Upstream},
    state::{Avail, Backend, BackendId, HALF_OPEN},
};
use crate::balancer::Balancer;

/// A reserved slot on a backend: counts toward its max_connections (and
/// its half-open probe budget) until dropped. It holds the backend, so a
/// connection keeps the backend it has when the set changes.
#[derive(Debug)]
pub struct Slot {
    backend: Arc<Backend>,
}

impl Slot {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Relaxed);
    }
}

impl Upstream {
    /// True when `b` is usable apart from being full (for queueing).
    pub fn alive_but_full(&self, b: &Backend) -> bool {
        b.available() && b.is_full()
    }

    /// Reserve a slot on `b` after a pick: fails when it filled up
    /// meanwhile, or when it is half-open and its probes are taken.
    pub fn reserve(&self, b: &Arc<Backend>, avail: Avail) -> Option<Slot> {
        if avail == Avail::Probe {
            let limit = self.half_open_probes();
            if b.probes
                .fetch_update(Relaxed, Relaxed, |p| (p < limit).then_some(p + 1))
                .is_err()
            {
                return None;
            }
        }
        let n = b.active.fetch_add(1, Relaxed);
        if b.max_connections > 0 && n >= b.max_connections {
            b.active.fetch_sub(1, Relaxed);
            return None;
        }
        Some(Slot {
            backend: Arc::clone(b),
        })
    }
}

/// Reserve a slot on the member of `set` whose sticky token is `token`,
/// when it is available (not down, not ejected; half-open within its probe
/// budget; below its max_connections), and when it is a backup only while
/// no primary is available. Slow start does not turn away a client that
/// was already on the backend. Returns its index and the slot.
pub fn pick_sticky(up: &Upstream, set: &BackendSet, token: u64) -> Option<(usize, Slot)> {
    let members = &set.members;
    let idx = members.iter().position(|m| m.backend.sticky == token)?;
    let b = &members[idx].backend;
    if !b.available()
        || (b.backup
            && members
                .iter()
                .any(|m| !m.backend.backup && m.backend.available()))
    {
        return None;
    }
    let kind = if b.word() & HALF_OPEN != 0 {
        Avail::Probe
    } else {
        Avail::Yes
    };
    up.reserve(b, kind).map(|slot| (idx, slot))
}

/// Why [`pick`] found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoPick {
    /// Some backend not yet tried is healthy but at its max_connections
    /// (a request may wait for it).
    pub full: bool,
}

/// Pick a backend of `set` (whose order `bal` was built for) for a new
/// connection or request, skipping those `tried`, and reserve a slot on it.
/// Returns its index in `set` and the slot.
///
/// # Errors
/// Nothing is available.
pub fn pick(
    bal: &mut Balancer,
    up: &Upstream,
    set: &BackendSet,
    key: u64,
    tried: &[BackendId],
) -> Result<(usize, Slot), NoPick> {
    let members = &set.members;
    let was_tried = |i: usize| tried.contains(&members[i].backend.id);
    let mut excluded: Vec<usize> = Vec::new();
    for backups in [false, true] {
        loop {
            let picked = bal.pick(key, |i| {
                let Some(m) = members.get(i) else {
                    return true;
                };
                was_tried(i)
                    || excluded.contains(&i)
                    || m.backend.backup != backups
                    || up.avail(&m.backend) == Avail::No
            });
            let Some(idx) = picked else {
                break;
            };
            let b = &members[idx].backend;
            let kind = if b.word() & HALF_OPEN != 0 {
                Avail::Probe
            } else {
                Avail::Yes
            };
            match up.reserve(b, kind) {
                Some(slot) => return Ok((idx, slot)),
                None => excluded.push(idx),
            }
        }
        // Backups only when no primary is available at all (not merely tried).
        let primary_alive = members
            .iter()
            .enumerate()
            .any(|(i, m)| !m.backend.backup && m.backend.available() && !was_tried(i));
        if primary_alive {
            break;
        }
    }
    let full = (0..members.len()).any(|i| !was_tried(i) && up.alive_but_full(&members[i].backend));
    if !full && up.panics() && !members.iter().any(|m| m.backend.available()) {
        // Panic mode: every backend is out, at least partly by ejection. The
        // circuit breaker is a guess from recent failures (which clients
        // can provoke); rather than 503 for everyone, try the ejected ones
        // (not those active checks found down, nor those at their cap).
        let picked = bal.pick(key, |i| {
            members.get(i).map_or(true, |m| {
                let b = &m.backend;
                was_tried(i) || b.is_down() || b.is_full()
            })
        });
        if let Some(idx) = picked {
            if let Some(slot) = up.reserve(&members[idx].backend, Avail::Yes) {
                tracing::debug!(upstream = %up.name, backend = %members[idx].backend.addr, "panic mode: every backend is ejected; trying one anyway");
                return Ok((idx, slot));
            }
        }
    }
    Err(NoPick { full })
}
