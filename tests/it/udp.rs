//! udp listeners (issue 14): real DNS servers (dnsmasq) behind ringlb with
//! a real DNS client (kdig), and UDP peers for the odd cases: several
//! responses, silence, a closed port (ICMP), 64 KB datagrams, thousands of
//! source ports, replies from a stray source, a wildcard address, PROXY v2.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::common::{
    admin::scrape,
    cfg::Cfg,
    dns::Dnsmasq,
    udp::{kdig, Client, Mode, UdpBackend},
    *,
};

/// A udp listener "dns" over upstream "r" (2 workers, admin on).
fn udp_cfg(servers: &[SocketAddr], listener: &str, upstream: &str) -> Cfg {
    Cfg::new(2)
        .admin()
        .listener("dns", "udp", "r")
        .listener_with(listener)
        .upstream("r", servers)
        .upstream_with(upstream)
}

fn pair() -> (Dnsmasq, Dnsmasq, [SocketAddr; 2]) {
    let one = Dnsmasq::start(&[("a.test", "10.1.1.1")], &[]);
    let two = Dnsmasq::start(&[("a.test", "10.2.2.2")], &[]);
    let addrs = [
        one.addr().parse().expect("dnsmasq addr"),
        two.addr().parse().expect("dnsmasq addr"),
    ];
    (one, two, addrs)
}

fn metric(lb: &Ringlb, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("listener", "dns")];
    all.extend_from_slice(labels);
    scrape(lb).get(name, &all).unwrap_or(-1.0)
}

fn active_flows(lb: &Ringlb) -> f64 {
    metric(lb, "ringlb_udp_flows_active", &[])
}

/// A DNS query for a.test, id 0x1234 (the udp health check's probe).
const QUERY_HEX: &str = "1234 0100 0001 0000 0000 0000 01 61 04 74657374 00 0001 0001";

#[test]
fn dnsmasq_answers_round_robin_and_flows_close_after_the_answer() {
    let (_one, _two, addrs) = pair();
    let lb = Ringlb::start(udp_cfg(&addrs, "responses = 1", ""));
    let dns = lb.addr("dns");
    let answers: Vec<String> = (0..10).filter_map(|_| kdig(dns, "a.test")).collect();
    assert_eq!(answers.len(), 10, "{answers:?}\n{}", lb.log_text());
    let distinct: HashSet<&String> = answers.iter().collect();
    assert_eq!(distinct.len(), 2, "round robin reaches both: {answers:?}");
    // responses = 1: every flow closed with its answer, long before the
    // 30 s idle timeout.
    assert!(
        wait_until(Duration::from_secs(2), || active_flows(&lb) == 0.0),
        "{} flows still open",
        active_flows(&lb)
    );
    assert!(metric(&lb, "ringlb_udp_flows_total", &[]) >= 10.0);
    assert_eq!(
        metric(&lb, "ringlb_udp_datagrams_total", &[("direction", "out")]),
        10.0
    );
}

#[test]
fn consistent_hashing_keeps_a_client_ip_on_one_backend_on_every_worker() {
    let (_one, _two, addrs) = pair();
    let lb = Ringlb::start(udp_cfg(
        &addrs,
        "responses = 1",
        "balance = \"consistent_hash\"",
    ));
    let dns = lb.addr("dns");
    let mut by_ip: HashMap<String, HashSet<String>> = HashMap::new();
    for i in 1..=8 {
        let src = format!("127.0.0.{i}");
        for _ in 0..4 {
            // A new source port each time: SO_REUSEPORT spreads them over
            // both workers, the hash must not care.
            let c = Client::from(&format!("{src}:0"));
            let answer = dns_ask(&c, dns);
            by_ip.entry(src.clone()).or_default().insert(answer);
        }
    }
    for (ip, seen) in &by_ip {
        assert_eq!(seen.len(), 1, "{ip} reached {seen:?}");
    }
    let all: HashSet<&String> = by_ip.values().flatten().collect();
    assert_eq!(
        all.len(),
        2,
        "8 client addresses spread over both: {by_ip:?}"
    );
}

/// One DNS query for a.test from `c`; the answer's address, as text.
fn dns_ask(c: &Client, server: SocketAddr) -> String {
    let q = hex(QUERY_HEX);
    c.send(server, &q);
    let (reply, _) = c.recv().expect("a DNS answer");
    assert!(reply.len() >= q.len() + 4, "{reply:?}");
    let ip = &reply[reply.len() - 4..];
    format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])
}

