//! `/status` (JSON) and `/readyz` of a [`Registry`].

use std::fmt::Write as _;

use super::{access, Registry};

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

    /// Upstreams serving a last known set because their discovery source
    /// fails or was refused (for `/readyz`).
    pub fn degraded(&self) -> Option<String> {
        let why: Vec<String> = self
            .upstreams
            .all
            .iter()
            .filter_map(|u| {
                let s = u
                    .discovery
                    .as_ref()?
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                s.last_error
                    .as_ref()
                    .map(|e| format!("upstream {:?} keeps its last set: {e}", u.name))
            })
            .collect();
        (!why.is_empty()).then(|| why.join("; "))
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
                .map(|w| w.listeners[li].active.get() + w.listeners[li].udp.active.get())
                .sum();
            let _ = write!(
                o,
                "{}{{\"name\":{},\"mode\":\"{}\",\"listen\":\"{}\",\"active\":{},\"max_connections\":{}}}",
                if li > 0 { "," } else { "" },
                access::json_str(&l.name),
                l.mode.name(),
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
            o.push(']');
            if let Some(d) = &self.upstreams.all[ui].discovery {
                let d = d.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let _ = write!(
                    o,
                    ",\"discovery\":{{\"source\":{},\"version\":{},\"members\":{},\"updates\":{},\"errors\":{},\"refused\":{},\"last_ok_ms\":{},\"error\":{}}}",
                    access::json_str(&d.source),
                    set.version,
                    d.listed.len(),
                    d.updates,
                    d.errors,
                    d.refused,
                    d.last_ok_ms,
                    d.last_error.as_deref().map_or_else(|| "null".to_string(), access::json_str)
                );
            }
            o.push('}');
        }
        o.push_str("]}\n");
        o
    }
}
