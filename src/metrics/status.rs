//! `/status` (JSON) and `/readyz` of a [`Registry`].

use std::fmt::Write as _;

use super::{access, Registry};
use crate::config::Mode;

impl Registry {
    /// True when every upstream has an available backend.
    pub fn ready(&self) -> Result<(), String> {
        for u in &self.upstreams.all {
            if !u.current().members.iter().any(|m| m.backend.available()) {
                return Err(format!("upstream {:?} has no available backend", u.name));
            }
        }
        Ok(())
    }

    /// `/status` as JSON.
    pub fn status_json(&self) -> String {
        let mut o = String::with_capacity(1024);
        let _ = write!(
            o,
            "{{\"version\":\"{}\",\"workers\":{},\"listeners\":[",
            env!("CARGO_PKG_VERSION"),
            self.workers.len()
        );
        for (li, l) in self.cfg.listeners.iter().enumerate() {
            let active: i64 = self
                .workers
                .iter()
                .map(|w| w.listeners[li].active.get())
                .sum();
            let _ = write!(
                o,
                "{}{{\"name\":{},\"mode\":\"{}\",\"listen\":\"{}\",\"active\":{},\"max_connections\":{}}}",
                if li > 0 { "," } else { "" },
                access::json_str(&l.name),
                if l.mode == Mode::Http { "http" } else { "tcp" },
                self.bound.get(li).copied().unwrap_or(l.listen),
                active.max(0),
                self.max_connections(li)
            );
        }
        o.push_str("],\"upstreams\":[");
        for (ui, u) in self.cfg.upstreams.iter().enumerate() {
            let set = self.upstreams.all[ui].current();
            let _ = write!(
                o,
                "{}{{\"name\":{},\"backends\":[",
                if ui > 0 { "," } else { "" },
                access::json_str(&u.name)
            );
            for (bi, b) in set.members.iter().map(|m| &m.backend).enumerate() {
                let _ = write!(
                    o,
                    "{}{{\"addr\":\"{}\",\"up\":{},\"health\":\"{}\",\"circuit\":\"{}\",\"active\":{},\"backup\":{}}}",
                    if bi > 0 { "," } else { "" },
                    b.addr,
                    b.available(),
                    if b.is_down() { "down" } else { "up" },
                    b.circuit(),
                    b.active(),
                    b.backup
                );
            }
            o.push_str("]}");
        }
        o.push_str("]}\n");
        o
    }
}
