//! The one mapping from domain errors to gRPC status codes.

use tonic::{Code, Status};

use crate::domain::DomainError;

pub fn code_of(error: &DomainError) -> Code {
    use DomainError as E;
    match error {
        E::InvalidArgument { .. } => Code::InvalidArgument,
        E::Unauthenticated(_) => Code::Unauthenticated,
        E::PermissionDenied(_) => Code::PermissionDenied,
        E::OrganizationNotFound(_) | E::ApiKeyNotFound(_) | E::LeaseNotFound(_) => Code::NotFound,
        E::OrganizationExists(_) | E::AlreadyAMember { .. } => Code::AlreadyExists,
        E::QuotaExhausted { .. }
        | E::SeatQuotaExceeded { .. }
        | E::LimitReached { .. }
        | E::CapReached { .. } => Code::ResourceExhausted,
        E::NotAMember { .. }
        | E::StaleGeneration { .. }
        | E::NotLicensed { .. }
        | E::KseSessionInUse { .. }
        | E::LicenseExpired(_)
        | E::LastOwner { .. }
        | E::SeatsBelowAssigned { .. }
        | E::FailedPrecondition(_) => Code::FailedPrecondition,
        E::Unavailable(_) => Code::Unavailable,
        E::WaitExpired { .. } => Code::DeadlineExceeded,
        E::WaitCancelled => Code::Cancelled,
    }
}

pub fn to_status(error: DomainError) -> Status {
    Status::new(code_of(&error), error.to_string())
}
