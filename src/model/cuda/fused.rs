//! Launchers of the fused kernels in `fused.cu` (compiled to PTX by build.rs, loaded once per device). Each takes
//! candle tensors, checks every precondition its kernel assumes (CUDA, bf16 where it reads bf16, contiguous, 16-byte
//! aligned rows where it reads 16 bytes at a time) and returns `Ok(None)` when one does not hold, so that the caller
//! ([`crate::model::fused`]) runs the composite ops instead: a kernel is never launched on operands it cannot read.

use candle_core::cuda_backend::CudaDType;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Device, Layout, Shape, Storage, Tensor};
use half::bf16;

use super::cuda_error;
use crate::model::ModelError;

const MODULE: &str = "optimem-fused";
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));

/// Threads per block of the element-wise kernels (grid-stride loops).
const BLOCK: u32 = 256;
/// Blocks at most of one element-wise launch: enough to fill an H200 (132 SMs × 8 blocks of 256) several times over.
const MAX_GRID: u32 = 132 * 32;

fn func(cuda: &CudaDevice, name: &str) -> Result<CudaFunction, ModelError> {
    Ok(cuda
        .get_or_load_custom_func(name, MODULE, PTX)?
        .into_cuda_function())
}

/// The CUDA device of `t` when `t` is a contiguous CUDA tensor of `dtype`.
fn cuda_of(t: &Tensor, dtype: DType) -> Option<CudaDevice> {
    match t.device() {
        Device::Cuda(c) if t.dtype() == dtype && t.is_contiguous() => Some(c.clone()),
        _ => None,
    }
}

/// Whether every one of `ts` starts on a 16-byte boundary (candle's allocations do; a view may not).
fn aligned16(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| (t.layout().start_offset() * t.dtype().size_in_bytes()).is_multiple_of(16))
}

/// The elements of a contiguous tensor's storage that are its own.
pub(super) fn view<'a, T: CudaDType>(
    s: &'a Storage,
    l: &Layout,
) -> Result<CudaView<'a, T>, ModelError> {
    let Storage::Cuda(s) = s else {
        return Err(ModelError::Input {
            reason: "fused kernel: CUDA tensors only".into(),
        });
    };
    let (a, b) = l.contiguous_offsets().ok_or_else(|| ModelError::Input {
        reason: "fused kernel: contiguous tensors only".into(),
    })?;
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

/// A new uninitialised buffer of `n` elements; every caller's kernel writes all of them before they are read.
#[allow(unsafe_code)]
pub(super) fn alloc<T: DeviceRepr>(
    cuda: &CudaDevice,
    n: usize,
) -> Result<CudaSlice<T>, ModelError> {
    // SAFETY: see above; the buffer is only handed out after the launch that fills it.
    unsafe { cuda.cuda_stream().alloc::<T>(n) }.map_err(cuda_error)
}

pub(super) fn wrap<T: CudaDType>(
    out: CudaSlice<T>,
    cuda: &CudaDevice,
    shape: impl Into<Shape>,
) -> Tensor {
    let storage = CudaStorage::wrap_cuda_slice(out, cuda.clone());
    Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false)
}

/// Grid of a grid-stride launch over `n` items.
fn grid_for(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, MAX_GRID as usize) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn u32_of(n: usize, what: &str) -> Result<u32, ModelError> {
    u32::try_from(n).map_err(|_| ModelError::Input {
        reason: format!("fused kernel: {what} {n} does not fit in 32 bits"),
    })
}

