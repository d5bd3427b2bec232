//! Key layout of the sled trees. All integers are big-endian so that byte order is
//! numeric order; a scope prefix is self-delimiting (see `Scope::encode`).
//!
//! | tree       | key                         | value                          |
//! |------------|-----------------------------|--------------------------------|
//! | `meta`     | name                        | schema version, model id       |
//! | `heads`    | scope                       | `Head` (next seq, version)     |
//! | `pages`    | scope ‖ seq (u64)           | `PageMeta` record              |
//! | `page_ids` | page id (16)                | the page's `pages` key         |
//! | `memories` | scope ‖ memory id (16)      | `Memory` record                |
//! | `rasters`  | page id (16)                | PNG bytes                      |
//! | `tokens`   | page id (16)                | token bytes (none if pending)  |
//! | `sources`  | page id (16)                | zstd-compressed source text    |
//!
//! So a prefix scan of `pages` by scope yields that scope's pages in sequence order, and of
//! `memories` its memories in UUID v7 (creation time) order.

use crate::codec::{Reader, Writer};
use crate::error::Result;
use crate::ids::MemoryId;

pub(crate) fn page_key(scope: &[u8], seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(scope.len() + 8);
    k.extend_from_slice(scope);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence number of a `pages` key if the key belongs to exactly this scope.
pub(crate) fn seq_in_scope(scope: &[u8], key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(scope)?;
    let seq: [u8; 8] = rest.try_into().ok()?;
    Some(u64::from_be_bytes(seq))
}

pub(crate) fn memory_key(scope: &[u8], id: MemoryId) -> Vec<u8> {
    let mut k = Vec::with_capacity(scope.len() + 16);
    k.extend_from_slice(scope);
    k.extend_from_slice(&id.to_bytes());
    k
}

/// Per-scope counters, changed by every write to the scope.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Head {
    /// The sequence number the next appended page gets.
    pub next_seq: u64,
    /// Bumped by every change to the scope; lets scan-then-write operations (forget a
    /// scope) detect a concurrent change between their scan and their transaction.
    pub version: u64,
}

const HEAD_VERSION: u8 = 1;

impl Head {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(HEAD_VERSION);
        w.u64(self.next_seq).u64(self.version);
        w.finish()
    }

    pub(crate) fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf, "head", HEAD_VERSION)?;
        let head = Self {
            next_seq: r.u64()?,
            version: r.u64()?,
        };
        r.finish()?;
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::Scope;

    #[test]
    fn page_keys_scan_in_sequence_order_within_scope() -> Result<()> {
        let a = Scope::user("a")?.encode();
        let ab = Scope::new(Some("a"), Some("b"), None)?.encode();
        let seqs = [0u64, 1, 2, 255, 256, 65_535, 65_536, 1 << 40, u64::MAX];
        let mut keys: Vec<Vec<u8>> = seqs.iter().map(|&s| page_key(&a, s)).collect();
        keys.extend(seqs.iter().map(|&s| page_key(&ab, s)));
        // `a` encodes "user=a, no agent" and `ab` "user=a, agent=b": absent sorts first, so
        // byte order is all of `a` in numeric sequence order, then all of `ab`.
        let mut shuffled = keys.clone();
        shuffled.reverse();
        shuffled.swap(0, 7);
        shuffled.sort();
        assert_eq!(shuffled, keys);
        // A key of one scope never parses as a key of the other.
        for k in &keys {
            assert!(seq_in_scope(&a, k).is_some() != seq_in_scope(&ab, k).is_some());
        }
        Ok(())
    }

    #[test]
    fn memory_keys_follow_creation_order() -> Result<()> {
        let s = Scope::user("u")?.encode();
        let ids: Vec<MemoryId> = (0..50).map(|_| MemoryId::new()).collect();
        for w in ids.windows(2) {
            assert!(memory_key(&s, w[0]) < memory_key(&s, w[1]));
        }
        Ok(())
    }

    #[test]
    fn head_round_trips() -> Result<()> {
        let h = Head {
            next_seq: 9,
            version: 1 << 50,
        };
        assert_eq!(Head::decode(&h.encode())?, h);
        assert!(Head::decode(&h.encode()[..10]).is_err());
        Ok(())
    }
}
