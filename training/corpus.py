"""Extract prose paragraphs from the Debian documentation packages unpacked by build_corpus.sh.

Where it fits: step 1 of training the bundled model (training/README.md). Input is
`training/data/x/<package>/` (each .deb unpacked with `dpkg -x`); output is one text file per
source under `training/data/corpus/{train,heldout}/<source>.txt`, one paragraph per line
(newlines inside a paragraph, e.g. in code blocks, are written as U+2028 so a line stays a
paragraph; the trainer turns them back into newlines), plus `manifest.json` with the counts.

The held-out split is by source (whole packages), and a held-out paragraph that also occurs in a
training source is dropped, so evaluation text was never seen in training.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import html
import json
import os
import re
import subprocess
import sys
import unicodedata
from html.parser import HTMLParser

# (source id, split, package dir, glob patterns, kind). Kinds: html (HTML/XHTML/Mallard XML), man (roff),
# fortune (entries separated by "%" lines), dict (a dictd database, .dict.dz: entries separated by blank lines).
# A path containing one of EXCLUDE's parts is skipped (translations are their own sources; Sphinx _sources are
# the same text again).
SOURCES = [
    # English, training
    ("python-doc-en", "train", "python3.11-doc", ["usr/share/doc/python3.11/html/**/*.html"], "html"),
    ("debian-handbook-en", "train", "debian-handbook", ["usr/share/doc/debian-handbook/html/en-US/*.html"], "html"),
    ("debian-reference-en", "train", "debian-reference-en", ["usr/share/debian-reference/*.en.html"], "html"),
    ("gimp-help-en", "train", "gimp-help-en", ["usr/share/gimp/2.0/help/en/**/*.html"], "html"),
    ("libreoffice-help-en", "train", "libreoffice-help-en-us", ["usr/share/libreoffice/help/en-US/**/*.html"], "html"),
    ("postgresql-doc-en", "train", "postgresql-doc-15", ["usr/share/doc/postgresql-doc-15/html/*.html"], "html"),
    ("gnome-user-docs-en", "train", "gnome-user-docs", ["usr/share/help/C/**/*.page"], "html"),
    ("debian-policy-en", "train", "debian-policy", ["usr/share/doc/debian-policy/**/*.html"], "html"),
    ("developers-reference-en", "train", "developers-reference", ["usr/share/developers-reference/*.html"], "html"),
    ("manpages-en", "train", "manpages", ["usr/share/man/man*/*.gz"], "man"),
    ("installation-guide-en", "train", "installation-guide-amd64", ["usr/share/doc/installation-guide-amd64/en/*.html"], "html"),
    ("fortunes-en", "train", "fortunes", ["usr/share/games/fortunes/*"], "fortune"),
    # English, training: added in session 2 (the 31.8 M characters above were memorised in 15 GPU minutes)
    ("linux-doc-en", "train", "linux-doc-6.1", ["usr/share/doc/linux-doc-6.1/html/**/*.html"], "html"),
    ("apache2-doc-en", "train", "apache2-doc", ["usr/share/doc/apache2-doc/manual/en/**/*.html"], "html"),
    ("django-doc-en", "train", "python-django-doc", ["usr/share/doc/python-django-doc/html/**/*.html"], "html"),
    ("octave-doc-en", "train", "octave-doc", ["usr/share/doc/octave/octave.html/*.html"], "html"),
    ("git-doc-en", "train", "git-doc", ["usr/share/doc/git-doc/**/*.html"], "html"),
    ("sphinx-doc-en", "train", "sphinx-doc", ["usr/share/doc/sphinx-doc/html/**/*.html"], "html"),
    ("gnucash-docs-en", "train", "gnucash-docs", ["usr/share/doc/gnucash-docs/gnucash-guide-en/*.html",
                                                   "usr/share/doc/gnucash-docs/gnucash-help-en/*.html"], "html"),
    ("r-doc-en", "train", "r-doc-html", ["usr/share/R/doc/manual/*.html"], "html"),
    ("gcide-en", "train", "dict-gcide", ["usr/share/dictd/gcide.dict.dz"], "dict"),
    ("foldoc-en", "train", "dict-foldoc", ["usr/share/dictd/foldoc.dict.dz"], "dict"),
    # Chinese (Simplified), training
    ("manpages-zh", "train", "manpages-zh", ["usr/share/man/zh_CN/man*/*.gz"], "man"),
    ("debian-reference-zh", "train", "debian-reference-zh-cn", ["usr/share/debian-reference/*.zh-cn.html"], "html"),
    ("gimp-help-zh", "train", "gimp-help-zh-cn", ["usr/share/gimp/2.0/help/zh_CN/**/*.html"], "html"),
    ("libreoffice-help-zh", "train", "libreoffice-help-zh-cn", ["usr/share/libreoffice/help/zh-CN/**/*.html"], "html"),
    ("debian-handbook-zh", "train", "debian-handbook", ["usr/share/doc/debian-handbook/html/zh-CN/*.html"], "html"),
    ("gnome-user-docs-zh", "train", "gnome-user-docs", ["usr/share/help/zh_CN/**/*.page"], "html"),
    ("installation-guide-zh", "train", "installation-guide-amd64", ["usr/share/doc/installation-guide-amd64/zh_CN/*.html"], "html"),
    ("kicad-doc-zh", "train", "kicad-doc-zh", ["usr/share/doc/kicad/help/zh/*.html"], "html"),
    ("lilypond-doc-zh", "train", "lilypond-doc-html-zh", ["usr/share/doc/lilypond/html/**/*.zh.html"], "html"),
    ("debian-edu-legacy-zh", "train", "debian-edu-doc-legacy-zh-cn", ["usr/share/doc/debian-edu-doc-legacy-zh-cn/*.html"], "html"),
    ("linuxcnc-gcode-zh", "train", "linuxcnc-doc-zh-cn", ["usr/share/doc/linuxcnc/gcode_zh_CN.html"], "html"),
    ("linux-doc-zh", "train", "linux-doc-6.1", ["usr/share/doc/linux-doc-6.1/html/translations/zh_CN/**/*.html"], "html"),
    ("apache2-doc-zh", "train", "apache2-doc", ["usr/share/doc/apache2-doc/manual/zh-cn/**/*.html"], "html"),
    ("fortunes-zh", "train", "fortunes-zh", ["usr/share/games/fortunes/chinese", "usr/share/games/fortunes/tang300", "usr/share/games/fortunes/song100"], "fortune"),
    # held out (whole sources)
    ("debian-history-en", "heldout", "debian-history", ["usr/share/doc/debian-history/docs/*.en.html"], "html"),
    ("harden-doc-en", "heldout", "harden-doc", ["usr/share/doc/harden-doc/html/en-US/*.html"], "html"),
    ("debian-edu-doc-en", "heldout", "debian-edu-doc-en", ["usr/share/doc/debian-edu-doc-en/debian-edu-bookworm-manual.html"], "html"),
    ("harden-doc-zh", "heldout", "harden-doc", ["usr/share/doc/harden-doc/html/zh-CN/*.html"], "html"),
    ("debian-edu-doc-zh", "heldout", "debian-edu-doc-zh-cn", ["usr/share/doc/debian-edu-doc-zh-cn/debian-edu-bookworm-manual.html"], "html"),
]

EXCLUDE = {
    "linux-doc-en": ("/translations/", "/_sources/"),
    "django-doc-en": ("/_sources/",),
    "sphinx-doc-en": ("/_sources/",),
}

BLOCK = {
    "p", "li", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "td", "th", "title", "caption",
    "blockquote", "div", "pre", "screen", "item", "desc", "section", "tr", "table", "ul", "ol", "dl",
    "figcaption", "note", "listing", "example", "br", "body", "code-block",
}
PRE = {"pre", "screen", "programlisting"}
SKIP = {"script", "style", "head", "nav", "info", "noscript", "svg", "math", "credit", "license"}
PARA_SEP = "\u2028"


class Extract(HTMLParser):
    """Collect the text of block elements as paragraphs; keep line breaks inside <pre>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paras: list[str] = []
        self.buf: list[str] = []
        self.skip = 0
        self.pre = 0

    def flush(self) -> None:
        text = "".join(self.buf)
        self.buf = []
        if self.pre:
            lines = [ln.rstrip() for ln in text.split("\n")]
            while lines and not lines[0].strip():
                lines.pop(0)
            while lines and not lines[-1].strip():
                lines.pop()
            text = PARA_SEP.join(lines)
        else:
            text = re.sub(r"\s+", " ", text).strip()
        if text:
            self.paras.append(text)

    def handle_starttag(self, tag, attrs):
        t = tag.split(":")[-1].lower()
        if t in SKIP:
            self.skip += 1
            return
        if t in BLOCK or t in PRE:
            self.flush()
        if t in PRE:
            self.pre += 1

    def handle_endtag(self, tag):
        t = tag.split(":")[-1].lower()
        if t in SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if t in BLOCK or t in PRE:
            self.flush()
        if t in PRE:
            self.pre = max(0, self.pre - 1)

    def handle_data(self, data):
        if not self.skip:
            self.buf.append(data)


