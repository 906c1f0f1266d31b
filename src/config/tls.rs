//! `tls = { ... }` on a listener: certificates (read and parsed here, so
//! `ringlb check` names a bad file), versions, ALPN, handshake timeout and
//! client-certificate verification. The rustls configuration is built from
//! this by `crate::tls`.

use std::{fmt, path::PathBuf, sync::Arc, time::Duration};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use super::{
    values::{nonzero_dur, one_of},
    ConfigError,
};

/// A TLS protocol version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    Off,
    /// Asked for; a client without one is still served (with one, it must
    /// verify).
    Optional,
    /// Required and verified against `client_ca`.
    Required,
}

/// One certificate chain and its private key, read from their files.
pub struct CertPair {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// CRC-32 of both files' bytes: a changed file makes a different
    /// config (and the reload that sees it builds new TLS state).
    pub fingerprint: u32,
}

impl fmt::Debug for CertPair {
    // Never the key itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertPair")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("fingerprint", &format_args!("{:08x}", self.fingerprint))
            .finish()
    }
}

/// A listener's TLS settings.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// In config order; the first is the default for clients whose name
    /// (or lack of one) matches no certificate.
    pub certs: Vec<Arc<CertPair>>,
    pub versions: Vec<TlsVersion>,
    /// ALPN protocols offered, in preference order (empty: no ALPN).
    pub alpn: Vec<String>,
    pub handshake_timeout: Duration,
    pub client_auth: ClientAuth,
    /// CA certificates that client certificates must chain to.
    pub client_ca: Vec<CertificateDer<'static>>,
    pub client_ca_file: Option<PathBuf>,
    /// http: tell the backend what the handshake agreed (X-TLS-*,
    /// X-Client-Verify, X-Client-Cert-Subject).
    pub headers: bool,
    /// http: the `Strict-Transport-Security` value every response carries.
    pub hsts: Option<String>,
}

/// `tls = { ... }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    #[serde(default)]
    pub certs: Vec<RawCert>,
    pub versions: Option<Vec<String>>,
    pub alpn: Option<Vec<String>>,
    pub handshake_timeout: Option<String>,
    pub client_auth: Option<String>,
    pub client_ca: Option<String>,
    pub headers: Option<bool>,
    pub hsts: Option<super::reply::RawHsts>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCert {
    pub cert: String,
    pub key: String,
}

fn read(key: &str, path: &str, what: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {what} file {path:?}: {e}")))
}

/// Every certificate in a PEM file (at least one), and the file's bytes.
fn certs_from(
    key: &str,
    path: &str,
    what: &str,
) -> Result<(Vec<CertificateDer<'static>>, Vec<u8>), ConfigError> {
    let bytes = read(key, path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(key, format!("{what} file {path:?}: {e}")))?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            key,
            format!("{what} file {path:?} holds no PEM certificate (BEGIN CERTIFICATE)"),
        ));
    }
    Ok((certs, bytes))
}

pub(super) fn pair(key: &str, c: &RawCert) -> Result<CertPair, ConfigError> {
    let (chain, cert_bytes) = certs_from(key, &c.cert, "certificate")?;
    let key_bytes = read(key, &c.key, "key")?;
    let private = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        ConfigError::new(
            key,
            format!(
                "key file {:?}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
                c.key
            ),
        )
    })?;
    let mut h = crc32fast::Hasher::new();
    h.update(&cert_bytes);
    h.update(&key_bytes);
    Ok(CertPair {
        cert_file: PathBuf::from(&c.cert),
        key_file: PathBuf::from(&c.key),
        chain,
        key: private,
        fingerprint: h.finalize(),
    })
}

/// ALPN protocol names as written: each 1 to 255 bytes.
fn alpn_list(key: &str, alpn: Vec<String>) -> Result<Vec<String>, ConfigError> {
    match alpn.iter().find(|p| p.is_empty() || p.len() > 255) {
        Some(p) => Err(ConfigError::new(
            key,
            format!("{p:?}: a protocol name is 1 to 255 bytes"),
        )),
        None => Ok(alpn),
    }
}

/// An upstream's TLS to its backends (re-encryption).
#[derive(Clone)]
pub struct UpstreamTls {
    /// SNI and the name the certificate must carry; `None`: each
    /// backend's IP address.
    pub server_name: Option<String>,
    /// Verify the backend's certificate against `ca` (on by default).
    pub verify: bool,
    pub ca: Vec<CertificateDer<'static>>,
    pub ca_file: Option<PathBuf>,
    /// CRC-32 of the CA file (a changed file is a changed config).
    pub ca_fingerprint: u32,
    /// A client certificate for backends that ask for one.
    pub client_cert: Option<Arc<CertPair>>,
    pub alpn: Vec<String>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("verify", &self.verify)
            .field("ca_file", &self.ca_file)
            .field(
                "ca_fingerprint",
                &format_args!("{:08x}", self.ca_fingerprint),
            )
            .field("client_cert", &self.client_cert)
            .field("alpn", &self.alpn)
            .finish()
    }
}

