//! HTTP/1.1 on the wire, sans I/O: the head codec, chunked framing, the
//! head rewrite toward backends and clients, and ringlb's own responses.

pub mod body;
pub mod chunked;
pub mod client;
pub mod codec;
pub mod fields;
pub mod path;
pub mod respond;
pub mod rewrite;
pub mod scan;
pub mod server;
pub mod tunnel;
