//! The CPU GEMM under every linear layer of optimem's model: `out = x · wᵀ` for f32 rows `x` (`m × k`) and a weight
//! `w` (`n × k`, one output per row, as checkpoints store it), computed in f32.
//!
//! Why our own: candle's CPU matmul (the `gemm` crate, AVX2 tiles unless its `x86-v4` feature is on) takes f32
//! operands only, so the decoder's bf16 weights had to be widened to an f32 copy on every prefill call (12 % of a
//! 256-token prefill at the official size), and each MoE expert's ~24 rows went through a dot-product kernel that
//! loads six vectors per eight multiply-adds (`benches/README.md`, sessions 8–10 and 16).
//!
//! This is the classic packed GEMM (Goto / BLIS). A register tile of `MR × NR` outputs takes, per step of the depth,
//! one row of a weight panel (`NR` columns of `wᵀ`) and `MR` broadcasts of `x`, for `2·MR` fused multiply-adds: with
//! AVX-512, 12 × 32 (24 accumulators of the 32 registers); with AVX2 + FMA, 6 × 16 (12 of 16); plain loops elsewhere.
//! The rows of `x` are packed into `k × MR` panels once per call. The weight comes in one of two forms ([`Weight`]):
//! - f32 or bf16 row-major, packed per call, a `KC × NR` panel at a time, into the tile's transposed layout (8 × 8
//!   blocks through registers; bf16 widened on the way);
//! - bf16 already in the tile's layout ([`pack_panels`], done once when a model loads): the tiles load 32 bf16 per
//!   step and widen them with two interleaves, so a call packs nothing and reads half the bytes.
//!
//! Each output is one chain of fused multiply-adds over `k` in order, starting from zero: the same value whatever `m`,
//! the row's place in the batch, the weight's form, the tile or the instruction set (a fused multiply-add rounds once
//! everywhere), so a row gives the same numbers alone or in a batch, on every CPU. The order differs from candle's
//! GEMM and PyTorch's by rounding only.
//!
//! Outside this crate the only `unsafe` of the model is its fused CUDA kernels; here it is the intrinsics, the raw
//! output pointer the column tasks share (each writes its own columns), and the prefetch hints.
#![allow(unsafe_code)]

use half::bf16;
use rayon::prelude::*;

/// Rows of a packed `x` panel: the largest register tile's rows.
const MR: usize = 12;
/// Columns of a packed weight panel: the largest register tile's columns (two AVX-512 vectors).
const NR: usize = 32;
/// Depth of one packed block (a `KC × NR` weight panel is 64 KiB), rows of `x` per block (`MC × KC` f32, 384 KiB)
/// and at most this many weight columns per task (the packed `KC × NC` weights, 512 KiB): `x`'s block and the
/// weights' block share the 1 MiB L2 of a core, the block of `x` passing over every weight panel. Chosen on this
/// machine (`optimem bench gemm`, one thread, SAM's and CLIP's shapes, ours / candle in the same run): 1.18–1.30×
/// with these against 0.97–1.33× with 256 / 384 / 512 and 1.08–1.29× with 768 / 96 / 128 (session 16).
const KC: usize = 512;
const MC: usize = 192;
const NC: usize = 256;
/// Depth of one block of a bf16 panel (64 KiB): a whole panel of the 6,848-deep layer-0 MLP projection and the rows it
/// meets no longer fit in L2 (`optimem bench gemm`: 107 against 190–214 GFLOP/s of the other prefill shapes).
const PANEL_KC: usize = 1024;
// A block of rows is whole panels of `x`.
const _: () = assert!(MC.is_multiple_of(MR));

/// A weight matrix `n × k`, row-major (one output per row), as the checkpoint stores it.
#[derive(Debug, Clone, Copy)]
pub enum Weight<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    /// Already in the tile's layout ([`pack_panels`]): `⌈n / NR⌉` panels of `k × NR` bf16. The tiles read these
    /// directly, widening as they load, so a call packs nothing.
    Panels(&'a [bf16]),
}

impl Weight<'_> {
    /// Whether this is an `n × k` weight.
    fn fits(&self, n: usize, k: usize) -> bool {
        match self {
            Weight::F32(w) => w.len() == n * k,
            Weight::Bf16(w) => w.len() == n * k,
            Weight::Panels(w) => w.len() == panels_len(n, k),
        }
    }
}

/// Length of an `n × k` weight in the panel layout.
pub fn panels_len(n: usize, k: usize) -> usize {
    n.div_ceil(NR) * NR * k
}

/// Where column `c` (< NR) of a panel row sits. The tiles widen a row of 32 bf16 with two interleaves against zero
/// (`vpunpcklwd`, `vpunpckhwd`), which work within 128-bit lanes: the low interleave takes the first four values of
/// each lane, the high one the last four. Columns 0–15 sit where the low interleave puts them in order, 16–31 where
/// the high one does.
fn panel_slot(c: usize) -> usize {
    let (half, c) = (c / 16, c % 16);
    (c / 4) * 8 + half * 4 + c % 4
}

