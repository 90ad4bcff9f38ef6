//! Durability on the local write-ahead log: the adapter behind the domain's
//! [`Journal`](crate::domain::journal::Journal) port (whose contract is written there).
//!
//! - `codec`: log and snapshot records as prost messages of their own.
//! - `durable`: `WalJournal` on the [`Wal`](crate::wal::Wal), recovery (`open`) and
//!   snapshots (`write_snapshot`).

pub mod codec;
pub mod durable;
