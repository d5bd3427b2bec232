//! The mixture-of-experts MLP of layers ≥ `first_k_dense_replace` (HF `DeepseekV2MoE`, spec §4.3).
//!
//! Routing: router logits `x_f32 @ gate_f32ᵀ`, softmax in f32, greedy top-k, weights are the
//! top-k probabilities (renormalised only if `norm_topk_prob`), times `routed_scaling_factor`.
//! Each routed expert is a SwiGLU MLP of width `moe_intermediate_size`; expert outputs are weighted
//! and summed in f32, cast back, and the shared experts' output is added.
//!
//! # Dispatch
//! The expert weights of a layer are stacked at load into `(E, out, in)` tensors, so any subset of
//! experts can be addressed on the device without touching the host. Three dispatch paths share them:
//!
//! * **Gather** (few tokens on a GPU, i.e. decoding): the `N·k` selected experts' weights are gathered by
//!   one row gather per projection (`fused::gather_rows`) and applied with batched matmuls `(N·k, 1, in) @ (N·k, in,
//!   out)`. No host round trip at all; the cost is copying `N·k` experts (≈ 41 MB per layer at the
//!   official size for one token), cheaper than a device→host sync and 6 separate launches.
//! * **Grouped** (the CPU at every token count; a GPU above [`GATHER_MAX_TOKENS`] in the build with the fused
//!   kernels): the `N·k` token-slots are sorted by expert in one
//!   pass (a counting sort of the routed ids, read from the device once per layer), tokens are
//!   gathered into that order with one `index_select`, every expert with work runs one matmul
//!   chain on its contiguous segment (a zero-copy `narrow` of the stacked weights), and the
//!   weighted outputs are scatter-added back to their tokens in f32 with one `index_add`.
//!   The single read of the ids is what tells the host the segment boundaries; there is no
//!   per-expert or per-token round trip. The sort runs on the host because candle's CUDA
//!   `arg_sort` keeps a whole row in shared memory and cannot sort the 49,152 slots of an
//!   8,192-token prompt. On a GPU with the fused kernels each projection of every expert is one cuBLAS
//!   grouped GEMM over the sorted rows instead (each expert its own row count, one call;
//!   `Moe::dispatch_grouped_gemm`), and the outputs come back by the fused gather-combine: a 1,000-token prefill
//!   on an H200 went from 0.016 s (padded) to 0.008 s.
//! * **Padded** (many tokens on a GPU without the fused kernels): the same sort, then every expert gets the same
//!   number of rows `cap` (its slots, padded with rows that are computed and never read), so all experts run as one
//!   batched matmul chain over the stacked weights: a handful of kernels per layer instead of half a dozen per
//!   expert (on an H200 a prefill's time goes to kernels around the GEMMs, not to their arithmetic). Experts with
//!   more than `cap` slots run alone as in the grouped path; `cap` is chosen per layer to minimise padded
//!   rows plus a launch chain's worth of rows per expert run alone ([`padded_cap`]). The outputs are combined by a
//!   gather (each token reads its k rows back), not a scatter.

use candle_core::{D, DType, Tensor};
use candle_nn::VarBuilder;

use crate::model::ModelError;
use crate::model::decoder::TextConfig;
use crate::model::decoder::layers::{Mlp, weight};
use crate::model::fused::{self, swiglu};
use crate::model::kernels::MatmulWeight;

/// Up to this many tokens per forward use the gather path on an accelerator (batch-1 decoding and small batches).
pub const GATHER_MAX_TOKENS: usize = 4;

/// Rows of padding the padded path will compute to save one expert's own launch chain (two GEMMs, SwiGLU and a
/// slice: on an H200 about as long as a 256-row expert GEMM at the official size).
const PAD_ROWS_PER_LAUNCH: usize = 256;

/// Which dispatch path [`Moe::forward`] takes; `Auto` picks by token count. The explicit
/// choices exist so that tests can prove both paths agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    Auto,
    Gather,
    Grouped,
    Padded,
}

