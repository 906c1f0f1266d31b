//! Test harness: start the real `ringlb` binary on loopback with ephemeral
//! ports, plus small real backends (echo, scripted). Everything started here
//! is stopped by PID when its handle drops.
#![allow(dead_code)]

pub mod admin;
pub mod backends;
pub mod http;
pub mod json;
pub mod notify;
pub mod prom;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_ringlb");

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A name no other test in this run uses: `ringlb-test-PID-WHAT-N`.
pub fn unique_name(what: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("ringlb-test-{}-{what}-{n}", std::process::id())
}

/// A unique temp file holding `text`.
pub fn temp_file(prefix: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("{}.toml", unique_name(prefix)));
    std::fs::write(&p, text).expect("write temp config");
    p
}

/// `ringlb check -c` on `text`: (exit code, stdout, stderr).
pub fn check_config(text: &str) -> (i32, String, String) {
    let path = temp_file("check", text);
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// How to start ringlb beyond its config.
#[derive(Clone, Copy, Default)]
pub struct Opts<'a> {
    /// Extra environment variables; `RINGLB_LOG=info` is set unless listed
    /// here or in `unset`.
    pub env: &'a [(&'a str, &'a str)],
    /// Variables removed from the inherited environment.
    pub unset: &'a [&'a str],
    /// Collect stdout lines (otherwise stdout is /dev/null).
    pub stdout: bool,
    /// Return right after spawning instead of waiting for the INFO
    /// `ready:` line (for runs that log above info).
    pub no_wait: bool,
}

/// A running ringlb process.
pub struct Ringlb {
    pub child: Child,
    pub addrs: HashMap<String, SocketAddr>,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Stdout lines when started with `Opts { stdout: true, .. }`.
    pub stdout: Arc<Mutex<Vec<String>>>,
    config: PathBuf,
}

impl Ringlb {
    /// Start with this config text and wait until it reports ready.
    pub fn start(config: &str) -> Ringlb {
        Self::try_start(config).unwrap_or_else(|e| panic!("ringlb did not start: {e}"))
    }

    pub fn try_start(config: &str) -> Result<Ringlb, String> {
        Self::try_start_opts(config, Opts::default())
    }

