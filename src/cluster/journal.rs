//! [`EtcdJournal`]: the durability port (`domain::journal::Journal`) on etcd, for the
//! leader of a cluster. Records are encoded as the local log encodes them
//! (`storage::codec`) and queued; one writer task takes everything queued (at most
//! [`GROUP_BYTES_MAX`]) and writes it as one value, `/seatbroker/<cluster>/log/<seq>`,
//! in one transaction (one operation: far below etcd's 128 per transaction and its
//! 1.5 MiB request limit) that compares the election key's create revision with this
//! leader's. Every waiter of the group is answered once etcd said yes.
//!
//! A write etcd refused on the fence (another node leads) or that could not be made
//! before the leadership was lost fails its group and everything queued after it with
//! UNAVAILABLE, and the journal refuses everything after: memory may now be ahead of
//! the log, so this node stops leading (the process exits, see `server`). A write
//! whose answer was lost is retried at the same key, which is idempotent: the retry's
//! fence fails if another node leads, and then a value already at the key equal to
//! ours means the first try landed (while this node still led).
//!
//! A value is records framed as `u32` little-endian length + record bytes.
//!
//! Lease ends have nobody waiting: like the local log's, they ride with the next
//! group that someone awaits, or go out by themselves [`ENDS_DELAY_MAX`] after they
//! were queued. A group of ends alone would cost an etcd round trip that every grant
//! queued behind it waits for.
//!
//! A snapshot's cut ([`EtcdJournal::cut`], made under the broker's admin write lock)
//! is a marker in the queue: no commit group spans it, and it is answered with the
//! last group before it once that group is durable, so the snapshot covers exactly the
//! groups up to that one (see `super::snapshot`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::election::LostSignal;
use super::etcd::{self, Etcd, pb};
use super::{APPLIED_SEQ_METRIC, ClusterError, Keys};
use crate::domain::journal::{self, Durable, Journal, LogPermit};
use crate::domain::{Command, DomainError, Lease, LeaseId, OrgId};
use crate::limits;
use crate::storage::codec;

/// The most record bytes written in one value: below etcd's default 1.5 MiB request
/// limit with room for the key and the transaction's framing.
pub const GROUP_BYTES_MAX: usize = 1024 * 1024;
/// Lease ends wait for room past this many queued records (grants and commands are
/// admitted up to `limits::LOG_QUEUE_RECORDS_MAX`).
const QUEUED_RECORDS_FOR_ENDS_MAX: usize = 2 * limits::LOG_QUEUE_RECORDS_MAX;
/// The longest a lease end waits for a group someone awaits (the local log's
/// `unawaited_delay` default, `wal::UNAWAITED_DELAY_DEFAULT`).
pub const ENDS_DELAY_MAX: Duration = Duration::from_millis(20);
/// A failed write is tried again after this pause, until the leadership is lost.
const WRITE_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// An admin command's record (at most the request it came in, plus its framing) fits
/// in one group.
const _: () = assert!(limits::CLUSTER_REQUEST_BYTES_MAX + 4096 <= GROUP_BYTES_MAX + 64 * 1024);
const _: () = assert!(limits::LOG_QUEUE_RECORDS_MAX < QUEUED_RECORDS_FOR_ENDS_MAX);

/// The framing of a record in a commit group.
const FRAME_BYTES: usize = 4;

pub struct EtcdJournal {
    queue: Mutex<Queue>,
    wake: Notify,
    lost: Arc<LostSignal>,
    /// Records and their bytes in the log after the newest snapshot, counted since
    /// this term began (the tail found at takeover included)...
    logged: Logged,
    /// ...and how many of those the newest snapshot covers.
    covered: Mutex<Cut>,
}

#[derive(Default)]
struct Logged {
    records: AtomicU64,
    bytes: AtomicU64,
}

/// Where a snapshot was cut: after commit group `seq` (`None`: before the first),
/// when this term had logged `records` records of `bytes` bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cut {
    pub seq: Option<u64>,
    pub records: u64,
    pub bytes: u64,
}

