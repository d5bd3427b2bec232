"""Training pages: corpus text → our renderer (`optimem render-stream`) → batches for train.py.

Where it fits: train.py's data pipeline. Each DataLoader worker owns one renderer process (interfaces.md §3)
and yields whole batches of one tier: page pixels (u8), the target token ids of the page's visible text, and
the auxiliary targets (which character classes have a glyph centre inside each vision token's 64-px cell).
Workers keep several requests in flight so the renderer and the Python side run at the same time.

The text recipe follows training-notes.md: most pages carry word-shuffled or character-scrambled text (the
language prior cannot help), a length curriculum per tier (short pages first, caps that keep the compression
readable), plain text and chat layout, English and Chinese sources.
"""

from __future__ import annotations

import collections
import glob
import json
import math
import os
import queue
import random
import re
import struct
import subprocess
import threading
import time

import numpy as np
import torch

PARA_SEP = "\u2028"
CJK_RUN = r"\u3400-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef"
PIECE = re.compile(rf"[{CJK_RUN}]{{1,3}}|[^\s{CJK_RUN}]+")
IS_CJK = re.compile(rf"[{CJK_RUN}]")

TIER_PX = {"tiny": 512, "small": 640, "base": 1024}
FULL_PAGE_CHARS_AT_17 = 4800  # English prose on one page at the default font size 17 (measured by the renderer's density)
CELL_PX = 64  # every tier: S / q(S) = 512/8 = 640/10 = 1024/16
ROLES = ["user", "assistant", "assistant", "tool", "system"]
NAMES = [None, None, None, "planner", "coder", "reviewer", "shell"]


def source_name(path: str) -> str:
    """The source a corpus file belongs to: its name without `.txt` and without a part infix (`foo.p2-en.txt`, staged
    in a second archive by training/gpu/stage.sh, is a part of the source `foo-en`)."""
    return re.sub(r"\.p\d+(?=-[A-Za-z]+$)", "", os.path.basename(path)[:-4])


class Corpus:
    """Paragraphs per source, sampled by language then by source size."""

    def __init__(self, directory: str, zh_share: float = 0.35):
        self.sources: dict[str, list[str]] = {}
        for fp in sorted(glob.glob(os.path.join(directory, "*.txt"))):
            with open(fp, encoding="utf-8") as f:
                paras = [ln.rstrip("\n").replace(PARA_SEP, "\n") for ln in f if ln.strip()]
            if paras:
                self.sources.setdefault(source_name(fp), []).extend(paras)
        self.zh = [s for s in self.sources if s.endswith("-zh")]
        self.en = [s for s in self.sources if not s.endswith("-zh")]
        self.zh_share = zh_share if self.zh else 0.0

    def _pick_source(self, rng: random.Random) -> list[str]:
        group = self.zh if (self.zh and (not self.en or rng.random() < self.zh_share)) else self.en
        # Tempered by size (n^0.7): a large source (a dictionary, the kernel docs) is seen more, not exclusively.
        weights = [len(self.sources[s]) ** 0.7 for s in group]
        return self.sources[rng.choices(group, weights)[0]]

    def paragraphs(self, rng: random.Random, n_chars: int) -> list[str]:
        """Consecutive paragraphs from a random place in one source, about n_chars in all."""
        paras = self._pick_source(rng)
        i = rng.randrange(len(paras))
        out, total = [], 0
        while total < n_chars and i < len(paras):
            out.append(paras[i])
            total += len(paras[i]) + 1
            i += 1
        return out


def shuffle_words(text: str, rng: random.Random) -> str:
    """Word-shuffle one paragraph: Latin words and 1–3-character CJK chunks, in random order."""
    pieces = PIECE.findall(text)
    rng.shuffle(pieces)
    out = []
    for p in pieces:
        if out and not (IS_CJK.match(p[0]) or IS_CJK.match(out[-1][-1])):
            out.append(" ")
        out.append(p)
    return "".join(out)


def scramble_chars(text: str, rng: random.Random) -> str:
    """Character-scramble one paragraph: its non-space characters permuted, spaces and line breaks kept, so
    neither words nor their spelling can be guessed; only reading recovers the text."""
    chars = [c for c in text if not c.isspace()]
    rng.shuffle(chars)
    it = iter(chars)
    return "".join(c if c.isspace() else next(it) for c in text)