/// `w` (`n × k` bf16, row-major) in the panel layout of [`Weight::Panels`], zero columns past `n`.
pub fn pack_panels(w: &[bf16], n: usize, k: usize) -> Vec<bf16> {
    assert_eq!(w.len(), n * k, "gemm: w is not n × k");
    let mut out = vec![bf16::ZERO; panels_len(n, k)];
    if k == 0 {
        return out;
    }
    out.par_chunks_mut(k * NR)
        .enumerate()
        .for_each(|(jp, panel)| {
            for c in 0..NR.min(n - jp * NR) {
                let slot = panel_slot(c);
                for (p, &v) in w[(jp * NR + c) * k..][..k].iter().enumerate() {
                    panel[p * NR + slot] = v;
                }
            }
        });
    out
}

/// The row-major `n × k` weight back from its panel layout (exact).
pub fn unpack_panels(panels: &[bf16], n: usize, k: usize) -> Vec<bf16> {
    assert_eq!(
        panels.len(),
        panels_len(n, k),
        "gemm: not the panels of an n × k weight"
    );
    let mut out = vec![bf16::ZERO; n * k];
    for (j, row) in out
        .chunks_exact_mut(k.max(1))
        .enumerate()
        .take(if k == 0 { 0 } else { n })
    {
        let (panel, slot) = (&panels[(j / NR) * NR * k..][..NR * k], panel_slot(j % NR));
        for (p, v) in row.iter_mut().enumerate() {
            *v = panel[p * NR + slot];
        }
    }
    out
}

/// The register tile an instruction set gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Plain loops (`f32::mul_add`): CPUs without AVX2 and FMA, and the reference of the tests.
    Portable,
    /// 6 × 16 tiles in AVX2 + FMA registers.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// 12 × 32 tiles in AVX-512 registers (F and BW: the bf16 panels are widened by 16-bit interleaves).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The widest tile this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
            {
                return Isa::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every tile this CPU can run, widest first (the tests run each).
    #[cfg(test)]
    pub fn available() -> Vec<Self> {
        let mut all = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                all.insert(0, Isa::Avx2);
            }
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
            {
                all.insert(0, Isa::Avx512);
            }
        }
        all
    }
}

/// `x · wᵀ` (`x` `m × k`, `w` `n × k`, both row-major) → `m × n`, on rayon's current pool, with the widest tile this
/// CPU has.
pub fn matmul_t(x: &[f32], m: usize, k: usize, w: Weight<'_>, n: usize) -> Vec<f32> {
    matmul_t_with(Isa::detect(), x, m, k, w, n)
}

/// [`matmul_t`] with a given tile (`isa` must be one [`Isa::detect`] or [`Isa::available`] gave).
pub fn matmul_t_with(isa: Isa, x: &[f32], m: usize, k: usize, w: Weight<'_>, n: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "gemm: x is not m × k");
    assert!(w.fits(n, k), "gemm: w is not n × k");
    let mut out = vec![0f32; m * n];
    gemm_into(isa, x, m, k, w, n, &mut out, true);
    out
}

/// `x[b] · w[b]ᵀ` for `b < batch` (`x` `batch × m × k`, `w` `batch × n × k` f32, both row-major) →
/// `batch × m × n`: attention's products. Many products (at least twice the threads) run one per task, each on one
/// thread; fewer run one after the other, each over every thread.
pub fn matmul_t_batched(
    x: &[f32],
    w: &[f32],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    assert_eq!(x.len(), batch * m * k, "gemm: x is not batch × m × k");
    assert_eq!(w.len(), batch * n * k, "gemm: w is not batch × n × k");
    let isa = Isa::detect();
    let mut out = vec![0f32; batch * m * n];
    if m * n == 0 {
        return out;
    }
    let one = |(b, o): (usize, &mut [f32]), parallel: bool| {
        let w = Weight::F32(&w[b * n * k..][..n * k]);
        gemm_into(isa, &x[b * m * k..][..m * k], m, k, w, n, o, parallel)
    };
    if batch >= 2 * rayon::current_num_threads() {
        out.par_chunks_mut(m * n)
            .enumerate()
            .for_each(|bo| one(bo, false));
    } else {
        out.chunks_mut(m * n)
            .enumerate()
            .for_each(|bo| one(bo, true));
    }
    out
}

