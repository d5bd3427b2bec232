//! Memories: one per remembered message. A memory records who said it, when, its metadata
//! and the pages its text lies on; the text itself lives on those pages (raster, tokens and,
//! when kept, the page source text addressed by the pages' spans).

use std::collections::BTreeMap;

use crate::codec::{Reader, Writer};
use crate::error::{Result, StoreError};
use crate::ids::{MemoryId, PageId};

/// Longest role, metadata key or value accepted, in bytes.
pub const MAX_FIELD_BYTES: usize = 4096;
/// Most metadata entries on one memory.
pub const MAX_METADATA_ENTRIES: usize = 64;

/// A message to remember. Its id is made by the caller (`MemoryId::new()`), because the
/// pages written with it already name it in their spans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMemory {
    pub id: MemoryId,
    /// `user`, `assistant`, `system`, `tool`, ... (free text, not empty).
    pub role: String,
    /// When the message was said (ms since the Unix epoch), as given by the caller.
    pub time_ms: u64,
    pub metadata: BTreeMap<String, String>,
    /// Length of the message text in bytes; spans must lie within it.
    pub text_bytes: u64,
}

impl NewMemory {
    pub(crate) fn validate(&self) -> Result<()> {
        let field = |name: &str, v: &str| -> Result<()> {
            if v.len() > MAX_FIELD_BYTES {
                return Err(StoreError::invalid(format!(
                    "memory {}: {name} is {} bytes, at most {MAX_FIELD_BYTES} allowed",
                    self.id,
                    v.len()
                )));
            }
            Ok(())
        };
        if self.role.is_empty() {
            return Err(StoreError::invalid(format!(
                "memory {}: role is empty",
                self.id
            )));
        }
        field("role", &self.role)?;
        if self.metadata.len() > MAX_METADATA_ENTRIES {
            return Err(StoreError::invalid(format!(
                "memory {}: {} metadata entries, at most {MAX_METADATA_ENTRIES} allowed",
                self.id,
                self.metadata.len()
            )));
        }
        for (k, v) in &self.metadata {
            field("metadata key", k)?;
            field("metadata value", v)?;
        }
        Ok(())
    }
}

/// A stored memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Memory {
    pub id: MemoryId,
    pub role: String,
    pub time_ms: u64,
    pub metadata: BTreeMap<String, String>,
    pub text_bytes: u64,
    /// The pages holding a piece of this memory, in page order.
    pub pages: Vec<PageId>,
}

impl Memory {
    pub(crate) fn from_new(m: NewMemory) -> Self {
        Self {
            id: m.id,
            role: m.role,
            time_ms: m.time_ms,
            metadata: m.metadata,
            text_bytes: m.text_bytes,
            pages: vec![],
        }
    }
}

const MEMORY_VERSION: u8 = 1;

pub(crate) fn encode_memory(m: &Memory) -> Vec<u8> {
    let mut w = Writer::new(MEMORY_VERSION);
    w.fixed(&m.id.to_bytes())
        .str(&m.role)
        .u64(m.time_ms)
        .u64(m.text_bytes);
    w.u32(m.metadata.len() as u32);
    for (k, v) in &m.metadata {
        w.str(k).str(v);
    }
    w.u32(m.pages.len() as u32);
    for p in &m.pages {
        w.fixed(&p.to_bytes());
    }
    w.finish()
}

pub(crate) fn decode_memory(buf: &[u8]) -> Result<Memory> {
    let mut r = Reader::new(buf, "memory", MEMORY_VERSION)?;
    let id = MemoryId::from_bytes(r.fixed()?);
    let (role, time_ms, text_bytes) = (r.string()?, r.u64()?, r.u64()?);
    let n = r.count(8)?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n {
        metadata.insert(r.string()?, r.string()?);
    }
    let n = r.count(16)?;
    let pages = (0..n)
        .map(|_| r.fixed().map(PageId::from_bytes))
        .collect::<Result<Vec<_>>>()?;
    r.finish()?;
    Ok(Memory {
        id,
        role,
        time_ms,
        metadata,
        text_bytes,
        pages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_round_trips_and_rejects_damage() -> Result<()> {
        let m = Memory {
            id: MemoryId::new(),
            role: "assistant".into(),
            time_ms: 1_700_000_000_123,
            metadata: BTreeMap::from([("lang".into(), "zh".into()), ("k".into(), String::new())]),
            text_bytes: 12_345,
            pages: vec![PageId::new(), PageId::new()],
        };
        let enc = encode_memory(&m);
        assert_eq!(decode_memory(&enc)?, m);
        for cut in 0..enc.len() {
            assert!(matches!(
                decode_memory(&enc[..cut]),
                Err(StoreError::Corrupt(_))
            ));
        }
        Ok(())
    }

    #[test]
    fn validation() {
        let ok = NewMemory {
            id: MemoryId::new(),
            role: "user".into(),
            time_ms: 0,
            metadata: BTreeMap::new(),
            text_bytes: 3,
        };
        assert!(ok.validate().is_ok());
        assert!(
            NewMemory {
                role: String::new(),
                ..ok.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            NewMemory {
                role: "r".repeat(MAX_FIELD_BYTES + 1),
                ..ok.clone()
            }
            .validate()
            .is_err()
        );
        let many = (0..=MAX_METADATA_ENTRIES)
            .map(|i| (i.to_string(), String::new()))
            .collect();
        assert!(
            NewMemory {
                metadata: many,
                ..ok
            }
            .validate()
            .is_err()
        );
    }
}
