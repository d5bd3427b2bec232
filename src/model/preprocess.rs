//! Image preprocessing for the DeepEncoder, as the HF `infer()` path does it (spec §3.2).
//!
//! * Tiny/Small (image_size ≤ 640): stretch-resize to image_size², then `ImageOps.pad` (a no-op then).
//! * Base/Large: `ImageOps.pad` to image_size² (scale the longer side to fit, centre on grey 127).
//! * Gundam: global view `ImageOps.pad` to base_size (1024); if either side exceeds 640, also resize
//!   to (640·nW, 640·nH) and cut row-major 640² tiles, with the grid from `dynamic_preprocess`.
//!
//! Every resize is Pillow's BICUBIC on 8-bit pixels ([`pillow`]), so views are byte-identical to
//! Pillow's. A grayscale image (a renderer page) is processed on one channel and expanded to RGB at the
//! end, which gives the same bytes as Pillow's `convert("RGB")` first. Normalisation to the encoder's
//! input, `(x/255 − 0.5)/0.5`, happens in [`PreparedImage::global_pixels`] / [`PreparedImage::tile_pixels`].

pub mod decode;
pub mod pillow;

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};

use super::deepencoder::layout::TokenLayout;
use super::deepencoder::tiles::{MAX_CROPS_HF, TILE_SIZE, TileGrid, gundam_grid};
use super::error::{ModelError, Result};

/// Pad colour `int(0.5·255)` on every channel, applied before normalisation (spec §2.1).
pub const PAD_VALUE: u8 = 127;

/// An 8-bit image: row-major, interleaved channels (1 = gray, 3 = RGB).
#[derive(Clone, PartialEq, Eq)]
pub struct Image8 {
    width: usize,
    height: usize,
    channels: usize,
    data: Vec<u8>,
}

impl fmt::Debug for Image8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Image8({}x{}x{})",
            self.width, self.height, self.channels
        )
    }
}

impl Image8 {
    /// Wraps a pixel buffer, checking its length and that the image is not empty.
    pub fn new(width: usize, height: usize, channels: usize, data: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(ModelError::Image {
                reason: format!("empty image {width}x{height}"),
            });
        }
        if channels != 1 && channels != 3 {
            return Err(ModelError::Image {
                reason: format!("{channels} channels (expected 1 = gray or 3 = RGB)"),
            });
        }
        if data.len() != width * height * channels {
            return Err(ModelError::Image {
                reason: format!(
                    "buffer of {} bytes for {width}x{height}x{channels}",
                    data.len()
                ),
            });
        }
        Ok(Self::from_parts(width, height, channels, data))
    }

    /// Internal constructor for buffers whose length is right by construction.
    pub(crate) fn from_parts(width: usize, height: usize, channels: usize, data: Vec<u8>) -> Self {
        debug_assert_eq!(data.len(), width * height * channels);
        Self {
            width,
            height,
            channels,
            data,
        }
    }

    /// Decodes PNG or JPEG bytes (see [`decode`]).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        decode::decode(bytes)
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The same image with 3 channels (gray values repeated), as Pillow's `convert("RGB")`.
    pub fn to_rgb(&self) -> Self {
        if self.channels == 3 {
            return self.clone();
        }
        Self::from_parts(self.width, self.height, 3, gray_to_rgb(&self.data))
    }
}

/// Gray values, each repeated into three channels. (A `flat_map` to `[v, v, v]` was the request threads' top
/// symbol in a `perf` profile of `bench service`, in every on-demand encode; this loop vectorises.)
pub fn gray_to_rgb(gray: &[u8]) -> Vec<u8> {
    let mut rgb = vec![0; gray.len() * 3];
    for (px, &v) in rgb.chunks_exact_mut(3).zip(gray) {
        px.fill(v);
    }
    rgb
}