fn hex(h: &str) -> Vec<u8> {
    let d: Vec<u8> = h.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    d.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

#[test]
fn a_dead_backend_is_found_by_its_udp_check_and_skipped() {
    let (_one, mut two, addrs) = pair();
    let lb = Ringlb::start(udp_cfg(
        &addrs,
        "responses = 1",
        &format!("health = {{ kind = \"udp\", send_hex = \"{QUERY_HEX}\", expect_hex = \"1234\", interval = \"200ms\", timeout = \"300ms\", fall = 1, rise = 1 }}"),
    ));
    let dns = lb.addr("dns");
    two.stop();
    assert!(
        lb.wait_count("backend is DOWN", 1, Duration::from_secs(5)),
        "{}",
        lb.log_text()
    );
    let answers: Vec<Option<String>> = (0..10).map(|_| kdig(dns, "a.test")).collect();
    assert!(
        answers.iter().all(|a| a.as_deref() == Some("10.1.1.1")),
        "{answers:?}"
    );
}

#[test]
fn a_closed_backend_port_ends_the_flow_and_counts_against_the_backend() {
    let mut gone = UdpBackend::start("gone", Mode::Echo);
    let live = UdpBackend::start("live", Mode::Echo);
    let lb = Ringlb::start(udp_cfg(
        &[gone.addr, live.addr],
        "responses = 1",
        "eject = { failures = 1, cooldown = \"30s\" }",
    ));
    let dns = lb.addr("dns");
    gone.kill();
    // The ICMP port unreachable comes back on the flow's own socket: the
    // flow ends at once (not at its 30 s idle timeout) and the backend is
    // ejected; later datagrams go to the live one.
    let replies: Vec<Option<String>> = (0..6).map(|_| Client::new().ask(dns, "q")).collect();
    assert!(
        wait_until(Duration::from_secs(2), || active_flows(&lb) == 0.0),
        "{replies:?}"
    );
    let after: Vec<Option<String>> = (0..6).map(|_| Client::new().ask(dns, "q")).collect();
    assert!(
        after.iter().all(|r| r.as_deref() == Some("live:q")),
        "{replies:?} then {after:?}\n{}",
        lb.log_text()
    );
}

#[test]
fn several_responses_silence_and_stray_sources() {
    let multi = UdpBackend::start("m", Mode::Multi(3));
    let lb = Ringlb::start(udp_cfg(&[multi.addr], "responses = 3", ""));
    let c = Client::new();
    c.send(lb.addr("dns"), b"x");
    let got: Vec<String> = (0..3)
        .filter_map(|_| c.recv())
        .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
        .collect();
    assert_eq!(got, ["m:0:x", "m:1:x", "m:2:x"]);
    assert!(wait_until(Duration::from_secs(2), || active_flows(&lb) == 0.0));
    drop(lb);

    // Silence with responses = 1: the flow ends at its idle timeout and
    // counts as unanswered (against the backend).
    let quiet = UdpBackend::start("q", Mode::Silent);
    let lb = Ringlb::start(udp_cfg(
        &[quiet.addr],
        "responses = 1\nidle_timeout = \"300ms\"",
        "",
    ));
    assert_eq!(Client::new().ask(lb.addr("dns"), "hello?"), None);
    assert!(wait_until(Duration::from_secs(3), || metric(
        &lb,
        "ringlb_udp_unanswered_total",
        &[]
    ) == 1.0));
    assert_eq!(active_flows(&lb), 0.0);
    drop(lb);

    // A reply from another source port is not the backend's: the flow's
    // connected socket never takes it, the client gets nothing.
    let stray = UdpBackend::start("s", Mode::WrongSource);
    let lb = Ringlb::start(udp_cfg(&[stray.addr], "", ""));
    assert_eq!(Client::new().ask(lb.addr("dns"), "hi"), None);
    assert_eq!(stray.seen(), 1);
}

#[test]
fn big_datagrams_pass_and_oversize_ones_are_dropped_and_counted() {
    let echo = UdpBackend::start("e", Mode::Echo);
    let lb = Ringlb::start(udp_cfg(&[echo.addr], "", ""));
    let c = Client::new();
    let big = vec![b'z'; 65_000];
    c.send(lb.addr("dns"), &big);
    let (reply, _) = c.recv().expect("the 64 KB echo");
    assert_eq!(reply.len(), 65_002);
    assert!(reply[2..].iter().all(|&b| b == b'z'));
    drop(lb);

    let lb = Ringlb::start(udp_cfg(&[echo.addr], "max_datagram_size = 1000", ""));
    let c = Client::new();
    c.send(lb.addr("dns"), &vec![b'y'; 1500]);
    assert!(
        c.recv().is_none(),
        "a truncated datagram must not be passed on"
    );
    assert_eq!(c.ask(lb.addr("dns"), "small").as_deref(), Some("e:small"));
    assert_eq!(
        metric(&lb, "ringlb_udp_dropped_total", &[("reason", "truncated")]),
        1.0
    );
}

#[test]
fn ten_thousand_source_ports_are_bounded_by_max_flows() {
    let echo = UdpBackend::start("e", Mode::Echo);
    let lb = Ringlb::start(udp_cfg(
        &[echo.addr],
        "max_flows = 300\nidle_timeout = \"1s\"",
        "",
    ));
    let dns = lb.addr("dns");
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", lb.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = fds();
    let mut peak = 0;
    for _ in 0..10 {
        // 1,000 client sockets at a time, one datagram each.
        let batch: Vec<Client> = (0..1000).map(|_| Client::new()).collect();
        for c in &batch {
            c.send(dns, b"p");
        }
        std::thread::sleep(Duration::from_millis(50));
        peak = peak.max(fds());
    }
    let dropped = metric(&lb, "ringlb_udp_dropped_total", &[("reason", "max_flows")]);
    assert!(dropped > 0.0, "no datagram over max_flows was dropped");
    assert!(active_flows(&lb) <= 600.0, "{}", active_flows(&lb));
    assert!(peak <= before + 600 + 16, "fds {before} -> {peak}");
    // Idle flows close (1 s) and new clients are served again.
    assert!(wait_until(Duration::from_secs(5), || active_flows(&lb) == 0.0));
    assert_eq!(Client::new().ask(dns, "after").as_deref(), Some("e:after"));
    eprintln!("10,000 ports: {dropped} datagrams dropped over max_flows, fds {before} -> {peak}");
}

#[test]
fn retired_flows_count_toward_max_flows_and_responses_0_ends_a_flow_at_once() {
    // requests = 1: every datagram starts a flow of its own, which keeps
    // its socket until it is idle (30 s): max_flows bounds them all.
    let echo = UdpBackend::start("e", Mode::Silent);
    let lb = Ringlb::start(
        Cfg::new(1)
            .admin()
            .listener("dns", "udp", "r")
            .listener_with("requests = 1\nmax_flows = 50")
            .upstream("r", &[echo.addr]),
    );
    let c = Client::new();
    for i in 0..200 {
        c.send(lb.addr("dns"), format!("d{i}").as_bytes());
    }
    assert!(wait_until(Duration::from_secs(3), || echo.seen() >= 50));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(active_flows(&lb), 50.0);
    assert_eq!(echo.seen(), 50);
    assert_eq!(
        metric(&lb, "ringlb_udp_dropped_total", &[("reason", "max_flows")]),
        150.0
    );
    drop(lb);

    // responses = 0 (syslog): nothing comes back, the flow ends once the
    // datagram went on.
    let sink = UdpBackend::start("s", Mode::Silent);
    let lb = Ringlb::start(udp_cfg(&[sink.addr], "responses = 0", ""));
    for i in 0..20 {
        Client::new().send(lb.addr("dns"), format!("<13>log {i}").as_bytes());
    }
    assert!(wait_until(Duration::from_secs(2), || sink.seen() == 20));
    assert!(wait_until(Duration::from_secs(2), || active_flows(&lb) == 0.0));
    assert_eq!(metric(&lb, "ringlb_udp_unanswered_total", &[]), 0.0);
}

#[test]
fn a_wildcard_listener_replies_from_the_address_the_client_asked() {
    let echo = UdpBackend::start("e", Mode::Echo);
    let lb = Ringlb::start(
        Cfg::new(1)
            .listener("dns", "udp", "r")
            .listener_with("listen = \"0.0.0.0:0\"")
            .upstream("r", &[echo.addr]),
    );
    let port = lb.addr("dns").port();
    for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        let to: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let c = Client::new();
        c.send(to, b"w");
        let (reply, from) = c.recv().expect("an answer");
        assert_eq!(reply, b"e:w");
        assert_eq!(from, to, "the reply must come from the address asked");
    }
}

