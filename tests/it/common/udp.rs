//! UDP peers for the udp listener tests: a backend thread with the odd
//! behaviours (several replies, silence, replies from another socket, a
//! PROXY v2 reader), a client, and `kdig` (knot-dnsutils) as a real DNS
//! client.

use std::{
    net::{SocketAddr, UdpSocket},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

/// What a [`UdpBackend`] does with each datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reply `NAME:` + the datagram.
    Echo,
    /// Reply this many times (`NAME:i:` + the datagram).
    Multi(usize),
    /// Never reply.
    Silent,
    /// Reply from another socket (another port): a stray a proxy must not
    /// pass to the client.
    WrongSource,
    /// Expect a PROXY v2 header; reply `NAME:SRC` (the client address it
    /// names) or `NAME:noheader`.
    ProxyV2,
}

pub struct UdpBackend {
    pub addr: SocketAddr,
    /// Datagrams received.
    pub seen: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl UdpBackend {
    pub fn start(name: &str, mode: Mode) -> UdpBackend {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("udp bind");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let seen = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2, name) = (Arc::clone(&seen), Arc::clone(&stop), name.to_string());
        let thread = thread::spawn(move || {
            let other = UdpSocket::bind("127.0.0.1:0").expect("udp bind");
            let mut buf = vec![0u8; 70_000];
            while !st2.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                s2.fetch_add(1, Ordering::Relaxed);
                let data = &buf[..n];
                let reply = |body: &[u8]| {
                    let mut out = format!("{name}:").into_bytes();
                    out.extend_from_slice(body);
                    out
                };
                match mode {
                    Mode::Echo => {
                        let _ = sock.send_to(&reply(data), from);
                    }
                    Mode::Multi(k) => {
                        for i in 0..k {
                            let mut body = format!("{i}:").into_bytes();
                            body.extend_from_slice(data);
                            let _ = sock.send_to(&reply(&body), from);
                        }
                    }
                    Mode::Silent => {}
                    Mode::WrongSource => {
                        let _ = other.send_to(&reply(data), from);
                    }
                    Mode::ProxyV2 => {
                        let text = proxy_v2_source(data)
                            .map_or_else(|| "noheader".to_string(), |a| a.to_string());
                        let _ = sock.send_to(&reply(text.as_bytes()), from);
                    }
                }
            }
        });
        UdpBackend {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::Relaxed)
    }

    /// Stop it: its port is closed (datagrams to it get ICMP port unreachable).
    pub fn kill(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The source address of a PROXY v2 header with an IPv4 UDP address
/// block (the only kind the tests send), if `d` starts with one.
fn proxy_v2_source(d: &[u8]) -> Option<SocketAddr> {
    const SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    if d.len() < 28 || &d[..12] != SIG || d[12] != 0x21 || d[13] != 0x12 {
        return None;
    }
    let ip = std::net::Ipv4Addr::new(d[16], d[17], d[18], d[19]);
    let port = u16::from_be_bytes([d[24], d[25]]);
    Some(SocketAddr::from((ip, port)))
}

/// A client socket on 127.0.0.1 (or `from`) with a short receive timeout.
pub struct Client {
    pub sock: UdpSocket,
}

impl Client {
    pub fn new() -> Client {
        Client::from("127.0.0.1:0")
    }

    pub fn from(addr: &str) -> Client {
        let sock = UdpSocket::bind(addr).expect("udp bind");
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        Client { sock }
    }

    pub fn send(&self, to: SocketAddr, data: &[u8]) {
        self.sock.send_to(data, to).expect("udp send");
    }

    /// The next datagram (and who sent it), or None after the timeout.
    pub fn recv(&self) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; 70_000];
        let (n, from) = self.sock.recv_from(&mut buf).ok()?;
        buf.truncate(n);
        Some((buf, from))
    }

    /// Send `data` and wait for one reply, as text.
    pub fn ask(&self, to: SocketAddr, data: &str) -> Option<String> {
        self.send(to, data.as_bytes());
        self.recv()
            .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
    }
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

/// `kdig @ADDR NAME +short`: the answer's first line, None on no answer.
pub fn kdig(server: SocketAddr, name: &str) -> Option<String> {
    kdig_from(None, server, name)
}

/// [`kdig`] from a chosen local address (`-b`) when `src` is given.
pub fn kdig_from(src: Option<&str>, server: SocketAddr, name: &str) -> Option<String> {
    let mut cmd = Command::new("kdig");
    cmd.arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()]);
    if let Some(src) = src {
        cmd.args(["-b", src]);
    }
    let out = cmd
        .args([name, "+short", "+timeout=1", "+retry=0"])
        .output()
        .expect("kdig (Debian: apt-get install knot-dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next()?.trim().to_string();
    (out.status.success() && !first.is_empty() && !first.starts_with(';')).then_some(first)
}
