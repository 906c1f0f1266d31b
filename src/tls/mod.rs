//! tls: rustls configurations built from the config's TLS tables (ring
//! provider only).
//!
//! A listener's [`ServerConfig`] is built once per generation and shared by
//! every worker (an `Arc`): its session cache and ticket keys are the same
//! on every core, so a client resumes wherever its next connection lands.
//! 0-RTT stays off. The certificate is chosen per handshake by the name the
//! client sent (SNI): an exact name, then `*.parent`, then the first
//! certificate of the list; names come from each certificate's DNS
//! subject-alternative names.

use std::{collections::HashMap, sync::Arc};

use rustls::{
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier},
    sign::CertifiedKey,
    RootCertStore, ServerConfig, SupportedProtocolVersion,
};

use crate::config::{ClientAuth, Config, ConfigError, TlsConfig, TlsVersion};

/// Sessions kept for resumption by id (TLS 1.2 and stateful 1.3), per
/// listener, shared by all workers. Tickets (stateless) need no room.
const SESSION_CACHE: usize = 20_000;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn versions(v: &[TlsVersion]) -> Vec<&'static SupportedProtocolVersion> {
    v.iter()
        .map(|v| match v {
            TlsVersion::V1_2 => &rustls::version::TLS12,
            TlsVersion::V1_3 => &rustls::version::TLS13,
        })
        .collect()
}

/// Certificates by the name a client asks for.
#[derive(Debug)]
struct ByName {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the parent name ("example.com" for "*.example.com").
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ByName {
    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name else {
            return Arc::clone(&self.default);
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Arc::clone(k);
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return Arc::clone(k);
            }
        }
        Arc::clone(&self.default)
    }
}

impl ResolvesServerCert for ByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// The DNS names (and `*.` wildcards) a certificate covers.
fn names_of(cert: &rustls_pki_types::CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(ee) => ee
            .valid_dns_names()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn resolver(t: &TlsConfig, p: &CryptoProvider) -> Result<ByName, String> {
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    for c in &t.certs {
        let key = CertifiedKey::from_der(c.chain.clone(), c.key.clone_key(), p).map_err(|e| {
            format!(
                "certificate {:?} with key {:?}: {e}",
                c.cert_file.display(),
                c.key_file.display()
            )
        })?;
        let key = Arc::new(key);
        for n in names_of(&c.chain[0]) {
            // The first certificate listed for a name keeps it.
            match n.strip_prefix("*.") {
                Some(parent) => wildcard
                    .entry(parent.to_string())
                    .or_insert_with(|| Arc::clone(&key)),
                None => exact.entry(n).or_insert_with(|| Arc::clone(&key)),
            };
        }
        default.get_or_insert(key);
    }
    let default = default.ok_or("no certificate")?;
    Ok(ByName {
        exact,
        wildcard,
        default,
    })
}

/// A trust store of `certs`, read from `file` (named in errors as `what`).
fn roots(
    certs: &[rustls_pki_types::CertificateDer<'static>],
    file: Option<&std::path::Path>,
    what: &str,
) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c.clone()).map_err(|e| {
            format!(
                "{what} file {:?}: {e}",
                file.map(|f| f.display().to_string()).unwrap_or_default()
            )
        })?;
    }
    Ok(roots)
}

/// A listener's rustls server configuration.
///
/// # Errors
/// A key that does not match its certificate or is of an unsupported
/// kind, a client CA that is not a usable trust anchor (the files are
/// named in the message).
pub fn server_config(t: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let p = provider();
    let verifier = match t.client_auth {
        ClientAuth::Off => WebPkiClientVerifier::no_client_auth(),
        auth => {
            let roots = roots(&t.client_ca, t.client_ca_file.as_deref(), "client CA")?;
            let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&p));
            let b = if auth == ClientAuth::Optional {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build().map_err(|e| {
                let file = t.client_ca_file.as_ref().map(|f| f.display().to_string());
                format!("client CA file {:?}: {e}", file.unwrap_or_default())
            })?
        }
    };
    let resolver = resolver(t, &p)?;
    let mut cfg = ServerConfig::builder_with_provider(Arc::clone(&p))
        .with_protocol_versions(&versions(&t.versions))
        .map_err(|e| format!("tls.versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = t.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    cfg.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    cfg.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| format!("ticket keys: {e}"))?;
    cfg.max_early_data_size = 0;
    Ok(Arc::new(cfg))
}

/// The server configurations of every TLS listener, by listener index.
///
/// # Errors
/// The first listener whose TLS settings cannot be built, as a config
/// error on its `tls` key.
pub fn listener_configs(cfg: &Config) -> Result<Vec<Option<Arc<ServerConfig>>>, ConfigError> {
    cfg.listeners
        .iter()
        .enumerate()
        .map(|(i, l)| match &l.tls {
            Some(t) => server_config(t)
                .map(Some)
                .map_err(|e| ConfigError::new(format!("listener[{i}].tls"), e)),
            None => Ok(None),
        })
        .collect()
}

/// An upstream's TLS to its backends: the rustls client configuration
/// (shared by every worker: resumption works from any core) and the name
/// to ask for and verify.
#[derive(Debug)]
pub struct Client {
    pub config: Arc<rustls::ClientConfig>,
    /// `None`: each backend's IP address.
    pub server_name: Option<rustls_pki_types::ServerName<'static>>,
}

impl Client {
    /// The name to connect to `addr` as.
    pub fn name_for(&self, addr: std::net::SocketAddr) -> rustls_pki_types::ServerName<'static> {
        match &self.server_name {
            Some(n) => n.clone(),
            None => rustls_pki_types::ServerName::IpAddress(addr.ip().into()),
        }
    }
}

/// `verify = false`: any certificate is taken (signatures are still
/// checked, so the handshake itself stays sound).
#[derive(Debug)]
struct TrustAnything(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An upstream's client configuration.
///
/// # Errors
/// A CA that is no usable trust anchor, a client key that does not match
/// its certificate (files named).
pub fn client_config(t: &crate::config::UpstreamTls) -> Result<Client, String> {
    let p = provider();
    let b = rustls::ClientConfig::builder_with_provider(Arc::clone(&p))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("versions: {e}"))?;
    let b = if t.verify {
        b.with_root_certificates(roots(&t.ca, t.ca_file.as_deref(), "CA")?)
    } else {
        b.dangerous()
            .with_custom_certificate_verifier(Arc::new(TrustAnything(Arc::clone(&p))))
    };
    let mut cfg = match &t.client_cert {
        Some(c) => b
            .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
            .map_err(|e| {
                format!(
                    "client certificate {:?} with key {:?}: {e}",
                    c.cert_file.display(),
                    c.key_file.display()
                )
            })?,
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = t.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    let server_name = match &t.server_name {
        Some(n) => Some(
            rustls_pki_types::ServerName::try_from(n.clone())
                .map_err(|e| format!("server_name {n:?}: {e}"))?,
        ),
        None => None,
    };
    Ok(Client {
        config: Arc::new(cfg),
        server_name,
    })
}

/// The client configurations of every upstream with `tls`, by index.
///
/// # Errors
/// The first that cannot be built, as a config error on its `tls` key.
pub fn upstream_configs(cfg: &Config) -> Result<Vec<Option<Arc<Client>>>, ConfigError> {
    cfg.upstreams
        .iter()
        .map(|u| match &u.tls {
            Some(t) => client_config(t)
                .map(|c| Some(Arc::new(c)))
                .map_err(|e| ConfigError::new(format!("upstream.{}.tls", u.name), e)),
            None => Ok(None),
        })
        .collect()
}
