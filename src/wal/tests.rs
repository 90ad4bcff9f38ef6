//! Behaviour tests of the WAL: round trips, group commit, torn tails versus
//! corruption, snapshots and bounded disk use, back pressure and the failpoint.
//! The randomized crash property lives in `proptests.rs`.

mod proptests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fatal::FsyncFailpoint;
use super::format::{self, BLOCK_BYTES};
use super::*;

/// The directory every simulated WAL lives in.
fn sim_dir() -> PathBuf {
    PathBuf::from("/wal")
}

fn segment_path(first_lsn: Lsn) -> PathBuf {
    sim_dir().join(format::segment_file_name(first_lsn))
}

/// Deterministic payload bytes for a record, never all zeros.
fn payload(lsn: Lsn, length: usize) -> Vec<u8> {
    (0..length)
        .map(|i| ((lsn as usize * 31 + i * 7) % 251) as u8 | 1)
        .collect()
}

fn small_options() -> WalOptions {
    WalOptions {
        segment_bytes_max: 64 * 1024,
        snapshot_log_bytes: 32 * 1024,
        batch_records_max: 64,
        queue_records_max: 100_000,
        record_bytes_max: 256 * 1024,
        // Off: these tests cut and damage files at exact offsets from their end.
        preallocate_bytes: 0,
        unawaited_delay: crate::wal::UNAWAITED_DELAY_DEFAULT,
        commit_delay: Duration::ZERO,
    }
}

fn open_sim(disk: &SimulatedDisk, options: WalOptions) -> Result<(Wal, Recovered), WalError> {
    Wal::open(&sim_dir(), Arc::new(disk.clone()), options)
}

/// A WAL on `disk` whose writer the test drives (`manual_write`, `manual_sync`).
fn open_manual_sim(disk: &SimulatedDisk, options: WalOptions) -> Wal {
    let fs: Arc<dyn FileSystem> = Arc::new(disk.clone());
    let (wal, _) =
        Wal::open_manual(&sim_dir(), fs, options, FsyncFailpoint::default()).expect("open");
    wal
}

/// Submits every record and waits for all of them; returns their LSNs.
fn append_all(wal: &Wal, records: &[Vec<u8>]) -> Vec<Lsn> {
    let tickets: Vec<DurableTicket> = records
        .iter()
        .map(|r| wal.submit(r.clone()).expect("submit"))
        .collect();
    tickets
        .into_iter()
        .map(|t| t.wait_blocking().expect("durable"))
        .collect()
}

/// Appends each record as its own commit group (submit, then wait).
fn append_one_by_one(wal: &Wal, records: &[Vec<u8>]) {
    for record in records {
        wal.submit(record.clone())
            .expect("submit")
            .wait_blocking()
            .expect("durable");
    }
}

/// The check of every round trip: what was appended comes back, in order, from `first_lsn`.
fn check_records(recovered: &Recovered, first_lsn: Lsn, expected: &[Vec<u8>]) {
    assert_eq!(recovered.records.len(), expected.len(), "record count");
    for (index, (lsn, bytes)) in recovered.records.iter().enumerate() {
        assert_eq!(*lsn, first_lsn + index as u64, "lsn order");
        assert_eq!(bytes, &expected[index], "payload of lsn {lsn}");
    }
}

/// A fresh simulated disk holding exactly `files`, all durable.
fn disk_with(files: &[(PathBuf, Vec<u8>)]) -> SimulatedDisk {
    let disk = SimulatedDisk::new();
    for (path, content) in files {
        let mut file = disk.create(path).expect("create");
        file.append(content).expect("append");
        file.sync_data().expect("sync");
    }
    disk.sync_dir(&sim_dir()).expect("sync dir");
    disk
}

fn expect_corrupt(result: Result<(Wal, Recovered), WalError>) -> (PathBuf, u64, String) {
    match result {
        Err(WalError::Corrupt {
            file,
            offset,
            detail,
        }) => (file, offset, detail),
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok((_, recovered)) => panic!(
            "expected Corrupt, recovered {} records",
            recovered.records.len()
        ),
    }
}

#[test]
fn format_encode_decode_pairs() {
    let header = format::encode_segment_header(42);
    assert_eq!(format::decode_segment_header(&header), Ok(42));
    let snapshot = format::encode_snapshot(7, b"state");
    assert_eq!(format::decode_snapshot(&snapshot), Ok((7, &b"state"[..])));
    let mut damaged = snapshot.clone();
    damaged[34] ^= 1;
    assert!(format::decode_snapshot(&damaged).is_err());
    assert_eq!(
        format::classify_file_name(&format::segment_file_name(9)),
        format::FileKind::Segment(9)
    );
    assert_eq!(
        format::classify_file_name(&format::snapshot_file_name(9)),
        format::FileKind::Snapshot(9)
    );
    assert_eq!(
        format::classify_file_name("x.wal.tmp"),
        format::FileKind::Temporary
    );
    assert_eq!(
        format::classify_file_name("notes.txt"),
        format::FileKind::Unknown
    );
}

#[test]
fn roundtrip_many_records_across_segments_and_blocks() {
    let disk = SimulatedDisk::new();
    let records: Vec<Vec<u8>> = (1..=3000u64)
        .map(|lsn| {
            let length = if lsn % 97 == 0 {
                BLOCK_BYTES * 2 + 123
            } else {
                (lsn as usize * 13) % 700
            };
            payload(lsn, length)
        })
        .collect();
    {
        let (wal, recovered) = open_sim(&disk, small_options()).expect("open");
        assert_eq!(recovered, Recovered::default());
        let lsns = append_all(&wal, &records);
        assert_eq!(lsns, (1..=3000).collect::<Vec<_>>());
        let stats = wal.stats();
        assert_eq!(stats.records_durable, 3000);
        assert!(
            stats.rotations > 5,
            "expected several segments, got {stats:?}"
        );
        wal.close().expect("close");
    }
    let (wal, recovered) = open_sim(&disk, small_options()).expect("reopen");
    check_records(&recovered, 1, &records);
    assert_eq!(recovered.truncated_tail, None);
    let next = wal
        .submit(b"after".to_vec())
        .expect("submit")
        .wait_blocking()
        .expect("durable");
    assert_eq!(next, 3001);
}

