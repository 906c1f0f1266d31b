//! Protocol handling for accepted connections: tcp (a byte relay) and http
//! (HTTP/1.1 reverse proxy).

pub mod http;
pub mod proxy_protocol;
pub mod tcp;
