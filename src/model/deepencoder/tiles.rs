//! Gundam's tile-grid rule: `dynamic_preprocess` / `find_closest_aspect_ratio` of the official code
//! (spec §3.3).
//!
//! The candidates are the grids (i across, j down) with `min_num ≤ i·j ≤ max_num`, built as a Python
//! `set` and sorted by `i·j` (a stable sort), so grids of equal area keep CPython's set-iteration order.
//! That order decides exact ties, so it is reproduced here by replaying CPython 3.11's set insertion
//! (tuple xxHash, linear probing of 9, perturbed re-probe, resize at 3/5 fill) rather than guessed.
//! `max_num` is a knob: 9 in the HF `infer()` path, 6 in the vLLM scripts.

/// Smallest number of tiles when an image is cropped (both official paths).
pub const MIN_CROPS: usize = 2;
/// `max_num` of HF `infer()` (`dynamic_preprocess` default).
pub const MAX_CROPS_HF: usize = 9;
/// `MAX_CROPS` of the vLLM scripts' config.py.
pub const MAX_CROPS_VLLM: usize = 6;
/// Tile side in pixels; HF `infer()` hard-codes it.
pub const TILE_SIZE: usize = 640;

/// A tile grid: `cols` tiles across (nW), `rows` tiles down (nH). Tiles are ordered row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileGrid {
    pub cols: usize,
    pub rows: usize,
}

impl TileGrid {
    pub fn count(&self) -> usize {
        self.cols * self.rows
    }
}

const XXPRIME_1: u64 = 11400714785074694791;
const XXPRIME_2: u64 = 14029467366897019727;
const XXPRIME_5: u64 = 2870177450012600261;

/// CPython's `hash((i, j))` for small non-negative ints on a 64-bit build.
fn py_tuple_hash(items: &[u64]) -> u64 {
    let mut acc = XXPRIME_5;
    for &lane in items {
        acc = acc.wrapping_add(lane.wrapping_mul(XXPRIME_2));
        acc = acc.rotate_left(31);
        acc = acc.wrapping_mul(XXPRIME_1);
    }
    acc = acc.wrapping_add(items.len() as u64 ^ (XXPRIME_5 ^ 3527539));
    if acc == u64::MAX { 1546275796 } else { acc }
}

const LINEAR_PROBES: usize = 9;
const PERTURB_SHIFT: u32 = 5;

/// Slot search shared by `set_add_entry` and `set_insert_clean` (no deletions ever happen here).
fn probe(table: &[Option<(u64, (usize, usize))>], hash: u64, key: (usize, usize)) -> (usize, bool) {
    let mask = table.len() - 1;
    let mut i = (hash as usize) & mask;
    let mut perturb = hash;
    loop {
        let probes = if i + LINEAR_PROBES <= mask {
            LINEAR_PROBES
        } else {
            0
        };
        for (slot, entry) in table.iter().enumerate().skip(i).take(probes + 1) {
            match entry {
                None => return (slot, false),
                Some((h, k)) if *h == hash && *k == key => return (slot, true),
                Some(_) => {}
            }
        }
        perturb >>= PERTURB_SHIFT;
        i = (i
            .wrapping_mul(5)
            .wrapping_add(1)
            .wrapping_add(perturb as usize))
            & mask;
    }
}

/// The candidate grids in the order `sorted(set(...), key=i*j)` yields on CPython 3.11.
pub fn candidate_grids(min_num: usize, max_num: usize) -> Vec<TileGrid> {
    let mut table: Vec<Option<(u64, (usize, usize))>> = vec![None; 8];
    let mut used = 0usize;
    for n in min_num..=max_num {
        for i in 1..=n {
            for j in 1..=n {
                if i * j > max_num || i * j < min_num {
                    continue;
                }
                let key = (i, j);
                let hash = py_tuple_hash(&[i as u64, j as u64]);
                let (slot, present) = probe(&table, hash, key);
                if present {
                    continue;
                }
                table[slot] = Some((hash, key));
                used += 1;
                let mask = table.len() - 1;
                if used * 5 >= mask * 3 {
                    let mut size = 8;
                    while size <= used * 4 {
                        size <<= 1;
                    }
                    let old = std::mem::replace(&mut table, vec![None; size]);
                    for (h, k) in old.into_iter().flatten() {
                        let (s, _) = probe(&table, h, k);
                        table[s] = Some((h, k));
                    }
                }
            }
        }
    }
    let mut grids: Vec<TileGrid> = table
        .into_iter()
        .flatten()
        .map(|(_, (cols, rows))| TileGrid { cols, rows })
        .collect();
    grids.sort_by_key(TileGrid::count);
    grids
}

