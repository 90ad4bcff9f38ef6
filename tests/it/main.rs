//! The integration tests, in one binary (one link instead of one per file, as etcd and
//! rust-analyzer do), one module per area. Each specifies behaviour over real gRPC on
//! 127.0.0.1 against a daemon started through [`harness`]: in this process, or the
//! real binary as a child process where the test needs a process of its own.
//!
//! The tests share this process, so none may change it as a whole (environment
//! variables, resource limits, the allocator, paused time): what needs that runs the
//! daemon as a child process and changes the child. `tests/fuzz_decoders.rs` stays a
//! binary of its own: it installs a global allocator that measures every allocation.

mod harness;

mod admin;
mod audit_descriptors;
mod audit_isolation;
mod bad_input;
mod daemon;
mod datadir;
mod disk_full;
mod durability;
mod foreign_clients;
mod hardening_edge;
mod isolation;
mod listing;
mod loadgen;
mod sessions;
mod tenant_bounds;
mod usage_audit;
mod wire;
