//! Many small GEMMs as one cuBLAS call, their matrices named by a device table of addresses:
//! - [`grouped_matmul_t`] (`cublasGemmGroupedBatchedEx`) for a MoE layer's experts: every expert's rows times its
//!   own weight in a single call, each expert with its own row count, where the padded dispatch pads every expert to
//!   one count and runs the busiest alone, and a loop runs one GEMM per expert;
//! - [`batched_gemm_t`] (`cublasGemmBatchedEx`, one shape for all) for SAM's rel-pos terms (`fused::sam_qkv_aug`).

use candle_core::cuda_backend::cudarc::cublas::sys as blas;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use candle_core::{CudaDevice, DType, Device, Tensor};
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
    let int = |v| c_int(v, "grouped GEMM");
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
        let ptrs: Vec<(u64, u64, u64)> = segments
            .iter()
            .map(|&(e, s, _)| {
                (
                    wp + (e * n * k * 2) as u64,
                    xp + (s * k * 2) as u64,
                    op + (s * n * 2) as u64,
                )
            })
            .collect();
        let dev_ptrs = address_table(&stream, &ptrs)?;
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
        blas_ok(status, "cublasGemmGroupedBatchedEx")?;
    }
    Ok(Some(wrap(out, cuda, (rows, n))))
}

/// Column-major `C_i [m × n] = A_iᵀ · B_i` for every `(A_i, B_i, C_i)` device address triple (bf16, f32
/// accumulation), `A_i` `[k × m]` with leading dimension `lda`, `B_i` `[k × n]` with `ldb`, `C_i` with `ldc`:
/// `cublasGemmBatchedEx` on candle's handle and stream.
#[allow(unsafe_code)]
pub(super) fn batched_gemm_t(
    cuda: &CudaDevice,
    ptrs: &[(u64, u64, u64)],
    (m, n, k): (usize, usize, usize),
    (lda, ldb, ldc): (usize, usize, usize),
) -> Result<(), ModelError> {
    let count = ptrs.len();
    let int = |v| c_int(v, "batched GEMM");
    let stream = cuda.cuda_stream();
    let dev = address_table(&stream, ptrs)?;
    let (pp, _sync) = dev.device_ptr(&stream);
    let (alpha, beta) = (1f32, 0f32);
    let bf = blas::cudaDataType_t::CUDA_R_16BF;
    let handle = cuda.cublas_handle();
    // SAFETY: the device array holds `count` A, then B, then C addresses, each the start of a matrix of the given
    // dimensions and leading dimension inside a live buffer (the caller built them from its tensors' extents), and
    // the Cs do not overlap; candle's handle runs on candle's stream, as everything else here.
    let status = unsafe {
        blas::cublasGemmBatchedEx(
            *handle.handle(),
            blas::cublasOperation_t::CUBLAS_OP_T,
            blas::cublasOperation_t::CUBLAS_OP_N,
            int(m)?,
            int(n)?,
            int(k)?,
            (&alpha as *const f32).cast(),
            pp as *const *const std::ffi::c_void,
            bf,
            int(lda)?,
            (pp + 8 * count as u64) as *const *const std::ffi::c_void,
            bf,
            int(ldb)?,
            (&beta as *const f32).cast(),
            (pp + 16 * count as u64) as *const *mut std::ffi::c_void,
            bf,
            int(ldc)?,
            int(count)?,
            blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    };
    blas_ok(status, "cublasGemmBatchedEx")
}

/// The `(A, B, C)` address triples on the device as cuBLAS's batched calls read them: every A, then every B, then
/// every C.
fn address_table(
    stream: &std::sync::Arc<CudaStream>,
    ptrs: &[(u64, u64, u64)],
) -> Result<CudaSlice<u64>, ModelError> {
    let mut flat = Vec::with_capacity(3 * ptrs.len());
    flat.extend(ptrs.iter().map(|p| p.0));
    flat.extend(ptrs.iter().map(|p| p.1));
    flat.extend(ptrs.iter().map(|p| p.2));
    stream.clone_htod(&flat).map_err(cuda_error)
}

/// A dimension or count as cuBLAS's `int`.
fn c_int(v: usize, call: &str) -> Result<i32, ModelError> {
    i32::try_from(v).map_err(|_| ModelError::Input {
        reason: format!("{call}: {v} does not fit in 32 bits"),
    })
}

fn blas_ok(status: blas::cublasStatus_t, call: &str) -> Result<(), ModelError> {
    if status == blas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(ModelError::Candle(candle_core::Error::Msg(format!(
            "{call}: {status:?}"
        ))))
    }
}
