//! Fuzz targets for every decoder of outside input, on stable Rust with proptest:
//! log segments and snapshots (through recovery, as `Wal::open` and
//! `storage::durable::open` read them), the storage codec's records down to domain
//! values and `AdminState::apply`, API keys (`auth::authenticate`), configuration
//! files (`Settings::parse` and `Config::resolve`), and the wire conversions of
//! `api::convert` and lease ids. Each target feeds arbitrary input and mutations of
//! valid input, and checks that the decoder answers `Ok` or a clean error: it never
//! panics, and no single allocation exceeds [`ALLOCATION_BYTES_MAX`] (a length field
//! that claims 4 GiB must not make the reader allocate 4 GiB). Where a decoder accepts
//! input, the value re-encodes to what was read.
//!
//! The audit page token is fuzzed next to the audit record, not here.
//!
//! Cases per target: [`CASES_DEFAULT`] (seconds in the test profile, for CI), or
//! `PROPTEST_CASES=N` for a long run by hand, e.g.
//! `PROPTEST_CASES=200000 cargo test --release --test fuzz_decoders`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use prost::Message;

use seatbroker::api::convert;
use seatbroker::auth::{self, OperatorKey};
use seatbroker::config::{Config, Settings};
use seatbroker::domain::LeaseId;
use seatbroker::domain::{AdminState, ApiKeyId, Command, Email, OrgId, Quota};
use seatbroker::leases::{LeaseTiming, RecoveringLeases, UnobservedLeases};
use seatbroker::storage::codec::{self, LogBody};
use seatbroker::storage::durable;
use seatbroker::wal::{FileSystem, SimulatedDisk, Wal, WalOptions};

/// Cases per target unless `PROPTEST_CASES` says otherwise.
const CASES_DEFAULT: u32 = 2_000;
/// The recovery targets open a log per case (a writer thread each): fewer cases.
const RECOVERY_CASES_DEFAULT: u32 = 1_000;
/// Largest single allocation any target may make, whatever the input: generous for
/// inputs of a few KiB (the whole file is read, records are copied), far below what a
/// forged length field would ask for.
const ALLOCATION_BYTES_MAX: usize = 16 * 1024 * 1024;

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default);
    ProptestConfig::with_cases(cases)
}

// ---------------------------------------------------------------------------------
// The largest allocation made by the current thread, for the allocation bound.

struct TrackLargest;

thread_local! {
    static LARGEST_ALLOCATION: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation(bytes: usize) {
    let _ = LARGEST_ALLOCATION.try_with(|largest| largest.set(largest.get().max(bytes)));
}

unsafe impl GlobalAlloc for TrackLargest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: TrackLargest = TrackLargest;

/// Runs `decode` and fails if it made an allocation larger than the bound.
fn bounded<T>(what: &str, decode: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    LARGEST_ALLOCATION.with(|largest| largest.set(0));
    let value = decode();
    let largest = LARGEST_ALLOCATION.with(Cell::get);
    prop_assert!(
        largest <= ALLOCATION_BYTES_MAX,
        "{what} allocated {largest} bytes at once"
    );
    Ok(value)
}

/// Small mutations of valid bytes: flip, overwrite with 0xff (a huge length), zero a
/// range, truncate, insert.
#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Saturate { at: usize, len: usize },
    Zero { at: usize, len: usize },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        2 => (any::<usize>(), 1usize..9).prop_map(|(at, len)| Mutation::Saturate { at, len }),
        2 => (any::<usize>(), 1usize..600).prop_map(|(at, len)| Mutation::Zero { at, len }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        if bytes.is_empty() {
            break;
        }
        let len = bytes.len();
        match mutation {
            Mutation::Flip { at, bit } => bytes[at % len] ^= 1 << bit,
            Mutation::Saturate { at, len: run } => {
                let start = at % len;
                let end = (start + run).min(len);
                bytes[start..end].fill(0xff);
            }
            Mutation::Zero { at, len: run } => {
                let start = at % len;
                let end = (start + run).min(len);
                bytes[start..end].fill(0);
            }
            Mutation::Truncate { at } => bytes.truncate(at % len),
            Mutation::Insert {
                at,
                bytes: inserted,
            } => {
                let at = at % (len + 1);
                bytes.splice(at..at, inserted.iter().copied());
            }
        }
    }
    bytes
}

// ---------------------------------------------------------------------------------
// Log segments and snapshots, through `Wal::open` on a simulated disk.

