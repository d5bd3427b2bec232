//! SAM-B image encoder with DeepSeek-OCR's 16× compressor (`model.sam_model.*`, spec §2.2).
//!
//! ViTDet-style: a 16-px patch embedding, an absolute position embedding resized to the input grid
//! (bicubic + antialias, f32), 12 pre-norm blocks (windowed 14×14 with bottom/right zero padding and no
//! mask, except the global blocks 2/5/8/11), decomposed relative positions (tables linearly resized
//! when the grid is not the pretraining 64×64: the case candle's own SAM leaves as `todo!`), the neck
//! (1×1 conv, LayerNorm2d, 3×3 conv, LayerNorm2d) and the two stride-2 convs `net_2`, `net_3`.
//! Output is NCHW `[B, net_3_chans, S/64, S/64]`.
//!
//! Attention over a global grid (4,096 tokens at 1024 px, 6,400 at 1280) is computed in blocks of
//! query rows, so the `(heads × N × N)` logits never exist at once, and the decomposed rel-pos bias is
//! folded into the q·kᵀ GEMM (see `attention::sdpa_rel_pos`) instead of being materialised.

use candle_core::{D, DType, Tensor};
use candle_nn::VarBuilder;

use super::config::{LayerNorm, Linear, SamConfig, layer_norm, linear, tensor};
use super::error::Result;
use super::fused;
use super::interp::{ResizeCache, resize_nhwc_bicubic_aa};

pub(crate) mod attention;
use attention::Attention;

/// LayerNorm eps of every SAM norm (`partial(nn.LayerNorm, eps=1e-6)`, LayerNorm2d).
const SAM_LN_EPS: f64 = 1e-6;

/// `patch_embed.proj`: a 16×16 stride-16 conv, computed as one matmul over unfolded patches.
struct PatchEmbed {
    /// `[embed_dim, 3·p·p]`
    weight: Tensor,
    bias: Tensor,
    patch: usize,
}

impl PatchEmbed {
    fn new(cfg: &SamConfig, vb: VarBuilder) -> Result<Self> {
        let p = cfg.patch_size;
        let weight =
            tensor(&vb, (cfg.embed_dim, 3, p, p), "weight")?.reshape((cfg.embed_dim, 3 * p * p))?;
        let bias = tensor(&vb, cfg.embed_dim, "bias")?;
        Ok(Self {
            weight,
            bias,
            patch: p,
        })
    }

    /// `[B, 3, H, W]` → `[B, H/p, W/p, C]` (NHWC, as the PyTorch module permutes it).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("patch-embed").entered();
        let (b, c, h, w) = x.dims4()?;
        let p = self.patch;
        let (gh, gw) = (h / p, w / p);
        let x = x.narrow(2, 0, gh * p)?.narrow(3, 0, gw * p)?;
        let cols = x
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * gh * gw, c * p * p))?;
        let y = cols.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?;
        Ok(y.reshape((b, gh, gw, ()))?)
    }
}

/// `blocks.N.mlp`: lin1 → exact GELU → lin2.
struct Mlp {
    lin1: Linear,
    lin2: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("sam-mlp").entered();
        self.lin2.forward(&fused::gelu_erf(&self.lin1.forward(x)?)?)
    }
}

/// `blocks.N`: a pre-norm transformer block, windowed unless global.
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    /// 0 for global attention.
    window_size: usize,
}

