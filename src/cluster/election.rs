//! Leader election on etcd. A node leads while its etcd lease holds the election key;
//! the key is created by a transaction that requires it absent (`create_revision ==
//! 0`), so at most one node holds it, and its create revision names the term: every
//! log write compares it ([`super::journal`]), so a deposed leader writes nothing.
//!
//! Standbys read the key every `standby_poll_interval` (its value is the leader's
//! advertised address, which they tell clients) and campaign when it is gone: when the
//! leader resigned (its lease revoked at shutdown) or its lease expired (a crash, a
//! partition), one TTL after its last renewal.
//!
//! The leader renews its lease four times a TTL and steps down when it has renewed
//! nothing for half a TTL ([`super::NodeOptions::step_down_after`]): it then answers
//! nothing as leader, at least half a TTL before its key can expire and a standby be
//! elected.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::etcd::{self, Etcd, pb};
use super::{Keys, NodeOptions};

/// This node's term as leader: the election key's create revision, the lease holding
/// it, and whether the leadership is lost.
pub struct Leadership {
    /// The election key's create revision: the fence of every log write.
    pub revision: i64,
    lease: i64,
    lost: Arc<LostSignal>,
    keepalive: JoinHandle<()>,
}

/// Set once, with the reason, when the leadership is lost.
pub struct LostSignal(watch::Sender<Option<String>>);

impl LostSignal {
    pub fn new() -> Arc<LostSignal> {
        Arc::new(LostSignal(watch::Sender::new(None)))
    }

    /// Marks the leadership lost (the first reason stays).
    pub fn lose(&self, reason: String) {
        if self.set(reason.clone()) {
            tracing::error!(%reason, "stepping down: this node no longer leads");
        }
    }

    /// Sets the reason unless one is set; whether it was.
    fn set(&self, reason: String) -> bool {
        self.0.send_if_modified(|lost| {
            if lost.is_some() {
                return false;
            }
            *lost = Some(reason);
            true
        })
    }

    pub fn is_lost(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// Resolves with the reason once the leadership is lost.
    pub async fn lost(&self) -> String {
        let mut receiver = self.0.subscribe();
        match receiver.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the leadership's signal closed".into(),
        }
    }
}

impl Leadership {
    pub fn signal(&self) -> &Arc<LostSignal> {
        &self.lost
    }

