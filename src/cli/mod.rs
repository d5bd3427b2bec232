//! The verbs of the `optimem` binary. Each function takes validated arguments from `main.rs` and does one job.

pub mod bench;
pub mod bench_memory;
pub mod bench_service;
pub mod client;
pub mod compress;
pub mod fox;
pub mod ocr;
pub mod render;
pub mod serve;

use std::time::Duration;

/// Prints a bench report: pretty JSON with `--json`, else its markdown.
pub fn print_report<R: serde::Serialize>(
    json: bool,
    report: &R,
    markdown: impl FnOnce(&R) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", markdown(report));
    }
    Ok(())
}

/// A duration flag: a whole number with a unit, `ms`, `s`, `m` or `h` (`250ms`, `60s`, `10m`), or `0` for none.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected a number then ms, s, m or h (e.g. 60s, 10m)"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "" => {
            return Err(format!(
                "{text:?}: give a unit: ms, s, m or h (e.g. 60s, 10m)"
            ));
        }
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?}; use ms, s, m or h"
            ));
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_bad_ones_say_why() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "s",
            "10",
            "1.5s",
            "-1s",
            "10 days",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