fn wal_dir() -> PathBuf {
    PathBuf::from("/fuzz/wal")
}

fn small_wal_options() -> WalOptions {
    WalOptions {
        segment_bytes_max: 8 * 1024,
        preallocate_bytes: 0,
        ..WalOptions::default()
    }
}

/// The files of a valid log, made once by the real WAL: several segments (records
/// of many sizes, some across blocks), a snapshot, and the records after it.
fn valid_log_files() -> &'static [(String, Vec<u8>)] {
    static FILES: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let disk = SimulatedDisk::new();
        let dir = wal_dir();
        let (wal, _) = Wal::open(&dir, Arc::new(disk.clone()), small_wal_options()).unwrap();
        let sizes = [0usize, 1, 17, 300, 5000, 40_000, 2, 900];
        for (i, size) in sizes.iter().cycle().take(24).enumerate() {
            let ticket = wal.submit(vec![i as u8; *size]).unwrap();
            if i == 15 {
                let lsn = ticket.wait_blocking().unwrap();
                wal.install_snapshot(lsn, b"snapshot payload").unwrap();
            } else {
                ticket.wait_blocking().unwrap();
            }
        }
        wal.close().unwrap();
        let names = disk.list(&dir).unwrap();
        assert!(names.len() >= 3, "a log of several files: {names:?}");
        names
            .into_iter()
            .map(|name| {
                let bytes = disk.read(&dir.join(&name)).unwrap();
                (name, bytes)
            })
            .collect()
    })
}

/// A file name: a segment or a snapshot at an LSN from the edges of the range, or
/// a name the WAL does not own.
fn file_name() -> impl Strategy<Value = String> {
    let lsn = prop_oneof![
        Just(0u64),
        Just(1),
        1u64..64,
        (u64::MAX - 3)..=u64::MAX,
        Just(1u64 << 63),
        any::<u64>(),
    ];
    prop_oneof![
        4 => lsn.clone().prop_map(|lsn| format!("{lsn:020}.wal")),
        2 => lsn.prop_map(|lsn| format!("snapshot-{lsn:020}.snap")),
        1 => Just("leftover.wal.tmp".to_string()),
        1 => "[a-z.]{1,12}",
    ]
}

/// The masked CRC-32C of the format (see `src/wal/mod.rs`).
fn masked_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
        .rotate_right(15)
        .wrapping_add(0xa282_ead8)
}

/// A segment header for `lsn`, valid, so that what follows it is read.
fn segment_header(lsn: u64) -> Vec<u8> {
    let mut header = b"SBWALSG1".to_vec();
    header.extend_from_slice(&lsn.to_le_bytes());
    let crc = masked_crc(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    header.extend_from_slice(&[0; 4]);
    header
}

/// A snapshot header for `lsn` claiming `length` payload bytes (possibly a lie).
fn snapshot_header(lsn: u64, length: u64, payload: &[u8]) -> Vec<u8> {
    let mut header = b"SBSNAPS1".to_vec();
    header.extend_from_slice(&lsn.to_le_bytes());
    header.extend_from_slice(&length.to_le_bytes());
    header.extend_from_slice(&masked_crc(payload).to_le_bytes());
    let crc = masked_crc(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    header
}

/// The LSN in a file name, if it has one.
fn lsn_of(name: &str) -> Option<u64> {
    let digits = name
        .strip_suffix(".wal")
        .or_else(|| name.strip_prefix("snapshot-")?.strip_suffix(".snap"))?;
    digits.parse().ok()
}

/// Contents for a file named `name`: arbitrary bytes, or a valid header for the
/// LSN in its name followed by arbitrary bytes (valid fragments are rare at random,
/// so some are forged: a fragment header with a correct CRC and any type/length).
fn file_contents(name: String) -> impl Strategy<Value = (String, Vec<u8>)> {
    let lsn = lsn_of(&name).unwrap_or(1);
    let snapshot = name.starts_with("snapshot-");
    let bytes = prop::collection::vec(any::<u8>(), 0..3000);
    let forged_fragments = prop::collection::vec(
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..64)),
        0..6,
    );
    (0u8..3, bytes, forged_fragments, any::<u64>(), any::<u64>()).prop_map(
        move |(kind, bytes, fragments, lie, prefix_lsn)| {
            let contents = match (kind, snapshot) {
                (0, _) => bytes,
                (_, true) => {
                    let length = if kind == 1 { bytes.len() as u64 } else { lie };
                    let mut file = snapshot_header(lsn, length, &bytes);
                    file.extend_from_slice(&bytes);
                    file
                }
                (_, false) => {
                    let mut file = segment_header(lsn);
                    for (fragment_type, data) in fragments {
                        let mut body = if kind == 1 {
                            // A record body: LSN prefix and group bounds, then data.
                            let mut body = prefix_lsn.to_le_bytes().to_vec();
                            body.extend_from_slice(&lie.to_le_bytes());
                            body
                        } else {
                            Vec::new()
                        };
                        body.extend_from_slice(&data);
                        let fragment_type = fragment_type % 6;
                        let length = (body.len() as u16).to_le_bytes();
                        let mut crc_input = vec![fragment_type];
                        crc_input.extend_from_slice(&length);
                        crc_input.extend_from_slice(&body);
                        file.extend_from_slice(&masked_crc(&crc_input).to_le_bytes());
                        file.extend_from_slice(&length);
                        file.push(fragment_type);
                        file.extend_from_slice(&body);
                    }
                    file.extend_from_slice(&bytes[..bytes.len().min(40)]);
                    file
                }
            };
            (name.clone(), contents)
        },
    )
}

