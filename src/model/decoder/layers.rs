//! Small building blocks of the decoder: checked weight loading, RMSNorm, the SwiGLU MLP.

use candle_core::{DType, Shape, Tensor};
use candle_nn::VarBuilder;

pub(crate) use crate::model::config::Linear;
use crate::model::kernels::MatmulWeight;
use crate::model::{ModelError, fused};

/// Loads `name` under `vb` with the expected shape; a missing or misshaped tensor is an error that
/// names the full checkpoint path.
pub(crate) fn weight<S: Into<Shape>>(
    vb: &VarBuilder,
    shape: S,
    name: &str,
) -> Result<Tensor, ModelError> {
    let shape: Shape = shape.into();
    let full = if vb.prefix().is_empty() {
        name.to_string()
    } else {
        format!("{}.{name}", vb.prefix())
    };
    if !vb.contains_tensor(name) {
        return Err(ModelError::MissingTensor { name: full });
    }
    match vb.get(shape.clone(), name) {
        Ok(t) => Ok(t),
        // Report the stored shape when the backend can tell it; otherwise the backend's error.
        Err(e) => match vb.get_unchecked(name) {
            Ok(t) if t.shape() != &shape => Err(ModelError::TensorShape {
                name: full,
                expected: shape.dims().to_vec(),
                got: t.dims().to_vec(),
            }),
            _ => Err(e.into()),
        },
    }
}

/// A bias-free or biased `nn.Linear(in_dim, out_dim)` read from `vb` (`weight`, optional `bias`).
pub(crate) fn linear(
    vb: &VarBuilder,
    in_dim: usize,
    out_dim: usize,
    bias: bool,
) -> Result<Linear, ModelError> {
    let w = weight(vb, (out_dim, in_dim), "weight")?;
    let b = if bias {
        Some(weight(vb, out_dim, "bias")?)
    } else {
        None
    };
    decoder_linear(w, b)
}

/// The `nn.Linear`s named `names` under `vb` (each `[out_i, in_dim]`, each with a bias when `bias`), which all
/// read the same input, as one layer whose weight is theirs concatenated along the output: one pass over the
/// input instead of one per projection (a prefill's rows are read once for q, k and v; a SwiGLU's once for gate and
/// up). Every output is the same dot product as in the separate layers. Split the result with [`split_last`].
pub(crate) fn fused_linear(
    vb: &VarBuilder,
    names: &[(&str, usize)],
    in_dim: usize,
    bias: bool,
) -> Result<Linear, ModelError> {
    let mut ws = Vec::with_capacity(names.len());
    let mut bs = Vec::with_capacity(names.len());
    for &(name, out_dim) in names {
        ws.push(weight(&vb.pp(name), (out_dim, in_dim), "weight")?);
        if bias {
            bs.push(weight(&vb.pp(name), out_dim, "bias")?);
        }
    }
    let b = if bias {
        Some(Tensor::cat(&bs, 0)?)
    } else {
        None
    };
    decoder_linear(Tensor::cat(&ws, 0)?, b)
}

/// `y` cut along its last dimension into consecutive pieces of the given widths (zero-copy views).
pub(crate) fn split_last<const N: usize>(
    y: &Tensor,
    widths: [usize; N],
) -> Result<[Tensor; N], ModelError> {
    let last = y.rank() - 1;
    let mut start = 0;
    let mut parts = Vec::with_capacity(N);
    for w in widths {
        parts.push(y.narrow(last, start, w)?);
        start += w;
    }
    parts
        .try_into()
        .map_err(|_| unreachable!("N parts were pushed"))
}

/// A decoder `nn.Linear`. On the CPU a weight whose f32 values are all bf16 values (a bf16 checkpoint, official or
/// bundled) is kept in bf16 (`compact_bf16`): the same numbers in half the memory, and half the bytes read per
/// decoded token. The encoder keeps f32: its GEMMs are compute-bound.
pub(crate) fn decoder_linear(weight: Tensor, bias: Option<Tensor>) -> Result<Linear, ModelError> {
    Ok(Linear::with_weight(MatmulWeight::new(weight)?, bias))
}

