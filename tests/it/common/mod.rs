//! Test harness: start the real `ringlb` binary on loopback with ephemeral
//! ports (configs from cfg.rs), plus small real backends (backends.rs,
//! http.rs). Everything started here is stopped by PID when its handle
//! drops.

pub mod admin;
pub mod backends;
pub mod cfg;
pub mod dns;
pub mod http;
pub mod json;
pub mod notify;
pub mod prom;
pub mod py;
pub mod tls;
pub mod udp;
pub mod zk;

use std::{
    collections::HashMap,
    fmt::Display,
    io::{self, BufRead, BufReader, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

pub use backends::EchoBackend;
pub use cfg::Cfg;
pub use http::HttpBackend;

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

/// `ringlb check -c` on `config`: (exit code, stdout, stderr).
pub fn check_config(config: impl Display) -> (i32, String, String) {
    let path = temp_file("check", &config.to_string());
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
    /// Run this executable instead of the one cargo built (an installed
    /// copy, for binary upgrades).
    pub exe: Option<&'a Path>,
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
    /// Start with this config and wait until it reports ready.
    pub fn start(config: impl Display) -> Ringlb {
        Self::try_start(config).unwrap_or_else(|e| panic!("ringlb did not start: {e}"))
    }

    pub fn try_start(config: impl Display) -> Result<Ringlb, String> {
        Self::try_start_opts(config, Opts::default())
    }

    /// Start with extra environment variables (e.g. NOTIFY_SOCKET, or
    /// RINGLB_LOG to replace the default `info`) and wait until ready.
    pub fn start_with_env(config: impl Display, env: &[(&str, &str)]) -> Ringlb {
        Self::start_opts(
            config,
            Opts {
                env,
                ..Opts::default()
            },
        )
    }

    pub fn start_opts(config: impl Display, opts: Opts) -> Ringlb {
        Self::try_start_opts(config, opts).unwrap_or_else(|e| panic!("ringlb did not start: {e}"))
    }

    pub fn try_start_opts(config: impl Display, opts: Opts) -> Result<Ringlb, String> {
        let path = temp_file("cfg", &config.to_string());
        let mut cmd = Command::new(opts.exe.unwrap_or(Path::new(BIN)));
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
        cmd.stdin(Stdio::null())
            .stdout(if opts.stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped());
        // ETXTBSY: another test thread may have forked while an installed
        // copy of the binary was open for writing (the child holds the fd
        // until it execs); retry.
        let mut tries = 0;
        let child = loop {
            match cmd.spawn() {
                Ok(c) => break c,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    return Err(e.to_string());
                }
            }
        };
        Self::adopt(child, path, !opts.no_wait)
    }

    /// Take over a ringlb process spawned by the caller (stderr piped; stdout
    /// piped to collect it) running with the config file `config` (removed
    /// on drop): read its log and, when `wait_ready`, wait (15 s) for the
    /// ready line.
    pub fn adopt(mut child: Child, config: PathBuf, wait_ready: bool) -> Result<Ringlb, String> {
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
        if wait_ready {
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
                        let _ = std::fs::remove_file(&config);
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
            config,
        })
    }

    /// Listener `name`'s address, from the `listening on` line (waiting up
    /// to 5 s for it when ringlb was started without waiting).
    pub fn addr(&self, name: &str) -> SocketAddr {
        if let Some(a) = self.addrs.get(name) {
            return *a;
        }
        let mut found = None;
        wait_until(Duration::from_secs(5), || {
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
        wait_until(Duration::from_secs(5), || {
            found = self.log.lock().unwrap().iter().find_map(|l| parse_admin(l));
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no `admin listening on` line; log:\n{}", self.log_text()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// A binary upgrade (SIGUSR2) to the binary on disk: the new process's
    /// pid, once this one says it serves (None when it did not).
    pub fn upgrade(&self) -> Option<u32> {
        self.signal("USR2");
        if !self.wait_count("the new process (pid", 1, Duration::from_secs(30)) {
            return None;
        }
        let text = self.log_text();
        text.lines()
            .find(|l| l.contains("the new process (pid "))
            .and_then(|l| l.split("(pid ").nth(1))
            .and_then(|t| t.split(')').next())
            .and_then(|t| t.parse().ok())
    }

    /// Replace the config file's text (for a reload).
    pub fn rewrite(&self, config: impl Display) {
        std::fs::write(&self.config, config.to_string()).unwrap();
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

    /// Log lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits up to `limit` until `n` log lines contain `needle`.
    pub fn wait_count(&self, needle: &str, n: usize, limit: Duration) -> bool {
        wait_until(limit, || self.count(needle) >= n)
    }

    /// Waits (up to 5 s) until the log contains `needle`: stderr is read by
    /// a separate thread, so a line logged just now may not be here yet.
    pub fn wait_log(&self, needle: &str) -> bool {
        self.wait_count(needle, 1, Duration::from_secs(5))
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

fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let rest = line.split("listener \"").nth(1)?;
    let (name, rest) = rest.split_once('"')?;
    let addr = rest.trim_start().strip_prefix("listening on ")?;
    let addr = addr.split_whitespace().next()?;
    Some((name.to_string(), addr.parse().ok()?))
}

/// `kill -SIG pid`.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Polls `f` every 5 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
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

/// A connection from source address `src` (any 127.0.0.0/8 address works on
/// Linux loopback), with 5 s read and write timeouts.
pub fn connect_from(src: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(3))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// Send `msg` and read back exactly as many bytes.
pub fn echo_roundtrip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    back
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

/// Deterministic pseudo-random bytes.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Replace a file as config management does (write, then rename), so a
/// watcher (the discovery thread) never reads half of it.
pub fn put(file: &Path, text: impl AsRef<[u8]>) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// A backend list file's text: one address per line.
pub fn list(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(|a| format!("{a}\n")).collect()
}