impl Block {
    fn new(cfg: &SamConfig, index: usize, vb: VarBuilder) -> Result<Self> {
        let global = cfg.global_attn_indexes.contains(&index);
        let window_size = if global { 0 } else { cfg.window_size };
        let input_size = if global {
            cfg.pos_grid()
        } else {
            cfg.window_size
        };
        let mlp_vb = vb.pp("mlp");
        Ok(Self {
            norm1: layer_norm(&vb.pp("norm1"), cfg.embed_dim, SAM_LN_EPS)?,
            attn: Attention::new(cfg, input_size, vb.pp("attn"))?,
            norm2: layer_norm(&vb.pp("norm2"), cfg.embed_dim, SAM_LN_EPS)?,
            mlp: Mlp {
                lin1: linear(&mlp_vb.pp("lin1"), cfg.embed_dim, cfg.mlp_dim(), true)?,
                lin2: linear(&mlp_vb.pp("lin2"), cfg.mlp_dim(), cfg.embed_dim, true)?,
            },
            window_size,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Two names, so that a profile (`bench encoder --profile`) tells windowed from global blocks apart.
        let _span = if self.window_size > 0 {
            tracing::trace_span!("sam-block-window")
        } else {
            tracing::trace_span!("sam-block-global")
        }
        .entered();
        let shortcut = x;
        let y = self.norm1.forward(x)?;
        let y = if self.window_size > 0 {
            let (_, h, w, _) = y.dims4()?;
            let (windows, padded) = window_partition(&y, self.window_size)?;
            let out = self.attn.forward(&windows)?;
            window_unpartition(&out, self.window_size, padded, (h, w))?
        } else {
            self.attn.forward(&y)?
        };
        let x = (shortcut + y)?;
        let m = self.mlp.forward(&self.norm2.forward(&x)?)?;
        Ok((x + m)?)
    }
}

/// Zero-pads `[B, H, W, C]` at the bottom/right to multiples of `ws` and cuts `ws × ws` windows.
pub(crate) fn window_partition(x: &Tensor, ws: usize) -> Result<(Tensor, (usize, usize))> {
    let (b, h, w, c) = x.dims4()?;
    let (pad_h, pad_w) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
    if let Some(windows) = fused::window_partition(x, ws)? {
        return Ok((windows, (h + pad_h, w + pad_w)));
    }
    let x = x.pad_with_zeros(1, 0, pad_h)?.pad_with_zeros(2, 0, pad_w)?;
    let (hp, wp) = (h + pad_h, w + pad_w);
    let windows = x
        .reshape((b, hp / ws, ws, wp / ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((b * (hp / ws) * (wp / ws), ws, ws, c))?;
    Ok((windows, (hp, wp)))
}

/// Inverse of [`window_partition`], cropping the padding.
pub(crate) fn window_unpartition(
    windows: &Tensor,
    ws: usize,
    (hp, wp): (usize, usize),
    (h, w): (usize, usize),
) -> Result<Tensor> {
    let c = windows.dim(D::Minus1)?;
    let b = windows.dim(0)? / ((hp / ws) * (wp / ws));
    if let Some(x) = fused::window_unpartition(windows, ws, (b, h, w))? {
        return Ok(x);
    }
    let x = windows
        .reshape((b, hp / ws, wp / ws, ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((b, hp, wp, c))?;
    Ok(x.narrow(1, 0, h)?.narrow(2, 0, w)?.contiguous()?)
}

/// LayerNorm over the channels of an NCHW tensor (`LayerNorm2d`), via NHWC.
fn layer_norm_2d(ln: &LayerNorm, x: &Tensor) -> Result<Tensor> {
    let y = ln.forward(&x.permute((0, 2, 3, 1))?.contiguous()?)?;
    Ok(y.permute((0, 3, 1, 2))?.contiguous()?)
}

/// A bias-free conv with a TRACE span.
struct Conv {
    weight: Tensor,
    padding: usize,
    stride: usize,
}

impl Conv {
    fn new(
        vb: &VarBuilder,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: tensor(vb, (c_out, c_in, k, k), name)?,
            padding: k / 2,
            stride,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("conv2d").entered();
        Ok(x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?)
    }
}

/// Intermediate outputs of one SAM forward, for parity tests and debugging.
#[derive(Debug)]
pub struct SamStages {
    /// `[B, h, w, C]` after the position embedding.
    pub patch_embed: Tensor,
    /// `[B, h, w, C]` after each block.
    pub blocks: Vec<Tensor>,
    /// `[B, out_chans, h, w]`.
    pub neck: Tensor,
    pub net_2: Tensor,
    /// The encoder output, `[B, net_3_chans, h/4, w/4]`.
    pub net_3: Tensor,
}

/// `sam_model`: the whole SAM-B encoder plus compressor.
pub struct SamModel {
    patch_embed: PatchEmbed,
    pos_embed: Tensor,
    pos_cache: ResizeCache<Tensor>,
    blocks: Vec<Block>,
    neck_0: Tensor,
    neck_1: LayerNorm,
    neck_2: Conv,
    neck_3: LayerNorm,
    net_2: Conv,
    net_3: Conv,
}

impl SamModel {
    /// Loads `vb` = `model.sam_model`.
    pub fn new(cfg: &SamConfig, vb: VarBuilder) -> Result<Self> {
        let g = cfg.pos_grid();
        let blocks = (0..cfg.depth)
            .map(|i| Block::new(cfg, i, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let neck = vb.pp("neck");
        let (e, o) = (cfg.embed_dim, cfg.out_chans);
        Ok(Self {
            patch_embed: PatchEmbed::new(cfg, vb.pp("patch_embed").pp("proj"))?,
            pos_embed: tensor(&vb, (1, g, g, e), "pos_embed")?,
            pos_cache: ResizeCache::default(),
            blocks,
            neck_0: tensor(&neck, (o, e, 1, 1), "0.weight")?.reshape((o, e))?,
            neck_1: layer_norm(&neck.pp("1"), o, SAM_LN_EPS)?,
            neck_2: Conv::new(&neck, "2.weight", o, o, 3, 1)?,
            neck_3: layer_norm(&neck.pp("3"), o, SAM_LN_EPS)?,
            net_2: Conv::new(&vb, "net_2.weight", o, cfg.net_2_chans, 3, 2)?,
            net_3: Conv::new(&vb, "net_3.weight", cfg.net_2_chans, cfg.net_3_chans, 3, 2)?,
        })
    }

    /// `get_abs_pos`: the position table at the input grid, resized in f32 and cast back.
    fn pos_embed_for(&self, h: usize, w: usize) -> Result<Tensor> {
        let (_, gh, gw, _) = self.pos_embed.dims4()?;
        if (gh, gw) == (h, w) {
            return Ok(self.pos_embed.clone());
        }
        self.pos_cache.get_or_try((h, w), || {
            Ok(resize_nhwc_bicubic_aa(&self.pos_embed, h, w)?.to_dtype(self.pos_embed.dtype())?)
        })
    }

    fn run(&self, x: &Tensor, mut record: impl FnMut(&str, &Tensor)) -> Result<Tensor> {
        let _span = tracing::trace_span!("sam").entered();
        let x = self.patch_embed.forward(x)?;
        let (_, h, w, _) = x.dims4()?;
        let mut x = x.broadcast_add(&self.pos_embed_for(h, w)?)?;
        record("patch_embed", &x);
        for blk in &self.blocks {
            x = blk.forward(&x)?;
            record("block", &x);
        }
        // neck.0 is a 1×1 conv: a matmul over channels in NHWC; neck.1 normalises channels.
        let y = x.broadcast_matmul(&self.neck_0.t()?)?;
        let y = self
            .neck_1
            .forward(&y)?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        let y = layer_norm_2d(&self.neck_3, &self.neck_2.forward(&y)?)?;
        record("neck", &y);
        let y = self.net_2.forward(&y)?;
        record("net_2", &y);
        let y = self.net_3.forward(&y)?;
        Ok(y)
    }

    /// `[B, 3, S, S]` normalised pixels → `[B, net_3_chans, S/64, S/64]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, |_, _| {})
    }

    /// As [`SamModel::forward`], keeping every intermediate output.
    pub fn forward_stages(&self, x: &Tensor) -> Result<SamStages> {
        let mut patch_embed = None;
        let mut blocks = Vec::new();
        let mut neck = None;
        let mut net_2 = None;
        let net_3 = self.run(x, |stage, t| match stage {
            "patch_embed" => patch_embed = Some(t.clone()),
            "block" => blocks.push(t.clone()),
            "neck" => neck = Some(t.clone()),
            _ => net_2 = Some(t.clone()),
        })?;
        let missing = || candle_core::Error::Msg("SAM stage not recorded".into());
        Ok(SamStages {
            patch_embed: patch_embed.ok_or_else(missing)?,
            blocks,
            neck: neck.ok_or_else(missing)?,
            net_2: net_2.ok_or_else(missing)?,
            net_3,
        })
    }

    /// The working dtype (that of the loaded weights).
    pub fn dtype(&self) -> DType {
        self.pos_embed.dtype()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn window_partition_round_trips_and_pads_with_zeros() -> Result<()> {
        let x = Tensor::randn(0f32, 1.0, (2, 5, 7, 3), &Device::Cpu)?;
        let (win, padded) = window_partition(&x, 4)?;
        assert_eq!(padded, (8, 8));
        assert_eq!(win.dims(), &[2 * 4, 4, 4, 3]);
        // Window (0, 1) of image 0 covers columns 4..8: column 7 is padding.
        let pad = win
            .get(1)?
            .narrow(1, 3, 1)?
            .abs()?
            .sum_all()?
            .to_scalar::<f32>()?;
        assert_eq!(pad, 0.0);
        let back = window_unpartition(&win, 4, padded, (5, 7))?;
        let d = (back - &x)?.abs()?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(d, 0.0);
        Ok(())
    }
}
