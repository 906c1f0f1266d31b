//! sd_notify: READY=1 once serving, RELOADING=1 / READY=1 around SIGHUP,
//! STOPPING=1 on SIGTERM, on a path or an abstract NOTIFY_SOCKET the test binds.

use std::{os::unix::net::UnixDatagram, time::Duration};

use crate::common::{admin::*, notify::*, *};

#[test]
fn sd_notify_ready_after_listening_and_stopping_on_sigterm() {
    let dir = TempDir::new("notify");
    let (sock, sock_path) = notify_socket(&dir);
    let echo = EchoBackend::start();
    let cfg = Cfg::tcp_proxy(&[echo.addr]).admin();
    let mut lb = Ringlb::start_opts(
        &cfg,
        Opts {
            env: &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
            no_wait: true,
            ..Opts::default()
        },
    );
    let mut got = Vec::new();
    assert!(
        recv_until(&sock, "READY=1", Duration::from_secs(15), &mut got),
        "no READY=1; got {got:?}; log:\n{}",
        lb.log_text()
    );
    // READY=1 means serving: the listener and the admin endpoint answer now.
    let mut s = connect(lb.addr("l"));
    assert_eq!(echo_roundtrip(&mut s, b"ready?"), b"ready?");
    drop(s);
    assert_eq!(admin_get(&lb, "/healthz").status, 200);
    assert!(
        !got.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "{got:?}"
    );

    lb.signal("TERM");
    assert!(
        recv_until(&sock, "STOPPING=1", Duration::from_secs(5), &mut got),
        "no STOPPING=1 after SIGTERM; got {got:?}"
    );
    assert_eq!(
        lb.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        lb.log_text()
    );
    let ready = got
        .iter()
        .filter(|m| m.lines().any(|l| l == "READY=1"))
        .count();
    assert_eq!(ready, 1, "READY=1 once: {got:?}");
}

#[test]
fn sd_notify_reloading_then_ready_around_sighup() {
    let dir = TempDir::new("notify-reload");
    let (sock, sock_path) = notify_socket(&dir);
    let echo = EchoBackend::start();
    let cfg = Cfg::tcp_proxy(&[echo.addr]);
    let mut lb = Ringlb::start_opts(
        &cfg,
        Opts {
            env: &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
            no_wait: true,
            ..Opts::default()
        },
    );
    let mut got = Vec::new();
    assert!(
        recv_until(&sock, "READY=1", Duration::from_secs(15), &mut got),
        "{got:?}"
    );
    got.clear();
    lb.signal("HUP");
    assert!(
        recv_until(&sock, "RELOADING=1", Duration::from_secs(10), &mut got),
        "no RELOADING=1 after SIGHUP; got {got:?}"
    );
    let reloading = got
        .iter()
        .find(|m| m.lines().any(|l| l == "RELOADING=1"))
        .unwrap();
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        usec.is_some_and(|u| u > 0),
        "RELOADING=1 without MONOTONIC_USEC: {reloading:?}"
    );
    got.clear();
    assert!(
        recv_until(&sock, "READY=1", Duration::from_secs(10), &mut got),
        "no READY=1 after the reload; got {got:?}\n{}",
        lb.log_text()
    );
    assert!(lb.wait_log("configuration reloaded"), "{}", lb.log_text());
    // Still serving.
    let mut s = connect(lb.addr("l"));
    assert_eq!(echo_roundtrip(&mut s, b"after"), b"after");
    drop(s);
    lb.signal("TERM");
    assert_eq!(lb.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn sd_notify_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = unique_name("notify");
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let echo = EchoBackend::start();
    let notify = format!("@{name}");
    let lb = Ringlb::start_with_env(Cfg::tcp_proxy(&[echo.addr]), &[("NOTIFY_SOCKET", &notify)]);
    let mut got = Vec::new();
    assert!(
        recv_until(&sock, "READY=1", Duration::from_secs(5), &mut got),
        "no READY=1 on {notify}; got {got:?}"
    );
    lb.signal("TERM");
    assert!(
        recv_until(&sock, "STOPPING=1", Duration::from_secs(5), &mut got),
        "{got:?}"
    );
}
