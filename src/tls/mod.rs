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
            let mut roots = RootCertStore::empty();
            let file = t
                .client_ca_file
                .as_ref()
                .map(|f| f.display().to_string())
                .unwrap_or_default();
            for c in &t.client_ca {
                roots
                    .add(c.clone())
                    .map_err(|e| format!("client CA file {file:?}: {e}"))?;
            }
            let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&p));
            let b = if auth == ClientAuth::Optional {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build()
                .map_err(|e| format!("client CA file {file:?}: {e}"))?
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