/// The product into `out` (`m × n`, every value overwritten): over rayon's pool when `parallel`, else on this thread.
#[allow(clippy::too_many_arguments)]
fn gemm_into(
    isa: Isa,
    x: &[f32],
    m: usize,
    k: usize,
    w: Weight<'_>,
    n: usize,
    out: &mut [f32],
    parallel: bool,
) {
    debug_assert!(x.len() == m * k && w.fits(n, k) && out.len() == m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let a = pack_x(x, m, k, parallel);
    // Column chunks of whole panels, as many per thread as it takes to keep each within NC, and a multiple of the
    // thread count so that the threads finish together.
    let panels = n.div_ceil(NR);
    let threads = if parallel {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    let per_thread = panels.div_ceil(threads);
    let chunks_per_thread = (per_thread * NR).div_ceil(NC).max(1);
    let chunk_panels = panels.div_ceil(threads * chunks_per_thread).max(1);
    let chunk_cols = chunk_panels * NR;
    let chunks = n.div_ceil(chunk_cols);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let for_each_chunk = |f: &(dyn Fn(usize) + Sync)| {
        if parallel {
            (0..chunks).into_par_iter().for_each(f);
        } else {
            (0..chunks).for_each(f);
        }
    };
    if let Weight::Panels(panels) = w {
        // Nothing to pack: each task runs its panels over every row, up to PANEL_KC deep at a time (a block of a
        // panel is at most 64 KiB, read from L2 by every tile).
        for_each_chunk(&|c| {
            for jj in (c * chunk_cols..n.min((c + 1) * chunk_cols)).step_by(NR) {
                let panel = &panels[(jj / NR) * NR * k..][..NR * k];
                let ncols = NR.min(n - jj);
                for p0 in (0..k).step_by(PANEL_KC) {
                    let kc = PANEL_KC.min(k - p0);
                    for ii in (0..m).step_by(MR) {
                        let a_panel = &a[(ii / MR) * MR * k + p0 * MR..][..kc * MR];
                        let b = &panel[p0 * NR..][..kc * NR];
                        let rows = MR.min(m - ii);
                        // SAFETY: as in the packing loop below: disjoint columns per task, tile within m × n.
                        unsafe {
                            tile_bf16(
                                isa,
                                kc,
                                a_panel,
                                b,
                                out_ptr.at(ii * n + jj),
                                n,
                                rows,
                                ncols,
                                p0 > 0,
                            )
                        };
                    }
                }
            }
        });
        return;
    }
    for_each_chunk(&|c| {
        let j0 = c * chunk_cols;
        let cols = chunk_cols.min(n - j0);
        let padded = cols.next_multiple_of(NR);
        let mut packed = vec![0f32; KC.min(k) * padded];
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            for i0 in (0..m).step_by(MC) {
                let mc = MC.min(m - i0);
                let tiles = mc.div_ceil(MR);
                for (jp, panel) in packed[..kc * padded].chunks_exact_mut(kc * NR).enumerate() {
                    let jj = j0 + jp * NR;
                    let ncols = NR.min(j0 + cols - jj);
                    // The weight is packed while the first block of rows passes, and the next panel's rows are
                    // fetched into L2 during this panel's tiles, so that the pack reads them from cache.
                    let mut fetch = Prefetch::none();
                    if i0 == 0 {
                        pack_w(w, k, jj, ncols, p0, kc, panel);
                        if jj + NR < j0 + cols {
                            fetch = Prefetch::rows(
                                w,
                                k,
                                jj + NR,
                                NR.min(j0 + cols - jj - NR),
                                p0,
                                kc,
                                tiles,
                            );
                        }
                    }
                    for (t, ii) in (i0..i0 + mc).step_by(MR).enumerate() {
                        let rows = MR.min(i0 + mc - ii);
                        let a_panel = &a[(ii / MR) * MR * k + p0 * MR..][..kc * MR];
                        // SAFETY: this task alone writes columns j0..j0 + cols of `out` (the chunks are disjoint), and
                        // the tile's rows ii..ii + rows × columns jj..jj + ncols lie within them and within m × n.
                        unsafe {
                            tile(
                                isa,
                                kc,
                                a_panel,
                                panel,
                                out_ptr.at(ii * n + jj),
                                n,
                                rows,
                                ncols,
                                p0 > 0,
                                fetch.share(t),
                            );
                        }
                    }
                }
            }
        }
    });
}

/// The cache lines of the weight rows a tile fetches ahead (into L2) while it computes: rows `row0 + r·k` for
/// `r < rows`, each `lines` lines from `base`; this tile's share is lines `first..first + count` of that list, `per`
/// per step of its depth loop.
#[derive(Debug, Clone, Copy)]
struct Prefetch {
    base: *const u8,
    row_bytes: usize,
    lines: usize,
    total: usize,
    tiles: usize,
    first: usize,
    count: usize,
    per: usize,
}

impl Prefetch {
    fn none() -> Self {
        Self {
            base: std::ptr::null(),
            row_bytes: 0,
            lines: 1,
            total: 0,
            tiles: 1,
            first: 0,
            count: 0,
            per: 0,
        }
    }

    /// Weight rows `j..j + cols`, depth `p0..p0 + kc`, shared out over `tiles` tiles of depth `kc`.
    fn rows(
        w: Weight<'_>,
        k: usize,
        j: usize,
        cols: usize,
        p0: usize,
        kc: usize,
        tiles: usize,
    ) -> Self {
        let (base, elem) = match w {
            Weight::F32(w) => (w[j * k + p0..].as_ptr().cast::<u8>(), 4),
            Weight::Bf16(w) => (w[j * k + p0..].as_ptr().cast::<u8>(), 2),
            Weight::Panels(_) => return Self::none(),
        };
        let lines = (kc * elem).div_ceil(64);
        let total = cols * lines;
        let per_tile = total.div_ceil(tiles);
        Self {
            base,
            row_bytes: k * elem,
            lines,
            total,
            tiles,
            first: 0,
            count: 0,
            per: per_tile.div_ceil(kc),
        }
    }

    /// Tile `t`'s share.
    fn share(self, t: usize) -> Self {
        let per_tile = self.total.div_ceil(self.tiles);
        let first = (t * per_tile).min(self.total);
        Self {
            first,
            count: per_tile.min(self.total - first),
            ..self
        }
    }
}

/// A raw pointer the column tasks share; each writes its own columns only.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the tasks write disjoint columns of the output (see `matmul_t_with`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The element `i` places on (a method, so that closures capture the whole `SendPtr`, not its raw field).
    ///
    /// # Safety
    /// `i` must be within the output.
    unsafe fn at(self, i: usize) -> *mut f32 {
        // SAFETY: as the caller guarantees.
        unsafe { self.0.add(i) }
    }
}

