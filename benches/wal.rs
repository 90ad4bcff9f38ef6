//! WAL benchmarks on a real file system (a temporary directory under `target/`,
//! which is a disk, not tmpfs): one record per fdatasync, group commit with 64
//! records in flight, and recovery of a 1,000,000-record log and of a large snapshot.
//! The raw `write + fdatasync` rate of the same file system is printed first, as
//! the baseline for the ratios.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use seatbroker::wal::{DurableTicket, RealFs, Wal, WalOptions, bench_raw_fsync_rate};

/// Payload size of the benchmark records (a typical prost-encoded admin command).
const RECORD_BYTES: usize = 100;
/// Records kept in flight by the group-commit benchmark.
const IN_FLIGHT_RECORDS: usize = 64;
/// Records in the recovery benchmark's log.
const RECOVERY_RECORDS: u64 = 1_000_000;
/// Size of the recovery benchmark's snapshot.
const SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;

fn bench_dir() -> tempfile::TempDir {
    let parent = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&parent).expect("target dir");
    tempfile::tempdir_in(parent).expect("tempdir")
}

fn open(dir: &Path, options: WalOptions) -> Wal {
    Wal::open(dir, Arc::new(RealFs), options).expect("open").0
}

fn append_fdatasync(c: &mut Criterion) {
    let dir = bench_dir();
    let rate = bench_raw_fsync_rate(dir.path(), 2000).expect("raw fsync");
    println!("raw write(512 B)+fdatasync rate: {rate:.0} per second");
    let wal = open(dir.path(), WalOptions::default());
    let mut group = c.benchmark_group("wal_append");
    group.throughput(Throughput::Elements(1));
    group.bench_function("single_record_fdatasync", |b| {
        b.iter(|| {
            wal.submit(vec![7; RECORD_BYTES])
                .expect("submit")
                .wait_blocking()
                .expect("durable")
        })
    });
    group.bench_function("group_commit_64_in_flight", |b| {
        b.iter_custom(|records| keep_in_flight(&wal, records))
    });
    group.finish();
    let stats = wal.stats();
    println!(
        "records {} fsyncs {} (records per fsync {:.1})",
        stats.records_durable,
        stats.fsyncs,
        stats.records_durable as f64 / stats.fsyncs as f64
    );
}

/// Submits `records` records keeping `IN_FLIGHT_RECORDS` unacknowledged, like 64
/// concurrent clients each waiting for its own answer.
fn keep_in_flight(wal: &Wal, records: u64) -> Duration {
    let started = Instant::now();
    let mut in_flight: VecDeque<DurableTicket> = VecDeque::with_capacity(IN_FLIGHT_RECORDS);
    for _ in 0..records {
        if in_flight.len() == IN_FLIGHT_RECORDS {
            in_flight
                .pop_front()
                .expect("ticket")
                .wait_blocking()
                .expect("durable");
        }
        in_flight.push_back(wal.submit(vec![7; RECORD_BYTES]).expect("submit"));
    }
    for ticket in in_flight {
        ticket.wait_blocking().expect("durable");
    }
    started.elapsed()
}

fn recovery(c: &mut Criterion) {
    let log_dir = bench_dir();
    let options = WalOptions {
        batch_records_max: 4096,
        queue_records_max: 200_000,
        ..WalOptions::default()
    };
    {
        let wal = open(log_dir.path(), options.clone());
        let mut last = None;
        for _ in 0..RECOVERY_RECORDS {
            if wal.stats().pending_records >= 100_000 {
                last.take()
                    .map(|ticket: DurableTicket| ticket.wait_blocking().expect("durable"));
            }
            last = Some(wal.submit(vec![7; RECORD_BYTES]).expect("submit"));
        }
        wal.close().expect("close");
    }
    let snapshot_dir = bench_dir();
    {
        let wal = open(snapshot_dir.path(), options.clone());
        wal.submit(vec![1])
            .expect("submit")
            .wait_blocking()
            .expect("durable");
        wal.install_snapshot(1, &vec![9; SNAPSHOT_BYTES])
            .expect("snapshot");
    }
    let mut group = c.benchmark_group("wal_recovery");
    group.sample_size(10);
    group.bench_function("open_1m_records", |b| {
        b.iter(|| {
            let (wal, recovered) =
                Wal::open(log_dir.path(), Arc::new(RealFs), options.clone()).expect("open");
            assert_eq!(recovered.records.len() as u64, RECOVERY_RECORDS);
            drop(wal);
        })
    });
    group.bench_function("open_64mib_snapshot", |b| {
        b.iter(|| {
            let (wal, recovered) =
                Wal::open(snapshot_dir.path(), Arc::new(RealFs), options.clone()).expect("open");
            assert_eq!(
                recovered.snapshot.map(|(lsn, bytes)| (lsn, bytes.len())),
                Some((1, SNAPSHOT_BYTES))
            );
            drop(wal);
        })
    });
    group.finish();
}

criterion_group!(benches, append_fdatasync, recovery);
criterion_main!(benches);
