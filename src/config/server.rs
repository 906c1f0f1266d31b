//! One backend server as the config (or a discovery source) lists it, and
//! the two list formats discovery sources write (a backend per line; a
//! registry node's line or JSON object). A leaf: the upstream table and
//! the discovery sources both build it.

use std::net::{SocketAddr, ToSocketAddrs};

/// One backend server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerConfig {
    /// As written in the file (stable identity for hashing).
    pub id: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Used only when every primary is unavailable.
    pub backup: bool,
    /// Process-wide cap on connections (tcp) / requests in flight (http); 0 = none.
    pub max_connections: u32,
}

/// One registry node's data: a backend line ([`parse_list`]) or a JSON
/// object as registrars write it: `{"host": "10.0.0.1", "port": 8080}`
/// (or `"address"` for `"host"`, as Curator's service instances, or
/// `"addr": "10.0.0.1:8080"`), with optional `"weight"`, `"backup"`,
/// `"max_connections"`; other fields (`"zone"`, `"id"`, `"payload"`...)
/// are ignored.
///
/// # Errors
/// Neither form, or a field of the wrong kind or range.
pub fn parse_node(data: &str) -> Result<Vec<ServerConfig>, String> {
    let t = data.trim();
    if !t.starts_with('{') {
        return parse_list(t);
    }
    let v: serde_json::Value = serde_json::from_str(t).map_err(|e| format!("not JSON: {e}"))?;
    let text = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
    let num = |k: &str| -> Result<Option<u64>, String> {
        match v.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(x) => x
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("{k:?} is not a number")),
        }
    };
    let addr_text = match (
        text("addr"),
        text("host").or_else(|| text("address")),
        num("port")?,
    ) {
        (Some(a), _, _) => a.to_string(),
        (None, Some(h), Some(p)) if p <= 65535 => {
            if h.contains(':') && !h.starts_with('[') {
                format!("[{h}]:{p}")
            } else {
                format!("{h}:{p}")
            }
        }
        _ => return Err("needs \"addr\", or \"host\" (or \"address\") and \"port\"".into()),
    };
    let mut line = addr_text;
    if let Some(w) = num("weight")? {
        line.push_str(&format!(" weight={w}"));
    }
    if let Some(m) = num("max_connections")? {
        line.push_str(&format!(" max_connections={m}"));
    }
    match v.get("backup") {
        None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => {}
        Some(serde_json::Value::Bool(true)) => line.push_str(" backup"),
        Some(_) => return Err("\"backup\" is not true or false".into()),
    }
    parse_list(&line)
}

/// A backend list: one backend per line, `ADDR [weight=N] [backup]
/// [max_connections=N]`, `#` starts a comment, blank lines are skipped.
/// `ADDR` is `ip:port`, `[v6]:port` or `host:port` (resolved here).
///
/// # Errors
/// The first bad line, by number, and why.
pub fn parse_list(text: &str) -> Result<Vec<ServerConfig>, String> {
    let mut out: Vec<ServerConfig> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: String| format!("line {}: {why}", n + 1);
        let mut words = line.split_whitespace();
        let Some(addr_text) = words.next() else {
            continue;
        };
        let addr = match addr_text.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => addr_text
                .to_socket_addrs()
                .map_err(|e| bad(format!("{addr_text:?}: {e}")))?
                .next()
                .ok_or_else(|| bad(format!("{addr_text:?} resolves to no address")))?,
        };
        let mut s = ServerConfig {
            id: addr_text.to_string(),
            addr,
            weight: 1,
            backup: false,
            max_connections: 0,
        };
        for w in words {
            match w.split_once('=') {
                None if w == "backup" => s.backup = true,
                Some(("weight", v)) => {
                    s.weight = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| bad(format!("weight {v:?} is not 1..=1000")))?
                }
                Some(("max_connections", v)) => {
                    s.max_connections =
                        v.parse().ok().filter(|n| *n <= 10_000_000).ok_or_else(|| {
                            bad(format!("max_connections {v:?} is not 0..=10000000"))
                        })?
                }
                _ => {
                    return Err(bad(format!(
                        "unknown {w:?} (expected weight=N, backup, max_connections=N)"
                    )))
                }
            }
        }
        if out.iter().any(|o| o.addr == s.addr) {
            return Err(bad(format!("{} is listed twice", s.addr)));
        }
        out.push(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_with_options_comments_and_errors_by_line() {
        let l = parse_list(
            "# api\n127.0.0.1:80 weight=5\n\n[::1]:81 backup max_connections=9 # spare\n",
        )
        .unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].weight, l[0].backup), (5, false));
        assert_eq!((l[1].backup, l[1].max_connections), (true, 9));
        assert_eq!(l[1].addr, "[::1]:81".parse().unwrap());
        let e = parse_list("127.0.0.1:80\n127.0.0.1:80\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        let e = parse_list("127.0.0.1:80 weight=0").unwrap_err();
        assert!(e.contains("weight"), "{e}");
        let e = parse_list("127.0.0.1:80 primary").unwrap_err();
        assert!(e.contains("unknown \"primary\""), "{e}");
        assert!(parse_list("nope").is_err());
        assert!(parse_list("").unwrap().is_empty());
    }

    #[test]
    fn registry_nodes_are_lines_or_json() {
        let one =
            |t: &str| parse_node(t).map(|l| (l[0].addr.to_string(), l[0].weight, l[0].backup));
        assert_eq!(
            one("127.0.0.1:80 weight=2"),
            Ok(("127.0.0.1:80".into(), 2, false))
        );
        assert_eq!(
            one(r#"{"host": "127.0.0.1", "port": 81, "weight": 3, "zone": "a"}"#),
            Ok(("127.0.0.1:81".into(), 3, false))
        );
        // Curator's ServiceInstance.
        assert_eq!(
            one(
                r#"{"name":"api","id":"x","address":"::1","port":82,"sslPort":null,"payload":null}"#
            ),
            Ok(("[::1]:82".into(), 1, false))
        );
        assert_eq!(
            one(r#"{"addr": "127.0.0.1:83", "backup": true}"#),
            Ok(("127.0.0.1:83".into(), 1, true))
        );
        assert!(parse_node(r#"{"host": "127.0.0.1"}"#).is_err());
        assert!(parse_node(r#"{"addr": "127.0.0.1:1", "weight": "x"}"#).is_err());
        assert!(parse_node("{not json").is_err());
    }
}
