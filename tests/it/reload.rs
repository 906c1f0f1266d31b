//! Hot reload (SIGHUP) and binary upgrade (SIGUSR2) under continuous load:
//! zero failed connections and requests, the new config or binary takes
//! over, an invalid config or a broken binary changes nothing.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use crate::common::{http::Backend, temp_file, Echo, BIN};

/// A ringlb started from `exe` with a config file the test rewrites.
struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    cfg: PathBuf,
}

impl Proc {
    fn start(exe: &Path, cfg_text: &str) -> Proc {
        let cfg = temp_file("reload", cfg_text);
        // ETXTBSY: another test thread may have forked while this binary's copy
        // was open for writing (the child holds the fd until it execs); retry.
        let mut tries = 0;
        let mut child = loop {
            let r = Command::new(exe)
                .args(["run", "-c"])
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn();
            match r {
                Ok(c) => break c,
                Err(e) if e.raw_os_error() == Some(26) && tries < 50 => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("start ringlb: {e}"),
            }
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let l2 = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        let p = Proc { child, log, cfg };
        assert!(p.wait_log("ready:", 10), "did not start: {}", p.text());
        p
    }

    fn text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn wait_count(&self, needle: &str, n: usize, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if self.count(needle) >= n {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn wait_log(&self, needle: &str, secs: u64) -> bool {
        self.wait_count(needle, 1, secs)
    }

    /// The first listener's bound address.
    fn addr(&self) -> SocketAddr {
        let text = self.text();
        let line = text
            .lines()
            .find(|l| l.contains(" listening on "))
            .expect("listening line");
        let rest = &line[line.find(" listening on ").unwrap() + 14..];
        rest.split(' ').next().unwrap().parse().unwrap()
    }

    fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    fn rewrite(&self, text: &str) {
        std::fs::write(&self.cfg, text).unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.cfg);
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} {pid}");
}

#[derive(Default)]
struct Stats {
    ok: usize,
    failures: Vec<String>,
    /// (when, backend name) per answer.
    seen: Vec<(Instant, String)>,
}

/// HTTP load: GETs in a loop, on a keep-alive connection or a new
/// connection each time. A reused keep-alive connection found closed before
/// any byte of the answer is retried once on a new connection, as HTTP
/// clients do; everything else that is not a 200 is a failure.
fn http_load(
    addr: SocketAddr,
    keepalive: bool,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<Stats>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut conn: Option<TcpStream> = None;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let req = format!(
                "GET /r{n} HTTP/1.1\r\nHost: t\r\n{}\r\n",
                if keepalive {
                    ""
                } else {
                    "Connection: close\r\n"
                }
            );
            let mut attempt = 0;
            loop {
                attempt += 1;
                let reused = conn.is_some();
                let mut s = match conn.take() {
                    Some(s) => s,
                    None => match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                        Ok(s) => {
                            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                            s
                        }
                        Err(e) => {
                            stats.lock().unwrap().failures.push(format!("connect: {e}"));
                            break;
                        }
                    },
                };
                match exchange(&mut s, req.as_bytes()) {
                    Ok((body, close)) => {
                        let name = body.split(' ').next().unwrap_or("").to_string();
                        let mut st = stats.lock().unwrap();
                        st.ok += 1;
                        st.seen.push((Instant::now(), name));
                        if keepalive && !close {
                            conn = Some(s);
                        }
                        break;
                    }
                    Err(Failure::ClosedBeforeAnswer) if reused && attempt == 1 => continue,
                    Err(f) => {
                        let why = match f {
                            Failure::ClosedBeforeAnswer => "closed before the answer".to_string(),
                            Failure::Other(s) => s,
                        };
                        stats
                            .lock()
                            .unwrap()
                            .failures
                            .push(format!("{why} (reused {reused})"));
                        break;
                    }
                }
            }
            thread::sleep(Duration::from_millis(2));
        }
    })
}

#[derive(Debug)]
enum Failure {
    ClosedBeforeAnswer,
    Other(String),
}

