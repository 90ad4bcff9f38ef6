//! The generated gRPC code of `proto/seatbroker/v1`, and the descriptor set that the
//! reflection service serves. Wire types stay at the edge: only `api`, the CLI and
//! the load generator use them.

#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("seatbroker.v1");

/// The encoded `FileDescriptorSet` of our protos, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("seatbroker_descriptor");

/// Serializers that print enum fields by name in the CLI's JSON output.
pub mod json {
    use serde::Serializer;

    fn name<E: TryFrom<i32>>(value: i32, as_str: impl Fn(E) -> &'static str) -> String {
        E::try_from(value)
            .map(as_str)
            .map(str::to_owned)
            .unwrap_or_else(|_| value.to_string())
    }

    pub fn product<S: Serializer>(value: &i32, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&name(*value, |v: super::Product| v.as_str_name()))
    }

    pub fn role<S: Serializer>(value: &i32, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&name(*value, |v: super::Role| v.as_str_name()))
    }

    pub fn outcome<S: Serializer>(value: &i32, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&name(*value, |v: super::AssignmentOutcome| v.as_str_name()))
    }
}