fn arbitrary_files() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::vec(file_name().prop_flat_map(file_contents), 1..4)
}

/// The valid log with some files mutated, renamed to another LSN, or left out.
fn mutated_valid_files() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let count = valid_log_files().len();
    (
        prop::collection::vec(prop::collection::vec(mutation(), 0..4), count),
        prop::collection::vec(prop::option::weighted(0.1, file_name()), count),
        prop::collection::vec(prop::bool::weighted(0.1), count),
    )
        .prop_map(|(mutations, renames, dropped)| {
            let mut files = Vec::new();
            for (index, (name, bytes)) in valid_log_files().iter().enumerate() {
                if dropped[index] {
                    continue;
                }
                let name = renames[index].clone().unwrap_or_else(|| name.clone());
                files.push((name, mutate(bytes.clone(), &mutations[index])));
            }
            files
        })
}

fn disk_with(files: &[(String, Vec<u8>)]) -> SimulatedDisk {
    let disk = SimulatedDisk::new();
    let dir = wal_dir();
    disk.create_dir_all(&dir).unwrap();
    for (name, bytes) in files {
        let mut file = disk.create(&dir.join(name)).unwrap();
        file.append(bytes).unwrap();
        file.sync_data().unwrap();
    }
    disk.sync_dir(&dir).unwrap();
    disk
}

/// Opens the log on `files`: recovery either refuses cleanly or yields records with
/// consecutive LSNs that a following append continues.
fn check_wal_open(files: &[(String, Vec<u8>)]) -> Result<(), TestCaseError> {
    let disk = disk_with(files);
    let opened = bounded("Wal::open", || {
        Wal::open(&wal_dir(), Arc::new(disk.clone()), small_wal_options())
    })?;
    let Ok((wal, recovered)) = opened else {
        return Ok(());
    };
    for pair in recovered.records.windows(2) {
        prop_assert_eq!(pair[0].0 + 1, pair[1].0);
    }
    let appended = wal.submit(b"after recovery".to_vec());
    if let Ok(ticket) = appended {
        let _ = ticket.wait_blocking();
    }
    let _ = wal.close();
    Ok(())
}

proptest! {
    #![proptest_config(cases(RECOVERY_CASES_DEFAULT))]

    #[test]
    fn wal_recovery_takes_arbitrary_files(files in arbitrary_files()) {
        check_wal_open(&files)?;
    }

    #[test]
    fn wal_recovery_takes_mutated_valid_logs(files in mutated_valid_files()) {
        check_wal_open(&files)?;
    }
}

// ---------------------------------------------------------------------------------
// The storage codec: records and snapshots, down to domain values and `apply`.

/// Strings a record field may hold: valid-looking ids and emails (so that later
/// records find what earlier ones made), hostile text, and anything.
fn field_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["acme", "globex", "initech"]).prop_map(String::from),
        3 => prop::sample::select(vec!["a@acme.test", "b@acme.test", "c@globex.test", "ÄLICE@acme.test"])
            .prop_map(String::from),
        1 => Just(String::new()),
        1 => Just("x".repeat(300)),
        1 => "[a-f0-9]{12}",
        1 => "\\PC{0,24}",
        1 => any::<String>(),
    ]
}

