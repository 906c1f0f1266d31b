//! Backends: versioned sets shared by every worker, and each backend's
//! process-wide state (active health, the passive circuit breaker, slow
//! start, live and total counts).
//!
//! - [`set`]: [`Upstream`] holds the current [`BackendSet`] and its version;
//!   an [`Update`] publishes the next version (static config, a reload that
//!   only changes servers, a discovery source).
//! - [`state`]: one [`Backend`]: id, address, the availability word.
//! - [`circuit`]: verdicts, the circuit breaker and slow start.
//! - [`pick`]: the pick policy over a set, and the reserved [`Slot`].
//! - `checker`: the health-check thread.

mod checker;
pub mod circuit;
pub mod pick;
pub mod set;
pub mod state;

use std::time::Duration;

pub use checker::spawn as spawn_checker;
pub use circuit::now_ms;
pub use pick::{pick, pick_sticky, NoPick, Slot};
pub use set::{BackendSet, Member, Update, Upstream, Upstreams};
pub use state::{Avail, Backend, BackendId};

/// How long the checker sleeps between timer ticks.
const TICK: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use std::sync::{atomic::Ordering::Relaxed, Arc};

    use super::*;
    use crate::{
        balancer::{Algorithm, Balancer, ServerSpec},
        config::{Config, ServerConfig},
    };

    fn state(extra: &str) -> Arc<Upstream> {
        let cfg = Config::parse(&format!(
            "[[listener]]\nlisten = \"127.0.0.1:1\"\nupstream = \"u\"\n[upstream.u]\n{extra}\nservers = [{{ addr = \"127.0.0.1:2\" }}, {{ addr = \"127.0.0.1:3\", max_connections = 2 }}]\n"
        ))
        .unwrap();
        Upstream::new(&cfg.upstreams[0])
    }

    fn nth(u: &Upstream, i: usize) -> Arc<Backend> {
        Arc::clone(&u.current().members[i].backend)
    }

    fn server(addr: &str, weight: u32) -> ServerConfig {
        ServerConfig {
            id: addr.to_string(),
            addr: addr.parse().unwrap(),
            weight,
            backup: false,
            max_connections: 0,
        }
    }

    #[test]
    fn failures_open_then_half_open_then_close() {
        let u = state("eject = { failures = 3, cooldown = \"1s\", max_cooldown = \"4s\" }");
        let b = nth(&u, 0);
        assert_eq!(u.avail(&b), Avail::Yes);
        u.report_failure(&b, "t");
        u.report_failure(&b, "t");
        u.report_success(&b); // a success resets the count
        u.report_failure(&b, "t");
        u.report_failure(&b, "t");
        assert_eq!(u.avail(&b), Avail::Yes);
        u.report_failure(&b, "t");
        assert_eq!(u.avail(&b), Avail::No, "3 in a row open the circuit");
        u.tick(b.open_until.load(Relaxed) - 1);
        assert_eq!(u.avail(&b), Avail::No);
        u.tick(b.open_until.load(Relaxed));
        assert_eq!(u.avail(&b), Avail::Probe);
        let probe = u.reserve(&b, Avail::Probe).expect("one probe");
        assert!(u.reserve(&b, Avail::Probe).is_none(), "only one probe");
        u.report_failure(&b, "t");
        drop(probe);
        assert_eq!(u.avail(&b), Avail::No, "failed probe re-opens");
        assert_eq!(b.cooldown_ms.load(Relaxed), 2000, "cool-down doubled");
        u.tick(b.open_until.load(Relaxed));
        u.report_failure(&b, "t");
        assert_eq!(b.cooldown_ms.load(Relaxed), 4000);
        u.tick(b.open_until.load(Relaxed));
        u.report_failure(&b, "t");
        assert_eq!(b.cooldown_ms.load(Relaxed), 4000, "capped");
        u.tick(b.open_until.load(Relaxed));
        u.report_success(&b);
        assert_eq!(u.avail(&b), Avail::Yes, "a good probe closes it");
        assert_eq!(b.cooldown_ms.load(Relaxed), 1000, "cool-down reset");
    }

    #[test]
    fn a_lone_backend_is_never_ejected() {
        let u = state("eject = { failures = 1 }");
        let (a, b) = (nth(&u, 0), nth(&u, 1));
        u.apply(Update::Remove(b.addr));
        for _ in 0..5 {
            u.report_failure(&a, "t");
        }
        assert_eq!(u.avail(&a), Avail::Yes);
        assert_eq!(a.failures_total(), 5, "still counted");
        u.apply(Update::Add(server("127.0.0.1:9", 1)));
        u.report_failure(&a, "t");
        assert_eq!(u.avail(&a), Avail::No, "two backends: ejection is back");
    }

    #[test]
    fn max_connections_and_down() {
        let u = state("");
        let (b0, b1) = (nth(&u, 0), nth(&u, 1));
        let a = u.reserve(&b1, Avail::Yes).unwrap();
        let _b = u.reserve(&b1, Avail::Yes).unwrap();
        assert!(u.reserve(&b1, Avail::Yes).is_none());
        assert_eq!(u.avail(&b1), Avail::No);
        assert!(u.alive_but_full(&b1));
        drop(a);
        assert_eq!(u.avail(&b1), Avail::Yes);
        u.set_down(&b0, true);
        assert_eq!(u.avail(&b0), Avail::No);
        assert!(!u.alive_but_full(&b0));
        u.set_down(&b0, false);
        assert_eq!(u.avail(&b0), Avail::Yes);
    }

    #[test]
    fn a_reload_carries_over_kept_backends_only() {
        let text = |second: &str| {
            format!(
                "[[listener]]\nlisten = \"127.0.0.1:1\"\nupstream = \"u\"\n[upstream.u]\nservers = [{{ addr = \"127.0.0.1:2\" }}, {{ addr = \"{second}\", max_connections = 2 }}]\n"
            )
        };
        let before = Config::parse(&text("127.0.0.1:3")).unwrap();
        let old = Upstreams::new(&before);
        let u = &old.all[0];
        u.set_down(&nth(u, 0), true);
        let _held = u.reserve(&nth(u, 1), Avail::Yes).unwrap();
        // Same backends: the verdict, the live count and the ids carry over.
        let same = Upstreams::carry_over(&before, Some(&old));
        assert!(nth(&same.all[0], 0).is_down());
        assert_eq!(nth(&same.all[0], 1).active(), 1);
        assert_eq!(nth(&same.all[0], 1).id, nth(u, 1).id);
        // A changed backend starts afresh; the kept one keeps its state.
        let after = Config::parse(&text("127.0.0.1:4")).unwrap();
        let new = Upstreams::carry_over(&after, Some(&old));
        assert!(nth(&new.all[0], 0).is_down());
        assert_eq!(nth(&new.all[0], 1).active(), 0);
        assert_ne!(nth(&new.all[0], 1).id, nth(u, 1).id);
    }

    #[test]
    fn a_static_server_the_source_also_lists_stays_when_the_static_one_goes() {
        // The source lists :2 and :4; :2 is also static.
        let mut seed = crate::config::Seed::default();
        let missing = "/nonexistent/ringlb/u.servers";
        seed.known.insert(
            ("u".into(), format!("file {missing}")),
            vec![server("127.0.0.1:2", 1), server("127.0.0.1:4", 1)],
        );
        let cfg = Config::parse_seeded(
            &format!(
                "[[listener]]\nlisten = \"127.0.0.1:1\"\nupstream = \"u\"\n[upstream.u]\ndiscovery = {{ file = \"{missing}\" }}\nservers = [{{ addr = \"127.0.0.1:2\" }}, {{ addr = \"127.0.0.1:3\" }}]\n"
            ),
            &seed,
        )
        .unwrap();
        let u = Upstream::new(&cfg.upstreams[0]);
        let addrs = |u: &Upstream| {
            let mut a: Vec<String> = u
                .current()
                .members
                .iter()
                .map(|m| m.backend.addr.to_string())
                .collect();
            a.sort();
            a
        };
        assert_eq!(addrs(&u), ["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]);
        // A reload drops both static servers: :2 stays (the source lists it).
        u.set_statics(&[]);
        assert_eq!(addrs(&u), ["127.0.0.1:2", "127.0.0.1:4"]);
        assert_eq!(u.discovered().len(), 2);
    }

    #[test]
    fn updates_publish_versions_and_keep_ids() {
        let u = state("");
        let v1 = u.version();
        assert_eq!(v1, 1, "the static list is the first version");
        let (a, b) = (nth(&u, 0), nth(&u, 1));
        assert_ne!(a.id, b.id);
        let v2 = u.apply(Update::Add(server("127.0.0.1:5", 3)));
        assert_eq!((v2, u.version()), (2, 2));
        let set = u.current();
        assert_eq!(set.len(), 3);
        assert_eq!(set.members[2].weight, 3);
        assert!(
            Arc::ptr_eq(&set.members[0].backend, &a),
            "kept backend, same Arc"
        );
        // No-op changes publish nothing.
        assert_eq!(u.apply(Update::Add(server("127.0.0.1:5", 1))), 2);
        assert_eq!(u.apply(Update::Remove("127.0.0.1:99".parse().unwrap())), 2);
        assert_eq!(
            u.apply(Update::Weight("127.0.0.1:5".parse().unwrap(), 3)),
            2
        );
        // A weight change keeps the backend and its id.
        assert_eq!(u.apply(Update::Weight(a.addr, 7)), 3);
        let set = u.current();
        assert_eq!(
            (set.members[0].weight, set.members[0].backend.id),
            (7, a.id)
        );
        // Removing retires; connections holding it keep a valid backend.
        let held = u.reserve(&b, Avail::Yes).unwrap();
        assert_eq!(u.apply(Update::Remove(b.addr)), 4);
        assert!(b.is_retired() && !a.is_retired());
        assert_eq!(u.current().index_of(b.id), None);
        assert_eq!(held.backend().active(), 1);
        drop(held);
        assert_eq!(b.active(), 0);
        // A reset keeps what matches and numbers the rest anew.
        let v = u.apply(Update::Reset(vec![
            server("127.0.0.1:5", 1),
            server("127.0.0.1:6", 1),
        ]));
        assert_eq!(v, 5);
        let set = u.current();
        assert_eq!(set.len(), 2);
        assert!(a.is_retired());
        assert!(set
            .members
            .iter()
            .all(|m| m.backend.id > b.id || m.backend.addr.port() == 5));
    }

    #[test]
    fn a_reset_to_the_same_list_publishes_nothing_and_names_are_identity() {
        let u = state("");
        let same: Vec<ServerConfig> = u.current().members.iter().map(Member::server).collect();
        assert_eq!(u.apply(Update::Reset(same.clone())), 1, "no new version");
        // The same address under another name is another ring key: a new backend.
        let mut renamed = same;
        renamed[0].id = "app.internal:2".into();
        let before = nth(&u, 0);
        assert_eq!(u.apply(Update::Reset(renamed)), 2);
        assert_ne!(nth(&u, 0).id, before.id);
        assert_eq!(nth(&u, 0).name, "app.internal:2");
    }

    #[test]
    fn a_set_shrunk_to_one_closes_its_circuit() {
        let u = state("eject = { failures = 1 }");
        let (a, b) = (nth(&u, 0), nth(&u, 1));
        u.report_failure(&a, "t");
        assert_eq!(u.avail(&a), Avail::No, "ejected while there are two");
        u.apply(Update::Remove(b.addr));
        assert_eq!(u.avail(&a), Avail::Yes, "a lone server is never ejected");
    }

    #[test]
    fn pick_skips_tried_ids_and_prefers_primaries() {
        let u = state("");
        let set = u.current();
        let ids: Vec<String> = set.members.iter().map(|m| m.backend.name.clone()).collect();
        let specs: Vec<ServerSpec<'_>> =
            ids.iter().map(|id| ServerSpec { id, weight: 1 }).collect();
        let mut bal = Balancer::new(Algorithm::RoundRobin, &specs, 0);
        let first = set.members[0].backend.id;
        for _ in 0..4 {
            let (i, slot) = pick(&mut bal, &u, &set, 0, &[first]).unwrap();
            assert_eq!(i, 1);
            assert_eq!(slot.backend().id, set.members[1].backend.id);
        }
        let all: Vec<BackendId> = set.members.iter().map(|m| m.backend.id).collect();
        assert_eq!(
            pick(&mut bal, &u, &set, 0, &all).unwrap_err(),
            NoPick { full: false }
        );
    }

    #[test]
    fn slow_start_ramps_admission() {
        let u = state("slow_start = \"400ms\"");
        let b = nth(&u, 0);
        u.set_down(&b, true);
        u.set_down(&b, false);
        let admitted = (0..10_000).filter(|_| u.avail(&b) == Avail::Yes).count();
        assert!(admitted < 2000, "just back: {admitted} of 10000 admitted");
        // Half-way through the ramp: about half.
        std::thread::sleep(Duration::from_millis(200));
        let admitted = (0..10_000).filter(|_| u.avail(&b) == Avail::Yes).count();
        assert!((3500..7000).contains(&admitted), "{admitted}");
        u.tick(now_ms() + 400);
        assert_eq!(u.avail(&b), Avail::Yes);
        assert_eq!(b.word() & state::SINCE, 0, "ramp over");
    }
}
