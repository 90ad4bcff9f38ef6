//! Which stream holds which lease, so that the end of a lease reaches the engine
//! holding it at once: [`StreamRegistry`] is a [`LeaseObserver`] (told of every end
//! under the organization's lock) that routes an `ended` event into the holding
//! stream's outbox with a `try_send`, never blocking. It also knows every open stream,
//! to count them per key, to drain them at shutdown and to make them check their key
//! again when an admin change may have revoked it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use super::outbox::Outbox;
use crate::domain::{Command, DomainError, LeaseId, OrgId, Principal, Termination};
use crate::leases::{LeaseEnd, LeaseObserver, LeaseRef};
use crate::limits;
use crate::proto;

/// One open stream, as the registry and the stream's own task share it.
pub struct StreamShared {
    pub id: u64,
    pub org: OrgId,
    /// The SHA-256 of the key the stream was opened with (streams are counted per key).
    key: [u8; 32],
    pub outbox: Outbox,
    /// The leases the stream holds, with their generation. Never locked while the
    /// lease table is called (the table calls the registry under its own lock).
    pub held: Mutex<HashMap<LeaseId, u64>>,
    /// Woken when an admin change may have revoked the stream's key.
    pub recheck_key: Notify,
}

impl StreamShared {
    /// The leases held now, copied out so the lock is not held across table calls.
    pub fn held_now(&self) -> Vec<(LeaseId, u64)> {
        self.held.lock().iter().map(|(&id, &g)| (id, g)).collect()
    }
}

struct Holder {
    generation: u64,
    stream: Arc<StreamShared>,
}

/// Every open stream and the leases they hold.
#[derive(Default)]
pub struct StreamRegistry {
    holders: DashMap<LeaseId, Holder>,
    streams: Mutex<HashMap<u64, Arc<StreamShared>>>,
    next_stream: AtomicU64,
    /// Set once at shutdown: every stream sends `draining` and closes.
    draining: DrainSignal,
}

struct DrainSignal(watch::Sender<Option<u32>>);

impl Default for DrainSignal {
    fn default() -> Self {
        DrainSignal(watch::channel(None).0)
    }
}

impl StreamRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a new stream of `org` opened with `key`; refused past
    /// `limits::STREAMS_PER_KEY_MAX` open streams of that key.
    pub fn open(
        &self,
        org: OrgId,
        key: [u8; 32],
        outbox: Outbox,
    ) -> Result<Arc<StreamShared>, DomainError> {
        let mut streams = self.streams.lock();
        let of_key = streams.values().filter(|s| s.key == key).count();
        if of_key >= limits::STREAMS_PER_KEY_MAX {
            return Err(DomainError::CapReached {
                holder: "this API key".into(),
                what: "open session streams",
                limit: limits::STREAMS_PER_KEY_MAX,
                remedy: "close streams this key no longer uses (one per engine host is enough)",
            });
        }
        let stream = Arc::new(StreamShared {
            id: self.next_stream.fetch_add(1, Ordering::Relaxed),
            org,
            key,
            outbox,
            held: Mutex::new(HashMap::new()),
            recheck_key: Notify::new(),
        });
        streams.insert(stream.id, Arc::clone(&stream));
        Ok(stream)
    }

    /// The stream ended: it holds nothing any more (its leases live on for their TTL).
    pub fn close(&self, stream: &StreamShared) {
        self.streams.lock().remove(&stream.id);
        for (id, _) in stream.held_now() {
            self.holders
                .remove_if(&id, |_, holder| holder.stream.id == stream.id);
        }
        stream.held.lock().clear();
    }

    /// `stream` holds lease `id` at `generation` from now on (taken over from any
    /// other stream). False when the stream holds `limits::LEASES_PER_STREAM_MAX`.
    pub fn hold(&self, stream: &Arc<StreamShared>, id: LeaseId, generation: u64) -> bool {
        {
            let mut held = stream.held.lock();
            if held.len() >= limits::LEASES_PER_STREAM_MAX && !held.contains_key(&id) {
                return false;
            }
            held.insert(id, generation);
        }
        let holder = Holder {
            generation,
            stream: Arc::clone(stream),
        };
        if let Some(previous) = self.holders.insert(id, holder)
            && previous.stream.id != stream.id
        {
            previous.stream.held.lock().remove(&id);
        }
        true
    }

    /// `stream` stops holding lease `id` (released by it, or found gone).
    pub fn let_go(&self, stream: &StreamShared, id: LeaseId) {
        stream.held.lock().remove(&id);
        self.holders
            .remove_if(&id, |_, holder| holder.stream.id == stream.id);
    }

    /// Whether `stream` holds lease `id` now.
    pub fn holds(&self, stream: &StreamShared, id: LeaseId) -> bool {
        stream.held.lock().contains_key(&id)
    }

    /// Every stream sends `draining` (reconnect within `reconnect_within_ms`) and closes.
    pub fn drain(&self, reconnect_within_ms: u32) {
        self.draining.0.send_replace(Some(reconnect_within_ms));
    }

    /// Resolves with the drain's reconnect hint once the daemon drains.
    pub fn drained(&self) -> watch::Receiver<Option<u32>> {
        self.draining.0.subscribe()
    }

    /// Open streams now (a gauge).
    pub fn open_count(&self) -> usize {
        self.streams.lock().len()
    }

    /// An admin change was applied: streams of its organization check their key again
    /// when it may have revoked keys (a revoked key, a removed member, a deleted
    /// organization).
    pub fn admin_changed(&self, command: &Command) {
        let revokes = matches!(
            command,
            Command::RevokeApiKey { .. }
                | Command::RemoveMember { .. }
                | Command::DeleteOrganization { .. }
        );
        if !revokes {
            return;
        }
        for stream in self.streams.lock().values() {
            if stream.org == *command.org() {
                stream.recheck_key.notify_one();
            }
        }
    }
}

/// The wire reason of an end.
pub fn end_reason(why: LeaseEnd) -> proto::EndReason {
    use proto::EndReason as R;
    match why {
        LeaseEnd::Released => R::Released,
        LeaseEnd::Expired => R::Expired,
        LeaseEnd::Terminated(cause) => match cause {
            Termination::Admin => R::Terminated,
            Termination::Unassigned => R::Unassigned,
            Termination::MemberRemoved => R::MemberRemoved,
            Termination::KeyRevoked => R::KeyRevoked,
            Termination::LicenseExpired => R::LicenseExpired,
            Termination::OrganizationDeleted => R::OrganizationDeleted,
        },
    }
}

/// Routes the end of a lease held by a stream to that stream: a hash lookup and a
/// `try_send` under the organization's lock.
impl LeaseObserver for StreamRegistry {
    fn ended(
        &self,
        _org: &OrgId,
        lease: LeaseRef<'_>,
        why: LeaseEnd,
        _by: Option<&Principal>,
        _active: u32,
    ) {
        let Some((_, holder)) = self
            .holders
            .remove_if(&lease.id, |_, holder| holder.generation == lease.generation)
        else {
            return;
        };
        holder.stream.held.lock().remove(&lease.id);
        let reason = end_reason(why);
        holder.stream.outbox.push(super::ended_event(
            lease.id,
            lease.generation,
            reason,
            String::new(),
        ));
        super::metrics::pushed_end(reason);
    }
}
