//! ringlb: a thread-per-core io_uring load balancer (tcp and HTTP/1.1).
//!
//! The module map and the direction of its dependencies are in
//! [`layers`]; a unit test there reads every module's `use crate::` lines
//! and fails on an arrow the table does not allow.
#![deny(rust_2018_idioms, unused_must_use)]
#![deny(unsafe_code)]

pub mod admin;
pub mod backends;
pub mod balancer;
pub mod config;
pub mod demo;
mod error;
pub mod io;
mod layers;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod sys;
pub mod upstream;

pub use config::Config;
pub use error::Error;
pub use server::run;
