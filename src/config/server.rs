//! One backend server as the config (or a discovery source) lists it. A
//! leaf: the upstream table and the discovery sources both build it.

use std::net::SocketAddr;

/// One backend server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerConfig {
    /// As written in the file (stable identity for hashing).
    pub id: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Used only when every primary is unavailable.
    pub backup: bool,
    /// Process-wide cap on connections (tcp) / requests in flight (http); 0 = none.
    pub max_connections: u32,
}