#[test]
fn roundtrip_on_real_fs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records: Vec<Vec<u8>> = (1..=200)
        .map(|lsn| payload(lsn, 100 + lsn as usize * 300))
        .collect();
    {
        let (wal, _) = Wal::open(dir.path(), Arc::new(RealFs), small_options()).expect("open");
        append_all(&wal, &records);
    }
    let (_wal, recovered) =
        Wal::open(dir.path(), Arc::new(RealFs), small_options()).expect("reopen");
    check_records(&recovered, 1, &records);
}

#[test]
fn preallocated_segments_end_in_zeros_and_reopen_exactly_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = WalOptions {
        preallocate_bytes: 16 * 1024,
        ..small_options()
    };
    let records: Vec<Vec<u8>> = (1..=120).map(|lsn| payload(lsn, 700)).collect();
    // The segments, without the next one created ahead under a temporary name.
    let segment_names = || {
        let mut names = RealFs.list(dir.path()).expect("list");
        names.retain(|name| name.ends_with(".wal"));
        names.sort();
        names
    };
    let segment_sizes = || {
        let names = segment_names();
        names
            .iter()
            .map(|name| {
                std::fs::metadata(dir.path().join(name))
                    .expect("stat")
                    .len()
            })
            .collect::<Vec<u64>>()
    };
    // Three restarts, each appending a third: appends continue where the records
    // end, over the zeros, and nothing of the zeros is read back as a record.
    for (round, part) in records.chunks(40).enumerate() {
        let (wal, recovered) = Wal::open(dir.path(), Arc::new(RealFs), options.clone())
            .unwrap_or_else(|error| panic!("open in round {round}: {error}"));
        check_records(&recovered, 1, &records[..round * 40]);
        assert!(recovered.truncated_tail.is_none(), "zeros are no torn tail");
        append_one_by_one(&wal, part);
        drop(wal);
        let names = segment_names();
        let active = std::fs::read(dir.path().join(names.last().expect("a segment")))
            .expect("read the active segment");
        let data_end = active.iter().rposition(|&b| b != 0).expect("records") + 1;
        assert!(
            active.len() >= data_end + 4 * 1024,
            "round {round}: the active segment ({} bytes) has no zeros ahead of its \
             records (which end at {data_end})",
            active.len()
        );
    }
    let (_wal, recovered) = Wal::open(dir.path(), Arc::new(RealFs), options).expect("reopen");
    check_records(&recovered, 1, &records);
    assert!(
        segment_sizes().len() > 1,
        "the records span several segments"
    );
    let sizes = segment_sizes();
    assert!(
        sizes
            .iter()
            .all(|&size| size <= small_options().segment_bytes_max + 16 * 1024),
        "zeros never run past the segment size limit by more than a group: {sizes:?}"
    );
    // Full segments were trimmed to their records before the next one started.
    let names = segment_names();
    for name in &names[..names.len() - 1] {
        let full = std::fs::read(dir.path().join(name)).expect("read");
        assert_ne!(full.last(), Some(&0), "{name} ends in zeros");
    }
}

#[test]
fn a_lost_first_sector_of_a_group_in_a_preallocated_segment_is_a_torn_tail() {
    let disk = SimulatedDisk::new();
    let options = WalOptions {
        preallocate_bytes: 8 * 1024,
        ..small_options()
    };
    let records: Vec<Vec<u8>> = (1..=4).map(|lsn| payload(lsn, 600)).collect();
    let synced_end = {
        let wal = open_manual_sim(&disk, options.clone());
        for record in &records[..2] {
            let _ticket = wal.submit(record.clone()).expect("submit");
            wal.manual_write(1);
            wal.manual_sync();
        }
        let synced_end = wal.stats().bytes_written + format::SEGMENT_HEADER_BYTES as u64;
        // Records 3 and 4 as one commit group.
        let _tickets: Vec<DurableTicket> = records[2..]
            .iter()
            .map(|record| wal.submit(record.clone()).expect("submit"))
            .collect();
        wal.manual_write(2);
        wal.manual_sync();
        synced_end
    };
    // The first sector of the group never reached the disk: it reads as the zeros
    // preallocated there, and record 4 after it is intact.
    disk.corrupt(&segment_path(1), synced_end as usize, &[0u8; 512])
        .expect("corrupt");
    let (wal, recovered) = open_sim(&disk, options.clone()).expect("reopen");
    check_records(&recovered, 1, &records[..2]);
    let tail = recovered.truncated_tail.expect("a torn tail");
    assert_eq!(tail.offset, synced_end);
    append_one_by_one(&wal, &records[2..3]);
    drop(wal);
    let (_wal, recovered) = open_sim(&disk, options).expect("reopen after append");
    check_records(&recovered, 1, &records[..3]);
}

