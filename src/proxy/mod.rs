//! Protocol handling for accepted connections: L4 (TCP) and L7 (HTTP/1.1).

pub mod l4;
pub mod l7;
pub mod pool;
pub mod proxy_protocol;
pub mod relay;
