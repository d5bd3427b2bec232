//! `optimem bench encoder|decoder` with `--model`, `--image`, `--dump` and `--json` on the fixture model: the dumps
//! hold exactly what the library computes (and, for the encoder, the PyTorch fixture's sequence), so
//! `tools/reference/bench_full.py` compares like with like; bad inputs are clear errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use optimem::bench_decoder::prompt_ids;
use optimem::model::config::load_safetensors_mmap;
use optimem::model::decoder::{DeepseekOcrDecoder, TextConfig};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn model_dir() -> String {
    fixtures()
        .join("ocr-small")
        .to_str()
        .expect("utf-8")
        .to_owned()
}

fn optimem(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_optimem"))
        .args(args)
        .output()
        .expect("optimem runs")
}

/// Runs a bench with `--json` and returns its JSON object.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = optimem(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).expect("dump loads")
}

/// max |a - b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b)
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .expect("same shapes");
    let s = b
        .abs()
        .and_then(|t| t.max_all()?.to_scalar::<f32>())
        .expect("scale");
    d / s
}

#[test]
fn encoder_dump_equals_the_reference_fixture() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The Tiny fixture's input view (512x512, so Tiny preprocessing leaves it unchanged) as a PNG page.
    let pre = load(&fixtures().join("preprocess.safetensors"));
    let view = &pre["image_a_view_512"];
    let pixels: Vec<u8> = view.flatten_all().and_then(|t| t.to_vec1()).expect("u8");
    let png_path = tmp.path().join("view.png");
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, 512, 512);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().expect("png header");
        w.write_image_data(&pixels).expect("png data");
    }
    std::fs::write(&png_path, png_bytes).expect("write png");
    let dump = tmp.path().join("dump.safetensors");
    let model = model_dir();
    let json = bench_json(&[
        "bench",
        "encoder",
        "--model",
        &model,
        "--image",
        png_path.to_str().expect("utf-8"),
        "--mode",
        "tiny",
        "--iters",
        "1",
        "--dump",
        dump.to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(json["tokens"], 73);
    assert_eq!(json["mode"], "tiny");
    assert_eq!(json["device"], "cpu");
    assert!(json["pages_per_s"].as_f64().is_some_and(|p| p > 0.0));

    let got = load(&dump);
    let want = load(&fixtures().join("ocr-small/encoder_tiny.safetensors"));
    assert_eq!(got["sequence"].dims(), [73, 64]);
    assert!(rel_err(&got["sequence"], &want["sequence"]) < 1e-4);
    assert!(rel_err(&got["projector_out"], &want["projector_out"]) < 1e-4);
    let view_back: Vec<u8> = got["global_view"]
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("u8");
    assert_eq!(view_back, pixels);
}

#[test]
fn decoder_dump_holds_the_prompt_and_the_library_outputs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dump = tmp.path().join("dump.safetensors");
    let model = model_dir();
    let json = bench_json(&[
        "bench",
        "decoder",
        "--model",
        &model,
        "--prompt-tokens",
        "20",
        "--decode-tokens",
        "3",
        "--warmup",
        "0",
        "--seed",
        "5",
        "--dump",
        dump.to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(json["prompt_tokens"], 20);
    assert_eq!(json["seed"], 5);
    let got = load(&dump);

    let ids: Vec<i64> = got["ids"].to_vec1().expect("i64 ids");
    let want_ids = prompt_ids(5, 20, 512);
    assert_eq!(
        ids,
        want_ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>()
    );

    // The same prefill through the library: all 20 positions' logits, of which the dump keeps the last 8.
    let dir = fixtures().join("ocr-small");
    let cfg = TextConfig::from_config_json(
        &optimem::model::config::read_config_json(&dir).expect("config"),
    )
    .expect("text config");
    let vb = load_safetensors_mmap(&dir, DType::F32, &Device::Cpu).expect("weights");
    let dec = DeepseekOcrDecoder::new(&cfg, vb).expect("decoder");
    let mut cache = dec.new_cache(1, 20).expect("cache");
    let embeds = dec
        .embed_ids(&want_ids)
        .and_then(|e| Ok(e.unsqueeze(0)?))
        .expect("embeds");
    let logits = dec
        .forward_embeds(&embeds, &mut cache)
        .expect("forward")
        .squeeze(0)
        .expect("squeeze");
    let last8 = logits.narrow(0, 12, 8).expect("narrow");
    assert_eq!(got["hidden"].dims(), [20, 64]);
    assert_eq!(got["logits_last"].dims(), [8, 512]);
    assert!(rel_err(&got["logits_last"], &last8) < 1e-5);

    let decoded: Vec<i64> = got["decoded"].to_vec1().expect("i64 decoded");
    assert_eq!(decoded.len(), 3);
    let first: u32 = last8
        .get(7)
        .and_then(|r| r.argmax(0)?.to_scalar())
        .expect("argmax");
    assert_eq!(decoded[0], i64::from(first));
}

/// Runs `optimem` and checks that it fails with `needle` in its error output.
fn fails_with(args: &[&str], needle: &str) {
    let out = optimem(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
}

#[test]
fn bench_reports_bad_inputs_clearly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A model folder whose weights lack every tensor the model asks for: the first one is named.
    let broken = tmp.path().join("broken");
    std::fs::create_dir(&broken).expect("mkdir");
    std::fs::copy(
        fixtures().join("ocr-small/config.json"),
        broken.join("config.json"),
    )
    .expect("copy config");
    let only = HashMap::from([(
        "unrelated".to_string(),
        Tensor::zeros(2, DType::F32, &Device::Cpu).expect("zeros"),
    )]);
    candle_core::safetensors::save(&only, broken.join("model.safetensors")).expect("save");
    let broken = broken.to_str().expect("utf-8");
    fails_with(
        &["bench", "encoder", "--model", broken, "--mode", "tiny"],
        "lacks tensor `model.sam_model.",
    );
    fails_with(
        &[
            "bench",
            "decoder",
            "--model",
            broken,
            "--prompt-tokens",
            "4",
        ],
        "lacks tensor `model.embed_tokens.weight`",
    );
    fails_with(
        &["bench", "encoder", "--model", "/nonexistent/model"],
        "/nonexistent/model",
    );
    let model = model_dir();
    fails_with(
        &[
            "bench",
            "encoder",
            "--model",
            &model,
            "--image",
            "/nonexistent/page.png",
        ],
        "/nonexistent/page.png",
    );
    fails_with(
        &[
            "bench",
            "decoder",
            "--model",
            &model,
            "--prompt-tokens",
            "0",
        ],
        "at least 1",
    );
}
