//! An upstream's `discovery` table: where its backend list comes from at
//! run time (a watched file, or DNS names re-resolved on an interval), the
//! safety rules for applying a new list, and the list format.
//!
//! The source is read once when the config loads (so `ringlb check` sees
//! a broken file and a start has the set at once), unless the set is
//! already known ([`Seed`]: a reload keeps the running sets, a binary
//! upgrade starts with the old process's); the discovery thread follows
//! it from then on.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    server::{parse_list, parse_node, ServerConfig},
    values::{dur_or, one_of},
    ConfigError,
};

/// Where the backends come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// One backend per line ([`parse_list`]); re-read when it changes.
    File(PathBuf),
    /// `host:port`: every A and AAAA address of the host, on `port`; or
    /// (`srv`) an SRV name whose records give targets, ports and weights.
    Dns {
        name: String,
        srv: bool,
        /// A name server to ask (else the system's, /etc/resolv.conf).
        resolver: Option<SocketAddr>,
    },
    /// The children of `path` on a ZooKeeper ensemble; each child's data
    /// is one backend line ([`parse_list`]).
    ZooKeeper {
        /// `host:port,host:port[/chroot]`.
        cluster: String,
        path: String,
        session_timeout: Duration,
        /// `user:password` for digest auth.
        digest: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryConfig {
    pub source: Source,
    /// DNS: how often the name is resolved again (files are watched).
    pub interval: Duration,
    /// Apply a list with no backend (else the last set stays, with a warning).
    pub allow_empty: bool,
    /// Refuse a list that removes more than this share of the discovered
    /// backends at once (a panic threshold); 1 = any.
    pub max_remove: f64,
}

impl DiscoveryConfig {
    /// What `/status` and the log call it.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::File(p) => format!("file {}", p.display()),
            Source::Dns {
                name, srv: false, ..
            } => format!("dns {name}"),
            Source::Dns {
                name, srv: true, ..
            } => format!("dns srv {name}"),
            Source::ZooKeeper { cluster, path, .. } => format!("zookeeper {cluster} {path}"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiscovery {
    pub file: Option<String>,
    pub dns: Option<String>,
    pub kind: Option<String>,
    pub interval: Option<String>,
    pub allow_empty: Option<bool>,
    pub max_remove: Option<f64>,
    pub zookeeper: Option<String>,
    pub path: Option<String>,
    pub session_timeout: Option<String>,
    pub digest: Option<String>,
    pub resolver: Option<String>,
}

pub(super) fn build(key: &str, r: RawDiscovery) -> Result<DiscoveryConfig, ConfigError> {
    let k = |f: &str| format!("{key}.{f}");
    if let Some(cluster) = r.zookeeper {
        if r.file.is_some() || r.dns.is_some() {
            return Err(ConfigError::new(key, "set one of file, dns and zookeeper"));
        }
        let path = r.path.ok_or_else(|| {
            ConfigError::new(
                k("path"),
                "missing: the znode whose children are the backends",
            )
        })?;
        if !path.starts_with('/') || (path.len() > 1 && path.ends_with('/')) {
            return Err(ConfigError::new(
                k("path"),
                format!("{path:?} must start with / and not end with one"),
            ));
        }
        let session_timeout = dur_or(
            &k("session_timeout"),
            r.session_timeout,
            Duration::from_secs(10),
        )?;
        if session_timeout < Duration::from_millis(100) {
            return Err(ConfigError::new(
                k("session_timeout"),
                "must be at least 100ms",
            ));
        }
        if r.digest.as_deref().is_some_and(|d| !d.contains(':')) {
            return Err(ConfigError::new(k("digest"), "write user:password"));
        }
        let max_remove = r.max_remove.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&max_remove) {
            return Err(ConfigError::new(
                k("max_remove"),
                format!("{max_remove} is not a share between 0 and 1"),
            ));
        }
        return Ok(DiscoveryConfig {
            source: Source::ZooKeeper {
                cluster,
                path,
                session_timeout,
                digest: r.digest,
            },
            interval: Duration::from_secs(5),
            allow_empty: r.allow_empty.unwrap_or(false),
            max_remove,
        });
    }
    if r.resolver.is_some() && r.dns.is_none() {
        return Err(ConfigError::new(k("resolver"), "only applies to dns"));
    }
    if r.path.is_some() || r.session_timeout.is_some() || r.digest.is_some() {
        return Err(ConfigError::new(
            key,
            "path, session_timeout and digest need zookeeper",
        ));
    }
    let source = match (r.file, r.dns) {
        (Some(f), None) => {
            if r.kind.is_some() {
                return Err(ConfigError::new(k("kind"), "only applies to dns"));
            }
            Source::File(PathBuf::from(f))
        }
        (None, Some(name)) => {
            let srv = match r.kind.as_deref() {
                None | Some("a") => false,
                Some("srv") => true,
                Some(o) => return Err(one_of(&k("kind"), o, &["a", "srv"])),
            };
            let has_port = name
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_some();
            if !srv && !has_port {
                return Err(ConfigError::new(
                    k("dns"),
                    format!("{name:?} needs a port (write host:port, e.g. api.internal:8080)"),
                ));
            }
            if srv && has_port {
                return Err(ConfigError::new(
                    k("dns"),
                    format!("{name:?}: an SRV name takes its ports from the records (write e.g. _api._tcp.internal)"),
                ));
            }
            let resolver = match r.resolver {
                None => None,
                Some(t) => Some(t.parse::<SocketAddr>().map_err(|_| {
                    ConfigError::new(k("resolver"), format!("{t:?} is not ip:port"))
                })?),
            };
            Source::Dns {
                name,
                srv,
                resolver,
            }
        }
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(key, "set one of file and dns, not both"))
        }
        (None, None) => return Err(ConfigError::new(key, "set file or dns")),
    };
    let interval = dur_or(&k("interval"), r.interval, Duration::from_secs(5))?;
    if interval < Duration::from_millis(100) {
        return Err(ConfigError::new(k("interval"), "must be at least 100ms"));
    }
    let max_remove = r.max_remove.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&max_remove) {
        return Err(ConfigError::new(
            k("max_remove"),
            format!("{max_remove} is not a share between 0 and 1"),
        ));
    }
    Ok(DiscoveryConfig {
        source,
        interval,
        allow_empty: r.allow_empty.unwrap_or(false),
        max_remove,
    })
}

