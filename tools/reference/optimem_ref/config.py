"""config.json of a DeepSeek-OCR model directory (interfaces.md §1, spec §4.1).

The official file (`model_type: deepseek_vl_v2`) keeps the decoder fields at the
TOP LEVEL (the HF remote code reads them there; a `language_config` copy exists for
vLLM and is ignored here). Fields missing from the official file take the
DeepseekV2Config defaults listed in spec §4.1. Vision sizes are hard-coded in the
official Python; our files MAY add a `vision` section that overrides them.

Missing core size fields are an error that names the field (no silent defaults).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Spec §4.1: DeepseekV2Config defaults for fields absent from the official config.json.
DECODER_DEFAULTS = {
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "norm_topk_prob": False,
    "routed_scaling_factor": 1.0,
    "scoring_func": "softmax",
    "hidden_act": "silu",
    "moe_layer_freq": 1,
    "attention_bias": False,
    "tie_word_embeddings": False,
    "topk_method": "greedy",
    "n_group": None,
    "topk_group": None,
    "rope_scaling": None,
    "use_mla": False,
    "max_position_embeddings": 8192,
}

# Fields the reader requires (an error names the first one missing).
DECODER_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "moe_intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "n_routed_experts",
    "num_experts_per_tok",
    "n_shared_experts",
    "first_k_dense_replace",
    "bos_token_id",
    "eos_token_id",
)


@dataclass
class SamConfig:
    """SAM-B ViTDet + neck + 16x compressor (spec §2.2). Official values are the defaults."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: list[int] = field(default_factory=lambda: [2, 5, 8, 11])
    window_size: int = 14
    patch_size: int = 16
    img_size: int = 1024
    mlp_ratio: float = 4.0
    out_chans: int = 256
    net_2_chans: int = 512
    net_3_chans: int = 1024

    @property
    def pos_grid(self) -> int:
        return self.img_size // self.patch_size


