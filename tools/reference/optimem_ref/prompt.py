"""Prompt building and placeholder splicing (spec §5.3-5.5).

"plain" template: the stripped user text, no role tags. The text is split on the literal `<image>`,
each piece is encoded with add_special_tokens=False, N_i copies of the `<image>` id follow each piece
but the last, BOS is prepended, no EOS. `images_seq_mask` is true exactly on the placeholders.
"""

from __future__ import annotations

from typing import Callable

import torch

IMAGE_TAG = "<image>"


def plain_prompt(user_text: str) -> str:
    return user_text.strip()


def build_input_ids(prompt: str, encode: Callable[[str], list[int]], image_token_counts: list[int],
                    bos_token_id: int, image_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (input_ids int64 [T], images_seq_mask bool [T]).

    `encode(text)` must encode WITHOUT special tokens (e.g. `tok.encode(t, add_special_tokens=False).ids`
    for a `tokenizers.Tokenizer`)."""
    pieces = prompt.split(IMAGE_TAG)
    if len(pieces) - 1 != len(image_token_counts):
        raise ValueError(f"prompt has {len(pieces) - 1} `<image>` tags but {len(image_token_counts)} images")
    ids, mask = [bos_token_id], [False]
    for i, piece in enumerate(pieces):
        toks = list(encode(piece)) if piece else []
        ids += toks
        mask += [False] * len(toks)
        if i < len(pieces) - 1:
            ids += [image_token_id] * image_token_counts[i]
            mask += [True] * image_token_counts[i]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.bool)


def image_token_id_from_tokenizer(tokenizer_json_path: str) -> int:
    """The `<image>` id as vLLM looks it up (official: 128815)."""
    from tokenizers import Tokenizer

    tid = Tokenizer.from_file(tokenizer_json_path).token_to_id(IMAGE_TAG)
    if tid is None:
        raise KeyError(f"{tokenizer_json_path}: no `<image>` token")
    return tid