/// `[register]`: this ringlb's own ephemeral node in a ZooKeeper path, so
/// operators (and tools) see the fleet.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegister {
    pub zookeeper: Option<String>,
    pub path: Option<String>,
    pub session_timeout: Option<String>,
    pub digest: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RegisterConfig {
    /// The ensemble and session (a ZooKeeper [`Source`]).
    pub zk: DiscoveryConfig,
    /// The node: `{path}/{name}-{pid}`.
    pub path: String,
    /// Default: the host name.
    pub name: String,
}

pub(super) fn register(r: Option<RawRegister>) -> Result<Option<RegisterConfig>, ConfigError> {
    let Some(r) = r else { return Ok(None) };
    if r.zookeeper.is_none() {
        return Err(ConfigError::new(
            "register.zookeeper",
            "missing: the ensemble to register in, host:port,...",
        ));
    }
    let name = match r.name {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "ringlb".into()),
    };
    if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
        return Err(ConfigError::new(
            "register.name",
            format!("{name:?} is not a node name (no /, not empty)"),
        ));
    }
    let zk = build(
        "register",
        RawDiscovery {
            file: None,
            dns: None,
            kind: None,
            interval: None,
            allow_empty: None,
            max_remove: None,
            zookeeper: r.zookeeper,
            path: r.path,
            session_timeout: r.session_timeout,
            digest: r.digest,
            resolver: None,
        },
    )?;
    let Source::ZooKeeper { path, .. } = &zk.source else {
        return Err(ConfigError::new("register", "needs zookeeper"));
    };
    let path = path.clone();
    Ok(Some(RegisterConfig { zk, path, name }))
}

/// Discovered lists a config load takes as they are instead of asking the
/// sources, by upstream name and source ([`DiscoveryConfig::describe`]).
#[derive(Debug, Default, Clone)]
pub struct Seed {
    pub known: HashMap<(String, String), Vec<ServerConfig>>,
    /// Ask no source: the load only validates a file for a running
    /// process (`ringlb reload`), which follows the sources itself.
    pub no_fetch: bool,
}

/// One upstream's known list, as an upgrade hands it to the new process.
#[derive(Debug, Serialize, Deserialize)]
struct KnownSet {
    upstream: String,
    source: String,
    servers: Vec<ServerConfig>,
}

impl Seed {
    /// The known lists as text (JSON) for the next process.
    pub fn to_text(&self) -> String {
        let sets: Vec<KnownSet> = self
            .known
            .iter()
            .map(|((u, src), servers)| KnownSet {
                upstream: u.clone(),
                source: src.clone(),
                servers: servers.clone(),
            })
            .collect();
        serde_json::to_string(&sets).unwrap_or_default()
    }

    /// Lists handed over by the previous process ([`Seed::to_text`]).
    ///
    /// # Errors
    /// The text is not what `to_text` writes.
    pub fn from_text(text: &str) -> Result<Seed, String> {
        let sets: Vec<KnownSet> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Ok(Seed {
            known: sets
                .into_iter()
                .map(|k| ((k.upstream, k.source), k.servers))
                .collect(),
            no_fetch: false,
        })
    }
}