impl std::str::FromStr for Dispatch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "gather" => Ok(Self::Gather),
            "grouped" => Ok(Self::Grouped),
            "padded" => Ok(Self::Padded),
            _ => Err(format!(
                "unknown MoE dispatch {s:?} (auto, gather, grouped or padded)"
            )),
        }
    }
}

/// The `N·k` token-slots of a forward sorted by expert (a counting sort of the routed ids): slot `s` is token
/// `s / k`'s `s % k`-th choice; expert `e`'s slots are `order[starts[e]..starts[e] + counts[e]]`.
struct SlotOrder {
    counts: Vec<usize>,
    starts: Vec<usize>,
    order: Vec<u32>,
}

impl SlotOrder {
    /// `idx`: the router's `(N, k)` expert ids, read to the host once.
    fn new(idx: &Tensor, n_exp: usize) -> Result<Self, ModelError> {
        let ids = idx.flatten_all()?.to_vec1::<u32>()?;
        let mut counts = vec![0usize; n_exp];
        for &e in &ids {
            let slot = counts
                .get_mut(e as usize)
                .ok_or_else(|| ModelError::Input {
                    reason: format!("router chose expert {e} of {n_exp}"),
                })?;
            *slot += 1;
        }
        let mut starts = vec![0usize; n_exp];
        for e in 1..n_exp {
            starts[e] = starts[e - 1] + counts[e - 1];
        }
        let mut cursor = starts.clone();
        let mut order = vec![0u32; ids.len()];
        for (s, &e) in ids.iter().enumerate() {
            order[cursor[e as usize]] = s as u32;
            cursor[e as usize] += 1;
        }
        Ok(Self {
            counts,
            starts,
            order,
        })
    }

    /// The token of every slot in sorted order (slot `s` belongs to token `s / k`).
    fn tokens(&self, k: usize) -> Vec<u32> {
        self.order.iter().map(|&s| s / k as u32).collect()
    }

    fn slots(&self, e: usize) -> &[u32] {
        &self.order[self.starts[e]..self.starts[e] + self.counts[e]]
    }
}

/// The padded batch's rows per expert: the `cap` (0 or one of the counts) minimising `E·cap` padded rows plus, for
/// each expert with more than `cap` slots, its own rows and [`PAD_ROWS_PER_LAUNCH`] for its launches.
fn padded_cap(counts: &[usize]) -> usize {
    let cost = |cap: usize| -> usize {
        counts.len() * cap
            + counts
                .iter()
                .filter(|&&c| c > cap)
                .map(|&c| c + PAD_ROWS_PER_LAUNCH)
                .sum::<usize>()
    };
    std::iter::once(0)
        .chain(counts.iter().copied())
        .min_by_key(|&cap| (cost(cap), cap))
        .unwrap_or(0)
}

/// The router (`mlp.gate`): a bias-free `(n_routed_experts, hidden)` weight, kept in f32.
#[derive(Debug, Clone)]
pub struct MoeGate {
    weight: Tensor,
    top_k: usize,
    norm_topk_prob: bool,
    routed_scaling_factor: f64,
}

impl MoeGate {
    pub fn new(
        weight: Tensor,
        top_k: usize,
        norm_topk_prob: bool,
        routed_scaling_factor: f64,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            weight: weight.to_dtype(DType::F32)?,
            top_k,
            norm_topk_prob,
            routed_scaling_factor,
        })
    }

    /// `x`: `(N, hidden)`. Returns `(topk_idx (N, k) u32, topk_weight (N, k) f32)`.
    pub fn route(&self, x: &Tensor) -> Result<(Tensor, Tensor), ModelError> {
        let _span = tracing::trace_span!("moe-gate").entered();
        let logits = x.to_dtype(DType::F32)?.matmul(&self.weight.t()?)?;
        let scores = candle_nn::ops::softmax_last_dim(&logits)?;
        let (sorted, idx) = scores.sort_last_dim(false)?;
        let idx = idx.narrow(1, 0, self.top_k)?.contiguous()?;
        let mut w = sorted.narrow(1, 0, self.top_k)?.contiguous()?;
        if self.top_k > 1 && self.norm_topk_prob {
            w = w.broadcast_div(&(w.sum_keepdim(1)? + 1e-20)?)?;
        }
        // The OCR remote code multiplies by the scaling factor on both branches.
        let w = (w * self.routed_scaling_factor)?;
        Ok((idx, w))
    }
}

