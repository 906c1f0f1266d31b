//! The error log's level from `[log] level` and RINGLB_LOG, and `check`
//! of the ops tables ([admin], [log], [access_log]).

use std::{net::SocketAddr, thread, time::Duration};

use crate::common::{cfg::HEALTH_FAST, http::*, notify::*, *};

/// The level field of a log line (`<time> LEVEL message`).
fn level(line: &str) -> Option<&str> {
    line.split_whitespace()
        .nth(1)
        .filter(|l| ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(l))
}

fn lines_at(lb: &Ringlb, lvl: &str) -> Vec<String> {
    lb.log_text()
        .lines()
        .filter(|l| level(l) == Some(lvl))
        .map(str::to_string)
        .collect()
}

/// An http listener "web" in front of one backend, with `log` as the [log] table.
fn log_config(log: &str, b: SocketAddr) -> Cfg {
    Cfg::new(1)
        .table(log)
        .http("web", "app")
        .upstream("app", &[b])
}

/// A malformed request: ringlb answers 400 and logs why at debug level.
fn bad_request(addr: SocketAddr) {
    let r = roundtrip(addr, b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n");
    assert_eq!(r.status, 400, "{}", r.head.text());
}

#[test]
fn log_level_debug_from_config() {
    let b = HttpBackend::start();
    let lb = Ringlb::start_opts(
        log_config("[log]\nlevel = \"debug\"\n", b.addr),
        Opts {
            unset: &["RINGLB_LOG", "RUST_LOG"],
            ..Opts::default()
        },
    );
    bad_request(lb.addr("web"));
    assert!(
        wait_until(Duration::from_secs(5), || !lines_at(&lb, "DEBUG")
            .is_empty()),
        "no DEBUG line with level = \"debug\"; log:\n{}",
        lb.log_text()
    );
}

#[test]
fn ringlb_log_env_overrides_the_config_level() {
    let b = HttpBackend::start();
    // level = debug, RINGLB_LOG=info (the harness default): no debug lines.
    let lb = Ringlb::start(log_config("[log]\nlevel = \"debug\"\n", b.addr));
    bad_request(lb.addr("web"));
    assert_eq!(get(lb.addr("web"), "t", "/").status, 200);
    thread::sleep(Duration::from_millis(300));
    assert!(
        lines_at(&lb, "DEBUG").is_empty(),
        "RINGLB_LOG=info did not override level = \"debug\":\n{}",
        lb.log_text()
    );
    drop(lb);

    // level = warn, RINGLB_LOG=debug: info lines (the harness waits for the
    // ready line) and debug lines.
    let lb = Ringlb::start_opts(
        log_config("[log]\nlevel = \"warn\"\n", b.addr),
        Opts {
            env: &[("RINGLB_LOG", "debug")],
            ..Opts::default()
        },
    );
    bad_request(lb.addr("web"));
    assert!(
        wait_until(Duration::from_secs(5), || !lines_at(&lb, "DEBUG")
            .is_empty()),
        "RINGLB_LOG=debug did not override level = \"warn\":\n{}",
        lb.log_text()
    );
}

#[test]
fn log_level_warn_hides_info_lines() {
    // The harness finds addresses in INFO lines, so readiness comes from
    // sd_notify here; a refused backend with fast checks logs a WARN.
    let dir = TempDir::new("warn");
    let (sock, sock_path) = notify_socket(&dir);
    let cfg = Cfg::new(1)
        .table("[log]\nlevel = \"warn\"")
        .tcp("l", "u")
        .upstream("u", &[refused_addr()])
        .upstream_with(HEALTH_FAST);
    let lb = Ringlb::start_opts(
        &cfg,
        Opts {
            env: &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
            unset: &["RINGLB_LOG", "RUST_LOG"],
            no_wait: true,
            ..Opts::default()
        },
    );
    let mut got = Vec::new();
    assert!(
        recv_until(&sock, "READY=1", Duration::from_secs(15), &mut got),
        "no READY=1; log:\n{}",
        lb.log_text()
    );
    assert!(
        lb.wait_log("is DOWN"),
        "no WARN DOWN line; log:\n{}",
        lb.log_text()
    );
    assert!(!lines_at(&lb, "WARN").is_empty(), "{}", lb.log_text());
    let noisy: Vec<String> = lb
        .log_text()
        .lines()
        .filter(|l| matches!(level(l), Some("INFO" | "DEBUG" | "TRACE")))
        .map(str::to_string)
        .collect();
    assert!(noisy.is_empty(), "lines below warn:\n{}", noisy.join("\n"));
}

#[test]
fn check_validates_the_ops_tables() {
    let good = Cfg::tcp_proxy(&["127.0.0.1:1".parse().unwrap()])
        .admin()
        .table("[log]\nlevel = \"info\"")
        .table("[access_log]\npath = \"/tmp/ringlb-ops-check.log\"\nformat = \"json\"")
        .to_string();
    let (code, _, err) = check_config(&good);
    assert_eq!(code, 0, "{err}");
    for (level, ok) in [
        ("error", true),
        ("warn", true),
        ("debug", true),
        ("verbose", false),
    ] {
        let (code, _, err) =
            check_config(good.replace("level = \"info\"", &format!("level = \"{level}\"")));
        assert_eq!(code == 0, ok, "level {level}: {err}");
    }
    for (fmt, ok) in [("combined", true), ("xml", false)] {
        let (code, _, err) =
            check_config(good.replace("format = \"json\"", &format!("format = \"{fmt}\"")));
        assert_eq!(code == 0, ok, "format {fmt}: {err}");
    }
    let (code, _, _) = check_config(good.replace("/tmp/ringlb-ops-check.log", "stdout"));
    assert_eq!(code, 0, "path = \"stdout\"");
    let cases = [
        (
            good.replace("level = \"info\"", "level = \"verbose\""),
            "log.level",
        ),
        (
            good.replace("format = \"json\"", "format = \"xml\""),
            "access_log.format",
        ),
        (
            good.replace(
                "listen = \"127.0.0.1:0\"\n\n[log]",
                "listen = \"localhost\"\n\n[log]",
            ),
            "admin.listen",
        ),
        (
            good.replace("[admin]\nlisten", "[admin]\nlisten_port = 1\nlisten"),
            "listen_port",
        ),
    ];
    for (text, key) in cases {
        let (code, _, err) = check_config(&text);
        assert_eq!(code, 2, "exit code for {key}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(key), "error should name {key}: {err}");
    }
}
