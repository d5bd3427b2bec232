// Fused kernels of the CUDA build (cargo feature `cuda`), compiled to PTX by build.rs with the toolkit's nvcc and
// loaded by `src/model/cuda/fused.rs`, which documents what each one replaces and checks every precondition named
// here (dtype, contiguity, alignment) before a launch.
//
// Every kernel reads bf16, computes in f32 and rounds where the PyTorch reference rounds: an element-wise op on bf16
// tensors in PyTorch computes in f32 and rounds its result once, so each rounding below stands for one PyTorch op.

#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float f(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ bf16 b(float v) { return __float2bfloat16(v); }
// A value rounded to bf16 and read back: one PyTorch bf16 op's result.
__device__ __forceinline__ float round_bf16(float v) { return f(b(v)); }

// Eight bf16 in one 16-byte word.
union Pack8 {
    uint4 u;
    bf16 h[8];
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, m));
    return v;
}

// SwiGLU: out[r, c] = silu(gate) * up with gate = gu[r, c], up = gu[r, width + c] (a fused gate/up projection's
// output, rows 2·width wide). silu(g) = g / (1 + exp(−g)) in f32, rounded (F.silu), times up, rounded (the mul).
// width % 8 == 0 and both buffers 16-byte aligned: each thread does eight columns with 16-byte loads.
extern "C" __global__ void swiglu_bf16(const uint4 *__restrict__ gu, uint4 *__restrict__ out, uint32_t rows,
                                       uint32_t width) {
    const uint32_t vecs = width / 8;
    const size_t n = (size_t)rows * vecs;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / vecs, c = i - r * vecs;
        Pack8 g, u, o;
        g.u = gu[r * 2 * vecs + c];
        u.u = gu[r * 2 * vecs + vecs + c];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float x = f(g.h[j]);
            o.h[j] = b(round_bf16(x / (1.0f + expf(-x))) * f(u.h[j]));
        }
        out[i] = o.u;
    }
}

// Exact (erf) GELU: x · ½ · (1 + erf(x / √2)) in f32, rounded once (F.gelu; candle's bf16 kernel rounds the CDF to
// bf16 before the product). n % 8 == 0, 16-byte aligned.
extern "C" __global__ void gelu_erf_bf16(const uint4 *__restrict__ x, uint4 *__restrict__ out, uint32_t vecs) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < vecs; i += (size_t)gridDim.x * blockDim.x) {
        Pack8 p, o;
        p.u = x[i];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const float v = f(p.h[e]);
            o.h[e] = b(0.5f * v * (1.0f + erff(v * 0.70710678118654752f)));
        }
        out[i] = o.u;
    }
}

// DeepseekV2RMSNorm, one block per row of `cols`: n = (x · rsqrt(mean(x²) + eps)) in f32, rounded (`.to(bf16)`),
// then weight · n, rounded. blockDim.x is a multiple of 32, at most 1024.
extern "C" __global__ void rms_norm_bf16(const bf16 *__restrict__ x, const bf16 *__restrict__ w,
                                         bf16 *__restrict__ out, uint32_t cols, float eps) {
    __shared__ float partial[32];
    const bf16 *xr = x + (size_t)blockIdx.x * cols;
    bf16 *yr = out + (size_t)blockIdx.x * cols;
    float ss = 0.0f;
    for (uint32_t c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = f(xr[c]);
        ss += v * v;
    }
    ss = warp_sum(ss);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) partial[warp] = ss;
    __syncthreads();
    if (warp == 0) {
        float t = lane < (int)(blockDim.x / 32) ? partial[lane] : 0.0f;
        t = warp_sum(t);
        if (lane == 0) partial[0] = t;
    }
    __syncthreads();
    const float r = rsqrtf(partial[0] / (float)cols + eps);
    for (uint32_t c = threadIdx.x; c < cols; c += blockDim.x) {
        yr[c] = b(round_bf16(f(xr[c]) * r) * f(w[c]));
    }
}