#[derive(Default)]
struct Queue {
    entries: VecDeque<Entry>,
    /// Entries someone waits for (records with `done`, cuts): while there are none,
    /// the writer lets lease ends gather for up to `ENDS_DELAY_MAX`.
    awaited: usize,
    /// Set when the writer stopped: every later append fails.
    closed: bool,
}

enum Entry {
    Record {
        record: Vec<u8>,
        /// Told when the record is durable (or not); lease ends have nobody waiting.
        done: Option<oneshot::Sender<Result<(), DomainError>>>,
        queued_at: Instant,
    },
    /// A snapshot's cut, answered when every record before it is durable.
    Cut(oneshot::Sender<Cut>),
}

/// What the writer takes from the queue next.
enum Next {
    Group(Vec<Entry>),
    Cut(oneshot::Sender<Cut>),
    /// Only lease ends are queued: wait for an awaited record or this instant.
    EndsDue(Instant),
}

impl Entry {
    fn is_awaited(&self) -> bool {
        match self {
            Entry::Record { done, .. } => done.is_some(),
            Entry::Cut(_) => true,
        }
    }
}

/// Where the writer writes: the etcd client, the keys, and this leader's fence.
pub struct Writer {
    pub etcd: Etcd,
    pub keys: Keys,
    /// The election key's create revision while this node leads.
    pub fence_revision: i64,
    /// The sequence of the next commit group.
    pub next_seq: u64,
    /// Records (and their bytes) already in the log after the newest snapshot: they
    /// count towards the next one.
    pub log_records: u64,
    pub log_bytes: u64,
}

impl EtcdJournal {
    /// A journal whose writer task starts at once; it stops when the leadership is
    /// lost (`lost`) or a write is refused.
    pub fn start(writer: Writer, lost: Arc<LostSignal>) -> Arc<EtcdJournal> {
        let journal = Arc::new(EtcdJournal::unstarted(
            lost,
            writer.log_records,
            writer.log_bytes,
        ));
        tokio::spawn(write_groups(Arc::clone(&journal), writer));
        journal
    }

    /// A journal whose writer is not started (`start` starts it).
    fn unstarted(lost: Arc<LostSignal>, log_records: u64, log_bytes: u64) -> EtcdJournal {
        EtcdJournal {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            lost,
            logged: Logged {
                records: AtomicU64::new(log_records),
                bytes: AtomicU64::new(log_bytes),
            },
            covered: Mutex::new(Cut::default()),
        }
    }

    /// Appends an already encoded record and waits until it is durable (the boot
    /// record of a new term).
    pub async fn append_and_wait(&self, record: Vec<u8>) -> Result<(), ClusterError> {
        let permit = self
            .admit()
            .map_err(|e| ClusterError::LeadershipLost(e.to_string()))?;
        self.push(permit, record)
            .await
            .map_err(|e| ClusterError::LeadershipLost(e.to_string()))
    }

    fn push(&self, _admitted: LogPermit, record: Vec<u8>) -> Durable {
        let (done, durable) = oneshot::channel();
        {
            let mut queue = self.queue.lock();
            if queue.closed {
                return Box::pin(std::future::ready(Err(not_leading())));
            }
            queue.entries.push_back(Entry::Record {
                record,
                done: Some(done),
                queued_at: Instant::now(),
            });
            queue.awaited += 1;
        }
        self.wake.notify_one();
        Box::pin(async move { durable.await.unwrap_or_else(|_| Err(not_leading())) })
    }

    /// Marks a snapshot's cut: call it under the admin write lock (`Broker::admin_cut`),
    /// so the records before it are exactly the admin commands of the state copied
    /// there. Resolves once they are durable; fails when the journal closes first.
    pub fn cut(&self) -> oneshot::Receiver<Cut> {
        let (answer, cut) = oneshot::channel();
        let mut queue = self.queue.lock();
        if !queue.closed {
            queue.entries.push_back(Entry::Cut(answer));
            queue.awaited += 1;
            drop(queue);
            self.wake.notify_one();
        }
        cut
    }