def fitting_font_size(n_chars: int) -> float:
    """The largest body font size (1024-unit canvas) at which about n_chars of prose still fill no more than one
    page (uncapped; callers bound it): the size evaluate.py's held-out greedy pages are drawn up to."""
    return 17.0 * math.sqrt(FULL_PAGE_CHARS_AT_17 / (1.3 * max(1, n_chars)))


def make_request(corpus: Corpus, rng: random.Random, max_chars: int, tier: str, shuffle: bool,
                 chat_share: float = 0.25, scramble: bool = False, long_page: bool = False,
                 font_slack: float = 1.0, low_page: bool = False) -> dict:
    """One render-stream request line: text (or chat turns), tier and font size. `shuffle` word-shuffles the
    text, `scramble` character-scrambles it (training-notes.md: text the language prior cannot predict).
    `long_page`: a dense page instead of the log-uniform length — between 35 % of max_chars and max_chars, in type
    no larger than fits (several text lines per vision-token row: the pages on which the decoder has to keep its place),
    or up to `font_slack` times that (larger type on a full page, as Fox pages fit theirs: overflow only shortens the
    visible text). `low_page`: the text starts 0-650 logical units down the page (overflow only shortens the visible
    text), so that every row of vision tokens carries text to read, not only the top rows that most pages fill
    (session 11: j15, trained with text always at the top, read the same text at the unrelated-text level from row 3
    down)."""
    lo = 30
    if long_page:
        n_chars = int(rng.uniform(0.35 * max_chars, max_chars))
        fs_fit = max(17.0, min(min(44.0, 40.0 * font_slack), font_slack * fitting_font_size(n_chars)))
        font_size = round(rng.uniform(17.0, fs_fit) if rng.random() < 0.85 else rng.uniform(13.0, 17.0), 1)
    else:
        n_chars = int(math.exp(rng.uniform(math.log(lo), math.log(max(lo + 1, max_chars)))))
        # Font size in logical units on the 1024 canvas (default 17 ≈ a Fox page). Large type for short texts.
        fs_hi = 44.0 if n_chars < 600 else 30.0
        font_size = round(rng.uniform(17.0, fs_hi) if rng.random() < 0.8 else rng.uniform(13.0, 17.0), 1)
    paras = corpus.paragraphs(rng, n_chars)
    if scramble:
        paras = [scramble_chars(p, rng) for p in paras]
    elif shuffle:
        paras = [shuffle_words(p, rng) for p in paras]
    req: dict = {"tier": tier, "font_size": font_size}
    if low_page:
        req["top"] = round(rng.uniform(0.0, 650.0), 1)
    if rng.random() < chat_share and len(paras) >= 1:
        turns, i = [], 0
        while i < len(paras):
            k = rng.randint(1, 3)
            turns.append({"role": rng.choice(ROLES), "content": "\n".join(paras[i:i + k]), "name": rng.choice(NAMES)})
            i += k
        req["turns"] = turns
    else:
        text = "\n".join(paras)
        if len(text) > n_chars * 1.5:
            text = text[: int(n_chars * 1.5)]
        req["text"] = text
    return req