fn quota_record() -> impl Strategy<Value = Option<codec::QuotaRecord>> {
    prop::option::of(
        (
            prop_oneof![0u32..4, any::<u32>()],
            prop_oneof![0u32..4, any::<u32>()],
            any::<i64>(),
        )
            .prop_map(
                |(kse_seats, kre_sessions, expires_at_unix_ms)| codec::QuotaRecord {
                    kse_seats,
                    kre_sessions,
                    expires_at_unix_ms,
                },
            ),
    )
}

fn small_i32() -> impl Strategy<Value = i32> {
    prop_oneof![4 => -1i32..5, 1 => any::<i32>()]
}

fn lease_id_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 16),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

fn admin_record() -> impl Strategy<Value = codec::legacy::AdminRecord> {
    (
        (0i32..15, field_text(), field_text(), field_text()),
        (
            prop::collection::vec(field_text(), 0..4),
            small_i32(),
            small_i32(),
            quota_record(),
        ),
        (
            field_text(),
            field_text(),
            field_text(),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 32),
                prop::collection::vec(any::<u8>(), 0..40)
            ],
            any::<i64>(),
        ),
    )
        .prop_map(
            |(
                (kind, org, display_name, email),
                (emails, role, product, quota),
                (to_email, key_id, label, secret_sha256, created_at_unix_ms),
            )| codec::legacy::AdminRecord {
                kind,
                org,
                display_name,
                email,
                emails,
                role,
                product,
                quota,
                to_email,
                key_id,
                label,
                secret_sha256,
                created_at_unix_ms,
            },
        )
}

/// A command record of every kind (and none), from the same random fields.
fn command_record() -> impl Strategy<Value = codec::CommandRecord> {
    use codec::CommandBody as Body;
    admin_record().prop_map(|r| {
        let member = || codec::MemberRecord {
            email: r.email.clone(),
            role: r.role,
        };
        let licenses = || codec::LicensesRecord {
            product: r.product,
            emails: r.emails.clone(),
        };
        let body = match r.kind {
            1 => Some(Body::CreateOrganization(codec::NewOrganizationRecord {
                display_name: r.display_name.clone(),
                owner: r.email.clone(),
                quota: r.quota,
            })),
            2 => r.quota.map(Body::SetQuota),
            3 => Some(Body::AddMember(member())),
            4 => Some(Body::RemoveMember(codec::EmailRecord {
                email: r.email.clone(),
            })),
            5 => Some(Body::SetRole(member())),
            6 => Some(Body::AssignLicenses(licenses())),
            7 => Some(Body::UnassignLicenses(licenses())),
            8 => Some(Body::TransferLicense(codec::TransferRecord {
                product: r.product,
                from: r.email.clone(),
                to: r.to_email.clone(),
            })),
            9 => Some(Body::CreateApiKey(stored_api_key(&r))),
            10 => Some(Body::RevokeApiKey(codec::KeyIdRecord {
                key_id: r.key_id.clone(),
            })),
            11 => r.quota.clone().map(|q| {
                Body::UpdateQuota(codec::QuotaUpdateRecord {
                    kse_seats: (q.kse_seats % 2 == 0).then_some(q.kse_seats),
                    kre_sessions: (q.kre_sessions % 2 == 0).then_some(q.kre_sessions),
                    expires_at_unix_ms: (q.expires_at_unix_ms % 2 == 0)
                        .then_some(q.expires_at_unix_ms),
                })
            }),
            12 => Some(Body::RenameOrganization(codec::DisplayNameRecord {
                display_name: r.display_name.clone(),
            })),
            13 => Some(Body::DeleteOrganization(
                codec::OrganizationDeletedRecord {},
            )),
            _ => None,
        };
        codec::CommandRecord {
            org: r.org.clone(),
            body,
        }
    })
}

fn stored_api_key(r: &codec::legacy::AdminRecord) -> codec::StoredApiKey {
    codec::StoredApiKey {
        email: r.email.clone(),
        key_id: r.key_id.clone(),
        label: r.label.clone(),
        secret_sha256: r.secret_sha256.clone(),
        created_at_unix_ms: r.created_at_unix_ms,
        // Arbitrary text as a bound subject: decoding re-checks it.
        client_cert_subject: (!r.to_email.is_empty()).then(|| r.to_email.clone()),
    }
}

