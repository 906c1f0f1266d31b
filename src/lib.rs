//! ringlb: a thread-per-core io_uring L4 load balancer.
//!
//! Data flows one way: `runtime` (threads, signals) -> `listener` (accept,
//! limiter permit) -> `proxy` (protocol) -> `balancer` (pick) / `upstream`
//! (connect). `config`, `error` and `sys` are leaves everyone may use.
#![deny(rust_2018_idioms, unused_must_use)]
#![deny(unsafe_code)]

pub mod balancer;
pub mod config;
pub mod demo;
mod error;
pub mod health;
pub mod limiter;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod runtime;
pub mod sys;
pub mod upstream;

pub use config::Config;
pub use error::Error;
pub use runtime::run;