class RenderStream:
    """One `optimem render-stream` process; requests are written by a thread, pages read in order."""

    def __init__(self, binary: str, tier: str = "small"):
        self.proc = subprocess.Popen([binary, "render-stream", "--tier", tier], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=1 << 20)
        self.pending: collections.deque = collections.deque()
        self.lock = threading.Lock()
        # A writer thread: the renderer may block writing a page while we write requests, so never write inline.
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.writer = threading.Thread(target=self._write, daemon=True)
        self.writer.start()

    def _write(self) -> None:
        while True:
            line = self.queue.get()
            if line is None:
                break
            try:
                self.proc.stdin.write(line)
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                break
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def submit(self, req: dict, meta=None) -> None:
        with self.lock:
            self.pending.append(meta)
        self.queue.put((json.dumps(req, ensure_ascii=False) + "\n").encode())

    def _read(self, n: int) -> bytes:
        buf = self.proc.stdout.read(n)
        if buf is None or len(buf) != n:
            raise RuntimeError(f"renderer closed its output (exit {self.proc.poll()})")
        return buf

    def receive(self):
        (hlen,) = struct.unpack("<I", self._read(4))
        header = json.loads(self._read(hlen))
        w, h = header["width"], header["height"]
        pixels = np.frombuffer(self._read(w * h), dtype=np.uint8).reshape(h, w) if w * h else None
        with self.lock:
            meta = self.pending.popleft()
        return header, pixels, meta

    def close(self) -> None:
        self.queue.put(None)
        self.writer.join(timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class CharClasses:
    """Characters → auxiliary-loss classes: the most frequent characters, then hashed buckets for the rest."""

    def __init__(self, chars: str, buckets: int):
        self.index = {c: i for i, c in enumerate(chars)}
        self.top = len(chars)
        self.buckets = buckets
        self.n = self.top + buckets

    def __call__(self, ch: str) -> int:
        i = self.index.get(ch)
        return i if i is not None else self.top + (ord(ch) * 2654435761 % (1 << 32)) % self.buckets


def glyph_positions(header: dict):
    """(character, x, y) of every visible non-space glyph centre, clamped inside the page's token grid."""
    text = header["visible_text"]
    edge = header["width"] // CELL_PX * CELL_PX - 1e-3
    by_offset, off = {}, 0
    for ch in text:
        by_offset[off] = ch
        off += len(ch.encode("utf-8"))
    for g in header["glyphs"]:
        ch = by_offset.get(int(g[0]))
        if ch is not None and not ch.isspace():
            yield ch, min(edge, max(0.0, float(g[1]))), min(edge, max(0.0, float(g[2])))


def aux_targets(header: dict, classes: CharClasses) -> np.ndarray:
    """Flat indices cell * n_classes + class for every glyph centre on the page (unique)."""
    q = header["width"] // CELL_PX
    out = {(int(y // CELL_PX) * q + int(x // CELL_PX)) * classes.n + classes(ch) for ch, x, y in glyph_positions(header)}
    return np.fromiter(sorted(out), dtype=np.int64, count=len(out))


def glyph_targets(header: dict, classes: CharClasses, grid: int) -> np.ndarray:
    """Flat indices (sub-cell * n_classes + class), one per visible glyph: which character has its centre in
    which of the grid × grid sub-cells of each vision token's 64-px cell (sub-cell = token * grid² + row * grid
    + column). The glyph head (train.py) reads each back from its token: a per-position reading target."""
    if grid <= 0:
        return np.zeros(0, dtype=np.int64)
    q = header["width"] // CELL_PX
    sub = CELL_PX / grid
    out = []
    for ch, x, y in glyph_positions(header):
        cx, cy = int(x // CELL_PX), int(y // CELL_PX)
        sx, sy = int((x - cx * CELL_PX) // sub), int((y - cy * CELL_PX) // sub)
        out.append((((cy * q + cx) * grid + sy) * grid + sx) * classes.n + classes(ch))
    return np.asarray(out, dtype=np.int64)


def pixels(images_u8: torch.Tensor) -> torch.Tensor:
    """u8 [B,S,S] grayscale → normalised [B,3,S,S] (spec §2.1: (x/255 − 0.5)/0.5, three equal channels)."""
    x = images_u8.float().div_(127.5).sub_(1.0)
    return x.unsqueeze(1).expand(-1, 3, -1, -1)


def target_text(header: dict) -> str:
    return header["visible_text"]


class PageBatches(torch.utils.data.IterableDataset):
    """Endless batches of one tier each, made by this worker's own renderer process."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg

    def __iter__(self):
        from tokenizers import Tokenizer

        cfg = self.cfg
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        rank = cfg.get("rank", 0)
        rng = random.Random(cfg["seed"] * 1000003 + rank * 1009 + wid)
        corpus = Corpus(cfg["corpus"], cfg.get("zh_share", 0.35))
        tok = Tokenizer.from_file(cfg["tokenizer"])
        classes = CharClasses(cfg["aux_chars"], cfg["aux_buckets"])
        eos = cfg["eos_id"]
        rs = RenderStream(cfg["renderer"])
        t0, total = cfg["t0"], cfg["total_s"]
        tiers, tier_w = zip(*cfg["tiers"].items())
        inflight = cfg.get("inflight", 6)

        def max_chars_now(tier: str) -> int:
            """The length cap of this tier now: from min_max_chars up to the tier's cap over the curriculum."""
            frac = min(1.0, max(0.0, (time.time() - t0) / (total * cfg["curriculum"]))) if cfg["curriculum"] > 0 else 1.0
            cap = cfg["max_chars"][tier] if isinstance(cfg["max_chars"], dict) else cfg["max_chars"]
            return int(cfg["min_max_chars"] + frac * max(0, cap - cfg["min_max_chars"]))

        fixed = overfit_requests(cfg, corpus) if cfg.get("overfit") else None
        pools = {t: [r for r in fixed if r["tier"] == t] or fixed for t in tiers} if fixed is not None else {}

        def next_request(tier: str, mc: int) -> tuple[dict, bool]:
            """The next page to render and whether its text is shuffled: a fresh one, or (over-fitting test) one
            of the fixed set."""
            if fixed is not None:
                return rng.choice(pools[tier]), True
            u = rng.random()
            sc = u < cfg.get("scramble_share", 0.0)
            sh = sc or u < cfg.get("scramble_share", 0.0) + cfg["shuffle_share"]
            lp = rng.random() < cfg.get("long_share", 0.0)
            low = rng.random() < cfg.get("low_share", 0.0)
            return make_request(corpus, rng, mc, tier, sh, scramble=sc, long_page=lp,
                                font_slack=cfg.get("long_font_slack", 1.0), low_page=low), sh

        try:
            while True:
                tier = rng.choices(tiers, tier_w)[0]
                bs = cfg["batch"][tier]
                mc = cfg["overfit_chars"] if fixed is not None else max_chars_now(tier)
                imgs, ids, auxs, glyphs, nshuf, sent = [], [], [], [], 0, 0
                while len(imgs) < bs:
                    while sent < inflight and len(imgs) + sent < bs:
                        rs.submit(*next_request(tier, mc))
                        sent += 1
                    header, pix, shuffle = rs.receive()
                    sent -= 1
                    if pix is None or not header["visible_text"].strip():
                        continue
                    t = tok.encode(target_text(header), add_special_tokens=False).ids[: cfg["max_target_tokens"] - 1]
                    imgs.append(pix)
                    ids.append(t + [eos])
                    auxs.append(aux_targets(header, classes))
                    glyphs.append(glyph_targets(header, classes, cfg.get("glyph_grid", 0)))
                    nshuf += int(bool(shuffle))
                yield collate(imgs, ids, auxs, glyphs, tier, nshuf, mc)
        finally:
            rs.close()


def pad_indices(rows: list) -> torch.Tensor:
    """Per-page int64 index arrays → one [B, K] tensor, −1-padded."""
    K = max(1, max(len(a) for a in rows))
    out = torch.full((len(rows), K), -1, dtype=torch.long)
    for i, a in enumerate(rows):
        out[i, : len(a)] = torch.from_numpy(a)
    return out


def collate(imgs: list, ids: list, auxs: list, glyphs: list, tier: str, nshuf: int, mc: int) -> dict:
    """One batch: pixels, −100-padded target ids, −1-padded auxiliary and glyph indices."""
    bs = len(imgs)
    L = max(len(t) for t in ids)
    tgt = torch.full((bs, L), -100, dtype=torch.long)
    for i, t in enumerate(ids):
        tgt[i, : len(t)] = torch.tensor(t)
    return {"tier": tier, "images": torch.from_numpy(np.stack(imgs)), "targets": tgt, "aux": pad_indices(auxs),
            "glyphs": pad_indices(glyphs), "shuffled": nshuf, "max_chars": mc}


def overfit_requests(cfg: dict, corpus: "Corpus") -> list[dict]:
    """The fixed page set of the over-fitting test (`train.py --overfit N`): N short word-shuffled pages in large
    type, the same on every worker and rank (seeded by --seed alone), spread over the configured tiers."""
    rng = random.Random(cfg["overfit_seed"])
    tiers, tier_w = zip(*cfg["tiers"].items())
    out = []
    for _ in range(cfg["overfit"]):
        tier = rng.choices(tiers, tier_w)[0]
        out.append(make_request(corpus, rng, cfg["overfit_chars"], tier, shuffle=True, chat_share=0.0))
    return out


def render_fixed(binary: str, requests: list[dict]) -> list[tuple[dict, np.ndarray]]:
    """Render a fixed list of requests (evaluation pages) with one renderer process."""
    rs = RenderStream(binary)
    out = []
    for r in requests:
        rs.submit(r)
        header, pix, _ = rs.receive()
        out.append((header, pix))
    rs.close()
    return out