fn lease_record() -> impl Strategy<Value = codec::LeaseRecord> {
    (
        (field_text(), lease_id_bytes(), any::<u64>(), small_i32()),
        (
            field_text(),
            field_text(),
            field_text(),
            field_text(),
            any::<i64>(),
        ),
    )
        .prop_map(
            |(
                (org, lease_id, generation, product),
                (email, engine_id, hostname, label, acquired_at_unix_ms),
            )| codec::LeaseRecord {
                org,
                lease_id,
                generation,
                product,
                email,
                engine_id,
                hostname,
                label,
                acquired_at_unix_ms,
            },
        )
}

fn log_body() -> impl Strategy<Value = LogBody> {
    prop_oneof![
        3 => admin_record().prop_map(LogBody::LegacyAdmin),
        3 => command_record().prop_map(LogBody::Command),
        2 => lease_record().prop_map(LogBody::LeaseGranted),
        1 => (field_text(), lease_id_bytes(), any::<u64>()).prop_map(|(org, lease_id, generation)| {
            LogBody::LeaseEnded(codec::LeaseEndRecord { org, lease_id, generation })
        }),
        1 => prop_oneof![0u64..4, any::<u64>()].prop_map(|epoch| LogBody::Boot(codec::BootRecord { epoch })),
    ]
}

/// A log record's bytes: a structured record encoded, possibly mutated, or anything.
fn log_record_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => log_body().prop_map(|body| codec::LogRecord { body: Some(body) }.encode_to_vec()),
        2 => (log_body(), prop::collection::vec(mutation(), 1..4)).prop_map(|(body, mutations)| {
            mutate(codec::LogRecord { body: Some(body) }.encode_to_vec(), &mutations)
        }),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

