//! Forgetting a scope or some memories, each in one transaction.
//!
//! Forgetting a scope must find its keys by scanning, which a sled transaction cannot do.
//! So it scans first, then in the transaction checks that the scope's `Head::version` is
//! the one it scanned under; if a write slipped in between, it scans again. Forgetting
//! memories needs no scan: memory records name their pages.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use sled::Transactional;
use sled::transaction::TransactionalTree;

use super::keys::{memory_key, page_key};
use super::read::locate;
use super::write::bump_version;
use super::{SledStore, TxResult, abort, from_tx, tx};
use crate::error::{Result, StoreError};
use crate::ids::{MemoryId, PageId};
use crate::memory::{Memory, decode_memory, encode_memory};
use crate::scope::Scope;
use crate::store::ForgetReport;

/// How many times `forget_scope` rescans a scope that keeps changing before reporting
/// `Conflict`.
const FORGET_SCOPE_ATTEMPTS: usize = 16;

/// Removes a page's metadata, index entry and parts.
fn remove_page(
    trees: [&TransactionalTree; 4],
    pages: &TransactionalTree,
    key: &[u8],
    id: PageId,
) -> TxResult<()> {
    pages.remove(key)?;
    for t in trees {
        t.remove(&id.to_bytes())?;
    }
    Ok(())
}

impl SledStore {
    pub(super) fn forget_scope_inner(&self, scope: &Scope) -> Result<ForgetReport> {
        let enc = scope.encode();
        for _ in 0..FORGET_SCOPE_ATTEMPTS {
            let head = self.heads.get(&enc)?;
            let pages: Vec<(Vec<u8>, PageId)> = self
                .scan_metas(&enc)?
                .into_iter()
                .map(|m| (page_key(&enc, m.seq), m.id))
                .collect();
            let memories: Vec<MemoryId> = self
                .memories
                .scan_prefix(&enc)
                .values()
                .map(|v| Ok(decode_memory(&v?)?.id))
                .collect::<Result<_>>()?;
            let trees = self.all_trees();
            let done = from_tx(trees.transaction(
                |(heads, tpages, page_ids, tmems, rasters, tokens, sources)| {
                    if heads.get(&enc)? != head {
                        return Ok(false);
                    }
                    for (key, id) in &pages {
                        remove_page([page_ids, rasters, tokens, sources], tpages, key, *id)?;
                    }
                    for id in &memories {
                        tmems.remove(memory_key(&enc, *id))?;
                    }
                    heads.remove(enc.as_slice())?;
                    Ok(true)
                },
            ))?;
            if done {
                return Ok(ForgetReport {
                    pages: pages.into_iter().map(|(_, id)| id).collect(),
                    memories,
                    partially_lost: vec![],
                });
            }
        }
        Err(StoreError::Conflict(format!(
            "scope {scope} kept changing while being forgotten; retry"
        )))
    }

    pub(super) fn forget_memories_inner(
        &self,
        scope: &Scope,
        ids: &[MemoryId],
    ) -> Result<ForgetReport> {
        let enc = scope.encode();
        let asked: BTreeSet<MemoryId> = ids.iter().copied().collect();
        let trees = self.all_trees();
        from_tx(trees.transaction(
            |(heads, pages, page_ids, memories, rasters, tokens, sources)| {
                let mut doomed_pages: BTreeSet<PageId> = BTreeSet::new();
                for &id in &asked {
                    let Some(v) = memories.get(memory_key(&enc, id))? else {
                        return abort(StoreError::NotFound(format!(
                            "memory {id} in scope {scope}"
                        )));
                    };
                    doomed_pages.extend(tx(decode_memory(&v))?.pages);
                    memories.remove(memory_key(&enc, id))?;
                }
                // Other memories that shared a removed page lose it.
                let mut others: BTreeMap<MemoryId, Memory> = BTreeMap::new();
                let mut removed = Vec::new();
                for &pid in &doomed_pages {
                    let Some((key, meta)) = locate(page_ids, pages, &enc, pid)? else {
                        return abort(StoreError::corrupt(format!(
                            "a memory names page {pid}, which is missing"
                        )));
                    };
                    for mid in meta.memories().into_iter().filter(|m| !asked.contains(m)) {
                        if let Entry::Vacant(e) = others.entry(mid) {
                            match memories.get(memory_key(&enc, mid))? {
                                Some(v) => {
                                    e.insert(tx(decode_memory(&v))?);
                                }
                                None => {
                                    return abort(StoreError::corrupt(format!(
                                        "page {pid} names missing memory {mid}"
                                    )));
                                }
                            }
                        }
                    }
                    remove_page([page_ids, rasters, tokens, sources], pages, &key, pid)?;
                    removed.push((meta.seq, pid));
                }
                let mut report = ForgetReport {
                    memories: asked.iter().copied().collect(),
                    ..ForgetReport::default()
                };
                for (mid, mut m) in others {
                    m.pages.retain(|p| !doomed_pages.contains(p));
                    if m.pages.is_empty() {
                        memories.remove(memory_key(&enc, mid))?;
                        report.memories.push(mid);
                    } else {
                        memories.insert(memory_key(&enc, mid), encode_memory(&m))?;
                    }
                    report.partially_lost.push(mid);
                }
                if !asked.is_empty() {
                    bump_version(heads, &enc)?;
                }
                removed.sort();
                report.pages = removed.into_iter().map(|(_, id)| id).collect();
                Ok(report)
            },
        ))
    }
}
