"""End to end OCR of one image with the HF `infer()` conventions (spec §1): preprocess, encode,
lay out, build the plain prompt, splice, greedy decode with the no-repeat rule, detokenize."""

from __future__ import annotations

import torch
from PIL import Image

from .generate import NoRepeatNGram, greedy_generate
from .preprocess import pixel_values, prepare_image
from .prompt import build_input_ids, plain_prompt


@torch.no_grad()
def run_ocr(model, tokenizer, image: Image.Image, prompt: str = "<image>\nFree OCR.", mode="small",
            max_new_tokens: int = 2048, ngram: NoRepeatNGram | None = None, image_token_id: int | None = None,
            max_num: int = 9) -> str:
    """`tokenizer` is a `tokenizers.Tokenizer` (tokenizer.json). Returns the decoded text without EOS."""
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    if image_token_id is None:
        image_token_id = tokenizer.token_to_id("<image>")
    prepared = prepare_image(image, mode, max_num=max_num)
    g, tiles = pixel_values(prepared)
    emb = model.image_embeddings(g.to(dev, dtype), None if tiles is None else tiles.to(dev, dtype), prepared.grid)
    d = model.config.decoder
    ids, mask = build_input_ids(plain_prompt(prompt), lambda t: tokenizer.encode(t, add_special_tokens=False).ids,
                                [prepared.num_tokens], d.bos_token_id, image_token_id)
    out = greedy_generate(model, ids.to(dev), emb, mask.to(dev), max_new_tokens=max_new_tokens,
                          eos_token_id=d.eos_token_id, ngram=ngram)
    if out and out[-1] == d.eos_token_id:
        out = out[:-1]
    return tokenizer.decode(out, skip_special_tokens=False)
