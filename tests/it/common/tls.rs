//! Test PKI (rcgen: a CA, leaf certificates signed by it, written as PEM
//! files in a temp dir) and the real TLS clients the tests drive: `curl`
//! and `openssl s_client`.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use super::TempDir;

/// A CA and the files of certificates it signed.
pub struct Pki {
    pub dir: TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    /// The CA certificate, PEM.
    pub ca_file: PathBuf,
}

/// One certificate's files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    /// `{ cert = "...", key = "..." }` for a `certs` list.
    pub fn toml(&self) -> String {
        format!(
            "{{ cert = \"{}\", key = \"{}\" }}",
            self.cert.display(),
            self.key.display()
        )
    }
}

impl Pki {
    pub fn new(what: &str) -> Pki {
        Pki::with_ca_name(what, "ringlb test CA")
    }

    pub fn with_ca_name(what: &str, ca_name: &str) -> Pki {
        let dir = TempDir::new(what);
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, ca_name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = p.self_signed(&ca_key).unwrap();
        let ca_file = dir.path("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki {
            dir,
            ca,
            ca_key,
            ca_file,
        }
    }

    /// A leaf for `names` (DNS subject-alternative names) with common name
    /// `cn`, written as `<file>.pem` / `<file>.key`.
    pub fn leaf(&self, file: &str, cn: &str, names: &[&str]) -> Pair {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let pair = Pair {
            cert: self.dir.path(&format!("{file}.pem")),
            key: self.dir.path(&format!("{file}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        pair
    }
}

/// `openssl s_client` to `addr` (SNI `name`, none when `None`), with more
/// arguments; returns stdout and stderr together. Sends nothing and quits.
pub fn s_client(addr: SocketAddr, name: Option<&str>, extra: &[&str]) -> String {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client").arg("-connect").arg(addr.to_string());
    match name {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client (apt-get install openssl)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The peer certificate's subject CN in s_client output.
pub fn subject_cn(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("subject="))
        .and_then(|s| s.split("CN").nth(1))
        .map(|s| s.trim_start_matches([' ', '=']).trim().to_string())
}

/// `curl` over HTTPS to `https://name:port/path`, resolved to `addr`,
/// trusting `ca`; returns (exit code, body, stderr).
pub fn curl(
    addr: SocketAddr,
    name: &str,
    path: &str,
    ca: &PathBuf,
    extra: &[&str],
) -> (i32, Vec<u8>, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve"])
        .arg(format!("{name}:{}:{}", addr.port(), addr.ip()))
        .arg("--cacert")
        .arg(ca)
        .args(extra)
        .arg(format!("https://{name}:{}{path}", addr.port()))
        .output()
        .expect("curl");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A rustls server configuration with `pair`'s certificate and key.
pub fn server_config(pair: &Pair) -> std::sync::Arc<rustls::ServerConfig> {
    use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pair.key).unwrap();
    std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    )
}

/// A TLS echo server (rustls, a thread per connection) with `pair`'s
/// certificate: what a passthrough route's backend sees is a real TLS
/// server's view.
pub struct TlsEcho {
    pub addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl TlsEcho {
    pub fn start(pair: &Pair) -> TlsEcho {
        let cfg = server_config(pair);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        let cfg = std::sync::Arc::clone(&cfg);
                        std::thread::spawn(move || {
                            use std::io::{Read, Write};
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_nodelay(true);
                            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(20)));
                            let conn = rustls::ServerConnection::new(cfg).unwrap();
                            let mut t = rustls::StreamOwned::new(conn, s);
                            let mut buf = vec![0u8; 65536];
                            loop {
                                match t.read(&mut buf) {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => {
                                        if t.write_all(&buf[..n]).is_err() {
                                            return;
                                        }
                                    }
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        TlsEcho { addr, stop }
    }
}

impl Drop for TlsEcho {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An `openssl s_server -www` on a free loopback port with `pair`'s
/// certificate and `extra` arguments; killed (by PID) on drop.
pub struct SServer {
    pub addr: SocketAddr,
    child: std::process::Child,
}

impl SServer {
    pub fn start(pair: &Pair, extra: &[&str]) -> SServer {
        for _ in 0..20 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new("openssl")
                .args(["s_server", "-quiet", "-www", "-accept"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("-cert")
                .arg(&pair.cert)
                .arg("-key")
                .arg(&pair.key)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("openssl s_server");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let up = super::wait_until(std::time::Duration::from_secs(3), || {
                std::net::TcpStream::connect(addr).is_ok()
            });
            if up {
                return SServer { addr, child };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("openssl s_server did not start");
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS server (rustls) that reads a request head, answers `answer` and
/// closes at once with the body unread (its kernel resets the connection).
pub fn tls_answer_and_close(pair: &Pair, answer: &'static [u8]) -> SocketAddr {
    let cfg = server_config(pair);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(20) {
            let Ok(s) = s else { return };
            let cfg = std::sync::Arc::clone(&cfg);
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                let conn = rustls::ServerConnection::new(cfg).unwrap();
                let mut t = rustls::StreamOwned::new(conn, s);
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match t.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = t.write_all(answer);
                let _ = t.flush();
                // Let the body pile up unread, then close: a reset.
                std::thread::sleep(std::time::Duration::from_millis(300));
            });
        }
    });
    addr
}