/// Send a request, read one response: (body, server said close).
fn exchange(s: &mut TcpStream, req: &[u8]) -> Result<(String, bool), Failure> {
    if let Err(e) = s.write_all(req) {
        return Err(
            if e.kind() == std::io::ErrorKind::BrokenPipe
                || e.kind() == std::io::ErrorKind::ConnectionReset
            {
                Failure::ClosedBeforeAnswer
            } else {
                Failure::Other(format!("write: {e}"))
            },
        );
    }
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match s.read(&mut tmp) {
            Ok(0) if buf.is_empty() => return Err(Failure::ClosedBeforeAnswer),
            Err(e) if buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(Failure::ClosedBeforeAnswer)
            }
            Ok(0) => return Err(Failure::Other("closed mid-response".into())),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) => return Err(Failure::Other(format!("read: {e}"))),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(Failure::Other(format!(
            "status: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| Failure::Other("no content-length".into()))?;
    let close = head.to_ascii_lowercase().contains("connection: close");
    while buf.len() < head_end + len {
        match s.read(&mut tmp) {
            Ok(0) => return Err(Failure::Other("closed mid-body".into())),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) => return Err(Failure::Other(format!("read body: {e}"))),
        }
    }
    Ok((
        String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string(),
        close,
    ))
}

fn http_cfg(backend: SocketAddr) -> String {
    format!(
        "[runtime]\nworkers = 2\nshutdown_timeout = \"3s\"\n\
         [[listener]]\nname = \"web\"\nmode = \"http\"\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\
         [upstream.app]\nservers = [{{ addr = \"{backend}\" }}]\n"
    )
}

fn run_load(
    addr: SocketAddr,
) -> (
    Arc<AtomicBool>,
    Arc<Mutex<Stats>>,
    Vec<thread::JoinHandle<()>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(Stats::default()));
    let threads = vec![
        http_load(addr, true, Arc::clone(&stop), Arc::clone(&stats)),
        http_load(addr, true, Arc::clone(&stop), Arc::clone(&stats)),
        http_load(addr, false, Arc::clone(&stop), Arc::clone(&stats)),
    ];
    (stop, stats, threads)
}

#[test]
fn http_reload_under_load_switches_backends_and_drops_nothing() {
    let a = Backend::echo_path("a");
    let b = Backend::echo_path("b");
    let p = Proc::start(Path::new(BIN), &http_cfg(a.addr));
    let addr = p.addr();
    let (stop, stats, threads) = run_load(addr);
    thread::sleep(Duration::from_millis(400));

    // A valid reload to the other backend.
    p.rewrite(&http_cfg(b.addr));
    p.signal("HUP");
    assert!(p.wait_log("configuration reloaded", 10), "{}", p.text());
    let reloaded = Instant::now();
    thread::sleep(Duration::from_millis(700));

    // An invalid config: refused, nothing changes.
    p.rewrite("[[listener]]\nlisten = \"nope\"\n");
    p.signal("HUP");
    assert!(p.wait_log("reload refused", 10), "{}", p.text());
    thread::sleep(Duration::from_millis(400));

    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let st = stats.lock().unwrap();
    assert!(
        st.failures.is_empty(),
        "{} failures: {:?}",
        st.failures.len(),
        &st.failures[..st.failures.len().min(5)]
    );
    assert!(st.ok > 100, "only {} requests", st.ok);
    // Shortly after the reload every answer comes from the new backend
    // (old keep-alive connections get `Connection: close` on their next answer).
    let settled = reloaded + Duration::from_millis(300);
    let late: Vec<&String> = st
        .seen
        .iter()
        .filter(|(t, _)| *t > settled)
        .map(|(_, n)| n)
        .collect();
    assert!(late.len() > 50, "{} answers after the reload", late.len());
    assert!(
        late.iter().all(|n| *n == "b"),
        "old backend still used: {:?}",
        late.iter().filter(|n| **n != "b").count()
    );
    assert!(
        st.seen.iter().any(|(_, n)| n == "a"),
        "the first config was never used"
    );
    // The invalid config left the service as it was.
    assert_eq!(p.count("configuration reloaded"), 1);
}

