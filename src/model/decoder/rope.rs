//! Rotary position embedding in the standard non-interleaved ("rotate_half", Llama/NeoX) form.
//!
//! DeepSeek-OCR's decoder attention is transformers' `LlamaAttention` (spec §4.2): RoPE covers the
//! whole head (128 dims), θ = `rope_theta`, positions 0..N-1 over the whole sequence, image tokens
//! included. This is NOT the interleaved variant of MLA (`rope_i`); the pairs rotated together are
//! `(x[i], x[i + d/2])`. The tables are computed once, as transformers does: `inv_freq` and the
//! position products in f32, then cast to the model dtype.

use candle_core::{DType, Device, Tensor};

use crate::model::ModelError;

/// Precomputed cos/sin tables, `[max_positions, head_dim / 2]` each, in the model dtype.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    cos: Tensor,
    sin: Tensor,
    max_positions: usize,
}

/// `inv_freq[i] = 1 / theta^(2i / dim)`, in f32 as `LlamaRotaryEmbedding` computes it.
pub fn inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / head_dim as f32;
            1.0 / (theta as f32).powf(exponent)
        })
        .collect()
}

impl RotaryEmbedding {
    pub fn new(
        head_dim: usize,
        theta: f64,
        max_positions: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let inv = inv_freq(head_dim, theta);
        let half = inv.len();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for &f in &inv {
                // The angle is an f32 product (torch does `position.float() @ inv_freq`); cos/sin
                // are then evaluated accurately and rounded once to f32.
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let cos = Tensor::from_vec(cos, (max_positions, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (max_positions, half), device)?.to_dtype(dtype)?;
        Ok(Self {
            cos,
            sin,
            max_positions,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The `(cos, sin)` rows for positions `offset..offset + len`.
    pub fn tables(&self, offset: usize, len: usize) -> Result<(Tensor, Tensor), ModelError> {
        if offset + len > self.max_positions {
            return Err(ModelError::ContextFull {
                requested: offset + len,
                capacity: self.max_positions,
            });
        }
        Ok((
            self.cos.narrow(0, offset, len)?,
            self.sin.narrow(0, offset, len)?,
        ))
    }

    /// Rotates `x` of shape `[B, heads, T, head_dim]` whose first position is `offset`.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor, ModelError> {
        let t = x.dim(2)?;
        let (cos, sin) = self.tables(offset, t)?;
        Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-computed rotation: head_dim 4, θ = 10000, position 3.
    /// inv_freq = [1, 1/100]; angles = [3, 0.03]. Pairs are (x0, x2) and (x1, x3):
    /// out0 = x0 cos3 - x2 sin3, out2 = x2 cos3 + x0 sin3, likewise for (x1, x3) with 0.03.
    #[test]
    fn rope_matches_hand_computed_rotate_half() -> Result<(), ModelError> {
        let dev = Device::Cpu;
        let rope = RotaryEmbedding::new(4, 10000.0, 8, DType::F32, &dev)?;
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let xt = Tensor::from_slice(&x, (1, 1, 1, 4), &dev)?;
        let got = rope.apply(&xt, 3)?.flatten_all()?.to_vec1::<f32>()?;
        let (c0, s0) = (3f64.cos(), 3f64.sin());
        let (c1, s1) = (0.03f64.cos(), 0.03f64.sin());
        let want = [
            1.0 * c0 - 3.0 * s0,
            2.0 * c1 - 4.0 * s1,
            3.0 * c0 + 1.0 * s0,
            4.0 * c1 + 2.0 * s1,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "got {got:?}, want {want:?}");
        }
        Ok(())
    }

    #[test]
    fn positions_past_the_table_are_an_error() -> Result<(), ModelError> {
        let rope = RotaryEmbedding::new(4, 10000.0, 8, DType::F32, &Device::Cpu)?;
        let x = Tensor::zeros((1, 1, 2, 4), DType::F32, &Device::Cpu)?;
        assert!(matches!(
            rope.apply(&x, 7),
            Err(ModelError::ContextFull {
                requested: 9,
                capacity: 8
            })
        ));
        Ok(())
    }
}