#[test]
fn proxy_protocol_v2_starts_every_datagram() {
    let p = UdpBackend::start("p", Mode::ProxyV2);
    let lb = Ringlb::start(udp_cfg(&[p.addr], "proxy_protocol = \"v2\"", ""));
    let c = Client::new();
    let me = c.sock.local_addr().unwrap();
    for _ in 0..2 {
        assert_eq!(c.ask(lb.addr("dns"), "x"), Some(format!("p:{me}")));
    }
}

#[test]
fn each_flow_gets_an_access_log_line() {
    let echo = UdpBackend::start("e", Mode::Echo);
    let dir = TempDir::new("udp-log");
    let log = dir.path("access.log");
    let lb = Ringlb::start(udp_cfg(&[echo.addr], "responses = 1", "").table(&format!(
        "[access_log]\npath = \"{}\"\nformat = \"json\"\n",
        log.display()
    )));
    let c = Client::new();
    assert_eq!(c.ask(lb.addr("dns"), "hi").as_deref(), Some("e:hi"));
    let me = c.sock.local_addr().unwrap();
    let mut line = String::new();
    assert!(wait_until(Duration::from_secs(3), || {
        line = std::fs::read_to_string(&log).unwrap_or_default();
        !line.is_empty()
    }));
    let v = crate::common::json::parse(line.trim()).expect("one JSON line");
    let s = |k: &str| {
        v.get(k)
            .and_then(|x| x.str())
            .unwrap_or_default()
            .to_string()
    };
    let n = |k: &str| v.get(k).and_then(|x| x.uint()).unwrap_or(u64::MAX);
    assert_eq!(s("listener"), "dns");
    assert_eq!(s("client"), me.to_string());
    assert_eq!(s("backend"), echo.addr.to_string());
    assert_eq!(s("end"), "done");
    assert_eq!((n("datagrams_in"), n("datagrams_out")), (1, 1));
    assert_eq!((n("bytes_in"), n("bytes_out")), (2, 4));
}