/// `x` as `⌈m / MR⌉` row panels, each `k × MR` (column `p` of the panel's rows, then `p + 1`), zero rows past `m`.
/// Packed in parallel when the product is: a Base page's SAM rows are 12 MiB.
fn pack_x(x: &[f32], m: usize, k: usize, parallel: bool) -> Vec<f32> {
    let mut a = vec![0f32; m.next_multiple_of(MR) * k];
    let pack = |(pi, panel): (usize, &mut [f32])| {
        for r in 0..MR.min(m - pi * MR) {
            for (p, &v) in x[(pi * MR + r) * k..][..k].iter().enumerate() {
                panel[p * MR + r] = v;
            }
        }
    };
    if parallel {
        a.par_chunks_mut(MR * k).enumerate().for_each(pack);
    } else {
        a.chunks_mut(MR * k).enumerate().for_each(pack);
    }
    a
}

/// Columns `j0..j0 + cols` and depth `p0..p0 + kc` of `wᵀ` into `b` as `⌈cols / NR⌉` panels of `kc × NR`, zero
/// columns past `cols`; bf16 widened exactly. With AVX2, whole 8 × 8 blocks go through registers (eight row loads,
/// a transpose, eight stores); the rest is copied one value at a time.
fn pack_w(w: Weight<'_>, k: usize, j0: usize, cols: usize, p0: usize, kc: usize, b: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    let simd = std::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    for (jp, panel) in b[..kc * cols.next_multiple_of(NR)]
        .chunks_exact_mut(kc * NR)
        .enumerate()
    {
        let ncols = NR.min(cols - jp * NR);
        let row0 = (j0 + jp * NR) * k + p0;
        // The 8 × 8 blocks done in registers: whole groups of 8 columns and of 8 depths.
        let (simd_cols, simd_depth) = if simd {
            (ncols - ncols % 8, kc - kc % 8)
        } else {
            (0, 0)
        };
        #[cfg(target_arch = "x86_64")]
        if simd_cols > 0 && simd_depth > 0 {
            // SAFETY: AVX2 was detected above; the blocks read rows row0 + c·k .. + simd_depth of `w` for
            // c < simd_cols ≤ ncols (within the weight) and write panel[p·NR + c] for p < simd_depth ≤ kc, c < NR.
            unsafe { transpose::pack_blocks(w, k, row0, simd_cols, simd_depth, panel) };
        }
        for c in 0..ncols {
            let row = row0 + c * k;
            let from = if c < simd_cols { simd_depth } else { 0 };
            match w {
                Weight::F32(w) => {
                    for p in from..kc {
                        panel[p * NR + c] = w[row + p];
                    }
                }
                Weight::Bf16(w) => {
                    for p in from..kc {
                        panel[p * NR + c] = widen(w[row + p]);
                    }
                }
                Weight::Panels(_) => unreachable!("gemm: panels are never packed"),
            }
        }
        if ncols < NR {
            for p in 0..kc {
                panel[p * NR + ncols..(p + 1) * NR].fill(0.0);
            }
        }
    }
}

/// A bf16 value as the f32 it is exactly.
#[inline(always)]
fn widen(v: bf16) -> f32 {
    f32::from_bits(u32::from(v.to_bits()) << 16)
}

#[cfg(target_arch = "x86_64")]
mod transpose {
    use std::arch::x86_64::{
        __m256, _mm_loadu_si128, _mm256_castsi256_ps, _mm256_cvtepu16_epi32, _mm256_loadu_ps,
        _mm256_permute2f128_ps, _mm256_shuffle_ps, _mm256_slli_epi32, _mm256_storeu_ps,
        _mm256_unpackhi_ps, _mm256_unpacklo_ps,
    };

    use super::{NR, Weight};