def html_paragraphs(path: str) -> list[str]:
    with open(path, "rb") as f:
        raw = f.read().decode("utf-8", errors="replace")
    p = Extract()
    p.feed(raw)
    p.close()
    p.flush()
    return p.paras


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def fortune_paragraphs(path: str) -> list[str]:
    """A fortune file: entries separated by lines holding only '%'; each entry keeps its line breaks."""
    with open(path, "rb") as f:
        raw = ANSI.sub("", f.read().decode("utf-8", errors="replace"))
    out = []
    for entry in re.split(r"\n%\n", raw):
        lines = [ln.rstrip() for ln in entry.strip("\n").split("\n")]
        if any(ln.strip() for ln in lines):
            out.append(PARA_SEP.join(lines))
    return out


def dict_paragraphs(path: str) -> list[str]:
    """A dictd database (dictzip = gzip): one entry per blank-line-separated block, lines joined, source tags
    such as "[1913 Webster]" and the database's own header entries dropped."""
    with gzip.open(path, "rb") as f:
        raw = f.read().decode("utf-8", errors="replace")
    out = []
    for block in re.split(r"\n\s*\n", raw):
        lines = [ln.strip() for ln in block.split("\n")]
        lines = [ln for ln in lines if ln and not re.fullmatch(r"\[[^\]]*\]", ln)]
        if not lines or lines[0].startswith("00-database") or lines[0].startswith("00database"):
            continue
        out.append(" ".join(lines))
    return out


