//! The one builder for the configs the tests run ringlb with.
//!
//! [`Cfg`] renders TOML text, one `key = value` per line, in a fixed order:
//! `[runtime]`, then extra tables in the order added (`[admin]`, `[log]`,
//! `[access_log]`), then each `[[listener]]` with its `[[listener.route]]`
//! tables, then each `[upstream.NAME]`; a blank line after each. Keys are
//! given as TOML lines; a key given again replaces the earlier line, so a
//! preset can be adjusted (`.runtime("workers = 1")`,
//! `.listener_with("listen = \"[::1]:0\"")`). Tests about config validation
//! may still `.replace()` a line of the rendered text.
//!
//! ```text
//! Cfg::new(2)
//!     .admin()
//!     .http("web", "app").listener_with("max_connections = 200")
//!     .tcp("raw", "echo").listener_with("listen = \"127.0.0.2:0\"")
//!     .upstream("app", &[a]).server(b, "backup = true")
//!     .upstream("echo", &[e]).upstream_with("balance = \"least_conn\"")
//! ```

use std::{fmt, net::SocketAddr};

/// The admin table: a listener on a loopback ephemeral port.
pub const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// Upstream keys: active tcp checks that decide at the first verdict,
/// circuit breaker off.
pub const HEALTH_FAST: &str = "health = { kind = \"tcp\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }\neject = { failures = 0 }";

/// TOML `key = value` lines in order; setting a key again replaces its line.
#[derive(Clone, Default)]
struct Keys(Vec<(String, String)>);

impl Keys {
    fn set(&mut self, lines: &str) {
        for line in lines.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let key = line.split('=').next().unwrap_or("").trim().to_string();
            assert!(
                !key.starts_with('['),
                "a table header among keys: {line:?} (use route() or table())"
            );
            match self.0.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = line.to_string(),
                None => self.0.push((key, line.to_string())),
            }
        }
    }

    fn with(mut self, lines: &str) -> Keys {
        self.set(lines);
        self
    }
}

impl fmt::Display for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (_, line) in &self.0 {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

#[derive(Clone)]
struct Listener {
    keys: Keys,
    routes: Vec<Keys>,
}

#[derive(Clone)]
struct Upstream {
    name: String,
    /// Entries of `servers = [...]`, rendered.
    servers: Vec<String>,
    keys: Keys,
}

/// A ringlb config under construction; `Display` renders it.
#[derive(Clone)]
pub struct Cfg {
    runtime: Keys,
    tables: Vec<String>,
    listeners: Vec<Listener>,
    upstreams: Vec<Upstream>,
}

impl Cfg {
    /// `[runtime]` with `workers` and nothing else yet.
    pub fn new(workers: usize) -> Cfg {
        Cfg {
            runtime: Keys::default().with(&format!("workers = {workers}")),
            tables: Vec::new(),
            listeners: Vec::new(),
            upstreams: Vec::new(),
        }
    }

    /// The usual TCP proxy: 2 workers, shutdown_timeout 5s, tcp listener "l"
    /// on 127.0.0.1:0 (connect_timeout 1s) in front of upstream "u" over
    /// `servers`.
    pub fn tcp_proxy(servers: &[SocketAddr]) -> Cfg {
        Cfg::new(2)
            .runtime("shutdown_timeout = \"5s\"")
            .tcp("l", "u")
            .listener_with("connect_timeout = \"1s\"")
            .upstream("u", servers)
    }

    /// The usual HTTP proxy: 1 worker, http listener "web" on 127.0.0.1:0
    /// (connect_timeout 1s) in front of upstream "app" over `servers`.
    pub fn http_proxy(servers: &[SocketAddr]) -> Cfg {
        Cfg::new(1)
            .http("web", "app")
            .listener_with("connect_timeout = \"1s\"")
            .upstream("app", servers)
    }

    /// Keys of `[runtime]`.
    pub fn runtime(mut self, lines: &str) -> Cfg {
        self.runtime.set(lines);
        self
    }

    /// The `[admin]` table ([`ADMIN`]).
    pub fn admin(self) -> Cfg {
        self.table(ADMIN)
    }

    /// A top-level table as literal text, header included (`[log]` ...).
    pub fn table(mut self, text: &str) -> Cfg {
        self.tables.push(text.trim().to_string());
        self
    }

