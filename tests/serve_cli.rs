//! `optimem serve` flags (issue 5): a store made by another model is refused with a clear error under
//! `--on-model-change refuse`, and the refusal leaves the store as it was; bad durations are rejected by name.

mod common;

use std::process::Command;

use optimem_store::{OnModelMismatch, OpenOptions, SledStore, StoreError};

fn optimem(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_optimem"))
        .args(args)
        .output()
        .expect("optimem runs")
}

#[test]
fn serve_refuses_another_models_store_when_asked_to() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("model-b");
    std::fs::create_dir(&model).expect("mkdir");
    common::fixture_model_dir(&model);
    let data = tmp.path().join("data");
    drop(SledStore::open(&data, OpenOptions::new("model-a@1234")).expect("store of model A"));

    let out = optimem(&[
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--data",
        data.to_str().expect("utf-8"),
        "--model",
        model.to_str().expect("utf-8"),
        "--on-model-change",
        "refuse",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model-a@1234")
            && err.contains("model-b@")
            && err.contains("--on-model-change reencode"),
        "names both models and the way out: {err}"
    );
    // Nothing was changed: model A still owns the store.
    let refuse = OpenOptions {
        on_model_mismatch: OnModelMismatch::Refuse,
        ..OpenOptions::new("model-a@1234")
    };
    drop(SledStore::open(&data, refuse).expect("still model A's"));
    let as_b = OpenOptions {
        on_model_mismatch: OnModelMismatch::Refuse,
        ..OpenOptions::new("model-b@0")
    };
    assert!(matches!(
        SledStore::open(&data, as_b),
        Err(StoreError::ModelMismatch { .. })
    ));
}

#[test]
fn serve_rejects_a_bad_age_period() {
    for bad in ["10", "ten minutes", "5 m"] {
        let out = optimem(&["serve", "--age-every", bad]);
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--age-every"), "{bad}: {err}");
    }
}