fn snapshot_bytes() -> impl Strategy<Value = Vec<u8>> {
    let organization = (
        (field_text(), field_text(), quota_record()),
        (
            prop::collection::vec(
                (field_text(), small_i32())
                    .prop_map(|(email, role)| codec::MemberRecord { email, role }),
                0..4,
            ),
            prop::collection::vec(field_text(), 0..3),
            prop::collection::vec(field_text(), 0..3),
            prop::collection::vec(admin_record().prop_map(|r| stored_api_key(&r)), 0..3),
        ),
    )
        .prop_map(
            |((org, display_name, quota), (members, kse_assigned, kre_assigned, api_keys))| {
                codec::OrganizationRecord {
                    org,
                    display_name,
                    quota,
                    members,
                    kse_assigned,
                    kre_assigned,
                    api_keys,
                }
            },
        );
    let snapshot = (
        prop::collection::vec(organization, 0..3),
        prop::collection::vec(lease_record(), 0..3),
        prop_oneof![0u64..4, any::<u64>()],
    )
        .prop_map(|(organizations, leases, boot_epoch)| {
            codec::SnapshotRecord {
                organizations,
                leases,
                boot_epoch,
            }
            .encode_to_vec()
        })
        .boxed();
    prop_oneof![
        4 => snapshot.clone(),
        2 => (snapshot, prop::collection::vec(mutation(), 1..4))
            .prop_map(|(bytes, mutations)| mutate(bytes, &mutations)),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

/// Decodes and applies `records` as replay does, on one admin state.
fn replay(records: &[Vec<u8>]) -> Result<(), TestCaseError> {
    let mut state = AdminState::default();
    // One scratch for all records, as recovery reuses it: nothing of one may leak
    // into the next.
    let mut scratch = codec::LogScratch::default();
    for bytes in records {
        let decoded = bounded("decode_log_record", || codec::decode_log_record(bytes))?;
        let reused = bounded("decode_log_record_reusing", || {
            codec::decode_log_record_reusing(bytes, &mut scratch)
        })?;
        check_reused_decode(&decoded, reused, &scratch)?;
        let Ok(body) = decoded else {
            continue;
        };
        match body {
            LogBody::Command(record) => replay_command(&mut state, codec::decode_command(&record))?,
            LogBody::LegacyAdmin(record) => {
                replay_command(&mut state, codec::legacy::decode_command(&record))?
            }
            LogBody::LeaseGranted(record) => {
                let _ = codec::lease_from(&record);
            }
            LogBody::LeaseEnded(record) => {
                let _ = codec::lease_id_from(&record.lease_id);
            }
            LogBody::Boot(_) => {}
        }
    }
    Ok(())
}

/// Applies a command that decoded; it re-encodes (in the current format) to a record
/// that decodes to it.
fn replay_command(
    state: &mut AdminState,
    command: Result<Command, codec::DecodeError>,
) -> Result<(), TestCaseError> {
    let Ok(command) = command else {
        return Ok(());
    };
    let again = codec::decode_log_record(&codec::encode_command(&command));
    let Ok(LogBody::Command(again)) = again else {
        return Err(TestCaseError::fail("a command does not re-encode"));
    };
    prop_assert_eq!(codec::decode_command(&again).ok(), Some(command.clone()));
    let _ = state.apply(&command);
    Ok(())
}

/// Recovery's allocation-free decoder agrees with the plain one on every input.
fn check_reused_decode(
    decoded: &Result<LogBody, codec::DecodeError>,
    reused: Result<codec::ReusedLogBody, codec::DecodeError>,
    scratch: &codec::LogScratch,
) -> Result<(), TestCaseError> {
    use codec::ReusedLogBody;
    match (decoded, reused) {
        (Err(_), Err(_)) => {}
        (Ok(LogBody::LeaseGranted(record)), Ok(ReusedLogBody::LeaseGranted)) => {
            prop_assert_eq!(record, &scratch.granted);
        }
        (Ok(LogBody::LeaseEnded(record)), Ok(ReusedLogBody::LeaseEnded)) => {
            prop_assert_eq!(record, &scratch.ended);
        }
        (Ok(body), Ok(ReusedLogBody::Other(other))) => prop_assert_eq!(body, &*other),
        (decoded, reused) => {
            let reused = reused.map(|body| match body {
                ReusedLogBody::LeaseGranted => "a lease grant".to_string(),
                ReusedLogBody::LeaseEnded => "a lease end".to_string(),
                ReusedLogBody::Other(other) => format!("{other:?}"),
            });
            return Err(TestCaseError::fail(format!(
                "the decoders disagree: {decoded:?} against {reused:?}"
            )));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(CASES_DEFAULT))]

    #[test]
    fn log_records_decode_and_apply_or_refuse_cleanly(
        records in prop::collection::vec(log_record_bytes(), 1..12),
    ) {
        replay(&records)?;
    }

    #[test]
    fn snapshots_decode_or_refuse_cleanly(bytes in snapshot_bytes()) {
        let decoded = bounded("decode_snapshot", || codec::decode_snapshot(&bytes))?;
        if let Ok((state, leases, epoch)) = decoded {
            // What decodes encodes back to a snapshot that decodes to the same state.
            let records = Vec::new();
            let again = codec::encode_snapshot(&state, records, epoch);
            let (state_again, _, epoch_again) = codec::decode_snapshot(&again)
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
            prop_assert_eq!(epoch, epoch_again);
            prop_assert_eq!(
                codec::encode_snapshot(&state_again, Vec::new(), epoch),
                again
            );
            drop(leases);
        }
    }
}

/// Full recovery (`storage::durable::open`): the records (and a snapshot payload)
/// written through the real log, then replayed into the admin state and lease table.
fn check_durable_open(
    records: Vec<Vec<u8>>,
    snapshot: Option<(usize, Vec<u8>)>,
) -> Result<(), TestCaseError> {
    let disk = SimulatedDisk::new();
    let dir = wal_dir();
    let (wal, _) = Wal::open(&dir, Arc::new(disk.clone()), small_wal_options()).unwrap();
    let mut lsns = Vec::new();
    for record in records {
        lsns.push(wal.submit(record).unwrap().wait_blocking().unwrap());
    }
    if let Some((at, payload)) = snapshot
        && !lsns.is_empty()
    {
        wal.install_snapshot(lsns[at % lsns.len()], &payload)
            .unwrap();
    }
    wal.close().unwrap();
    drop(wal);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let leases = RecoveringLeases::new(
        LeaseTiming::from_ttl(Duration::from_secs(30)),
        seatbroker::limits::LEASES_PER_ORG_MAX,
    );
    let opened = bounded("durable::open", || {
        runtime.block_on(durable::open(
            &dir,
            Arc::new(disk.clone()),
            small_wal_options(),
            leases,
            Arc::new(UnobservedLeases),
        ))
    })?;
    if let Ok(opened) = opened {
        let _ = opened.journal.wal().close();
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(RECOVERY_CASES_DEFAULT))]

    #[test]
    fn recovery_replays_arbitrary_records_or_refuses_cleanly(
        records in prop::collection::vec(log_record_bytes(), 0..10),
        snapshot in prop::option::weighted(0.3, (any::<usize>(), snapshot_bytes())),
    ) {
        check_durable_open(records, snapshot)?;
    }
}

// ---------------------------------------------------------------------------------
// API keys.

const OPERATOR_TEXT: &str = "fuzz-operator-key-0123456789abcdef0123456789";

/// An admin state with one organization and one member key, and that key's text.
fn state_with_a_key() -> &'static (AdminState, String) {
    static STATE: OnceLock<(AdminState, String)> = OnceLock::new();
    STATE.get_or_init(|| {
        let org = OrgId::parse("acme").unwrap();
        let owner = Email::parse("owner@acme.test").unwrap();
        let key = auth::generate_member_key();
        let mut state = AdminState::default();
        state
            .apply(&Command::CreateOrganization {
                org: org.clone(),
                display_name: "Acme".into(),
                owner: owner.clone(),
                quota: Quota::default(),
            })
            .unwrap();
        state
            .apply(&Command::CreateApiKey {
                org,
                key_id: ApiKeyId(key.id.as_str().into()),
                email: owner,
                label: String::new(),
                secret_sha256: key.sha256,
                created_at_unix_ms: 0,
                client_cert_subject: None,
            })
            .unwrap();
        (state, key.full_text)
    })
}

