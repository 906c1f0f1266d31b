//! TCP proxying (mode = "tcp", L4) through the real binary: integrity,
//! concurrency, half-close, failover, timeouts, PROXY protocol, IPv6, on
//! both drivers and both transfer modes.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::{atomic::Ordering, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::common::{backends::*, *};
use sha2::{Digest, Sha256};

/// Push `data` through the proxy to an echo backend while reading it back;
/// compare digests.
fn bulk_echo(extra_listener: &str, extra_runtime: &str) {
    let echo = EchoBackend::start();
    let lb = Ringlb::start(
        Cfg::tcp_proxy(&[echo.addr])
            .listener_with(extra_listener)
            .runtime(extra_runtime),
    );
    let data = Arc::new(pseudo_random(50 << 20, 0x5eed));
    let want = Sha256::digest(&*data);
    let s = connect(lb.addr("l"));
    let mut w = s.try_clone().unwrap();
    let d2 = Arc::clone(&data);
    let writer = thread::spawn(move || {
        for chunk in d2.chunks(1 << 20) {
            w.write_all(chunk).unwrap();
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut r = s;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0usize;
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n;
    }
    writer.join().unwrap();
    assert_eq!(total, data.len(), "byte count");
    assert_eq!(hasher.finalize(), want, "sha256 of echoed data");
}

#[test]
fn bulk_50mb_intact_splice_io_uring() {
    bulk_echo("transfer = \"splice\"", "");
}

#[test]
fn bulk_50mb_intact_copy_io_uring() {
    bulk_echo("transfer = \"copy\"", "");
}

#[test]
fn bulk_50mb_intact_splice_epoll() {
    bulk_echo("transfer = \"splice\"", "io_uring = \"off\"");
}

#[test]
fn bulk_50mb_intact_when_pipe_pool_is_exhausted() {
    // pipe_pool = 0: every burst falls back to the copy buffer.
    bulk_echo("transfer = \"splice\"", "pipe_pool = 0");
}

fn concurrent(extra_runtime: &str) {
    let echo = EchoBackend::start();
    let lb = Ringlb::start(Cfg::tcp_proxy(&[echo.addr]).runtime(extra_runtime));
    let addr = lb.addr("l");
    let handles: Vec<_> = (0..200)
        .map(|i| {
            thread::spawn(move || {
                let mut s = connect(addr);
                for round in 0..3 {
                    let msg = format!("client {i} round {round} {}\n", "x".repeat(i * 7));
                    assert_eq!(echo_roundtrip(&mut s, msg.as_bytes()), msg.as_bytes());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(echo.conns(), 200);
}

#[test]
fn two_hundred_concurrent_connections_echo() {
    concurrent("");
}

#[test]
fn two_hundred_concurrent_connections_echo_epoll() {
    concurrent("io_uring = \"off\"");
}

#[test]
fn client_half_close_keeps_reply_flowing() {
    // Backend reads until EOF, then answers with the byte count and closes.
    let backend = scripted(|mut s| {
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        thread::sleep(Duration::from_millis(100));
        s.write_all(format!("got {} bytes", all.len()).as_bytes())
            .unwrap();
    });
    for transfer in ["splice", "copy"] {
        let lb = Ringlb::start(
            Cfg::tcp_proxy(&[backend.addr]).listener_with(&format!("transfer = \"{transfer}\"")),
        );
        let mut s = connect(lb.addr("l"));
        s.write_all(&[7u8; 100_000]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "got 100000 bytes", "transfer {transfer}");
    }
}

#[test]
fn backend_half_close_keeps_request_flowing() {
    // Backend says hello and shuts its write half at once, then keeps
    // reading; it reports what it read on a side channel.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let backend = scripted(move |mut s| {
        s.write_all(b"bye").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        seen2.lock().unwrap().push(all);
    });
    let lb = Ringlb::start(Cfg::tcp_proxy(&[backend.addr]));
    let mut s = connect(lb.addr("l"));
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap(); // EOF from the backend reaches us...
    assert_eq!(got, b"bye");
    s.write_all(b"still talking").unwrap(); // ...and our direction still flows.
    s.shutdown(Shutdown::Write).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        seen.lock().unwrap().first().map(|v| v.as_slice()),
        Some(&b"still talking"[..])
    );
}

#[test]
fn refused_backend_is_skipped() {
    let dead = refused_addr();
    let echo = EchoBackend::start();
    let lb = Ringlb::start(Cfg::tcp_proxy(&[dead, echo.addr]).listener_with("connect_tries = 2"));
    for i in 0..20 {
        let mut s = connect(lb.addr("l"));
        let msg = format!("ping {i}");
        assert_eq!(echo_roundtrip(&mut s, msg.as_bytes()), msg.as_bytes());
    }
    assert_eq!(echo.conns(), 20);
}

#[test]
fn all_backends_refusing_closes_client_promptly() {
    let lb = Ringlb::start(Cfg::tcp_proxy(&[refused_addr(), refused_addr()]));
    let mut s = connect(lb.addr("l"));
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "client must be closed");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        start.elapsed()
    );
}

/// A listening socket whose accept queue is full: SYNs to it are dropped,
/// so connects hang until the client's timeout. Loopback only.
fn blackhole() -> (socket2::Socket, Vec<TcpStream>, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(c) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fillers.push(c);
        }
    }
    (s, fillers, addr)
}

