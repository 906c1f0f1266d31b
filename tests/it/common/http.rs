//! The one HTTP/1.1 test backend and a raw client.
//!
//! [`HttpBackend`] runs on a restartable [`Server`] (127.0.0.1, ephemeral
//! port; killed and restarted by the resilience tests). It parses each
//! request (head up to CRLFCRLF, then a Content-Length or chunked body),
//! records exactly what arrived and when (health checks, `GET /healthz`,
//! told apart), counts TCP connections and answers with whatever the
//! test's handler returns. Every thread ends (see backends.rs).
//!
//! The client side ([`Client`]) writes raw bytes and reads responses with
//! the same small parser, so tests can assert exact bytes.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    ops::Deref,
    process::Command,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use super::{
    backends::{echo_loop, Server},
    json, wait_until,
};

/// The path active http health checks ask for in these tests.
pub const HEALTH_PATH: &str = "/healthz";

/// Largest head either side accepts before calling the peer broken.
pub const MAX_HEAD: usize = 1 << 20;

/// How long the test client waits for the next byte.
pub const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(5);

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A buffered byte stream over a `TcpStream`.
pub struct Wire {
    pub s: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    /// Bytes read so far, and a shared counter to add them to.
    received: u64,
    counter: Option<Arc<AtomicU64>>,
}

impl Wire {
    pub fn new(s: TcpStream) -> Wire {
        Wire {
            s,
            buf: Vec::new(),
            pos: 0,
            received: 0,
            counter: None,
        }
    }

    /// Bytes received but not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Every byte read from the stream so far (consumed or not).
    pub fn received(&self) -> u64 {
        self.received
    }

    fn count(&mut self, n: usize) {
        self.received += n as u64;
        if let Some(c) = &self.counter {
            c.fetch_add(n as u64, Ordering::SeqCst);
        }
    }

    /// Read more bytes into the buffer; `Ok(0)` at EOF.
    fn fill(&mut self) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let mut tmp = [0u8; 16 * 1024];
        let n = self.s.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        self.count(n);
        Ok(n)
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let out = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        out
    }

    /// A head up to and including CRLFCRLF; `Ok(None)` on EOF before any byte.
    pub fn read_head(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = find(self.buffered(), b"\r\n\r\n") {
                return Ok(Some(self.take(i + 4)));
            }
            if self.buffered().len() > MAX_HEAD {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
            }
            if self.fill()? == 0 {
                if self.buffered().is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "EOF inside a head: {:?}",
                        String::from_utf8_lossy(self.buffered())
                    ),
                ));
            }
        }
    }

    /// One line without its CRLF.
    pub fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = find(self.buffered(), b"\r\n") {
                let line = self.take(i);
                self.pos += 2;
                return Ok(line);
            }
            if self.buffered().len() > MAX_HEAD {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    pub fn read_n(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buffered().len() < n {
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {} of {n} bytes", self.buffered().len()),
                ));
            }
        }
        Ok(self.take(n))
    }

    /// Read and throw away `n` bytes without holding them.
    pub fn discard_n(&mut self, mut n: u64) -> io::Result<()> {
        let have = (self.buffered().len() as u64).min(n);
        self.pos += have as usize;
        n -= have;
        let mut scratch = vec![0u8; 256 * 1024];
        while n > 0 {
            let want = scratch.len().min(n as usize);
            let got = self.s.read(&mut scratch[..want])?;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF with {n} bytes still expected"),
                ));
            }
            self.count(got);
            n -= got as u64;
        }
        Ok(())
    }

    /// Everything until EOF.
    pub fn read_to_eof(&mut self) -> io::Result<Vec<u8>> {
        while self.fill()? != 0 {}
        let n = self.buffered().len();
        Ok(self.take(n))
    }

    /// A chunked body, decoded into `out` when given; returns the decoded
    /// length. Trailer fields are read and dropped.
    pub fn read_chunked(&mut self, mut out: Option<&mut Vec<u8>>) -> io::Result<u64> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let mut total = 0u64;
        loop {
            let line = self.read_line()?;
            let text = String::from_utf8_lossy(&line).to_string();
            let size_text = text.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size_text, 16)
                .map_err(|_| bad(format!("bad chunk size line {text:?}")))?;
            if size == 0 {
                loop {
                    if self.read_line()?.is_empty() {
                        return Ok(total);
                    }
                }
            }
            match out.as_deref_mut() {
                Some(v) => v.extend_from_slice(&self.read_n(size as usize)?),
                None => self.discard_n(size)?,
            }
            total += size;
            if !self.read_line()?.is_empty() {
                return Err(bad("no CRLF after chunk data".into()));
            }
        }
    }

    pub fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        self.s.write_all(b)
    }
}

