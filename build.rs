//! Compiles `proto/optimem/v1/memory.proto` into the gRPC server and client (`src/service.rs` includes them) and
//! writes its file descriptor set for gRPC reflection. protoc comes from `protoc-bin-vendored`, so building needs no
//! system protoc.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/optimem/v1/memory.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("optimem_v1_descriptor.bin"))
        .compile_with_config(config, &[proto], &["proto"])?;
    Ok(())
}
