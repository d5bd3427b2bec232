//! One cuBLAS grouped GEMM (`cublasGemmGroupedBatchedEx`) for a MoE layer's experts: every expert's rows times its
//! own weight in a single call, each expert with its own row count, where the padded dispatch pads every expert to
//! one count and runs the busiest alone, and a loop runs one GEMM per expert.

use candle_core::cuda_backend::cudarc::cublas::sys as blas;
use candle_core::cuda_backend::cudarc::driver::DevicePtr;
use candle_core::{DType, Device, Tensor};
use half::bf16;

use super::cuda_error;
use super::fused::{alloc, view, wrap};
use crate::model::ModelError;

/// `out[s..s + len] = x[s..s + len] · w[e]ᵀ` for every segment `(e, s, len)`: `x` `[rows, k]`, `w` `[experts, n, k]`,
/// both contiguous bf16 on one CUDA device, segments in row order covering `0..rows` exactly; `[rows, n]` bf16, the
/// products accumulated in f32. `Ok(None)` when the operands are not of that kind.
#[allow(unsafe_code)]
pub fn grouped_matmul_t(
    x: &Tensor,
    w: &Tensor,
    segments: &[(usize, usize, usize)],
) -> Result<Option<Tensor>, ModelError> {
    let Device::Cuda(cuda) = x.device() else {
        return Ok(None);
    };
    if [x, w]
        .iter()
        .any(|t| t.dtype() != DType::BF16 || !t.is_contiguous() || !t.device().is_cuda())
        || segments.is_empty()
    {
        return Ok(None);
    }
    let (rows, k) = x.dims2()?;
    let (experts, n, wk) = w.dims3()?;
    let mut next = 0;
    for &(e, s, len) in segments {
        if e >= experts || s != next || len == 0 {
            return Ok(None);
        }
        next = s + len;
    }
    if wk != k || next != rows {
        return Ok(None);
    }
    let int = |v: usize| {
        i32::try_from(v).map_err(|_| ModelError::Input {
            reason: format!("grouped GEMM: {v} does not fit in 32 bits"),
        })
    };
    let g = segments.len();
    let out = alloc::<bf16>(cuda, rows * n)?;
    let stream = cuda.cuda_stream();
    {
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (xv, wv) = (view::<bf16>(&xs, xl)?, view::<bf16>(&ws, wl)?);
        let (xp, _x_sync) = xv.device_ptr(&stream);
        let (wp, _w_sync) = wv.device_ptr(&stream);
        let (op, _o_sync) = out.device_ptr(&stream);
        // Column-major view, as in `linear_bias`: outᵀ [n, len] = w[e] (row-major [n, k] read transposed) · xᵀ [k, len].
        let mut ptrs = Vec::with_capacity(3 * g);
        ptrs.extend(
            segments
                .iter()
                .map(|&(e, _, _)| wp + (e * n * k * 2) as u64),
        );
        ptrs.extend(segments.iter().map(|&(_, s, _)| xp + (s * k * 2) as u64));
        ptrs.extend(segments.iter().map(|&(_, s, _)| op + (s * n * 2) as u64));
        let dev_ptrs = stream.clone_htod(&ptrs).map_err(cuda_error)?;
        let (pp, _p_sync) = dev_ptrs.device_ptr(&stream);
        let ta = vec![blas::cublasOperation_t::CUBLAS_OP_T; g];
        let tb = vec![blas::cublasOperation_t::CUBLAS_OP_N; g];
        let m_arr = vec![int(n)?; g];
        let n_arr = segments
            .iter()
            .map(|&(_, _, len)| int(len))
            .collect::<Result<Vec<_>, _>>()?;
        let k_arr = vec![int(k)?; g];
        let alpha = vec![1f32; g];
        let beta = vec![0f32; g];
        let ld_k = vec![int(k)?; g];
        let ld_n = vec![int(n)?; g];
        let sizes = vec![1i32; g];
        let handle = cuda.cublas_handle();
        let bf = blas::cudaDataType_t::CUDA_R_16BF;
        // SAFETY: every host array holds `g` entries and outlives the call; the device array holds the `3·g` pointers
        // (A, then B, then C), each inside `w`, `x` or `out` for the extent its dimensions and leading dimensions give
        // (segments were checked to lie in `0..rows` and experts in `0..experts`); all on the handle's stream, candle's.
        let status = unsafe {
            blas::cublasGemmGroupedBatchedEx(
                *handle.handle(),
                ta.as_ptr(),
                tb.as_ptr(),
                m_arr.as_ptr(),
                n_arr.as_ptr(),
                k_arr.as_ptr(),
                alpha.as_ptr().cast(),
                pp as *const *const std::ffi::c_void,
                bf,
                ld_k.as_ptr(),
                (pp + 8 * g as u64) as *const *const std::ffi::c_void,
                bf,
                ld_k.as_ptr(),
                beta.as_ptr().cast(),
                (pp + 16 * g as u64) as *const *mut std::ffi::c_void,
                bf,
                ld_n.as_ptr(),
                int(g)?,
                sizes.as_ptr(),
                blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            )
        };
        if status != blas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(ModelError::Candle(candle_core::Error::Msg(format!(
                "cublasGemmGroupedBatchedEx: {status:?}"
            ))));
        }
    }
    Ok(Some(wrap(out, cuda, (rows, n))))
}
