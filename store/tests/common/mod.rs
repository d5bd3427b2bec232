//! Helpers shared by the crash and concurrency tests: pages whose raster, tokens and source
//! all carry the same stamp (a nonce and the tier), so that a page made of parts from two
//! different writes — half-written or half-aged — is caught even if each part is intact.
//! The memory layer's crash test (`tests/memory_crash.rs`) includes this module through `#[path]` for its
//! generator and the kill harness.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

use std::collections::BTreeMap;

pub mod kill;

use optimem_store::{
    MemoryId, NewMemory, NewPage, Page, PageParts, PageSelector, PageUpdate, Scope, Span, Store,
    Tier, TokenDtype, VisionTokens,
};

/// xorshift64*: a small deterministic generator, seeded per run and printed on failure.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn from_time() -> (Self, u64) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seed = nanos ^ (u64::from(std::process::id()) << 32);
        (Self::new(seed), seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Tiers from sharpest to blurriest: ageing moves right.
pub const AGEING: [Tier; 5] = [
    Tier::Gundam,
    Tier::Large,
    Tier::Base,
    Tier::Small,
    Tier::Tiny,
];

pub fn next_blurrier(t: Tier) -> Option<Tier> {
    let i = AGEING.iter().position(|x| *x == t)?;
    AGEING.get(i + 1).copied()
}

const PNG: &[u8; 8] = b"\x89PNG\r\n\x1a\n";
const TOKEN_WIDTH: u32 = 128;

/// A raster that starts with the PNG signature and the stamp, then filler of `len` bytes.
pub fn stamped_raster(nonce: u64, tier: Tier, len: usize) -> Vec<u8> {
    let mut r = PNG.to_vec();
    r.extend_from_slice(&nonce.to_le_bytes());
    r.push(tier.code());
    r.extend((0..len).map(|i| (nonce as usize).wrapping_add(i * 31) as u8));
    r
}

/// Tokens whose first nine values are the stamp bytes (exact in f16: integers below 2048).
pub fn stamped_tokens(nonce: u64, tier: Tier, rows: u32) -> VisionTokens {
    let mut v: Vec<f32> = (0..rows * TOKEN_WIDTH)
        .map(|i| (i % 251) as f32 / 8.0)
        .collect();
    for (i, b) in nonce.to_le_bytes().iter().chain(&[tier.code()]).enumerate() {
        v[i] = f32::from(*b);
    }
    VisionTokens::from_f32(&v, vec![rows, TOKEN_WIDTH], TokenDtype::F16)
        .expect("stamped tokens are finite and in f16 range")
}

fn source_for(nonce: u64, len: usize) -> String {
    let mut s = format!("nonce={nonce:016x};");
    while s.len() < len {
        s.push_str(" lorem");
    }
    s
}

/// A page holding `text` of `memory`, stamped with `nonce` at `tier`.
pub fn stamped_page(
    memory: MemoryId,
    text: std::ops::Range<u64>,
    nonce: u64,
    tier: Tier,
    rng: &mut Rng,
) -> NewPage {
    let source = source_for(nonce, 64 + rng.below(400) as usize);
    NewPage {
        tier,
        text_tokens: source.len() as u32 / 4,
        vision_tokens: 64,
        spans: vec![Span {
            memory,
            text,
            page: 0..source.len() as u32,
        }],
        raster_png: stamped_raster(nonce, tier, 2048 + rng.below(8192) as usize),
        tokens: Some(stamped_tokens(nonce, tier, 8 + rng.below(24) as u32)),
        source,
    }
}

/// An ageing update of a page stamped with `nonce`.
pub fn stamped_update(nonce: u64, tier: Tier, rng: &mut Rng) -> PageUpdate {
    PageUpdate {
        tier,
        vision_tokens: 64,
        raster_png: stamped_raster(nonce, tier, 1024 + rng.below(4096) as usize),
        tokens: Some(stamped_tokens(nonce, tier, 8 + rng.below(8) as u32)),
    }
}

pub fn new_memory(text_bytes: u64) -> NewMemory {
    NewMemory {
        id: MemoryId::new(),
        role: "user".into(),
        time_ms: 1_700_000_000_000,
        metadata: BTreeMap::new(),
        text_bytes,
    }
}

/// The nonce a page's source text carries.
pub fn source_nonce(page: &Page) -> Result<u64, String> {
    let src = page.source.as_deref().ok_or("page has no source")?;
    let hex = src
        .strip_prefix("nonce=")
        .and_then(|s| s.get(..16))
        .ok_or("source has no nonce")?;
    u64::from_str_radix(hex, 16).map_err(|e| e.to_string())
}

/// Checks that a page's tier, raster, tokens and source all carry one stamp.
pub fn check_page(page: &Page) -> Result<(), String> {
    let id = page.meta.id;
    let nonce = source_nonce(page)?;
    let raster = page.raster_png.as_deref().ok_or("no raster")?;
    let stamp = raster.get(8..17).ok_or("raster too short")?;
    let mut want = nonce.to_le_bytes().to_vec();
    want.push(page.meta.tier.code());
    if stamp != want.as_slice() {
        return Err(format!(
            "page {id}: raster stamp {stamp:?} != source/meta stamp {want:?}"
        ));
    }
    let tokens = page.tokens.as_ref().ok_or("no tokens")?.to_f32();
    let tstamp: Vec<u8> = tokens.iter().take(9).map(|v| *v as u8).collect();
    if tstamp != want {
        return Err(format!(
            "page {id}: token stamp {tstamp:?} != stamp {want:?}"
        ));
    }
    Ok(())
}

/// Reads every page of a scope whole and checks stamps and memory ↔ page links.
pub fn check_scope(store: &dyn Store, scope: &Scope) -> Result<Vec<Page>, String> {
    let pages = store
        .get_pages(scope, &PageSelector::LastN(usize::MAX), PageParts::ALL)
        .map_err(|e| e.to_string())?;
    let ids: Vec<_> = pages.iter().map(|p| p.meta.id).collect();
    for p in &pages {
        check_page(p)?;
        let mems = store
            .get_memories(scope, &p.meta.memories())
            .map_err(|e| format!("page {}: {e}", p.meta.id))?;
        for m in mems {
            if !m.pages.contains(&p.meta.id) {
                return Err(format!(
                    "memory {} does not list its page {}",
                    m.id, p.meta.id
                ));
            }
            if let Some(missing) = m.pages.iter().find(|id| !ids.contains(id)) {
                return Err(format!("memory {} lists missing page {missing}", m.id));
            }
        }
    }
    if pages.windows(2).any(|w| w[0].meta.seq >= w[1].meta.seq) {
        return Err("pages out of sequence order".into());
    }
    Ok(pages)
}