fn token() -> impl Strategy<Value = String> {
    let valid = state_with_a_key().1.clone();
    prop_oneof![
        3 => prop::collection::vec(mutation(), 1..4).prop_map(move |mutations| {
            String::from_utf8_lossy(&mutate(valid.clone().into_bytes(), &mutations)).into_owned()
        }),
        2 => "sbk_[0-9a-f]{0,14}_[0-9a-fA-F_]{0,60}",
        1 => "sbo_\\PC{0,70}",
        1 => any::<String>(),
        1 => prop::collection::vec(any::<char>(), 0..5000).prop_map(String::from_iter),
    ]
}

proptest! {
    #![proptest_config(cases(CASES_DEFAULT))]

    #[test]
    fn api_keys_authenticate_or_are_refused_cleanly(token in token()) {
        let (state, valid) = state_with_a_key();
        let operator = OperatorKey::from_text(OPERATOR_TEXT).unwrap();
        let answer = bounded("authenticate", || auth::authenticate(state, &operator, &token, None))?;
        // Only the real key (or the operator's) authenticates.
        prop_assert_eq!(answer.is_ok(), token == *valid || token == OPERATOR_TEXT);
    }
}

// ---------------------------------------------------------------------------------
// Configuration files.

const VALID_CONFIG: &str = r#"listen = "127.0.0.1:50051"
data_dir = "/var/lib/seatbroker"
lease_ttl_ms = 30000
shutdown_grace_ms = 10000
insecure = false

[tls]
cert = "/etc/seatbroker/cert.pem"
key = "/etc/seatbroker/key.pem"

[log]
format = "json"
filter = "info,seatbroker=debug"

[metrics]
listen = "127.0.0.1:9464"
per_org = true

[limits]
request_bytes_max = 1048576
concurrent_streams_per_connection_max = 128
keepalive_interval_ms = 30000
keepalive_timeout_ms = 10000
leases_per_org_max = 2000000

[audit]
file_bytes_max = 67108864
files_max = 16

[wal]
commit_delay_us = 500
"#;

fn config_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(mutation(), 1..6).prop_map(|mutations| {
            String::from_utf8_lossy(&mutate(VALID_CONFIG.as_bytes().to_vec(), &mutations)).into_owned()
        }),
        1 => "[a-z_\\[\\]=\". 0-9\n{},]{0,300}",
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(cases(CASES_DEFAULT))]

    #[test]
    fn configuration_files_parse_or_are_refused_cleanly(text in config_text()) {
        let parsed = bounded("Settings::parse", || Settings::parse(&text))?;
        if let Ok(settings) = parsed {
            let _ = bounded("Config::resolve", || Config::resolve(settings))?;
        }
    }
}

#[test]
fn the_valid_configuration_of_the_config_target_resolves() {
    let settings = Settings::parse(VALID_CONFIG).expect("the seed file parses");
    assert!(settings.tls.cert.is_some() && settings.wal.commit_delay_us == 500);
}

// ---------------------------------------------------------------------------------
// Wire conversions and lease ids.

