//! `optimem bench service` and `optimem bench memory` on the fixture model, briefly: the reports come out complete
//! and consistent (the figures themselves are this machine's, never asserted).

mod common;

use std::process::Command;

fn optimem(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_optimem"))
        .args(args)
        .output()
        .expect("optimem runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

fn model_dir(tmp: &tempfile::TempDir) -> String {
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).expect("mkdir");
    common::fixture_model_dir(&model);
    model.to_str().expect("utf-8").to_owned()
}

#[test]
fn bench_service_reports_both_rpcs_and_the_stages() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = model_dir(&tmp);
    let r = optimem(&[
        "bench",
        "service",
        "--model",
        &model,
        "--clients",
        "2",
        "--duration",
        "1s",
        "--turn-tokens",
        "200",
        "--max-new-tokens",
        "4",
        // Tiny pages keep the debug build's encoder quick.
        "--policy",
        "tiny",
        "--json",
    ]);
    let rpcs = r["rpcs"].as_array().expect("rpcs");
    assert_eq!(rpcs.len(), 2);
    for rpc in rpcs {
        let ok = rpc["ok"].as_u64().expect("ok");
        assert!(ok > 0, "{rpc}");
        assert_eq!(rpc["latency"]["count"].as_u64(), Some(ok));
        assert!(rpc["latency"]["p50_ms"].as_f64() <= rpc["latency"]["max_ms"].as_f64());
    }
    let stages: Vec<&str> = r["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter_map(|s| s["stage"].as_str())
        .collect();
    for stage in [
        "remember",
        "render",
        "encode",
        "engine.encode",
        "store.flush",
        "decode",
    ] {
        assert!(stages.contains(&stage), "{stage} missing from {stages:?}");
    }
    assert!(r["turn_text_tokens"].as_f64().expect("turn tokens") >= 200.0);
}

#[test]
fn bench_memory_reports_bytes_per_tier_and_int8s_cost() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = model_dir(&tmp);
    let r = optimem(&[
        "bench",
        "memory",
        "--model",
        &model,
        "--tiers",
        "tiny",
        "--turns",
        "2",
        "--turn-tokens",
        "150",
        "--max-new-tokens",
        "4",
        "--json",
    ]);
    let runs = r["runs"].as_array().expect("runs");
    let dtypes: Vec<&str> = runs.iter().filter_map(|r| r["dtype"].as_str()).collect();
    assert_eq!(dtypes, ["f16", "int8"]);
    let (f16, int8) = (&runs[0], &runs[1]);
    assert_eq!(f16["pages"], int8["pages"]);
    assert_eq!(f16["text_tokens"], int8["text_tokens"]);
    let tokens = |r: &serde_json::Value| r["bytes"]["tokens"].as_f64().expect("token bytes");
    // int8 stores one byte per value plus a 4-byte scale per row, f16 two bytes per value.
    assert!(
        tokens(int8) < 0.6 * tokens(f16),
        "{} vs {}",
        tokens(int8),
        tokens(f16)
    );
    for run in runs {
        let b = &run["bytes_per_1k_text_tokens"];
        assert!(b["rasters"].as_f64() > Some(0.0) && b["directory"].as_f64() > Some(0.0));
        assert!(run["recall"]["count"].as_u64() == run["pages"].as_u64());
    }
    let cost = &r["int8"][0];
    assert_eq!(cost["tier"], "tiny");
    let delta =
        cost["precision_int8"].as_f64().expect("p") - cost["precision_f16"].as_f64().expect("p");
    assert!((cost["precision_delta"].as_f64().expect("delta") - delta).abs() < 1e-9);
}
