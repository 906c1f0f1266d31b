//! The fd budget: raise RLIMIT_NOFILE towards what a config needs and work
//! out each listener's effective `max_connections` under the limit got. The
//! validated config is left as it is; the caps go to the listener limiters,
//! the log and the metrics registry.

use crate::{config::Config, sys};

/// fds a worker needs besides connections: its ring, eventfd, and slack.
const FDS_PER_WORKER: u64 = 4;
/// fds kept for stdio, logs, the control thread and surprises.
const FDS_RESERVE: u64 = 64;

/// What the fd limit allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub soft: u64,
    pub hard: u64,
    /// Proxied connections (two sockets each) the limit leaves room for.
    pub connections: u64,
    /// Per listener, in config order: its `max_connections`, capped so that
    /// together they fit the budget.
    pub caps: Vec<usize>,
}

/// Raise RLIMIT_NOFILE towards what the config needs; cap every listener's
/// `max_connections` so that together they fit the budget.
pub fn apply_fd_budget(cfg: &Config, workers: usize) -> Budget {
    let members: Vec<usize> = cfg.upstreams.iter().map(|u| u.servers.len()).collect();
    let needed = fixed_fds(cfg, workers, &members) + 2 * cfg.total_max_connections() as u64;
    let (soft, hard) = sys::raise_nofile(needed);
    budget(cfg, workers, soft, hard, &members, true)
}

/// The budget again after a discovery source changed how many backends
/// the upstreams have (`members`, per upstream in config order): more
/// backends pool more idle connections. The limit is raised if it can
/// be; the caps are logged only when they change (`prev`).
pub fn rebudget(cfg: &Config, workers: usize, members: &[usize], prev: &[usize]) -> Budget {
    let needed = fixed_fds(cfg, workers, members) + 2 * cfg.total_max_connections() as u64;
    let (soft, hard) = sys::raise_nofile(needed);
    let b = budget(cfg, workers, soft, hard, members, false);
    if b.caps != prev {
        let fixed = fixed_fds(cfg, workers, members);
        tracing::warn!(
            "fd budget: the upstreams now have {} backends; {fixed} fds go to listeners, pipes and keep-alive pools, \
             so listener max_connections are now {:?} (RLIMIT_NOFILE {soft}, hard {hard})",
            members.iter().sum::<usize>(),
            b.caps
        );
    }
    b
}

/// fds needed whatever the number of connections: listening sockets, pipe
/// pools, idle keep-alive connections, per-worker rings, and a reserve.
fn fixed_fds(cfg: &Config, workers: usize, members: &[usize]) -> u64 {
    let w = workers as u64;
    let listeners = cfg.listeners.len() as u64;
    // Idle keep-alive connections pooled by http listeners, per worker.
    let mut pooled_ups: Vec<usize> = cfg
        .listeners
        .iter()
        .filter_map(|l| l.http.as_ref())
        .flat_map(|h| {
            h.routes.iter().flat_map(|r| {
                r.upstream
                    .into_iter()
                    .chain(r.mirror.as_ref().map(|m| m.upstream))
            })
        })
        .collect();
    pooled_ups.sort_unstable();
    pooled_ups.dedup();
    let pooled: u64 = pooled_ups
        .iter()
        .map(|&u| (cfg.upstreams[u].keepalive * members.get(u).copied().unwrap_or(0)) as u64)
        .sum();
    // A udp flow holds one socket; each worker holds up to max_flows.
    let flows: u64 = cfg
        .listeners
        .iter()
        .filter_map(|l| l.udp.as_ref())
        .map(|u| u.max_flows as u64)
        .sum();
    FDS_RESERVE
        + w * FDS_PER_WORKER
        + w * listeners
        + w * 2 * cfg.runtime.pipe_pool as u64
        + w * pooled
        + w * flows
}

