"""optimem_ref: the PyTorch reference of DeepSeek-OCR v1 (spec: /work/shared/deepseek-ocr-spec.md).

One config-driven model for the official checkpoint and our small ones, assembled from the maintained
transformers modules (deepseek_ocr2 SAM encoder + MoE decoder, CLIP encoder layers); pieces written
here to the spec are listed in tools/reference/README.md. Import it from the repo root:

    import sys; sys.path.insert(0, "tools/reference")
    from optimem_ref import OcrConfig, DeepseekOCR

Files
    config.py      OcrConfig (+ SamConfig, ClipConfig, DecoderConfig): config.json read/write, q_tokens
    interp.py      pos-embed / rel-pos resizes (bicubic antialias fp32, linear fp32)
    vision.py      SamEncoder, ClipVisionModel, Projector (the DeepEncoder)
    decoder.py     the DeepseekOcr2TextModel decoder (fp32 RoPE frequencies)
    weights.py     official tensor names <-> internal names (CLIP qkv split, stacked experts)
    model.py       DeepseekOCR, OcrOutput
    preprocess.py  Pillow preprocessing (HF infer() path), tiles, token counts
    prompt.py      plain prompt, input ids + images_seq_mask
    generate.py    greedy decoding with KV cache, NoRepeatNGram (vLLM windowed rule)
    pipeline.py    run_ocr: image -> text

Public API
    OcrConfig.from_dict(d) / .from_file(path) / .official() / .to_dict() / .save(path); fields
        decoder: DecoderConfig, sam: SamConfig, clip: ClipConfig, projector_input_dim, n_embed
    DeepseekOCR(config)                                       nn.Module, internal (transformers) names
    DeepseekOCR.from_config(config, seed=0, device="cpu", dtype=torch.float32, **init_kw)   random init
    DeepseekOCR.from_pretrained(directory, device="cpu", dtype=None)        config.json + safetensors
    .save_pretrained(directory, dtype=torch.bfloat16, max_shard_bytes=None, metadata=None) -> [Path]
    .official_state_dict() -> {official name: tensor};  .num_parameters() -> int
    .encode_images(pixel_values[B,3,S,S], collect=None) -> [B,(S/64)^2,n_embed]  per-view, pre-layout
    .layout_global(vision_tokens[B,h*w,D]) -> [B,h*(w+1)+1,D]           untiled layout, batched
    .layout_image(global_tokens[h*w,D], local_tokens[n,h2*w2,D]=None, grid=(nW,nH)=None) -> [N,D]
    .image_embeddings(global_pixels[1,3,S,S], local_pixels=None, grid=None, collect=None) -> [N,D]
    .embed_inputs(input_ids[B,T], image_embeds=None, images_seq_mask=None) -> [B,T,hidden]
    .forward(input_ids=None, pixel_values=None, image_embeds=None, images_seq_mask=None,
             attention_mask=None, position_ids=None, labels=None, past_key_values=None, use_cache=False,
             return_logits=True, inputs_embeds=None, logits_to_keep=0) -> OcrOutput
        OcrOutput(logits fp32 | None, loss | None, past_key_values, vision_tokens, last_hidden_state)
    .gradient_checkpointing_enable();  .init_weights_(seed=0, std=None, bias_std=0.0, norm_std=0.0,
        embed_std=0.02)
    MODES, prepare_image(image, mode="small", min_num=2, max_num=9) -> PreparedImage(global_view,
        tiles, grid, base_size, tile_size, .num_tokens);  load_image(path); pixel_values(prepared)
        -> (global [1,3,S,S], tiles [n,3,640,640] | None);  normalize(u8[...,H,W,3]) -> f32 [...,3,H,W]
    candidate_grids(min_num=2, max_num=9); choose_grid(width, height, min_num=2, max_num=9,
        image_size=640); dynamic_preprocess(image, min_num=2, max_num=9, image_size=640)
    num_image_tokens(base_size, tile_size=640, grid=None); q_tokens(size, patch_size=16)
    plain_prompt(text); build_input_ids(prompt, encode, image_token_counts, bos_token_id,
        image_token_id) -> (ids[T], images_seq_mask[T]); image_token_id_from_tokenizer(path)
    NoRepeatNGram(ngram_size=30, window_size=90, whitelist={128821, 128822}).banned(ids) -> set
    greedy_generate(model, input_ids, image_embeds=None, images_seq_mask=None, max_new_tokens=512,
        eos_token_id=None, ngram=None, max_length=8192, margins=None) -> list[int]
    run_ocr(model, tokenizer, image, prompt="<image>\\nFree OCR.", mode="small", max_new_tokens=2048,
        ngram=None, image_token_id=None, max_num=9) -> str

Training sketch (Tiny/Small pages, one untiled view per sample):
    out = model(input_ids, pixel_values=px, images_seq_mask=mask, labels=labels, return_logits=False)
    aux = my_head(out.vision_tokens)          # [B, (S/64)^2, n_embed], one row per vision token
    (out.loss + aux_loss(aux)).backward()
    model.save_pretrained(dir, dtype=torch.bfloat16)   # official names; Rust loads it unchanged
"""

from .config import ClipConfig, DecoderConfig, OcrConfig, SamConfig, q_tokens
from .generate import NoRepeatNGram, greedy_generate
from .model import DeepseekOCR, OcrOutput
from .pipeline import run_ocr
from .preprocess import (
    MODES,
    PreparedImage,
    candidate_grids,
    choose_grid,
    dynamic_preprocess,
    load_image,
    normalize,
    num_image_tokens,
    pixel_values,
    prepare_image,
)
from .prompt import build_input_ids, image_token_id_from_tokenizer, plain_prompt

__all__ = [
    "ClipConfig", "DecoderConfig", "OcrConfig", "SamConfig", "q_tokens", "NoRepeatNGram", "greedy_generate",
    "DeepseekOCR", "OcrOutput", "run_ocr", "MODES", "PreparedImage", "candidate_grids", "choose_grid",
    "dynamic_preprocess", "load_image", "normalize", "num_image_tokens", "pixel_values", "prepare_image",
    "build_input_ids", "image_token_id_from_tokenizer", "plain_prompt",
]