/// The DeepSeek-OCR resolution modes (spec §3.1; Gundam-M is vLLM-only and not offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Tiny,
    Small,
    Base,
    Large,
    Gundam,
}

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::Tiny,
        Mode::Small,
        Mode::Base,
        Mode::Large,
        Mode::Gundam,
    ];

    /// `base_size` of `infer()`: the global view's side in crop mode.
    pub fn base_size(self) -> usize {
        match self {
            Mode::Tiny => 512,
            Mode::Small => 640,
            Mode::Base | Mode::Gundam => 1024,
            Mode::Large => 1280,
        }
    }

    /// `image_size` of `infer()`: the view's side without crop, the tile side with crop.
    pub fn image_size(self) -> usize {
        match self {
            Mode::Tiny => 512,
            Mode::Small | Mode::Gundam => 640,
            Mode::Base => 1024,
            Mode::Large => 1280,
        }
    }

    /// `crop_mode` of `infer()`: whether large images are also cut into tiles.
    pub fn crop_mode(self) -> bool {
        self == Mode::Gundam
    }

    /// Side of the global view this mode encodes.
    pub fn global_view_size(self) -> usize {
        if self.crop_mode() {
            self.base_size()
        } else {
            self.image_size()
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Tiny => "tiny",
            Mode::Small => "small",
            Mode::Base => "base",
            Mode::Large => "large",
            Mode::Gundam => "gundam",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| ModelError::Input {
                reason: format!("unknown mode {s:?} (tiny, small, base, large, gundam)"),
            })
    }
}

/// The tile grid `prepare` will use for a `width × height` image in `mode` (None: global view only).
pub fn tile_grid(width: usize, height: usize, mode: Mode, max_crops: usize) -> Option<TileGrid> {
    if mode.crop_mode() {
        gundam_grid(width, height, max_crops)
    } else {
        None
    }
}

/// Token layout of a `width × height` image without preprocessing it (for prompt building).
pub fn image_layout(
    width: usize,
    height: usize,
    mode: Mode,
    max_crops: usize,
    patch_size: usize,
) -> TokenLayout {
    let grid = tile_grid(width, height, mode, max_crops);
    TokenLayout::new(
        mode.global_view_size(),
        grid.map(|g| (TILE_SIZE, g)),
        patch_size,
    )
}

/// Number of `<image>` placeholders (= embeddings) for a `width × height` image in `mode`, with the
/// official 16-px patches and HF's max 9 tiles: 73/111/273/421 for Tiny/Small/Base/Large.
pub fn num_image_tokens(width: usize, height: usize, mode: Mode) -> usize {
    image_layout(width, height, mode, MAX_CROPS_HF, 16).num_tokens()
}

/// The views of one image, ready for the encoder: RGB, square, still 8-bit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedImage {
    pub mode: Mode,
    /// Global view, `mode.global_view_size()` square.
    pub global_view: Image8,
    /// Local tiles (640²), row-major; empty when `grid` is None.
    pub tiles: Vec<Image8>,
    pub grid: Option<TileGrid>,
}

impl PreparedImage {
    /// The layout of this image's embeddings, for an encoder with `patch_size`-px patches.
    pub fn layout(&self, patch_size: usize) -> TokenLayout {
        let tiles = self
            .grid
            .map(|g| (self.tiles.first().map_or(TILE_SIZE, Image8::width), g));
        TokenLayout::new(self.global_view.width(), tiles, patch_size)
    }

    /// The global view as the encoder's input `[1, 3, S, S]`, normalised, in `dtype` on `device`.
    pub fn global_pixels(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        pixels(std::slice::from_ref(&self.global_view), dtype, device)
    }

    /// The tiles as `[n, 3, 640, 640]`, or None without tiles.
    pub fn tile_pixels(&self, dtype: DType, device: &Device) -> Result<Option<Tensor>> {
        if self.tiles.is_empty() {
            return Ok(None);
        }
        pixels(&self.tiles, dtype, device).map(Some)
    }
}

/// Stacks same-size views into NCHW, applying `ToTensor` + `Normalize(0.5, 0.5)` in f32.
pub fn pixels(views: &[Image8], dtype: DType, device: &Device) -> Result<Tensor> {
    let first = views.first().ok_or_else(|| ModelError::Input {
        reason: "no views to convert".into(),
    })?;
    let (w, h) = (first.width(), first.height());
    let mut out = Vec::with_capacity(views.len() * 3 * w * h);
    for v in views {
        if (v.width(), v.height()) != (w, h) {
            return Err(ModelError::Input {
                reason: format!(
                    "views of different sizes {w}x{h} and {}x{}",
                    v.width(),
                    v.height()
                ),
            });
        }
        let c = v.channels();
        for ch in 0..3 {
            let src = if c == 1 { 0 } else { ch };
            out.extend(
                v.data()
                    .iter()
                    .skip(src)
                    .step_by(c)
                    .map(|&x| (f32::from(x) / 255.0 - 0.5) / 0.5),
            );
        }
    }
    let t = Tensor::from_vec(out, (views.len(), 3, h, w), &Device::Cpu)?;
    Ok(t.to_dtype(dtype)?.to_device(device)?)
}