@dataclass
class ClipConfig:
    """CLIP-L/14 fed by SAM features (spec §2.3). Official values are the defaults."""

    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    ffn_hidden_size: int = 4096
    image_size: int = 224
    patch_size: int = 14

    @property
    def pos_grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class DecoderConfig:
    """DeepSeek-V2-style MHA + MoE decoder (spec §4.1)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    moe_intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    n_routed_experts: int
    num_experts_per_tok: int
    n_shared_experts: int
    first_k_dense_replace: int
    bos_token_id: int
    eos_token_id: int
    num_key_value_heads: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    scoring_func: str = "softmax"
    hidden_act: str = "silu"
    moe_layer_freq: int = 1
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    topk_method: str = "greedy"
    n_group: int | None = None
    topk_group: int | None = None
    rope_scaling: dict | None = None
    use_mla: bool = False
    max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def is_moe_layer(self, i: int) -> bool:
        """HF-V2 rule: layer i is MoE iff experts exist, i >= first_k_dense_replace and i % moe_layer_freq == 0."""
        return (
            self.n_routed_experts is not None
            and self.n_routed_experts > 0
            and i >= self.first_k_dense_replace
            and i % self.moe_layer_freq == 0
        )


@dataclass
class OcrConfig:
    decoder: DecoderConfig
    sam: SamConfig = field(default_factory=SamConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    projector_type: str = "linear"
    projector_input_dim: int = 2048
    n_embed: int = 1280
    # True when config.json carried a `vision` section (written back on save).
    has_vision_section: bool = False
    # The raw config.json (kept so that unknown official fields round-trip).
    raw: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, d: dict) -> "OcrConfig":
        kw = {}
        for name in DECODER_REQUIRED:
            if name not in d:
                raise KeyError(f"config.json: required top-level decoder field `{name}` is missing")
            kw[name] = d[name]
        for name, default in DECODER_DEFAULTS.items():
            v = d.get(name, default)
            kw[name] = default if v is None and default is not None else v
        if "num_key_value_heads" in d:
            kw["num_key_value_heads"] = d["num_key_value_heads"]
        dec = DecoderConfig(**kw)
        vision = d.get("vision")
        sam, clip = SamConfig(), ClipConfig()
        if vision is not None:
            sam = _fill(SamConfig, vision.get("sam", {}), "vision.sam")
            clip = _fill(ClipConfig, vision.get("clip", {}), "vision.clip")
        proj = d.get("projector_config")
        if proj is None:
            raise KeyError("config.json: `projector_config` is missing")
        cfg = cls(
            decoder=dec,
            sam=sam,
            clip=clip,
            projector_type=proj.get("projector_type", "linear"),
            projector_input_dim=proj["input_dim"],
            n_embed=proj["n_embed"],
            has_vision_section=vision is not None,
            raw=copy.deepcopy(d),
        )
        cfg.validate()
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> "OcrConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def official(cls) -> "OcrConfig":
        """The deepseek-ai/DeepSeek-OCR config (spec §4.1), vision at the hard-coded sizes."""
        return cls.from_dict(official_config_dict())

    def validate(self) -> None:
        """Checks the invariants of interfaces.md §1 and the features this reference implements."""
        d, s, c = self.decoder, self.sam, self.clip
        errs = []
        if c.hidden_size != s.net_3_chans:
            errs.append(f"clip.hidden_size ({c.hidden_size}) != sam.net_3_chans ({s.net_3_chans})")
        if self.projector_input_dim != c.hidden_size + s.net_3_chans:
            errs.append(f"projector input_dim ({self.projector_input_dim}) != clip.hidden_size + sam.net_3_chans")
        if self.n_embed != d.hidden_size:
            errs.append(f"projector n_embed ({self.n_embed}) != hidden_size ({d.hidden_size})")
        if self.projector_type != "linear":
            errs.append(f"projector_type `{self.projector_type}` is not implemented (only `linear`)")
        if d.use_mla:
            errs.append("use_mla=true is not DeepSeek-OCR v1 (MHA decoder); not implemented")
        if d.norm_topk_prob:
            errs.append("norm_topk_prob=true is not implemented (DeepSeek-OCR uses false)")
        if d.scoring_func != "softmax":
            errs.append(f"scoring_func `{d.scoring_func}` is not implemented (only softmax)")
        if d.topk_method not in ("greedy", "group_limited_greedy"):
            errs.append(f"topk_method `{d.topk_method}` is not implemented")
        if d.rope_scaling is not None:
            errs.append("rope_scaling is not implemented (DeepSeek-OCR uses null)")
        if d.hidden_size % d.num_attention_heads != 0:
            errs.append("hidden_size is not a multiple of num_attention_heads")
        if s.embed_dim % s.num_heads != 0 or c.hidden_size % c.num_heads != 0:
            errs.append("vision width is not a multiple of its head count")
        if errs:
            raise ValueError("config.json: " + "; ".join(errs))

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict:
        """The official layout: decoder fields top level + `language_config` copy + projector_config
        (+ `vision` when this config has non-official vision sizes or was read with one)."""
        out = copy.deepcopy(self.raw) if self.raw else {}
        dec = asdict(self.decoder)
        dec.pop("rope_scaling")
        dec.pop("n_group")
        dec.pop("topk_group")
        if self.decoder.n_group is not None:
            dec["n_group"] = self.decoder.n_group
        if self.decoder.topk_group is not None:
            dec["topk_group"] = self.decoder.topk_group
        out.update(dec)
        out.setdefault("architectures", ["DeepseekOCRForCausalLM"])
        out.setdefault("model_type", "deepseek_vl_v2")
        lang = dict(dec)
        lang.update({"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "kv_lora_rank": None,
                     "q_lora_rank": None, "qk_nope_head_dim": 0, "qk_rope_head_dim": 0, "v_head_dim": 0})
        out["language_config"] = lang
        out["projector_config"] = {
            "projector_type": self.projector_type,
            "input_dim": self.projector_input_dim,
            "n_embed": self.n_embed,
        }
        if self.has_vision_section or (self.sam != SamConfig() or self.clip != ClipConfig()):
            out["vision"] = {"sam": asdict(self.sam), "clip": asdict(self.clip)}
        return out

    def save(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")


def _fill(klass, d: dict, where: str):
    known = set(klass.__dataclass_fields__)
    unknown = set(d) - known
    if unknown:
        raise KeyError(f"config.json: unknown field(s) {sorted(unknown)} in `{where}`")
    return klass(**d)


def official_config_dict() -> dict:
    """The decoder fields of deepseek-ai/DeepSeek-OCR config.json (spec §4.1; absent defaults omitted)."""
    dec = {
        "vocab_size": 129280,
        "hidden_size": 1280,
        "intermediate_size": 6848,
        "moe_intermediate_size": 896,
        "num_hidden_layers": 12,
        "num_attention_heads": 10,
        "num_key_value_heads": 10,
        "n_routed_experts": 64,
        "num_experts_per_tok": 6,
        "n_shared_experts": 2,
        "first_k_dense_replace": 1,
        "topk_method": "greedy",
        "n_group": 1,
        "topk_group": 1,
        "use_mla": False,
        "kv_lora_rank": None,
        "q_lora_rank": None,
        "qk_nope_head_dim": 0,
        "qk_rope_head_dim": 0,
        "v_head_dim": 0,
        "max_position_embeddings": 8192,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "bfloat16",
    }
    d = dict(dec)
    d.update({
        "architectures": ["DeepseekOCRForCausalLM"],
        "model_type": "deepseek_vl_v2",
        "language_config": dict(dec, model_type="deepseek_v2", architectures=["DeepseekV2ForCausalLM"]),
        "projector_config": {"projector_type": "linear", "input_dim": 2048, "n_embed": 1280},
        "candidate_resolutions": [[1024, 1024]],
        "tile_tag": "2D",
        "global_view_pos": "head",
    })
    return d


def q_tokens(size: int, patch_size: int = 16) -> int:
    """Spec §3.4: q(S) = ceil((S // 16) / 4), the per-side grid of vision tokens."""
    return math.ceil((size // patch_size) / 4)
