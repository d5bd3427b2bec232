//! The DeepEncoder: SAM → 16× compressor → CLIP → fusion → projector → 2-D layout (spec §2, §2.4, §2.6).
//!
//! Per view (the global view, or every Gundam tile as one batch), features are
//! `[CLIP output without CLS | SAM net_3 flattened]` (CLIP first), projected by one Linear to the
//! decoder width. The image's embeddings are then laid out by [`layout::TokenLayout`]: the local-tile
//! mosaic row by row, then the global grid row by row, each row followed by `image_newline`, and one
//! `view_seperator` (the checkpoint's spelling) at the end.

pub mod layout;
pub mod tiles;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;

use super::clip::ClipVisionModel;
use super::config::{Linear, VisionConfig, linear, tensor};
use super::error::{ModelError, Result};
use super::preprocess::PreparedImage;
use super::sam::SamModel;
use layout::{Segment, TokenLayout};

/// Concatenates `[CLIP without CLS | SAM flattened]` per grid cell: `[B, h·w, D_clip + C_sam]`.
pub fn fuse(clip_out: &Tensor, sam_out: &Tensor) -> Result<Tensor> {
    let n = clip_out.dim(1)? - 1;
    let clip = clip_out.narrow(1, 1, n)?;
    let sam = sam_out.flatten_from(2)?.transpose(1, 2)?;
    Ok(Tensor::cat(&[&clip, &sam.to_dtype(clip.dtype())?], 2)?)
}

/// The vision half of DeepSeek-OCR, loaded from the official checkpoint layout.
pub struct DeepEncoder {
    sam_model: SamModel,
    vision_model: ClipVisionModel,
    projector: Linear,
    image_newline: Tensor,
    view_seperator: Tensor,
    patch_size: usize,
    n_embed: usize,
    dtype: DType,
    device: Device,
}

impl DeepEncoder {
    /// Loads the encoder; `vb` is at the checkpoint root (tensors live under `model.`).
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let vb = vb.pp("model");
        let e = cfg.projector.n_embed;
        Ok(Self {
            sam_model: SamModel::new(&cfg.sam, vb.pp("sam_model"))?,
            vision_model: ClipVisionModel::new(&cfg.clip, vb.pp("vision_model"))?,
            projector: linear(
                &vb.pp("projector").pp("layers"),
                cfg.projector.input_dim,
                e,
                true,
            )?,
            image_newline: tensor(&vb, e, "image_newline")?,
            view_seperator: tensor(&vb, e, "view_seperator")?,
            patch_size: cfg.sam.patch_size,
            n_embed: e,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    pub fn sam_model(&self) -> &SamModel {
        &self.sam_model
    }

    pub fn vision_model(&self) -> &ClipVisionModel {
        &self.vision_model
    }

    /// Width of each output embedding (the decoder's hidden size).
    pub fn n_embed(&self) -> usize {
        self.n_embed
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The projector (`projector.layers`) on fused features `[B, h·w, input_dim]`.
    pub fn project(&self, features: &Tensor) -> Result<Tensor> {
        self.projector.forward(features)
    }

    /// Pixels `[B, 3, S, S]` → projected tokens `[B, (S/64)², n_embed]`.
    pub fn encode_views(&self, pixels: &Tensor) -> Result<Tensor> {
        let sam = self.sam_model.forward(&pixels.to_dtype(self.dtype)?)?;
        let clip = self.vision_model.forward(&sam)?;
        self.project(&fuse(&clip, &sam)?)
    }

    /// The layout of `image`'s embeddings; its `num_tokens()` is the `<image>` placeholder count.
    pub fn layout(&self, image: &PreparedImage) -> TokenLayout {
        image.layout(self.patch_size)
    }

    /// Encodes a prepared image into its embedding sequence `[N, n_embed]`, N = `layout().num_tokens()`.
    pub fn encode(&self, image: &PreparedImage) -> Result<Tensor> {
        Ok(self.encode_with_global(image)?.0)
    }

    /// As [`Self::encode`], also returning the global view's projector output `[1, q², n_embed]`
    /// (before the layout), which parity dumps compare stage by stage at no extra cost.
    pub fn encode_with_global(&self, image: &PreparedImage) -> Result<(Tensor, Tensor)> {
        let _span = tracing::trace_span!("deepencoder").entered();
        let global = self.encode_views(&image.global_pixels(self.dtype, &self.device)?)?;
        let local = match image.tile_pixels(self.dtype, &self.device)? {
            Some(px) => Some(self.encode_views(&px)?),
            None => None,
        };
        let sequence = self.assemble(&self.layout(image), &global, local.as_ref())?;
        Ok((sequence, global))
    }

    /// Lays out projected view tokens: `global` `[1, q², E]`, `local` `[nW·nH, q_t², E]` (row-major tiles).
    pub fn assemble(
        &self,
        layout: &TokenLayout,
        global: &Tensor,
        local: Option<&Tensor>,
    ) -> Result<Tensor> {
        let q = layout.global_grid;
        let e = self.n_embed;
        let bad = |reason: String| ModelError::Input { reason };
        if global.dims() != [1, q * q, e] {
            return Err(bad(format!(
                "global tokens {:?}, layout wants [1, {}, {e}]",
                global.dims(),
                q * q
            )));
        }
        let global = global.reshape((q, q, e))?;
        let mosaic = match (layout.tiles, local) {
            (Some((qt, g)), Some(local)) => {
                if local.dims() != [g.count(), qt * qt, e] {
                    return Err(bad(format!(
                        "local tokens {:?}, layout wants [{}, {}, {e}]",
                        local.dims(),
                        g.count(),
                        qt * qt
                    )));
                }
                // view(nH, nW, qt, qt, E).permute(0, 2, 1, 3, 4).reshape(nH·qt, nW·qt, E)
                Some(
                    local
                        .reshape((g.rows, g.cols, qt, qt, e))?
                        .permute((0, 2, 1, 3, 4))?
                        .reshape((g.rows * qt, g.cols * qt, e))?,
                )
            }
            (None, None) => None,
            _ => return Err(bad("tile tokens and tile layout disagree".into())),
        };
        let newline = self.image_newline.unsqueeze(0)?;
        let sep = self.view_seperator.unsqueeze(0)?;
        let mut pieces = Vec::new();
        for seg in layout.segments() {
            pieces.push(match seg {
                Segment::MosaicRow { row } => match &mosaic {
                    Some(m) => m.i(row)?,
                    None => return Err(bad("mosaic row without tiles".into())),
                },
                Segment::GlobalRow { row } => global.i(row)?,
                Segment::Newline => newline.clone(),
                Segment::Separator => sep.clone(),
            });
        }
        Ok(Tensor::cat(&pieces, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine shares one encoder between worker threads.
    #[test]
    fn encoder_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<DeepEncoder>();
    }
}
