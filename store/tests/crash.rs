//! Kill-and-reopen test of the durability contract, in the style of sled's own crash tests.
//!
//! The test binary re-runs itself as a child (`current_exe` + `OPTIMEM_CRASH_CHILD`). The
//! child opens the store with `Durability::Flush` and loops over random changes — append
//! pages, replace the last page, age a page, forget a memory — printing `ACK` lines (flushed)
//! only after each call has returned. The parent kills it with SIGKILL at a random moment,
//! reopens the store and checks:
//! - every acknowledged page is there, at least at its acknowledged generation, with the
//!   acknowledged tier when the generation is the same;
//! - no page is half-written or half-aged: tier, raster, tokens and source carry one stamp,
//!   every part matches its CRC, and memories and pages name each other.
//!
//! 20 kills by default (a few seconds); `OPTIMEM_CRASH_ITERS=100` for the full run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use common::kill::{field, run_and_kill};
use common::{
    Rng, check_scope, new_memory, next_blurrier, source_nonce, stamped_page, stamped_update,
};
use optimem_store::{
    OpenOptions, PageId, PageParts, PageSelector, ReplaceLast, Scope, SledStore, Store, WritePages,
};

const CHILD_ENV: &str = "OPTIMEM_CRASH_CHILD";
const DIR_ENV: &str = "OPTIMEM_CRASH_DIR";
const MODEL: &str = "crash-model";
/// Past this many pages in a scope the child forgets its oldest memory on every step,
/// keeping the store (and each reopen's check) small.
const MAX_PAGES_PER_SCOPE: usize = 60;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn scopes() -> Result<[Scope; 2], optimem_store::StoreError> {
    Ok([
        Scope::user("crash")?,
        Scope::new(Some("crash"), None, Some("session"))?,
    ])
}