// out[i] = src[idx[i]] for rows of `vecs` 16-byte words (any dtype; the caller checks that a row is a whole number of
// words and both buffers are aligned). An index past the `src_rows` rows gives a zero row.
extern "C" __global__ void gather_rows_16b(const uint4 *__restrict__ src, const uint32_t *__restrict__ idx,
                                           uint4 *__restrict__ out, uint32_t n_out, uint32_t vecs,
                                           uint32_t src_rows) {
    const size_t n = (size_t)n_out * vecs;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / vecs, c = i - r * vecs;
        const uint32_t s = idx[r];
        out[i] = s < src_rows ? src[(size_t)s * vecs + c] : make_uint4(0, 0, 0, 0);
    }
}

// The MoE layer's combination (HF DeepseekV2MoE): token t's routed output is Σ_j w[t, j] · y[rows_of[t·k + j]] in
// f32, rounded (`.type(bf16)`), then plus the shared experts' output `shared[t]` (may be null), rounded. y's rows and
// shared are `h` wide, h % 8 == 0, 16-byte aligned; w is (n, k) f32.
extern "C" __global__ void moe_combine_bf16(const uint4 *__restrict__ y, const uint32_t *__restrict__ rows_of,
                                            const float *__restrict__ w, const uint4 *__restrict__ shared,
                                            uint4 *__restrict__ out, uint32_t n, uint32_t k, uint32_t h) {
    const uint32_t vecs = h / 8;
    const size_t total = (size_t)n * vecs;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t t = i / vecs, c = i - t * vecs;
        float acc[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[e] = 0.0f;
        for (uint32_t j = 0; j < k; ++j) {
            const float wj = w[t * k + j];
            Pack8 v;
            v.u = y[(size_t)rows_of[t * k + j] * vecs + c];
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[e] += f(v.h[e]) * wj;
        }
        Pack8 o;
        if (shared != nullptr) {
            Pack8 s;
            s.u = shared[i];
#pragma unroll
            for (int e = 0; e < 8; ++e) o.h[e] = b(round_bf16(acc[e]) + f(s.h[e]));
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) o.h[e] = b(acc[e]);
        }
        out[i] = o.u;
    }
}

// Running (max, Σ exp(v − max)) of a softmax row, merged value by value or with another partial result.
struct Online {
    float m, s;
    __device__ __forceinline__ void merge(float om, float os) {
        if (om == -INFINITY) return;
        if (m == -INFINITY) {
            m = om;
            s = os;
            return;
        }
        const float hi = fmaxf(m, om);
        s = s * expf(m - hi) + os * expf(om - hi);
        m = hi;
    }
};