    /// Start with extra environment variables (e.g. NOTIFY_SOCKET, or
    /// RINGLB_LOG to replace the default `info`) and wait until ready.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Ringlb {
        Self::start_opts(
            config,
            Opts {
                env,
                ..Opts::default()
            },
        )
    }

    pub fn start_opts(config: &str, opts: Opts) -> Ringlb {
        Self::try_start_opts(config, opts).unwrap_or_else(|e| panic!("ringlb did not start: {e}"))
    }

    pub fn try_start_opts(config: &str, opts: Opts) -> Result<Ringlb, String> {
        let path = temp_file("cfg", config);
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "-c"]).arg(&path);
        if !opts.unset.contains(&"RINGLB_LOG") {
            cmd.env("RINGLB_LOG", "info");
        }
        for k in opts.unset {
            cmd.env_remove(k);
        }
        for (k, v) in opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(if opts.stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let out_lines = Arc::clone(&stdout);
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    out_lines.lock().unwrap().push(line);
                }
            });
        }
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let log2 = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut addrs = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        if !opts.no_wait {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) => {
                        if let Some((name, addr)) = parse_listening(&line) {
                            addrs.insert(name, addr);
                        }
                        if line.contains(" ready: ") {
                            break;
                        }
                    }
                    Err(_) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        let _ = std::fs::remove_file(&path);
                        return Err(format!(
                            "no ready line; log:\n{}",
                            log.lock().unwrap().join("\n")
                        ));
                    }
                }
            }
        }
        // Keep draining the channel so the reader thread never blocks.
        thread::spawn(move || while rx.recv().is_ok() {});
        Ok(Ringlb {
            child,
            addrs,
            log,
            stdout,
            config: path,
        })
    }

    /// Listener `name`'s address, from the `listening on` line (waiting up
    /// to 5 s for it when ringlb was started without waiting).
    pub fn addr(&self, name: &str) -> SocketAddr {
        if let Some(a) = self.addrs.get(name) {
            return *a;
        }
        let mut found = None;
        wait_for(Duration::from_secs(5), || {
            found = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| parse_listening(l))
                .find(|(n, _)| n == name)
                .map(|(_, a)| a);
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no listener {name}: {:?}", self.addrs))
    }

    /// The admin listener's address, from the `admin listening on ADDR`
    /// line (it may come after the ready line: waits up to 5 s).
    pub fn admin_addr(&self) -> SocketAddr {
        let mut found = None;
        wait_for(Duration::from_secs(5), || {
            found = self.log.lock().unwrap().iter().find_map(|l| parse_admin(l));
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no `admin listening on` line; log:\n{}", self.log_text()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// Wait for exit up to `limit`; returns the exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// (sockets, pipes) among the open fds.
    pub fn fd_kinds(&self) -> (usize, usize) {
        let mut sockets = 0;
        let mut pipes = 0;
        let dir = std::fs::read_dir(format!("/proc/{}/fd", self.pid())).expect("read /proc/PID/fd");
        {
            for e in dir.flatten() {
                let target = std::fs::read_link(e.path()).unwrap_or_default();
                let t = target.to_string_lossy();
                if t.starts_with("socket:") {
                    sockets += 1;
                } else if t.starts_with("pipe:") {
                    pipes += 1;
                }
            }
        }
        (sockets, pipes)
    }

    /// Every open fd with its target, for failure messages.
    pub fn fd_list(&self) -> String {
        let mut out = Vec::new();
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) {
            for e in dir.flatten() {
                let t = std::fs::read_link(e.path()).unwrap_or_default();
                out.push(format!(
                    "{}->{}",
                    e.file_name().to_string_lossy(),
                    t.display()
                ));
            }
        }
        out.join(" ")
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (up to 5 s) until the log contains `needle`: stderr is read by
    /// a separate thread, so a line logged just now may not be here yet.
    pub fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.log_text().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Ringlb {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// The address in an `admin listening on ADDR` line.
pub fn parse_admin(line: &str) -> Option<SocketAddr> {
    let rest = line.split("admin listening on ").nth(1)?;
    let addr = rest.split_whitespace().next()?;
    let addr = addr.trim_end_matches([',', ';', ')', '.']);
    addr.parse().ok()
}

/// Polls `f` every 10 ms until it holds or `limit` passes.
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let rest = line.split("listener \"").nth(1)?;
    let (name, rest) = rest.split_once('"')?;
    let addr = rest.trim_start().strip_prefix("listening on ")?;
    let addr = addr.split_whitespace().next()?;
    Some((name.to_string(), addr.parse().ok()?))
}

/// A loopback listener with a 1024-deep accept queue (std's default of 128
/// overflows when 200 clients connect at once; a dropped SYN is retried
/// only after 1 s, longer than the tests' connect timeout).
pub fn listen_local() -> TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(1024).unwrap();
    s.into()
}

/// A threaded echo backend; counts connections; optional greeting line.
pub struct Echo {
    pub addr: SocketAddr,
    pub conns: Arc<AtomicUsize>,
}

impl Echo {
    pub fn start() -> Echo {
        Self::with_greeting(None)
    }

    pub fn with_greeting(greeting: Option<&'static str>) -> Echo {
        let l = listen_local();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let c2 = Arc::clone(&conns);
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                c2.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || {
                    if let Some(g) = greeting {
                        if s.write_all(g.as_bytes()).is_err() {
                            return;
                        }
                    }
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => {
                                let _ = s.shutdown(Shutdown::Write);
                                return;
                            }
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Echo { addr, conns }
    }
}

/// A backend running `f` on each accepted connection (in its own thread).
pub fn scripted<F>(f: F) -> SocketAddr
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    let l = listen_local();
    let addr = l.local_addr().unwrap();
    let f = Arc::new(f);
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let f = Arc::clone(&f);
            thread::spawn(move || f(s));
        }
    });
    addr
}

/// An address where nothing listens (connect is refused).
pub fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Connect with generous timeouts set, so a broken proxy fails the test instead of hanging it.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Send `msg` and read back exactly as many bytes.
pub fn echo_roundtrip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    back
}

/// A config with one tcp listener "l" on 127.0.0.1:0 in front of `servers`.
pub fn l4_config(
    servers: &[SocketAddr],
    extra_listener: &str,
    extra_upstream: &str,
    extra_runtime: &str,
) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    let workers = if extra_runtime.contains("workers") {
        ""
    } else {
        "workers = 2"
    };
    let ct = if extra_listener.contains("connect_timeout") {
        ""
    } else {
        "connect_timeout = \"1s\""
    };
    format!(
        r#"[runtime]
{workers}
shutdown_timeout = "5s"
{extra_runtime}

[[listener]]
name = "l"
mode = "tcp"
listen = "127.0.0.1:0"
upstream = "u"
{ct}
{extra_listener}

[upstream.u]
servers = [{}]
{extra_upstream}
"#,
        list.join(", ")
    )
}

/// Active tcp checks that decide at the first verdict, circuit breaker off.
pub const HEALTH_FAST: &str = "health = { kind = \"tcp\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }\neject = { failures = 0 }";

/// A temp directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique_name(what));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TCP session through an echo backend greeting with `greeting`: read
/// the greeting, echo `payload`, half-close, read to EOF. The client address.
pub fn tcp_session(addr: SocketAddr, greeting: &[u8], payload: &[u8]) -> SocketAddr {
    let mut s = connect(addr);
    let local = s.local_addr().unwrap();
    let mut g = vec![0u8; greeting.len()];
    s.read_exact(&mut g).unwrap();
    assert_eq!(g, greeting);
    if !payload.is_empty() {
        assert_eq!(echo_roundtrip(&mut s, payload), payload);
    }
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "bytes after the echo: {rest:?}");
    local
}
