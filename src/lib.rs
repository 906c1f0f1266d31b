//! ringlb: a thread-per-core io_uring load balancer (tcp, HTTP/1.1 and HTTP/2).
//!
//! One connection flows down this table: `server` starts workers, a worker
//! wires `listen` (accept, limiter, ticket) to a `proxy` handler, which
//! asks an `upstream` replica for a backend of a `backends` set (picked by a
//! pure `balancer`) and moves bytes with `io`. `config`, `sys`, `limits` and
//! `metrics` are leaves below the data path. A module may `use` only the
//! modules its row names (the crate-root re-exports `Config` and `Error`
//! count as `config` and `error`); the unit test in `layers.rs` reads this
//! table and every file's `crate::` paths, and fails on any other arrow.
//! Nothing imports `server` but `main` and `demo`, so there are no cycles.
//!
//! | module | what it owns | may use (`use crate::...`) |
//! |---|---|---|
//! | `main` | the CLI | everything |
//! | `demo` | `ringlb demo`: echo backends + a tcp listener | config, error, server, sys |
//! | `server` | signal loop, generations, reload, upgrade, fd budget, threads | admin, proxy, listen, upstream, metrics, backends, discovery, limits, tls, io, config, balancer, error, sys |
//! | `discovery` | the thread that follows upstreams' discovery sources (file, DNS) | backends, config |
//! | `admin` | the admin HTTP listener (/metrics /status /healthz /readyz) | metrics, sys |
//! | `proxy` | the protocol handlers: tcp relay, HTTP/1.1 exchange, HTTP/2 streams | listen, upstream, backends, balancer, io, limits, metrics, config, sys |
//! | `listen` | sockets, accept loop, limiter, drain, connection ticket | io, limits, metrics, config, sys |
//! | `upstream` | per-worker replica (balancer, pools: keep-alive and HTTP/2, in-flight), timed connects | backends, balancer, tls, io, metrics, config, sys |
//! | `metrics` | per-worker shards, Prometheus text, /status, access log | backends, config, sys |
//! | `backends` | versioned backend sets, health and circuit state, pick, checks | balancer, tls, io, config, sys |
//! | `limits` | token buckets and per-IP counters | balancer, config |
//! | `tls` | rustls configurations: certificates by SNI, versions, ALPN, client auth | config |
//! | `io` | streams (plain and TLS), relay, pools, read buffer, connect, the tokio I/O bridge for h2 | config, sys |
//! | `config` | TOML -> typed config | balancer |
//! | `error` | startup errors and exit codes | config |
//! | `balancer` | pure pick algorithms | (nothing) |
//! | `sys` | the only `unsafe`: syscalls, signals, fd hand-over, sd_notify | (nothing) |
#![deny(rust_2018_idioms, unused_must_use)]
#![deny(unsafe_code)]

pub mod admin;
pub mod backends;
pub mod balancer;
pub mod config;
pub mod demo;
pub mod discovery;
mod error;
pub mod io;
#[cfg(test)]
mod layers;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod sys;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use error::Error;
pub use server::run;