/// The budget under an fd limit of (`soft`, `hard`), as got.
fn budget(
    cfg: &Config,
    workers: usize,
    soft: u64,
    hard: u64,
    members: &[usize],
    log: bool,
) -> Budget {
    let fixed = fixed_fds(cfg, workers, members);
    let wanted_conns = cfg.total_max_connections() as u64;
    let needed = fixed + 2 * wanted_conns;
    let connections = soft.saturating_sub(fixed) / 2;
    if log && fixed >= soft {
        tracing::warn!(
            "RLIMIT_NOFILE is {soft} (hard limit {hard}) but listeners, pipes, keep-alive pools and udp max_flows \
             alone need {fixed} fds: lower max_flows or keepalive, or raise the limit (systemd LimitNOFILE={})",
            fixed + 2 * wanted_conns
        );
    }
    let mut caps: Vec<usize> = cfg.listeners.iter().map(|l| l.max_connections).collect();
    // udp listeners are not capped here: their flows are counted above.
    let stream: Vec<bool> = cfg.listeners.iter().map(|l| !l.is_udp()).collect();
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
        if log && explicit.is_empty() {
            tracing::info!("{msg}");
        } else if log {
            tracing::warn!("{msg}");
        }
        for (cap, _) in caps.iter_mut().zip(&stream).filter(|(_, s)| **s) {
            let share = (*cap as u128 * connections as u128 / wanted_conns.max(1) as u128) as usize;
            *cap = share.max(1);
        }
    }
    let capped_total: usize = caps
        .iter()
        .zip(&stream)
        .filter(|(_, s)| **s)
        .map(|(c, _)| c)
        .sum();
    Budget {
        soft,
        hard,
        connections: connections.min(capped_total as u64),
        caps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(cfg: &Config) -> Vec<usize> {
        cfg.upstreams.iter().map(|u| u.servers.len()).collect()
    }

    /// A config with one tcp listener per `max_connections` line ("" = the default).
    fn config(limits: &[&str], runtime: &str) -> Config {
        let mut text = format!("[runtime]\n{runtime}\n");
        for (i, max) in limits.iter().enumerate() {
            text.push_str(&format!(
                "[[listener]]\nname = \"l{i}\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"u\"\n{max}\n",
                10_000 + i
            ));
        }
        text.push_str("[upstream.u]\nservers = [{ addr = \"127.0.0.1:1\" }]\n");
        Config::parse(&text).unwrap()
    }

    #[test]
    fn nothing_is_capped_when_the_limit_suffices() {
        let cfg = config(&["max_connections = 1000", ""], "pipe_pool = 8");
        let want: Vec<usize> = cfg.listeners.iter().map(|l| l.max_connections).collect();
        let exact = fixed_fds(&cfg, 4, &members(&cfg)) + 2 * cfg.total_max_connections() as u64;
        let b = budget(&cfg, 4, exact, exact * 2, &members(&cfg), true);
        assert_eq!(b.caps, want);
        assert_eq!(b.connections, cfg.total_max_connections() as u64);
        assert_eq!((b.soft, b.hard), (exact, exact * 2));
        // One fd short: now it caps, below what was asked.
        let b = budget(&cfg, 4, exact - 1, exact, &members(&cfg), true);
        assert!(b.caps.iter().sum::<usize>() < cfg.total_max_connections());
    }

    #[test]
    fn caps_sum_to_at_most_the_connection_budget() {
        let cfg = config(
            &[
                "max_connections = 5000000",
                "max_connections = 3000000",
                "max_connections = 7",
            ],
            "",
        );
        for soft in [1_024, 10_000, 65_536, 1_048_576] {
            let b = budget(&cfg, 2, soft, soft, &members(&cfg), true);
            let total: usize = b.caps.iter().sum();
            assert_eq!(
                b.connections,
                (soft - fixed_fds(&cfg, 2, &members(&cfg))) / 2
            );
            assert!(total as u64 <= b.connections, "{total} > {b:?}");
            assert!(b.caps.iter().all(|&c| c >= 1), "{b:?}");
            // Shares follow what was asked: 5M : 3M.
            assert!(b.caps[0] > b.caps[1] && b.caps[1] >= b.caps[2], "{b:?}");
        }
        // The config itself is not rewritten.
        assert_eq!(cfg.listeners[0].max_connections, 5_000_000);
    }

    #[test]
    fn default_and_explicit_max_connections_are_capped_alike() {
        // The default (100 000) and an explicit value are scaled by the same
        // factor; only the log level differs (info when all are defaults).
        let cfg = config(&["", "max_connections = 50000"], "");
        assert!(cfg.listeners[0].max_connections_default);
        assert!(!cfg.listeners[1].max_connections_default);
        let soft = fixed_fds(&cfg, 1, &members(&cfg)) + 2 * 30_000;
        let b = budget(&cfg, 1, soft, soft, &members(&cfg), true);
        assert_eq!(b.connections, 30_000);
        assert_eq!(b.caps, vec![20_000, 10_000]);
        // An explicit value under a default's share is kept when the limit suffices.
        let cfg = config(&["", "max_connections = 10"], "");
        let soft = fixed_fds(&cfg, 1, &members(&cfg)) + 2 * (100_000 + 10);
        assert_eq!(
            budget(&cfg, 1, soft, soft, &members(&cfg), true).caps,
            vec![100_000, 10]
        );
    }
}