    /// The 8 × 8 blocks of a panel: for each group of 8 columns `c0` (< `cols`) and 8 depths `p` (< `depth`),
    /// `panel[(p + q)·NR + c0 + r] = w[row0 + (c0 + r)·k + p + q]`.
    ///
    /// # Safety
    /// AVX2 must be available; `cols` and `depth` multiples of 8; the reads within `w` and the writes within `panel`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn pack_blocks(
        w: Weight<'_>,
        k: usize,
        row0: usize,
        cols: usize,
        depth: usize,
        panel: &mut [f32],
    ) {
        debug_assert!(panel.len() >= depth * NR && cols <= NR);
        for c0 in (0..cols).step_by(8) {
            for p in (0..depth).step_by(8) {
                let start = row0 + c0 * k + p;
                // SAFETY: rows start + r·k .. + 8 lie within the weight, as the caller guarantees.
                let rows: [__m256; 8] = std::array::from_fn(|r| unsafe {
                    match w {
                        Weight::F32(w) => _mm256_loadu_ps(w[start + r * k..][..8].as_ptr()),
                        Weight::Bf16(w) => {
                            let h = _mm_loadu_si128(w[start + r * k..][..8].as_ptr().cast());
                            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
                        }
                        Weight::Panels(_) => unreachable!("gemm: panels are never packed"),
                    }
                });
                let cols_of_rows = transpose8(rows);
                for (q, v) in cols_of_rows.iter().enumerate() {
                    // SAFETY: (p + q)·NR + c0 + 8 ≤ depth·NR ≤ panel.len().
                    unsafe { _mm256_storeu_ps(panel[(p + q) * NR + c0..][..8].as_mut_ptr(), *v) };
                }
            }
        }
    }

    /// The 8 × 8 transpose of eight row vectors.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        {
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            [
                _mm256_permute2f128_ps::<0x20>(s0, s4),
                _mm256_permute2f128_ps::<0x20>(s1, s5),
                _mm256_permute2f128_ps::<0x20>(s2, s6),
                _mm256_permute2f128_ps::<0x20>(s3, s7),
                _mm256_permute2f128_ps::<0x31>(s0, s4),
                _mm256_permute2f128_ps::<0x31>(s1, s5),
                _mm256_permute2f128_ps::<0x31>(s2, s6),
                _mm256_permute2f128_ps::<0x31>(s3, s7),
            ]
        }
    }
}

/// `c[r, j] (+)= Σ_p a[p, r] · b[p, j]` for `r < rows`, `j < cols` (`a` a `kc × MR` panel, `b` a `kc × NR` panel,
/// `c` with row stride `ldc`); `accumulate` continues the chain from `c`'s values, else it starts from zero.
///
/// # Safety
/// `c` must be valid for writes of `rows` rows of `cols` values at stride `ldc`, and `isa` supported by this CPU.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    isa: Isa,
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
    fetch: Prefetch,
) {
    debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR && rows <= MR && cols <= NR);
    if cols < NR {
        // A partial panel: the tile writes into a full-width scratch tile, whose valid part goes back.
        let mut scratch = [0f32; MR * NR];
        for r in 0..rows {
            for j in 0..cols {
                // SAFETY: r < rows, j < cols, as the caller guarantees.
                scratch[r * NR + j] = if accumulate {
                    unsafe { *c.add(r * ldc + j) }
                } else {
                    0.0
                };
            }
        }
        // SAFETY: the scratch tile is MR × NR at stride NR.
        unsafe {
            tile(
                isa,
                kc,
                a,
                b,
                scratch.as_mut_ptr(),
                NR,
                rows,
                NR,
                accumulate,
                fetch,
            )
        };
        for r in 0..rows {
            for j in 0..cols {
                // SAFETY: as above.
                unsafe { *c.add(r * ldc + j) = scratch[r * NR + j] };
            }
        }
        return;
    }
    match isa {
        // SAFETY: as the caller guarantees.
        Isa::Portable => unsafe { tile_portable(kc, a, b, c, ldc, rows, accumulate) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe {
            avx512::tile_rows(kc, a.as_ptr(), b.as_ptr(), c, ldc, rows, accumulate, fetch)
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            for r0 in (0..rows).step_by(avx2::MR) {
                for j0 in (0..NR).step_by(avx2::NR) {
                    // SAFETY: rows r0.. and columns j0..j0 + 16 of the tile are within the caller's bounds.
                    unsafe {
                        avx2::tile_rows(
                            kc,
                            a.as_ptr().add(r0),
                            b.as_ptr().add(j0),
                            c.add(r0 * ldc + j0),
                            ldc,
                            avx2::MR.min(rows - r0),
                            accumulate,
                            if r0 == 0 && j0 == 0 {
                                fetch
                            } else {
                                Prefetch::none()
                            },
                        )
                    }
                }
            }
        }
    }
}

/// [`tile`] in plain loops: full-width panels only.
///
/// # Safety
/// As [`tile`]'s, with `cols` = NR.
unsafe fn tile_portable(
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    accumulate: bool,
) {
    for r in 0..rows {
        for j in 0..NR {
            // SAFETY: r < rows and j < NR = cols, within the caller's bounds.
            let cell = unsafe { &mut *c.add(r * ldc + j) };
            let mut acc = if accumulate { *cell } else { 0.0 };
            for p in 0..kc {
                acc = a[p * MR + r].mul_add(b[p * NR + j], acc);
            }
            *cell = acc;
        }
    }
}

