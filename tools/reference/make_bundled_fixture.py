"""Expected outputs of the SHIPPED model (models/optimem-tiny) on one of our rendered pages, from the PyTorch reference.

tests/bundled_model.rs loads the same weights in Rust and must match: the prompt's last-position logits (|Δ| ≤ 1e-3) and the
greedy continuation (identical ids). Re-run whenever models/optimem-tiny changes:

    .venv-ref/bin/python tools/reference/make_bundled_fixture.py

Input page: tests/fixtures/bundled/page_small.png, rendered by `optimem render --in examples/sample.txt --tier small`.
"""
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools/reference"))
from optimem_ref import DeepseekOCR, NoRepeatNGram, build_input_ids, greedy_generate, pixel_values, plain_prompt, prepare_image  # noqa: E402

MODEL = ROOT / "models/optimem-tiny"
OUT = ROOT / "tests/fixtures/bundled"
STEPS = 32
PROMPT = "<image>\nFree OCR."


def main():
    torch.manual_seed(0)
    model = DeepseekOCR.from_pretrained(MODEL, dtype=torch.float32).eval()
    tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    image_id = tok.token_to_id("<image>")
    prepared = prepare_image(Image.open(OUT / "page_small.png"), "small")
    g, tiles = pixel_values(prepared)
    d = model.config.decoder
    with torch.no_grad():
        emb = model.image_embeddings(g, tiles, prepared.grid)
        ids, mask = build_input_ids(plain_prompt(PROMPT), lambda t: tok.encode(t, add_special_tokens=False).ids,
                                    [prepared.num_tokens], d.bos_token_id, image_id)
        logits = model(input_ids=ids[None], image_embeds=emb, images_seq_mask=mask[None]).logits[0]
        ngram = NoRepeatNGram(ngram_size=30, window_size=90, whitelist=set())
        out = greedy_generate(model, ids, emb, mask, max_new_tokens=STEPS, eos_token_id=d.eos_token_id, ngram=ngram)
    save_file(
        {
            "input_ids": ids.to(torch.long),
            "image_embeds": emb.float().contiguous(),
            "last_logits": logits[-4:].float().contiguous(),
            "greedy_ids": torch.tensor(out, dtype=torch.long),
        },
        str(OUT / "expected.safetensors"),
        metadata={"prompt": PROMPT, "mode": "small", "steps": str(STEPS), "ngram": "30/90, no whitelist",
                  "eos": "stops generation (included in greedy_ids if produced)"},
    )
    print(f"tokens {prepared.num_tokens}, prompt {len(ids)}, greedy {out}")
    print(repr(tok.decode([i for i in out if i != d.eos_token_id], skip_special_tokens=False)))


if __name__ == "__main__":
    main()
