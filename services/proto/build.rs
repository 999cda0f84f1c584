//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so no `protoc` is needed, and
//! writes the encoded descriptor set that the reflection service serves.
use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "licensing/common/v1/common.proto",
    "licensing/activation/v1/activation.proto",
    "licensing/seat/v1/seat.proto",
    "licensing/account/v1/account.proto",
    "licensing/onpremises/v1/onpremises.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(PROTOS, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("licensing_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
