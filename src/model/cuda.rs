//! CUDA specifics (cargo feature `cuda`): device settings applied once to a new device by [`tune`], a bias-fused GEMM
//! ([`linear_bias`]) and the profiler capture marks of `bench … --profile` ([`ProfilerCapture`]).
//!
//! Two defaults of candle's CUDA backend cost time on every op, and neither is needed by this program, which runs all
//! its work on the one stream candle makes per device:
//! - **Memory pool release threshold.** candle allocates every tensor with `cuMemAllocAsync` from the device's memory
//!   pool, whose release threshold is 0 by default: at every synchronisation (a token read back to the host, a MoE
//!   layer's routing, the end of a page) the pool hands all its free memory back to the driver, and the next forward
//!   maps it in again, allocation by allocation. PyTorch's caching allocator keeps freed blocks instead; with the
//!   threshold at `u64::MAX` the pool does the same (nvidia-smi counts that memory as in use until the process ends).
//! - **Event tracking.** candle creates its stream with `new_stream`, which puts cudarc in multi-stream mode: every
//!   buffer then carries a read and a write `CudaEvent`, created with the buffer, recorded and waited on around every
//!   kernel that touches it. With a single stream nothing can race, so tracking is switched off for the buffers
//!   created afterwards.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use candle_core::cuda_backend::cudarc::cublaslt::{CudaBlasLT, Matmul, MatmulConfig};
use candle_core::cuda_backend::cudarc::driver::{result, sys};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Device, Storage, Tensor};
use half::bf16;

use crate::model::ModelError;

pub mod fused;
pub mod grouped;

/// Applies both settings to `device` (a no-op on another device). Call it before creating tensors on the device:
/// buffers created earlier keep their event tracking.
#[allow(unsafe_code)]
pub fn tune(device: &Device) -> Result<(), ModelError> {
    let Device::Cuda(cuda) = device else {
        return Ok(());
    };
    // SAFETY: every kernel, copy and free of this program runs on the device's one stream (candle's), so no buffer can
    // be used by two streams at once, which is all event tracking guards against.
    unsafe { cuda.disable_event_tracking() };
    let dev = cuda.cuda_stream().context().cu_device();
    let mut threshold = u64::MAX;
    // SAFETY: `dev` is the device of a live context; the release threshold attribute takes a `u64`, and `threshold`
    // outlives the call.
    unsafe {
        let pool = result::device::get_mem_pool(dev).map_err(cuda_error)?;
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .map_err(cuda_error)
    }
}

/// A CUDA library's error (driver, cuBLASLt) as candle reports one.
fn cuda_error(e: impl std::error::Error + Send + Sync + 'static) -> ModelError {
    ModelError::Candle(candle_core::Error::Cuda(Box::new(e)))
}

/// Marks the work done while it lives for a profiler that starts with capture off (`ncu --profile-from-start off`,
/// `nsys profile --capture-range=cudaProfilerApi`): `cuProfilerStart` when made, `cuProfilerStop` when dropped. With no
/// profiler attached both calls do nothing, and a failed call only loses the marks, so errors are ignored.
pub struct ProfilerCapture(bool);

impl ProfilerCapture {
    #[allow(unsafe_code)]
    pub fn start(device: &Device) -> Self {
        let Device::Cuda(cuda) = device else {
            return Self(false);
        };
        if cuda.cuda_stream().context().bind_to_thread().is_err() {
            return Self(false);
        }
        // SAFETY: a context is current on this thread; the call takes no arguments.
        let _ = unsafe { sys::cuProfilerStart() };
        Self(true)
    }
}

impl Drop for ProfilerCapture {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if self.0 {
            // SAFETY: as in `start`, on the thread that started the capture.
            let _ = unsafe { sys::cuProfilerStop() };
        }
    }
}