/// `silu(gate) · up` for `gate_up` `[.., 2·width]` bf16 (`[gate | up]`), as `[.., width]`.
#[allow(unsafe_code)]
pub fn swiglu(gate_up: &Tensor, width: usize) -> Result<Option<Tensor>, ModelError> {
    let Some(cuda) = cuda_of(gate_up, DType::BF16) else {
        return Ok(None);
    };
    let last = gate_up.dim(candle_core::D::Minus1)?;
    if last != 2 * width || !width.is_multiple_of(8) || !aligned16(&[gate_up]) {
        return Ok(None);
    }
    let rows = gate_up.elem_count() / last;
    let mut dims = gate_up.dims().to_vec();
    *dims.last_mut().unwrap_or(&mut 0) = width;
    let out = alloc::<bf16>(&cuda, rows * width)?;
    {
        let (s, l) = gate_up.storage_and_layout();
        let src = view::<bf16>(&s, l)?;
        let f = func(&cuda, "swiglu_bf16")?;
        let stream = cuda.cuda_stream();
        let mut b = stream.launch_builder(&f);
        let (r, w) = (u32_of(rows, "rows")?, u32_of(width, "width")?);
        b.arg(&src).arg(&out).arg(&r).arg(&w);
        // SAFETY: `src` holds rows·2·width bf16 and `out` rows·width, 16-byte aligned, as the kernel reads them.
        unsafe { b.launch(grid_for(rows * width / 8)) }.map_err(cuda_error)?;
    }
    Ok(Some(wrap(out, &cuda, dims)))
}

/// Exact GELU of `x` (bf16, a whole number of 16-byte words).
#[allow(unsafe_code)]
pub fn gelu_erf(x: &Tensor) -> Result<Option<Tensor>, ModelError> {
    let Some(cuda) = cuda_of(x, DType::BF16) else {
        return Ok(None);
    };
    let n = x.elem_count();
    if !n.is_multiple_of(8) || !aligned16(&[x]) {
        return Ok(None);
    }
    let out = alloc::<bf16>(&cuda, n)?;
    {
        let (xs, xl) = x.storage_and_layout();
        let xv = view::<bf16>(&xs, xl)?;
        let f = func(&cuda, "gelu_erf_bf16")?;
        let stream = cuda.cuda_stream();
        let mut b = stream.launch_builder(&f);
        let v = u32_of(n / 8, "words")?;
        b.arg(&xv).arg(&out).arg(&v);
        // SAFETY: `xv` and `out` hold n / 8 aligned 16-byte words.
        unsafe { b.launch(grid_for(n / 8)) }.map_err(cuda_error)?;
    }
    Ok(Some(wrap(out, &cuda, x.dims())))
}

