//! Activity: where the events of the broker fan out to the three places that keep an
//! account of them: Prometheus counters ([`LeaseMetrics`]), usage windows
//! ([`UsageWindows`]) and the audit record ([`AuditLog`]).
//!
//! Lease events (grants, heartbeats, ends) arrive through [`LeaseObserver`], called
//! by the lease table under the organization's lock; refused acquires and admin
//! changes arrive from the gRPC edge, which is the only place that sees every reason.
//! Everything here is quick and never blocks: counters are atomics, a usage window is
//! one small mutex, and the audit record is a `try_send` (an admin change's events go
//! into an inbox under a mutex instead, as they are never dropped).
//!
//! Every event of a call carries the subject of its connection's client certificate
//! (mTLS), taken from the task serving the call ([`call_client_subject`]); events of
//! no call (expiries) carry none.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::{AuditEvent, AuditLog};
use crate::broker::AdminObserver;
use crate::clock::Clock;
use crate::connections::call_client_subject;
use crate::domain::Quota;
use crate::domain::{Command, DomainError, OrgId, Principal, Product};
use crate::leases::{LeaseEnd, LeaseObserver, LeaseRef, LeaseTiming};
use crate::telemetry::metrics::{DENIAL_REASONS, LeaseMetrics};
use crate::usage::{Series, UsageWindows, WindowUsage};

pub struct Activity {
    clock: Arc<dyn Clock>,
    /// Heartbeats later than `timing.heartbeat_interval` count as late.
    timing: LeaseTiming,
    metrics: LeaseMetrics,
    usage: UsageWindows,
    audit: AuditLog,
}

/// The index in [`DENIAL_REASONS`] of why an acquire was refused.
fn denial_reason(error: &DomainError) -> usize {
    let name = match error {
        DomainError::QuotaExhausted { .. } => "quota_exhausted",
        DomainError::KseSessionInUse { .. } => "kse_session_in_use",
        DomainError::NotLicensed { .. } => "not_licensed",
        DomainError::LicenseExpired(_) => "license_expired",
        DomainError::LimitReached { .. } => "limit_reached",
        DomainError::Unavailable(_) => "unavailable",
        _ => "other",
    };
    DENIAL_REASONS
        .iter()
        .position(|reason| *reason == name)
        .unwrap_or(DENIAL_REASONS.len() - 1)
}

impl Activity {
    /// Registers the metric handles (install the recorder first) and takes the audit
    /// record.
    pub fn new(clock: Arc<dyn Clock>, timing: LeaseTiming, audit: AuditLog) -> Self {
        Activity {
            usage: UsageWindows::new(clock.unix_ms()),
            clock,
            timing,
            metrics: LeaseMetrics::register(),
            audit,
        }
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// An acquire of `principal` for `product` was refused with `error`.
    pub fn acquire_denied(&self, principal: &Principal, product: Product, error: &DomainError) {
        let Principal::Member { org, email } = principal else {
            return; // The operator holds no sessions; nothing was denied to a member.
        };
        let reason = denial_reason(error);
        self.metrics.denied(product, reason);
        let now = self.clock.unix_ms();
        if matches!(error, DomainError::QuotaExhausted { .. }) {
            self.usage.denied(org, product, now);
        }
        let event = AuditEvent::denied(now, org, email, product, DENIAL_REASONS[reason])
            .with_client_cert(call_client_subject());
        self.audit.record(event);
    }

    /// Usage of `product` in `org` over the last `window_seconds`.
    pub fn usage_window(&self, org: &OrgId, product: Product, window_seconds: u32) -> WindowUsage {
        self.usage
            .window(org, product, window_seconds, self.clock.unix_ms())
    }

    /// The usage series of `product` in `org` over `[start_ms, end_ms)`, which ends by
    /// `now_unix_ms` (the time the range was computed at) and starts within the week
    /// kept (see [`UsageWindows::series`]).
    pub fn usage_series(
        &self,
        org: &OrgId,
        product: Product,
        start_ms: i64,
        end_ms: i64,
        now_unix_ms: i64,
    ) -> Series {
        self.usage
            .series(org, product, start_ms, end_ms, now_unix_ms)
    }

    /// Usage figures are kept from this time (the daemon's start) on.
    pub fn usage_kept_since_unix_ms(&self) -> i64 {
        self.usage.kept_since_unix_ms()
    }

    /// Each organization's quota when the daemon starts serving (the series know each
    /// later change from `admin_changed`).
    pub fn quotas_at_start(&self, quotas: &[(OrgId, Quota)]) {
        for (org, quota) in quotas {
            for product in Product::ALL {
                self.usage
                    .quota_at_start(org, product, quota.for_product(product));
            }
        }
    }

    /// Quota changes and deletions, for the usage series.
    fn usage_admin_changed(&self, command: &Command) {
        let now = self.clock.unix_ms();
        let quotas = match command {
            Command::CreateOrganization { org, quota, .. } | Command::SetQuota { org, quota } => {
                Product::ALL.map(|product| (org, product, Some(quota.for_product(product))))
            }
            Command::UpdateQuota { org, update } => [
                (org, Product::Kse, update.kse_seats),
                (org, Product::Kre, update.kre_sessions),
            ],
            Command::DeleteOrganization { org } => {
                self.usage.forget(org);
                return;
            }
            _ => return,
        };
        for (org, product, quota) in quotas {
            if let Some(quota) = quota {
                self.usage.quota_set(org, product, quota, now);
            }
        }
    }
}

impl AdminObserver for Activity {
    fn admit(&self) -> Result<(), DomainError> {
        self.audit.admission().admit()
    }

    /// An admin command was applied and made durable: its events are never dropped
    /// (see [`crate::audit`]).
    fn admin_changed(&self, principal: &Principal, command: &Command) {
        self.usage_admin_changed(command);
        let client_cert = call_client_subject();
        let events = AuditEvent::of_command(self.clock.unix_ms(), principal, command)
            .into_iter()
            .map(|event| event.with_client_cert(client_cert.clone()))
            .collect();
        self.audit.record_admin_change(events);
    }
}

impl LeaseObserver for Activity {
    fn granted(&self, org: &OrgId, lease: LeaseRef<'_>, active: u32) {
        let now = self.clock.unix_ms();
        self.metrics.granted(lease.product);
        self.usage.granted(org, lease.product, active, now);
        let event =
            AuditEvent::lease(now, org, lease, None, None).with_client_cert(call_client_subject());
        self.audit.record(event);
    }

    fn renewed(&self, lease: LeaseRef<'_>, since_last_renewal: Duration) {
        let late_by = since_last_renewal.saturating_sub(self.timing.heartbeat_interval);
        self.metrics.heartbeat_late_by(lease.product, late_by);
    }

    fn ended(
        &self,
        org: &OrgId,
        lease: LeaseRef<'_>,
        why: LeaseEnd,
        by: Option<&Principal>,
        active: u32,
    ) {
        let now = self.clock.unix_ms();
        self.metrics.ended(lease.product, why);
        self.usage.ended(org, lease.product, active, now);
        let event = AuditEvent::lease(now, org, lease, Some(why), by)
            .with_client_cert(call_client_subject());
        self.audit.record(event);
    }
}