#[test]
fn connect_timeout_then_next_backend_then_give_up() {
    let (_hole, _fill, hole) = blackhole();
    let echo = EchoBackend::start();
    // First: the black hole times out (300ms) and the next backend serves.
    let cfg = Cfg::tcp_proxy(&[hole, echo.addr])
        .listener_with("connect_timeout = \"300ms\"\nconnect_tries = 2")
        .upstream_with("balance = \"round_robin\"")
        .runtime("workers = 1");
    let lb = Ringlb::start(&cfg);
    for _ in 0..2 {
        let mut s = connect(lb.addr("l"));
        assert_eq!(echo_roundtrip(&mut s, b"hi"), b"hi");
    }
    drop(lb);
    // Then: only black holes -> client closed after about tries x timeout.
    let cfg =
        Cfg::tcp_proxy(&[hole]).listener_with("connect_timeout = \"300ms\"\nconnect_tries = 2");
    let lb = Ringlb::start(&cfg);
    let mut s = connect(lb.addr("l"));
    let start = Instant::now();
    let mut buf = [0u8; 4];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "closed too early ({took:?}): timeout not applied"
    );
    assert!(took < Duration::from_secs(4), "closed after {took:?}");
    assert!(lb.wait_log("timed out"), "log: {}", lb.log_text());
}

#[test]
fn idle_timeout_closes_both_sides() {
    let echo = EchoBackend::start();
    // Backend connections whose echo loop ended (the peer closed).
    let closed = || echo.conns() - echo.active.load(Ordering::SeqCst);
    let lb = Ringlb::start(Cfg::tcp_proxy(&[echo.addr]).listener_with("idle_timeout = \"400ms\""));
    let mut s = connect(lb.addr("l"));
    // Traffic keeps it alive past the timeout...
    for _ in 0..4 {
        assert_eq!(echo_roundtrip(&mut s, b"tick"), b"tick");
        thread::sleep(Duration::from_millis(200));
    }
    // ...silence ends it: both sides see the close.
    let start = Instant::now();
    let mut buf = [0u8; 4];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    assert!(start.elapsed() < Duration::from_secs(3));
    wait_until(Duration::from_secs(3), || closed() > 0);
    assert_eq!(closed(), 1, "backend side closed too");
}

