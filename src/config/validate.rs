//! RawConfig -> Config. Every error names the key it is about, in the same
//! dotted form a user would write (`listener[0].connect_timeout`).

use std::{
    collections::{BTreeMap, HashSet},
    net::{SocketAddr, ToSocketAddrs},
    time::Duration,
};

use super::{
    raw::{RawConfig, RawListener, RawServer, RawSize, RawUpstream, RawWorkers},
    Config, ConfigError, HashKey, IoUringMode, ListenerConfig, Mode, ProxyAccept, ProxySend,
    RuntimeConfig, ServerConfig, Transfer, UpstreamConfig, DEFAULT_MAX_CONNECTIONS,
};
use crate::balancer::Algorithm;

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::new(text);
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let line = inner
            .span()
            .map(|s| format!(" (line {})", line_of(text, s.start)))
            .unwrap_or_default();
        let key = if path == "." {
            "(toml)".to_string()
        } else {
            path
        };
        let msg = inner.message().trim().replace('\n', "; ");
        ConfigError::new(key, format!("{msg}{line}"))
    })?;
    build(raw)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn build(raw: RawConfig) -> Result<Config, ConfigError> {
    let runtime = runtime(raw.runtime)?;
    let (upstreams, index) = upstreams(raw.upstream)?;
    if raw.listener.is_empty() {
        return Err(ConfigError::new(
            "listener",
            "no [[listener]] defined; at least one is needed",
        ));
    }
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    let mut listeners = Vec::with_capacity(raw.listener.len());
    for (i, l) in raw.listener.into_iter().enumerate() {
        let l = listener(i, l, &index)?;
        if !names.insert(l.name.clone()) {
            return Err(ConfigError::new(
                format!("listener[{i}].name"),
                format!("duplicate listener name {:?}", l.name),
            ));
        }
        if !addrs.insert(l.listen) {
            return Err(ConfigError::new(
                format!("listener[{i}].listen"),
                format!("address {} is used by another listener", l.listen),
            ));
        }
        listeners.push(l);
    }
    Ok(Config {
        runtime,
        listeners,
        upstreams,
    })
}

fn runtime(r: super::raw::RawRuntime) -> Result<RuntimeConfig, ConfigError> {
    let workers = match r.workers {
        None => None,
        Some(RawWorkers::Word(w)) if w == "auto" => None,
        Some(RawWorkers::Word(w)) => {
            return Err(ConfigError::new(
                "runtime.workers",
                format!("expected \"auto\" or a number, got {w:?}"),
            ))
        }
        Some(RawWorkers::Count(n)) => Some(range("runtime.workers", n, 1, 1024)? as usize),
    };
    let io_uring = match r.io_uring.as_deref() {
        None | Some("auto") => IoUringMode::Auto,
        Some("required") => IoUringMode::Required,
        Some("off") => IoUringMode::Off,
        Some(o) => return Err(one_of("runtime.io_uring", o, &["auto", "required", "off"])),
    };
    let ring_entries = match r.ring_entries {
        None => 4096,
        Some(n) => {
            let n = range("runtime.ring_entries", n, 256, 32768)? as u32;
            if !n.is_power_of_two() {
                return Err(ConfigError::new(
                    "runtime.ring_entries",
                    format!("must be a power of two, got {n}"),
                ));
            }
            n
        }
    };
    let pipe_size = match r.pipe_size {
        None => 256 * 1024,
        Some(s) => {
            let n = size("runtime.pipe_size", s)?;
            if n != 0 && !(4096..=64 << 20).contains(&n) {
                return Err(ConfigError::new(
                    "runtime.pipe_size",
                    format!("must be 0 (kernel default) or between 4k and 64m, got {n}"),
                ));
            }
            n
        }
    };
    Ok(RuntimeConfig {
        workers,
        pin_cores: r.pin_cores.unwrap_or(true),
        io_uring,
        ring_entries,
        shutdown_timeout: dur_or(
            "runtime.shutdown_timeout",
            r.shutdown_timeout,
            Duration::from_secs(30),
        )?,
        pipe_pool: match r.pipe_pool {
            None => 64,
            Some(n) => range("runtime.pipe_pool", n, 0, 100_000)? as usize,
        },
        pipe_size,
    })
}

