//! The license domain: organizations, members and roles, quotas, named KSE seats and
//! KRE assignments, API key records, and the commands that change them. It knows
//! nothing of gRPC or of files: the edge (`api`) translates wire messages into these
//! types, and storage (`storage::codec`) encodes the commands into log records.

pub mod access;
pub mod command;
pub mod error;
pub mod state;
pub mod types;

pub use access::{Action, Principal, authorize, authorize_command};
pub use command::{AssignmentOutcome, Command, CommandOutcome, SessionsToEnd};
pub use error::DomainError;
pub use state::{AdminState, ApiKeyRecord, Organization};
pub use types::{ApiKeyId, Email, OrgId, Product, Quota, Role};
