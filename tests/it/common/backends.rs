//! Backends that can be killed and restarted on the same port, for the
//! resilience tests (health checks, ejection, failover).
//!
//! [`Server`] owns a listening socket on 127.0.0.1. `kill()` closes the
//! listener and shuts down every open connection (pooled keep-alive ones
//! too), so the port refuses connections as after a crash; until
//! `restart()` a bound but not listening placeholder socket keeps the port
//! from being handed out as an ephemeral port. `restart()` listens again on
//! the same port (SO_REUSEADDR).
//!
//! [`HttpBackend`] records every request it answers with a timestamp,
//! marking health checks (`GET /healthz`) apart. [`EchoBackend`] records,
//! per accepted connection, whether it carried data: a tcp health check
//! connects and closes without sending anything.
//!
//! Every thread ends: the accept loop polls a stop flag, connection threads
//! read with a timeout and are shut down on kill and drop.

use std::{
    collections::HashMap,
    io::{self, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};

use super::http::{Head, Reply, Req, Step, Then, Wire};

/// The path active http health checks ask for in these tests.
pub const HEALTH_PATH: &str = "/healthz";

/// How long a backend connection waits for the next byte.
const CONN_TIMEOUT: Duration = Duration::from_secs(10);

type ConnFn = Arc<dyn Fn(TcpStream, usize) + Send + Sync>;

enum State {
    Running {
        stop: Arc<AtomicBool>,
        accept: JoinHandle<()>,
    },
    /// Killed; the placeholder (bound, not listening) keeps the port.
    Killed(Option<Socket>),
    Gone,
}

/// A restartable listener on 127.0.0.1 running `on_conn` per connection.
pub struct Server {
    pub addr: SocketAddr,
    on_conn: ConnFn,
    /// Open connections (a clone of each, to shut it down on kill).
    conns: Arc<Mutex<HashMap<usize, TcpStream>>>,
    /// Connections accepted so far, over every run (the last one's number).
    seq: Arc<AtomicUsize>,
    state: Mutex<State>,
}

fn bound(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// Listen on `addr`, retrying for a while if the port is still taken.
fn listen_on(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match bound(addr).and_then(|s| s.listen(1024).map(|_| s)) {
            Ok(s) => {
                let l: TcpListener = s.into();
                l.set_nonblocking(true).unwrap();
                return l;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("listen on {addr}: {e}; retrying");
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot listen on {addr} again: {e}"),
        }
    }
}

impl Server {
    /// Listen on a fresh port and serve.
    pub fn start<F>(on_conn: F) -> Server
    where
        F: Fn(TcpStream, usize) + Send + Sync + 'static,
    {
        let l = listen_on("127.0.0.1:0".parse().unwrap());
        let addr = l.local_addr().unwrap();
        let s = Server {
            addr,
            on_conn: Arc::new(on_conn),
            conns: Arc::new(Mutex::new(HashMap::new())),
            seq: Arc::new(AtomicUsize::new(0)),
            state: Mutex::new(State::Gone),
        };
        *s.state.lock().unwrap() = s.spawn(l);
        s
    }

    fn spawn(&self, l: TcpListener) -> State {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let on_conn = Arc::clone(&self.on_conn);
        let conns = Arc::clone(&self.conns);
        let seq = Arc::clone(&self.seq);
        let accept = thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok((s, _)) = l.accept() else {
                    thread::sleep(Duration::from_millis(1));
                    continue;
                };
                let n = seq.fetch_add(1, Ordering::SeqCst) + 1;
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(CONN_TIMEOUT));
                let _ = s.set_write_timeout(Some(CONN_TIMEOUT));
                if let Ok(c) = s.try_clone() {
                    conns.lock().unwrap().insert(n, c);
                }
                let f = Arc::clone(&on_conn);
                let conns = Arc::clone(&conns);
                thread::spawn(move || {
                    f(s, n);
                    conns.lock().unwrap().remove(&n);
                });
            }
            // `l` drops here: the port stops listening.
        });
        State::Running { stop, accept }
    }

    /// Connections accepted so far (the number the next one gets, minus one).
    pub fn accepted(&self) -> usize {
        self.seq.load(Ordering::SeqCst)
    }

    /// Close the listener and shut down every open connection.
    pub fn kill(&self) {
        let mut st = self.state.lock().unwrap();
        if let State::Running { stop, accept } = std::mem::replace(&mut *st, State::Gone) {
            stop.store(true, Ordering::SeqCst);
            let _ = accept.join();
            for (_, c) in self.conns.lock().unwrap().drain() {
                let _ = c.shutdown(Shutdown::Both);
            }
            *st = State::Killed(bound(self.addr).ok());
        } else {
            *st = State::Killed(None);
        }
    }

    /// Listen again on the same port (no-op when running).
    pub fn restart(&self) {
        let mut st = self.state.lock().unwrap();
        if matches!(*st, State::Running { .. }) {
            return;
        }
        // The placeholder is bound with SO_REUSEADDR and not listening, so
        // the new listener can bind next to it; it drops when replaced.
        let l = listen_on(self.addr);
        *st = self.spawn(l);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        *self.state.lock().unwrap() = State::Gone;
    }
}

