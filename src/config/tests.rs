//! Unit tests of the whole conversion: defaults, accepted tables, and that
//! every rejected value names its key.

use std::time::Duration;

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
    match Config::parse(text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::parse(MIN).unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.mode, Mode::Tcp);
    assert_eq!(l.connect_timeout, Duration::from_secs(5));
    assert_eq!(l.max_connections, DEFAULT_MAX_CONNECTIONS);
    assert!(l.max_connections_default);
    assert_eq!(c.upstreams[l.upstream.unwrap()].servers[0].weight, 1);
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
            "name = \"redis\"\nmode = \"sctp\"",
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
        (
            "[upstream.redis]",
            "[upstream.redis]\neject = { statuses = [502, 200] }",
            "upstream.redis.eject.statuses",
        ),
        (
            "[upstream.redis]",
            "[upstream.redis]\neject = { max_ejected_percent = 0 }",
            "upstream.redis.eject.max_ejected_percent",
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
    let c = Config::parse(&format!(
        "[runtime]\nworkers = 3\n{}",
        MIN.replace("127.0.0.1:6380", "[::1]:6380")
    ))
    .unwrap();
    assert!(c.listeners[0].listen.is_ipv6());
    assert_eq!(c.runtime.workers, Some(3));
    assert!(err(&format!("[runtime]\nworkers = \"many\"\n{MIN}")).starts_with("runtime.workers"));
}

const HTTP: &str = r#"
[[listener]]
name = "web"
mode = "http"
listen = "127.0.0.1:8080"
upstream = "app"
header_timeout = "2s"
max_body_size = "1m"
  [[listener.route]]
  host = "API.example.com"
  path_prefix = "/v1/"
  strip_prefix = true
  upstream = "api"
  max_body_size = "10k"
  request_headers = { set = { "X-Env" = "prod" }, remove = ["X-Debug"] }
  [[listener.route]]
  host = "*.example.com"
  upstream = "api"
  upgrade = []
[upstream.app]
servers = [{ addr = "127.0.0.1:9001" }]
[upstream.api]
balance = "consistent_hash"
hash_key = "header:X-User"
keepalive = 8
servers = [{ addr = "127.0.0.1:9002" }]
"#;

#[test]
fn http_listener_with_routes() {
    let c = Config::parse(HTTP).unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.mode, Mode::Http);
    let h = l.http.as_ref().unwrap();
    assert_eq!(h.header_timeout, Duration::from_secs(2));
    assert_eq!(h.keepalive_timeout, Duration::from_secs(60));
    assert_eq!(h.routes.len(), 3, "two routes plus the listener's upstream");
    assert_eq!(h.routes[0].host.as_deref(), Some("api.example.com"));
    assert!(h.routes[0].strip_prefix);
    assert_eq!(h.routes[0].max_body_size, 10 * 1024);
    assert_eq!(h.routes[0].request_headers.remove, vec!["x-debug"]);
    assert_eq!(h.routes[1].upgrade, Vec::<String>::new());
    assert_eq!(h.routes[1].max_body_size, 1 << 20);
    assert_eq!(h.routes[2].path_prefix, "/");
    assert_eq!(h.routes[2].upgrade, vec!["websocket"]);
    let api = &c.upstreams[h.routes[0].upstream.unwrap()];
    assert_eq!(api.hash_key, HashKey::Header("x-user".into()));
    assert_eq!(api.keepalive, 8);
}

#[test]
fn http_errors_name_their_key() {
    let cases = [
        (
            "upgrade = []",
            "upgrade = [\"h2c\"]",
            "listener[0].route[1].upgrade",
        ),
        (
            "path_prefix = \"/v1/\"",
            "path_prefix = \"v1\"",
            "listener[0].route[0].path_prefix",
        ),
        (
            "host = \"*.example.com\"",
            "host = \"bad host\"",
            "listener[0].route[1].host",
        ),
        (
            "host = \"*.example.com\"",
            "host = \"api.example.com\"\n  path_prefix = \"/v1/\"",
            "listener[0].route[1]",
        ),
        (
            "hash_key = \"header:X-User\"",
            "hash_key = \"cookie\"",
            "upstream.api.hash_key",
        ),
        (
            "header_timeout = \"2s\"",
            "header_timeout = \"0s\"",
            "listener[0].header_timeout",
        ),
        (
            "max_body_size = \"1m\"",
            "max_body_size = \"lots\"",
            "listener[0].max_body_size",
        ),
        (
            "\"X-Env\" = \"prod\"",
            "\"X Env\" = \"prod\"",
            "listener[0].route[0].request_headers.set",
        ),
        (
            "  upstream = \"api\"\n  max_body_size",
            "  upstream = \"nope\"\n  max_body_size",
            "listener[0].route[0].upstream",
        ),
    ];
    for (from, to, key) in cases {
        let text = HTTP.replacen(from, to, 1);
        assert_ne!(text, HTTP, "{from} not found");
        let e = err(&text);
        assert!(e.starts_with(key), "expected key {key}, got: {e}");
    }
    // An http listener needs somewhere to send requests.
    let e = err("[[listener]]\nmode = \"http\"\nlisten = \"127.0.0.1:1\"\n[upstream.a]\nservers = [{ addr = \"127.0.0.1:2\" }]\n");
    assert!(e.starts_with("listener[0].route"), "{e}");
    // http keys on a tcp listener, and tcp listeners hash by client ip only.
    let e = err(&MIN.replace(
        "name = \"redis\"",
        "name = \"redis\"\nheader_timeout = \"1s\"",
    ));
    assert!(e.starts_with("listener[0].header_timeout"), "{e}");
    let e = err(&MIN.replace("[upstream.redis]", "[upstream.redis]\nhash_key = \"uri\""));
    assert!(e.starts_with("upstream.redis.hash_key"), "{e}");
}

