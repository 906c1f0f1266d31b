//! Upstreams as a worker sees them: the per-worker replica (balancer,
//! keep-alive pool, in-flight counts) and timed connects to its backends.

pub mod replica;