// Softmax over rows of `cols`, one warp per row: p = exp(v − max) / Σ in f32 with v = x · scale, rounded once
// (PyTorch's softmax on bf16 accumulates in f32; candle's exponentiates in bf16). When `causal_rows` > 0 the rows are
// queries of a causal attention: row r is at position causal_offset + r % causal_rows and sees columns 0..=position,
// the others get 0 (the additive −inf mask). VEC: rows of a multiple of 8 columns, 16-byte aligned, read 8 at a time.
template <bool VEC>
__device__ void softmax_row(const bf16 *__restrict__ x, bf16 *__restrict__ out, uint32_t rows, uint32_t cols,
                            float scale, uint32_t causal_rows, uint32_t causal_offset) {
    const uint32_t warps = blockDim.x / 32;
    const size_t row = (size_t)blockIdx.x * warps + threadIdx.x / 32;
    const uint32_t lane = threadIdx.x % 32;
    if (row >= rows) return;
    uint32_t visible = cols;
    if (causal_rows > 0) {
        const uint32_t pos = causal_offset + (uint32_t)(row % causal_rows);
        visible = pos + 1 < cols ? pos + 1 : cols;
    }
    const bf16 *xr = x + row * cols;
    bf16 *yr = out + row * cols;
    Online acc{-INFINITY, 0.0f};
    if (VEC) {
        const uint4 *xv = reinterpret_cast<const uint4 *>(xr);
        for (uint32_t c = lane; c * 8 < visible; c += 32) {
            Pack8 p;
            p.u = xv[c];
            float v[8], hi = -INFINITY;
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                v[e] = c * 8 + e < visible ? f(p.h[e]) * scale : -INFINITY;
                hi = fmaxf(hi, v[e]);
            }
            if (hi == -INFINITY) continue;
            float s = 0.0f;
#pragma unroll
            for (int e = 0; e < 8; ++e) s += expf(v[e] - hi);
            acc.merge(hi, s);
        }
    } else {
        // Two passes (the row is short or odd-sized: CLIP's 257 keys): the maximum, then the sum.
        float hi = -INFINITY;
        for (uint32_t c = lane; c < visible; c += 32) hi = fmaxf(hi, f(xr[c]) * scale);
        hi = warp_max(hi);
        float s = 0.0f;
        if (hi != -INFINITY) {
            for (uint32_t c = lane; c < visible; c += 32) s += expf(f(xr[c]) * scale - hi);
        }
        acc = Online{hi, s};
    }
    const float m = warp_max(acc.m);
    const float s = warp_sum(acc.m == -INFINITY ? 0.0f : acc.s * expf(acc.m - m));
    const float inv = 1.0f / s;
    if (VEC) {
        const uint4 *xv = reinterpret_cast<const uint4 *>(xr);
        uint4 *yv = reinterpret_cast<uint4 *>(yr);
        for (uint32_t c = lane; c * 8 < cols; c += 32) {
            Pack8 p, o;
            p.u = xv[c];
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                o.h[e] = c * 8 + e < visible ? b(expf(f(p.h[e]) * scale - m) * inv) : b(0.0f);
            }
            yv[c] = o.u;
        }
    } else {
        for (uint32_t c = lane; c < cols; c += 32) {
            yr[c] = c < visible ? b(expf(f(xr[c]) * scale - m) * inv) : b(0.0f);
        }
    }
}

extern "C" __global__ void softmax_bf16_vec(const bf16 *x, bf16 *out, uint32_t rows, uint32_t cols, float scale,
                                            uint32_t causal_rows, uint32_t causal_offset) {
    softmax_row<true>(x, out, rows, cols, scale, causal_rows, causal_offset);
}

extern "C" __global__ void softmax_bf16(const bf16 *x, bf16 *out, uint32_t rows, uint32_t cols, float scale,
                                        uint32_t causal_rows, uint32_t causal_offset) {
    softmax_row<false>(x, out, rows, cols, scale, causal_rows, causal_offset);
}

