//! The crash property, over random operation sequences on a `SimulatedDisk` with a
//! hand-driven writer (so a case is fully determined by its operations and seeds):
//! acknowledged ⊆ recovered ⊆ attempted, and recovered is a prefix of attempted.
//!
//! `SEATBROKER_PROPTEST_CASES=N` raises the case count (default below). A failing
//! case is shrunk, printed as an operation list, and its seed persisted under
//! `proptest-regressions/`, so it replays exactly.

use std::sync::Arc;

use proptest::prelude::*;

use super::{SimulatedDisk, sim_dir};
use crate::wal::fatal::FsyncFailpoint;
use crate::wal::{DurableTicket, FileSystem, Lsn, Recovered, Wal, WalOptions};

/// Cases per run unless `SEATBROKER_PROPTEST_CASES` says otherwise.
const CASES_DEFAULT: u32 = 10_000;
/// Operations per case at most.
const OPS_PER_CASE_MAX: usize = 80;

/// One step of a case.
#[derive(Clone, Debug)]
enum Op {
    /// Submit a record of this many bytes.
    Submit { length: usize },
    /// Let the writer write (not sync) a group of at most this many records.
    Write { records_max: usize },
    /// Let the writer sync the written group and acknowledge it.
    Sync,
    /// Install a snapshot at the durable LSN.
    Snapshot,
    /// Lose power, then recover and check.
    Crash { seed: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..1500).prop_map(|length| Op::Submit { length }),
        1 => (30_000usize..70_000).prop_map(|length| Op::Submit { length }),
        5 => (1usize..6).prop_map(|records_max| Op::Write { records_max }),
        5 => Just(Op::Sync),
        1 => Just(Op::Snapshot),
        2 => any::<u64>().prop_map(|seed| Op::Crash { seed }),
    ]
}

/// The WAL layouts the cases run on, one third each: small segments without
/// preallocation; small segments ending in zeros that appends overwrite; and
/// segments longer than a block with zeros ahead across block boundaries. A crash
/// may leave any mix of zeros and record sectors.
fn options(layout: u8) -> WalOptions {
    let (segment_bytes_max, preallocate_bytes) = match layout {
        0 => (4096, 0),
        1 => (4096, 3000),
        _ => (80 * 1024, 40 * 1024),
    };
    WalOptions {
        preallocate_bytes,
        segment_bytes_max,
        snapshot_log_bytes: 16 * 1024,
        batch_records_max: 8,
        queue_records_max: 10_000,
        record_bytes_max: 80_000,
        unawaited_delay: crate::wal::UNAWAITED_DELAY_DEFAULT,
        commit_delay: std::time::Duration::ZERO,
    }
}

/// The system under test and the model it is checked against.
struct Harness {
    /// The disk that survives crashes.
    disk: SimulatedDisk,
    /// The open WAL.
    wal: Option<Wal>,
    /// Attempted records in LSN order (index = lsn - 1), cut back to what recovery
    /// returned after each crash.
    attempted: Vec<Vec<u8>>,
    /// Tickets not yet seen resolved.
    tickets: Vec<DurableTicket>,
    /// Highest LSN whose ticket resolved.
    acknowledged_lsn: Lsn,
    /// Makes every payload unique, also across reused LSNs.
    submissions: u64,
    /// Which `options` this case runs on.
    layout: u8,
}

impl Harness {
    fn new(layout: u8) -> Self {
        let disk = SimulatedDisk::new();
        let mut harness = Harness {
            disk,
            wal: None,
            attempted: Vec::new(),
            tickets: Vec::new(),
            acknowledged_lsn: 0,
            submissions: 0,
            layout,
        };
        harness.reopen();
        harness
    }

