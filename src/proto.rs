//! The generated gRPC code of `proto/seatbroker/v1`, and the descriptor set that the
//! reflection service serves; the serde forms the CLI prints as JSON (enum values as
//! the tables show them). Wire types stay at the edge: they never reach `domain`,
//! `leases`, `storage`, `wal` or `broker` (checked by `layering`).

#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("seatbroker.v1");

/// The encoded `FileDescriptorSet` of our protos, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("seatbroker_descriptor");

/// The metadata in which a standby of a cluster names the leader's address
/// (`host:port`) on its UNAVAILABLE answers: the daemon sets it
/// (`telemetry::rpc::PhaseCell`), the clients follow it (`client::leader_redirect`).
pub const LEADER_METADATA: &str = "seatbroker-leader";

/// Serializers that print enum fields in the CLI's JSON by the names its tables and
/// flags use: the proto name without the enum's prefix, in lower case (`PRODUCT_KRE`
/// is `kre`, `ASSIGNMENT_OUTCOME_ALREADY_ASSIGNED` is `already_assigned`); an unknown
/// value prints as its number.
pub mod json {
    use serde::Serializer;

    fn name<E: TryFrom<i32>>(
        value: i32,
        prefix: &str,
        as_str: impl Fn(E) -> &'static str,
    ) -> String {
        E::try_from(value)
            .map(|known| {
                as_str(known)
                    .trim_start_matches(prefix)
                    .to_ascii_lowercase()
            })
            .unwrap_or_else(|_| value.to_string())
    }

    /// One serializer per enum: `function, Enum, "PREFIX_";`. build.rs names the
    /// function of each enum field (`ENUM_SERIALIZERS`).
    macro_rules! by_name {
        ($($function:ident, $enum:ident, $prefix:literal;)*) => {$(
            pub fn $function<S: Serializer>(value: &i32, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&name(*value, $prefix, |v: super::$enum| v.as_str_name()))
            }
        )*};
    }

    by_name! {
        product, Product, "PRODUCT_";
        role, Role, "ROLE_";
        outcome, AssignmentOutcome, "ASSIGNMENT_OUTCOME_";
        end_reason, EndReason, "END_REASON_";
        usage_range, UsageRange, "USAGE_RANGE_";
    }
}
