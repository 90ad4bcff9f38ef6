//! The license domain: organizations, members and roles, quotas, named KSE seats and
//! KRE assignments, API key records, and the commands that change them. It knows
//! nothing of gRPC or of files: the edge (`api`) translates wire messages into these
//! types, and `storage::codec` encodes the commands into log records. The lease table
//! and the broker make changes durable through the [`journal::Journal`] port, which
//! `storage` implements.

pub mod access;
pub mod command;
pub mod error;
pub mod journal;
pub mod lease;
pub mod state;
pub mod types;

pub use access::{Action, Principal, authorize, authorize_command};
pub use command::{AssignmentOutcome, Command, CommandOutcome, SessionsToEnd, Withdrawal};
pub use error::DomainError;
pub use lease::{Lease, LeaseId, LeaseIdText, Termination};
pub use state::{AdminState, ApiKeyRecord, Organization};
pub use types::{
    ApiKeyId, Email, OrgId, PastExpiry, Product, Quota, QuotaUpdate, Role,
    check_client_cert_subject, check_new_expiry,
};