type UpstreamIndex = BTreeMap<String, usize>;

fn upstreams(
    raw: BTreeMap<String, RawUpstream>,
) -> Result<(Vec<UpstreamConfig>, UpstreamIndex), ConfigError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut index = BTreeMap::new();
    for (name, u) in raw {
        let key = format!("upstream.{name}");
        let balance = match u.balance.as_deref() {
            None | Some("round_robin") => Algorithm::RoundRobin,
            Some("weighted_round_robin") => Algorithm::WeightedRoundRobin,
            Some("random") => Algorithm::Random,
            Some("least_conn") => Algorithm::LeastConn,
            Some("consistent_hash") => Algorithm::ConsistentHash,
            Some(o) => {
                return Err(one_of(
                    &format!("{key}.balance"),
                    o,
                    &[
                        "round_robin",
                        "weighted_round_robin",
                        "random",
                        "least_conn",
                        "consistent_hash",
                    ],
                ))
            }
        };
        let hash_key = match u.hash_key.as_deref() {
            None | Some("client_ip") => HashKey::ClientIp,
            Some(o) => return Err(one_of(&format!("{key}.hash_key"), o, &["client_ip"])),
        };
        if u.servers.is_empty() {
            return Err(ConfigError::new(
                format!("{key}.servers"),
                "must list at least one server",
            ));
        }
        let mut servers = Vec::with_capacity(u.servers.len());
        let mut seen = HashSet::new();
        for (j, s) in u.servers.into_iter().enumerate() {
            let s = server(&format!("{key}.servers[{j}]"), s)?;
            if !seen.insert(s.addr) {
                return Err(ConfigError::new(
                    format!("{key}.servers[{j}].addr"),
                    format!("{} is listed twice", s.addr),
                ));
            }
            servers.push(s);
        }
        index.insert(name.clone(), out.len());
        out.push(UpstreamConfig {
            name,
            balance,
            hash_key,
            servers,
        });
    }
    Ok((out, index))
}

fn server(key: &str, s: RawServer) -> Result<ServerConfig, ConfigError> {
    let addr = resolve(&format!("{key}.addr"), &s.addr)?;
    let weight = match s.weight {
        None => 1,
        Some(w) => range(&format!("{key}.weight"), w, 1, 1000)? as u32,
    };
    Ok(ServerConfig {
        id: s.addr,
        addr,
        weight,
    })
}

/// "ip:port" or "[v6]:port" directly; "host:port" through the resolver, once,
/// at load time (never per connection).
fn resolve(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !text.contains(':') {
        return Err(ConfigError::new(
            key,
            format!("{text:?} has no port (write host:port, e.g. 127.0.0.1:8080 or [::1]:8080)"),
        ));
    }
    match text.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| ConfigError::new(key, format!("{text:?} resolves to no address"))),
        Err(e) => Err(ConfigError::new(
            key,
            format!("cannot resolve {text:?}: {e}"),
        )),
    }
}