/// The source's list now (config load, and the discovery thread).
///
/// # Errors
/// The file cannot be read or parsed, or the name does not resolve; the
/// text says which and why.
pub fn fetch(d: &DiscoveryConfig) -> Result<Vec<ServerConfig>, String> {
    fetch_with_ttl(d).map(|(list, _)| list)
}

/// [`fetch`], and for DNS how long the answer is valid (its TTL).
///
/// # Errors
/// As [`fetch`].
pub fn fetch_with_ttl(
    d: &DiscoveryConfig,
) -> Result<(Vec<ServerConfig>, Option<Duration>), String> {
    match &d.source {
        Source::File(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            let list = parse_list(&text).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok((list, None))
        }
        Source::ZooKeeper { .. } => {
            futures_lite::future::block_on(zk_fetch_once(d, Duration::from_secs(3)))
                .map(|l| (l, None))
        }
        Source::Dns {
            name,
            srv,
            resolver,
        } => dns_lookup(name, *srv, *resolver),
    }
}

/// Resolve a DNS source with hickory (A/AAAA, or SRV and then each
/// target's addresses) on a small runtime of this thread's own. SRV: the
/// lowest priority's records are the primaries, higher ones backups; a
/// record's weight is the backend's (0 reads as 1, at most 1000).
fn dns_lookup(
    name: &str,
    srv: bool,
    resolver: Option<SocketAddr>,
) -> Result<(Vec<ServerConfig>, Option<Duration>), String> {
    use hickory_resolver::{
        config::{NameServerConfigGroup, ResolverConfig, ResolverOpts},
        TokioAsyncResolver,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("dns {name}: no runtime: {e}"))?;
    rt.block_on(async {
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        // Every lookup asks the server: the TTL it gives is what we follow.
        opts.cache_size = 0;
        let r = match resolver {
            Some(ns) => TokioAsyncResolver::tokio(
                ResolverConfig::from_parts(
                    None,
                    vec![],
                    NameServerConfigGroup::from_ips_clear(&[ns.ip()], ns.port(), true),
                ),
                opts,
            ),
            None => TokioAsyncResolver::tokio_from_system_conf()
                .map_err(|e| format!("dns {name}: the system resolver: {e}"))?,
        };
        let now = std::time::Instant::now();
        let mut out: Vec<ServerConfig> = Vec::new();
        let push = |out: &mut Vec<ServerConfig>, addr: SocketAddr, weight: u32, backup: bool| {
            if !out.iter().any(|o| o.addr == addr) {
                out.push(ServerConfig {
                    id: addr.to_string(),
                    addr,
                    weight,
                    backup,
                    max_connections: 0,
                });
            }
        };
        if srv {
            let records = r
                .srv_lookup(name)
                .await
                .map_err(|e| format!("dns srv {name}: {e}"))?;
            let ttl = records
                .as_lookup()
                .valid_until()
                .saturating_duration_since(now);
            let best = records.iter().map(|s| s.priority()).min().unwrap_or(0);
            let mut found: Vec<(u16, u16, u16, String)> = records
                .iter()
                .map(|s| (s.priority(), s.weight(), s.port(), s.target().to_utf8()))
                .collect();
            found.sort();
            for (prio, weight, port, target) in found {
                let ips = r
                    .lookup_ip(target.as_str())
                    .await
                    .map_err(|e| format!("dns srv {name}: target {target}: {e}"))?;
                for ip in ips.iter() {
                    push(
                        &mut out,
                        SocketAddr::new(ip, port),
                        u32::from(weight).clamp(1, 1000),
                        prio != best,
                    );
                }
            }
            Ok((out, Some(ttl)))
        } else {
            let (host, port) = name
                .rsplit_once(':')
                .and_then(|(h, p)| {
                    Some((
                        h.trim_start_matches('[').trim_end_matches(']'),
                        p.parse::<u16>().ok()?,
                    ))
                })
                .ok_or_else(|| format!("dns {name}: needs host:port"))?;
            let ips = r
                .lookup_ip(host)
                .await
                .map_err(|e| format!("dns {name}: {e}"))?;
            let ttl = ips.valid_until().saturating_duration_since(now);
            let mut addrs: Vec<SocketAddr> =
                ips.iter().map(|ip| SocketAddr::new(ip, port)).collect();
            addrs.sort();
            for a in addrs {
                push(&mut out, a, 1, false);
            }
            Ok((out, Some(ttl)))
        }
    })
}

