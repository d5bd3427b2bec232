"""Greedy decoding with a KV cache and the vLLM windowed no-repeat n-gram rule (spec §5.6, OCR-NGRAM).

The rule sees the generated ids only (not the prompt): with fewer than `ngram_size` ids nothing is
banned; otherwise the last ngram_size-1 ids are the prefix, and for every start i in
[max(0, len - window_size), len - ngram_size], if ids[i : i+ngram_size-1] == prefix then
ids[i+ngram_size-1] is banned; whitelisted ids are never banned; banned logits become -inf.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class NoRepeatNGram:
    ngram_size: int = 30
    window_size: int = 90
    whitelist: set[int] = field(default_factory=lambda: {128821, 128822})  # <td>, </td>

    def banned(self, ids: list[int]) -> set[int]:
        n = self.ngram_size
        if len(ids) < n:
            return set()
        prefix = ids[len(ids) - (n - 1):]
        out = set()
        for i in range(max(0, len(ids) - self.window_size), len(ids) - n + 1):
            if ids[i:i + n - 1] == prefix:
                out.add(ids[i + n - 1])
        return out - self.whitelist


@torch.no_grad()
def greedy_generate(model, input_ids: torch.Tensor, image_embeds=None, images_seq_mask: torch.Tensor | None = None,
                    max_new_tokens: int = 512, eos_token_id: int | None = None,
                    ngram: NoRepeatNGram | None = None, max_length: int = 8192,
                    margins: list[float] | None = None) -> list[int]:
    """Greedy continuation of ONE sequence. input_ids [T] or [1,T]; images as in DeepseekOCR.forward.
    Stops at eos_token_id (None: never) after appending it, at max_new_tokens, or at max_length total
    positions (vLLM max_model_len). Returns the generated ids. `margins`, if given, receives the gap
    between the best and second-best (allowed) logit at every step (how robust the argmax is)."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if images_seq_mask is not None and images_seq_mask.dim() == 1:
        images_seq_mask = images_seq_mask[None]
    dev = input_ids.device
    if dev.type == "cuda":
        # training-notes.md: cuDNN SDPA builds a plan per key length (~40 ms/step) during decoding.
        torch.backends.cuda.enable_cudnn_sdp(False)
    out = model(input_ids, image_embeds=image_embeds, images_seq_mask=images_seq_mask, use_cache=True,
                logits_to_keep=1)
    cache = out.past_key_values
    logits = out.logits[0, -1]
    generated: list[int] = []
    total = input_ids.shape[1]
    while len(generated) < max_new_tokens and total < max_length:
        if ngram is not None:
            ban = ngram.banned(generated)
            if ban:
                logits = logits.clone()
                logits[list(ban)] = float("-inf")
        tok = int(torch.argmax(logits))
        if margins is not None:
            top = torch.topk(logits.float(), 2).values
            margins.append(float(top[0] - top[1]))
        generated.append(tok)
        total += 1
        if eos_token_id is not None and tok == eos_token_id:
            break
        if len(generated) >= max_new_tokens or total >= max_length:
            break
        out = model(torch.tensor([[tok]], device=dev), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        logits = out.logits[0, -1]
    return generated
