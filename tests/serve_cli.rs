//! `optimem serve` flags (issue 5): a store made by another model is refused with a clear error under
//! `--on-model-change refuse`, and the refusal leaves the store as it was; bad durations are rejected by name.
//! The client verbs (issue 6) against a running `optimem serve`: remember, recall, stats, forget, and their errors.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

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

#[test]
fn serve_rejects_an_unusable_font_size_before_loading_the_model() {
    for bad in ["0", "-3", "nan"] {
        let flag = format!("--font-size={bad}");
        let out = optimem(&["serve", &flag, "--model", "/nonexistent/model"]);
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--font-size"), "{bad}: {err}");
        assert!(
            !err.contains("/nonexistent/model"),
            "{bad}: the model was loaded first: {err}"
        );
    }
}

/// A running `optimem serve` on a free port; killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `optimem serve --addr 127.0.0.1:0 --encode sync` and `extra` flags with the fixture model, and reads the bound
/// address from its log.
fn start_server(dir: &std::path::Path, extra: &[&str]) -> Server {
    let model = dir.join("model");
    std::fs::create_dir(&model).expect("mkdir");
    common::fixture_model_dir(&model);
    let mut child = Command::new(env!("CARGO_BIN_EXE_optimem"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data"])
        .arg(dir.join("data"))
        .arg("--model")
        .arg(&model)
        .args(["--encode", "sync"])
        .args(extra)
        .env("OPTIMEM_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("serve logs its address before it exits")
            .expect("utf-8 log");
        if let Some(at) = line.find("addr=") {
            let addr: String = line[at + 5..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            break addr;
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Server { child, addr }
}

/// Runs a client verb against `server` with `stdin`; returns (success, stdout, stderr).
fn client(server: &Server, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_optimem"))
        .args(args)
        .args(["--addr", &server.addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("client ends");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn client_verbs_talk_to_a_running_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = start_server(tmp.path(), &[]);
    let chat = concat!(
        r#"{"role":"user","content":"Where did the nightly build fail?"}"#,
        "\n",
        r#"{"role":"assistant","content":"In the linker: it ran out of memory."}"#,
        "\n"
    );

    let (ok, ids, err) = client(&server, &["remember", "--session", "s1"], chat);
    assert!(ok, "remember: {err}");
    assert_eq!(ids.lines().count(), 2, "one memory id per message: {ids}");
    assert!(err.contains("compression ratio"), "{err}");
    let (ok, _, err) = client(
        &server,
        &["remember", "--session", "s1", "--text"],
        "A plain-text note.",
    );
    assert!(ok, "remember --text: {err}");

    let (ok, text, err) = recall_exact(&server, "s1");
    assert!(ok, "recall: {err}");
    for said in ["nightly build", "ran out of memory", "plain-text note"] {
        assert!(text.contains(said), "recall exact has {said:?}: {text}");
    }
    // Another session sees nothing of s1.
    let (ok, text, err) = recall_exact(&server, "s2");
    assert!(ok, "recall of an empty session: {err}");
    assert!(!text.contains("nightly"), "{text}");

    let (ok, stats, err) = client(&server, &["stats", "--session", "s1"], "");
    assert!(
        ok && stats.contains("memories: 3,") && token_bytes(&stats) > 0,
        "stats: {err} {stats}"
    );

    // Bad input: a non-zero exit with the server's reason, and nothing changed.
    let (ok, _, err) = client(&server, &["remember", "--session", "s1"], "{not json}\n");
    assert!(!ok && err.contains("line 1"), "malformed chat: {err}");
    let (ok, _, err) = client(&server, &["recall", "--last", "1", "--mode", "exact"], "");
    assert!(
        !ok && !err.is_empty(),
        "recall without a scope fails: {err}"
    );

    let (ok, out, err) = client(&server, &["forget", "--session", "s1"], "");
    assert!(
        ok && out.contains("forgot 3 memories"),
        "forget: {err} {out}"
    );
    let (ok, text, _) = recall_exact(&server, "s1");
    assert!(ok && !text.contains("nightly"), "forgotten: {text}");
}

/// `optimem recall --mode exact` of the last 3 pages of `session`.
fn recall_exact(server: &Server, session: &str) -> (bool, String, String) {
    client(
        server,
        &[
            "recall",
            "--session",
            session,
            "--last",
            "3",
            "--mode",
            "exact",
        ],
        "",
    )
}

/// `bytes_tokens` from the Debug print of `optimem stats`.
fn token_bytes(stats: &str) -> u64 {
    let at = stats
        .find("bytes_tokens: ")
        .expect("stats print bytes_tokens")
        + "bytes_tokens: ".len();
    stats[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

#[test]
fn serve_stores_int8_tokens_and_no_source_when_asked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let chat = r#"{"role":"user","content":"Where did the nightly build fail? In the linker, out of memory."}"#;
    let mut bytes = Vec::new();
    for (name, flags) in [
        ("f16", &[][..]),
        (
            "int8",
            &["--tokens", "int8", "--no-source", "--flush-every", "200ms"][..],
        ),
    ] {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).expect("mkdir");
        let server = start_server(&dir, flags);
        let (ok, _, err) = client(&server, &["remember", "--session", "s"], chat);
        assert!(ok, "{name} remember: {err}");
        let (ok, stats, err) = client(&server, &["stats", "--session", "s"], "");
        assert!(ok, "{name} stats: {err}");
        bytes.push(token_bytes(&stats));
        let (ok, text, err) = client(
            &server,
            &["recall", "--session", "s", "--last", "1", "--mode", "exact"],
            "",
        );
        if name == "f16" {
            assert!(ok && text.contains("nightly build"), "{err} {text}");
        } else {
            assert!(
                !ok && err.contains("source"),
                "no source kept: {err} {text}"
            );
            // The raster and the tokens are there.
            let (ok, out, err) = client(
                &server,
                &[
                    "recall",
                    "--session",
                    "s",
                    "--last",
                    "1",
                    "--mode",
                    "embeddings",
                ],
                "",
            );
            assert!(ok && !out.is_empty(), "{err}");
        }
    }
    // int8 with a scale per row: about half of f16's two bytes per value.
    assert!(
        bytes[1] * 10 < bytes[0] * 6 && bytes[1] > 0,
        "token bytes f16 {} vs int8 {}",
        bytes[0],
        bytes[1]
    );
}