// ------------------------------------------------------------------ http

/// One request an [`HttpBackend`] read.
#[derive(Clone, Debug)]
pub struct Hit {
    pub at: Instant,
    pub target: String,
    /// A health check (`GET /healthz`).
    pub health: bool,
}

/// A restartable HTTP/1.1 backend recording what it serves.
pub struct HttpBackend {
    pub name: String,
    pub server: Server,
    pub hits: Arc<Mutex<Vec<Hit>>>,
}

impl HttpBackend {
    /// Answers `200` with body "`name` `target`" to everything, health checks included.
    pub fn start(name: &str) -> HttpBackend {
        let n = name.to_string();
        Self::with(name, move |r| Reply::ok(r, &format!("{n} {}", r.target)))
    }

    /// Answers with whatever `f` returns (health checks go to `f` too).
    pub fn with<F>(name: &str, f: F) -> HttpBackend
    where
        F: Fn(&Req) -> Reply + Send + Sync + 'static,
    {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let h2 = Arc::clone(&hits);
        let f = Arc::new(f);
        let server = Server::start(move |s, conn| serve_http(s, conn, &h2, &*f));
        HttpBackend {
            name: name.to_string(),
            server,
            hits,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn kill(&self) {
        self.server.kill()
    }

    pub fn restart(&self) {
        self.server.restart()
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Requests served that were not health checks.
    pub fn served(&self) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| !h.health)
            .count()
    }

    /// Health checks served.
    pub fn checks(&self) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.health)
            .count()
    }

    /// Non-health requests read in `[from, to)`.
    pub fn served_between(&self, from: Instant, to: Instant) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| !h.health && h.at >= from && h.at < to)
            .count()
    }
}