#[test]
fn resilience_keys() {
    let text = HTTP
        .replace(
            "keepalive = 8",
            "keepalive = 8\nslow_start = \"30s\"\nqueue = 10\nqueue_timeout = \"2s\"\nhealth = { kind = \"http\", path = \"/hz\", status = \"200-299\", interval = \"1s\", rise = 3 }\neject = { failures = 4, cooldown = \"5s\", max_cooldown = \"1m\", half_open = 2 }",
        )
        .replace(
            "servers = [{ addr = \"127.0.0.1:9002\" }]",
            "servers = [{ addr = \"127.0.0.1:9002\", max_connections = 50 }, { addr = \"127.0.0.1:9003\", backup = true }]",
        )
        .replace(
            "upgrade = []",
            "upgrade = []\n  rate_limit = { rate = 2.5, burst = 10, key = \"header:X-Key\" }",
        )
        .replace("header_timeout = \"2s\"", "header_timeout = \"2s\"\nmax_connections_per_ip = 20");
    let c = Config::parse(&text).unwrap();
    let api = c.upstreams.iter().find(|u| u.name == "api").unwrap();
    let h = api.health.as_ref().unwrap();
    assert_eq!(
        h.kind,
        HealthKind::Http {
            path: "/hz".into(),
            host: None,
            status: (200, 299)
        }
    );
    assert_eq!(
        (h.interval, h.timeout, h.rise, h.fall),
        (Duration::from_secs(1), Duration::from_secs(1), 3, 3)
    );
    let e = api.eject.as_ref().unwrap();
    assert_eq!((e.failures, e.half_open), (4, 2));
    assert_eq!(api.slow_start, Duration::from_secs(30));
    assert_eq!((api.queue, api.queue_timeout), (10, Duration::from_secs(2)));
    assert_eq!(api.servers[0].max_connections, 50);
    assert!(api.servers[1].backup);
    let l = &c.listeners[0];
    assert_eq!(l.max_connections_per_ip, 20);
    let rl = l.http.as_ref().unwrap().routes[1]
        .rate_limit
        .as_ref()
        .unwrap();
    assert_eq!((rl.rate, rl.burst), (2.5, 10));
    assert_eq!(rl.key, RateKey::Header("x-key".into()));
    // Defaults: passive ejection on (5 failures, 10 s), no active checks.
    let app = c.upstreams.iter().find(|u| u.name == "app").unwrap();
    assert!(app.health.is_none());
    assert_eq!(app.eject.as_ref().map(|e| e.failures), Some(5));

    let cases = [
        ("rise = 3", "rise = 0", "upstream.api.health.rise"),
        (
            "status = \"200-299\"",
            "status = \"299-200\"",
            "upstream.api.health.status",
        ),
        (
            "kind = \"http\"",
            "kind = \"icmp\"",
            "upstream.api.health.kind",
        ),
        (
            "max_cooldown = \"1m\"",
            "max_cooldown = \"1s\"",
            "upstream.api.eject.max_cooldown",
        ),
        (
            "rate = 2.5",
            "rate = 0.0",
            "listener[0].route[1].rate_limit.rate",
        ),
        (
            "burst = 10",
            "burst = 100000",
            "listener[0].route[1].rate_limit.burst",
        ),
        (
            "key = \"header:X-Key\"",
            "key = \"cookie\"",
            "listener[0].route[1].rate_limit.key",
        ),
    ];
    for (from, to, key) in cases {
        let t = text.replacen(from, to, 1);
        assert_ne!(t, text, "{from} not found");
        let e = err(&t);
        assert!(e.starts_with(key), "expected key {key}, got: {e}");
    }
    let all_backup = MIN.replace(
        "{ addr = \"127.0.0.1:6379\" }",
        "{ addr = \"127.0.0.1:6379\", backup = true }",
    );
    assert!(err(&all_backup).starts_with("upstream.redis.servers"));
    let tcp_health_path = MIN.replace(
        "[upstream.redis]",
        "[upstream.redis]\nhealth = { path = \"/\" }",
    );
    assert!(err(&tcp_health_path).starts_with("upstream.redis.health.kind"));
}

