"""Official tensor names (spec §6.2) <-> the internal (transformers) module names.

Two tensors are transformed, everything else is a rename:
- CLIP `...self_attn.qkv_proj.{weight,bias}` (fused, rows q|k|v) <-> `q_proj`, `k_proj`, `v_proj`.
- MoE `model.layers.N.mlp.experts.J.{gate_proj,up_proj,down_proj}.weight` <-> stacked
  `experts.gate_up_proj[J] = cat(gate_J, up_J)` and `experts.down_proj[J] = down_J`.
`model.vision_model.embeddings.position_ids` (int64 arange, maybe in the official file, spec §6.1)
is accepted and ignored on load and never written.
"""

from __future__ import annotations

import re

import torch

_RENAMES = [
    (r"^sam_model\.patch_embed\.projection\.", "model.sam_model.patch_embed.proj."),
    (r"^sam_model\.pos_embed$", "model.sam_model.pos_embed"),
    (r"^sam_model\.layers\.(\d+)\.layer_norm1\.", r"model.sam_model.blocks.\1.norm1."),
    (r"^sam_model\.layers\.(\d+)\.layer_norm2\.", r"model.sam_model.blocks.\1.norm2."),
    (r"^sam_model\.layers\.(\d+)\.(attn|mlp)\.", r"model.sam_model.blocks.\1.\2."),
    (r"^sam_model\.neck\.conv1\.", "model.sam_model.neck.0."),
    (r"^sam_model\.neck\.layer_norm1\.", "model.sam_model.neck.1."),
    (r"^sam_model\.neck\.conv2\.", "model.sam_model.neck.2."),
    (r"^sam_model\.neck\.layer_norm2\.", "model.sam_model.neck.3."),
    (r"^sam_model\.proj\.conv1\.", "model.sam_model.net_2."),
    (r"^sam_model\.proj\.conv2\.", "model.sam_model.net_3."),
    (r"^vision_model\.", "model.vision_model."),
    (r"^projector\.", "model.projector."),
    (r"^image_newline$", "model.image_newline"),
    (r"^view_seperator$", "model.view_seperator"),
    (r"^language_model\.", "model."),
    (r"^lm_head\.weight$", "lm_head.weight"),
]

_CLIP_QKV = re.compile(r"^vision_model\.transformer\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")
_EXPERTS = re.compile(r"^language_model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")
_OFF_QKV = re.compile(r"^model\.vision_model\.transformer\.layers\.(\d+)\.self_attn\.qkv_proj\.(weight|bias)$")
_OFF_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
IGNORED_OFFICIAL = {"model.vision_model.embeddings.position_ids"}


def rename_to_official(name: str) -> str:
    for pat, rep in _RENAMES:
        new, n = re.subn(pat, rep, name)
        if n:
            return new
    raise KeyError(f"internal tensor `{name}` has no official name")


def to_official(internal: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Internal state dict -> official tensors (works on meta tensors too)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, t in internal.items():
        m = _CLIP_QKV.match(name)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = t
            continue
        m = _EXPERTS.match(name)
        if m:
            layer, kind = m.group(1), m.group(2)
            for j in range(t.shape[0]):
                base = f"model.layers.{layer}.mlp.experts.{j}."
                if kind == "gate_up_proj":
                    inter = t.shape[1] // 2
                    out[base + "gate_proj.weight"] = t[j, :inter]
                    out[base + "up_proj.weight"] = t[j, inter:]
                else:
                    out[base + "down_proj.weight"] = t[j]
            continue
        out[rename_to_official(name)] = t
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"CLIP layer {layer}: incomplete q/k/v {kind}")
        out[f"model.vision_model.transformer.layers.{layer}.self_attn.qkv_proj.{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    return out


def from_official(official: dict[str, torch.Tensor], internal_names: list[str]) -> dict[str, torch.Tensor]:
    """Official tensors -> internal state dict for a model whose state-dict keys are `internal_names`.

    Raises KeyError naming every missing or unexpected official tensor.
    """
    inverse = {}
    for n in internal_names:
        if _CLIP_QKV.match(n) or _EXPERTS.match(n):
            continue
        inverse[rename_to_official(n)] = n
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for name, t in official.items():
        if name in IGNORED_OFFICIAL:
            used.add(name)
            continue
        if name in inverse:
            out[inverse[name]] = t
            used.add(name)
            continue
        m = _OFF_QKV.match(name)
        if m:
            layer, kind = m.group(1), m.group(2)
            q, k, v = torch.chunk(t, 3, dim=0)
            for part, val in zip("qkv", (q, k, v)):
                out[f"vision_model.transformer.layers.{layer}.self_attn.{part}_proj.{kind}"] = val
            used.add(name)
            continue
        m = _OFF_EXPERT.match(name)
        if m:
            experts.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = t
            used.add(name)
    for layer, per in experts.items():
        n = len(per)
        if sorted(per) != list(range(n)):
            raise KeyError(f"model.layers.{layer}.mlp.experts: expert indices are not 0..{n - 1}")
        for j, parts in per.items():
            if set(parts) != {"gate_proj", "up_proj", "down_proj"}:
                raise KeyError(f"model.layers.{layer}.mlp.experts.{j}: missing {sorted({'gate_proj','up_proj','down_proj'} - set(parts))}")
        out[f"language_model.layers.{layer}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([per[j]["gate_proj"], per[j]["up_proj"]], dim=0) for j in range(n)]
        )
        out[f"language_model.layers.{layer}.mlp.experts.down_proj"] = torch.stack([per[j]["down_proj"] for j in range(n)])
    unexpected = sorted(set(official) - used)
    missing = sorted(set(internal_names) - set(out))
    if unexpected or missing:
        raise KeyError(f"checkpoint does not match the config: missing internal {missing[:20]} "
                       f"(of {len(missing)}), unexpected official {unexpected[:20]} (of {len(unexpected)})")
    return out
