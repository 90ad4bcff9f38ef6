//! The HTTP/2 keepalive of the engine client's connection: a PING every `interval`,
//! and the connection closed when one is not answered within `timeout`. Without it a
//! connection whose peer vanished without a FIN (a host powered off, a firewall
//! dropping the flow) looks healthy until the lease's deadline passes; with it the
//! client notices within `interval + timeout`, reconnects (the next address) and
//! re-attaches its seats while they are still live.
//!
//! Derived from the heartbeat interval the broker gives its leases (a third of their
//! TTL): a ping every half interval, answered within a quarter, so a dead connection
//! is noticed within three quarters of a heartbeat interval, a quarter of the TTL,
//! leaving most of the TTL for the reconnect. Before any seat is held the client does
//! not know the broker's interval, so it uses the one of the daemon's default TTL
//! (`limits::LEASE_TTL_MS_DEFAULT`); once it holds seats, each new connection uses the
//! shorter of that and the seats' own.
//!
//! The daemon accepts client pings at any pace: hyper's HTTP/2 server (h2) answers
//! every PING and has no ping-strike policy (no GOAWAY `too_many_pings` as gRPC's
//! C core sends), and it acknowledges one at a time, so a ping flood costs it no
//! memory.

use std::time::Duration;

use tonic::transport::Endpoint;

use crate::limits;

/// When the client pings its connection and how long it waits for the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Between two PINGs.
    pub interval: Duration,
    /// For a PING's acknowledgement, before the connection is closed as dead.
    pub timeout: Duration,
}

impl Keepalive {
    /// For leases renewed every `heartbeat_interval`: a PING every half of it,
    /// answered within a quarter (each at least `ENGINE_KEEPALIVE_MS_MIN`).
    pub fn for_heartbeat_interval(heartbeat_interval: Duration) -> Self {
        let floor = Duration::from_millis(limits::ENGINE_KEEPALIVE_MS_MIN);
        Keepalive {
            interval: (heartbeat_interval / 2).max(floor),
            timeout: (heartbeat_interval / 4).max(floor),
        }
    }

    /// The keepalive of the daemon's default lease TTL (its heartbeat interval is a
    /// third of it).
    pub fn for_default_ttl() -> Self {
        let ttl = Duration::from_millis(limits::LEASE_TTL_MS_DEFAULT.into());
        Keepalive::for_heartbeat_interval(ttl / 3)
    }

    /// The stricter of the two, field by field.
    pub(super) fn at_most(self, other: Keepalive) -> Keepalive {
        Keepalive {
            interval: self.interval.min(other.interval),
            timeout: self.timeout.min(other.timeout),
        }
    }

    /// `endpoint` pinging its connection, while a stream is open or not.
    pub(super) fn apply(self, endpoint: Endpoint) -> Endpoint {
        endpoint
            .http2_keep_alive_interval(self.interval)
            .keep_alive_timeout(self.timeout)
            .keep_alive_while_idle(true)
    }
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive::for_default_ttl()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_connection_is_noticed_well_within_the_lease_ttl() {
        for ttl_ms in [limits::LEASE_TTL_MS_DEFAULT, 6_000, 90_000] {
            let ttl = Duration::from_millis(ttl_ms.into());
            let keepalive = Keepalive::for_heartbeat_interval(ttl / 3);
            assert!(keepalive.interval + keepalive.timeout <= ttl / 4, "{ttl:?}");
        }
        let tiny = Keepalive::for_heartbeat_interval(Duration::from_millis(10));
        assert_eq!(
            tiny.interval,
            Duration::from_millis(limits::ENGINE_KEEPALIVE_MS_MIN)
        );
        let default = Keepalive::default();
        assert_eq!(
            default.at_most(Keepalive::for_heartbeat_interval(Duration::from_secs(2))),
            Keepalive::for_heartbeat_interval(Duration::from_secs(2))
        );
    }
}
