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
    // Messages serialize to JSON for the CLI's `--json`; enum fields print their names.
    let mut builder =
        tonic_prost_build::configure().type_attribute(".", "#[derive(serde::Serialize)]");
    for (field, with) in [
        (".seatbroker.v1.Lease.product", "product"),
        (".seatbroker.v1.ProductUsage.product", "product"),
        (".seatbroker.v1.Member.role", "role"),
        (".seatbroker.v1.AssignmentResult.outcome", "outcome"),
        (".seatbroker.v1.AuditEvent.product", "product"),
    ] {
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