    /// Whether a snapshot is due: the records logged since the newest snapshot are
    /// more than a takeover should replay for `live_leases` (the local log's rule,
    /// `durable::replay_due`, with `records_min`), or their bytes passed
    /// `limits::CLUSTER_SNAPSHOT_LOG_BYTES_MAX` (etcd's space).
    pub fn snapshot_due(&self, live_leases: u64, records_min: u64) -> bool {
        let covered = *self.covered.lock();
        let records = self.logged.records.load(Ordering::Relaxed) - covered.records;
        let bytes = self.logged.bytes.load(Ordering::Relaxed) - covered.bytes;
        crate::storage::durable::replay_due(records, live_leases, records_min)
            || bytes >= limits::CLUSTER_SNAPSHOT_LOG_BYTES_MAX
    }

    /// The snapshot cut at `cut` is complete in etcd: the log it covers is gone.
    pub fn snapshot_written(&self, cut: Cut) {
        let mut covered = self.covered.lock();
        if cut.records > covered.records {
            *covered = cut;
        }
    }

    /// Takes what the writer does next: a cut at the head of the queue, or a commit
    /// group: the queued records up to `GROUP_BYTES_MAX` (at least one) before any cut.
    fn take_next(&self) -> Option<Next> {
        let mut queue = self.queue.lock();
        if queue.awaited == 0
            && let Some(Entry::Record { queued_at, .. }) = queue.entries.front()
        {
            let due = *queued_at + ENDS_DELAY_MAX;
            if Instant::now() < due {
                return Some(Next::EndsDue(due));
            }
        }
        let mut bytes = 0;
        let mut count = 0;
        for entry in &queue.entries {
            let Entry::Record { record, .. } = entry else {
                break;
            };
            let framed = record.len() + FRAME_BYTES;
            if count > 0 && bytes + framed > GROUP_BYTES_MAX {
                break;
            }
            bytes += framed;
            count += 1;
        }
        if count > 0 {
            let group: Vec<Entry> = queue.entries.drain(..count).collect();
            queue.awaited -= group.iter().filter(|entry| entry.is_awaited()).count();
            return Some(Next::Group(group));
        }
        match queue.entries.pop_front()? {
            Entry::Cut(answer) => {
                queue.awaited -= 1;
                Some(Next::Cut(answer))
            }
            Entry::Record { .. } => unreachable!("a record at the head is taken as a group"),
        }
    }

    /// Fails every queued record and refuses later ones.
    fn close_with(&self, reason: &str) {
        let entries = {
            let mut queue = self.queue.lock();
            queue.closed = true;
            queue.awaited = 0;
            std::mem::take(&mut queue.entries)
        };
        fail(entries, reason);
    }
}

fn not_leading() -> DomainError {
    DomainError::Unavailable(
        "this seatbroker node stopped leading its cluster before the change was durable; retry against the new leader".into(),
    )
}

fn fail(entries: impl IntoIterator<Item = Entry>, reason: &str) {
    for entry in entries {
        // A cut's sender is dropped: its snapshot fails.
        if let Entry::Record {
            done: Some(done), ..
        } = entry
        {
            let _ = done.send(Err(DomainError::Unavailable(format!(
                "the change was not made durable in etcd ({reason}); retry against the cluster's leader"
            ))));
        }
    }
}

/// Records framed into one commit group's value.
pub fn frame(records: impl IntoIterator<Item = impl AsRef<[u8]>>) -> Vec<u8> {
    let mut value = Vec::new();
    for record in records {
        let record = record.as_ref();
        value.extend_from_slice(&(record.len() as u32).to_le_bytes());
        value.extend_from_slice(record);
    }
    value
}