/// Routed experts, stacked: `gate_up` `(E, 2·I, H)` (each expert's `gate_proj` rows, then its `up_proj` rows, so
/// one pass over the input serves both), `down_proj` `(E, H, I)`; on the CPU in bf16 panels ([`MatmulWeight`]).
#[derive(Debug, Clone)]
pub struct Experts {
    gate_up: MatmulWeight,
    down_proj: MatmulWeight,
    inter: usize,
}

impl Experts {
    fn load(vb: &VarBuilder, n: usize, hidden: usize, inter: usize) -> Result<Self, ModelError> {
        let get = |e: usize, proj: &str, shape: (usize, usize)| {
            weight(&vb.pp(format!("{e}.{proj}")), shape, "weight")
        };
        let mut gate_up = Vec::with_capacity(n);
        let mut down = Vec::with_capacity(n);
        for e in 0..n {
            gate_up.push(Tensor::cat(
                &[
                    get(e, "gate_proj", (inter, hidden))?,
                    get(e, "up_proj", (inter, hidden))?,
                ],
                0,
            )?);
            down.push(get(e, "down_proj", (hidden, inter))?);
        }
        Ok(Self {
            gate_up: MatmulWeight::new(Tensor::stack(&gate_up, 0)?)?,
            down_proj: MatmulWeight::new(Tensor::stack(&down, 0)?)?,
            inter,
        })
    }

    fn num_experts(&self) -> usize {
        self.gate_up.dim0()
    }

    /// Expert `e` applied to `x` `(c, H)`, with zero-copy views of the stacked weights.
    fn run_one(&self, e: usize, x: &Tensor) -> Result<Tensor, ModelError> {
        let gate_up = self.gate_up.get(e)?.matmul_t(x)?;
        self.down_proj
            .get(e)?
            .matmul_t(&swiglu(&gate_up, self.inter)?)
    }

    /// The stacked `(gate_up, down_proj)` as loaded, for the paths that multiply every expert at once (the GPU's;
    /// the CPU takes them only when a test forces them: out of panels, this is a copy).
    fn plain(&self) -> Result<(Tensor, Tensor), ModelError> {
        Ok((self.gate_up.plain()?, self.down_proj.plain()?))
    }
}

/// `mlp` of a MoE layer: router, routed experts, optional shared experts.
#[derive(Debug, Clone)]
pub struct Moe {
    gate: MoeGate,
    experts: Experts,
    shared_experts: Option<Mlp>,
    top_k: usize,
    dispatch: Dispatch,
}

impl Moe {
    pub fn new(cfg: &TextConfig, vb: &VarBuilder) -> Result<Self, ModelError> {
        let n = cfg.n_routed_experts.ok_or_else(|| ModelError::Config {
            field: "n_routed_experts".into(),
            reason: "a MoE layer needs routed experts".into(),
        })?;
        let h = cfg.hidden_size;
        let gate = MoeGate::new(
            weight(&vb.pp("gate"), (n, h), "weight")?,
            cfg.num_experts_per_tok,
            cfg.norm_topk_prob,
            cfg.routed_scaling_factor,
        )?;
        let experts = Experts::load(&vb.pp("experts"), n, h, cfg.moe_intermediate_size)?;
        let shared_experts = match cfg.n_shared_experts {
            Some(s) if s > 0 => Some(Mlp::new(
                &vb.pp("shared_experts"),
                h,
                cfg.moe_intermediate_size * s,
            )?),
            _ => None,
        };
        Ok(Self {
            gate,
            experts,
            shared_experts,
            top_k: cfg.num_experts_per_tok,
            dispatch: Dispatch::Auto,
        })
    }

