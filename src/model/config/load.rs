//! Checkpoint-loading helpers shared by every model module.
//!
//! [`load_safetensors_mmap`] maps a model directory's weights; [`tensor`], [`linear`] and
//! [`layer_norm`] load one tensor or layer and turn a missing or mis-shaped tensor into a
//! [`ModelError`] naming it (the full dotted checkpoint name), never a silent fallback.

use std::path::Path;

use candle_core::{DType, Device, Module, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::model::error::{ModelError, Result};
use crate::model::kernels::MatmulWeight;

/// Reads and parses `dir/config.json`.
pub fn read_config_json(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::ConfigParse {
        what: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// A `VarBuilder` over every `*.safetensors` file of a model directory, memory-mapped.
///
/// The official checkpoint is a single 6.7 GB bf16 file; mapping it avoids holding a second copy.
/// Tensors are converted to `dtype` and moved to `device` as each module loads them.
pub fn load_safetensors_mmap(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let entries = std::fs::read_dir(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(ModelError::NoWeights {
            dir: dir.to_path_buf(),
        });
    }
    files.sort();
    mmap_var_builder(&files, dtype, device)
}

// Reason: candle's mmap constructor is `unsafe` because a file changed by another process while mapped
// would change tensor bytes under us. Model directories are read-only inputs for the life of the process.
#[allow(unsafe_code)]
fn mmap_var_builder(
    files: &[std::path::PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    // SAFETY: the files are not modified while the process runs (see above); candle validates headers.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) };
    vb.map_err(|e| ModelError::ConfigParse {
        what: format!("safetensors files {files:?}"),
        reason: e.to_string(),
    })
}

/// Loads `name` under `vb`'s prefix, checking it exists and has `shape`; converts to `vb.dtype()`.
pub fn tensor<S: Into<Shape>>(vb: &VarBuilder, shape: S, name: &str) -> Result<Tensor> {
    tensor_dtype(vb, shape, name, vb.dtype())
}

/// As [`tensor`], converting to `dtype` instead (for the f32 islands: interpolated position tables).
pub fn tensor_dtype<S: Into<Shape>>(
    vb: &VarBuilder,
    shape: S,
    name: &str,
    dtype: DType,
) -> Result<Tensor> {
    let full = full_name(vb, name);
    if !vb.contains_tensor(name) {
        return Err(ModelError::MissingTensor { name: full });
    }
    let t = vb.get_unchecked_dtype(name, dtype)?;
    let shape: Shape = shape.into();
    if t.shape() != &shape {
        return Err(ModelError::TensorShape {
            name: full,
            expected: shape.dims().to_vec(),
            got: t.dims().to_vec(),
        });
    }
    Ok(t)
}

fn full_name(vb: &VarBuilder, name: &str) -> String {
    let p = vb.prefix();
    if p.is_empty() {
        name.to_string()
    } else {
        format!("{p}.{name}")
    }
}

/// A `Linear` layer (`weight` `[out, in]`, optional `bias`) with a TRACE span (made per call, so that the
/// subscriber of the moment sees it, as `bench … --profile` needs), as candle's `with_tracing`; the encoder's and the
/// decoder's.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: MatmulWeight,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: MatmulWeight::Plain(weight),
            bias,
        }
    }

    /// A layer whose weight is kept as [`MatmulWeight::new`] keeps it (bf16 panels on the CPU when it can).
    pub(crate) fn with_weight(weight: MatmulWeight, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// `x · Wᵀ + b` over the last dimension, as one 2-D GEMM on the rows of a contiguous `x` ([`MatmulWeight::matmul_t`]).
    ///
    /// candle's `Linear` multiplies a 3-D input by a batch-broadcast (stride-0) transposed weight; that, or an
    /// input whose layout came out of a concatenation, is rejected by the CUDA matmul ("only supported for
    /// contiguous tensors", seen on the H200 with Gundam's tile batch). Flattening the leading dimensions of a
    /// contiguous input gives every backend a plain GEMM. On the CPU that GEMM is `optimem-gemm`, which reads the
    /// decoder's bf16 weights in its panel layout ([`MatmulWeight`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("linear").entered();
        // On CUDA in bf16 the bias rides in the GEMM's epilogue (`model::cuda::linear_bias`).
        #[cfg(feature = "cuda")]
        if let Some(b) = &self.bias
            && let MatmulWeight::Plain(w) = &self.weight
            && x.device().is_cuda()
            && x.dtype() == DType::BF16
            && x.elem_count() > 0
        {
            return crate::model::kernels::on_rows(x, |x2| {
                crate::model::cuda::linear_bias(x2, &w.contiguous()?, &b.contiguous()?)
            });
        }
        let y = self.weight.matmul_t(x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// Loads `weight` `[out, in]` (and `bias` `[out]`) under `vb`.
pub fn linear(vb: &VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
    let w = tensor(vb, (out_dim, in_dim), "weight")?;
    let b = if bias {
        Some(tensor(vb, out_dim, "bias")?)
    } else {
        None
    };
    Ok(Linear::new(w, b))
}

/// A LayerNorm over the last dimension with a TRACE span.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    inner: candle_nn::LayerNorm,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("layer-norm").entered();
        Ok(self.inner.forward(x)?)
    }
}

/// Loads `weight` and `bias` `[dim]` under `vb`.
pub fn layer_norm(vb: &VarBuilder, dim: usize, eps: f64) -> Result<LayerNorm> {
    let w = tensor(vb, dim, "weight")?;
    let b = tensor(vb, dim, "bias")?;
    Ok(LayerNorm {
        inner: candle_nn::LayerNorm::new(w, b, eps),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn missing_and_misshaped_tensors_are_named() -> Result<()> {
        let dev = Device::Cpu;
        let mut map = HashMap::new();
        map.insert(
            "model.proj.weight".to_string(),
            Tensor::zeros((4, 3), DType::F32, &dev)?,
        );
        let vb = VarBuilder::from_tensors(map, DType::F32, &dev);
        let vb = vb.pp("model").pp("proj");
        match linear(&vb, 3, 4, true) {
            Err(ModelError::MissingTensor { name }) => assert_eq!(name, "model.proj.bias"),
            other => panic!("expected MissingTensor, got {:?}", other.map(|_| ())),
        }
        match linear(&vb, 4, 4, false) {
            Err(ModelError::TensorShape {
                name,
                expected,
                got,
            }) => {
                assert_eq!(name, "model.proj.weight");
                assert_eq!(expected, vec![4, 4]);
                assert_eq!(got, vec![4, 3]);
            }
            other => panic!("expected TensorShape, got {:?}", other.map(|_| ())),
        }
        Ok(())
    }

    /// A 3-D input in a transposed (non-contiguous) layout gives, row by row, `x·Wᵀ + b` exactly as a
    /// plain 2-D product on the same rows.
    #[test]
    fn linear_on_a_transposed_3d_input_matches_the_rowwise_product() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 12.0, &dev)?
            .reshape((3, 4))?
            .affine(0.1, -0.5)?;
        let b = Tensor::new(&[0.25f32, -1.0, 2.0], &dev)?;
        let mut map = HashMap::new();
        map.insert("weight".to_string(), w.clone());
        map.insert("bias".to_string(), b.clone());
        let lin = linear(&VarBuilder::from_tensors(map, DType::F32, &dev), 4, 3, true)?;
        // [2, 5, 4] whose storage is [4, 5, 2] (the layout a concatenation can leave behind)
        let x = Tensor::arange(0f32, 40.0, &dev)?
            .reshape((4, 5, 2))?
            .affine(0.05, -1.0)?
            .permute((2, 1, 0))?;
        assert!(!x.is_contiguous());
        let got = lin.forward(&x)?;
        assert_eq!(got.dims(), [2, 5, 3]);
        let rows = x.contiguous()?.reshape((10, 4))?;
        let want = rows
            .matmul(&w.t()?)?
            .broadcast_add(&b)?
            .reshape((2, 5, 3))?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "max |Δ| {diff}");
        Ok(())
    }
}