/// Idle proxied connections cost little memory: the allocator does not ask
/// for transparent huge pages (mimalloc would on its arena, and each 2 MiB
/// page faulted in counts whole), and 1,000 idle
/// connections through it grow its RSS by under 4 KiB each (a debug build;
/// perf/c100k.sh measures the release build). With huge pages allowed
/// this measured about 5 KiB a connection.
#[test]
fn idle_connections_stay_small() {
    let echo = EchoBackend::start();
    let lb = Ringlb::start(Cfg::tcp_proxy(&[echo.addr]));
    let open = |n: usize, held: &mut Vec<TcpStream>| {
        for _ in 0..n {
            let mut s = connect(lb.addr("l"));
            assert_eq!(echo_roundtrip(&mut s, b"x"), b"x");
            held.push(s);
        }
    };
    let mut held = Vec::new();
    // Warm up first: the worker's pools and tables reach their working size.
    open(100, &mut held);
    thread::sleep(Duration::from_millis(200));
    let (before, _) = crate::common::http::rss_kib(lb.pid());
    open(1000, &mut held);
    thread::sleep(Duration::from_millis(200));
    let (after, _) = crate::common::http::rss_kib(lb.pid());
    let per_conn = (after.saturating_sub(before)) as f64 / 1000.0;
    eprintln!("RSS {before} -> {after} KiB: {per_conn:.2} KiB per idle connection");
    // Where huge pages come only on request (this machine's "madvise"
    // mode), ringlb has none.
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
    if thp.is_ok_and(|m| m.contains("[madvise]")) {
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", lb.pid())).unwrap();
        let huge = smaps.lines().find(|l| l.starts_with("AnonHugePages:"));
        assert_eq!(
            huge.and_then(|l| l.split_whitespace().nth(1)),
            Some("0"),
            "{huge:?}"
        );
    }
    assert!(per_conn < 4.0, "{per_conn:.2} KiB per idle connection");
}

#[test]
fn ipv6_listener_and_backend() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this machine");
        return;
    }
    let echo = EchoBackend::start_on("[::1]:0".parse().unwrap());
    let lb = Ringlb::start(Cfg::tcp_proxy(&[echo.addr]).listener_with("listen = \"[::1]:0\""));
    assert!(lb.addr("l").is_ipv6());
    let mut s = connect(lb.addr("l"));
    assert_eq!(echo_roundtrip(&mut s, b"over v6"), b"over v6");
}

/// Backend that records the PROXY header (a v1 line, or v2 when `v2`) and
/// echoes the rest.
fn header_recorder(seen: Arc<Mutex<Vec<Vec<u8>>>>, v2: bool) -> Server {
    scripted(move |s| {
        let mut r = BufReader::new(s.try_clone().unwrap());
        let header = if v2 {
            let mut fixed = [0u8; 16];
            r.read_exact(&mut fixed).unwrap();
            let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
            let mut rest = vec![0u8; len];
            r.read_exact(&mut rest).unwrap();
            [fixed.to_vec(), rest].concat()
        } else {
            let mut line = Vec::new();
            r.read_until(b'\n', &mut line).unwrap();
            line
        };
        seen.lock().unwrap().push(header);
        echo_loop(&mut r, &mut &s);
    })
}

#[test]
fn sends_proxy_protocol_v1() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = header_recorder(Arc::clone(&seen), false);
    let lb =
        Ringlb::start(Cfg::tcp_proxy(&[backend.addr]).listener_with("proxy_protocol = \"v1\""));
    let mut s = connect(lb.addr("l"));
    assert_eq!(echo_roundtrip(&mut s, b"payload"), b"payload");
    let me = s.local_addr().unwrap();
    let want = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
        me.port(),
        lb.addr("l").port()
    );
    assert_eq!(String::from_utf8_lossy(&seen.lock().unwrap()[0]), want);
}

