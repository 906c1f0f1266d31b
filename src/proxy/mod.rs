//! Protocol handling for accepted connections. Today: L4 (TCP).

pub mod l4;
pub mod pool;
pub mod proxy_protocol;
pub mod relay;