    /// A `[[listener]]` named `name` in `mode` on 127.0.0.1:0 sending to
    /// `upstream` (none when empty: a listener whose routes say where).
    pub fn listener(mut self, name: &str, mode: &str, upstream: &str) -> Cfg {
        let mut keys = Keys::default().with(&format!(
            "name = \"{name}\"\nmode = \"{mode}\"\nlisten = \"127.0.0.1:0\""
        ));
        if !upstream.is_empty() {
            keys.set(&format!("upstream = \"{upstream}\""));
        }
        self.listeners.push(Listener {
            keys,
            routes: Vec::new(),
        });
        self
    }

    pub fn tcp(self, name: &str, upstream: &str) -> Cfg {
        self.listener(name, "tcp", upstream)
    }

    pub fn http(self, name: &str, upstream: &str) -> Cfg {
        self.listener(name, "http", upstream)
    }

    fn last_listener(&mut self) -> &mut Listener {
        self.listeners.last_mut().expect("add a listener first")
    }

    fn last_upstream(&mut self) -> &mut Upstream {
        self.upstreams.last_mut().expect("add an upstream first")
    }

    /// Keys of the last listener added.
    pub fn listener_with(mut self, lines: &str) -> Cfg {
        self.last_listener().keys.set(lines);
        self
    }

    /// A `[[listener.route]]` with these keys on the last listener added.
    pub fn route(mut self, lines: &str) -> Cfg {
        let route = Keys::default().with(lines);
        self.last_listener().routes.push(route);
        self
    }

    /// An `[upstream.NAME]` over `servers` (more with [`Cfg::server`]).
    pub fn upstream(mut self, name: &str, servers: &[SocketAddr]) -> Cfg {
        self.upstreams.push(Upstream {
            name: name.to_string(),
            servers: Vec::new(),
            keys: Keys::default(),
        });
        for a in servers {
            self = self.server(*a, "");
        }
        self
    }

    /// One more server of the last upstream added, with extra keys of its
    /// inline table (`"weight = 5"`, `"backup = true"`).
    pub fn server(mut self, addr: SocketAddr, extra: &str) -> Cfg {
        let entry = if extra.is_empty() {
            format!("{{ addr = \"{addr}\" }}")
        } else {
            format!("{{ addr = \"{addr}\", {extra} }}")
        };
        self.last_upstream().servers.push(entry);
        self
    }

    /// Keys of the last upstream added.
    pub fn upstream_with(mut self, lines: &str) -> Cfg {
        self.last_upstream().keys.set(lines);
        self
    }
}

impl fmt::Display for Cfg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[runtime]\n{}\n", self.runtime)?;
        for t in &self.tables {
            write!(f, "{t}\n\n")?;
        }
        for l in &self.listeners {
            write!(f, "[[listener]]\n{}\n", l.keys)?;
            for r in &l.routes {
                write!(f, "[[listener.route]]\n{r}\n")?;
            }
        }
        for u in &self.upstreams {
            write!(
                f,
                "[upstream.{}]\nservers = [{}]\n{}\n",
                u.name,
                u.servers.join(", "),
                u.keys
            )?;
        }
        Ok(())
    }
}

#[test]
fn cfg_renders_keys_in_place_and_configs_ringlb_accepts() {
    let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
    let text = Cfg::tcp_proxy(&[a])
        .runtime("workers = 1\npipe_pool = 4")
        .listener_with("connect_timeout = \"300ms\"")
        .upstream_with("balance = \"round_robin\"")
        .server(b, "backup = true")
        .to_string();
    assert_eq!(
        text,
        "[runtime]\nworkers = 1\nshutdown_timeout = \"5s\"\npipe_pool = 4\n\n\
         [[listener]]\nname = \"l\"\nmode = \"tcp\"\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\nconnect_timeout = \"300ms\"\n\n\
         [upstream.u]\nservers = [{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\", backup = true }]\nbalance = \"round_robin\"\n\n"
    );
    let presets = [
        Cfg::tcp_proxy(&[a]),
        Cfg::http_proxy(&[a, b]),
        Cfg::new(2)
            .admin()
            .table("[log]\nlevel = \"debug\"")
            .http("web", "")
            .route("path_prefix = \"/api/\"\nupstream = \"app\"")
            .route("upstream = \"app\"")
            .tcp("raw", "echo")
            .listener_with("listen = \"127.0.0.2:0\"")
            .upstream("app", &[a])
            .upstream_with(HEALTH_FAST)
            .upstream("echo", &[b]),
    ];
    for cfg in presets {
        let (code, _, err) = super::check_config(&cfg);
        assert_eq!(code, 0, "{err}\n{cfg}");
    }
}
