//! `ringlb demo`: a self-contained try-out with nothing else installed. It
//! starts built-in backends on loopback (two echo servers, three small HTTP
//! servers), a self-signed certificate, and ringlb in front of them: a tcp
//! listener, an http listener with routes (two upstreams, a rate-limited
//! route, a redirect, a fixed answer, no catch-all so a missing route shows
//! its JSON error), an HTTPS listener (h2 and HTTP/1.1, HSTS) and the admin
//! endpoint. It prints the commands to paste.

mod backends;

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
};

use crate::{
    config::{Config, LoadError},
    Error,
};

/// Where each part listens: the tcp listener on the address given, the
/// others on the ports after it (+80 http, +443 https, +90 admin), or on
/// free ports when the given port is 0.
struct Ports {
    tcp: SocketAddr,
    http: SocketAddr,
    https: SocketAddr,
    admin: SocketAddr,
}

impl Ports {
    fn new(listen: SocketAddr) -> Result<Ports, Error> {
        let at = |offset: u16| -> Result<SocketAddr, Error> {
            if listen.port() == 0 {
                // A free port now; ringlb binds it a moment later.
                let l = TcpListener::bind(SocketAddr::new(listen.ip(), 0))
                    .and_then(|l| l.local_addr())
                    .map_err(|e| Error::Startup(format!("demo: no free port: {e}")))?;
                return Ok(l);
            }
            let port = listen.port().checked_add(offset).ok_or_else(|| {
                Error::Startup(format!(
                    "demo: port {} + {offset} is past 65535; pick a lower --listen port",
                    listen.port()
                ))
            })?;
            Ok(SocketAddr::new(listen.ip(), port))
        };
        Ok(Ports {
            tcp: at(0)?,
            http: at(80)?,
            https: at(443)?,
            admin: at(90)?,
        })
    }
}

/// A fresh self-signed certificate for `localhost` and 127.0.0.1, written
/// to a directory of this process; returns the cert and key paths.
fn certificate() -> Result<(PathBuf, PathBuf), Error> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::Startup(format!("demo: {what}: {e}"));
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(|e| fail("cannot make a certificate", &e))?;
    let dir = private_dir().map_err(|e| fail("cannot make a temp dir", &e))?;
    let (c, k) = (dir.join("demo.pem"), dir.join("demo.key"));
    new_file(&c, 0o644, cert.cert.pem().as_bytes())
        .map_err(|e| fail("cannot write the certificate", &e))?;
    new_file(&k, 0o600, cert.key_pair.serialize_pem().as_bytes())
        .map_err(|e| fail("cannot write the key", &e))?;
    Ok((c, k))
}

/// A new directory only this user can enter, under the temp dir: never
/// one that exists already (another user could have made it to read the
/// key or swap the files).
fn private_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let mut last = None;
    for attempt in 0..8u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "ringlb-demo-{}-{nanos:08x}{attempt}",
            std::process::id()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::ErrorKind::AlreadyExists.into()))
}

/// Write a file that must not exist yet, with `mode`.
fn new_file(path: &std::path::Path, mode: u32, data: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?
        .write_all(data)
}

/// The demo's configuration over the built-in backends.
fn config(p: &Ports, b: &backends::Started, cert: &(PathBuf, PathBuf)) -> String {
    let servers = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("{{ addr = \"{a}\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"
[runtime]
workers = "auto"
shutdown_timeout = "2s"

[admin]
listen = "{admin}"

[[listener]]
name = "tcp"
mode = "tcp"
listen = "{tcp}"
upstream = "echo"
connect_timeout = "1s"
idle_timeout = "5m"

[[listener]]
name = "http"
mode = "http"
listen = "{http}"

[[listener.route]]
path_prefix = "/api/"
upstream = "api"

[[listener.route]]
path_prefix = "/static/"
upstream = "static"

[[listener.route]]
path_prefix = "/limited/"
upstream = "api"
rate_limit = {{ rate = 1, burst = 2 }}

[[listener.route]]
path_prefix = "/old/"
redirect = {{ to = "$scheme://$host:$server_port/api$uri", status = 302 }}

[[listener.route]]
path_prefix = "/healthz"
return = {{ status = 200, body = "ok\n" }}

[[listener]]
name = "https"
mode = "http"
listen = "{https}"
upstream = "api"
tls = {{ certs = [{{ cert = "{cert}", key = "{key}" }}], alpn = ["h2", "http/1.1"], hsts = true }}

[upstream.echo]
servers = [{echo}]

[upstream.api]
balance = "round_robin"
sticky = {{ cookie = "demo_srv" }}
servers = [{api}]

[upstream.static]
servers = [{stat}]
"#,
        admin = p.admin,
        tcp = p.tcp,
        http = p.http,
        https = p.https,
        cert = cert.0.display(),
        key = cert.1.display(),
        echo = servers(&b.echo),
        api = servers(&b.api),
        stat = servers(&b.stat),
    )
}

/// What to paste: `$ command  # what it shows` lines (the tests run them).
fn commands(p: &Ports) -> Vec<(String, &'static str)> {
    let h = p.http;
    vec![
        (format!("curl -s http://{h}/api/hello"), "routed to api-1 or api-2 (JSON from the backend)"),
        (format!("curl -s http://{h}/static/logo.png"), "the other route, the static upstream"),
        (format!("curl -s http://{h}/nope"), "no route: ringlb's JSON 404 with the request id"),
        (
            format!("for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}} ' http://{h}/limited/; done; echo"),
            "a burst over the rate limit: 200 200 429 429",
        ),
        (format!("curl -si http://{h}/old/page"), "a redirect (route `redirect`)"),
        (format!("curl -si http://{h}/api/sticky"), "the sticky cookie (upstream `sticky`)"),
        (
            format!("curl -sk --http2 -i https://localhost:{}/api/tls", p.https.port()),
            "HTTPS and HTTP/2 with a self-signed certificate, HSTS",
        ),
        (
            format!("bash -c 'exec 3<>/dev/tcp/{}/{}; echo hello >&3; head -2 <&3'", p.tcp.ip(), p.tcp.port()),
            "the tcp listener: an echo backend greets, then echoes",
        ),
        (
            format!("curl -s http://{}/metrics | grep '^ringlb_http_requests_total'", p.admin),
            "Prometheus metrics",
        ),
        (format!("curl -s http://{}/status", p.admin), "the live state as JSON"),
    ]
}

/// Start the backends, print how to try it, and run until stopped.
///
/// # Errors
/// A demo address is in use, or a backend cannot bind.
pub fn run(listen: SocketAddr) -> Result<(), Error> {
    // Before the backend threads exist, so that SIGINT/SIGTERM reach the
    // control loop (a graceful stop) and not a backend thread.
    crate::sys::block_signals()
        .map_err(|e| Error::Startup(format!("cannot block signals: {e}")))?;
    let ports = Ports::new(listen)?;
    let started = backends::start()?;
    let cert = certificate()?;
    let text = config(&ports, &started, &cert);
    let cfg = Config::parse(&text).map_err(|err| LoadError {
        file: "(demo)".into(),
        err,
    })?;
    println!(
        "ringlb demo: tcp {}, http {}, https {}, admin {}",
        ports.tcp, ports.http, ports.https, ports.admin
    );
    println!("try these (in another terminal):");
    for (cmd, what) in commands(&ports) {
        println!("$ {cmd}    # {what}");
    }
    println!("stop with Ctrl-C");
    let r = crate::server::run(cfg);
    if let Some(dir) = cert.0.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    r
}
