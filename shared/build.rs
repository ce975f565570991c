//! Compiles the wire contract with the vendored `protoc`, so the build needs nothing installed by hand.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [root.join("urlfleet/v1/jobs.proto"), root.join("urlfleet/v1/work.proto")];
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Ordered maps: encoded options must be deterministic (they feed the job unique key).
    config.btree_map(["."]);
    tonic_prost_build::configure().file_descriptor_set_path(out.join("urlfleet_descriptor.bin")).compile_with_config(
        config,
        &protos,
        &[root],
    )?;
    Ok(())
}
