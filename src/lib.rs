//! seatbroker: a floating-license session broker.
//!
//! Modules, from the wire inwards:
//! - [`api`]: the gRPC edge (tonic services, request validation, error mapping).
//! - [`server`]: builds the daemon: data directory, operator key, recovery, the gRPC
//!   server, the expiry sweeper, shutdown.
//! - [`broker`]: the one place where admin state, leases and the log meet; the single
//!   path of every admin mutation.
//! - [`auth`]: API key format, generation and constant-time verification.
//! - [`domain`]: organizations, members, roles, quotas, assignments and the commands
//!   that change them; no gRPC, no files.
//! - [`leases`]: live sessions per organization, quotas enforced atomically, expiry.
//! - [`storage`]: the durability interface ([`storage::Journal`]), the record codec,
//!   recovery and snapshots; [`wal`]: the write-ahead log underneath (segments, group
//!   commit, torn-tail recovery, snapshot files).
//! - [`cli`]: the `seatbroker` command line (daemon and client subcommands);
//!   [`client`]: the gRPC client helper it shares with tests and the load generator.
//! - [`loadgen`]: the load generator behind `seatbroker bench` (and its no-op
//!   gRPC ceiling).
//! - [`limits`]: every bound, in one place. [`clock`]: injected time.

pub mod api;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod client;
pub mod clock;
pub mod domain;
pub mod leases;
pub mod limits;
pub mod loadgen;
pub mod proto;
pub mod server;
pub mod storage;
pub mod wal;
