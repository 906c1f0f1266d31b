//! Admission: listening sockets, the accept loop, the per-listener
//! connection limiter, the worker's drain count and the ticket every
//! accepted connection carries until it ends.

pub mod accept;
pub mod drain;
pub mod limiter;
pub mod sockets;
pub mod ticket;