fn listener(
    i: usize,
    l: RawListener,
    index: &UpstreamIndex,
) -> Result<ListenerConfig, ConfigError> {
    let k = |f: &str| format!("listener[{i}].{f}");
    let name = l.name.unwrap_or_else(|| format!("listener{i}"));
    let mode = match l.mode.as_deref() {
        None | Some("tcp") => Mode::Tcp,
        Some("http") => {
            return Err(ConfigError::new(
                k("mode"),
                "\"http\" listeners are not implemented yet; use \"tcp\"",
            ))
        }
        Some(o) => return Err(one_of(&k("mode"), o, &["tcp"])),
    };
    let listen_text = l
        .listen
        .ok_or_else(|| ConfigError::new(k("listen"), "missing (e.g. listen = \"0.0.0.0:6380\")"))?;
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        ConfigError::new(
            k("listen"),
            format!("{listen_text:?} is not an ip:port address (e.g. 0.0.0.0:80 or [::]:80)"),
        )
    })?;
    let upstream_name = l
        .upstream
        .ok_or_else(|| ConfigError::new(k("upstream"), "missing: name an [upstream.NAME] table"))?;
    let upstream = *index.get(&upstream_name).ok_or_else(|| {
        ConfigError::new(
            k("upstream"),
            format!("no [upstream.{upstream_name}] is defined"),
        )
    })?;
    let (max_connections, max_connections_default) = match l.max_connections {
        None => (DEFAULT_MAX_CONNECTIONS, true),
        Some(n) => (
            range(&k("max_connections"), n, 1, 10_000_000)? as usize,
            false,
        ),
    };
    let proxy_protocol = match l.proxy_protocol.as_deref() {
        None | Some("off") => ProxySend::Off,
        Some("v1") => ProxySend::V1,
        Some("v2") => ProxySend::V2,
        Some(o) => return Err(one_of(&k("proxy_protocol"), o, &["off", "v1", "v2"])),
    };
    let accept_proxy_protocol = match l.accept_proxy_protocol.as_deref() {
        None | Some("off") => ProxyAccept::Off,
        Some("v1") => ProxyAccept::V1,
        Some("v2") => ProxyAccept::V2,
        Some("any") => ProxyAccept::Any,
        Some(o) => {
            return Err(one_of(
                &k("accept_proxy_protocol"),
                o,
                &["off", "v1", "v2", "any"],
            ))
        }
    };
    let transfer = match l.transfer.as_deref() {
        None | Some("auto") => Transfer::Auto,
        Some("splice") => Transfer::Splice,
        Some("copy") => Transfer::Copy,
        Some(o) => return Err(one_of(&k("transfer"), o, &["auto", "splice", "copy"])),
    };
    Ok(ListenerConfig {
        name,
        mode,
        listen,
        backlog: match l.backlog {
            None => 1024,
            Some(n) => range(&k("backlog"), n, 1, 1 << 20)? as u32,
        },
        upstream,
        max_connections,
        max_connections_default,
        connect_timeout: nonzero_dur(&k("connect_timeout"), l.connect_timeout, 5)?,
        idle_timeout: nonzero_dur(&k("idle_timeout"), l.idle_timeout, 600)?,
        connect_tries: match l.connect_tries {
            None => 3,
            Some(n) => range(&k("connect_tries"), n, 1, 100)? as u32,
        },
        proxy_protocol,
        accept_proxy_protocol,
        proxy_protocol_timeout: nonzero_dur(
            &k("proxy_protocol_timeout"),
            l.proxy_protocol_timeout,
            5,
        )?,
        transfer,
    })
}

fn nonzero_dur(key: &str, v: Option<String>, default_secs: u64) -> Result<Duration, ConfigError> {
    let d = dur_or(key, v, Duration::from_secs(default_secs))?;
    if d.is_zero() {
        return Err(ConfigError::new(key, "must be greater than 0"));
    }
    Ok(d)
}

fn dur_or(key: &str, v: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(&s).map_err(|m| ConfigError::new(key, m)),
    }
}

fn range(key: &str, n: i64, lo: i64, hi: i64) -> Result<i64, ConfigError> {
    if n < lo || n > hi {
        return Err(ConfigError::new(
            key,
            format!("{n} is out of range ({lo}..={hi})"),
        ));
    }
    Ok(n)
}

fn one_of(key: &str, got: &str, allowed: &[&str]) -> ConfigError {
    ConfigError::new(
        key,
        format!(
            "unknown value {got:?} (expected one of: {})",
            allowed.join(", ")
        ),
    )
}

fn size(key: &str, s: RawSize) -> Result<usize, ConfigError> {
    match s {
        RawSize::Bytes(n) if n >= 0 => Ok(n as usize),
        RawSize::Bytes(n) => Err(ConfigError::new(key, format!("{n} is negative"))),
        RawSize::Text(t) => parse_size(&t).map_err(|m| ConfigError::new(key, m)),
    }
}

/// Parse "500ms", "10s", "5m", "1h", "2d" (one number, one unit).
///
/// # Errors
/// A message saying what is wrong and what is expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("invalid duration {s:?} (write e.g. 500ms, 10s, 5m, 1h)");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86400)),
        _ => return Err(bad()),
    };
    Ok(d)
}