/// One cuBLASLt handle (with its 32 MiB workspace on Hopper) per CUDA stream, made on first use.
fn blas_lt(cuda: &candle_core::CudaDevice) -> Result<Arc<CudaBlasLT>, ModelError> {
    static HANDLES: OnceLock<Mutex<HashMap<usize, Arc<CudaBlasLT>>>> = OnceLock::new();
    let stream = cuda.cuda_stream();
    let mut handles = HANDLES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(h) = handles.get(&(stream.cu_stream() as usize)) {
        return Ok(h.clone());
    }
    let h = Arc::new(CudaBlasLT::new(stream.clone()).map_err(cuda_error)?);
    handles.insert(stream.cu_stream() as usize, h.clone());
    Ok(h)
}

/// `x · wᵀ + b` on CUDA in bf16 with the bias added by the GEMM's epilogue (cuBLASLt): one kernel where candle's
/// `matmul` + `broadcast_add` take two, the second a strided broadcast over the whole output (41 µs a launch on
/// average in a Base page's SAM and CLIP, 30 % of the encoder's GPU time by Nsight Compute). `x` `[rows, k]`, `w`
/// `[n, k]`, `b` `[n]`, all contiguous bf16 on one CUDA device.
#[allow(unsafe_code)]
pub fn linear_bias(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor, ModelError> {
    let (rows, k) = x.dims2()?;
    let (n, wk) = w.dims2()?;
    let bad = |reason: String| ModelError::Input { reason };
    if wk != k || b.dims1()? != n {
        return Err(bad(format!(
            "linear_bias: x {:?}, w {:?}, b {:?} do not fit",
            x.dims(),
            w.dims(),
            b.dims()
        )));
    }
    if [x, w, b]
        .iter()
        .any(|t| t.dtype() != DType::BF16 || !t.is_contiguous())
    {
        return Err(bad("linear_bias: contiguous bf16 operands only".into()));
    }
    let Device::Cuda(cuda) = x.device() else {
        return Err(bad("linear_bias: CUDA tensors only".into()));
    };
    let lt = blas_lt(cuda)?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (bs, bl) = b.storage_and_layout();
    let (Storage::Cuda(xs), Storage::Cuda(ws), Storage::Cuda(bs)) = (&*xs, &*ws, &*bs) else {
        return Err(bad("linear_bias: CUDA tensors only".into()));
    };
    let (xo, wo, bo) = (xl.start_offset(), wl.start_offset(), bl.start_offset());
    let xv = xs.as_cuda_slice::<bf16>()?.slice(xo..xo + rows * k);
    let wv = ws.as_cuda_slice::<bf16>()?.slice(wo..wo + n * k);
    let bv = bs.as_cuda_slice::<bf16>()?.slice(bo..bo + n);
    let stream = cuda.cuda_stream();
    // SAFETY: every element is written by the GEMM below before the tensor is read.
    let mut out = unsafe { stream.alloc::<bf16>(rows * n) }.map_err(cuda_error)?;
    // Column-major view: outᵀ [n, rows] = w [n, k] (its row-major storage read transposed) · xᵀ [k, rows].
    let cfg = MatmulConfig {
        transa: true,
        transb: false,
        transc: false,
        m: n as u64,
        n: rows as u64,
        k: k as u64,
        alpha: 1.0,
        lda: k as i64,
        ldb: k as i64,
        beta: 0.0,
        ldc: n as i64,
        stride_a: None,
        stride_b: None,
        stride_c: None,
        stride_bias: None,
        batch_size: None,
    };
    // SAFETY: the views hold `n·k`, `rows·k` and `n` elements as the config describes, and `out` `rows·n`.
    unsafe { lt.matmul(cfg, &wv, &xv, &mut out, Some(&bv), None) }.map_err(cuda_error)?;
    let storage = CudaStorage::wrap_cuda_slice(out, cuda.clone());
    Ok(Tensor::from_storage(
        Storage::Cuda(storage),
        (rows, n),
        BackpropOp::none(),
        false,
    ))
}
