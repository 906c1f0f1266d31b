//! Process-level errors: the ones that stop ringlb from starting.
//! Per-connection errors never reach here; they are counted and logged once
//! at the connection boundary.

use crate::config::LoadError;

/// Why ringlb could not start (or had to stop).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is invalid. Exit code 2.
    #[error(transparent)]
    Config(#[from] LoadError),
    /// A listener could not be bound (port in use, permission, bad address). Exit code 1.
    #[error("listener {name:?} ({addr}): {msg}")]
    Bind {
        name: String,
        addr: std::net::SocketAddr,
        msg: String,
    },
    /// Anything else at startup: io_uring required but missing, fd limit, threads. Exit code 1.
    #[error("{0}")]
    Startup(String),
}

impl Error {
    /// Exit code as documented: 2 for configuration errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => 2,
            _ => 1,
        }
    }
}
