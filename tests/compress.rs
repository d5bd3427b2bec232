//! `optimem compress` end to end: a chat log becomes pages at the policy's tiers (newest sharpest), with a manifest and
//! a report whose totals add up; `--verify` OCRs each page with the fixture model; bad input fails with line numbers.

use std::path::Path;
use std::process::Command;

mod common;
use common::fixture_model_dir;

fn optimem(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_optimem"))
        .args(args)
        .output()
        .expect("optimem runs")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn chat_log(turns: usize, repeat: usize) -> String {
    let prose = optimem_renderer::density::SAMPLE_PROSE.repeat(repeat);
    (0..turns)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            serde_json::json!({"role": role, "content": format!("Turn {i}. {prose}")}).to_string()
                + "\n"
        })
        .collect()
}

#[test]
fn compress_chat_with_policy_and_verify() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).expect("mkdir");
    fixture_model_dir(&model);
    let input = tmp.path().join("chat.jsonl");
    std::fs::write(&input, chat_log(3, 6)).expect("write");
    let out = tmp.path().join("out");
    let o = optimem(&[
        "compress",
        "--in",
        s(&input),
        "--chat",
        "--policy",
        "small:1,tiny",
        "--out",
        s(&out),
        "--model",
        s(&model),
        "--verify",
        "--max-new-tokens",
        "3",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest"))
            .expect("json");
    let pages = manifest["pages"].as_array().expect("pages");
    assert!(pages.len() >= 2, "{} pages", pages.len());
    let (last, older) = pages.split_last().expect("non-empty");
    assert_eq!(last["tier"], "small");
    assert_eq!(last["rank"], 0);
    assert_eq!(last["vision_tokens"], 100);
    for p in older {
        assert_eq!(p["tier"], "tiny");
        assert_eq!(p["vision_tokens"], 64);
    }
    let mut text_tokens = 0;
    for p in pages {
        let file = out.join(p["file"].as_str().expect("file"));
        let png = std::fs::read(&file).expect("page png");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(!p["spans"].as_array().expect("spans").is_empty());
        let prec = p["verify"]["precision"].as_f64().expect("verified");
        assert!((0.0..=1.0).contains(&prec));
        text_tokens += p["text_tokens"].as_u64().expect("tokens");
        // The fixture model's hidden size × f16 bytes × embeddings fed.
        let emb = p["embeddings"].as_u64().expect("embeddings");
        assert_eq!(p["token_bytes_f16"].as_u64().expect("bytes") % (2 * emb), 0);
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report"))
            .expect("json");
    assert_eq!(report["text_tokens"].as_u64(), Some(text_tokens));
    let vision = 100 + 64 * (pages.len() as u64 - 1);
    assert_eq!(report["vision_tokens"].as_u64(), Some(vision));
    let ratio = report["compression_ratio"].as_f64().expect("ratio");
    assert!((ratio - text_tokens as f64 / vision as f64).abs() < 1e-9);
    assert!(report["verify_overall"]["precision"].is_f64());
    assert_eq!(report["per_tier"].as_array().expect("tiers").len(), 2);
    assert!(out.join("report.md").is_file());
}

#[test]
fn compress_plain_text_without_model() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("notes.txt");
    std::fs::write(&input, "Short notes fit on one page.").expect("write");
    let out = tmp.path().join("out");
    let o = optimem(&[
        "compress",
        "--in",
        s(&input),
        "--out",
        s(&out),
        "--model",
        s(&tmp.path().join("none")),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report"))
            .expect("json");
    // One page, the newest: Base under the default policy.
    assert_eq!(report["pages"], 1);
    assert_eq!(report["vision_tokens"], 256);
    assert_eq!(report["hidden_size"], 1280);
    assert!(out.join("page-0001.png").is_file());
}

#[test]
fn malformed_chat_and_policy_fail_loudly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("chat.jsonl");
    std::fs::write(
        &input,
        "{\"role\":\"user\",\"content\":\"hi\"}\n{\"role\":\"user\"\n",
    )
    .expect("write");
    let out = tmp.path().join("out");
    let o = optimem(&["compress", "--in", s(&input), "--chat", "--out", s(&out)]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 2"), "{err}");
    assert!(
        !out.join("manifest.json").exists(),
        "nothing written for a bad input"
    );

    let good = tmp.path().join("ok.txt");
    std::fs::write(&good, "text").expect("write");
    let o = optimem(&[
        "compress",
        "--in",
        s(&good),
        "--policy",
        "base:two,tiny",
        "--out",
        s(&out),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("policy"));
}
