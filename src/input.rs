//! Reading what users hand us: plain text or chat logs (OpenAI-style `{"role","content"}` JSON lines, or a JSON array of them).
//!
//! Bad input is reported with its line number and never silently skipped.

use optimem_renderer::Turn;

/// Why an input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("input is not valid UTF-8 (first bad byte at offset {0})")]
    NotUtf8(usize),
    #[error("line {line}: {reason}")]
    BadLine { line: usize, reason: String },
    #[error("chat JSON array: {0}")]
    BadArray(String),
}

/// Decodes bytes as UTF-8, naming the offset of the first invalid byte.
pub fn utf8(bytes: Vec<u8>) -> Result<String, InputError> {
    String::from_utf8(bytes).map_err(|e| InputError::NotUtf8(e.utf8_error().valid_up_to()))
}

#[derive(serde::Deserialize)]
struct RawTurn {
    role: String,
    content: serde_json::Value,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    time: Option<String>,
}

impl RawTurn {
    fn into_turn(self) -> Result<Turn, String> {
        if self.role.trim().is_empty() {
            return Err("empty \"role\"".into());
        }
        let content = match self.content {
            serde_json::Value::String(s) => s,
            // OpenAI content parts: [{"type":"text","text":"..."}]; other part types carry no text to remember.
            serde_json::Value::Array(parts) => {
                let mut texts = Vec::new();
                for p in parts {
                    match p.get("text").and_then(|t| t.as_str()) {
                        Some(t) => texts.push(t.to_owned()),
                        None => return Err(format!("content part without text: {p}")),
                    }
                }
                texts.join("\n")
            }
            serde_json::Value::Null => String::new(),
            other => {
                return Err(format!(
                    "\"content\" must be a string or a list of text parts, got {other}"
                ));
            }
        };
        Ok(Turn {
            role: self.role,
            content,
            name: self.name,
            time: self.time,
        })
    }
}

/// Parses a chat log: a JSON array of turns, or one JSON object per line (blank lines allowed).
pub fn parse_chat(text: &str) -> Result<Vec<Turn>, InputError> {
    if text.trim_start().starts_with('[') {
        let raw: Vec<RawTurn> =
            serde_json::from_str(text).map_err(|e| InputError::BadArray(e.to_string()))?;
        return raw
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.into_turn()
                    .map_err(|reason| InputError::BadArray(format!("element {i}: {reason}")))
            })
            .collect();
    }
    let mut turns = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| InputError::BadLine {
            line: i + 1,
            reason,
        };
        let raw: RawTurn = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        turns.push(raw.into_turn().map_err(bad)?);
    }
    Ok(turns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_and_array_agree() {
        let lines = "{\"role\":\"user\",\"content\":\"hi\"}\n\n{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"yo\"}]}\n";
        let arr =
            "[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"yo\"}]";
        let a = parse_chat(lines).expect("jsonl");
        let b = parse_chat(arr).expect("array");
        assert_eq!(a, b);
        assert_eq!(a[1].content, "yo");
    }

    #[test]
    fn bad_lines_are_named() {
        let err = parse_chat("{\"role\":\"user\",\"content\":\"a\"}\nnot json\n")
            .expect_err("line 2 is bad");
        assert!(err.to_string().starts_with("line 2:"), "{err}");
        let err = parse_chat("{\"role\":\"\",\"content\":\"a\"}").expect_err("empty role");
        assert!(err.to_string().contains("role"), "{err}");
        assert!(matches!(
            utf8(vec![b'a', 0xff]),
            Err(InputError::NotUtf8(1))
        ));
    }
}
