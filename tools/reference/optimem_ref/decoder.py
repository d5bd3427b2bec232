"""DeepSeek-3B-MoE decoder (spec §4), taken whole from `transformers.models.deepseek_ocr2`.

`DeepseekOcr2TextModel` was checked against spec §4 piece by piece:
- MHA (q/k/v/o, bias = attention_bias), scale 1/sqrt(head_dim), causal over the whole sequence.
- RoPE: Llama "rotate_half" (NOT interleaved) over the full head_dim, theta from config, cos/sin in
  fp32 then cast to the activation dtype (as Llama in transformers 4.46.3).
- RMSNorm in fp32, cast back, then times weight (eps from config).
- Layer i is dense iff i < first_k_dense_replace (or i % moe_layer_freq != 0): `mlp_layer_types`.
- Router `DeepseekOcr2TextTopkRouter`: fp32 logits and fp32 softmax, greedy top-k (sorted=False),
  times routed_scaling_factor, NO renormalisation (norm_topk_prob=true is refused in config.py).
- Experts: the `grouped_mm` experts implementation multiplies the (activation-dtype) expert outputs
  by the fp32 routing weights and sums in fp32 before casting back = HF-V2 `moe_infer`. The
  transformers *eager* experts path instead accumulates in the activation dtype with index_add_,
  so we pin `_experts_implementation = "grouped_mm"` (see README).
- Shared experts (SiLU-gated MLP, width moe_intermediate_size * n_shared_experts) always added.
Expert weights are stored stacked (`experts.gate_up_proj` [E, 2I, H] = cat(gate, up),
`experts.down_proj` [E, H, I]); weights.py maps them to the official per-expert names.
"""

from __future__ import annotations

import torch

from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import DeepseekOcr2TextConfig
from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import (
    DeepseekOcr2TextModel,
    DeepseekOcr2TextRotaryEmbedding,
)

from .config import DecoderConfig


def text_hf_config(d: DecoderConfig) -> DeepseekOcr2TextConfig:
    layer_types = ["sparse" if d.is_moe_layer(i) else "dense" for i in range(d.num_hidden_layers)]
    cfg = DeepseekOcr2TextConfig(
        vocab_size=d.vocab_size,
        hidden_size=d.hidden_size,
        intermediate_size=d.intermediate_size,
        num_hidden_layers=d.num_hidden_layers,
        num_attention_heads=d.num_attention_heads,
        num_key_value_heads=d.num_key_value_heads,
        hidden_act=d.hidden_act,
        max_position_embeddings=d.max_position_embeddings,
        rms_norm_eps=d.rms_norm_eps,
        use_cache=True,
        pad_token_id=None,  # the official config sets none: no padding_idx in embed_tokens
        bos_token_id=d.bos_token_id,
        eos_token_id=d.eos_token_id,
        tie_word_embeddings=d.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": float(d.rope_theta)},
        attention_bias=d.attention_bias,
        attention_dropout=0.0,
        mlp_bias=False,
        n_group=d.n_group,
        n_routed_experts=d.n_routed_experts,
        n_shared_experts=d.n_shared_experts,
        routed_scaling_factor=d.routed_scaling_factor,
        topk_group=d.topk_group,
        topk_method=d.topk_method,
        num_experts_per_tok=d.num_experts_per_tok,
        moe_intermediate_size=d.moe_intermediate_size,
        mlp_layer_types=layer_types,
    )
    cfg._attn_implementation = "sdpa"
    cfg._experts_implementation = "grouped_mm"
    return cfg


class Fp32RotaryEmbedding(DeepseekOcr2TextRotaryEmbedding):
    """transformers' RoPE whose inverse frequencies stay fp32 when the model is cast with `.to(bf16)`.

    `nn.Module.to(dtype)` casts floating buffers; a bf16 `inv_freq` rounds every frequency (the
    official HF run script does `model.to(torch.bfloat16)`; vLLM keeps its RoPE cache in fp32). We keep
    fp32 frequencies, so cos/sin are exact up to the final cast to the activation dtype.
    """

    def _apply(self, fn, recurse=True):
        inv, orig = self.inv_freq, self.original_inv_freq
        super()._apply(fn, recurse)
        if not inv.is_meta and not self.inv_freq.is_meta:
            self.inv_freq = inv.to(device=self.inv_freq.device, dtype=torch.float32)
            self.original_inv_freq = orig.to(device=self.inv_freq.device, dtype=torch.float32)
        return self


def build_text_model(d: DecoderConfig) -> DeepseekOcr2TextModel:
    """`model.embed_tokens`, `model.layers.N.*`, `model.norm` (internal prefix `language_model.`)."""
    model = DeepseekOcr2TextModel(text_hf_config(d))
    model.rotary_emb = Fp32RotaryEmbedding(model.config)
    return model
