//! `tls`: TLS handshakes per second against a target, from `--concurrency`
//! threads for `--duration` seconds. Each connection: handshake, one
//! `GET /` (so TLS 1.3 tickets arrive), read the response, close.
//! `--resume true`: the threads share one client configuration and its
//! session store, so every connection after the first resumes (tickets or
//! session ids); `false`: a fresh configuration per connection (a full
//! handshake each time). Certificates are not verified (a perf tool).

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};

#[derive(Debug)]
struct Any(Arc<CryptoProvider>);

impl ServerCertVerifier for Any {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn config() -> Arc<rustls::ClientConfig> {
    let p = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::clone(&p))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Any(p)))
        .with_no_client_auth();
    Arc::new(cfg)
}

/// One connection; Some(resumed) when it completed.
fn one(cfg: &Arc<rustls::ClientConfig>, target: &str, timeout: Duration) -> Option<bool> {
    let sock = TcpStream::connect(target).ok()?;
    sock.set_read_timeout(Some(timeout)).ok()?;
    sock.set_nodelay(true).ok()?;
    let name = ServerName::try_from("perf.test").ok()?;
    let conn = rustls::ClientConnection::new(Arc::clone(cfg), name).ok()?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    s.write_all(b"GET / HTTP/1.1\r\nHost: perf.test\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = [0u8; 4096];
    let mut got = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            // Closed without close_notify after the answer: fine here.
            Err(_) if got > 0 => break,
            Err(_) => return None,
        }
    }
    let resumed = s.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    (got > 0).then_some(resumed)
}

pub fn run(args: &crate::Args) -> Result<i32, String> {
    let target = args.req("target")?.to_string();
    let secs: u64 = args.num("duration", 5)?;
    let threads: usize = args.num("concurrency", 4)?;
    let resume = args.str("resume").unwrap_or("false") == "true";
    let timeout = args.ms("timeout-ms", 5000)?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let resumed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let shared = config();
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, done, resumed, failed) = (
                Arc::clone(&stop),
                Arc::clone(&done),
                Arc::clone(&resumed),
                Arc::clone(&failed),
            );
            let (target, shared) = (target.clone(), Arc::clone(&shared));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let cfg = if resume {
                        Arc::clone(&shared)
                    } else {
                        config()
                    };
                    match one(&cfg, &target, timeout) {
                        Some(r) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            if r {
                                resumed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        None => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let wall = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "handshakes={n} resumed={} failed={} seconds={wall:.3} rate={:.1}",
        resumed.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        n as f64 / wall
    );
    Ok(if n > 0 { 0 } else { 1 })
}