    /// Gives the leadership up at once (a graceful shutdown): the lease is revoked, so
    /// the election key goes and a standby is elected without waiting for a TTL.
    pub async fn resign(self, etcd: &Etcd) {
        self.lost.set("this node is shutting down".into());
        tracing::info!("resigning the leadership: revoking the election lease");
        self.keepalive.abort();
        if let Err(error) = etcd.revoke(self.lease).await {
            tracing::warn!(%error, "could not revoke the election lease; a standby takes over once it expires");
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// Campaigns until this node leads, telling `on_leader` the address of each leader it
/// sees meanwhile. etcd failures are retried (logged once a few seconds).
pub async fn campaign(
    etcd: &Etcd,
    keys: &Keys,
    options: &NodeOptions,
    on_leader: &(dyn Fn(&str) + Send + Sync),
) -> Leadership {
    let mut last_warning: Option<Instant> = None;
    let mut seen_leader = Vec::new();
    loop {
        match try_once(etcd, keys, options).await {
            Ok(Attempt::Elected(leadership)) => return leadership,
            Ok(Attempt::Led(leader)) => {
                if leader != seen_leader {
                    let text = String::from_utf8_lossy(&leader);
                    tracing::info!(leader = %text, "standing by");
                    on_leader(&text);
                    seen_leader = leader;
                }
            }
            Ok(Attempt::Lost) => {}
            Err(error) => {
                if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
                    tracing::warn!(%error, "etcd does not answer the campaign; retrying");
                    last_warning = Some(Instant::now());
                }
            }
        }
        tokio::time::sleep(options.standby_poll_interval()).await;
    }
}

enum Attempt {
    Elected(Leadership),
    /// Another node leads, at this address.
    Led(Vec<u8>),
    /// Another node won the race for a free key.
    Lost,
}

async fn try_once(
    etcd: &Etcd,
    keys: &Keys,
    options: &NodeOptions,
) -> Result<Attempt, etcd::EtcdError> {
    if let Some(held) = etcd.get(&keys.election).await? {
        return Ok(Attempt::Led(held.value));
    }
    // Renewals count from before the grant was asked for.
    let granted_at = Instant::now();
    let lease = etcd.grant(options.election_ttl).await?;
    let txn = pb::TxnRequest {
        compare: vec![etcd::created_at(&keys.election, 0)],
        success: vec![etcd::put(
            keys.election.clone(),
            options.advertise_addr.clone().into_bytes(),
            lease,
        )],
        failure: vec![etcd::get(keys.election.clone())],
    };
    let response = match etcd.txn(txn).await {
        Ok(response) => response,
        Err(error) => {
            let _ = etcd.revoke(lease).await;
            return Err(error);
        }
    };
    if !response.succeeded {
        let _ = etcd.revoke(lease).await;
        return Ok(match etcd::first_range(&response).first() {
            Some(held) => Attempt::Led(held.value.clone()),
            None => Attempt::Lost,
        });
    }
    let revision = response.header.map(|h| h.revision).unwrap_or_default();
    let lost = LostSignal::new();
    let keepalive = tokio::spawn(keep_alive(
        etcd.clone(),
        lease,
        granted_at,
        options.clone(),
        Arc::clone(&lost),
    ));
    tracing::info!(
        node = %options.node_name,
        revision,
        lease,
        "elected leader"
    );
    Ok(Attempt::Elected(Leadership {
        revision,
        lease,
        lost,
        keepalive,
    }))
}

/// Renews `lease` every `keepalive_interval` over etcd's keepalive stream (reopened
/// when it breaks) until the leadership is lost: the lease gone, or nothing renewed
/// for `step_down_after`.
async fn keep_alive(
    etcd: Etcd,
    lease: i64,
    mut renewed_at: Instant,
    options: NodeOptions,
    lost: Arc<LostSignal>,
) {
    let step_down_after = options.step_down_after();
    let interval = options.keepalive_interval();
    while !lost.is_lost() {
        let deadline = renewed_at + step_down_after;
        let (requests, receiver) = mpsc::channel(1);
        // etcd answers the stream's headers with its first renewal: the first request
        // goes in before the stream is opened.
        let mut sent_at = Instant::now();
        let _ = requests.try_send(pb::LeaseKeepAliveRequest { id: lease });
        let opened = tokio::time::timeout_at(
            deadline,
            etcd.lease_keep_alive(ReceiverStream::new(receiver)),
        )
        .await;
        let mut responses = match opened {
            Ok(Ok(responses)) => responses,
            Ok(Err(_)) => {
                tokio::time::sleep(interval.min(Duration::from_millis(100))).await;
                step_down_if_late(&lost, renewed_at, step_down_after);
                continue;
            }
            Err(_) => {
                step_down_if_late(&lost, renewed_at, step_down_after);
                continue;
            }
        };
        loop {
            match tokio::time::timeout_at(renewed_at + step_down_after, responses.message()).await {
                Ok(Ok(Some(renewed))) if renewed.ttl > 0 => renewed_at = sent_at,
                Ok(Ok(Some(_))) => {
                    lost.lose("etcd says the election lease expired".into());
                    return;
                }
                // The stream broke: open another.
                Ok(Ok(None)) | Ok(Err(_)) => break,
                Err(_) => break,
            }
            tokio::time::sleep_until(sent_at + interval).await;
            sent_at = Instant::now();
            if requests
                .try_send(pb::LeaseKeepAliveRequest { id: lease })
                .is_err()
            {
                break;
            }
        }
        step_down_if_late(&lost, renewed_at, step_down_after);
    }
}

fn step_down_if_late(lost: &LostSignal, renewed_at: Instant, step_down_after: Duration) {
    if renewed_at.elapsed() >= step_down_after {
        lost.lose(format!(
            "etcd renewed the election lease last {} ms ago; stepping down {} ms after the last renewal, before the lease can expire",
            renewed_at.elapsed().as_millis(),
            step_down_after.as_millis()
        ));
    }
}
