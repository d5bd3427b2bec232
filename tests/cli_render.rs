//! `optimem render` and `optimem render-stream` as a user runs them: real binary, real files, exit codes and messages.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn optimem(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_optimem"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the optimem binary runs");
    // The binary may reject its arguments and exit before reading stdin: a broken pipe is then expected.
    if let Err(e) = child.stdin.take().expect("piped stdin").write_all(stdin) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
    }
    child.wait_with_output().expect("optimem exits")
}

fn manifest(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest written"))
        .expect("manifest is JSON")
}

#[test]
fn renders_text_into_pngs_and_a_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "Optical memory keeps the gist of old turns. ".repeat(300);
    let out = optimem(
        &[
            "render",
            "--in",
            "-",
            "--tier",
            "tiny",
            "--out",
            dir.path().to_str().expect("utf-8 path"),
        ],
        text.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = manifest(dir.path());
    let pages = m["pages"].as_array().expect("pages");
    assert!(pages.len() >= 2);
    assert_eq!(m["pixels"], 512);
    assert_eq!(m["vision_tokens"], 64);
    let mut covered = 0;
    for p in pages {
        let png =
            std::fs::read(dir.path().join(p["file"].as_str().expect("file"))).expect("png written");
        let img = optimem_renderer::GrayImage::from_png(&png).expect("grayscale png");
        assert_eq!((img.width, img.height), (512, 512));
        let s = &p["spans"][0];
        assert_eq!(s["start"], covered);
        covered = s["end"].as_u64().expect("end") as usize;
    }
    assert_eq!(covered, text.len());
}

#[test]
fn empty_input_gives_zero_pages_and_success() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = optimem(
        &[
            "render",
            "--in",
            "-",
            "--out",
            dir.path().to_str().expect("utf-8 path"),
        ],
        b"",
    );
    assert!(out.status.success());
    assert_eq!(
        manifest(dir.path())["pages"].as_array().map(Vec::len),
        Some(0)
    );
}

#[test]
fn bad_input_is_a_clear_error_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("out");
    let d = d.to_str().expect("utf-8 path");
    let out = optimem(
        &["render", "--in", "-", "--out", d],
        &[b'o', b'k', 0xff, 0xfe],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not valid UTF-8"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = optimem(
        &["render", "--in", "-", "--chat", "--out", d],
        b"{\"role\":\"user\",\"content\":\"hi\"}\n{oops\n",
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = optimem(
        &["render", "--in", "/nonexistent/file.txt", "--out", d],
        b"",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/file.txt"));

    let out = optimem(&["render", "--in", "-", "--tier", "huge", "--out", d], b"x");
    assert!(!out.status.success());
    let out = optimem(
        &["render", "--in", "-", "--font-size", "0", "--out", d],
        b"x",
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("layout"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads one frame of render-stream output: (header, pixels, rest).
fn frame(buf: &[u8]) -> (serde_json::Value, &[u8], &[u8]) {
    let n = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&buf[4..4 + n]).expect("header JSON");
    let px =
        (header["width"].as_u64().expect("w") * header["height"].as_u64().expect("h")) as usize;
    (header, &buf[4 + n..4 + n + px], &buf[4 + n + px..])
}

#[test]
fn render_stream_frames_pages_with_visible_text_and_glyph_centres() {
    let input = concat!(
        "{\"text\": \"Hello stream\"}\n",
        "{\"turns\": [{\"role\": \"user\", \"content\": \"hi\"}], \"tier\": \"tiny\"}\n",
        "{\"text\": \"\"}\n",
    );
    let out = optimem(&["render-stream", "--tier", "small"], input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (h1, px1, rest) = frame(&out.stdout);
    assert_eq!(
        (h1["width"].as_u64(), h1["tier"].as_str()),
        (Some(640), Some("small"))
    );
    assert_eq!(h1["visible_text"], "Hello stream");
    let offsets: Vec<u64> = h1["glyphs"]
        .as_array()
        .expect("glyphs")
        .iter()
        .map(|g| g[0].as_u64().expect("offset"))
        .collect();
    assert_eq!(
        offsets,
        (0..12).collect::<Vec<u64>>(),
        "one glyph per character of \"Hello stream\", in order"
    );
    assert!(px1.iter().any(|&p| p < 128));
    let (h2, _, rest) = frame(rest);
    assert_eq!(h2["visible_text"], "user: hi");
    assert_eq!(h2["width"], 512);
    let (h3, px3, rest) = frame(rest);
    assert_eq!((h3["pages"].as_u64(), px3.len()), (Some(0), 0));
    assert!(rest.is_empty());

    let out = optimem(&["render-stream"], b"{\"text\": \"a\", \"turns\": []}\n");
    assert!(!out.status.success());
}

#[test]
fn render_stream_top_lowers_the_text_and_rejects_what_does_not_fit() {
    let input = concat!(
        "{\"text\": \"Hello stream\", \"tier\": \"small\"}\n",
        "{\"text\": \"Hello stream\", \"tier\": \"small\", \"top\": 500}\n",
    );
    let out = optimem(&["render-stream"], input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (h1, _, rest) = frame(&out.stdout);
    let (h2, _, _) = frame(rest);
    assert_eq!(h2["visible_text"], "Hello stream");
    let y = |h: &serde_json::Value| h["glyphs"][0][2].as_f64().expect("glyph y");
    // 500 logical units of the 1024 canvas are 312.5 px at Small (640 px).
    assert!(
        (y(&h2) - y(&h1) - 312.5).abs() < 0.01,
        "{} vs {}",
        y(&h2),
        y(&h1)
    );
    for bad in ["-1", "940", "1e9"] {
        let line = format!("{{\"text\": \"a\", \"top\": {bad}}}\n");
        let out = optimem(&["render-stream"], line.as_bytes());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("\"top\" must be between 0 and"),
            "top {bad}: {err}"
        );
    }
}