/// [`tile`] for a bf16 panel of [`Weight::Panels`] (`b` `kc × NR` in the panel layout).
///
/// # Safety
/// As [`tile`]'s.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_bf16(
    isa: Isa,
    kc: usize,
    a: &[f32],
    b: &[bf16],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR && rows <= MR && cols <= NR);
    if cols < NR {
        let mut scratch = [0f32; MR * NR];
        for r in 0..rows {
            for j in 0..cols {
                // SAFETY: r < rows, j < cols, as the caller guarantees.
                scratch[r * NR + j] = if accumulate {
                    unsafe { *c.add(r * ldc + j) }
                } else {
                    0.0
                };
            }
        }
        // SAFETY: the scratch tile is MR × NR at stride NR.
        unsafe {
            tile_bf16(
                isa,
                kc,
                a,
                b,
                scratch.as_mut_ptr(),
                NR,
                rows,
                NR,
                accumulate,
            )
        };
        for r in 0..rows {
            for j in 0..cols {
                // SAFETY: r < rows, j < cols, as the caller guarantees.
                unsafe { *c.add(r * ldc + j) = scratch[r * NR + j] };
            }
        }
        return;
    }
    match isa {
        Isa::Portable => {
            for r in 0..rows {
                for j in 0..NR {
                    let slot = panel_slot(j);
                    // SAFETY: r < rows, j < NR = cols.
                    let cell = unsafe { &mut *c.add(r * ldc + j) };
                    let start = if accumulate { *cell } else { 0.0 };
                    *cell = (0..kc).fold(start, |acc, p| {
                        a[p * MR + r].mul_add(widen(b[p * NR + slot]), acc)
                    });
                }
            }
        }
        // SAFETY: as the caller guarantees.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe {
            avx512::tile_rows_bf16(kc, a.as_ptr(), b.as_ptr(), c, ldc, rows, accumulate)
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            for r0 in (0..rows).step_by(avx2::MR) {
                for high in [false, true] {
                    // SAFETY: rows r0.. and columns 0..16 or 16..32 of the tile are within the caller's bounds.
                    unsafe {
                        avx2::tile_rows_bf16(
                            kc,
                            a.as_ptr().add(r0),
                            b.as_ptr(),
                            c.add(r0 * ldc + if high { 16 } else { 0 }),
                            ldc,
                            avx2::MR.min(rows - r0),
                            high,
                            accumulate,
                        )
                    }
                }
            }
        }
    }
}

/// Walks a tile's share of a [`Prefetch`], `per` lines per step.
#[cfg(target_arch = "x86_64")]
struct Fetcher {
    at: Prefetch,
    row: usize,
    line: usize,
    left: usize,
}

#[cfg(target_arch = "x86_64")]
impl Fetcher {
    #[inline(always)]
    fn new(at: Prefetch) -> Self {
        Self {
            row: at.first / at.lines,
            line: at.first % at.lines,
            left: at.count,
            at,
        }
    }

    #[inline(always)]
    fn step(&mut self) {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        for _ in 0..self.at.per {
            if self.left == 0 {
                return;
            }
            let addr = self
                .at
                .base
                .wrapping_add(self.row * self.at.row_bytes + self.line * 64);
            // SAFETY: a prefetch is a hint; it never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(addr.cast()) };
            self.left -= 1;
            self.line += 1;
            if self.line == self.at.lines {
                self.line = 0;
                self.row += 1;
            }
        }
    }
}

