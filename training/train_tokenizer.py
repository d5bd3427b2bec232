"""Train the bundled model's byte-level BPE tokenizer on the training split of the corpus.

Where it fits: step 2 of training/README.md, after corpus.py. The special tokens come first so
their ids match the official DeepSeek-OCR ones where it matters (BOS 0, EOS 1, PAD 2); `<image>`
and the grounding tokens follow and are looked up by name (interfaces.md §1). The result is one
`tokenizer.json` that the Rust `tokenizers` crate and the Python trainer both load.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
# Order after PAD follows the official added tokens (spec §5.2): <image>, ref/det, grounding, table cells,
# then the role markers (both the full-width and the ASCII-bar spellings).
SPECIAL = [
    BOS, EOS, PAD,
    "<image>", "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>",
    "<td>", "</td>", "<tr>", "</tr>",
    "<|User|>", "<|Assistant|>", "<｜User｜>", "<｜Assistant｜>", "<|EOT|>",
]
PARA_SEP = "\u2028"


def lines(files: list[str]):
    for fp in files:
        with open(fp, encoding="utf-8") as f:
            for line in f:
                yield line.rstrip("\n").replace(PARA_SEP, "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="training/data/corpus/train")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--out", default="training/data/tokenizer.json")
    ap.add_argument("--aux-chars", default="training/data/aux_chars.txt",
                    help="also write the most frequent characters (the auxiliary loss's classes)")
    ap.add_argument("--n-aux-chars", type=int, default=1536)
    ap.add_argument("--aux-only", action="store_true",
                    help="write only the auxiliary characters (the model's tokenizer is kept, see build_corpus.sh)")
    args = ap.parse_args()

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab,
        min_frequency=2,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    files = sorted(glob.glob(os.path.join(args.corpus, "*.txt")))
    counts: collections.Counter = collections.Counter()
    for line in lines(files):
        counts.update(line)
    top = [c for c, _ in counts.most_common() if not c.isspace()][: args.n_aux_chars]
    with open(args.aux_chars, "w", encoding="utf-8") as f:
        f.write("".join(top))
    print(f"{len(counts)} distinct characters; top {len(top)} cover "
          f"{sum(counts[c] for c in top) / sum(v for c, v in counts.items() if not c.isspace()):.4f} of non-space characters")
    if args.aux_only:
        return
    tok.train_from_iterator(lines(files), trainer=trainer)
    for i, s in enumerate(SPECIAL):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    tok.save(args.out)
    sample = "Free OCR. 这是一个测试。 The quick brown fox."
    enc = tok.encode(sample, add_special_tokens=False)
    print(f"vocab {tok.get_vocab_size()}; '{sample}' -> {len(enc.ids)} tokens; decode ok: {tok.decode(enc.ids) == sample}")


if __name__ == "__main__":
    main()
