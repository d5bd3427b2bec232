//! Helpers shared by the integration tests: the random-weight fixture model directory, and (`server`) a real gRPC
//! server over it for the `service_*` tests.

#![allow(dead_code, reason = "each test binary uses a subset of the helpers")]

pub mod server;

use std::path::Path;

/// A model directory made of the parity-fixture weights plus a word-level tokenizer over the fixture's 512 ids
/// (`<image>` = 500 as in the fixture metadata), so the whole pipeline runs without any download.
pub fn fixture_model_dir(dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ocr-small");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).expect("copy fixture");
    }
    let mut vocab = serde_json::Map::new();
    for id in 0..512u32 {
        let tok = match id {
            0 => "<s>".to_owned(),
            1 => "</s>".to_owned(),
            2 => "<unk>".to_owned(),
            500 => "<image>".to_owned(),
            _ => format!("w{id}"),
        };
        vocab.insert(tok, id.into());
    }
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 500, "content": "<image>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_vec(&tokenizer).expect("json"),
    )
    .expect("write tokenizer");
}