#[test]
fn accepts_proxy_v1_and_forwards_real_client_in_v2() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = header_recorder(Arc::clone(&seen), true);
    let lb = Ringlb::start(Cfg::tcp_proxy(&[backend.addr])
.listener_with("accept_proxy_protocol = \"v1\"\nproxy_protocol = \"v2\"\nproxy_protocol_timeout = \"500ms\""));
    let mut s = connect(lb.addr("l"));
    // Header and first payload bytes in one segment: the payload must not be lost.
    s.write_all(b"PROXY TCP4 203.0.113.9 198.51.100.1 40000 443\r\nfirst")
        .unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"first");
    let h = seen.lock().unwrap()[0].clone();
    let parsed = ppp::v2::Header::try_from(h.as_slice()).unwrap();
    match parsed.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            assert_eq!(a.source_address.to_string(), "203.0.113.9");
            assert_eq!(a.source_port, 40000);
            assert_eq!(a.destination_address.to_string(), "198.51.100.1");
            assert_eq!(a.destination_port, 443);
        }
        other => panic!("unexpected addresses {other:?}"),
    }

    // A client without a header, or a bad one, is closed without reaching the backend.
    let mut bad = connect(lb.addr("l"));
    bad.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(bad.read(&mut buf).unwrap_or(0), 0);
    let mut silent = connect(lb.addr("l"));
    let start = Instant::now();
    assert_eq!(
        silent.read(&mut buf).unwrap_or(0),
        0,
        "silent client closed after the header timeout"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "only the valid client reached the backend"
    );
}

#[test]
fn accepts_proxy_v2() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = header_recorder(Arc::clone(&seen), false);
    let lb = Ringlb::start(
        Cfg::tcp_proxy(&[backend.addr])
            .listener_with("accept_proxy_protocol = \"any\"\nproxy_protocol = \"v1\""),
    );
    let mut s = connect(lb.addr("l"));
    let h = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "[2001:db8::7]:5000".parse::<SocketAddr>().unwrap(),
            "[2001:db8::1]:80".parse::<SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap();
    s.write_all(&h).unwrap();
    assert_eq!(echo_roundtrip(&mut s, b"abc"), b"abc");
    assert_eq!(
        String::from_utf8_lossy(&seen.lock().unwrap()[0]),
        "PROXY TCP6 2001:db8::7 2001:db8::1 5000 80\r\n"
    );
}

/// Backends that greet with their index, so the client sees who served it.
fn named_backends(n: usize) -> Vec<EchoBackend> {
    (0..n)
        .map(|i| EchoBackend::greeting(&i.to_string()))
        .collect()
}

fn who(addr: SocketAddr) -> usize {
    let mut s = connect(addr);
    let mut line = String::new();
    BufReader::new(&mut s).read_line(&mut line).unwrap();
    line.trim().parse().unwrap()
}

#[test]
fn weighted_distribution_over_real_connections() {
    let b = named_backends(3);
    let cfg = |workers| {
        Cfg::new(workers)
            .tcp("l", "u")
            .upstream("u", &[])
            .server(b[0].addr, "weight = 5")
            .server(b[1].addr, "weight = 1")
            .server(b[2].addr, "weight = 1")
            .upstream_with("balance = \"weighted_round_robin\"")
    };
    // One worker: the exact smooth sequence a a b a c a a.
    let lb = Ringlb::start(cfg(1));
    let seq: Vec<usize> = (0..14).map(|_| who(lb.addr("l"))).collect();
    assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    drop(lb);
    // Two workers, each with its own replica: the totals still follow the weights.
    let lb = Ringlb::start(cfg(2));
    let mut counts = [0usize; 3];
    for _ in 0..140 {
        counts[who(lb.addr("l"))] += 1;
    }
    assert!((90..=110).contains(&counts[0]), "{counts:?}");
    assert!(
        (12..=28).contains(&counts[1]) && (12..=28).contains(&counts[2]),
        "{counts:?}"
    );
}

