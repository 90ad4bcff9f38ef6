//! Snapshots of a cluster's state in etcd, which keep the space the cluster uses in
//! etcd bounded under endless churn.
//!
//! The leader cuts a snapshot after commit group `seq` (`EtcdJournal::cut`, under the
//! admin write lock) and encodes it as the local log does
//! (`storage::durable::encode_snapshot`: the admin state, then the live leases a few
//! at a time). The bytes go to etcd in chunks of [`CHUNK_BYTES`] under
//! `/snapshot/<seq>/<chunk>`, each put in a transaction fenced on the election key.
//! Then one fenced transaction writes the [`Manifest`] (the seq it covers, its chunk
//! count and size) and deletes the log keys through `seq` and every older snapshot's
//! chunks: a snapshot is complete exactly when the manifest names it, and the log it
//! covers goes in the same step. Chunks of a snapshot whose manifest was never written
//! (the leader died meanwhile) go with the next snapshot's manifest.
//!
//! Deleted and overwritten keys keep their old versions in etcd's history until it is
//! compacted: the leader compacts it up to the manifest's revision after a snapshot,
//! at most every `limits::CLUSTER_COMPACTION_INTERVAL_MS`. A standby whose watch was
//! behind that revision reloads from the snapshot (`super::recovery`).

use std::io;

use tokio::sync::mpsc;

use super::etcd::{self, Etcd, pb};
use super::{ClusterError, Keys};

/// The most bytes of a snapshot in one etcd value: below etcd's default 1.5 MiB
/// request limit, with room for the key and the transaction.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// etcd's default request size limit (`--max-request-bytes`).
const ETCD_REQUEST_BYTES_MAX: usize = 3 * 512 * 1024;
const _: () = assert!(CHUNK_BYTES + 64 * 1024 <= ETCD_REQUEST_BYTES_MAX);
/// Chunks read per etcd call when a snapshot is loaded (within
/// `etcd::RESPONSE_BYTES_MAX`).
const CHUNKS_PER_READ: i64 = 16;
const _: () = assert!(CHUNKS_PER_READ as usize * CHUNK_BYTES * 2 <= etcd::RESPONSE_BYTES_MAX);
/// Chunks encoded ahead of the etcd writes: the memory a snapshot holds.
const CHUNKS_IN_FLIGHT: usize = 2;

/// Which snapshot is complete: the log through `seq` is in its `chunks` chunks of
/// `bytes` bytes in all. Stored as text (`seq=.. chunks=.. bytes=.. leases=..`), so
/// `etcdctl get` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manifest {
    pub seq: u64,
    pub chunks: u32,
    pub bytes: u64,
    pub leases: u64,
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "seq={} chunks={} bytes={} leases={}",
            self.seq, self.chunks, self.bytes, self.leases
        )
        .into_bytes()
    }

    pub fn parse(value: &[u8]) -> Result<Manifest, String> {
        let text = std::str::from_utf8(value).map_err(|e| e.to_string())?;
        let mut fields = text.split(' ').map(|field| field.split_once('='));
        let mut next = |name: &str| -> Result<u64, String> {
            match fields.next() {
                Some(Some((key, value))) if key == name => {
                    value.parse().map_err(|e| format!("{name}: {e}"))
                }
                _ => Err(format!("no {name} in {text:?}")),
            }
        };
        Ok(Manifest {
            seq: next("seq")?,
            chunks: u32::try_from(next("chunks")?).map_err(|e| e.to_string())?,
            bytes: next("bytes")?,
            leases: next("leases")?,
        })
    }
}

/// A snapshot written to etcd.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub manifest: Manifest,
    /// etcd's revision after the manifest's transaction.
    pub revision: i64,
}

/// Encodes a snapshot into the sink it is given (`storage::durable::encode_snapshot`
/// with the leader's state), returning its size in bytes and its leases; run on the
/// blocking pool, its output cut into chunks of [`CHUNK_BYTES`].
pub type Encode =
    Box<dyn FnOnce(&mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<(usize, u64)> + Send>;

/// Writes the snapshot that `encode` produces (on the blocking pool, handing its
/// pieces to the sink it is given) as the snapshot covering the log through `seq`,
/// every write fenced on the election key's create revision `fence`; then its
/// manifest, deleting the log and the older snapshots it replaces.
pub async fn write(
    etcd: &Etcd,
    keys: &Keys,
    fence: i64,
    seq: u64,
    encode: Encode,
) -> Result<Written, ClusterError> {
    let (chunks_tx, mut chunks_rx) = mpsc::channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    let encoder = tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(CHUNK_BYTES);
        let gone = || io::Error::other("the etcd writer stopped");
        let mut sink = |mut piece: &[u8]| -> io::Result<()> {
            while !piece.is_empty() {
                let take = piece.len().min(CHUNK_BYTES - chunk.len());
                chunk.extend_from_slice(&piece[..take]);
                piece = &piece[take..];
                if chunk.len() == CHUNK_BYTES {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_BYTES));
                    chunks_tx.blocking_send(full).map_err(|_| gone())?;
                }
            }
            Ok(())
        };
        let totals = encode(&mut sink)?;
        if !chunk.is_empty() {
            chunks_tx.blocking_send(chunk).map_err(|_| gone())?;
        }
        Ok::<_, io::Error>(totals)
    });
    let mut chunks = 0u32;
    while let Some(chunk) = chunks_rx.recv().await {
        fenced(
            etcd,
            keys,
            fence,
            vec![etcd::put(keys.snapshot_chunk(seq, chunks), chunk, 0)],
        )
        .await?;
        chunks += 1;
    }
    let (bytes, leases) = encoder
        .await
        .map_err(|e| ClusterError::Snapshot(format!("the encoder ended early: {e}")))?
        .map_err(|e| ClusterError::Snapshot(format!("encoding: {e}")))?;
    let manifest = Manifest {
        seq,
        chunks,
        bytes: bytes as u64,
        leases,
    };
    let committed = fenced(
        etcd,
        keys,
        fence,
        vec![
            etcd::put(keys.manifest.clone(), manifest.encode(), 0),
            etcd::delete_range(keys.log_prefix.clone(), keys.log_key(seq + 1)),
            etcd::delete_range(keys.snapshot_prefix.clone(), keys.snapshot_chunk(seq, 0)),
        ],
    )
    .await?;
    Ok(Written {
        manifest,
        revision: committed.header.map(|h| h.revision).unwrap_or_default(),
    })
}