fn lease_id_text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "ls_[+]?[0-9a-fA-F+\\-_ ]{30,34}",
        1 => any::<u128>().prop_map(|id| LeaseId(id).to_string()),
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(cases(CASES_DEFAULT))]

    #[test]
    fn lease_ids_parse_only_their_canonical_form(text in lease_id_text()) {
        if let Ok(id) = LeaseId::parse(&text) {
            // Hex digits in either case, nothing else: one id, one spelling (bar case).
            prop_assert_eq!(id.to_string(), text.to_ascii_lowercase());
        }
    }

    #[test]
    fn wire_conversions_accept_or_refuse_cleanly(
        text in any::<String>(),
        texts in prop::collection::vec(field_text(), 0..8),
        raw in any::<i32>(),
        window in any::<u32>(),
        from in any::<i64>(),
        to in any::<i64>(),
        quota in (any::<u32>(), any::<u32>(), any::<i64>()),
    ) {
        bounded("convert", || {
            let _ = convert::org_id(&text);
            let _ = convert::email_batch(&texts);
            let _ = convert::product(raw);
            let _ = convert::product_filter(raw);
            let _ = convert::role(raw, None);
            let _ = convert::usage_window_seconds(window);
            let _ = convert::time_range(from, to);
            let raw_quota = seatbroker::proto::Quota {
                kse_seats: quota.0,
                kre_sessions: quota.1,
                expires_at_unix_ms: quota.2,
            };
            let _ = convert::new_quota(Some(raw_quota), from, convert::past_expiry(false));
            let _ = convert::quota_change(
                &seatbroker::proto::SetQuotaRequest {
                    kse_seats: Some(quota.0),
                    expires_at_unix_ms: Some(quota.2),
                    ..Default::default()
                },
                from,
            );
            let _ = Email::parse(&text);
        })?;
    }
}

/// The message of an error that was expected.
fn refusal<T, E: std::fmt::Display>(result: Result<T, E>) -> String {
    match result {
        Ok(_) => panic!("expected a refusal"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn the_allocation_bound_sees_a_large_allocation() {
    let large = bounded("a large vector", || {
        vec![0u8; ALLOCATION_BYTES_MAX + 1].len()
    });
    assert!(large.is_err());
}

/// Found by `wal_recovery_takes_arbitrary_files`: a segment named for LSN 0 (or near
/// u64::MAX) with a valid header made recovery overflow (`next_lsn - 1`).
#[test]
fn a_segment_named_for_lsn_0_or_the_top_of_the_range_is_refused() {
    for lsn in [0, u64::MAX] {
        let files = [(format!("{lsn:020}.wal"), segment_header(lsn))];
        let opened = Wal::open(&wal_dir(), Arc::new(disk_with(&files)), small_wal_options());
        let error = refusal(opened);
        assert!(error.contains("outside 1..="), "{error}");
    }
}

/// Found by `recovery_replays_arbitrary_records_or_refuses_cleanly`: a boot record
/// with an epoch past the generation's high bits made recovery panic.
#[test]
fn a_boot_epoch_out_of_range_is_refused() {
    let boot = codec::LogRecord {
        body: Some(LogBody::Boot(codec::BootRecord { epoch: 1 << 30 })),
    };
    let disk = SimulatedDisk::new();
    let (wal, _) = Wal::open(&wal_dir(), Arc::new(disk.clone()), small_wal_options()).unwrap();
    wal.submit(boot.encode_to_vec())
        .unwrap()
        .wait_blocking()
        .unwrap();
    wal.close().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let leases = RecoveringLeases::new(
        LeaseTiming::from_ttl(Duration::from_secs(30)),
        seatbroker::limits::LEASES_PER_ORG_MAX,
    );
    let opened = runtime.block_on(durable::open(
        &wal_dir(),
        Arc::new(disk),
        small_wal_options(),
        leases,
        Arc::new(UnobservedLeases),
    ));
    let error = refusal(opened);
    assert!(
        error.contains("boot epoch 1073741824 is out of range"),
        "{error}"
    );
}

#[test]
fn a_lease_id_with_a_sign_is_refused() {
    let signed = format!("ls_+{}", "0".repeat(31));
    assert!(
        LeaseId::parse(&signed).is_err(),
        "{signed} is not a lease id"
    );
}

#[test]
fn the_valid_log_of_the_recovery_targets_recovers() {
    let files = valid_log_files();
    let disk = disk_with(files);
    let (wal, recovered) =
        Wal::open(&wal_dir(), Arc::new(disk), small_wal_options()).expect("the seed log opens");
    assert!(recovered.snapshot.is_some());
    assert!(!recovered.records.is_empty());
    wal.close().unwrap();
}