// SAM attention's operands with the decomposed rel-pos bias folded into the q·kᵀ product, straight from the qkv
// projection's output `qkv` [B, N, 3, heads, hd] (N = gh·gw queries of a gh × gw grid), one block per (b, head, i):
//   q_aug[b·heads + head, i] = [q · scale (rounded) | rel_h (gh) | rel_w (gw) | 0 …]   (d_aug wide)
//   k_aug[b·heads + head, i] = [k | one-hot of i's row (gh) | one-hot of i's column (gw) | 0 …]
//   v[b·heads + head, i]     = v
// with y = i / gw, x = i % gw. This kernel writes everything but the rel_h and rel_w columns of q_aug, which
// two batched GEMMs fill (`sam_qkv_aug` in fused.rs): rel_h[ky] = Σ_c q[c] · rh[y, ky, c], rel_w[kx] =
// Σ_c q[c] · rw[x, kx, c] from the unscaled q. q_aug · k_augᵀ is then q·kᵀ·scale + rel_h[i, row(j)] +
// rel_w[i, col(j)] for every key j.
extern "C" __global__ void sam_qkv_aug_bf16(const bf16 *__restrict__ qkv, bf16 *__restrict__ q_aug,
                                            bf16 *__restrict__ k_aug, bf16 *__restrict__ v_out, uint32_t n,
                                            uint32_t heads, uint32_t hd, uint32_t gh, uint32_t gw,
                                            uint32_t d_aug, float scale) {
    const uint32_t i = blockIdx.x;
    const uint32_t head = blockIdx.y;
    const uint32_t bi = blockIdx.z;
    const size_t c = (size_t)heads * hd;
    const size_t src = ((size_t)bi * n + i) * 3 * c + (size_t)head * hd;
    const size_t row = ((size_t)bi * heads + head) * n + i;
    const uint32_t y = i / gw, x = i % gw;
    for (uint32_t d = threadIdx.x; d < d_aug; d += blockDim.x) {
        if (d < hd) {
            q_aug[row * d_aug + d] = b(f(qkv[src + d]) * scale);
            k_aug[row * d_aug + d] = qkv[src + c + d];
            v_out[row * hd + d] = qkv[src + 2 * c + d];
        } else {
            const uint32_t t = d - hd;
            float kv = 0.0f;
            if (t < gh) {
                kv = t == y ? 1.0f : 0.0f;
            } else if (t < gh + gw) {
                kv = t - gh == x ? 1.0f : 0.0f;
            } else {
                q_aug[row * d_aug + d] = b(0.0f);
            }
            k_aug[row * d_aug + d] = b(kv);
        }
    }
}

// Layout copies in 16-byte words (any dtype whose innermost rows are whole words), one word per thread.

// x [A, D1, D2, words] → out [A, D2, D1, words] (`x.transpose(1, 2).contiguous()`).
extern "C" __global__ void transpose12_16b(const uint4 *__restrict__ x, uint4 *__restrict__ out, uint32_t a,
                                           uint32_t d1, uint32_t d2, uint32_t words) {
    const size_t n = (size_t)a * d1 * d2 * words;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t p = i / words;
        const size_t word = i - p * words;
        const size_t j1 = p % d1;
        p /= d1;
        const size_t j2 = p % d2;
        const size_t ai = p / d2;
        out[i] = x[((ai * d1 + j1) * d2 + j2) * words + word];
    }
}

// SAM's window partition: x [B, H, W, words] → [B·nh·nw, ws, ws, words], window (b, wy, wx) row (r, s) being x at
// (wy·ws + r, wx·ws + s), zero past H or W (the bottom/right padding).
extern "C" __global__ void window_partition_16b(const uint4 *__restrict__ x, uint4 *__restrict__ out, uint32_t b,
                                                uint32_t h, uint32_t w, uint32_t ws, uint32_t nh, uint32_t nw,
                                                uint32_t words) {
    const size_t n = (size_t)b * nh * nw * ws * ws * words;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t p = i / words;
        const size_t word = i - p * words;
        const size_t s = p % ws;
        p /= ws;
        const size_t r = p % ws;
        p /= ws;
        const size_t wx = p % nw;
        p /= nw;
        const size_t wy = p % nh;
        const size_t bi = p / nh;
        const size_t y = wy * ws + r, xx = wx * ws + s;
        out[i] = (y < h && xx < w) ? x[((bi * h + y) * w + xx) * words + word] : make_uint4(0, 0, 0, 0);
    }
}

// Its inverse, cropping the padding: windows [B·nh·nw, ws, ws, words] → [B, H, W, words].
extern "C" __global__ void window_unpartition_16b(const uint4 *__restrict__ win, uint4 *__restrict__ out,
                                                  uint32_t b, uint32_t h, uint32_t w, uint32_t ws, uint32_t nh,
                                                  uint32_t nw, uint32_t words) {
    const size_t n = (size_t)b * h * w * words;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t p = i / words;
        const size_t word = i - p * words;
        const size_t xx = p % w;
        p /= w;
        const size_t y = p % h;
        const size_t bi = p / h;
        out[i] = win[((((bi * nh + y / ws) * nw + xx / ws) * ws + y % ws) * ws + xx % ws) * words + word];
    }
}