/// A parsed message head (request or response), raw bytes kept.
#[derive(Clone, Debug)]
pub struct Head {
    pub raw: Vec<u8>,
    /// The request or status line.
    pub start: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn parse(raw: Vec<u8>) -> Head {
        let text = String::from_utf8_lossy(&raw).to_string();
        let mut lines = text.split("\r\n");
        let start = lines.next().unwrap_or("").to_string();
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| match l.split_once(':') {
                Some((n, v)) => (n.to_string(), v.trim().to_string()),
                None => (l.to_string(), String::new()),
            })
            .collect();
        Head {
            raw,
            start,
            headers,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).to_string()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Header names in order, lowercased.
    pub fn names(&self) -> Vec<String> {
        self.headers
            .iter()
            .map(|(n, _)| n.to_ascii_lowercase())
            .collect()
    }

    /// Whether the comma-separated header `name` lists `token` (case-insensitive).
    pub fn lists(&self, name: &str, token: &str) -> bool {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn is_chunked(&self) -> bool {
        self.all("transfer-encoding")
            .iter()
            .flat_map(|v| v.split(','))
            .next_back()
            .map(|t| t.trim().eq_ignore_ascii_case("chunked"))
            .unwrap_or(false)
    }

    fn content_length(&self) -> Option<u64> {
        self.get("content-length").and_then(|v| v.parse().ok())
    }
}

// ---------------------------------------------------------------- backend

/// One request as the backend received it.
#[derive(Clone, Debug)]
pub struct Req {
    /// Which accepted connection (1-based, in accept order) carried it.
    pub conn: usize,
    /// When it was complete (head and body read).
    pub at: Instant,
    pub head: Head,
    pub method: String,
    pub target: String,
    /// The decoded body (empty when the backend discards bodies).
    pub body: Vec<u8>,
    pub body_len: u64,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.get(name)
    }

    /// A health check (`GET /healthz`).
    pub fn health(&self) -> bool {
        self.target.starts_with(HEALTH_PATH)
    }
}

/// What a backend does for one request.
pub enum Step {
    Write(Vec<u8>),
    /// `n` filler bytes, written from a small buffer (big bodies).
    Fill(u64),
    Sleep(Duration),
}

/// What the backend connection does after answering.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Then {
    /// Wait for the next request.
    KeepAlive,
    /// Close the connection (without having announced it).
    Close,
    /// Become a raw echo tunnel (after a 101).
    Echo,
    /// Read the next request's head, then close without answering it (a
    /// keep-alive connection dying under a reused request).
    DropNext,
}

pub struct Reply {
    pub steps: Vec<Step>,
    pub then: Then,
}

pub fn reason(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Whatever",
    }
}

