//! `ringlb demo`: a self-contained try-out. Two echo backends on loopback
//! (each greets with its name, then echoes), and a round-robin TCP listener
//! in front of them.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
};

use crate::{
    config::{Config, LoadError},
    Error,
};

/// Start the backends, print how to try it, and run until stopped.
///
/// # Errors
/// The demo address is in use, or a backend cannot bind.
pub fn run(listen: SocketAddr) -> Result<(), Error> {
    // Before the backend threads exist, so that SIGINT/SIGTERM reach the
    // control loop (a graceful stop) and not a backend thread.
    crate::sys::block_signals()
        .map_err(|e| Error::Startup(format!("cannot block signals: {e}")))?;
    let mut backends = Vec::new();
    for name in ["backend-1", "backend-2"] {
        let l = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::Startup(format!("demo backend cannot bind: {e}")))?;
        let addr = l
            .local_addr()
            .map_err(|e| Error::Startup(format!("demo backend: {e}")))?;
        backends.push(addr);
        thread::Builder::new()
            .name(format!("demo-{name}"))
            .spawn(move || echo_server(l, name))
            .map_err(|e| Error::Startup(format!("demo backend thread: {e}")))?;
    }
    let text = format!(
        r#"
[runtime]
workers = "auto"
shutdown_timeout = "2s"

[[listener]]
name = "demo"
mode = "tcp"
listen = "{listen}"
upstream = "echo"
connect_timeout = "1s"
idle_timeout = "5m"

[upstream.echo]
balance = "round_robin"
servers = [{{ addr = "{}" }}, {{ addr = "{}" }}]
"#,
        backends[0], backends[1]
    );
    let cfg = Config::parse(&text).map_err(|err| LoadError {
        file: "(demo)".into(),
        err,
    })?;
    println!(
        "ringlb demo: echo backends on {} and {}",
        backends[0], backends[1]
    );
    println!(
        "try:  printf 'hello\\n' | nc -q1 {} {}   (run it twice: round robin)",
        listen.ip(),
        listen.port()
    );
    println!(
        "  or: exec 3<>/dev/tcp/{}/{}; echo hi >&3; head -2 <&3",
        listen.ip(),
        listen.port()
    );
    println!("stop with Ctrl-C");
    crate::server::run(cfg)
}

fn echo_server(l: TcpListener, name: &'static str) {
    for conn in l.incoming() {
        let Ok(s) = conn else { continue };
        let _ = thread::Builder::new().spawn(move || echo(s, name));
    }
}

fn echo(mut s: TcpStream, name: &str) {
    if s.write_all(format!("hello from {name}\n").as_bytes())
        .is_err()
    {
        return;
    }
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}