    fn wal(&self) -> &Wal {
        self.wal.as_ref().expect("open")
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Submit { length } => self.submit(length),
            Op::Write { records_max } => self.wal().manual_write(records_max),
            Op::Sync => {
                self.wal().manual_sync();
                self.poll_tickets();
            }
            Op::Snapshot => self.snapshot(),
            Op::Crash { seed } => self.crash(seed),
        }
    }

    fn submit(&mut self, length: usize) {
        self.submissions += 1;
        let record: Vec<u8> = (0..length)
            .map(|i| (self.submissions as usize * 131 + i) as u8)
            .collect();
        let ticket = self.wal().submit(record.clone()).expect("submit");
        assert_eq!(
            ticket.lsn(),
            self.attempted.len() as u64 + 1,
            "LSNs are dense"
        );
        self.attempted.push(record);
        self.tickets.push(ticket);
    }

    fn poll_tickets(&mut self) {
        let mut still_pending = Vec::new();
        for mut ticket in std::mem::take(&mut self.tickets) {
            match ticket.try_durable() {
                Some(Ok(lsn)) => self.acknowledged_lsn = self.acknowledged_lsn.max(lsn),
                Some(Err(error)) => panic!("ticket failed: {error}"),
                None => still_pending.push(ticket),
            }
        }
        self.tickets = still_pending;
    }

    fn snapshot(&mut self) {
        let stats = self.wal().stats();
        let lsn = stats.durable_lsn;
        if lsn == 0 || lsn < stats.snapshot_lsn {
            return;
        }
        let state = encode_state(&self.attempted[..lsn as usize]);
        self.wal().install_snapshot(lsn, &state).expect("snapshot");
    }

    fn crash(&mut self, seed: u64) {
        self.poll_tickets();
        self.tickets.clear();
        drop(self.wal.take());
        self.disk.crash(seed);
        self.reopen();
    }

    fn reopen(&mut self) {
        let fs: Arc<dyn FileSystem> = Arc::new(self.disk.clone());
        let opened = Wal::open_manual(
            &sim_dir(),
            fs,
            options(self.layout),
            FsyncFailpoint::default(),
        );
        let (wal, recovered) = opened.unwrap_or_else(|error| panic!("recovery failed: {error}"));
        let history = recovered_history(&recovered);
        assert!(
            history.len() as u64 >= self.acknowledged_lsn,
            "acknowledged record lost"
        );
        assert!(
            history.len() <= self.attempted.len(),
            "recovered more than attempted"
        );
        assert!(
            history[..] == self.attempted[..history.len()],
            "recovered is not a prefix of attempted"
        );
        self.attempted.truncate(history.len());
        assert_eq!(wal.stats().last_assigned_lsn, history.len() as u64);
        self.wal = Some(wal);
    }
}

/// The snapshot payload of the model: the records, length-prefixed.
fn encode_state(records: &[Vec<u8>]) -> Vec<u8> {
    let mut state = Vec::new();
    for record in records {
        state.extend_from_slice(&(record.len() as u32).to_le_bytes());
        state.extend_from_slice(record);
    }
    state
}

fn decode_state(mut state: &[u8]) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    while !state.is_empty() {
        let length = u32::from_le_bytes(state[..4].try_into().expect("4 bytes")) as usize;
        records.push(state[4..4 + length].to_vec());
        state = &state[4 + length..];
    }
    records
}

/// Snapshot records followed by the replayed ones, checking the LSNs line up.
fn recovered_history(recovered: &Recovered) -> Vec<Vec<u8>> {
    let (snapshot_lsn, mut history) = match &recovered.snapshot {
        Some((lsn, state)) => (*lsn, decode_state(state)),
        None => (0, Vec::new()),
    };
    assert_eq!(
        history.len() as u64,
        snapshot_lsn,
        "snapshot holds exactly records 1..=lsn"
    );
    for (index, (lsn, record)) in recovered.records.iter().enumerate() {
        assert_eq!(
            *lsn,
            snapshot_lsn + 1 + index as u64,
            "records follow the snapshot without gaps"
        );
        history.push(record.clone());
    }
    history
}

fn cases() -> u32 {
    std::env::var("SEATBROKER_PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES_DEFAULT)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn crash_recovery_keeps_acknowledged_prefix(ops in prop::collection::vec(op(), 1..OPS_PER_CASE_MAX), final_seed in any::<u64>(), layout in 0u8..3) {
        let mut harness = Harness::new(layout);
        for op in &ops {
            harness.apply(op);
        }
        harness.crash(final_seed);
    }
}
