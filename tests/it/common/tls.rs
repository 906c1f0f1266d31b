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