/// The records of a commit group's value, or why it is not one.
pub fn unframe(mut value: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut records = Vec::new();
    while !value.is_empty() {
        let Some((length, rest)) = value.split_first_chunk::<FRAME_BYTES>() else {
            return Err(format!("{} stray bytes at the end", value.len()));
        };
        let length = u32::from_le_bytes(*length) as usize;
        if rest.len() < length {
            return Err(format!(
                "a record of {length} bytes where {} remain",
                rest.len()
            ));
        }
        let (record, after) = rest.split_at(length);
        records.push(record);
        value = after;
    }
    Ok(records)
}

/// The writer task: one commit group at a time, in order.
async fn write_groups(journal: Arc<EtcdJournal>, mut writer: Writer) {
    loop {
        let group = match journal.take_next() {
            Some(Next::Group(group)) => group,
            Some(Next::Cut(answer)) => {
                // Every group before the cut is written.
                let _ = answer.send(Cut {
                    seq: writer.next_seq.checked_sub(1),
                    records: journal.logged.records.load(Ordering::Relaxed),
                    bytes: journal.logged.bytes.load(Ordering::Relaxed),
                });
                continue;
            }
            Some(Next::EndsDue(due)) => {
                tokio::select! {
                    () = journal.wake.notified() => continue,
                    () = tokio::time::sleep_until(due) => continue,
                    reason = journal.lost.lost() => {
                        journal.close_with(&reason);
                        return;
                    }
                }
            }
            None => {
                tokio::select! {
                    () = journal.wake.notified() => continue,
                    reason = journal.lost.lost() => {
                        journal.close_with(&reason);
                        return;
                    }
                }
            }
        };
        let value = frame(group.iter().map(|entry| match entry {
            Entry::Record { record, .. } => record.as_slice(),
            Entry::Cut(_) => unreachable!("groups hold records only"),
        }));
        let bytes = value.len() as u64;
        match write_fenced(&writer, &journal.lost, value).await {
            Ok(()) => {
                metrics::gauge!(APPLIED_SEQ_METRIC).set(writer.next_seq as f64);
                writer.next_seq += 1;
                journal
                    .logged
                    .records
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                journal.logged.bytes.fetch_add(bytes, Ordering::Relaxed);
                for entry in group {
                    if let Entry::Record {
                        done: Some(done), ..
                    } = entry
                    {
                        let _ = done.send(Ok(()));
                    }
                }
            }
            Err(reason) => {
                journal.lost.lose(reason.clone());
                fail(group, &reason);
                journal.close_with(&reason);
                return;
            }
        }
    }
}

/// Writes one commit group at `writer.next_seq`, fenced; retried while the answer is
/// lost and this node leads.
async fn write_fenced(writer: &Writer, lost: &LostSignal, value: Vec<u8>) -> Result<(), String> {
    let key = writer.keys.log_key(writer.next_seq);
    let txn = pb::TxnRequest {
        compare: vec![etcd::created_at(
            &writer.keys.election,
            writer.fence_revision,
        )],
        success: vec![etcd::put(key.clone(), value.clone(), 0)],
        failure: vec![etcd::get(key)],
    };
    loop {
        if lost.is_lost() {
            return Err("the leadership was lost while writing".into());
        }
        match writer.etcd.txn(txn.clone()).await {
            Ok(response) if response.succeeded => return Ok(()),
            Ok(response) => {
                // Fenced off: did an earlier try of this very write land?
                return match etcd::first_range(&response).first() {
                    Some(landed) if landed.value == value => Ok(()),
                    _ => Err("another node leads the cluster (the write's fence failed)".into()),
                };
            }
            Err(error) => {
                tracing::warn!(%error, seq = writer.next_seq, "an etcd write failed; retrying");
                tokio::time::sleep(WRITE_RETRY_PAUSE).await;
            }
        }
    }
}

