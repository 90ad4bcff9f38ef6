//! Why a client command failed, and the exit code that tells a script what to do
//! about it. The codes follow sysexits.h where one fits; the gRPC classes a script
//! acts on differently get codes of their own in 10-13. README's CLI section has the
//! table; clap's own usage errors (an unknown flag, a missing argument) exit 2.

use tonic::{Code, Status};

use crate::client::code_name;
use crate::engine_client::{LostReason, SeatLost};

/// Any other failure (INTERNAL, UNKNOWN, DATA_LOSS, ...).
pub const EXIT_FAILURE: u8 = 1;
/// The entity named does not exist (NOT_FOUND).
pub const EXIT_NOT_FOUND: u8 = 10;
/// The entity to create exists already (ALREADY_EXISTS).
pub const EXIT_ALREADY_EXISTS: u8 = 11;
/// The state does not allow the call; changing the state may (FAILED_PRECONDITION).
pub const EXIT_FAILED_PRECONDITION: u8 = 12;
/// The daemon refused an argument (INVALID_ARGUMENT, OUT_OF_RANGE).
pub const EXIT_INVALID_ARGUMENT: u8 = 13;
/// `seatbroker run`: no seat was granted (the quota is full, the wait passed, the user
/// is not licensed); COMMAND did not run.
pub const EXIT_NO_SEAT: u8 = 20;
/// `seatbroker run`: the broker ended the seat while COMMAND ran (an admin terminated
/// it, the product was unassigned, the member removed, ...); COMMAND was stopped.
pub const EXIT_SEAT_LOST: u8 = 21;
/// `seatbroker run`: the seat expired while COMMAND ran (the broker stayed unreachable
/// past the lease's TTL); COMMAND was stopped.
pub const EXIT_SEAT_EXPIRED: u8 = 22;
/// An argument the command line parsed but the command cannot use (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Retry later: the daemon was unreachable or did not answer in time, or answered
/// UNAVAILABLE or RESOURCE_EXHAUSTED (EX_TEMPFAIL).
pub const EXIT_RETRY_LATER: u8 = 75;
/// The key is unknown or revoked, or may not do this (EX_NOPERM).
pub const EXIT_NOT_PERMITTED: u8 = 77;
/// The command's own configuration is wrong: the address, the TLS files (EX_CONFIG).
pub const EXIT_CONFIGURATION: u8 = 78;

/// Why a client command failed.
#[derive(Debug)]
pub enum Failure {
    /// The call's answer: a status of the daemon, or of the client's transport.
    Call(Status),
    /// The daemon could not be reached within the connect timeout.
    Unreachable(String),
    /// The address or the TLS files cannot be used.
    Configuration(String),
    /// An argument the command cannot use.
    Usage(String),
    /// The person at the terminal did not confirm a destructive command; nothing
    /// changed.
    Declined,
    /// `seatbroker run` was granted no seat: the broker's answer.
    NoSeat(Status),
    /// `seatbroker run` lost its seat while COMMAND ran.
    SeatLost(SeatLost),
}

impl From<Status> for Failure {
    /// A status whose cause is a TLS failure (say, the daemon refused the client
    /// certificate at the first call) is a configuration failure: retrying the same
    /// files does not help. Other transport causes keep the call's class, their message
    /// naming the cause.
    fn from(status: Status) -> Self {
        let Some(source) = std::error::Error::source(&status) else {
            return Failure::Call(status);
        };
        if let Some(cause) = crate::tls::explain_client_failure(source) {
            return Failure::Configuration(cause);
        }
        Failure::Call(crate::client::explain_status(&status).unwrap_or(status))
    }
}

impl Failure {
    /// The daemon's answer, when the failure is one.
    pub fn call_status(&self) -> Option<&Status> {
        match self {
            Failure::Call(status) => Some(status),
            _ => None,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Call(status) => exit_code(status.code()),
            Failure::Unreachable(_) => EXIT_RETRY_LATER,
            Failure::Configuration(_) => EXIT_CONFIGURATION,
            Failure::Usage(_) => EXIT_USAGE,
            Failure::Declined => EXIT_FAILURE,
            Failure::NoSeat(_) => EXIT_NO_SEAT,
            Failure::SeatLost(lost) => match lost.reason {
                LostReason::Expired | LostReason::Unreachable => EXIT_SEAT_EXPIRED,
                _ => EXIT_SEAT_LOST,
            },
        }
    }

