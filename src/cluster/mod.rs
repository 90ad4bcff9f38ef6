//! Cluster mode: nodes of one cluster share their log in etcd and elect one leader
//! through it; the leader serves every broker call, the others wait as standbys.
//!
//! - [`etcd`]: the etcd v3 client (the vendored protos of `proto/etcd/`, compiled
//!   without a system `protoc`), with a deadline on every call.
//! - [`election`]: [`election::campaign`] (a key held by an etcd lease, created with a
//!   transaction that requires it absent) and [`election::Leadership`], which keeps the
//!   lease alive and says the leadership is lost before the lease can expire.
//! - [`journal`]: [`journal::EtcdJournal`], the `domain::journal::Journal` port on
//!   etcd: records group-committed into one value per transaction, each transaction
//!   fenced on the election key's create revision.
//! - [`snapshot`]: the leader's snapshots in etcd (chunks, then a manifest written
//!   last, which also deletes the log they cover), and the compaction of etcd's
//!   history.
//! - [`recovery`]: [`recovery::Follower`], the state rebuilt from etcd (the newest
//!   snapshot, then the log after it) through `storage::durable::Replayer` (the local
//!   recovery's code path) and kept current by a standby with a watch; and
//!   [`recovery::recover`], a new leader's catch-up of the tail, then a new boot epoch
//!   made durable before any grant.
//!
//! The keys of a cluster named `c`: `/seatbroker/c/election` (the leader's advertised
//! address, under its etcd lease), `/seatbroker/c/log/<seq>` (commit groups, the
//! sequence zero-padded to 20 digits so that key order is log order),
//! `/seatbroker/c/snapshot/<seq>/<chunk>` (the snapshot covering the log through
//! `<seq>`, in chunks) and `/seatbroker/c/manifest` (which snapshot is complete).

pub mod election;
pub mod etcd;
pub mod journal;
pub mod recovery;
pub mod snapshot;

use std::time::Duration;

/// The gauge of the last commit group this node holds: written, on the leader;
/// applied, on a standby. A standby's lag is the leader's value minus its own.
pub const APPLIED_SEQ_METRIC: &str = "seatbroker_cluster_applied_seq";

/// The gauge of a standby's failures in a row to follow the log (etcd away, a commit
/// group that does not replay); 0 while it follows. Above 0 for long, the standby
/// would take over only after reading the log afresh, or not at all.
pub const FOLLOW_FAILURES_METRIC: &str = "seatbroker_cluster_follow_failures";

/// What a node of a cluster is told at start (from `config::ClusterSettings`).
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// etcd's client URLs (`http://host:port`).
    pub endpoints: Vec<String>,
    pub cluster_name: String,
    pub node_name: String,
    /// Where clients reach this node; told to clients by standbys while it leads.
    pub advertise_addr: String,
    /// The election lease's time-to-live: a dead leader's seat is free this long after
    /// its last keepalive.
    pub election_ttl: Duration,
    /// The fewest log records after a snapshot that make the next one due (see
    /// [`journal::EtcdJournal::snapshot_due`]).
    pub snapshot_records: u64,
}

impl NodeOptions {
    /// How often the leader renews its election lease: four times a TTL.
    pub fn keepalive_interval(&self) -> Duration {
        self.election_ttl / 4
    }

    /// A leader that has renewed nothing for this long steps down: half the TTL, so it
    /// stops answering at least half a TTL before its lease can expire and another
    /// node be elected (renewals are timed from before they were sent, and etcd
    /// extends the lease from when it received them).
    pub fn step_down_after(&self) -> Duration {
        self.election_ttl / 2
    }

    /// How long an etcd call may take before it counts as failed (and is retried,
    /// while this node leads or campaigns).
    pub fn request_timeout(&self) -> Duration {
        (self.election_ttl / 4).max(Duration::from_secs(1))
    }

    /// How often a standby looks whether the election key is free.
    pub fn standby_poll_interval(&self) -> Duration {
        (self.election_ttl / 20).clamp(Duration::from_millis(50), Duration::from_millis(500))
    }
}

/// The etcd keys of one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    pub election: Vec<u8>,
    pub log_prefix: Vec<u8>,
    pub snapshot_prefix: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl Keys {
    pub fn new(cluster_name: &str) -> Keys {
        let root = format!("/seatbroker/{cluster_name}");
        Keys {
            election: format!("{root}/election").into_bytes(),
            log_prefix: format!("{root}/log/").into_bytes(),
            snapshot_prefix: format!("{root}/snapshot/").into_bytes(),
            manifest: format!("{root}/manifest").into_bytes(),
        }
    }

    /// Chunk `chunk` of the snapshot covering the log through `seq`.
    pub fn snapshot_chunk(&self, seq: u64, chunk: u32) -> Vec<u8> {
        let mut key = self.snapshot_prefix.clone();
        key.extend_from_slice(format!("{seq:020}/{chunk:010}").as_bytes());
        key
    }

    /// The key of commit group `seq`.
    pub fn log_key(&self, seq: u64) -> Vec<u8> {
        let mut key = self.log_prefix.clone();
        key.extend_from_slice(format!("{seq:020}").as_bytes());
        key
    }

    /// The commit group a log key holds, if it is one.
    pub fn log_seq(&self, key: &[u8]) -> Option<u64> {
        let digits = key.strip_prefix(self.log_prefix.as_slice())?;
        std::str::from_utf8(digits).ok()?.parse().ok()
    }
}

/// Why a node could not lead.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd::EtcdError),
    #[error("replaying the cluster's log from etcd: {0}")]
    Replay(#[from] crate::storage::durable::OpenError),
    #[error(
        "the cluster's log in etcd holds a damaged commit group at {key}: {detail}; restore etcd from a backup"
    )]
    Damaged { key: String, detail: String },
    #[error("lost the leadership: {0}")]
    LeadershipLost(String),
    #[error("writing a snapshot to etcd: {0}")]
    Snapshot(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_in_log_order_and_parse_back() {
        let keys = Keys::new("c");
        let (nine, ten) = (keys.log_key(9), keys.log_key(10));
        assert!(nine < ten);
        assert_eq!(keys.log_seq(&ten), Some(10));
        assert_eq!(keys.log_seq(&keys.election), None);
        assert_eq!(keys.log_seq(b"/seatbroker/c/log/x"), None);
        assert_eq!(keys.log_seq(&keys.snapshot_chunk(10, 0)), None);
        // An older snapshot's chunks sort before a newer one's first.
        assert!(keys.snapshot_chunk(9, 100) < keys.snapshot_chunk(10, 0));
    }
}