#[test]
fn consistent_hash_keeps_a_client_ip_on_one_backend() {
    let b = named_backends(4);
    let addrs: Vec<SocketAddr> = b.iter().map(|x| x.addr).collect();
    let lb = Ringlb::start(
        Cfg::new(2)
            .tcp("l", "u")
            .upstream("u", &addrs)
            .upstream_with("balance = \"consistent_hash\"\nhash_key = \"client_ip\""),
    );
    // Same client IP (127.0.0.1) on many connections, across both workers: one backend.
    let first = who(lb.addr("l"));
    for _ in 0..30 {
        assert_eq!(who(lb.addr("l")), first);
    }
}

#[test]
fn least_conn_and_random_spread_over_all_backends() {
    for balance in ["least_conn", "random"] {
        let b = named_backends(3);
        let addrs: Vec<SocketAddr> = b.iter().map(|x| x.addr).collect();
        let lb = Ringlb::start(
            Cfg::new(2)
                .tcp("l", "u")
                .upstream("u", &addrs)
                .upstream_with(&format!("balance = \"{balance}\"")),
        );
        let mut counts = [0usize; 3];
        for _ in 0..90 {
            counts[who(lb.addr("l"))] += 1;
        }
        assert!(counts.iter().all(|c| *c >= 10), "{balance}: {counts:?}");
    }
}

#[test]
fn bulk_50mb_intact_auto_default() {
    bulk_echo("", "");
}

#[test]
fn auto_mode_copies_small_bursts_and_splices_bulk() {
    let echo = EchoBackend::start();
    let lb = Ringlb::start(Cfg::tcp_proxy(&[echo.addr]));
    // (stderr and inherited fds may be pipes too: count relative to the start.)
    let pipes_at_start = lb.fd_kinds().1;
    let mut s = connect(lb.addr("l"));
    for i in 0..50 {
        let msg = format!("small request {i}");
        assert_eq!(echo_roundtrip(&mut s, msg.as_bytes()), msg.as_bytes());
    }
    assert_eq!(
        lb.fd_kinds().1,
        pipes_at_start,
        "request/response traffic should not create pipes: {}",
        lb.fd_list()
    );
    // Bulk: 8 MB each way makes the direction switch to splice (pooled pipes appear).
    let data = pseudo_random(8 << 20, 7);
    let mut w = s.try_clone().unwrap();
    let d2 = data.clone();
    let writer = thread::spawn(move || w.write_all(&d2).unwrap());
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == data, "bulk data corrupted");
    assert!(
        lb.fd_kinds().1 > pipes_at_start,
        "bulk traffic should use splice pipes"
    );
}

#[test]
fn slow_steady_reader_is_not_idle() {
    // The backend streams 2 MB as fast as it can; the client drains it slowly
    // through a small receive buffer, so one relay burst lasts well past the
    // 300 ms idle timeout while bytes keep moving. It must not be cut off.
    let total = 2 << 20;
    let backend = scripted(move |mut s| {
        let chunk = vec![0x42u8; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            if s.write_all(&chunk).is_err() {
                return;
            }
            sent += chunk.len();
        }
    });
    for transfer in ["auto", "splice", "copy"] {
        let lb = Ringlb::start(Cfg::tcp_proxy(&[backend.addr]).listener_with(&format!(
            "idle_timeout = \"300ms\"\ntransfer = \"{transfer}\""
        )));
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(16 * 1024).unwrap();
        sock.connect(&lb.addr("l").into()).unwrap();
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let start = Instant::now();
        let mut got = 0usize;
        let mut buf = vec![0u8; 32 * 1024];
        while got < total {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => panic!("{transfer}: read failed after {got} bytes: {e}"),
            }
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            got,
            total,
            "{transfer}: cut off after {got} bytes ({:?})",
            start.elapsed()
        );
        assert!(
            start.elapsed() > Duration::from_millis(600),
            "{transfer}: the reader was not slow enough to test anything"
        );
    }
}