/// Preprocesses an image for `mode` with HF's maximum of 9 tiles.
pub fn prepare(image: &Image8, mode: Mode) -> Result<PreparedImage> {
    prepare_with(image, mode, MAX_CROPS_HF)
}

/// Preprocesses an image for `mode`; `max_crops` bounds Gundam's tile count (9 HF, 6 vLLM).
pub fn prepare_with(image: &Image8, mode: Mode, max_crops: usize) -> Result<PreparedImage> {
    let _span = tracing::span!(tracing::Level::TRACE, "preprocess", mode = mode.name()).entered();
    let (w, h) = (image.width(), image.height());
    if mode.crop_mode() {
        let grid = tile_grid(w, h, mode, max_crops);
        let mut tiles = Vec::new();
        if let Some(g) = grid {
            let resized = pillow::resize_bicubic(image, TILE_SIZE * g.cols, TILE_SIZE * g.rows);
            for i in 0..g.count() {
                let (col, row) = (i % g.cols, i / g.cols);
                let tile = pillow::crop(
                    &resized,
                    col * TILE_SIZE,
                    row * TILE_SIZE,
                    TILE_SIZE,
                    TILE_SIZE,
                );
                tiles.push(tile.to_rgb());
            }
        }
        let global_view = pillow::pad(image, mode.base_size(), PAD_VALUE).to_rgb();
        return Ok(PreparedImage {
            mode,
            global_view,
            tiles,
            grid,
        });
    }
    let size = mode.image_size();
    let global_view = if size <= TILE_SIZE {
        pillow::pad(&pillow::resize_bicubic(image, size, size), size, PAD_VALUE)
    } else {
        pillow::pad(image, size, PAD_VALUE)
    };
    Ok(PreparedImage {
        mode,
        global_view: global_view.to_rgb(),
        tiles: Vec::new(),
        grid: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_counts_of_the_modes() {
        let counts: Vec<usize> = [Mode::Tiny, Mode::Small, Mode::Base, Mode::Large]
            .iter()
            .map(|&m| num_image_tokens(900, 700, m))
            .collect();
        assert_eq!(counts, vec![73, 111, 273, 421]);
    }

    #[test]
    fn gundam_worked_examples() {
        assert_eq!(num_image_tokens(1191, 1684, Mode::Gundam), 903);
        assert_eq!(num_image_tokens(800, 600, Mode::Gundam), 893);
        assert_eq!(num_image_tokens(3000, 1000, Mode::Gundam), 583);
        assert_eq!(num_image_tokens(600, 400, Mode::Gundam), 273);
        // The vLLM knob (max 6) changes 1920×1080 from (4,2) to (2,1).
        let l = |m| image_layout(1920, 1080, Mode::Gundam, m, 16).num_tokens();
        assert_eq!(l(9), 273 + 41 * 20);
        assert_eq!(l(6), 273 + 21 * 10);
    }

    #[test]
    fn prepare_builds_views_matching_the_layout() -> Result<()> {
        let img = Image8::new(
            700,
            300,
            1,
            (0..700 * 300).map(|i| (i % 251) as u8).collect(),
        )?;
        let p = prepare(&img, Mode::Gundam)?;
        let g = p.grid.ok_or_else(|| ModelError::Input {
            reason: "no grid".into(),
        })?;
        assert_eq!((g.cols, g.rows), (2, 1));
        assert_eq!(p.tiles.len(), 2);
        assert_eq!((p.global_view.width(), p.global_view.channels()), (1024, 3));
        assert_eq!(
            p.layout(16).num_tokens(),
            num_image_tokens(700, 300, Mode::Gundam)
        );
        let px = p
            .tile_pixels(DType::F32, &Device::Cpu)?
            .ok_or_else(|| ModelError::Input {
                reason: "no tiles".into(),
            })?;
        assert_eq!(px.dims(), &[2, 3, 640, 640]);
        // The pad colour normalises to 127/255·2 − 1.
        let small = prepare(&img, Mode::Base)?.global_pixels(DType::F32, &Device::Cpu)?;
        let corner = small.flatten_all()?.to_vec1::<f32>()?[0];
        assert!((corner - (127.0 / 255.0 - 0.5) / 0.5).abs() < 1e-7);
        Ok(())
    }

    #[test]
    fn mode_names_round_trip() -> Result<()> {
        for m in Mode::ALL {
            assert_eq!(m.name().parse::<Mode>()?, m);
        }
        assert!("huge".parse::<Mode>().is_err());
        Ok(())
    }
}