    /// Forces a dispatch path (tests and benchmarks).
    pub fn set_dispatch(&mut self, dispatch: Dispatch) {
        self.dispatch = dispatch;
    }

    /// `x`: `[B, T, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let _span = tracing::trace_span!("moe").entered();
        let (b, t, h) = x.dims3()?;
        let flat = x.reshape((b * t, h))?;
        let (idx, w) = self.gate.route(&flat)?;
        let dispatch = match self.dispatch {
            // On the CPU the host reads the ids for free and copying experts is pure memory traffic (the
            // gather path copies N·k experts' weights, ≈ 82 MB per layer per token in f32 at the official size):
            // the grouped path's zero-copy views win at every token count.
            Dispatch::Auto if x.device().is_cpu() => Dispatch::Grouped,
            Dispatch::Auto if b * t <= GATHER_MAX_TOKENS => Dispatch::Gather,
            // One grouped GEMM per projection needs the fused kernels' CUDA build (`fused::grouped_matmul_t`).
            Dispatch::Auto if fused::active(x.device(), x.dtype()) => Dispatch::Grouped,
            Dispatch::Auto => Dispatch::Padded,
            d => d,
        };
        let shared = match &self.shared_experts {
            Some(s) => Some(s.forward(&flat)?),
            None => None,
        };
        let y = match dispatch {
            Dispatch::Padded => self.dispatch_padded(&flat, &idx, &w, None, shared.as_ref())?,
            Dispatch::Grouped if fused::active(x.device(), x.dtype()) => {
                self.dispatch_grouped_gemm(&flat, &idx, &w, shared.as_ref())?
            }
            Dispatch::Gather => fused::add_shared(
                &self.dispatch_gather(&flat, &idx, &w)?.to_dtype(x.dtype())?,
                shared.as_ref(),
            )?,
            _ => fused::add_shared(
                &self
                    .dispatch_grouped(&flat, &idx, &w)?
                    .to_dtype(x.dtype())?,
                shared.as_ref(),
            )?,
        };
        Ok(y.reshape((b, t, h))?)
    }

    /// Gather path; returns the weighted sum `(N, H)` in f32.
    fn dispatch_gather(&self, x: &Tensor, idx: &Tensor, w: &Tensor) -> Result<Tensor, ModelError> {
        let _span = tracing::trace_span!("moe-gather").entered();
        let (n, h) = x.dims2()?;
        let k = self.top_k;
        let slots = idx.flatten_all()?;
        let ex = &self.experts;
        // Weights kept in bf16 on the CPU are widened to the activations' dtype after the gather.
        let (gate_up, down_proj) = ex.plain()?;
        let wgu = fused::gather_rows(&gate_up, &slots)?.to_dtype(x.dtype())?;
        let wd = fused::gather_rows(&down_proj, &slots)?.to_dtype(x.dtype())?;
        let xs = x
            .unsqueeze(1)?
            .broadcast_as((n, k, h))?
            .reshape((n * k, 1, h))?;
        let act = swiglu(&xs.matmul(&wgu.transpose(1, 2)?)?, ex.inter)?;
        let out = act.matmul(&wd.transpose(1, 2)?)?.reshape((n, k, h))?;
        Ok(out
            .to_dtype(DType::F32)?
            .broadcast_mul(&w.unsqueeze(D::Minus1)?)?
            .sum(1)?)
    }

    /// Grouped path; returns the weighted sum `(N, H)` in f32.
    fn dispatch_grouped(&self, x: &Tensor, idx: &Tensor, w: &Tensor) -> Result<Tensor, ModelError> {
        let _span = tracing::trace_span!("moe-grouped").entered();
        let (n, h) = x.dims2()?;
        let k = self.top_k;
        let n_exp = self.experts.num_experts();
        let sort = SlotOrder::new(idx, n_exp)?;
        let (counts, starts) = (&sort.counts, &sort.starts);
        let tokens = sort.tokens(k);
        let dev = x.device();
        let order = Tensor::from_slice(&sort.order, n * k, dev)?;
        let tokens = Tensor::from_vec(tokens, n * k, dev)?;

        let x_sorted = x.index_select(&tokens, 0)?;
        let mut outs = Vec::new();
        for e in 0..n_exp {
            if counts[e] > 0 {
                outs.push(
                    self.experts
                        .run_one(e, &x_sorted.narrow(0, starts[e], counts[e])?)?,
                );
            }
        }
        let out = Tensor::cat(&outs, 0)?.to_dtype(DType::F32)?;
        let w_sorted = w.flatten_all()?.index_select(&order, 0)?;
        let weighted = out.broadcast_mul(&w_sorted.unsqueeze(1)?)?;
        Ok(Tensor::zeros((n, h), DType::F32, dev)?.index_add(&tokens, &weighted, 0)?)
    }

    /// Grouped path on a GPU: the token-slots sorted by expert as in [`Self::dispatch_grouped`], then each
    /// projection of every expert as one grouped GEMM over the sorted rows ([`fused::grouped_matmul_t`]: no padding,
    /// no expert alone), and the outputs combined by a gather as in [`Self::dispatch_padded`]. Returns the layer's
    /// output `(N, H)` in `x`'s dtype, plus `shared` when given.
    fn dispatch_grouped_gemm(
        &self,
        x: &Tensor,
        idx: &Tensor,
        w: &Tensor,
        shared: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let _span = tracing::trace_span!("moe-grouped-gemm").entered();
        let (n, _) = x.dims2()?;
        let k = self.top_k;
        let ex = &self.experts;
        let sort_span = tracing::trace_span!("moe-sort").entered();
        let sort = SlotOrder::new(idx, ex.num_experts())?;
        let segments: Vec<(usize, usize, usize)> = (0..ex.num_experts())
            .filter(|&e| sort.counts[e] > 0)
            .map(|e| (e, sort.starts[e], sort.counts[e]))
            .collect();
        let mut rows_of = vec![0u32; n * k];
        for (r, &s) in sort.order.iter().enumerate() {
            rows_of[s as usize] = r as u32;
        }
        let tokens = sort.tokens(k);
        let dev = x.device();
        let tokens = Tensor::from_vec(tokens, n * k, dev)?;
        let rows_of = Tensor::from_vec(rows_of, n * k, dev)?;
        drop(sort_span);
        let experts_span = tracing::trace_span!("moe-experts").entered();
        let x_sorted = fused::gather_rows(x, &tokens)?;
        let (w_gate_up, w_down) = ex.plain()?;
        let gate_up = fused::grouped_matmul_t(&x_sorted, &w_gate_up, &segments)?;
        let act = swiglu(&gate_up, ex.inter)?;
        let out = fused::grouped_matmul_t(&act, &w_down, &segments)?;
        drop(experts_span);
        let _combine = tracing::trace_span!("moe-combine").entered();
        fused::moe_combine(&out, &rows_of, w, shared)
    }

    /// Padded path, `cap` rows per expert in the batch (default [`padded_cap`]); returns the layer's output `(N, H)`
    /// in `x`'s dtype: the weighted sum cast back, plus `shared` (the shared experts' output) when given.
    fn dispatch_padded(
        &self,
        x: &Tensor,
        idx: &Tensor,
        w: &Tensor,
        cap: Option<usize>,
        shared: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let _span = tracing::trace_span!("moe-padded").entered();
        let (n, h) = x.dims2()?;
        let k = self.top_k;
        let ex = &self.experts;
        let n_exp = ex.num_experts();
        // Sub-spans for `bench decoder --profile`: routing read back and indices built, experts, combination.
        let sort_span = tracing::trace_span!("moe-sort").entered();
        let sort = SlotOrder::new(idx, n_exp)?;
        let cap = cap.unwrap_or_else(|| padded_cap(&sort.counts));
        // Row r of the experts' output belongs to slot `slots[r]`, or to no slot (`pad`: padding, computed on token 0
        // and never read).
        let pad = (n * k) as u32;
        let mut slots = Vec::with_capacity(n_exp * cap + n * k);
        for e in 0..n_exp {
            let own = sort.slots(e);
            let kept = if own.len() <= cap { own } else { &[] };
            slots.extend_from_slice(kept);
            slots.resize(slots.len() + cap - kept.len(), pad);
        }
        let batch_rows = slots.len();
        let mut alone = Vec::new();
        for e in (0..n_exp).filter(|&e| sort.counts[e] > cap) {
            alone.push((e, slots.len(), sort.counts[e]));
            slots.extend_from_slice(sort.slots(e));
        }
        // The combination is a gather, not a scatter: slot s's output is row `rows_of[s]`, so each token reads its k
        // rows, weights them and sums. (candle's CUDA `index_add` walks all N·k indices serially in each of its H
        // threads: with it, this path's 11 layers took 84 ms of a 1,000-token prefill on an H200.)
        let mut rows_of = vec![0u32; n * k];
        let tokens: Vec<u32> = slots
            .iter()
            .enumerate()
            .map(|(r, &s)| {
                if s == pad {
                    0
                } else {
                    rows_of[s as usize] = r as u32;
                    s / k as u32
                }
            })
            .collect();
        let dev = x.device();
        let rows = tokens.len();
        let tokens = Tensor::from_vec(tokens, rows, dev)?;
        let rows_of = Tensor::from_vec(rows_of, n * k, dev)?;
        drop(sort_span);

        let experts_span = tracing::trace_span!("moe-experts").entered();
        let x_rows = fused::gather_rows(x, &tokens)?;
        let mut outs = Vec::with_capacity(1 + alone.len());
        if cap > 0 {
            // Weights kept in bf16 on the CPU meet f32 activations: widen them (this path is the GPU's; the CPU
            // takes it only when forced).
            let (gate_up, down_proj) = ex.plain()?;
            let same = |t: &Tensor| t.to_dtype(x.dtype());
            let xb = x_rows.narrow(0, 0, batch_rows)?.reshape((n_exp, cap, h))?;
            let act = swiglu(&xb.matmul(&same(&gate_up)?.transpose(1, 2)?)?, ex.inter)?;
            let y = act.matmul(&same(&down_proj)?.transpose(1, 2)?)?;
            outs.push(y.reshape((batch_rows, h))?);
        }
        for (e, start, len) in alone {
            outs.push(ex.run_one(e, &x_rows.narrow(0, start, len)?)?);
        }
        let out = if outs.len() == 1 {
            outs.remove(0)
        } else {
            Tensor::cat(&outs, 0)?
        };
        drop(experts_span);
        let _combine = tracing::trace_span!("moe-combine").entered();
        fused::moe_combine(&out, &rows_of, w, shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn router_takes_top_k_probabilities_without_renormalising() -> Result<(), ModelError> {
        let dev = Device::Cpu;
        // One token x = [1, 0]; logits are the first column of the gate: [2, 1, 0, -1].
        let gate_w = Tensor::new(&[[2.0f32, 0.0], [1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]], &dev)?;
        let x = Tensor::new(&[[1.0f32, 0.0]], &dev)?;
        let z: f64 = [2f64, 1.0, 0.0, -1.0].iter().map(|v| v.exp()).sum();
        let (p0, p1) = (2f64.exp() / z, 1f64.exp() / z);

        let gate = MoeGate::new(gate_w.clone(), 2, false, 1.0)?;
        let (idx, w) = gate.route(&x)?;
        assert_eq!(idx.to_vec2::<u32>()?, vec![vec![0, 1]]);
        let w = w.to_vec2::<f32>()?;
        assert!(
            (w[0][0] as f64 - p0).abs() < 1e-6 && (w[0][1] as f64 - p1).abs() < 1e-6,
            "{w:?}"
        );
        assert!(
            w[0][0] + w[0][1] < 0.95,
            "top-2 weights must not sum to 1: {w:?}"
        );

        let scaled = MoeGate::new(gate_w.clone(), 2, false, 2.5)?;
        let w = scaled.route(&x)?.1.to_vec2::<f32>()?;
        assert!((w[0][0] as f64 - 2.5 * p0).abs() < 1e-5, "{w:?}");

        let normed = MoeGate::new(gate_w, 2, true, 1.0)?;
        let w = normed.route(&x)?.1.to_vec2::<f32>()?;
        assert!((w[0][0] as f64 - p0 / (p0 + p1)).abs() < 1e-6, "{w:?}");
        Ok(())
    }

    /// A small random MoE layer (5 experts, top-2, one shared expert) as checkpoint tensors.
    fn random_moe(
        dev: &Device,
    ) -> Result<(Moe, std::collections::HashMap<String, Tensor>), ModelError> {
        let (e, h, i) = (5usize, 6usize, 4usize);
        let mut ts = std::collections::HashMap::new();
        let mut put = |name: String, shape: (usize, usize)| -> Result<(), ModelError> {
            ts.insert(name, (Tensor::randn(0f32, 1.0, shape, dev)? * 0.5)?);
            Ok(())
        };
        put("mlp.gate.weight".into(), (e, h))?;
        for x in 0..e {
            put(format!("mlp.experts.{x}.gate_proj.weight"), (i, h))?;
            put(format!("mlp.experts.{x}.up_proj.weight"), (i, h))?;
            put(format!("mlp.experts.{x}.down_proj.weight"), (h, i))?;
        }
        put("mlp.shared_experts.gate_proj.weight".into(), (i, h))?;
        put("mlp.shared_experts.up_proj.weight".into(), (i, h))?;
        put("mlp.shared_experts.down_proj.weight".into(), (h, i))?;
        let cfg = TextConfig::from_config_json(&serde_json::json!({
            "vocab_size": 8, "hidden_size": h, "intermediate_size": 8, "moe_intermediate_size": i,
            "num_hidden_layers": 1, "num_attention_heads": 1, "num_key_value_heads": 1,
            "n_routed_experts": e, "n_shared_experts": 1, "num_experts_per_tok": 2,
            "first_k_dense_replace": 0, "topk_method": "greedy", "use_mla": false,
            "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1
        }))?;
        let vb = VarBuilder::from_tensors(ts.clone(), DType::F32, dev);
        Ok((Moe::new(&cfg, &vb.pp("mlp"))?, ts))
    }

    /// The per-token loop of the PyTorch training path, on the host, as the reference.
    fn naive(
        ts: &std::collections::HashMap<String, Tensor>,
        x: &[Vec<f32>],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let m = |n: &str| -> Result<Vec<Vec<f32>>, ModelError> {
            Ok(ts
                .get(n)
                .ok_or_else(|| ModelError::Input { reason: n.into() })?
                .to_vec2::<f32>()?)
        };
        let matvec = |w: &[Vec<f32>], v: &[f32]| -> Vec<f32> {
            w.iter()
                .map(|r| r.iter().zip(v).map(|(a, b)| a * b).sum())
                .collect()
        };
        let mlp = |prefix: &str, v: &[f32]| -> Result<Vec<f32>, ModelError> {
            let g = matvec(&m(&format!("{prefix}.gate_proj.weight"))?, v);
            let u = matvec(&m(&format!("{prefix}.up_proj.weight"))?, v);
            let a: Vec<f32> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            Ok(matvec(&m(&format!("{prefix}.down_proj.weight"))?, &a))
        };
        let gate = m("mlp.gate.weight")?;
        let mut out = Vec::new();
        for v in x {
            let logits = matvec(&gate, v);
            let z: f32 = logits.iter().map(|l| l.exp()).sum();
            let mut p: Vec<(usize, f32)> = logits.iter().map(|l| l.exp() / z).enumerate().collect();
            p.sort_by(|a, b| b.1.total_cmp(&a.1));
            let mut y = mlp("mlp.shared_experts", v)?;
            for &(e, w) in &p[..2] {
                for (yi, oi) in y.iter_mut().zip(mlp(&format!("mlp.experts.{e}"), v)?) {
                    *yi += w * oi;
                }
            }
            out.push(y);
        }
        Ok(out)
    }

    #[test]
    fn gather_and_grouped_dispatch_match_the_per_token_loop() -> Result<(), ModelError> {
        let dev = Device::Cpu;
        let (mut moe, ts) = random_moe(&dev)?;
        for n in [1usize, 3, 17] {
            let x = Tensor::randn(0f32, 1.0, (1, n, 6), &dev)?;
            let want = naive(&ts, &x.squeeze(0)?.to_vec2::<f32>()?)?;
            for d in [
                Dispatch::Gather,
                Dispatch::Grouped,
                Dispatch::Padded,
                Dispatch::Auto,
            ] {
                moe.set_dispatch(d);
                let got = moe.forward(&x)?.squeeze(0)?.to_vec2::<f32>()?;
                for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                    assert!((g - w).abs() < 1e-5, "{d:?} n={n}: {g} vs {w}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn padded_dispatch_is_exact_at_every_cap() -> Result<(), ModelError> {
        let dev = Device::Cpu;
        let (moe, ts) = random_moe(&dev)?;
        let x = Tensor::randn(0f32, 1.0, (23, 6), &dev)?;
        let want = naive(&ts, &x.to_vec2::<f32>()?)?;
        let (idx, w) = moe.gate.route(&x)?;
        let max = SlotOrder::new(&idx, 5)?
            .counts
            .into_iter()
            .max()
            .unwrap_or(0);
        let shared = moe
            .shared_experts
            .as_ref()
            .map(|s| s.forward(&x))
            .transpose()?;
        // 0: every expert alone; 1..max: some padded, the busiest alone; max and beyond: one batch, all padded.
        // `None`: the grouped-GEMM path (its composite ops here; one grouped GEMM per projection on a GPU).
        for cap in [
            Some(0),
            Some(1),
            Some(3),
            Some(max - 1),
            Some(max),
            Some(max + 2),
            None,
        ] {
            let got = match cap {
                Some(cap) => moe.dispatch_padded(&x, &idx, &w, Some(cap), shared.as_ref())?,
                None => moe.dispatch_grouped_gemm(&x, &idx, &w, shared.as_ref())?,
            };
            for (g, w) in got
                .to_vec2::<f32>()?
                .iter()
                .flatten()
                .zip(want.iter().flatten())
            {
                assert!((g - w).abs() < 1e-5, "cap {cap:?}: {g} vs {w}");
            }
        }
        Ok(())
    }

    #[test]
    fn dispatch_names_parse_and_unknown_ones_are_refused() {
        for (name, d) in [
            ("auto", Dispatch::Auto),
            ("gather", Dispatch::Gather),
            ("grouped", Dispatch::Grouped),
            ("padded", Dispatch::Padded),
        ] {
            assert_eq!(name.parse::<Dispatch>(), Ok(d));
        }
        let err = "fused".parse::<Dispatch>().err().unwrap_or_default();
        assert!(err.contains("fused") && err.contains("padded"), "{err}");
    }

    #[test]
    fn padded_cap_trades_padding_against_launches() {
        // Even load: one batch, no padding.
        assert_eq!(padded_cap(&[94; 64]), 94);
        // One busy expert: padding 63 experts to its 700 rows costs far more than running it alone.
        let mut skewed = vec![90; 64];
        skewed[7] = 700;
        assert_eq!(padded_cap(&skewed), 90);
        // Few tokens: nothing worth a batch... still one batch, since every expert alone costs a launch each.
        assert_eq!(padded_cap(&[0, 1, 0, 2]), 2);
        assert_eq!(padded_cap(&[]), 0);
    }
}