fn serve_http(s: TcpStream, conn: usize, hits: &Mutex<Vec<Hit>>, f: &dyn Fn(&Req) -> Reply) {
    let mut w = Wire::new(s);
    loop {
        let head = match w.read_head() {
            Ok(Some(h)) => Head::parse(h),
            _ => return,
        };
        if head.has("transfer-encoding") {
            return; // not needed by these tests
        }
        let mut parts = head.start.splitn(3, ' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let version = parts.next().unwrap_or("").to_string();
        let len: usize = head
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let Ok(body) = w.read_n(len) else { return };
        hits.lock().unwrap().push(Hit {
            at: Instant::now(),
            health: target.starts_with(HEALTH_PATH),
            target: target.clone(),
        });
        let req = Req {
            conn,
            head,
            method,
            target,
            version,
            body_len: body.len() as u64,
            body,
            chunked: false,
        };
        let reply = f(&req);
        for step in &reply.steps {
            let ok = match step {
                Step::Write(b) => w.write_all(b).is_ok(),
                Step::Sleep(d) => {
                    thread::sleep(*d);
                    true
                }
                Step::Fill(n) => w.write_all(&vec![b'f'; *n as usize]).is_ok(),
            };
            if !ok {
                return;
            }
        }
        if reply.then != Then::KeepAlive {
            let _ = w.s.shutdown(Shutdown::Write);
            return;
        }
    }
}

// ------------------------------------------------------------------ echo

/// One connection an [`EchoBackend`] accepted.
#[derive(Clone, Debug)]
pub struct ConnRec {
    /// Accept order over the backend's whole life (1-based).
    pub seq: usize,
    pub at: Instant,
    /// Whether any byte arrived (a tcp health check sends none).
    pub data: bool,
}

/// A restartable echo backend, optionally greeting each connection with
/// "`name`\n" first (to tell which backend a client reached).
pub struct EchoBackend {
    pub name: String,
    pub server: Server,
    /// One record per connection, pushed once its first read returns.
    pub recs: Arc<Mutex<Vec<ConnRec>>>,
    /// Connections open now, and the most ever open at once.
    pub active: Arc<AtomicUsize>,
    pub max_active: Arc<AtomicUsize>,
}

impl EchoBackend {
    pub fn start(name: &str) -> EchoBackend {
        Self::spawn(name, false)
    }

    pub fn greeting(name: &str) -> EchoBackend {
        Self::spawn(name, true)
    }

    fn spawn(name: &str, greet: bool) -> EchoBackend {
        let recs = Arc::new(Mutex::new(Vec::new()));
        let active = Arc::new(AtomicUsize::new(0));
        let max_active = Arc::new(AtomicUsize::new(0));
        let (r2, a2, m2) = (
            Arc::clone(&recs),
            Arc::clone(&active),
            Arc::clone(&max_active),
        );
        let greeting = format!("{name}\n");
        let server = Server::start(move |mut s, seq| {
            let now = a2.fetch_add(1, Ordering::SeqCst) + 1;
            m2.fetch_max(now, Ordering::SeqCst);
            let at = Instant::now();
            if greet {
                let _ = s.write_all(greeting.as_bytes());
            }
            let mut buf = vec![0u8; 16 * 1024];
            let first = s.read(&mut buf);
            let data = matches!(first, Ok(n) if n > 0);
            r2.lock().unwrap().push(ConnRec { seq, at, data });
            if let Ok(n) = first {
                let mut n = n;
                while n > 0 && s.write_all(&buf[..n]).is_ok() {
                    n = s.read(&mut buf).unwrap_or(0);
                }
            }
            let _ = s.shutdown(Shutdown::Write);
            a2.fetch_sub(1, Ordering::SeqCst);
        });
        EchoBackend {
            name: name.to_string(),
            server,
            recs,
            active,
            max_active,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn kill(&self) {
        self.server.kill()
    }

    pub fn restart(&self) {
        self.server.restart()
    }

    /// Records sorted by accept order.
    pub fn recs(&self) -> Vec<ConnRec> {
        let mut v = self.recs.lock().unwrap().clone();
        v.sort_by_key(|r| r.seq);
        v
    }

    /// Connections that carried data.
    pub fn data_conns(&self) -> usize {
        self.recs.lock().unwrap().iter().filter(|r| r.data).count()
    }

    /// Connections that closed without sending a byte (tcp health checks).
    pub fn empty_conns(&self) -> usize {
        self.recs.lock().unwrap().iter().filter(|r| !r.data).count()
    }
}

// ---------------------------------------------------------------- client

/// A connection from source address `src` (any 127.0.0.0/8 address works on
/// Linux loopback), with 5 s read and write timeouts.
pub fn connect_from(src: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(3))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
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