/// Dispatches a row count to the tile monomorphised for it, so that short tiles (the last rows of `x`, a decode
/// batch) do not multiply zero rows.
macro_rules! by_rows {
    ($rows:expr, $f:ident, $($arg:expr),*) => {
        match $rows {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            8 => $f::<8>($($arg),*),
            9 => $f::<9>($($arg),*),
            10 => $f::<10>($($arg),*),
            11 => $f::<11>($($arg),*),
            12 => $f::<12>($($arg),*),
            _ => unreachable!("gemm: a tile has 1 to {} rows", MR),
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use half::bf16;
    use std::arch::x86_64::{
        __m512, __m512i, _mm512_castsi512_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_loadu_si512,
        _mm512_set1_ps, _mm512_setzero_ps, _mm512_setzero_si512, _mm512_storeu_ps,
        _mm512_unpackhi_epi16, _mm512_unpacklo_epi16,
    };

    use super::{Fetcher, MR, NR, Prefetch};

    /// Row `p` of a weight panel as the tile's two vectors (columns 0–15 and 16–31).
    trait PanelRow {
        unsafe fn load(&self, p: usize) -> [__m512; 2];
    }

    /// An f32 panel.
    struct F32Row(*const f32);

    impl PanelRow for F32Row {
        #[inline(always)]
        unsafe fn load(&self, p: usize) -> [__m512; 2] {
            unsafe {
                [
                    _mm512_loadu_ps(self.0.add(p * NR)),
                    _mm512_loadu_ps(self.0.add(p * NR + 16)),
                ]
            }
        }
    }

    /// A bf16 panel in the panel layout: 32 values, each widened by interleaving it above a zero half.
    struct Bf16Row(*const bf16, __m512i);

    impl PanelRow for Bf16Row {
        #[inline(always)]
        unsafe fn load(&self, p: usize) -> [__m512; 2] {
            unsafe {
                let v = _mm512_loadu_si512(self.0.add(p * NR).cast());
                [
                    _mm512_castsi512_ps(_mm512_unpacklo_epi16(self.1, v)),
                    _mm512_castsi512_ps(_mm512_unpackhi_epi16(self.1, v)),
                ]
            }
        }
    }

    /// A `rows × 32` tile (`rows` ≤ 12) of an f32 panel.
    ///
    /// # Safety
    /// AVX-512F must be available; `a` must hold `kc × MR` and `b` `kc × NR` values, and `c` `rows` rows of 32
    /// values at stride `ldc`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile_rows(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        accumulate: bool,
        fetch: Prefetch,
    ) {
        unsafe { by_rows!(rows, tile, kc, a, F32Row(b), c, ldc, accumulate, fetch) }
    }

    /// A `rows × 32` tile (`rows` ≤ 12) of a bf16 panel in the panel layout, from zero.
    ///
    /// # Safety
    /// AVX-512F and AVX-512BW must be available; otherwise as [`tile_rows`].
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn tile_rows_bf16(
        kc: usize,
        a: *const f32,
        b: *const bf16,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        accumulate: bool,
    ) {
        let b = Bf16Row(b, _mm512_setzero_si512());
        unsafe { by_rows!(rows, tile, kc, a, b, c, ldc, accumulate, Prefetch::none()) }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize>(
        kc: usize,
        a: *const f32,
        b: impl PanelRow,
        c: *mut f32,
        ldc: usize,
        acc_in: bool,
        fetch: Prefetch,
    ) {
        unsafe {
            let mut fetcher = Fetcher::new(fetch);
            let mut acc: [[__m512; 2]; R] = if acc_in {
                std::array::from_fn(|r| {
                    [
                        _mm512_loadu_ps(c.add(r * ldc)),
                        _mm512_loadu_ps(c.add(r * ldc + 16)),
                    ]
                })
            } else {
                [[_mm512_setzero_ps(); 2]; R]
            };
            for p in 0..kc {
                fetcher.step();
                let [b0, b1] = b.load(p);
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let ar = _mm512_set1_ps(*a.add(p * MR + r));
                    acc_r[0] = _mm512_fmadd_ps(ar, b0, acc_r[0]);
                    acc_r[1] = _mm512_fmadd_ps(ar, b1, acc_r[1]);
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                _mm512_storeu_ps(c.add(r * ldc), acc_r[0]);
                _mm512_storeu_ps(c.add(r * ldc + 16), acc_r[1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use half::bf16;
    use std::arch::x86_64::{
        __m256, __m256i, _mm256_castsi256_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_loadu_si256,
        _mm256_set1_ps, _mm256_setzero_ps, _mm256_setzero_si256, _mm256_storeu_ps,
        _mm256_unpackhi_epi16, _mm256_unpacklo_epi16,
    };

    use super::{Fetcher, Prefetch};

    /// Rows and columns of the AVX2 tile: 12 accumulators of the 16 registers.
    pub(super) const MR: usize = 6;
    pub(super) const NR: usize = 16;

    /// Row `p` of 16 columns of a weight panel as the tile's two vectors.
    trait PanelRow {
        unsafe fn load(&self, p: usize) -> [__m256; 2];
    }

    /// 16 columns of an f32 panel (the pointer at the first).
    struct F32Row(*const f32);

    impl PanelRow for F32Row {
        #[inline(always)]
        unsafe fn load(&self, p: usize) -> [__m256; 2] {
            let row = unsafe { self.0.add(p * super::NR) };
            unsafe { [_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8))] }
        }
    }

    /// Columns 0–15 of a bf16 panel in the panel layout (the low interleaves of its two 256-bit halves), or 16–31
    /// when `high` (the high ones).
    struct Bf16Row(*const bf16, bool, __m256i);

    impl PanelRow for Bf16Row {
        #[inline(always)]
        unsafe fn load(&self, p: usize) -> [__m256; 2] {
            unsafe {
                let h0 = _mm256_loadu_si256(self.0.add(p * super::NR).cast());
                let h1 = _mm256_loadu_si256(self.0.add(p * super::NR + 16).cast());
                let (b0, b1) = if self.1 {
                    (
                        _mm256_unpackhi_epi16(self.2, h0),
                        _mm256_unpackhi_epi16(self.2, h1),
                    )
                } else {
                    (
                        _mm256_unpacklo_epi16(self.2, h0),
                        _mm256_unpacklo_epi16(self.2, h1),
                    )
                };
                [_mm256_castsi256_ps(b0), _mm256_castsi256_ps(b1)]
            }
        }
    }

    /// Dispatches a row count to the tile monomorphised for it.
    macro_rules! by_rows6 {
        ($rows:expr, $($arg:expr),*) => {
            match $rows {
                1 => tile::<1>($($arg),*),
                2 => tile::<2>($($arg),*),
                3 => tile::<3>($($arg),*),
                4 => tile::<4>($($arg),*),
                5 => tile::<5>($($arg),*),
                6 => tile::<6>($($arg),*),
                _ => unreachable!("gemm: an AVX2 tile has 1 to {MR} rows"),
            }
        };
    }

    /// A `rows × 16` tile (`rows` ≤ 6) of a packed `kc × 12` x panel and a `kc × 32` f32 weight panel (pointers
    /// already at the tile's first row and column).
    ///
    /// # Safety
    /// AVX2 and FMA must be available; the panels and `c` must cover the tile, as in `avx512::tile_rows`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile_rows(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        accumulate: bool,
        fetch: Prefetch,
    ) {
        unsafe { by_rows6!(rows, kc, a, F32Row(b), c, ldc, accumulate, fetch) }
    }

    /// A `rows × 16` tile (`rows` ≤ 6) of a bf16 panel in the panel layout, from zero: columns 0–15, or 16–31 when
    /// `high`.
    ///
    /// # Safety
    /// As [`tile_rows`].
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile_rows_bf16(
        kc: usize,
        a: *const f32,
        b: *const bf16,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        high: bool,
        accumulate: bool,
    ) {
        let b = Bf16Row(b, high, _mm256_setzero_si256());
        unsafe { by_rows6!(rows, kc, a, b, c, ldc, accumulate, Prefetch::none()) }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize>(
        kc: usize,
        a: *const f32,
        b: impl PanelRow,
        c: *mut f32,
        ldc: usize,
        acc_in: bool,
        fetch: Prefetch,
    ) {
        unsafe {
            let mut fetcher = Fetcher::new(fetch);
            let mut acc: [[__m256; 2]; R] = if acc_in {
                std::array::from_fn(|r| {
                    [
                        _mm256_loadu_ps(c.add(r * ldc)),
                        _mm256_loadu_ps(c.add(r * ldc + 8)),
                    ]
                })
            } else {
                [[_mm256_setzero_ps(); 2]; R]
            };
            for p in 0..kc {
                fetcher.step();
                let [b0, b1] = b.load(p);
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let ar = _mm256_set1_ps(*a.add(p * super::MR + r));
                    acc_r[0] = _mm256_fmadd_ps(ar, b0, acc_r[0]);
                    acc_r[1] = _mm256_fmadd_ps(ar, b1, acc_r[1]);
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                _mm256_storeu_ps(c.add(r * ldc), acc_r[0]);
                _mm256_storeu_ps(c.add(r * ldc + 8), acc_r[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random matrix with values in [−1, 1).
    fn matrix(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// One chain of fused multiply-adds over `k` per output, as the module promises.
    fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] =
                    (0..k).fold(0f32, |acc, p| x[i * k + p].mul_add(w[j * k + p], acc));
            }
        }
        out
    }

    /// Every tile gives exactly the reference chain, for shapes with partial tiles, partial panels, several depth
    /// blocks and several row blocks, f32 and bf16 weights.
    #[test]
    fn every_tile_is_the_fused_chain_bit_for_bit() {
        let shapes = [
            (1, 1, 1),
            (5, 7, 3),
            (13, 33, 300),
            (24, 96, 640),
            (40, 70, 2 * KC + 5),
            (MC + 13, 40, 64),
        ];
        for isa in Isa::available() {
            for &(m, n, k) in &shapes {
                let x = matrix(m * k, 1);
                let w32 = matrix(n * k, 2);
                let w16: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
                let w16_wide: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
                let got = matmul_t_with(isa, &x, m, k, Weight::F32(&w32), n);
                assert_eq!(got, reference(&x, m, k, &w32, n), "{isa:?} f32 {m}×{n}×{k}");
                let want = reference(&x, m, k, &w16_wide, n);
                let got = matmul_t_with(isa, &x, m, k, Weight::Bf16(&w16), n);
                assert_eq!(got, want, "{isa:?} bf16 {m}×{n}×{k}");
                let panels = pack_panels(&w16, n, k);
                assert_eq!(
                    unpack_panels(&panels, n, k),
                    w16,
                    "panels round trip {n}×{k}"
                );
                let got = matmul_t_with(isa, &x, m, k, Weight::Panels(&panels), n);
                assert_eq!(got, want, "{isa:?} panels {m}×{n}×{k}");
            }
        }
    }

    /// A row's outputs do not depend on the other rows of the batch.
    #[test]
    fn a_row_alone_equals_the_row_in_a_batch() {
        let (m, n, k) = (29, 64, 200);
        let x = matrix(m * k, 3);
        let w = matrix(n * k, 4);
        let all = matmul_t(&x, m, k, Weight::F32(&w), n);
        for i in [0, 11, 12, 28] {
            let one = matmul_t(&x[i * k..(i + 1) * k], 1, k, Weight::F32(&w), n);
            assert_eq!(one, all[i * n..(i + 1) * n], "row {i}");
        }
    }

    /// Batched products, one per task or one after the other, are the single products.
    #[test]
    fn batched_products_are_the_single_products() {
        for batch in [1, 3, 2 * rayon::current_num_threads() + 1] {
            let (m, n, k) = (17, 45, 70);
            let x = matrix(batch * m * k, 5);
            let w = matrix(batch * n * k, 6);
            let got = matmul_t_batched(&x, &w, batch, m, k, n);
            for b in 0..batch {
                let one = matmul_t(
                    &x[b * m * k..][..m * k],
                    m,
                    k,
                    Weight::F32(&w[b * n * k..][..n * k]),
                    n,
                );
                assert_eq!(got[b * m * n..][..m * n], one, "batch {batch}, product {b}");
            }
        }
    }

    #[test]
    fn empty_shapes_give_empty_or_zero_outputs() {
        assert!(matmul_t(&[], 0, 4, Weight::F32(&[0.0; 8]), 2).is_empty());
        assert_eq!(matmul_t(&[], 3, 0, Weight::F32(&[]), 2), vec![0.0; 6]);
    }
}