impl Reply {
    /// Exactly these bytes.
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            steps: vec![Step::Write(bytes.into())],
            then: Then::KeepAlive,
        }
    }

    /// `HTTP/1.1 code` with these headers, Content-Length and body (no
    /// body bytes for a HEAD request).
    pub fn new(req: &Req, code: u16, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut out = format!("HTTP/1.1 {code} {}\r\n", reason(code));
        for (n, v) in headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = out.into_bytes();
        if req.method != "HEAD" {
            bytes.extend_from_slice(body);
        }
        Reply::raw(bytes)
    }

    /// 200 with a text body.
    pub fn ok(req: &Req, body: &str) -> Reply {
        Reply::new(req, 200, &[("Content-Type", "text/plain")], body.as_bytes())
    }

    pub fn then(mut self, t: Then) -> Reply {
        self.then = t;
        self
    }

    /// Sleep `d` before anything else.
    pub fn delayed(mut self, d: Duration) -> Reply {
        self.steps.insert(0, Step::Sleep(d));
        self
    }

    pub fn write(mut self, b: impl Into<Vec<u8>>) -> Reply {
        self.steps.push(Step::Write(b.into()));
        self
    }

    /// `n` filler bytes (a big body, from a small buffer).
    pub fn fill(mut self, n: u64) -> Reply {
        self.steps.push(Step::Fill(n));
        self
    }

    pub fn sleep(mut self, d: Duration) -> Reply {
        self.steps.push(Step::Sleep(d));
        self
    }
}

pub type Handler = Arc<dyn Fn(&Req) -> Reply + Send + Sync>;

/// The recording, restartable HTTP backend.
pub struct HttpBackend {
    /// Its listener (`addr`, `kill()`, `restart()`, `conns()` come from it).
    pub server: Server,
    /// Request heads read (counted as soon as a head is complete, before its body).
    pub heads: Arc<AtomicUsize>,
    /// Complete requests (head and whole body), recorded before answering.
    pub reqs: Arc<Mutex<Vec<Req>>>,
    /// Request lines of requests read under `Then::DropNext` and not answered.
    pub dropped: Arc<Mutex<Vec<String>>>,
    /// Every byte read from every connection.
    pub bytes: Arc<AtomicU64>,
}

#[derive(Clone)]
struct Ctx {
    handler: Handler,
    record_bodies: bool,
    heads: Arc<AtomicUsize>,
    reqs: Arc<Mutex<Vec<Req>>>,
    dropped: Arc<Mutex<Vec<String>>>,
    bytes: Arc<AtomicU64>,
}

impl Deref for HttpBackend {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

impl HttpBackend {
    /// Answers every request `200 ok` (HEAD-aware), keep-alive.
    pub fn start() -> HttpBackend {
        Self::with(|r| Reply::ok(r, "ok"))
    }

    /// Answers with whatever `f` returns; records bodies.
    pub fn with<F>(f: F) -> HttpBackend
    where
        F: Fn(&Req) -> Reply + Send + Sync + 'static,
    {
        Self::spawn(Arc::new(f), true)
    }

    /// Answers `200` with body "`name` `target`" (who served it, and the
    /// path it got), health checks included.
    pub fn named(name: &str) -> HttpBackend {
        let name = name.to_string();
        Self::with(move |r| Reply::ok(r, &format!("{name} {}", r.target)))
    }

    /// Discards request bodies, counting them; answers `200` with the byte count.
    pub fn sink() -> HttpBackend {
        Self::spawn(
            Arc::new(|r: &Req| Reply::ok(r, &r.body_len.to_string())),
            false,
        )
    }

    /// A chunked response: one chunk per part, 20 ms apart.
    pub fn chunked_response(parts: Vec<Vec<u8>>) -> HttpBackend {
        Self::with(move |_| {
            let mut r = Reply::raw(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
            );
            for p in &parts {
                let mut chunk = format!("{:x}\r\n", p.len()).into_bytes();
                chunk.extend_from_slice(p);
                chunk.extend_from_slice(b"\r\n");
                r = r.sleep(Duration::from_millis(20)).write(chunk);
            }
            r.write("0\r\n\r\n")
        })
    }

