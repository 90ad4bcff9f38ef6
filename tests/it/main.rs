//! The integration tests, in one binary (one link instead of one per file, as etcd and
//! rust-analyzer do), one module per area. Each specifies behaviour over real gRPC on
//! 127.0.0.1 against a daemon started through [`harness`]: in this process, or the
//! real binary as a child process where the test needs a process of its own.
//!
//! The tests share this process, so none may change it as a whole (environment
//! variables, resource limits, the allocator, paused time): what needs that runs the
//! daemon as a child process and changes the child. `tests/fuzz_decoders.rs` stays a
//! binary of its own: it installs a global allocator that measures every allocation.
//!
//! A new area is a new file here, `tests/it/<area>.rs`, declared below with
//! `mod <area>;`: it opens with a `//!` saying what it specifies, `use
//! crate::harness::*;`, and starts its daemon with `start()` (in this process) or
//! `Serve::new()…start()` (the real binary: kill -9, restarts on a data directory,
//! signals, failpoints through `.env`, descriptor limits). `cargo test --test it
//! <area>::` runs it alone.

mod harness;

mod admin;
mod audit_descriptors;
mod audit_isolation;
mod bad_input;
mod cert_binding;
mod channel;
mod channel_queue;
mod channel_restart;
mod cli;
mod cli_lifecycle;
mod cluster;
mod cluster_clients;
mod console;
mod daemon;
mod datadir;
mod disk_full;
mod durability;
mod engine_client;
mod foreign_clients;
mod hardening_edge;
mod isolation;
mod json_api;
mod key_cache;
mod listing;
mod loadgen;
mod log_format;
mod metrics_listener;
mod org_life;
mod quota_update;
mod restart_bench;
mod run_command;
mod sessions;
mod tenant_bounds;
mod tls_diagnostics;
mod usage_audit;
mod web_edge;
mod wire;