#[test]
fn group_commit_shares_fsyncs_between_64_submitters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), Arc::new(RealFs), small_options()).expect("open");
    let wal = Arc::new(wal);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let records_per_task = 20;
    runtime.block_on(async {
        let tasks: Vec<_> = (0..64)
            .map(|task| {
                let wal = Arc::clone(&wal);
                tokio::spawn(async move {
                    for i in 0..records_per_task {
                        wal.submit(payload(task * 100 + i, 64))
                            .expect("submit")
                            .await
                            .expect("durable");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
    });
    let stats = wal.stats();
    assert_eq!(stats.records_durable, 64 * records_per_task);
    assert!(
        stats.fsyncs * 4 < stats.records_durable,
        "fsyncs not shared: {stats:?}"
    );
}

/// Writes `records` one group each and returns the segment's bytes and the offset
/// where the last record starts.
fn single_segment_log(records: &[Vec<u8>]) -> (Vec<u8>, u64) {
    let disk = SimulatedDisk::new();
    let (wal, _) = open_sim(&disk, small_options()).expect("open");
    append_one_by_one(&wal, &records[..records.len() - 1]);
    wal.close().expect("close");
    let last_start = disk.read(&segment_path(1)).expect("read").len() as u64;
    drop(wal);
    let (wal, _) = open_sim(&disk, small_options()).expect("reopen");
    append_one_by_one(&wal, &records[records.len() - 1..]);
    wal.close().expect("close");
    (disk.read(&segment_path(1)).expect("read"), last_start)
}

/// Cuts the log at `cut`, follows the cut with `zeros` zero bytes (as a preallocated
/// segment would have), and checks that recovery keeps exactly the records before.
fn check_cut(file: &[u8], last_start: u64, cut: usize, zeros: usize, records: &[Vec<u8>]) {
    let mut content = file[..cut].to_vec();
    content.resize(cut + zeros, 0);
    let disk = disk_with(&[(segment_path(1), content)]);
    let (wal, recovered) = open_sim(&disk, small_options()).expect("open after cut");
    let kept = if cut as u64 == file.len() as u64 {
        records.len()
    } else {
        records.len() - 1
    };
    check_records(&recovered, 1, &records[..kept]);
    match &recovered.truncated_tail {
        // Zeros after the cut make a clean end exactly where the kept bytes of the
        // torn record are zeros themselves: nothing nonzero is dropped unreported.
        None => assert!(
            cut as u64 == last_start
                || cut == file.len()
                || (zeros > 0 && file[last_start as usize..cut].iter().all(|&b| b == 0)),
            "cut {cut} not reported"
        ),
        Some(tail) => {
            assert_eq!(tail.offset, last_start, "cut {cut}");
            assert_eq!(tail.file, segment_path(1));
        }
    }
    // Appends continue after the valid data and survive a reopen: assert the pair.
    let lsn = wal
        .submit(b"next".to_vec())
        .expect("submit")
        .wait_blocking()
        .expect("durable");
    assert_eq!(lsn, kept as u64 + 1);
    drop(wal);
    let (_wal, again) = open_sim(&disk, small_options()).expect("reopen");
    assert_eq!(again.truncated_tail, None);
    assert_eq!(again.records.last(), Some(&(lsn, b"next".to_vec())));
}

#[test]
fn torn_tail_at_every_offset_of_a_small_last_record_recovers_the_prefix() {
    let records: Vec<Vec<u8>> = (1..=20)
        .map(|lsn| payload(lsn, 50 + lsn as usize * 10))
        .collect();
    let (file, last_start) = single_segment_log(&records);
    for cut in last_start as usize..=file.len() {
        check_cut(&file, last_start, cut, 0, &records);
        check_cut(&file, last_start, cut, 8 * 1024, &records);
    }
}

#[test]
fn torn_tail_of_a_fragmented_last_record_recovers_the_prefix() {
    let mut records: Vec<Vec<u8>> = (1..=10).map(|lsn| payload(lsn, 3000)).collect();
    records.push(payload(11, BLOCK_BYTES * 2 + 500));
    let (file, last_start) = single_segment_log(&records);
    let block_edges: Vec<usize> = (1..4).map(|block| block * BLOCK_BYTES).collect();
    for cut in last_start as usize..=file.len() {
        let near_edge = block_edges.iter().any(|edge| cut.abs_diff(*edge) <= 16);
        let near_ends = cut - last_start as usize <= 32 || file.len() - cut <= 32;
        if near_edge || near_ends || cut % 251 == 0 {
            check_cut(&file, last_start, cut, 0, &records);
            check_cut(&file, last_start, cut, BLOCK_BYTES + 100, &records);
        }
    }
}

#[test]
fn bit_flip_in_the_last_record_recovers_the_prefix() {
    let records: Vec<Vec<u8>> = (1..=10).map(|lsn| payload(lsn, 200)).collect();
    let (file, last_start) = single_segment_log(&records);
    for position in [
        last_start as usize,
        last_start as usize + 5,
        last_start as usize + 7 + 20,
        file.len() - 1,
    ] {
        let mut damaged = file.clone();
        damaged[position] ^= 0x10;
        let disk = disk_with(&[(segment_path(1), damaged)]);
        let (_wal, recovered) = open_sim(&disk, small_options()).expect("open");
        check_records(&recovered, 1, &records[..9]);
        let tail = recovered.truncated_tail.expect("truncation reported");
        assert_eq!(tail.offset, last_start);
        assert_eq!(
            disk.read(&segment_path(1)).expect("read").len() as u64,
            last_start,
            "file physically cut"
        );
    }
}

#[test]
fn bit_flip_followed_by_valid_records_is_corruption_naming_file_and_offset() {
    let records: Vec<Vec<u8>> = (1..=10).map(|lsn| payload(lsn, 200)).collect();
    let (file, _) = single_segment_log(&records);
    let record_bytes = format::FRAGMENT_HEADER_BYTES + format::RECORD_PREFIX_BYTES + 200;
    let fifth = format::SEGMENT_HEADER_BYTES + 4 * record_bytes;
    let mut damaged = file.clone();
    damaged[fifth + 30] ^= 0x01;
    let disk = disk_with(&[(segment_path(1), damaged)]);
    let error = open_sim(&disk, small_options()).expect_err("must refuse");
    let message = error.to_string();
    let (path, offset, _) = expect_corrupt(Err(error));
    assert_eq!((path, offset), (segment_path(1), fifth as u64));
    assert!(
        message.contains("00000000000000000001.wal") && message.contains(&fifth.to_string()),
        "{message}"
    );
    assert!(
        message.contains("backup") && message.contains("truncate"),
        "{message}"
    );
    assert_eq!(
        disk.read(&segment_path(1)).expect("read"),
        {
            let mut expected = file;
            expected[fifth + 30] ^= 0x01;
            expected
        },
        "a refused log is left untouched"
    );
}

#[test]
fn zeroed_sector_followed_by_a_later_commit_group_is_corruption() {
    let disk = SimulatedDisk::new();
    let wal = open_manual_sim(&disk, small_options());
    for lsn in 1..=6 {
        wal.submit(payload(lsn, 600)).expect("submit");
    }
    wal.manual_write(3);
    wal.manual_sync();
    wal.manual_write(3);
    wal.manual_sync();
    drop(wal);
    // Zero a whole sector inside record 2: a "lost write" in the first, synced group.
    disk.corrupt(&segment_path(1), 1024, &[0u8; 512])
        .expect("corrupt");
    let (file, offset, detail) = expect_corrupt(open_sim(&disk, small_options()));
    assert_eq!(file, segment_path(1));
    assert!(offset < 1024, "offset {offset}");
    assert!(detail.contains("later commit group"), "{detail}");
}

#[test]
fn torn_commit_group_with_surviving_later_sectors_is_a_torn_tail() {
    let disk = SimulatedDisk::new();
    let wal = open_manual_sim(&disk, small_options());
    for lsn in 1..=6 {
        wal.submit(payload(lsn, 600)).expect("submit");
    }
    wal.manual_write(2);
    wal.manual_sync();
    wal.manual_write(4); // records 3..=6, never synced
    drop(wal);
    // Sector 3 (1536..2048) lies inside record 3; pretend only it was lost.
    disk.corrupt(&segment_path(1), 1536, &[0u8; 512])
        .expect("corrupt");
    let (_wal, recovered) = open_sim(&disk, small_options()).expect("open");
    check_records(&recovered, 1, &[payload(1, 600), payload(2, 600)]);
    let tail = recovered.truncated_tail.expect("reported");
    assert!(
        tail.reason.contains("same never-synced commit group"),
        "{}",
        tail.reason
    );
}

#[test]
fn damage_in_a_segment_that_is_not_the_last_is_corruption() {
    let disk = SimulatedDisk::new();
    let options = WalOptions {
        segment_bytes_max: 4096,
        ..small_options()
    };
    {
        let (wal, _) = open_sim(&disk, options.clone()).expect("open");
        let records: Vec<Vec<u8>> = (1..=40).map(|lsn| payload(lsn, 500)).collect();
        append_one_by_one(&wal, &records);
        assert!(wal.stats().segments > 2);
    }
    let file = disk.read(&segment_path(1)).expect("read");
    disk.corrupt(&segment_path(1), file.len() - 3, &[0xff])
        .expect("corrupt");
    let (path, _, detail) = expect_corrupt(open_sim(&disk, options));
    assert_eq!(path, segment_path(1));
    assert!(detail.contains("not the last"), "{detail}");
}

#[test]
fn full_segments_are_trimmed_and_zeros_after_their_records_are_corruption() {
    let disk = SimulatedDisk::new();
    let options = WalOptions {
        segment_bytes_max: 4096,
        preallocate_bytes: 3000,
        ..small_options()
    };
    let records: Vec<Vec<u8>> = (1..=40).map(|lsn| payload(lsn, 500)).collect();
    {
        let (wal, _) = open_sim(&disk, options.clone()).expect("open");
        append_one_by_one(&wal, &records);
        assert!(wal.stats().segments > 2);
    }
    let file = disk.read(&segment_path(1)).expect("read");
    assert_ne!(
        file.last(),
        Some(&0),
        "a full segment ends with its records"
    );
    let (_wal, recovered) = open_sim(&disk, options.clone()).expect("reopen");
    check_records(&recovered, 1, &records);
    drop(_wal);
    // Synced records of a full segment replaced by zeros (a lying disk): refused,
    // naming the offset where the zeros start, not a later segment.
    let zeroed_from = file.len() - 700;
    disk.corrupt(&segment_path(1), zeroed_from, &vec![0; 700])
        .expect("corrupt");
    let (path, offset, detail) = expect_corrupt(open_sim(&disk, options));
    assert_eq!(path, segment_path(1));
    assert!(offset <= zeroed_from as u64, "offset {offset}: {detail}");
    assert!(detail.contains("not the last"), "{detail}");
}

#[test]
fn a_missing_segment_is_an_lsn_gap() {
    let disk = SimulatedDisk::new();
    let options = WalOptions {
        segment_bytes_max: 4096,
        ..small_options()
    };
    {
        let (wal, _) = open_sim(&disk, options.clone()).expect("open");
        let records: Vec<Vec<u8>> = (1..=40).map(|lsn| payload(lsn, 500)).collect();
        append_one_by_one(&wal, &records);
    }
    let mut segments: Vec<String> = disk.list(&sim_dir()).expect("list");
    segments.sort();
    disk.remove(&sim_dir().join(&segments[1])).expect("remove");
    let (path, offset, detail) = expect_corrupt(open_sim(&disk, options));
    assert_eq!((path, offset), (sim_dir().join(&segments[2]), 0));
    assert!(detail.contains("previous one ends"), "{detail}");
}

#[test]
fn recovery_after_snapshot_returns_snapshot_and_tail() {
    let disk = SimulatedDisk::new();
    let options = WalOptions {
        segment_bytes_max: 4096,
        ..small_options()
    };
    let records: Vec<Vec<u8>> = (1..=60).map(|lsn| payload(lsn, 300)).collect();
    {
        let (wal, _) = open_sim(&disk, options.clone()).expect("open");
        append_all(&wal, &records[..40]);
        wal.install_snapshot(40, b"state@40").expect("snapshot");
        assert_eq!(wal.stats().snapshot_lsn, 40);
        append_all(&wal, &records[40..]);
    }
    let (_wal, recovered) = open_sim(&disk, options).expect("reopen");
    assert_eq!(recovered.snapshot, Some((40, b"state@40".to_vec())));
    check_records(&recovered, 41, &records[40..]);
}

#[test]
fn invalid_newest_snapshot_falls_back_only_while_the_log_reaches_back() {
    let disk = SimulatedDisk::new();
    let options = WalOptions {
        segment_bytes_max: 4096,
        ..small_options()
    };
    {
        let (wal, _) = open_sim(&disk, options.clone()).expect("open");
        let records: Vec<Vec<u8>> = (1..=80).map(|lsn| payload(lsn, 300)).collect();
        append_all(&wal, &records[..5]);
        wal.install_snapshot(5, b"state@5").expect("snapshot 5");
        append_all(&wal, &records[5..]);
    }
    // Plant a damaged newer snapshot: the older one plus the full log still works.
    let bad = sim_dir().join(format::snapshot_file_name(70));
    let mut file = disk.create(&bad).expect("create");
    file.append(b"garbage").expect("append");
    file.sync_data().expect("sync");
    let (wal, recovered) = open_sim(&disk, options.clone()).expect("fallback");
    assert_eq!(recovered.snapshot, Some((5, b"state@5".to_vec())));
    assert_eq!(recovered.records.len(), 75);
    // Once a snapshot deleted the early segments, the older snapshot cannot be used.
    wal.install_snapshot(78, b"state@78").expect("snapshot 78");
    drop(wal);
    disk.corrupt(&sim_dir().join(format::snapshot_file_name(78)), 40, b"x")
        .expect("corrupt");
    let bad = sim_dir().join(format::snapshot_file_name(5));
    let mut file = disk.create(&bad).expect("create");
    file.append(&format::encode_snapshot(5, b"state@5"))
        .expect("append");
    file.sync_data().expect("sync");
    let (_, _, detail) = expect_corrupt(open_sim(&disk, options));
    assert!(detail.contains("missing"), "{detail}");
}

fn dir_bytes(fs: &dyn FileSystem, dir: &Path) -> u64 {
    let names = fs.list(dir).expect("list");
    names
        .iter()
        .map(|name| fs.read(&dir.join(name)).expect("read").len() as u64)
        .sum()
}

#[test]
fn snapshots_keep_disk_use_bounded_under_churn() {
    let disk = SimulatedDisk::new();
    let options = WalOptions {
        segment_bytes_max: 16 * 1024,
        snapshot_log_bytes: 32 * 1024,
        ..small_options()
    };
    let (wal, _) = open_sim(&disk, options.clone()).expect("open");
    let state = vec![7u8; 4096];
    let mut disk_bytes_max = 0;
    let mut snapshots = 0;
    for round in 0..400u64 {
        let records: Vec<Vec<u8>> = (0..25).map(|i| payload(round * 25 + i, 200)).collect();
        let last = *append_all(&wal, &records).last().expect("lsn");
        if wal.snapshot_due() {
            wal.install_snapshot(last, &state).expect("snapshot");
            assert!(!wal.snapshot_due(), "a snapshot resets the log size");
            snapshots += 1;
        }
        disk_bytes_max = disk_bytes_max.max(dir_bytes(&disk, &sim_dir()));
    }
    let written = wal.stats().bytes_written;
    assert!(snapshots > 50, "snapshots {snapshots}");
    assert!(written > 2_000_000, "written {written}");
    // One snapshot, the active segment and the segments since the last snapshot.
    let bound =
        state.len() as u64 + options.snapshot_log_bytes + 2 * options.segment_bytes_max + 16 * 1024;
    assert!(
        disk_bytes_max <= bound,
        "disk use {disk_bytes_max} over {bound}"
    );
}

#[test]
fn snapshot_refuses_unassigned_and_stale_lsns() {
    let disk = SimulatedDisk::new();
    let (wal, _) = open_sim(&disk, small_options()).expect("open");
    append_all(&wal, &[b"a".to_vec(), b"b".to_vec()]);
    assert!(matches!(
        wal.install_snapshot(3, b"s"),
        Err(WalError::SnapshotRefused { .. })
    ));
    assert!(matches!(
        wal.install_snapshot(0, b"s"),
        Err(WalError::SnapshotRefused { .. })
    ));
    wal.install_snapshot(2, b"s").expect("snapshot");
    assert!(matches!(
        wal.install_snapshot(1, b"s"),
        Err(WalError::SnapshotRefused { .. })
    ));
}

#[test]
fn unawaited_records_go_out_with_the_next_group_in_lsn_order() {
    let disk = SimulatedDisk::new();
    let records: Vec<Vec<u8>> = (1..=3).map(|lsn| payload(lsn, 200)).collect();
    {
        let (wal, _) = open_sim(&disk, small_options()).expect("open");
        let first = wal
            .submit_unawaited(records[0].clone(), 16)
            .expect("queued");
        let second = wal
            .submit_unawaited(records[1].clone(), 16)
            .expect("queued");
        assert_eq!((first, second), (1, 2));
        // A later awaited record is durable only with every record before it.
        append_all(&wal, &records[2..]);
        assert_eq!(wal.stats().durable_lsn, 3);
    }
    let (_wal, recovered) = open_sim(&disk, small_options()).expect("reopen");
    check_records(&recovered, 1, &records);
}

/// Polls `wal` until `durable_lsn` reaches `lsn`; panics after 30 s.
fn wait_until_durable(wal: &Wal, lsn: Lsn) -> WalStats {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stats = wal.stats();
        if stats.durable_lsn >= lsn {
            return stats;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lsn {lsn} not durable: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn unawaited_records_start_no_group_and_share_the_next_awaited_ones_fsync() {
    let disk = SimulatedDisk::new();
    let options = WalOptions {
        unawaited_delay: UNAWAITED_DELAY_LIMIT,
        ..small_options()
    };
    let records: Vec<Vec<u8>> = (1..=4).map(|lsn| payload(lsn, 100)).collect();
    let (wal, _) = open_sim(&disk, options).expect("open");
    for record in &records[..3] {
        wal.submit_unawaited(record.clone(), 16).expect("queued");
    }
    // Give a writer that would flush them every chance to.
    std::thread::sleep(Duration::from_millis(50));
    let stats = wal.stats();
    assert_eq!((stats.fsyncs, stats.durable_lsn), (0, 0), "{stats:?}");
    append_all(&wal, &records[3..]);
    let stats = wal.stats();
    assert_eq!((stats.fsyncs, stats.durable_lsn), (1, 4), "{stats:?}");
    assert_eq!(stats.last_group_records, 4);
}

#[test]
fn unawaited_records_are_flushed_after_the_delay_by_a_full_batch_or_at_close() {
    let disk = SimulatedDisk::new();
    let records: Vec<Vec<u8>> = (1..=7).map(|lsn| payload(lsn, 100)).collect();
    {
        // Alone, after the delay.
        let options = WalOptions {
            unawaited_delay: Duration::from_millis(20),
            ..small_options()
        };
        let (wal, _) = open_sim(&disk, options).expect("open");
        // Let the writer go idle first, waiting with no deadline.
        std::thread::sleep(Duration::from_millis(50));
        wal.submit_unawaited(records[0].clone(), 16)
            .expect("queued");
        let stats = wait_until_durable(&wal, 1);
        assert_eq!(stats.fsyncs, 1);
    }
    {
        // A full batch goes out at once; the remainder waits for the close.
        let options = WalOptions {
            unawaited_delay: UNAWAITED_DELAY_LIMIT,
            batch_records_max: 4,
            ..small_options()
        };
        let (wal, _) = open_sim(&disk, options).expect("reopen");
        for record in &records[1..] {
            wal.submit_unawaited(record.clone(), 16).expect("queued");
        }
        let stats = wait_until_durable(&wal, 5);
        assert_eq!(stats.last_group_records, 4, "{stats:?}");
        wal.close().expect("close");
    }
    let (_wal, recovered) = open_sim(&disk, small_options()).expect("reopen");
    check_records(&recovered, 1, &records);
}

#[test]
fn a_busy_log_with_a_commit_delay_still_makes_everything_durable() {
    // The grouping itself is checked on `Queue::group_due` below, where time is
    // given; here the writer's timed waits must end with every record durable.
    let disk = SimulatedDisk::new();
    let options = WalOptions {
        commit_delay: COMMIT_DELAY_LIMIT,
        ..small_options()
    };
    let (wal, _) = open_sim(&disk, options).expect("open");
    for round in 0..3u64 {
        // As if a grant had arrived during the previous group's fdatasync.
        wal.shared.queue.lock().busy = true;
        let tickets: Vec<DurableTicket> = (1..=20)
            .map(|i| wal.submit(payload(round * 20 + i, 100)).expect("submit"))
            .collect();
        for ticket in tickets {
            ticket.wait_blocking().expect("durable");
        }
    }
    let stats = wal.stats();
    assert_eq!(stats.durable_lsn, 60, "{stats:?}");
}

#[test]
fn a_group_is_due_at_once_at_an_idle_log_and_after_the_commit_delay_at_a_busy_one() {
    let options = WalOptions {
        commit_delay: Duration::from_millis(2),
        unawaited_delay: Duration::from_millis(20),
        batch_records_max: 3,
        ..small_options()
    };
    let mut queue = writer::Queue::new(1);
    assert_eq!(queue.group_due(&options), None, "nothing queued");
    let pending = |lsn: Lsn, awaited: bool| writer::Pending {
        lsn,
        record: vec![1],
        done: awaited.then(|| tokio::sync::oneshot::channel().0),
    };
    let oldest = std::time::Instant::now();
    let at = |micros: u64| oldest + Duration::from_micros(micros);
    queue.push(pending(1, false), oldest);
    queue.oldest_queued_at = Some(oldest);
    queue.newest_queued_at = Some(oldest);
    let due = |queue: &writer::Queue| queue.group_due(&options).map(|due| due - oldest);
    assert_eq!(
        due(&queue),
        Some(options.unawaited_delay),
        "a lone lease end"
    );
    queue.push(pending(2, true), oldest);
    queue.newest_queued_at = Some(at(10));
    assert_eq!(due(&queue), Some(Duration::ZERO), "an idle log: at once");
    queue.busy = true;
    assert_eq!(
        due(&queue),
        Some(Duration::from_micros(10) + writer::COMMIT_GAP),
        "a busy log waits while records keep coming, and not after they stop"
    );
    queue.newest_queued_at = Some(at(1_990));
    assert_eq!(
        due(&queue),
        Some(options.commit_delay),
        "at most the commit delay"
    );
    let short = WalOptions {
        commit_delay: writer::COMMIT_GAP / 2,
        ..options.clone()
    };
    assert_eq!(
        queue.group_due(&short).map(|due| due - oldest),
        Some(short.commit_delay),
        "a delay shorter than the gap bounds the wait alone"
    );
    queue.closing = true;
    assert_eq!(due(&queue), Some(Duration::ZERO), "a closing log drains");
    queue.closing = false;
    queue.push(pending(3, true), oldest);
    assert_eq!(
        due(&queue),
        Some(Duration::ZERO),
        "a full batch goes at once"
    );
    queue.take(3);
    assert_eq!(
        (
            queue.awaited,
            queue.oldest_queued_at,
            queue.newest_queued_at
        ),
        (0, None, None)
    );
}

#[test]
fn options_out_of_bounds_are_refused() {
    let refused = |options: WalOptions| {
        matches!(
            open_sim(&SimulatedDisk::new(), options),
            Err(WalError::InvalidOptions(_))
        )
    };
    assert!(refused(WalOptions {
        unawaited_delay: UNAWAITED_DELAY_LIMIT + Duration::from_millis(1),
        ..small_options()
    }));
    assert!(refused(WalOptions {
        commit_delay: COMMIT_DELAY_LIMIT + Duration::from_micros(1),
        ..small_options()
    }));
    assert!(refused(WalOptions {
        preallocate_bytes: PREALLOCATE_BYTES_LIMIT + 1,
        ..small_options()
    }));
    assert!(refused(WalOptions {
        batch_records_max: 0,
        ..small_options()
    }));
    assert!(!refused(small_options()));
}

#[test]
fn back_pressure_and_record_size_bounds() {
    let disk = SimulatedDisk::new();
    let options = WalOptions {
        queue_records_max: 4,
        record_bytes_max: 10,
        ..small_options()
    };
    let wal = open_manual_sim(&disk, options);
    let mut tickets: Vec<DurableTicket> = (0..4)
        .map(|_| wal.submit(vec![1]).expect("submit"))
        .collect();
    assert!(matches!(
        wal.submit(vec![1]),
        Err(WalError::Overloaded {
            pending_records: 4,
            ..
        })
    ));
    assert!(matches!(
        wal.submit(vec![0; 11]),
        Err(WalError::RecordTooLarge {
            record_bytes: 11,
            ..
        })
    ));
    wal.manual_write(2);
    assert!(tickets[0].try_durable().is_none(), "written is not durable");
    wal.manual_sync();
    assert_eq!(tickets[0].try_durable().map(|r| r.ok()), Some(Some(1)));
    assert_eq!(tickets[1].try_durable().map(|r| r.ok()), Some(Some(2)));
    assert!(tickets[2].try_durable().is_none());
    wal.submit(vec![1]).expect("room again");
}

#[test]
fn close_makes_everything_queued_durable() {
    let disk = SimulatedDisk::new();
    let (wal, _) = open_sim(&disk, small_options()).expect("open");
    let records: Vec<Vec<u8>> = (1..=500).map(|lsn| payload(lsn, 40)).collect();
    let tickets: Vec<DurableTicket> = records
        .iter()
        .map(|r| wal.submit(r.clone()).expect("submit"))
        .collect();
    wal.close().expect("close");
    assert!(matches!(wal.submit(vec![1]), Err(WalError::Closed)));
    for (index, ticket) in tickets.into_iter().enumerate() {
        assert_eq!(ticket.wait_blocking().expect("durable"), index as u64 + 1);
    }
    drop(wal);
    let (_wal, recovered) = open_sim(&disk, small_options()).expect("reopen");
    check_records(&recovered, 1, &records);
}

#[test]
fn leftover_temporary_files_are_removed() {
    let disk = SimulatedDisk::new();
    drop(open_sim(&disk, small_options()).expect("open"));
    let tmp = sim_dir().join("00000000000000000009.wal.tmp");
    disk.create(&tmp).expect("create");
    drop(open_sim(&disk, small_options()).expect("reopen"));
    assert!(
        !disk
            .list(&sim_dir())
            .expect("list")
            .iter()
            .any(|name| name.ends_with(".tmp"))
    );
}

#[cfg(feature = "failpoints")]
#[test]
fn fsync_failpoint_goes_through_the_abort_hook() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static HOOK_CALLED: AtomicBool = AtomicBool::new(false);
    fn hook(message: &str) {
        assert!(message.contains("wal-fsync-fail-after:2"), "{message}");
        HOOK_CALLED.store(true, Ordering::SeqCst);
        panic!("abort hook: {message}");
    }
    set_abort_hook(hook);
    assert_eq!(
        FsyncFailpoint::parse("wal-fsync-fail-after:2").syncs_ok_max,
        Some(2)
    );
    let disk = SimulatedDisk::new();
    let fs: Arc<dyn FileSystem> = Arc::new(disk.clone());
    let (parts_wal, _, writer) = Wal::open_parts(
        &sim_dir(),
        fs,
        small_options(),
        FsyncFailpoint::parse("wal-fsync-fail-after:2"),
    )
    .expect("open");
    let thread = std::thread::spawn(move || writer::run(writer));
    *parts_wal.writer.lock() = WriterSlot::Thread(thread);
    for lsn in 1..=2 {
        assert_eq!(
            parts_wal
                .submit(vec![1])
                .expect("submit")
                .wait_blocking()
                .expect("durable"),
            lsn
        );
    }
    let third = parts_wal.submit(vec![1]).expect("submit").wait_blocking();
    assert!(matches!(third, Err(WalError::WriterStopped)), "{third:?}");
    assert!(HOOK_CALLED.load(Ordering::SeqCst));
    assert!(matches!(parts_wal.close(), Err(WalError::WriterStopped)));
    let (_wal, recovered) = open_sim(&disk, small_options()).expect("reopen");
    // The failed group was never acknowledged; without a crash its bytes may still be read back.
    assert!((2..=3).contains(&recovered.records.len()));
}

/// Small segments with preallocation on, for the tests of reservations.
fn reserving_options() -> WalOptions {
    WalOptions {
        segment_bytes_max: 8 * 1024,
        preallocate_bytes: 4 * 1024,
        ..small_options()
    }
}

/// Polls `condition` every 5 ms for up to 10 s (the writer retries a failed
/// reservation every second).
#[track_caller]
fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn file_names(disk: &SimulatedDisk) -> Vec<String> {
    disk.list(&sim_dir()).expect("list")
}

#[test]
fn out_of_descriptors_the_log_rotates_into_the_segment_opened_ahead_then_refuses_and_resumes() {
    let disk = SimulatedDisk::new();
    let (wal, _) = open_sim(&disk, reserving_options()).expect("open");
    let mut records = Vec::new();
    // Past half of the first segment, the writer creates the next one ahead of time.
    while !file_names(&disk).contains(&writer::NEXT_SEGMENT_TMP.to_string()) {
        assert!(records.len() < 100, "no next segment was created ahead");
        records.push(payload(records.len() as Lsn + 1, 500));
        append_one_by_one(&wal, &records[records.len() - 1..]);
    }
    disk.set_descriptors_exhausted(true);
    // The rotation needs no new descriptor: the segment and the directory are open.
    while wal.stats().rotations == 0 {
        assert!(records.len() < 200, "no rotation");
        records.push(payload(records.len() as Lsn + 1, 500));
        append_one_by_one(&wal, &records[records.len() - 1..]);
    }
    // The next one cannot be created: once it is needed, new records are refused.
    let mut tickets = Vec::new();
    let refused = loop {
        assert!(records.len() < 1000, "the log never refused new records");
        match wal.admission() {
            Err(WalError::Alarm(alarm)) => break alarm,
            Err(other) => panic!("unexpected {other}"),
            Ok(_) => {}
        }
        records.push(payload(records.len() as Lsn + 1, 500));
        tickets.push(
            wal.submit(records[records.len() - 1].clone())
                .expect("submit"),
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(
        !refused.is_disk_full() && refused.to_string().contains("Too many open files"),
        "{refused}"
    );
    disk.set_descriptors_exhausted(false);
    wait_until("the alarm clears", || wal.alarm().is_none());
    for ticket in tickets {
        ticket
            .wait_blocking()
            .expect("durable once the next segment exists");
    }
    assert!(wal.admission().is_ok());
    wal.close().expect("close");
    drop(wal);
    let (_wal, recovered) = open_sim(&disk, reserving_options()).expect("reopen");
    check_records(&recovered, 1, &records);
}

#[test]
fn a_full_disk_makes_the_log_read_only_until_space_returns_and_nothing_aborts() {
    let disk = SimulatedDisk::new();
    let options = WalOptions {
        segment_bytes_max: 64 * 1024,
        preallocate_bytes: 16 * 1024,
        ..small_options()
    };
    let (wal, _) = open_sim(&disk, options.clone()).expect("open");
    let mut records = vec![payload(1, 100)];
    append_one_by_one(&wal, &records);
    // Little more fits on the disk: groups go into the zeros written ahead, until
    // the writer fails to extend them (writing some of them) and raises the alarm.
    disk.set_capacity(Some(disk.used_bytes() + 3000));
    let alarm = loop {
        assert!(records.len() < 1000, "the alarm never came");
        if let Err(WalError::Alarm(alarm)) = wal.admission() {
            break alarm;
        }
        records.push(payload(records.len() as Lsn + 1, 100));
        append_one_by_one(&wal, &records[records.len() - 1..]);
    };
    assert!(alarm.is_disk_full(), "{alarm}");
    assert!(alarm.to_string().contains("disk full"), "{alarm}");
    // Records nobody awaits (lease ends) still fit in the room left.
    records.push(payload(records.len() as Lsn + 1, 100));
    wal.submit_unawaited(records[records.len() - 1].clone(), usize::MAX)
        .expect("room for a lease end");
    // An admitted record too big for the room waits, unacknowledged, rather than abort.
    records.push(payload(records.len() as Lsn + 1, 20_000));
    let big = wal
        .submit(records[records.len() - 1].clone())
        .expect("submit");
    disk.set_capacity(None);
    wait_until("the alarm clears", || wal.alarm().is_none());
    big.wait_blocking().expect("durable once space returned");
    // On into the next segments: the one that filled up was trimmed of every zero.
    while wal.stats().rotations < 2 {
        assert!(records.len() < 2000, "no rotation");
        records.push(payload(records.len() as Lsn + 1, 100));
        append_one_by_one(&wal, &records[records.len() - 1..]);
    }
    wal.close().expect("close");
    drop(wal);
    let (_wal, recovered) = open_sim(&disk, options).expect("reopen");
    check_records(&recovered, 1, &records);
}

#[test]
fn a_restart_on_a_full_disk_without_room_starts_read_only() {
    let disk = SimulatedDisk::new();
    let options = WalOptions {
        preallocate_bytes: 16 * 1024,
        ..small_options()
    };
    let (wal, _) = open_sim(&disk, options.clone()).expect("open");
    let records = vec![payload(1, 100)];
    append_one_by_one(&wal, &records);
    wal.close().expect("close");
    drop(wal);
    // The zeros ahead are gone (an older version trimmed them) and the disk is full.
    let segment = segment_path(1);
    let length = format::SEGMENT_HEADER_BYTES + format::FRAGMENT_HEADER_BYTES + 16 + 100;
    disk.cut(&segment, length).expect("cut");
    disk.set_capacity(Some(disk.used_bytes()));
    let (wal, recovered) = open_sim(&disk, options).expect("a full disk does not stop the open");
    check_records(&recovered, 1, &records);
    assert!(matches!(wal.admission(), Err(WalError::Alarm(alarm)) if alarm.is_disk_full()));
    disk.set_capacity(None);
    wait_until("the alarm clears", || wal.alarm().is_none());
    append_one_by_one(&wal, &[payload(2, 100)]);
}

#[test]
fn a_snapshot_written_in_pieces_is_the_snapshot_of_their_concatenation_and_a_failed_one_leaves_nothing()
 {
    let disk = SimulatedDisk::new();
    let (wal, _) = open_sim(&disk, small_options()).expect("open");
    let lsns = append_all(&wal, &[payload(1, 10), payload(2, 10), payload(3, 10)]);
    let pieces: Vec<Vec<u8>> = (0..5u8).map(|n| vec![n; 1000 + usize::from(n)]).collect();
    wal.install_snapshot_with(lsns[1], |writer: &mut SnapshotWriter| {
        for piece in &pieces {
            writer
                .write(piece)
                .map_err(|error| WalError::io("writing", Path::new("test"), error))?;
        }
        Ok::<_, WalError>(())
    })
    .expect("install");
    // A later one that fails half-way leaves no file, and the first one stands.
    let failed = wal.install_snapshot_with(lsns[2], |writer: &mut SnapshotWriter| {
        writer
            .write(b"half")
            .map_err(|error| WalError::io("writing", Path::new("test"), error))?;
        Err(WalError::InvalidOptions(
            "the payload's producer failed".into(),
        ))
    });
    assert!(
        matches!(failed, Err(WalError::InvalidOptions(_))),
        "{failed:?}"
    );
    let names = disk.list(&sim_dir()).expect("list");
    assert!(
        names.iter().all(|name| !name.ends_with(".tmp")),
        "{names:?}"
    );
    wal.close().expect("close");
    let (_wal, recovered) = open_sim(&disk, small_options()).expect("reopen");
    assert_eq!(recovered.snapshot, Some((lsns[1], pieces.concat())));
    assert_eq!(recovered.records, vec![(lsns[2], payload(3, 10))]);
}