/// `find_closest_aspect_ratio`: the grid whose aspect is nearest to `width/height`; on an exact tie the
/// later candidate wins when the image area exceeds half the candidate's tiled area.
pub fn closest_grid(
    width: usize,
    height: usize,
    candidates: &[TileGrid],
    tile_size: usize,
) -> TileGrid {
    let aspect = width as f64 / height as f64;
    let area = (width * height) as f64;
    let mut best = TileGrid { cols: 1, rows: 1 };
    let mut best_diff = f64::INFINITY;
    for &g in candidates {
        let diff = (aspect - g.cols as f64 / g.rows as f64).abs();
        if diff < best_diff {
            best_diff = diff;
            best = g;
        } else if diff == best_diff
            && area > 0.5 * tile_size as f64 * tile_size as f64 * g.cols as f64 * g.rows as f64
        {
            best = g;
        }
    }
    best
}

/// The tile grid HF `infer()` uses for a `width × height` image in crop mode, or `None` when the image
/// fits in one tile (both sides ≤ 640) and only the global view is encoded.
pub fn gundam_grid(width: usize, height: usize, max_num: usize) -> Option<TileGrid> {
    if width <= TILE_SIZE && height <= TILE_SIZE {
        return None;
    }
    let candidates = candidate_grids(MIN_CROPS, max_num);
    Some(closest_grid(width, height, &candidates, TILE_SIZE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(g: &[TileGrid]) -> Vec<(usize, usize)> {
        g.iter().map(|g| (g.cols, g.rows)).collect()
    }

    #[test]
    fn candidate_order_matches_cpython_3_11() {
        let max9 = [
            (1, 2),
            (2, 1),
            (3, 1),
            (1, 3),
            (2, 2),
            (4, 1),
            (1, 4),
            (5, 1),
            (1, 5),
            (1, 6),
            (6, 1),
            (3, 2),
            (2, 3),
            (7, 1),
            (1, 7),
            (4, 2),
            (2, 4),
            (1, 8),
            (8, 1),
            (1, 9),
            (3, 3),
            (9, 1),
        ];
        assert_eq!(pairs(&candidate_grids(2, 9)), max9);
        let max6 = [
            (1, 2),
            (2, 1),
            (3, 1),
            (1, 3),
            (4, 1),
            (1, 4),
            (2, 2),
            (1, 5),
            (5, 1),
            (6, 1),
            (2, 3),
            (1, 6),
            (3, 2),
        ];
        assert_eq!(pairs(&candidate_grids(2, 6)), max6);
    }

    #[test]
    fn tie_break_depends_on_max_num() {
        let g = |w, h, m| gundam_grid(w, h, m).map(|g| (g.cols, g.rows));
        assert_eq!(g(1920, 1080, 9), Some((4, 2)));
        assert_eq!(g(1920, 1080, 6), Some((2, 1)));
    }

    #[test]
    fn worked_examples() {
        let g = |w, h| gundam_grid(w, h, MAX_CROPS_HF).map(|g| (g.cols, g.rows));
        assert_eq!(g(1191, 1684), Some((2, 3)));
        assert_eq!(g(800, 600), Some((3, 2)));
        assert_eq!(g(3000, 1000), Some((3, 1)));
        assert_eq!(g(600, 400), None);
        assert_eq!(g(640, 640), None);
        assert_eq!(g(641, 640).map(|(c, r)| c * r >= 2), Some(true));
    }
}
