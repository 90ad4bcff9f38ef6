//! Compiles `proto/seatbroker/v1/*.proto` into Rust with `protox` (a pure-Rust protobuf
//! compiler, so no system `protoc` is needed) and `tonic-prost-build`, and writes the
//! file descriptor set that the reflection service serves; and the vendored subset of
//! etcd's API (`proto/etcd/`) into the client stubs of cluster mode.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut protos: Vec<PathBuf> = std::fs::read_dir("proto/seatbroker/v1")?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    protos.retain(|p| p.extension().is_some_and(|ext| ext == "proto"));
    protos.sort();

    let descriptors = protox::compile(&protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("seatbroker_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    // Messages serialize to JSON for the CLI's `--json`; every enum field prints its
    // name, through the serializer of its enum (`crate::proto::json`).
    let mut builder =
        tonic_prost_build::configure().type_attribute(".", "#[derive(serde::Serialize)]");
    for (field, with) in enum_fields(&descriptors)? {
        builder = builder.field_attribute(
            field,
            format!("#[serde(serialize_with = \"crate::proto::json::{with}\")]"),
        );
    }
    builder.compile_fds(descriptors)?;

    // The etcd client of cluster mode: the vendored subset of etcd's API, client stubs
    // only, kept out of the descriptor set reflection serves.
    let etcd = protox::compile(["proto/etcd/rpc.proto"], ["proto/etcd"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(etcd)?;
    Ok(())
}

/// The serializer in `crate::proto::json` of each enum of our API.
const ENUM_SERIALIZERS: &[(&str, &str)] = &[
    (".seatbroker.v1.Product", "product"),
    (".seatbroker.v1.Role", "role"),
    (".seatbroker.v1.AssignmentOutcome", "outcome"),
    (".seatbroker.v1.EndReason", "end_reason"),
    (".seatbroker.v1.UsageRange", "usage_range"),
];

/// Every enum field of every message (nested ones too), with its enum's serializer.
/// An enum without one, or an enum field that is repeated or `optional` (whose Rust
/// type the serializers do not take), fails the build, so that no field can print as a
/// bare number by being forgotten.
fn enum_fields(
    descriptors: &prost_types::FileDescriptorSet,
) -> Result<Vec<(String, &'static str)>, String> {
    fn visit(
        scope: &str,
        message: &prost_types::DescriptorProto,
        found: &mut Vec<(String, &'static str)>,
    ) -> Result<(), String> {
        let path = format!("{scope}.{}", message.name());
        for field in &message.field {
            if field.r#type().as_str_name() != "TYPE_ENUM" {
                continue;
            }
            let name = format!("{path}.{}", field.name());
            if field.label().as_str_name() == "LABEL_REPEATED" || field.proto3_optional() {
                return Err(format!(
                    "{name}: a repeated or optional enum field has no JSON serializer; add one to crate::proto::json and build.rs"
                ));
            }
            let Some(&(_, with)) = ENUM_SERIALIZERS
                .iter()
                .find(|(enum_type, _)| *enum_type == field.type_name())
            else {
                return Err(format!(
                    "{name}: the enum {} has no JSON serializer; add one to crate::proto::json and ENUM_SERIALIZERS in build.rs",
                    field.type_name()
                ));
            };
            found.push((name, with));
        }
        for nested in &message.nested_type {
            visit(&path, nested, found)?;
        }
        Ok(())
    }
    let mut found = Vec::new();
    for file in &descriptors.file {
        for message in &file.message_type {
            visit(&format!(".{}", file.package()), message, &mut found)?;
        }
    }
    Ok(found)
}
