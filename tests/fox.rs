//! `optimem bench fox` end to end on the random-weight fixture model: pages land in the paper's buckets, every output
//! file is written, and the report carries the paper's numbers beside ours. Random weights read nothing, so no
//! precision is asserted beyond its range.

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

#[test]
fn fox_runs_one_page_per_bucket() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("model");
    let text = tmp.path().join("text");
    let out = tmp.path().join("out");
    std::fs::create_dir(&model).expect("mkdir");
    std::fs::create_dir(&text).expect("mkdir");
    fixture_model_dir(&model);
    // Enough prose for 7 pages of up to 1,300 tokens without reuse.
    let prose = optimem_renderer::density::SAMPLE_PROSE.repeat(80);
    std::fs::write(text.join("a.txt"), &prose).expect("write text");
    std::fs::write(text.join("ignored.md"), "not a .txt file").expect("write");
    let o = optimem(&[
        "bench",
        "fox",
        "--model",
        s(&model),
        "--text",
        s(&text),
        "--pages-per-bucket",
        "1",
        "--max-new-tokens",
        "3",
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = String::from_utf8(o.stdout).expect("utf-8");
    assert!(md.contains("| 600–700 | 1 (7) |"), "{md}");
    assert!(
        md.contains("96.5% / 10.5×") && md.contains("87.1% / 12.6×"),
        "{md}"
    );
    assert!(
        md.contains("DeepSeek-V3"),
        "the counting tokenizer is named: {md}"
    );

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("fox.json")).expect("fox.json"))
            .expect("json");
    assert_eq!(report["text_reused"], false);
    let buckets = report["buckets"].as_array().expect("buckets");
    assert_eq!(buckets.len(), 7);
    let pages = report["pages"].as_array().expect("pages");
    assert_eq!(pages.len(), 7);
    for (i, p) in pages.iter().enumerate() {
        let tokens = p["text_tokens"].as_u64().expect("tokens");
        let lo = 600 + 100 * i as u64;
        assert!(
            (lo..lo + 100).contains(&tokens),
            "page {i}: {tokens} tokens"
        );
        let results = p["results"].as_array().expect("results");
        assert_eq!(results.len(), 2);
        for (r, (mode, vt)) in results.iter().zip([("tiny", 64u64), ("small", 100)]) {
            assert_eq!(r["mode"], mode);
            assert_eq!(r["vision_tokens"], vt);
            let prec = r["score"]["precision"].as_f64().expect("precision");
            assert!((0.0..=1.0).contains(&prec));
            assert!(r["generated_tokens"].as_u64().expect("n") <= 3);
        }
        let cell = &buckets[i]["cells"][0];
        let ratio = cell["compression"].as_f64().expect("ratio");
        assert!((ratio - tokens as f64 / 64.0).abs() < 1e-9);
        assert!(out.join(format!("pages/{:03}-truth.txt", i + 1)).is_file());
        assert!(out.join(format!("pages/{:03}-small.txt", i + 1)).is_file());
    }
    let png = std::fs::read(out.join("fox.png")).expect("plot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(out.join("fox.md").is_file());
}

#[test]
fn fox_without_text_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = optimem(&[
        "bench",
        "fox",
        "--model",
        s(tmp.path()),
        "--text",
        s(tmp.path()),
        "--out",
        s(&tmp.path().join("o")),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no text"), "{err}");
}

#[test]
fn fox_refuses_a_font_size_cap_outside_the_fitted_range() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for bad in ["3", "41", "NaN", "inf"] {
        let o = optimem(&[
            "bench",
            "fox",
            "--model",
            s(tmp.path()),
            "--max-font-size",
            bad,
            "--out",
            s(&tmp.path().join("o")),
        ]);
        assert!(!o.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--max-font-size"), "{bad}: {err}");
        assert!(!tmp.path().join("o").exists(), "{bad}: nothing written");
    }
}