    /// A response without Content-Length or chunked framing: the body ends when the backend closes.
    pub fn until_close(body: Vec<u8>) -> HttpBackend {
        Self::with(move |_| {
            Reply::raw("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
                .sleep(Duration::from_millis(20))
                .write(body.clone())
                .then(Then::Close)
        })
    }

    /// `103 Early Hints`, a pause, then `200 ok`.
    pub fn early_hints() -> HttpBackend {
        Self::with(|r| {
            let mut reply = Reply::raw(
                "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n",
            )
            .sleep(Duration::from_millis(50));
            reply.steps.extend(Reply::ok(r, "ok").steps);
            reply
        })
    }

    /// Accepts and reads the request, then waits `d` before answering `200 ok`.
    pub fn slow(d: Duration) -> HttpBackend {
        Self::with(move |r| Reply::ok(r, "late").delayed(d))
    }

    /// Answers `200 ok` (keep-alive framing, no `Connection: close`) and then closes.
    pub fn closing() -> HttpBackend {
        Self::with(|r| Reply::ok(r, "ok").then(Then::Close))
    }

    /// Answers `200 ok`, then reads the next request on that connection
    /// and closes without answering it.
    pub fn dropping() -> HttpBackend {
        Self::with(|r| Reply::ok(r, "ok").then(Then::DropNext))
    }

    /// `101` to a websocket upgrade, then raw echo; `200 ok` to anything else.
    pub fn websocket() -> HttpBackend {
        Self::with(|r| {
            if r.head.lists("upgrade", "websocket") {
                Reply::raw(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                )
                .then(Then::Echo)
            } else {
                Reply::ok(r, "ok")
            }
        })
    }

    pub fn spawn(handler: Handler, record_bodies: bool) -> HttpBackend {
        let ctx = Ctx {
            handler,
            record_bodies,
            heads: Arc::new(AtomicUsize::new(0)),
            reqs: Arc::new(Mutex::new(Vec::new())),
            dropped: Arc::new(Mutex::new(Vec::new())),
            bytes: Arc::new(AtomicU64::new(0)),
        };
        let c2 = ctx.clone();
        let server = Server::start(move |s, conn| serve(s, conn, &c2));
        HttpBackend {
            server,
            heads: ctx.heads,
            reqs: ctx.reqs,
            dropped: ctx.dropped,
            bytes: ctx.bytes,
        }
    }

    /// Complete requests so far.
    pub fn requests(&self) -> Vec<Req> {
        self.reqs.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.reqs.lock().unwrap().len()
    }

    /// Waits up to 5 s until `n` complete requests were recorded.
    pub fn wait_requests(&self, n: usize) -> Vec<Req> {
        wait_until(Duration::from_secs(5), || self.count() >= n);
        self.requests()
    }

    /// Requests served that were not health checks.
    pub fn served(&self) -> usize {
        self.reqs
            .lock()
            .unwrap()
            .iter()
            .filter(|r| !r.health())
            .count()
    }

    /// Health checks served.
    pub fn checks(&self) -> usize {
        self.reqs
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.health())
            .count()
    }