/// Connect, list once, and close (config load; the discovery thread keeps
/// its own session).
async fn zk_fetch_once(d: &DiscoveryConfig, limit: Duration) -> Result<Vec<ServerConfig>, String> {
    let Source::ZooKeeper { path, .. } = &d.source else {
        return Err("not a zookeeper source".into());
    };
    let work = async {
        let client = zk_connect(d).await?;
        zk_list(&client, path).await
    };
    futures_lite::future::or(work, async {
        async_io::Timer::after(limit).await;
        Err(format!("no answer from {} within {limit:?}", d.describe()))
    })
    .await
}

/// A session to the source's ensemble (digest auth when configured).
///
/// # Errors
/// Connecting or authenticating failed.
pub async fn zk_connect(d: &DiscoveryConfig) -> Result<zookeeper_client::Client, String> {
    let Source::ZooKeeper {
        cluster,
        session_timeout,
        digest,
        ..
    } = &d.source
    else {
        return Err("not a zookeeper source".into());
    };
    let mut connector = zookeeper_client::Client::connector()
        .with_session_timeout(*session_timeout)
        .with_connection_timeout(Duration::from_secs(2));
    // Sent again whenever the session is re-established.
    if let Some(auth) = digest {
        connector = connector.with_auth("digest", auth.as_bytes());
    }
    connector
        .connect(cluster)
        .await
        .map_err(|e| format!("zookeeper {cluster}: {e}"))
}

/// The backends under `path`: each child's data is one backend line; a
/// child whose data does not parse is left out (and said so).
///
/// # Errors
/// The path is missing or the session failed.
pub async fn zk_list(
    client: &zookeeper_client::Client,
    path: &str,
) -> Result<Vec<ServerConfig>, String> {
    let children = client
        .list_children(path)
        .await
        .map_err(|e| format!("zookeeper {path}: {e}"))?;
    let mut out: Vec<ServerConfig> = Vec::with_capacity(children.len());
    for child in children {
        let full = format!("{}/{child}", path.trim_end_matches('/'));
        let data = match client.get_data(&full).await {
            Ok((data, _)) => data,
            // Gone between the listing and the read (a session ended).
            Err(zookeeper_client::Error::NoNode) => continue,
            Err(e) => return Err(format!("zookeeper {full}: {e}")),
        };
        let text = String::from_utf8_lossy(&data);
        match parse_node(&text) {
            Ok(list) => {
                for s in list {
                    if !out.iter().any(|o| o.addr == s.addr) {
                        out.push(s);
                    }
                }
            }
            Err(e) => tracing::warn!("zookeeper {full}: {e}; node left out"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_sets_survive_the_hand_over_text() {
        let mut seed = Seed::default();
        let list =
            parse_list("127.0.0.1:80 weight=3\n[::1]:81 backup max_connections=7\n").unwrap();
        seed.known
            .insert(("api".into(), "file /x".into()), list.clone());
        let back = Seed::from_text(&seed.to_text()).unwrap();
        assert_eq!(
            back.known.get(&("api".into(), "file /x".into())),
            Some(&list)
        );
        assert!(!back.no_fetch);
        assert!(Seed::from_text("{").is_err());
    }

    #[test]
    fn a_known_set_is_used_instead_of_the_source() {
        let text = |file: &str| {
            format!(
                "[[listener]]\nname = \"l\"\nmode = \"http\"\nlisten = \"127.0.0.1:0\"\nupstream = \"api\"\n\
                 [upstream.api]\nservers = [{{ addr = \"127.0.0.1:9\" }}]\ndiscovery = {{ file = \"{file}\" }}\n"
            )
        };
        let missing = "/nonexistent/ringlb/api.servers";
        assert!(crate::Config::parse(&text(missing)).is_err());
        let mut seed = Seed::default();
        let list = parse_list("127.0.0.1:10\n127.0.0.1:9\n").unwrap();
        seed.known
            .insert(("api".into(), format!("file {missing}")), list);
        let cfg = crate::Config::parse_seeded(&text(missing), &seed).unwrap();
        let addrs: Vec<String> = cfg.upstreams[0]
            .servers
            .iter()
            .map(|s| s.addr.to_string())
            .collect();
        // The static server first, once; then the known ones.
        assert_eq!(addrs, ["127.0.0.1:9", "127.0.0.1:10"]);
        // Another source's set is not taken for this one.
        let mut other = Seed::default();
        other.known.insert(
            ("api".into(), "file /elsewhere".into()),
            parse_list("127.0.0.1:10\n").unwrap(),
        );
        assert!(crate::Config::parse_seeded(&text(missing), &other).is_err());
        // no_fetch: only the file is checked.
        let quiet = Seed {
            no_fetch: true,
            ..Seed::default()
        };
        let cfg = crate::Config::parse_seeded(&text(missing), &quiet).unwrap();
        assert_eq!(cfg.upstreams[0].servers.len(), 1);
    }
}