/// One line to the parent, flushed before the next change starts.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // If the parent is gone there is nobody to tell; the kill is about to arrive.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The child: random changes forever, acknowledging each after it returns.
fn child(dir: &str) -> TestResult {
    let store = SledStore::open(dir, OpenOptions::new(MODEL))?;
    let scopes = scopes()?;
    let (mut rng, _) = Rng::from_time();
    say("READY");
    loop {
        let scope = &scopes[rng.below(2) as usize];
        let pages = store.list_pages(scope)?;
        let op = if pages.len() > MAX_PAGES_PER_SCOPE {
            9
        } else {
            rng.below(10)
        };
        match (op, pages.last()) {
            (0..=4, _) | (_, None) => {
                let n = 1 + rng.below(2);
                let memory = new_memory(n * 100);
                let tier = common::AGEING[rng.below(3) as usize];
                let new_pages = (0..n)
                    .map(|i| {
                        stamped_page(
                            memory.id,
                            i * 100..(i + 1) * 100,
                            rng.next(),
                            tier,
                            &mut rng,
                        )
                    })
                    .collect();
                let receipt = store.write_pages(
                    scope,
                    WritePages {
                        memories: vec![memory],
                        replace_last: None,
                        pages: new_pages,
                    },
                )?;
                for m in receipt.pages {
                    say(&format!("ACK {} {} {}", m.id, m.generation, m.tier.code()));
                }
            }
            (5, Some(last)) => {
                let span = last.spans[0].clone();
                let page = stamped_page(span.memory, span.text, rng.next(), last.tier, &mut rng);
                let write = WritePages {
                    memories: vec![],
                    replace_last: Some(ReplaceLast {
                        id: last.id,
                        generation: last.generation,
                    }),
                    pages: vec![page],
                };
                let m = store.write_pages(scope, write)?.pages.remove(0);
                say(&format!("ACK {} {} {}", m.id, m.generation, m.tier.code()));
            }
            (6..=8, Some(_)) => {
                let meta = &pages[rng.below(pages.len() as u64) as usize];
                let Some(tier) = next_blurrier(meta.tier) else {
                    continue;
                };
                let page = store
                    .get_pages(scope, &PageSelector::Ids(vec![meta.id]), PageParts::ALL)?
                    .remove(0);
                let update = stamped_update(source_nonce(&page)?, tier, &mut rng);
                let m = store.update_page(scope, meta.id, page.meta.generation, update)?;
                say(&format!("ACK {} {} {}", m.id, m.generation, m.tier.code()));
            }
            (_, Some(_)) => {
                let memory = pages[0].spans[0].memory;
                let doomed = store.get_memories(scope, &[memory])?.remove(0).pages;
                // Announced first: if the kill lands after the commit, these may be gone.
                say(&format!(
                    "MAYBE-GONE {}",
                    doomed
                        .iter()
                        .map(PageId::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
                let report = store.forget_memories(scope, &[memory])?;
                say(&format!(
                    "GONE {}",
                    report
                        .pages
                        .iter()
                        .map(PageId::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
            }
        }
    }
}

/// What the parent knows must be durable: page → (generation, tier code) acknowledged.
#[derive(Default)]
struct Expected {
    pages: BTreeMap<PageId, (u64, u8)>,
    maybe_gone: BTreeSet<PageId>,
}

impl Expected {
    fn apply(&mut self, line: &str) -> Result<(), String> {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("ACK") => {
                let id: PageId = field(words.next(), line)?;
                let generation: u64 = field(words.next(), line)?;
                let tier: u8 = field(words.next(), line)?;
                let known = self.pages.entry(id).or_insert((generation, tier));
                if generation >= known.0 {
                    *known = (generation, tier);
                }
            }
            Some("MAYBE-GONE") => {
                for w in words {
                    self.maybe_gone.insert(field(Some(w), line)?);
                }
            }
            Some("GONE") => {
                for w in words {
                    let id: PageId = field(Some(w), line)?;
                    self.pages.remove(&id);
                    self.maybe_gone.remove(&id);
                }
            }
            _ => {} // libtest's own lines, READY.
        }
        Ok(())
    }

    /// Checks the reopened store against what was acknowledged, then adopts its state.
    fn check(&mut self, store: &SledStore) -> Result<usize, String> {
        let mut found: BTreeMap<PageId, (u64, u8)> = BTreeMap::new();
        for scope in scopes().map_err(|e| e.to_string())? {
            for p in check_scope(store, &scope)? {
                found.insert(p.meta.id, (p.meta.generation, p.meta.tier.code()));
            }
        }
        for (id, &(generation, tier)) in &self.pages {
            match found.get(id) {
                None if self.maybe_gone.contains(id) => {}
                None => return Err(format!("acknowledged page {id} is missing")),
                Some(&(g, _)) if g < generation => {
                    return Err(format!(
                        "page {id} is at generation {g}, acknowledged {generation}"
                    ));
                }
                Some(&(g, t)) if g == generation && t != tier => {
                    return Err(format!(
                        "page {id} has tier {t} at generation {g}, acknowledged {tier}"
                    ));
                }
                Some(_) => {}
            }
        }
        // What recovery produced is durable from now on: it is the next baseline.
        self.pages = found;
        self.maybe_gone.clear();
        Ok(self.pages.len())
    }
}

/// Runs one child, kills it at a random moment after it opened the store, and returns its
/// stdout lines.
fn run_child(
    dir: &std::path::Path,
    rng: &mut Rng,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    run_and_kill(
        "crash_kill_and_reopen",
        &[
            (CHILD_ENV, "write_age_forget".as_ref()),
            (DIR_ENV, dir.as_os_str()),
        ],
        Duration::from_secs(60),
        Duration::from_millis(5 + rng.below(150)),
    )
}

#[test]
fn crash_kill_and_reopen() -> TestResult {
    if let Ok(dir) = std::env::var(DIR_ENV)
        && std::env::var(CHILD_ENV).is_ok()
    {
        child(&dir)?;
        return Err("child loop returned".into());
    }
    let iters: usize = match std::env::var("OPTIMEM_CRASH_ITERS") {
        Ok(v) => v.parse()?,
        Err(_) => 20,
    };
    let dir = tempfile::tempdir()?;
    let (mut rng, seed) = Rng::from_time();
    let mut expected = Expected::default();
    let (mut acks, mut pages) = (0usize, 0usize);
    for i in 0..iters {
        let lines = run_child(dir.path(), &mut rng)?;
        for line in &lines {
            acks += usize::from(line.starts_with("ACK"));
            expected
                .apply(line)
                .map_err(|e| format!("seed {seed}, kill {i}: {e}"))?;
        }
        let store = SledStore::open(dir.path(), OpenOptions::new(MODEL))?;
        pages = expected
            .check(&store)
            .map_err(|e| format!("seed {seed}, kill {i}: {e}"))?;
        assert!(store.stale_pages(None)?.is_empty());
    }
    eprintln!(
        "crash test: {iters} kills, {acks} acknowledged changes checked, {pages} pages at the end (seed {seed})"
    );
    assert!(
        acks > 0,
        "the children acknowledged nothing: the test exercised nothing"
    );
    Ok(())
}
