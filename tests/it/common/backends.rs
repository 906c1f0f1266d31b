//! The test backends' plumbing, and the one echo backend.
//!
//! [`Server`] owns a listening socket on loopback (an ephemeral port, accept
//! queue 1024) and runs a closure per accepted connection in its own
//! thread. `kill()` closes the listener and shuts down every open
//! connection (pooled keep-alive ones too), so the port refuses connections
//! as after a crash; until `restart()` a bound but not listening
//! placeholder socket keeps the port from being handed out as an ephemeral
//! port. `restart()` listens again on the same port (SO_REUSEADDR). The HTTP
//! backend (http.rs), [`EchoBackend`] and [`scripted`] backends all run on it.
//!
//! [`EchoBackend`] records, per accepted connection, whether it carried
//! data: a tcp health check connects and closes without sending anything.
//!
//! Every thread ends: the accept loop polls a stop flag, connection threads
//! read with a timeout and are shut down on kill and drop.

use std::{
    collections::HashMap,
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    ops::Deref,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};

/// How long a backend connection waits for the next byte.
const CONN_TIMEOUT: Duration = Duration::from_secs(10);

type ConnFn = Arc<dyn Fn(TcpStream, usize) + Send + Sync>;

enum State {
    Running {
        stop: Arc<AtomicBool>,
        accept: JoinHandle<()>,
    },
    /// Killed; the placeholder (bound, not listening) keeps the port.
    Killed {
        _placeholder: Option<Socket>,
    },
    Gone,
}

/// A restartable listener running `on_conn` per connection.
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
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// Listen on `addr`, retrying for a while if the port is still taken. The
/// accept queue is 1024 deep: std's default of 128 overflows when 200
/// clients connect at once, and a dropped SYN is retried only after 1 s,
/// longer than the tests' connect timeout.
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
    /// Listen on a fresh port of 127.0.0.1 and serve; `on_conn` gets each
    /// connection and its number (1-based, in accept order over every run).
    pub fn start<F>(on_conn: F) -> Server
    where
        F: Fn(TcpStream, usize) + Send + Sync + 'static,
    {
        Self::start_on("127.0.0.1:0".parse().unwrap(), on_conn)
    }

    /// The same on `addr` (e.g. `[::1]:0`).
    pub fn start_on<F>(addr: SocketAddr, on_conn: F) -> Server
    where
        F: Fn(TcpStream, usize) + Send + Sync + 'static,
    {
        let l = listen_on(addr);
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
    pub fn conns(&self) -> usize {
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
            *st = State::Killed {
                _placeholder: bound(self.addr).ok(),
            };
        } else {
            *st = State::Killed { _placeholder: None };
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

/// A backend running `f` on each accepted connection (in its own thread,
/// with 10 s read and write timeouts set); stopped when dropped.
pub fn scripted<F>(f: F) -> Server
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    Server::start(move |s, _| f(s))
}

/// Writes back whatever `r` reads, to `w`, until EOF or an error.
pub fn echo_loop(r: &mut impl Read, w: &mut impl Write) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if w.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

// ------------------------------------------------------------------ echo

/// How long an echo connection may sit idle (tests hold idle connections
/// open on purpose; the backend's drop shuts them down in any case).
const ECHO_IDLE: Duration = Duration::from_secs(60);

/// One connection an [`EchoBackend`] accepted.
#[derive(Clone, Debug)]
pub struct ConnRec {
    /// Accept order over the backend's whole life (1-based).
    pub seq: usize,
    /// Whether any byte arrived (a tcp health check sends none).
    pub data: bool,
}

/// A restartable echo backend, optionally greeting each connection with a
/// line first (to tell which backend a client reached).
pub struct EchoBackend {
    /// Its listener (`addr`, `kill()`, `restart()`, `conns()` come from it).
    pub server: Server,
    /// One record per connection, pushed once its first read returns.
    pub recs: Arc<Mutex<Vec<ConnRec>>>,
    /// Connections open now, and the most ever open at once.
    pub active: Arc<AtomicUsize>,
    pub max_active: Arc<AtomicUsize>,
}

impl Deref for EchoBackend {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

impl EchoBackend {
    pub fn start() -> EchoBackend {
        Self::spawn("127.0.0.1:0".parse().unwrap(), None)
    }

    /// Greets each connection with "`name`\n", then echoes.
    pub fn greeting(name: &str) -> EchoBackend {
        Self::spawn("127.0.0.1:0".parse().unwrap(), Some(format!("{name}\n")))
    }

    /// An echo backend listening on `addr` (e.g. `[::1]:0`).
    pub fn start_on(addr: SocketAddr) -> EchoBackend {
        Self::spawn(addr, None)
    }

    fn spawn(addr: SocketAddr, greeting: Option<String>) -> EchoBackend {
        let recs = Arc::new(Mutex::new(Vec::new()));
        let active = Arc::new(AtomicUsize::new(0));
        let max_active = Arc::new(AtomicUsize::new(0));
        let (r2, a2, m2) = (
            Arc::clone(&recs),
            Arc::clone(&active),
            Arc::clone(&max_active),
        );
        let server = Server::start_on(addr, move |mut s, seq| {
            let now = a2.fetch_add(1, Ordering::SeqCst) + 1;
            m2.fetch_max(now, Ordering::SeqCst);
            let _ = s.set_read_timeout(Some(ECHO_IDLE));
            if let Some(g) = &greeting {
                let _ = s.write_all(g.as_bytes());
            }
            let mut buf = vec![0u8; 16 * 1024];
            let first = s.read(&mut buf);
            let data = matches!(first, Ok(n) if n > 0);
            r2.lock().unwrap().push(ConnRec { seq, data });
            if let Ok(n) = first {
                if n > 0 && s.write_all(&buf[..n]).is_ok() {
                    echo_loop(&mut &s, &mut &s);
                }
            }
            let _ = s.shutdown(Shutdown::Write);
            a2.fetch_sub(1, Ordering::SeqCst);
        });
        EchoBackend {
            server,
            recs,
            active,
            max_active,
        }
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