#[test]
fn tcp_reload_under_load_switches_backends() {
    let a = Echo::with_greeting(Some("a\n"));
    let b = Echo::with_greeting(Some("b\n"));
    let cfg = |backend: SocketAddr| {
        format!(
            "[runtime]\nworkers = 2\nshutdown_timeout = \"3s\"\n\
             [[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n\
             [upstream.u]\nservers = [{{ addr = \"{backend}\" }}]\n"
        )
    };
    let p = Proc::start(Path::new(BIN), &cfg(a.addr));
    let addr = p.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (stop, seen, failures) =
                (Arc::clone(&stop), Arc::clone(&seen), Arc::clone(&failures));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match echo_once(addr) {
                        Ok(g) => seen.lock().unwrap().push((Instant::now(), g)),
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                    thread::sleep(Duration::from_millis(3));
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    p.rewrite(&cfg(b.addr));
    p.signal("HUP");
    assert!(p.wait_log("configuration reloaded", 10), "{}", p.text());
    let reloaded = Instant::now();
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    let seen = seen.lock().unwrap();
    let late: Vec<&String> = seen
        .iter()
        .filter(|(t, _)| *t > reloaded + Duration::from_millis(50))
        .map(|(_, g)| g)
        .collect();
    assert!(
        late.len() > 20 && late.iter().all(|g| g.as_str() == "b"),
        "{late:?}"
    );
    assert!(seen.iter().any(|(_, g)| g == "a"));
}

/// One short TCP exchange: the backend's greeting line, then an echo.
fn echo_once(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut greeting = String::new();
    r.read_line(&mut greeting)
        .map_err(|e| format!("greeting: {e}"))?;
    s.write_all(b"ping\n").map_err(|e| format!("write: {e}"))?;
    let mut echo = String::new();
    r.read_line(&mut echo).map_err(|e| format!("echo: {e}"))?;
    if echo != "ping\n" {
        return Err(format!("echo {echo:?} after greeting {greeting:?}"));
    }
    Ok(greeting.trim().to_string())
}

/// A copy of the binary in its own directory, replaceable like an install.
fn installed_binary(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringlb-upgrade-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("ringlb");
    install(BIN.as_ref(), &exe);
    exe
}

/// Replace `dst` atomically (as `install` does: the running file stays intact).
fn install(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("new");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

fn new_pid(p: &Proc) -> u32 {
    let text = p.text();
    let line = text
        .lines()
        .find(|l| l.contains("the new process (pid "))
        .expect("hand-over line");
    let at = line.find("(pid ").unwrap() + 5;
    line[at..].split(')').next().unwrap().parse().unwrap()
}

#[test]
fn binary_upgrade_under_load_drops_nothing() {
    let a = Backend::echo_path("a");
    let exe = installed_binary("ok");
    let mut p = Proc::start(&exe, &http_cfg(a.addr));
    let addr = p.addr();
    let old_pid = p.child.id();
    let (stop, stats, threads) = run_load(addr);
    thread::sleep(Duration::from_millis(300));

    install(BIN.as_ref(), &exe);
    // Let any child another test thread forked while the copy was open for
    // writing exec first (else exec of the new binary fails with ETXTBSY).
    thread::sleep(Duration::from_millis(200));
    p.signal("USR2");
    assert!(p.wait_log("the new process (pid", 30), "{}", p.text());
    let pid = new_pid(&p);
    assert_ne!(pid, old_pid);
    // The old process drains and exits 0.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    thread::sleep(Duration::from_millis(400));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    // The new process serves on the same address; then stop it (we started it, indirectly).
    let after = exchange(
        &mut TcpStream::connect(addr).unwrap(),
        b"GET /after HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    signal(pid, "TERM");
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "old process did not exit: {}",
        p.text()
    );
    assert!(after.is_ok(), "new process does not serve: {after:?}");
    let st = stats.lock().unwrap();
    assert!(
        st.failures.is_empty(),
        "{} failures: {:?}\n{}",
        st.failures.len(),
        &st.failures[..st.failures.len().min(5)],
        p.text()
    );
    assert!(st.ok > 100, "only {} requests", st.ok);
    let _ = std::fs::remove_dir_all(exe.parent().unwrap());
}

#[test]
fn failed_upgrade_keeps_the_old_process_serving() {
    let a = Backend::echo_path("a");
    let exe = installed_binary("broken");
    let p = Proc::start(&exe, &http_cfg(a.addr));
    let addr = p.addr();
    // "Install" a binary that cannot start.
    let tmp = exe.with_extension("new");
    std::fs::write(&tmp, "#!/bin/sh\necho broken >&2\nexit 1\n").unwrap();
    let mut perm = std::fs::metadata(&tmp).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&tmp, perm).unwrap();
    std::fs::rename(&tmp, &exe).unwrap();
    p.signal("USR2");
    assert!(
        p.wait_log("upgrade failed, still serving", 30),
        "{}",
        p.text()
    );
    let r = exchange(
        &mut TcpStream::connect(addr).unwrap(),
        b"GET /still HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(
        matches!(&r, Ok((body, _)) if body.starts_with("a ")),
        "{r:?}"
    );
    let _ = std::fs::remove_dir_all(exe.parent().unwrap());
}

#[test]
fn socket_activation_uses_the_passed_listening_socket() {
    let a = Backend::echo_path("a");
    // The "systemd" side: a listening socket bound before ringlb starts,
    // passed as fd 3 with LISTEN_FDS=1 and LISTEN_PID = ringlb's pid (the
    // shell execs ringlb, so its pid is the shell's).
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_reuse_address(true).unwrap();
    sock.set_reuse_port(true).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(128).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    let cfg_text = http_cfg(a.addr).replace("127.0.0.1:0", &addr.to_string());
    let cfg = temp_file("activation", &cfg_text);
    let script = format!(
        "exec 3<&{fd}; export LISTEN_FDS=1 LISTEN_PID=$$; exec {} run -c {}",
        BIN,
        cfg.display()
    );
    // The socket must survive exec into the shell (std opens it close-on-exec).
    let sref = socket2::SockRef::from(&sock);
    sref.set_cloexec(false).unwrap();
    // bash, not sh: dash only redirects single-digit fds, and ours may be >= 10.
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sref.set_cloexec(true).unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let l2 = Arc::clone(&log);
    let stderr = child.stderr.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut l = l2.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.lock().unwrap().contains("ready:") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    // Our copy goes away: from now on only ringlb holds the socket.
    drop(sock);
    let text = log.lock().unwrap().clone();
    let r = exchange(
        &mut TcpStream::connect(addr).unwrap(),
        b"GET /act HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&cfg);
    assert!(text.contains("took over 1 listening socket(s)"), "{text}");
    assert!(
        matches!(&r, Ok((body, _)) if body.starts_with("a ")),
        "{r:?}\n{text}"
    );
}

#[test]
fn reload_changing_the_worker_count_drops_nothing() {
    let a = Backend::echo_path("a");
    let cfg =
        |workers: usize| http_cfg(a.addr).replace("workers = 2", &format!("workers = {workers}"));
    let p = Proc::start(Path::new(BIN), &cfg(2));
    let addr = p.addr();
    let (stop, stats, threads) = run_load(addr);
    thread::sleep(Duration::from_millis(300));
    // Fewer workers: one worker takes both sockets (no accept queue is closed).
    p.rewrite(&cfg(1));
    p.signal("HUP");
    assert!(
        p.wait_count("configuration reloaded", 1, 10),
        "{}",
        p.text()
    );
    thread::sleep(Duration::from_millis(300));
    // More workers than sockets: a sibling socket is bound.
    p.rewrite(&cfg(3));
    p.signal("HUP");
    assert!(
        p.wait_count("configuration reloaded", 2, 10),
        "{}",
        p.text()
    );
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let st = stats.lock().unwrap();
    assert!(
        st.failures.is_empty(),
        "{} failures: {:?}",
        st.failures.len(),
        &st.failures[..st.failures.len().min(5)]
    );
    assert!(st.ok > 100, "only {} requests", st.ok);
    assert!(p.text().contains("workers=3"), "{}", p.text());
    assert!(p.text().contains("3 SO_REUSEPORT sockets"), "{}", p.text());
}