/// Parse "4096", "64k", "1m" (binary units).
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("invalid size {s:?} (write e.g. 65536, 64k, 1m)");
    let n: usize = num.parse().map_err(|_| bad())?;
    let mul = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        _ => return Err(bad()),
    };
    n.checked_mul(mul).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[[listener]]
name = "redis"
listen = "127.0.0.1:6380"
upstream = "redis"

[upstream.redis]
servers = [{ addr = "127.0.0.1:6379" }]
"#;

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MIN).unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.mode, Mode::Tcp);
        assert_eq!(l.connect_timeout, Duration::from_secs(5));
        assert_eq!(l.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert!(l.max_connections_default);
        assert_eq!(c.upstreams[l.upstream].servers[0].weight, 1);
        assert_eq!(c.runtime.workers, None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1.5s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert_eq!(parse_size("1m").unwrap(), 1 << 20);
        assert!(parse_size("1x").is_err());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(&MIN.replace(
            "upstream = \"redis\"\n",
            "upstream = \"redis\"\nconect_timeout = \"1s\"\n",
        ));
        assert!(
            e.contains("listener[0]") && e.contains("conect_timeout"),
            "{e}"
        );
        let e = err(&format!("{MIN}\n[runtime]\nworkerz = 2\n"));
        assert!(e.contains("runtime") && e.contains("workerz"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "listen = \"127.0.0.1:6380\"",
                "listen = \"nope\"",
                "listener[0].listen",
            ),
            (
                "upstream = \"redis\"",
                "upstream = \"nosuch\"",
                "listener[0].upstream",
            ),
            (
                "name = \"redis\"",
                "name = \"redis\"\nconnect_timeout = \"1x\"",
                "listener[0].connect_timeout",
            ),
            (
                "name = \"redis\"",
                "name = \"redis\"\nidle_timeout = \"0s\"",
                "listener[0].idle_timeout",
            ),
            (
                "name = \"redis\"",
                "name = \"redis\"\nmax_connections = 0",
                "listener[0].max_connections",
            ),
            (
                "name = \"redis\"",
                "name = \"redis\"\nproxy_protocol = \"v3\"",
                "listener[0].proxy_protocol",
            ),
            (
                "name = \"redis\"",
                "name = \"redis\"\nmode = \"udp\"",
                "listener[0].mode",
            ),
            (
                "{ addr = \"127.0.0.1:6379\" }",
                "{ addr = \"127.0.0.1\" }",
                "upstream.redis.servers[0].addr",
            ),
            (
                "{ addr = \"127.0.0.1:6379\" }",
                "{ addr = \"127.0.0.1:6379\", weight = 0 }",
                "upstream.redis.servers[0].weight",
            ),
            (
                "[upstream.redis]",
                "[upstream.redis]\nbalance = \"fastest\"",
                "upstream.redis.balance",
            ),
        ];
        for (from, to, key) in cases {
            let e = err(&MIN.replace(from, to));
            assert!(e.starts_with(key), "expected key {key}, got: {e}");
        }
    }

    #[test]
    fn structural_errors() {
        assert!(err("").starts_with("listener"));
        let e = err(&MIN.replace("servers = [{ addr = \"127.0.0.1:6379\" }]", "servers = []"));
        assert!(e.starts_with("upstream.redis.servers"), "{e}");
        let dup = format!("{MIN}\n[[listener]]\nname = \"redis\"\nlisten = \"127.0.0.1:6381\"\nupstream = \"redis\"\n");
        assert!(err(&dup).starts_with("listener[1].name"));
        let e = err("[[listener]\n");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn ipv6_and_workers() {
        let c = parse(&format!(
            "[runtime]\nworkers = 3\n{}",
            MIN.replace("127.0.0.1:6380", "[::1]:6380")
        ))
        .unwrap();
        assert!(c.listeners[0].listen.is_ipv6());
        assert_eq!(c.runtime.workers, Some(3));
        assert!(
            err(&format!("[runtime]\nworkers = \"many\"\n{MIN}")).starts_with("runtime.workers")
        );
    }
}