/// `DeepseekV2RMSNorm`: `weight * (x_f32 * rsqrt(mean(x_f32²) + eps)).to(input dtype)`.
///
/// The normalisation runs in f32 and is rounded to the activation dtype *before* the weight
/// multiply, as in the reference (spec §4.2); a fused kernel applying the weight in f32 would round
/// once instead of twice and drift from it in bf16.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    /// Ones in f32: the fused candle kernel wants a scale, and the real one is applied after the cast.
    unit: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(vb: &VarBuilder, size: usize, eps: f64) -> Result<Self, ModelError> {
        let weight = weight(vb, size, "weight")?;
        let unit = Tensor::ones(size, DType::F32, vb.device())?;
        Ok(Self {
            weight,
            unit,
            eps: eps as f32,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        fused::rms_norm(x, &self.weight, &self.unit, self.eps)
    }
}

/// `DeepseekV2MLP`: `down_proj(silu(gate_proj(x)) * up_proj(x))`, no biases. Used for the dense
/// layers (width `intermediate_size`) and for the shared experts (width
/// `moe_intermediate_size * n_shared_experts`).
#[derive(Debug, Clone)]
pub struct Mlp {
    /// `gate_proj` and `up_proj` in one layer ([`fused_linear`]).
    gate_up: Linear,
    down_proj: Linear,
    intermediate: usize,
}

impl Mlp {
    pub fn new(vb: &VarBuilder, hidden: usize, intermediate: usize) -> Result<Self, ModelError> {
        Ok(Self {
            gate_up: fused_linear(
                vb,
                &[("gate_proj", intermediate), ("up_proj", intermediate)],
                hidden,
                false,
            )?,
            down_proj: linear(&vb.pp("down_proj"), intermediate, hidden, false)?,
            intermediate,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let _span = tracing::trace_span!("mlp").entered();
        let gate_up = self.gate_up.forward(x)?;
        self.down_proj
            .forward(&fused::swiglu(&gate_up, self.intermediate)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    #[test]
    fn rms_norm_matches_the_formula() -> Result<(), ModelError> {
        let dev = Device::Cpu;
        let mut ts = HashMap::new();
        ts.insert(
            "n.weight".to_string(),
            Tensor::new(&[1.0f32, 2.0, 0.5], &dev)?,
        );
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        let norm = RmsNorm::new(&vb.pp("n"), 3, 1e-6)?;
        let x = [1.0f32, -2.0, 3.0];
        let got = norm
            .forward(&Tensor::new(&x, &dev)?.reshape((1, 3))?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let rms = ((1.0 + 4.0 + 9.0) / 3.0 + 1e-6f64).sqrt();
        let want = [1.0 / rms, -4.0 / rms, 1.5 / rms];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "got {got:?} want {want:?}");
        }
        Ok(())
    }

    #[test]
    fn missing_and_misshaped_weights_name_the_tensor() -> Result<(), ModelError> {
        let dev = Device::Cpu;
        let mut ts = HashMap::new();
        ts.insert(
            "m.gate_proj.weight".to_string(),
            Tensor::zeros((4, 2), DType::F32, &dev)?,
        );
        ts.insert(
            "m.up_proj.weight".to_string(),
            Tensor::zeros((4, 3), DType::F32, &dev)?,
        );
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        match Mlp::new(&vb.pp("m"), 2, 4) {
            Err(ModelError::TensorShape {
                name,
                expected,
                got,
            }) => {
                assert_eq!(
                    (name.as_str(), expected, got),
                    ("m.up_proj.weight", vec![4, 2], vec![4, 3])
                );
            }
            other => panic!("expected a weight error, got {:?}", other.err()),
        }
        match Mlp::new(&vb.pp("m"), 3, 4) {
            Err(ModelError::TensorShape { name, .. }) => assert_eq!(name, "m.gate_proj.weight"),
            other => panic!("expected a weight error, got {:?}", other.err()),
        }
        let vb2 = VarBuilder::from_tensors(HashMap::new(), DType::F32, &dev);
        match Mlp::new(&vb2.pp("m"), 2, 4) {
            Err(ModelError::MissingTensor { name }) => assert_eq!(name, "m.gate_proj.weight"),
            other => panic!("expected a weight error, got {:?}", other.err()),
        }
        Ok(())
    }
}