impl Journal for EtcdJournal {
    fn admit(&self) -> Result<LogPermit, DomainError> {
        if self.lost.is_lost() {
            return Err(not_leading());
        }
        let queued = self.queue.lock().entries.len() as u64;
        journal::admit(queued, limits::LOG_QUEUE_RECORDS_MAX)
    }

    fn append_command(&self, permit: LogPermit, command: &Command) -> Durable {
        self.push(permit, codec::encode_command(command))
    }

    fn append_lease_granted(&self, permit: LogPermit, org: &OrgId, lease: &Lease) -> Durable {
        self.push(permit, codec::encode_lease_granted(org, lease))
    }

    fn append_lease_ended(&self, org: &OrgId, id: LeaseId, generation: u64) -> bool {
        let record = codec::encode_lease_ended(org, id, generation);
        {
            let mut queue = self.queue.lock();
            if queue.closed || queue.entries.len() >= QUEUED_RECORDS_FOR_ENDS_MAX {
                return false;
            }
            queue.entries.push_back(Entry::Record {
                record,
                done: None,
                queued_at: Instant::now(),
            });
            // The writer learns of an end only when it may be idle: it then waits
            // until the end is due. Otherwise the end rides with what is queued.
            if queue.entries.len() > 1 {
                return true;
            }
        }
        self.wake.notify_one();
        true
    }

    fn close(&self) -> Result<(), DomainError> {
        // What is queued dies with this node's term: nobody was answered for it.
        self.close_with("this node is shutting down");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_group_unframes_to_its_records() {
        let records: [&[u8]; 3] = [b"one", b"", b"three"];
        let value = frame(records);
        assert_eq!(unframe(&value).unwrap(), records);
        assert!(unframe(&value[..value.len() - 1]).is_err());
        assert!(unframe(&[1, 0]).is_err());
    }

    fn records_of(next: Option<Next>) -> Vec<Vec<u8>> {
        match next {
            Some(Next::Group(group)) => group
                .into_iter()
                .map(|entry| match entry {
                    Entry::Record { record, .. } => record,
                    Entry::Cut(_) => panic!("a cut in a group"),
                })
                .collect(),
            _ => panic!("expected a group"),
        }
    }

    #[tokio::test]
    async fn lease_ends_ride_with_the_next_awaited_record_or_go_alone_once_due() {
        let journal = EtcdJournal::unstarted(LostSignal::new(), 0, 0);
        let org = OrgId::parse("acme").unwrap();
        let lease = LeaseId::derive(
            &org,
            &crate::domain::Email::parse("a@acme.test").unwrap(),
            crate::domain::Product::Kre,
            "engine",
        );
        let end = codec::encode_lease_ended(&org, lease, 7);
        assert!(journal.take_next().is_none(), "nothing queued");
        // An end alone waits (at most ENDS_DELAY_MAX) for a record someone awaits.
        assert!(journal.append_lease_ended(&org, lease, 7));
        assert!(matches!(journal.take_next(), Some(Next::EndsDue(_))));
        let permit = journal::admit(0, limits::LOG_QUEUE_RECORDS_MAX).unwrap();
        let _durable = journal.push(permit, b"grant".to_vec());
        assert_eq!(
            records_of(journal.take_next()),
            [end.clone(), b"grant".to_vec()],
            "the end rides with the grant, in order"
        );
        // A cut is awaited too: the ends before it go in a group of their own first.
        assert!(journal.append_lease_ended(&org, lease, 7));
        let _cut = journal.cut();
        assert_eq!(records_of(journal.take_next()), std::slice::from_ref(&end));
        assert!(matches!(journal.take_next(), Some(Next::Cut(_))));
        // An end nobody takes along goes alone once due.
        assert!(journal.append_lease_ended(&org, lease, 7));
        tokio::time::sleep(ENDS_DELAY_MAX + Duration::from_millis(5)).await;
        assert_eq!(records_of(journal.take_next()), [end]);
        assert!(journal.take_next().is_none());
    }
}
