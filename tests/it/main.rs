//! Every integration test in one binary (one build of the helpers in
//! common/, one link): each module starts the real `ringlb` binary on
//! loopback with ephemeral ports against real backends.

mod common;
mod compress;
mod demo;
mod discovery;

mod access;
mod answers;
mod backend_sets;
mod c100k;
mod cli;
mod fuzz_smoke;
mod h2;
mod http;
mod lifecycle;
mod mirror;
mod ops_access_log;
mod ops_admin;
mod ops_log;
mod ops_metrics;
mod ops_systemd;
mod redis;
mod reload;
mod resilience;
mod retry;
mod sticky;
mod tcp;
mod tls;
mod udp;
