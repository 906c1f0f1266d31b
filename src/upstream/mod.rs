//! Upstreams as a worker sees them: the per-worker [`replica::Replica`]
//! (view of the backend set, balancer, keep-alive pool, in-flight counts)
//! and timed connects to its backends.

pub mod connect;
pub mod h2pool;
pub mod pool;
pub mod replica;

pub use replica::{InFlight, Picked, Replica};
