//! The harness of the crash tests: run one test of the current test binary as a child process, wait until it says it
//! is ready, let it work a while, kill it with SIGKILL and hand back everything it printed. Used by
//! `store/tests/crash.rs` and, through `#[path]`, by the memory layer's `tests/memory_crash.rs`.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Runs test `test` of this test binary as a child with `env`, waits (at most `ready_within`) for a stdout line ending
/// in `READY`, lets it run for `run_for`, kills it (SIGKILL on Unix) and returns its stdout lines. A child that never
/// gets ready, or that exits by itself, is an error carrying its stderr.
pub fn run_and_kill(
    test: &str,
    env: &[(&str, &OsStr)],
    ready_within: Duration,
    run_for: Duration,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("child has no stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // libtest prints "test NAME ... " without a newline before the test body runs, so the child's READY ends a line
    // rather than being one.
    let deadline = Instant::now() + ready_within;
    let mut lines = Vec::new();
    while !lines.last().is_some_and(|l: &String| l.ends_with("READY")) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output()?;
                return Err(format!(
                    "child never got ready: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
        }
    }
    std::thread::sleep(run_for);
    child.kill()?;
    let out = child.wait_with_output()?;
    reader.join().map_err(|_| "reader thread panicked")?;
    lines.extend(rx.try_iter());
    if out.status.success() {
        return Err(format!(
            "child exited by itself: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(lines)
}

/// Parses one word of a line the child printed; a missing or malformed word is an error naming the line.
pub fn field<T: std::str::FromStr<Err: std::fmt::Display>>(
    word: Option<&str>,
    line: &str,
) -> Result<T, String> {
    let word = word.ok_or_else(|| format!("short line {line:?}"))?;
    word.parse().map_err(|e| format!("{e} in line {line:?}"))
}