/// `ops` in one transaction that requires this leader's term.
async fn fenced(
    etcd: &Etcd,
    keys: &Keys,
    fence: i64,
    ops: Vec<pb::RequestOp>,
) -> Result<pb::TxnResponse, ClusterError> {
    let response = etcd
        .txn(pb::TxnRequest {
            compare: vec![etcd::created_at(&keys.election, fence)],
            success: ops,
            failure: vec![],
        })
        .await?;
    if !response.succeeded {
        return Err(ClusterError::LeadershipLost(
            "another node leads the cluster (a snapshot write's fence failed)".into(),
        ));
    }
    Ok(response)
}

/// The newest complete snapshot's manifest, if any, and etcd's revision it was read
/// at.
pub async fn read_manifest(
    etcd: &Etcd,
    keys: &Keys,
) -> Result<(Option<Manifest>, i64), ClusterError> {
    let response = etcd
        .range(&keys.manifest, &[], 0, 1)
        .await
        .map_err(ClusterError::from)?;
    let revision = response.header.map(|h| h.revision).unwrap_or_default();
    let manifest = match response.kvs.first() {
        Some(kv) => Some(
            Manifest::parse(&kv.value).map_err(|detail| ClusterError::Damaged {
                key: String::from_utf8_lossy(&keys.manifest).into_owned(),
                detail,
            })?,
        ),
        None => None,
    };
    Ok((manifest, revision))
}

/// The bytes of the snapshot `manifest` names, read at `revision`.
pub async fn read_chunks(
    etcd: &Etcd,
    keys: &Keys,
    manifest: &Manifest,
    revision: i64,
) -> Result<Vec<u8>, ClusterError> {
    let damaged = |detail: String| ClusterError::Damaged {
        key: String::from_utf8_lossy(&keys.snapshot_chunk(manifest.seq, 0)).into_owned(),
        detail,
    };
    let capacity = usize::try_from(manifest.bytes)
        .ok()
        .filter(|&bytes| bytes <= manifest.chunks as usize * CHUNK_BYTES)
        .ok_or_else(|| damaged(format!("{manifest:?} does not fit its chunks")))?;
    let mut payload = Vec::with_capacity(capacity);
    let end = keys.snapshot_chunk(manifest.seq, manifest.chunks);
    let mut next = 0u32;
    while next < manifest.chunks {
        let page = etcd
            .range(
                &keys.snapshot_chunk(manifest.seq, next),
                &end,
                revision,
                CHUNKS_PER_READ,
            )
            .await?;
        if page.kvs.is_empty() {
            return Err(damaged(format!(
                "chunk {next} of {} is missing",
                manifest.chunks
            )));
        }
        for kv in &page.kvs {
            if kv.key != keys.snapshot_chunk(manifest.seq, next) {
                return Err(damaged(format!("chunk {next} is missing")));
            }
            if payload.len() + kv.value.len() > capacity {
                return Err(damaged(
                    "the chunks hold more than the manifest says".into(),
                ));
            }
            payload.extend_from_slice(&kv.value);
            next += 1;
        }
    }
    if payload.len() != capacity {
        return Err(damaged(format!(
            "the chunks hold {} bytes, the manifest says {}",
            payload.len(),
            manifest.bytes
        )));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_parses_back_and_refuses_what_is_not_one() {
        let manifest = Manifest {
            seq: 41,
            chunks: 3,
            bytes: 2_500_000,
            leases: 9,
        };
        assert_eq!(Manifest::parse(&manifest.encode()), Ok(manifest));
        assert!(Manifest::parse(b"seq=1 chunks=2").is_err());
        assert!(Manifest::parse(b"chunks=2 seq=1 bytes=3 leases=4").is_err());
        assert!(Manifest::parse(b"seq=x chunks=2 bytes=3 leases=4").is_err());
    }
}