    /// Non-health requests read in `[from, to)`.
    pub fn served_between(&self, from: Instant, to: Instant) -> usize {
        self.reqs
            .lock()
            .unwrap()
            .iter()
            .filter(|r| !r.health() && r.at >= from && r.at < to)
            .count()
    }
}

/// One backend connection (the server set its timeouts): requests until
/// EOF, an error or the reply's `Then` ends it.
fn serve(s: TcpStream, conn: usize, ctx: &Ctx) {
    let mut w = Wire::new(s);
    w.counter = Some(Arc::clone(&ctx.bytes));
    let mut drop_next = false;
    let filler = vec![b'f'; 256 * 1024];
    loop {
        let raw = match w.read_head() {
            Ok(Some(h)) => h,
            _ => return,
        };
        ctx.heads.fetch_add(1, Ordering::SeqCst);
        let head = Head::parse(raw);
        if drop_next {
            ctx.dropped.lock().unwrap().push(head.start.clone());
            let _ = w.s.shutdown(Shutdown::Both);
            return;
        }
        let mut parts = head.start.splitn(3, ' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let chunked = head.is_chunked();
        let mut body = Vec::new();
        let body_len = if chunked {
            match w.read_chunked(ctx.record_bodies.then_some(&mut body)) {
                Ok(n) => n,
                Err(_) => return, // incomplete or malformed: not a request
            }
        } else {
            let n = head.content_length().unwrap_or(0);
            let res = if ctx.record_bodies {
                w.read_n(n as usize).map(|b| body = b)
            } else {
                w.discard_n(n)
            };
            if res.is_err() {
                return;
            }
            n
        };
        let req = Req {
            conn,
            at: Instant::now(),
            head,
            method,
            target,
            body,
            body_len,
        };
        ctx.reqs.lock().unwrap().push(req.clone());
        let reply = (ctx.handler)(&req);
        for step in &reply.steps {
            let ok = match step {
                Step::Write(b) => w.write_all(b).is_ok(),
                Step::Sleep(d) => {
                    thread::sleep(*d);
                    true
                }
                Step::Fill(n) => {
                    let mut left = *n;
                    let mut ok = true;
                    while left > 0 && ok {
                        let k = (filler.len() as u64).min(left) as usize;
                        ok = w.write_all(&filler[..k]).is_ok();
                        left -= k as u64;
                    }
                    ok
                }
            };
            if !ok {
                return;
            }
        }
        match reply.then {
            Then::KeepAlive => {}
            Then::Close => {
                let _ = w.s.shutdown(Shutdown::Write);
                return;
            }
            Then::DropNext => drop_next = true,
            Then::Echo => {
                echo(w);
                return;
            }
        }
    }
}

/// The rest of a connection after a 101: raw echo, bytes already read first.
fn echo(mut w: Wire) {
    let early = w.buffered().to_vec();
    if !early.is_empty() && w.write_all(&early).is_err() {
        return;
    }
    echo_loop(&mut &w.s, &mut &w.s);
    let _ = w.s.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------- client

/// One response as the client received it.
#[derive(Clone, Debug)]
pub struct Resp {
    pub head: Head,
    pub version: String,
    pub status: u16,
    /// The body as delivered, decoded when it came chunked.
    pub body: Vec<u8>,
    /// Whether it came with chunked framing.
    pub chunked: bool,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.get(name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// Whether `Connection` lists `token`.
    pub fn connection(&self, token: &str) -> bool {
        self.head.lists("connection", token)
    }
}

/// A raw HTTP client connection.
pub struct Client {
    pub w: Wire,
}

impl Client {
    /// Connect (5 s at most); a failure panics.
    pub fn connect(addr: SocketAddr) -> Client {
        Self::try_connect(addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    /// Connect within `limit`, with the client's read and write timeouts.
    pub fn try_connect(addr: SocketAddr, limit: Duration) -> io::Result<Client> {
        let s = TcpStream::connect_timeout(&addr, limit)?;
        s.set_read_timeout(Some(CLIENT_READ_TIMEOUT))?;
        s.set_write_timeout(Some(CLIENT_READ_TIMEOUT))?;
        Ok(Client { w: Wire::new(s) })
    }

    pub fn send(&mut self, b: &[u8]) {
        self.w
            .write_all(b)
            .unwrap_or_else(|e| panic!("send {:?}: {e}", String::from_utf8_lossy(b)));
    }

    /// The next response (an interim 1xx is returned on its own).
    pub fn response(&mut self) -> Resp {
        self.try_response(false)
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    /// The next response to a HEAD request (no body whatever the headers say).
    pub fn head_response(&mut self) -> Resp {
        self.try_response(true)
            .unwrap_or_else(|e| panic!("reading a HEAD response: {e}"))
    }

    pub fn try_response(&mut self, head_request: bool) -> io::Result<Resp> {
        let raw = self
            .w
            .read_head()?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed, no response"))?;
        let head = Head::parse(raw);
        let mut parts = head.start.splitn(3, ' ');
        let version = parts.next().unwrap_or("").to_string();
        let status: u16 = parts.next().unwrap_or("").parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {:?}", head.start),
            )
        })?;
        let chunked = head.is_chunked();
        let no_body =
            head_request || (100..200).contains(&status) || status == 204 || status == 304;
        let body = if no_body {
            Vec::new()
        } else if chunked {
            let mut b = Vec::new();
            self.w.read_chunked(Some(&mut b))?;
            b
        } else if let Some(n) = head.content_length() {
            self.w.read_n(n as usize)?
        } else {
            self.w.read_to_eof()?
        };
        Ok(Resp {
            head,
            version,
            status,
            body,
            chunked,
        })
    }

    /// Whether the server closes the connection (EOF or reset) within 3 s
    /// without sending anything more.
    pub fn closed(&mut self) -> bool {
        if !self.w.buffered().is_empty() {
            return false;
        }
        let _ = self.w.s.set_read_timeout(Some(Duration::from_secs(3)));
        let mut b = [0u8; 1024];
        let r = self.w.s.read(&mut b);
        let _ = self.w.s.set_read_timeout(Some(CLIENT_READ_TIMEOUT));
        match r {
            Ok(0) => true,
            Ok(n) => {
                eprintln!(
                    "unexpected bytes instead of a close: {:?}",
                    String::from_utf8_lossy(&b[..n])
                );
                false
            }
            Err(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
        }
    }
}

/// One request on a fresh connection; its response.
pub fn roundtrip(addr: SocketAddr, raw: &[u8]) -> Resp {
    let mut c = Client::connect(addr);
    c.send(raw);
    c.response()
}

/// `GET path` with this Host on a fresh connection.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Resp {
    roundtrip(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
    )
}

// ---------------------------------------------------------------- helpers

/// Asserts `r` is ringlb's JSON error `status` / `error`; returns its request id.
pub fn assert_error(r: &Resp, status: u16, error: &str) -> String {
    let body = r.text();
    let v = json::parse(&body).unwrap_or_else(|e| panic!("error body is not JSON: {e}\n{body}"));
    assert_eq!(
        r.status,
        status,
        "want {status}, got {}\n{}{body}",
        r.status,
        r.head.text()
    );
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json")),
        "content type: {}",
        r.head.text()
    );
    assert_eq!(
        v.get("status").and_then(json::Json::uint),
        Some(status as u64),
        "body {body}"
    );
    assert_eq!(
        v.get("error").and_then(json::Json::str),
        Some(error),
        "body {body}"
    );
    let id = v
        .get("request_id")
        .and_then(json::Json::str)
        .unwrap_or_default()
        .to_string();
    assert!(!id.is_empty(), "no request_id in {body}");
    assert_eq!(
        r.header("x-request-id"),
        Some(id.as_str()),
        "X-Request-Id header vs body: {}{body}",
        r.head.text()
    );
    id
}

pub fn is_hex_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Run curl (no proxy from the environment); (success, stdout, stderr).
pub fn curl(args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--noproxy", "*"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("curl is needed for these tests (apt-get install curl): {e}"));
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// (VmRSS, VmHWM) of a process in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One request on a fresh connection.
pub struct Sent {
    pub resp: Resp,
    /// Bytes written by the client.
    pub req_bytes: usize,
    /// Bytes of the response as received (head and body).
    pub resp_bytes: usize,
    pub client: SocketAddr,
}

pub fn send(addr: SocketAddr, raw: &str) -> Sent {
    let mut c = Client::connect(addr);
    let client = c.w.s.local_addr().unwrap();
    c.send(raw.as_bytes());
    let resp = c.response();
    let resp_bytes = resp.head.raw.len() + resp.body.len();
    Sent {
        resp,
        req_bytes: raw.len(),
        resp_bytes,
        client,
    }
}

pub fn get_req(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n")
}

/// Which backend answered (bodies of [`HttpBackend::named`] are "`name`
/// `target`"); panics unless 200.
pub fn who(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{}{}", r.head.text(), r.text());
    r.text().split(' ').next().unwrap_or("").to_string()
}
