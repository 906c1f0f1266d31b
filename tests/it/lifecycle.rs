//! Process-level behaviour: connection limit, graceful stop, `check`.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::common::*;

fn echo_ok(s: &mut TcpStream, msg: &[u8]) -> bool {
    s.write_all(msg).is_ok() && {
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).is_ok() && back == msg
    }
}

/// Does `s` get its echo within `wait`? (Used to prove a client is NOT served yet.)
fn served_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(b"?").unwrap();
    let mut b = [0u8; 1];
    let ok = matches!(s.read(&mut b), Ok(1));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    ok
}

#[test]
fn max_connections_queues_the_eleventh_and_bounds_fds() {
    let echo = EchoBackend::start();
    // pipe_pool = 2: at most 2 pipes (4 fds) per worker, so fds are bounded by
    // 2 per connection + 8 + a constant.
    let lb = Ringlb::start(
        Cfg::tcp_proxy(&[echo.addr])
            .listener_with("max_connections = 10\nbacklog = 128")
            .runtime("pipe_pool = 2"),
    );
    let fds_idle = lb.open_fds();
    let pipes_before = lb.fd_kinds().1;
    let addr = lb.addr("l");
    let mut served: Vec<TcpStream> = (0..10)
        .map(|i| {
            let mut s = connect(addr);
            assert!(echo_ok(&mut s, format!("c{i}").as_bytes()));
            s
        })
        .collect();
    let fds_full = lb.open_fds();
    assert!(
        fds_full <= fds_idle + 2 * 10 + 4,
        "10 connections use {} fds",
        fds_full - fds_idle
    );

    // The 11th connects at TCP level (kernel backlog) but is not served.
    let mut eleventh = connect(addr);
    assert!(
        !served_within(&mut eleventh, Duration::from_millis(700)),
        "11th client served while 10 are open"
    );
    assert!(lb.open_fds() <= fds_full + 4, "accepted beyond the limit");
    assert_eq!(echo.conns(), 10);

    // One of the 10 leaves: the 11th is served (it sent "?" already).
    drop(served.remove(0));
    let mut b = [0u8; 1];
    eleventh.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"?");

    // 40 more wait in the backlog without costing fds.
    let mut waiting: Vec<TcpStream> = (0..40).map(|_| connect(addr)).collect();
    thread::sleep(Duration::from_millis(300));
    let fds_over = lb.open_fds();
    assert!(
        fds_over <= fds_full + 4,
        "fds grew from {fds_full} to {fds_over} with waiting clients: accepted beyond the limit"
    );
    assert_eq!(echo.conns(), 11);

    // Everyone is served eventually, in turn, as others leave; nothing is dropped.
    drop(served);
    drop(eleventh);
    // (Closing is asynchronous on io_uring, so allow a few fds in flight.)
    for (i, mut s) in waiting.drain(..).enumerate() {
        assert!(
            echo_ok(&mut s, format!("w{i}").as_bytes()),
            "waiting client {i} lost"
        );
        let fds = lb.open_fds();
        let (sockets, pipes) = lb.fd_kinds();
        let pipes = pipes - pipes_before;
        // 11 connections were just dropped at once: on io_uring their closes are
        // ring ops that complete on the next submission, so a slot can be reused
        // a moment before its two sockets are gone. Allow that many in flight
        // (the same +24 as the overload test in c100k.rs), no more.
        assert!(
            sockets <= 2 + 2 * 10 + 24,
            "{sockets} sockets open for 10 connections + 2 listeners"
        );
        assert!(
            pipes <= 2 * 2 * 2,
            "{pipes} pipe fds, pool is 2 pipes per worker"
        );
        assert!(
            fds <= fds_idle + 2 * 10 + 8 + 24,
            "{fds} fds open, {fds_idle} when idle"
        );
    }
    assert_eq!(echo.conns(), 51);
}