    /// The failure's class as a script matches on it: the gRPC code's name, or
    /// `UNAVAILABLE`, `CONFIGURATION`, `USAGE` for what failed before any call.
    pub fn code_name(&self) -> &'static str {
        match self {
            Failure::Call(status) => code_name(status.code()),
            Failure::Unreachable(_) => code_name(Code::Unavailable),
            Failure::Configuration(_) => "CONFIGURATION",
            Failure::Usage(_) => "USAGE",
            Failure::Declined => "DECLINED",
            Failure::NoSeat(status) => code_name(status.code()),
            Failure::SeatLost(_) => "SEAT_LOST",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Failure::Call(status) => status.message().to_owned(),
            Failure::NoSeat(status) => format!(
                "no seat granted ({}): {}",
                no_seat_cause(status.code()),
                status.message()
            ),
            Failure::SeatLost(lost) => format!("the seat was lost ({lost}); COMMAND was stopped"),
            Failure::Unreachable(message)
            | Failure::Configuration(message)
            | Failure::Usage(message) => message.clone(),
            Failure::Declined => "not confirmed; nothing changed".to_owned(),
        }
    }
}

/// Why no seat was granted, in a person's words, from the broker's code.
fn no_seat_cause(code: Code) -> &'static str {
    match code {
        Code::ResourceExhausted => "the quota is full",
        Code::DeadlineExceeded => "the wait passed",
        Code::FailedPrecondition => "not licensed for this product now",
        Code::PermissionDenied => "the key may not take this seat",
        Code::Cancelled => "the wait was cancelled",
        _ => "refused",
    }
}

/// The exit code of a call that ended with `code`.
pub fn exit_code(code: Code) -> u8 {
    match code {
        Code::Ok => 0,
        Code::NotFound => EXIT_NOT_FOUND,
        Code::AlreadyExists => EXIT_ALREADY_EXISTS,
        Code::FailedPrecondition => EXIT_FAILED_PRECONDITION,
        Code::InvalidArgument | Code::OutOfRange => EXIT_INVALID_ARGUMENT,
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded => EXIT_RETRY_LATER,
        Code::Unauthenticated | Code::PermissionDenied => EXIT_NOT_PERMITTED,
        Code::Cancelled
        | Code::Unknown
        | Code::Aborted
        | Code::Unimplemented
        | Code::Internal
        | Code::DataLoss => EXIT_FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_a_script_acts_on_has_its_own_exit_code() {
        let classes = [
            (Code::NotFound, EXIT_NOT_FOUND),
            (Code::AlreadyExists, EXIT_ALREADY_EXISTS),
            (Code::FailedPrecondition, EXIT_FAILED_PRECONDITION),
            (Code::InvalidArgument, EXIT_INVALID_ARGUMENT),
            (Code::Unavailable, EXIT_RETRY_LATER),
            (Code::ResourceExhausted, EXIT_RETRY_LATER),
            (Code::DeadlineExceeded, EXIT_RETRY_LATER),
            (Code::Unauthenticated, EXIT_NOT_PERMITTED),
            (Code::PermissionDenied, EXIT_NOT_PERMITTED),
            (Code::Internal, EXIT_FAILURE),
        ];
        for (code, exit) in classes {
            assert_eq!(exit_code(code), exit, "{code:?}");
        }
        let mut distinct = vec![
            EXIT_FAILURE,
            EXIT_NOT_FOUND,
            EXIT_ALREADY_EXISTS,
            EXIT_FAILED_PRECONDITION,
            EXIT_INVALID_ARGUMENT,
            EXIT_USAGE,
            EXIT_RETRY_LATER,
            EXIT_NOT_PERMITTED,
            EXIT_CONFIGURATION,
            EXIT_NO_SEAT,
            EXIT_SEAT_LOST,
            EXIT_SEAT_EXPIRED,
            2, // clap's usage errors
        ];
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 13);
        // Clear of the shells' own: 126 (not executable), 127 (not found), 128 + n (a signal).
        assert!(distinct.iter().all(|code| *code < 126));
    }
}
