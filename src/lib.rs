//! seatbroker: a floating-license session broker.
//!
//! Modules, from the wire inwards:
//! - [`api`]: the gRPC edge (tonic services, request validation, error mapping).
//! - [`web`]: the admin web console and the JSON form of `AdminService`, on the same
//!   listener, sent down the gRPC stack.
//! - [`server`]: builds the daemon: data directory, operator key, recovery, the gRPC
//!   server, the expiry sweeper, shutdown.
//! - [`broker`]: the one place where admin state, leases and the log meet; the single
//!   path of every admin mutation.
//! - [`auth`]: API key format, generation and constant-time verification.
//! - [`domain`]: organizations, members, roles, quotas, assignments, leases and the
//!   commands that change them, and the durability port ([`domain::journal::Journal`]);
//!   no gRPC, no files.
//! - [`leases`]: live sessions per organization, quotas enforced atomically, expiry.
//! - [`storage`]: the journal on the local log (the port's adapter), the record
//!   codec, recovery and snapshots; [`wal`]: the write-ahead log underneath (segments, group
//!   commit, torn-tail recovery, snapshot files).
//! - [`cluster`]: cluster mode: leader election, the journal and recovery on etcd.
//! - [`cli`]: the `seatbroker` command line (daemon and client subcommands);
//!   [`client`]: the gRPC client helper it shares with tests and the load generator.
//! - [`engine_client`]: the library an engine embeds to hold seats through the
//!   session channel (renewal, reconnection and re-attach, lost seats); `seatbroker
//!   run` is built on it.
//! - [`loadgen`]: the load generator behind `seatbroker bench` (and its no-op
//!   gRPC ceiling).
//! - [`limits`]: every bound of the broker, in one place (the write-ahead log keeps
//!   its own defaults in [`wal`]; `limits` restates those an operator sets).
//!   [`clock`]: injected time.
//!
//! Operating the daemon:
//! - [`config`]: the configuration (flags > environment > TOML file > defaults).
//! - [`tls`]: rustls configurations from PEM files, for the daemon and for clients.
//! - [`telemetry`]: logs (text or JSON), Prometheus metrics, the per-RPC layer.
//! - [`activity`]: fans lease events, refused acquires and admin changes out to
//!   metrics, [`usage`] windows and the [`audit`] record.
//! - [`shutdown`]: stop signals (graceful first, immediate second).
//! - [`allocator`]: gives memory freed after a burst back to the system.
//! - [`datadir`]: the data directory's exclusive lock (one daemon per directory).

pub mod activity;
pub mod allocator;
pub mod api;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod datadir;
pub mod domain;
pub mod engine_client;
pub mod leases;
pub mod limits;
pub mod loadgen;
pub mod proto;
pub mod server;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
pub mod tls;
pub mod usage;
pub mod wal;
pub mod web;

#[cfg(test)]
mod layering;
