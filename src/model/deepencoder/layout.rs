//! The 2-D layout of one image's vision tokens, and so the number of `<image>` placeholders (spec §2.6,
//! §3.4).
//!
//! A [`TokenLayout`] is the single source of truth for both: [`TokenLayout::segments`] lists, in sequence
//! order, the grid rows of the local-tile mosaic (each followed by `image_newline`), then the global
//! view's rows (each followed by `image_newline`), then one `view_seperator`.
//! [`TokenLayout::num_tokens`] sums those segments, and the encoder assembles its output by walking the
//! same list, so the placeholder count always equals the number of embeddings.

use super::tiles::TileGrid;

/// Side of the token grid of a `view_size` view: the patch grid (`view_size // patch_size`) halved,
/// rounding up, by each of the two stride-2 convs `net_2` and `net_3` (spec §3.4: ceil((S//16)/4)).
pub fn token_grid(view_size: usize, patch_size: usize) -> usize {
    let patches = view_size / patch_size;
    patches.div_ceil(2).div_ceil(2)
}

/// One run of consecutive embeddings in the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Row `row` of the local-tile mosaic: `mosaic_cols` tokens, gathered tile by tile.
    MosaicRow { row: usize },
    /// Row `row` of the global view's grid.
    GlobalRow { row: usize },
    /// One `image_newline` embedding.
    Newline,
    /// The single `view_seperator` embedding closing the image.
    Separator,
}

/// The layout of one image: the global view's grid and, in Gundam mode with tiles, the mosaic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLayout {
    /// Side of the global view's token grid (q_b: 8, 10, 16 or 20).
    pub global_grid: usize,
    /// Side of one tile's token grid (q_t: 10 for 640 tiles) and the tile grid, when tiled.
    pub tiles: Option<(usize, TileGrid)>,
}

impl TokenLayout {
    /// Layout for a global view of `view_size` px and optional `tile_size` px tiles in `grid`.
    pub fn new(view_size: usize, tiles: Option<(usize, TileGrid)>, patch_size: usize) -> Self {
        Self {
            global_grid: token_grid(view_size, patch_size),
            tiles: tiles.map(|(tile_size, grid)| (token_grid(tile_size, patch_size), grid)),
        }
    }

    /// Rows and columns of the local mosaic (nH·q_t, nW·q_t), when tiled.
    pub fn mosaic_dims(&self) -> Option<(usize, usize)> {
        self.tiles.map(|(q, g)| (g.rows * q, g.cols * q))
    }

    /// The embeddings of the image in sequence order.
    pub fn segments(&self) -> Vec<Segment> {
        let mut out = Vec::new();
        if let Some((rows, _)) = self.mosaic_dims() {
            for row in 0..rows {
                out.push(Segment::MosaicRow { row });
                out.push(Segment::Newline);
            }
        }
        for row in 0..self.global_grid {
            out.push(Segment::GlobalRow { row });
            out.push(Segment::Newline);
        }
        out.push(Segment::Separator);
        out
    }

    /// Number of embeddings in a segment.
    pub fn segment_len(&self, s: Segment) -> usize {
        match s {
            Segment::MosaicRow { .. } => self.mosaic_dims().map_or(0, |(_, cols)| cols),
            Segment::GlobalRow { .. } => self.global_grid,
            Segment::Newline | Segment::Separator => 1,
        }
    }

    /// The number of `<image>` placeholders to insert for this image = number of embeddings.
    pub fn num_tokens(&self) -> usize {
        self.segments()
            .into_iter()
            .map(|s| self.segment_len(s))
            .sum()
    }

    /// The paper's "vision tokens": grid cells only, without newlines and separator.
    pub fn num_vision_tokens(&self) -> usize {
        let mosaic = self.mosaic_dims().map_or(0, |(r, c)| r * c);
        mosaic + self.global_grid * self.global_grid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_grids_of_the_modes() {
        let q: Vec<usize> = [512, 640, 1024, 1280]
            .iter()
            .map(|&s| token_grid(s, 16))
            .collect();
        assert_eq!(q, vec![8, 10, 16, 20]);
    }

    #[test]
    fn formula_and_segments_agree() {
        let g = TileGrid { cols: 2, rows: 3 };
        let l = TokenLayout::new(1024, Some((640, g)), 16);
        // 273 + (10·nW + 1)·(10·nH)
        assert_eq!(l.num_tokens(), 16 * 17 + 1 + 21 * 30);
        assert_eq!(l.num_vision_tokens(), 856);
        let segs = l.segments();
        assert_eq!(segs[0], Segment::MosaicRow { row: 0 });
        assert_eq!(segs[60], Segment::GlobalRow { row: 0 });
        assert_eq!(segs.last(), Some(&Segment::Separator));
    }
}