/// DeepseekV2RMSNorm of `x` `[.., cols]` bf16 with `weight` `[cols]` bf16.
#[allow(unsafe_code)]
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Option<Tensor>, ModelError> {
    let (Some(cuda), Some(_)) = (cuda_of(x, DType::BF16), cuda_of(weight, DType::BF16)) else {
        return Ok(None);
    };
    let cols = x.dim(candle_core::D::Minus1)?;
    if weight.dims() != [cols] || cols == 0 {
        return Ok(None);
    }
    let rows = x.elem_count() / cols;
    let out = alloc::<bf16>(&cuda, rows * cols)?;
    {
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let (xv, wv) = (view::<bf16>(&xs, xl)?, view::<bf16>(&ws, wl)?);
        let f = func(&cuda, "rms_norm_bf16")?;
        let stream = cuda.cuda_stream();
        let mut b = stream.launch_builder(&f);
        let c = u32_of(cols, "cols")?;
        b.arg(&xv).arg(&wv).arg(&out).arg(&c).arg(&eps);
        let cfg = LaunchConfig {
            grid_dim: (u32_of(rows, "rows")?, 1, 1),
            block_dim: (BLOCK.min(cols.next_multiple_of(32) as u32), 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: one block per row of `cols` in `xv` and `out`; `wv` holds `cols`.
        unsafe { b.launch(cfg) }.map_err(cuda_error)?;
    }
    Ok(Some(wrap(out, &cuda, x.dims())))
}

/// Rows `idx` (u32) of `src` `[rows, ..]` (bf16 or f32, rows of whole 16-byte words).
pub fn gather_rows(src: &Tensor, idx: &Tensor) -> Result<Option<Tensor>, ModelError> {
    match src.dtype() {
        DType::BF16 => gather_typed::<bf16>(src, idx),
        DType::F32 => gather_typed::<f32>(src, idx),
        _ => Ok(None),
    }
}

#[allow(unsafe_code)]
fn gather_typed<T: CudaDType + DeviceRepr>(
    src: &Tensor,
    idx: &Tensor,
) -> Result<Option<Tensor>, ModelError> {
    let (Some(cuda), Some(_)) = (cuda_of(src, src.dtype()), cuda_of(idx, DType::U32)) else {
        return Ok(None);
    };
    if src.rank() == 0 || idx.rank() != 1 || src.dim(0)? == 0 {
        return Ok(None);
    }
    let src_rows = src.dim(0)?;
    let row = src.elem_count() / src_rows;
    if !(row * src.dtype().size_in_bytes()).is_multiple_of(16) || !aligned16(&[src]) {
        return Ok(None);
    }
    let n = idx.dim(0)?;
    let vecs = row * src.dtype().size_in_bytes() / 16;
    let mut dims = src.dims().to_vec();
    dims[0] = n;
    let out = alloc::<T>(&cuda, n * row)?;
    {
        let (ss, sl) = src.storage_and_layout();
        let (is, il) = idx.storage_and_layout();
        let (sv, iv) = (view::<T>(&ss, sl)?, view::<u32>(&is, il)?);
        let f = func(&cuda, "gather_rows_16b")?;
        let stream = cuda.cuda_stream();
        let mut b = stream.launch_builder(&f);
        let (nn, v, sr) = (
            u32_of(n, "rows")?,
            u32_of(vecs, "row words")?,
            u32_of(src_rows, "source rows")?,
        );
        b.arg(&sv).arg(&iv).arg(&out).arg(&nn).arg(&v).arg(&sr);
        // SAFETY: `sv` holds `src_rows·vecs` 16-byte words, 16-byte aligned; `iv` n indices; `out` n·vecs words. The
        // kernel copies words, whatever the dtype; an index past `src_rows` writes zeros.
        unsafe { b.launch(grid_for(n * vecs)) }.map_err(cuda_error)?;
    }
    Ok(Some(wrap(out, &cuda, dims)))
}

/// The MoE combination: `out[t] = bf16(Σ_j w[t, j] · y[rows_of[t·k + j]]) (+ shared[t])`, for `y` `[rows, h]` bf16,
/// `rows_of` `[n·k]` u32, `w` `[n, k]` f32 and `shared` `[n, h]` bf16; `[n, h]` bf16.
#[allow(unsafe_code)]
pub fn moe_combine(
    y: &Tensor,
    rows_of: &Tensor,
    w: &Tensor,
    shared: Option<&Tensor>,
) -> Result<Option<Tensor>, ModelError> {
    let (Some(cuda), Some(_), Some(_)) = (
        cuda_of(y, DType::BF16),
        cuda_of(rows_of, DType::U32),
        cuda_of(w, DType::F32),
    ) else {
        return Ok(None);
    };
    let (_, h) = y.dims2()?;
    let (n, k) = w.dims2()?;
    if rows_of.dims() != [n * k] || !h.is_multiple_of(8) || !aligned16(&[y]) {
        return Ok(None);
    }
    if let Some(s) = shared
        && (cuda_of(s, DType::BF16).is_none() || s.dims() != [n, h] || !aligned16(&[s]))
    {
        return Ok(None);
    }
    let out = alloc::<bf16>(&cuda, n * h)?;
    {
        let (ys, yl) = y.storage_and_layout();
        let (rs, rl) = rows_of.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (yv, rv, wv) = (
            view::<bf16>(&ys, yl)?,
            view::<u32>(&rs, rl)?,
            view::<f32>(&ws, wl)?,
        );
        let shared_guard = shared.map(|s| s.storage_and_layout());
        let sv = match &shared_guard {
            Some((ss, sl)) => Some(view::<bf16>(ss, sl)?),
            None => None,
        };
        let f = func(&cuda, "moe_combine_bf16")?;
        let stream = cuda.cuda_stream();
        let mut b = stream.launch_builder(&f);
        let null = 0u64;
        let (nn, kk, hh) = (
            u32_of(n, "tokens")?,
            u32_of(k, "top-k")?,
            u32_of(h, "hidden")?,
        );
        b.arg(&yv).arg(&rv).arg(&wv);
        match &sv {
            Some(v) => b.arg(v),
            None => b.arg(&null),
        };
        b.arg(&out).arg(&nn).arg(&kk).arg(&hh);
        // SAFETY: `rv` holds n·k row numbers, each a row of `yv` (made by the padded dispatch from its own slot
        // table); `wv` n·k weights; `sv` (or null) and `out` n·h bf16, 16-byte aligned.
        unsafe { b.launch(grid_for(n * h / 8)) }.map_err(cuda_error)?;
    }
    Ok(Some(wrap(out, &cuda, (n, h))))
}

/// Softmax over the last dimension of `x` (bf16) of `x · scale`, in f32. `causal` `(rows, offset)`: the rows are
/// query rows of attention scores, row r at position `offset + r % rows`, and keys past it get probability 0.
#[allow(unsafe_code)]
pub fn softmax(
    x: &Tensor,
    scale: f32,
    causal: Option<(usize, usize)>,
) -> Result<Option<Tensor>, ModelError> {
    let Some(cuda) = cuda_of(x, DType::BF16) else {
        return Ok(None);
    };
    let cols = x.dim(candle_core::D::Minus1)?;
    if cols == 0 {
        return Ok(None);
    }
    let rows = x.elem_count() / cols;
    let vec = cols.is_multiple_of(8) && aligned16(&[x]);
    let (c_rows, c_off) = causal.unwrap_or((0, 0));
    let out = alloc::<bf16>(&cuda, rows * cols)?;
    {
        let (xs, xl) = x.storage_and_layout();
        let xv = view::<bf16>(&xs, xl)?;
        let f = func(
            &cuda,
            if vec {
                "softmax_bf16_vec"
            } else {
                "softmax_bf16"
            },
        )?;
        let stream = cuda.cuda_stream();
        let mut b = stream.launch_builder(&f);
        let (r, c, cr, co) = (
            u32_of(rows, "rows")?,
            u32_of(cols, "cols")?,
            u32_of(c_rows, "query rows")?,
            u32_of(c_off, "query offset")?,
        );
        b.arg(&xv)
            .arg(&out)
            .arg(&r)
            .arg(&c)
            .arg(&scale)
            .arg(&cr)
            .arg(&co);
        const ROWS_PER_BLOCK: u32 = 4;
        let cfg = LaunchConfig {
            grid_dim: (r.div_ceil(ROWS_PER_BLOCK), 1, 1),
            block_dim: (32 * ROWS_PER_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: one warp per row of `cols` in `xv` and `out`, rows past `rows` return at once; the vector kernel
        // only with rows of whole, aligned 16-byte words.
        unsafe { b.launch(cfg) }.map_err(cuda_error)?;
    }
    Ok(Some(wrap(out, &cuda, x.dims())))
}

/// SAM attention's folded operands from the qkv projection's output `qkv` `[B, gh, gw, 3·heads·hd]` bf16 and the
/// grid's rel-pos tables `rh` `[gh, gh, hd]`, `rw` `[gw, gw, hd]`: `(q_aug, k_aug, v)`, the first two
/// `[B·heads, N, d_aug]` with `d_aug` = hd + gh + gw rounded up to a multiple of 8, v `[B·heads, N, hd]`. One kernel
/// (`sam_qkv_aug_bf16`) writes the copies, the scaled q, the keys' one-hot columns and the padding; two batched
/// GEMMs write the rel-pos columns of q_aug in place: for every (b, head, y) `rel_h = Q_y · rh[y]ᵀ` (Q_y: the grid
/// row's gw queries, read in place from `qkv`), for every (b, head, x) `rel_w = Q_x · rw[x]ᵀ` (the column's gh).
#[allow(unsafe_code)]
pub fn sam_qkv_aug(
    qkv: &Tensor,
    rh: &Tensor,
    rw: &Tensor,
    heads: usize,
    scale: f32,
) -> Result<Option<(Tensor, Tensor, Tensor)>, ModelError> {
    let (Some(cuda), Some(_), Some(_)) = (
        cuda_of(qkv, DType::BF16),
        cuda_of(rh, DType::BF16),
        cuda_of(rw, DType::BF16),
    ) else {
        return Ok(None);
    };
    let (b, gh, gw, c3) = qkv.dims4()?;
    let hd = c3 / 3 / heads.max(1);
    if heads == 0 || c3 != 3 * heads * hd || rh.dims() != [gh, gh, hd] || rw.dims() != [gw, gw, hd]
    {
        return Ok(None);
    }
    let n = gh * gw;
    let d_aug = (hd + gh + gw).next_multiple_of(8);
    let bh = b * heads;
    let q_aug = alloc::<bf16>(&cuda, bh * n * d_aug)?;
    let k_aug = alloc::<bf16>(&cuda, bh * n * d_aug)?;
    let v = alloc::<bf16>(&cuda, bh * n * hd)?;
    {
        let (qs, ql) = qkv.storage_and_layout();
        let qv = view::<bf16>(&qs, ql)?;
        let f = func(&cuda, "sam_qkv_aug_bf16")?;
        let stream = cuda.cuda_stream();
        let mut l = stream.launch_builder(&f);
        let (nn, hh, dd, gy, gx, da) = (
            u32_of(n, "queries")?,
            u32_of(heads, "heads")?,
            u32_of(hd, "head dim")?,
            u32_of(gh, "grid rows")?,
            u32_of(gw, "grid columns")?,
            u32_of(d_aug, "augmented dim")?,
        );
        l.arg(&qv).arg(&q_aug).arg(&k_aug).arg(&v);
        l.arg(&nn)
            .arg(&hh)
            .arg(&dd)
            .arg(&gy)
            .arg(&gx)
            .arg(&da)
            .arg(&scale);
        let cfg = LaunchConfig {
            grid_dim: (nn, hh, u32_of(b, "batch")?),
            block_dim: (64, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: block (i, head, b) reads qkv row (b, i) and writes row (b·heads + head, i) of each output, all within
        // the sizes allocated or checked above.
        unsafe { l.launch(cfg) }.map_err(cuda_error)?;
    }
    // The rel-pos columns, by two batched GEMMs reading q in place and writing into q_aug (row-major C = A·Bᵀ is
    // column-major Cᵀ = B·Aᵀ: cuBLAS's A is the table, read transposed, its B the queries).
    let c = heads * hd;
    let (es, el) = (2usize, 3 * c);
    let (qs, ql) = qkv.storage_and_layout();
    let (hs, hl) = rh.storage_and_layout();
    let (ws, wl) = rw.storage_and_layout();
    let (qv, hv, wv) = (
        view::<bf16>(&qs, ql)?,
        view::<bf16>(&hs, hl)?,
        view::<bf16>(&ws, wl)?,
    );
    let stream = cuda.cuda_stream();
    let (qp, _s1) = qv.device_ptr(&stream);
    let (hp, _s2) = hv.device_ptr(&stream);
    let (wp, _s3) = wv.device_ptr(&stream);
    let (op, _s4) = q_aug.device_ptr(&stream);
    let at = |elems: usize| (elems * es) as u64;
    // rel_h: per (b, head, y), C [gw × gh] at q_aug row (bh, y·gw), column hd, row stride d_aug;
    // queries [gw × hd] at qkv (b, y·gw) + head·hd, row stride 3c; table rh[y] [gh × hd].
    let mut h_ptrs = Vec::new();
    let mut w_ptrs = Vec::new();
    for bi in 0..b {
        for head in 0..heads {
            let bhi = bi * heads + head;
            for y in 0..gh {
                h_ptrs.push((
                    hp + at(y * gh * hd),
                    qp + at((bi * n + y * gw) * el + head * hd),
                    op + at((bhi * n + y * gw) * d_aug + hd),
                ));
            }
            for x in 0..gw {
                w_ptrs.push((
                    wp + at(x * gw * hd),
                    qp + at((bi * n + x) * el + head * hd),
                    op + at((bhi * n + x) * d_aug + hd + gh),
                ));
            }
        }
    }
    super::grouped::batched_gemm_t(&cuda, &h_ptrs, (gh, gw, hd), (hd, el, d_aug))?;
    super::grouped::batched_gemm_t(&cuda, &w_ptrs, (gw, gh, hd), (hd, gw * el, gw * d_aug))?;
    drop((_s1, _s2, _s3, _s4));
    Ok(Some((
        wrap(q_aug, &cuda, (bh, n, d_aug)),
        wrap(k_aug, &cuda, (bh, n, d_aug)),
        wrap(v, &cuda, (bh, n, hd)),
    )))
}

/// Launches one of the 16-byte-word layout kernels on `x` (contiguous, 16-byte aligned, rows of `row` elements a
/// whole number of words) into a new tensor of `out_dims` (bf16 or f32, as `x`); `args` after the two buffers.
#[allow(unsafe_code)]
fn layout_copy(
    x: &Tensor,
    row: usize,
    kernel: &str,
    args: &[u32],
    out_dims: &[usize],
) -> Result<Option<Tensor>, ModelError> {
    let dtype = x.dtype();
    let Some(cuda) = cuda_of(x, dtype) else {
        return Ok(None);
    };
    let bytes = row * dtype.size_in_bytes();
    if !bytes.is_multiple_of(16) || !aligned16(&[x]) || !matches!(dtype, DType::BF16 | DType::F32) {
        return Ok(None);
    }
    let n: usize = out_dims.iter().product();
    let words = u32_of(bytes / 16, "row words")?;
    macro_rules! go {
        ($t:ty) => {{
            let out = alloc::<$t>(&cuda, n)?;
            {
                let (xs, xl) = x.storage_and_layout();
                let xv = view::<$t>(&xs, xl)?;
                let f = func(&cuda, kernel)?;
                let stream = cuda.cuda_stream();
                let mut b = stream.launch_builder(&f);
                b.arg(&xv).arg(&out);
                for a in args {
                    b.arg(a);
                }
                b.arg(&words);
                // SAFETY: each kernel writes every word of `out` (n elements, the product of `out_dims`) once and
                // reads `x` only at the positions its shape arguments give, which the callers derive from x's dims.
                unsafe { b.launch(grid_for(n * dtype.size_in_bytes() / 16)) }.map_err(cuda_error)?;
            }
            wrap(out, &cuda, out_dims)
        }};
    }
    Ok(Some(match dtype {
        DType::BF16 => go!(bf16),
        _ => go!(f32),
    }))
}

/// `x.transpose(1, 2).contiguous()` of a 4-D `x` `[a, d1, d2, e]`.
pub fn transpose12(x: &Tensor) -> Result<Option<Tensor>, ModelError> {
    let (a, d1, d2, e) = x.dims4()?;
    let args = [
        u32_of(a, "dim 0")?,
        u32_of(d1, "dim 1")?,
        u32_of(d2, "dim 2")?,
    ];
    layout_copy(x, e, "transpose12_16b", &args, &[a, d2, d1, e])
}

/// Windows down and across a `[b, h, w, ..]` grid cut `ws × ws`, and the window kernels' shape arguments
/// `[b, h, w, ws, nh, nw]`.
fn window_geometry(
    b: usize,
    h: usize,
    w: usize,
    ws: usize,
) -> Result<(usize, usize, Vec<u32>), ModelError> {
    let (nh, nw) = (h.div_ceil(ws), w.div_ceil(ws));
    let args = [b, h, w, ws, nh, nw]
        .iter()
        .map(|&v| u32_of(v, "window geometry"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((nh, nw, args))
}

/// SAM's window partition of `x` `[b, h, w, c]` into `ws × ws` windows, zero-padded at the bottom and right:
/// `[b·nh·nw, ws, ws, c]`.
pub fn window_partition(x: &Tensor, ws: usize) -> Result<Option<Tensor>, ModelError> {
    let (b, h, w, c) = x.dims4()?;
    let (nh, nw) = (h.div_ceil(ws), w.div_ceil(ws));
    let args = [b, h, w, ws, nh, nw]
        .iter()
        .map(|&v| u32_of(v, "window geometry"))
        .collect::<Result<Vec<_>, _>>()?;
    layout_copy(
        x,
        c,
        "window_partition_16b",
        &args,
        &[b * nh * nw, ws, ws, c],
    )
}

/// The inverse of [`window_partition`] for a `[b, h, w, c]` grid, cropping the padding.
pub fn window_unpartition(
    windows: &Tensor,
    ws: usize,
    (b, h, w): (usize, usize, usize),
) -> Result<Option<Tensor>, ModelError> {
    let c = windows.dim(candle_core::D::Minus1)?;
    let (nh, nw, args) = window_geometry(b, h, w, ws)?;
    if windows.dims() != [b * nh * nw, ws, ws, c] {
        return Ok(None);
    }
    layout_copy(windows, c, "window_unpartition_16b", &args, &[b, h, w, c])
}