def man_paragraphs(path: str) -> list[str]:
    """Format a man page with groff and split the text into paragraphs at blank lines."""
    with gzip.open(path, "rb") as f:
        src = f.read()
    if src.startswith(b".so "):
        return []  # alias page
    env = dict(os.environ, GROFF_NO_SGR="1", MANWIDTH="2000")
    try:
        out = subprocess.run(
            ["groff", "-k", "-Kutf8", "-man", "-Tutf8", "-P-cbou", "-rLL=2000n", "-rcR=1"],
            input=src, capture_output=True, timeout=30, env=env,
        ).stdout.decode("utf-8", errors="replace")
    except subprocess.TimeoutExpired:
        return []
    paras, cur = [], []
    for line in out.split("\n"):
        if line.strip():
            cur.append(line.strip())
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    # drop the header/footer lines (page name, date)
    return paras[1:-1] if len(paras) > 2 else []


CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def keep(par: str) -> bool:
    """Prose-like paragraphs: long enough, mostly letters, not a table of symbols."""
    n = len(par)
    if n < 25 and not (CJK.search(par) and n >= 10):
        return False
    letters = sum(ch.isalpha() for ch in par)
    return letters >= 0.5 * n and "\ufffd" not in par


def clean(par: str) -> str:
    par = unicodedata.normalize("NFC", html.unescape(par))
    par = par.replace("\u00a0", " ").replace("\u200b", "").replace("\t", "    ")
    par = "".join(ch for ch in par if ch == PARA_SEP or unicodedata.category(ch)[0] != "C")
    return par.strip()


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else "training/data"
    seen: set[bytes] = set()
    manifest = []
    for split in ("train", "heldout"):
        os.makedirs(os.path.join(root, "corpus", split), exist_ok=True)
    for sid, split, pkg, pats, kind in sorted(SOURCES, key=lambda s: s[1] != "train"):
        files: list[str] = []
        for pat in pats:
            files += sorted(f for f in glob.glob(os.path.join(root, "x", pkg, pat), recursive=True)
                            if os.path.isfile(f) and not os.path.islink(f)
                            and not any(x in f for x in EXCLUDE.get(sid, ()))
                            and not (kind == "fortune" and (f.endswith((".dat", ".u8")) or "art" in os.path.basename(f))))
        out, chars, cjk, dropped_dup = [], 0, 0, 0
        for fp in files:
            if kind == "man":
                paras = man_paragraphs(fp)
            elif kind == "fortune":
                paras = fortune_paragraphs(fp)
            elif kind == "dict":
                paras = dict_paragraphs(fp)
            else:
                paras = html_paragraphs(fp)
            for par in paras:
                par = clean(par)
                if not keep(par):
                    continue
                h = hashlib.blake2b(par.encode(), digest_size=12).digest()
                if h in seen:
                    dropped_dup += 1
                    continue
                seen.add(h)
                out.append(par)
                chars += len(par)
                cjk += len(CJK.findall(par))
        with open(os.path.join(root, "corpus", split, sid + ".txt"), "w", encoding="utf-8") as f:
            for par in out:
                f.write(par + "\n")
        rec = {"source": sid, "split": split, "package": pkg, "files": len(files), "paragraphs": len(out),
               "chars": chars, "cjk_chars": cjk, "duplicates_dropped": dropped_dup}
        manifest.append(rec)
        print(json.dumps(rec), flush=True)
    with open(os.path.join(root, "corpus", "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    for split in ("train", "heldout"):
        c = sum(r["chars"] for r in manifest if r["split"] == split)
        k = sum(r["cjk_chars"] for r in manifest if r["split"] == split)
        print(f"{split}: {c} chars, {k} CJK chars")


if __name__ == "__main__":
    main()