/// Queries every 5 ms from one client while `during` runs: how many got
/// no answer.
fn lost_during(dns: SocketAddr, during: impl FnOnce()) -> (usize, usize) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = std::sync::Arc::clone(&stop);
    let t = std::thread::spawn(move || {
        let c = Client::new();
        let (mut sent, mut lost) = (0, 0);
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            sent += 1;
            if c.ask(dns, &format!("n{sent}")) != Some(format!("e:n{sent}")) {
                lost += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (sent, lost)
    });
    std::thread::sleep(Duration::from_millis(300));
    during();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    t.join().unwrap()
}

#[test]
fn a_reload_and_a_binary_upgrade_keep_the_udp_socket() {
    let echo = UdpBackend::start("e", Mode::Echo);
    let mut lb = Ringlb::start(udp_cfg(&[echo.addr], "", ""));
    let dns = lb.addr("dns");
    // A new generation (a listener key changed) takes the same sockets.
    let (sent, lost) = lost_during(dns, || {
        lb.rewrite(udp_cfg(&[echo.addr], "idle_timeout = \"20s\"", ""));
        lb.signal("HUP");
        assert!(lb.wait_log("configuration reloaded"), "{}", lb.log_text());
    });
    assert_eq!(lost, 0, "{lost} of {sent} lost across the reload");
    let t = Instant::now();
    let mut pid = None;
    let (sent, lost) = lost_during(dns, || {
        pid = lb.upgrade();
        assert!(pid.is_some(), "{}", lb.log_text());
    });
    let exited = lb.wait_exit(Duration::from_secs(10));
    let still = Client::new().ask(dns, "after");
    if let Some(pid) = pid {
        signal(pid, "TERM");
    }
    assert_eq!(
        lost,
        0,
        "{lost} of {sent} lost across the upgrade ({:?})",
        t.elapsed()
    );
    assert_eq!(exited, Some(0));
    assert_eq!(still.as_deref(), Some("e:after"));
}

#[test]
fn check_refuses_keys_that_mean_nothing_for_datagrams() {
    let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (listener, upstream, want) in [
        (
            "max_connections = 5",
            "",
            "listener[0].max_connections: does not apply",
        ),
        (
            "transfer = \"copy\"",
            "",
            "listener[0].transfer: does not apply",
        ),
        ("proxy_protocol = \"v1\"", "", "\"v2\""),
        ("flow_key = \"port\"", "", "expected one of"),
        ("max_datagram_size = 100", "", "between 512 and 65535"),
        (
            "",
            "hash_key = \"uri\"",
            "udp flows can only hash by client_ip",
        ),
        ("", "health = { kind = \"udp\" }", "health.send: missing"),
        (
            "",
            "health = { kind = \"tcp\", send = \"x\" }",
            "need kind = \"udp\"",
        ),
    ] {
        let (rc, _, err) = check_config(udp_cfg(&[a], listener, upstream));
        assert_eq!(rc, 2, "{listener} {upstream}: {err}");
        assert!(err.contains(want), "{listener} {upstream}: {err}");
    }
    // Only on udp listeners.
    let (rc, _, err) = check_config(Cfg::tcp_proxy(&[a]).listener_with("responses = 1"));
    assert_eq!(rc, 2);
    assert!(err.contains("only applies to mode = \"udp\""), "{err}");
    // A tcp and a udp listener may share a port.
    let (rc, _, err) = check_config(
        Cfg::new(1)
            .listener("t", "tcp", "r")
            .listener_with("listen = \"127.0.0.1:5353\"")
            .listener("u", "udp", "r")
            .listener_with("listen = \"127.0.0.1:5353\"")
            .upstream("r", &[a]),
    );
    assert_eq!(rc, 0, "{err}");
}
