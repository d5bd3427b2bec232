//! Compiles `proto/optimem/v1/memory.proto` into the gRPC server and client (`src/service.rs` includes them) and
//! writes its file descriptor set for gRPC reflection. protoc comes from `protoc-bin-vendored`, so building needs no
//! system protoc.
//!
//! With the `cuda` feature it also compiles the fused kernels (`src/model/cuda/fused.cu`) to PTX with the toolkit's
//! `nvcc` (`$NVCC`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on `PATH`) for `sm_$CUDA_COMPUTE_CAP` (default 90), as
//! candle-kernels does for candle's own; `tools/cuda/build.sh` sets all of it up.

use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/optimem/v1/memory.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("optimem_v1_descriptor.bin"))
        .compile_with_config(config, &[proto], &["proto"])?;
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_kernels(&out)?;
    }
    Ok(())
}

fn compile_kernels(out: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let src = "src/model/cuda/fused.cu";
    for var in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed={src}");
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin/nvcc")))
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let ptx = out.join("fused.ptx");
    let status = Command::new(&nvcc)
        .args([
            "--ptx",
            "-O3",
            "-std=c++17",
            &format!("-arch=sm_{cap}"),
            src,
            "-o",
        ])
        .arg(&ptx)
        .status()
        .map_err(|e| {
            format!(
                "running {}: {e} (the cuda feature needs the CUDA toolkit's nvcc)",
                nvcc.display()
            )
        })?;
    if !status.success() {
        return Err(format!("{} failed on {src}: {status}", nvcc.display()).into());
    }
    Ok(())
}