#[test]
fn shipped_example_config_is_valid() {
    let c = Config::parse(include_str!("../../systemd/ringlb.toml")).unwrap();
    assert!(c.admin.is_some() && c.access_log.is_some());
    assert!(c.listeners.iter().any(|l| l.mode == Mode::Http));
}

#[test]
fn failure_statuses_and_ejection_caps() {
    let c = Config::parse(MIN).unwrap();
    let u = &c.upstreams[0];
    assert_eq!(u.failure_statuses, [502, 503, 504]);
    let e = u.eject.as_ref().unwrap();
    assert_eq!((e.max_ejected_percent, e.panic), (50, true));
    let c = Config::parse(&MIN.replace(
        "[upstream.redis]",
        "[upstream.redis]\neject = { failures = 0, statuses = [500, 503, 500] }",
    ))
    .unwrap();
    assert!(c.upstreams[0].eject.is_none());
    assert_eq!(
        c.upstreams[0].failure_statuses,
        [500, 503],
        "kept without ejection"
    );
}

#[test]
fn max_headers_is_capped_by_the_parser_and_underscores_are_a_choice() {
    let http = |extra: &str| {
        format!(
            "[[listener]]\nmode = \"http\"\nlisten = \"127.0.0.1:1\"\nupstream = \"u\"\n{extra}\n[upstream.u]\nservers = [{{ addr = \"127.0.0.1:2\" }}]\n"
        )
    };
    assert!(err(&http("max_headers = 257")).starts_with("listener[0].max_headers"));
    assert!(Config::parse(&http("max_headers = 256")).is_ok());
    assert!(err(&http("underscores_in_headers = \"maybe\""))
        .starts_with("listener[0].underscores_in_headers"));
    let c = Config::parse(&http("")).unwrap();
    assert_eq!(
        c.listeners[0].http.as_ref().unwrap().underscores,
        crate::config::Underscores::Drop
    );
}

#[test]
fn header_rules_cannot_touch_framing_or_hop_by_hop_fields() {
    let route = |ops: &str| {
        format!(
            "[[listener]]\nmode = \"http\"\nlisten = \"127.0.0.1:1\"\n[[listener.route]]\nupstream = \"u\"\n{ops}\n[upstream.u]\nservers = [{{ addr = \"127.0.0.1:2\" }}]\n"
        )
    };
    for ops in [
        "request_headers = { set = { \"Content-Length\" = \"0\" } }",
        "request_headers = { set = { \"transfer-encoding\" = \"chunked\" } }",
        "response_headers = { set = { Connection = \"close\" } }",
        "response_headers = { remove = [\"Upgrade\"] }",
        "request_headers = { remove = [\"TE\"] }",
        "request_headers = { set = { \"Keep-Alive\" = \"timeout=5\" } }",
    ] {
        let e = err(&route(ops));
        assert!(e.contains("listener[0].route[0]"), "{ops}: {e}");
    }
    assert!(Config::parse(&route(
        "response_headers = { set = { \"X-Frame-Options\" = \"DENY\" } }"
    ))
    .is_ok());
}

#[test]
fn the_admin_listener_cannot_share_a_proxy_listeners_port() {
    for admin in ["127.0.0.1:6380", "0.0.0.0:6380"] {
        let e = err(&format!("{MIN}\n[admin]\nlisten = \"{admin}\"\n"));
        assert!(e.starts_with("admin.listen"), "{admin}: {e}");
    }
    assert!(Config::parse(&format!("{MIN}\n[admin]\nlisten = \"127.0.0.1:9900\"\n")).is_ok());
}

#[test]
fn durations_have_an_upper_bound() {
    let e = err(&MIN.replace(
        "name = \"redis\"",
        "name = \"redis\"\nidle_timeout = \"100000000000h\"",
    ));
    assert!(e.starts_with("listener[0].idle_timeout"), "{e}");
    assert!(Config::parse(&MIN.replace(
        "name = \"redis\"",
        "name = \"redis\"\nidle_timeout = \"30d\""
    ))
    .is_ok());
}

#[test]
fn trusted_proxies_are_address_blocks() {
    use crate::config::parse_cidr;
    let c = parse_cidr("10.0.0.0/8").unwrap();
    assert!(c.contains("10.200.1.1".parse().unwrap()));
    assert!(c.contains("::ffff:10.1.1.1".parse().unwrap()));
    assert!(!c.contains("11.0.0.1".parse().unwrap()));
    let one = parse_cidr("2001:db8::1").unwrap();
    assert!(one.contains("2001:db8::1".parse().unwrap()));
    assert!(!one.contains("2001:db8::2".parse().unwrap()));
    assert!(parse_cidr("0.0.0.0/0")
        .unwrap()
        .contains("8.8.8.8".parse().unwrap()));
    for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x"] {
        assert!(parse_cidr(bad).is_err(), "{bad}");
    }
    let e = err(&MIN.replace(
        "name = \"redis\"",
        "name = \"redis\"\ntrusted_proxies = [\"10.0.0.0/99\"]",
    ));
    assert!(e.starts_with("listener[0].trusted_proxies"), "{e}");
}