#[test]
fn sigterm_drains_open_connections_then_exits_zero() {
    let echo = EchoBackend::start();
    let mut lb = Ringlb::start(Cfg::tcp_proxy(&[echo.addr]));
    let addr = lb.addr("l");
    let mut open = connect(addr);
    assert!(echo_ok(&mut open, b"before"));
    lb.signal("TERM");
    // Still served during the drain...
    thread::sleep(Duration::from_millis(300));
    assert!(echo_ok(&mut open, b"during drain"));
    assert_eq!(
        lb.wait_exit(Duration::from_millis(200)),
        None,
        "exited with a connection open"
    );
    // ...new clients are refused at once (the listening sockets are closed
    // after what was queued is accepted), not left in a backlog nobody
    // accepts and reset at exit...
    match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(mut s) => {
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let _ = s.write_all(b"x");
            let mut b = [0u8; 1];
            let served = matches!(s.read(&mut b), Ok(1));
            panic!("a new client completed its handshake during the drain (served: {served})");
        }
    }
    // ...and when the last one closes, the process exits 0.
    drop(open);
    assert_eq!(lb.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(lb.wait_log("stop signal received"));
}

#[test]
fn shutdown_timeout_closes_stragglers_and_exits_zero() {
    let echo = EchoBackend::start();
    let mut lb =
        Ringlb::start(Cfg::tcp_proxy(&[echo.addr]).runtime("shutdown_timeout = \"500ms\""));
    let mut open = connect(lb.addr("l"));
    assert!(echo_ok(&mut open, b"x"));
    let start = Instant::now();
    lb.signal("TERM");
    assert_eq!(lb.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "did not wait for the drain"
    );
    let mut b = [0u8; 1];
    assert_eq!(open.read(&mut b).unwrap_or(0), 0, "straggler closed");
}

#[test]
fn second_signal_exits_at_once() {
    let echo = EchoBackend::start();
    let mut lb = Ringlb::start(Cfg::tcp_proxy(&[echo.addr]).runtime("shutdown_timeout = \"60s\""));
    let mut open = connect(lb.addr("l"));
    assert!(echo_ok(&mut open, b"x"));
    lb.signal("TERM");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(lb.wait_exit(Duration::from_millis(100)), None);
    lb.signal("INT");
    assert_eq!(lb.wait_exit(Duration::from_secs(3)), Some(0));
}

#[test]
fn check_accepts_valid_and_names_the_key_of_broken_configs() {
    let good = Cfg::tcp_proxy(&["127.0.0.1:1".parse().unwrap()]).to_string();
    let (code, out, _) = check_config(&good);
    assert_eq!(code, 0);
    assert!(out.contains("ok"));

    let cases = [
        (
            good.replace("mode = \"tcp\"", "mode = \"tcp\"\nlisten_port = 5"),
            "listen_port",
        ),
        (
            good.replace("connect_timeout = \"1s\"", "connect_timeout = \"soon\""),
            "listener[0].connect_timeout",
        ),
        (
            good.replace("upstream = \"u\"", "upstream = \"missing\""),
            "listener[0].upstream",
        ),
        (
            good.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1\""),
            "listener[0].listen",
        ),
        (
            good.replace("workers = 2", "workers = 0"),
            "runtime.workers",
        ),
        (
            good.replace("[upstream.u]", "[upstream.u]\nbalance = \"fair\""),
            "upstream.u.balance",
        ),
        (
            good.replace("servers = [", "servers = [{ addr = \"nohost\" }, "),
            "upstream.u.servers[0].addr",
        ),
        ("[[listener]\n".to_string(), "line 1"),
    ];
    for (text, key) in cases {
        let (code, _, err) = check_config(&text);
        assert_eq!(code, 2, "exit code for {key}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(key), "error should name {key}: {err}");
        assert!(err.contains(".toml"), "error should name the file: {err}");
    }
    let (code, _, err) = {
        let out = Command::new(BIN)
            .args(["check", "-c", "/nonexistent/ringlb.toml"])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            (),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/ringlb.toml"));
}

#[test]
fn port_in_use_is_a_clear_error_with_exit_one() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = Cfg::tcp_proxy(&["127.0.0.1:1".parse().unwrap()])
        .listener_with(&format!("listen = \"{addr}\""));
    let path = temp_file("inuse", &cfg.to_string());
    let out = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("in use"), "{err}");
}

#[test]
fn version_flag() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ringlb "));
}
