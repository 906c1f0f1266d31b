//! Transport: moving bytes on connected sockets. Knows sockets, pipes and
//! deadlines; nothing about HTTP, balancers or listeners.
//!
//! - [`connect`]: an outgoing TCP connection with a deadline.
//! - [`relay`]: both directions between two streams (splice or copy), and
//!   the write helpers everything else uses.
//! - [`pools`]: per-worker pipes and copy buffers, leased while bytes move.
//! - [`rbuf`]: a read buffer with a consumed front (heads, pipelining).
//! - [`h2io`]: a stream as tokio I/O for the `h2` crate.
//! - [`stream`]: the byte stream all of the above work on.
//! - [`timer`]: small per-connection deadlines (idle, connect) on one
//!   worker timer.
//! - [`tls`]: the TLS variant of it (rustls driven by readiness), and the
//!   handshake.

pub mod connect;
pub mod h2io;
pub mod pools;
pub mod rbuf;
pub mod relay;
pub mod stream;
pub mod timer;
pub mod tls;