/// `tls = { ... }` of an upstream as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    pub server_name: Option<String>,
    pub verify: Option<bool>,
    pub ca: Option<String>,
    pub client_cert: Option<RawCert>,
    pub alpn: Option<Vec<String>>,
}

/// `upstream.NAME.tls`, its files read and parsed.
pub(super) fn build_upstream(key: &str, raw: RawUpstreamTls) -> Result<UpstreamTls, ConfigError> {
    let verify = raw.verify.unwrap_or(true);
    let (ca, ca_fingerprint) = match (&raw.ca, verify) {
        (Some(p), _) => {
            let (certs, bytes) = certs_from(&format!("{key}.ca"), p, "CA")?;
            (certs, crc32fast::hash(&bytes))
        }
        (None, true) => {
            return Err(ConfigError::new(
                format!("{key}.ca"),
                "verify is on: give the CA file backend certificates chain to (or verify = false, which trusts any certificate)",
            ))
        }
        (None, false) => (Vec::new(), 0),
    };
    if let Some(n) = &raw.server_name {
        if rustls_pki_types::ServerName::try_from(n.as_str()).is_err() {
            return Err(ConfigError::new(
                format!("{key}.server_name"),
                format!("{n:?} is not a DNS name or IP address"),
            ));
        }
    }
    let client_cert = match &raw.client_cert {
        Some(c) => Some(Arc::new(pair(&format!("{key}.client_cert"), c)?)),
        None => None,
    };
    let alpn = alpn_list(&format!("{key}.alpn"), raw.alpn.unwrap_or_default())?;
    Ok(UpstreamTls {
        server_name: raw.server_name,
        verify,
        ca,
        ca_file: raw.ca.map(PathBuf::from),
        ca_fingerprint,
        client_cert,
        alpn,
    })
}

/// `listener[i].tls`, its files read and parsed.
pub(super) fn build(k: &dyn Fn(&str) -> String, raw: RawTls) -> Result<TlsConfig, ConfigError> {
    if raw.certs.is_empty() {
        return Err(ConfigError::new(
            k("tls.certs"),
            "at least one { cert = \"...pem\", key = \"...key\" } is needed",
        ));
    }
    let certs = raw
        .certs
        .iter()
        .enumerate()
        .map(|(j, c)| pair(&k(&format!("tls.certs[{j}]")), c).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let versions = match raw.versions {
        None => vec![TlsVersion::V1_2, TlsVersion::V1_3],
        Some(v) if v.is_empty() => {
            return Err(ConfigError::new(
                k("tls.versions"),
                "must name at least one version",
            ))
        }
        Some(v) => v
            .iter()
            .map(|s| match s.as_str() {
                "1.2" => Ok(TlsVersion::V1_2),
                "1.3" => Ok(TlsVersion::V1_3),
                o => Err(one_of(&k("tls.versions"), o, &["1.2", "1.3"])),
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let alpn = alpn_list(
        &k("tls.alpn"),
        raw.alpn.unwrap_or_else(|| vec!["http/1.1".to_string()]),
    )?;
    let client_auth = match raw.client_auth.as_deref() {
        None if raw.client_ca.is_some() => ClientAuth::Required,
        None | Some("off") => ClientAuth::Off,
        Some("optional") => ClientAuth::Optional,
        Some("required") => ClientAuth::Required,
        Some(o) => {
            return Err(one_of(
                &k("tls.client_auth"),
                o,
                &["off", "optional", "required"],
            ))
        }
    };
    let client_ca = match (&raw.client_ca, client_auth) {
        (Some(p), _) => certs_from(&k("tls.client_ca"), p, "CA")?.0,
        (None, ClientAuth::Off) => Vec::new(),
        (None, _) => {
            return Err(ConfigError::new(
                k("tls.client_ca"),
                "client_auth needs the CA file client certificates must chain to",
            ))
        }
    };
    Ok(TlsConfig {
        certs,
        versions,
        alpn,
        handshake_timeout: nonzero_dur(&k("tls.handshake_timeout"), raw.handshake_timeout, 10)?,
        client_auth,
        client_ca,
        client_ca_file: raw.client_ca.map(PathBuf::from),
        headers: raw.headers.unwrap_or(false),
        hsts: match raw.hsts {
            None => None,
            Some(h) => super::reply::hsts(&k("tls.hsts"), h)?,
        },
    })
}
