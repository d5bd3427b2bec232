"""Train the bundled optimem-tiny model (DeepSeek-OCR architecture at a small config) on pages from our renderer.

Where it fits: training/README.md step 3, run on the GPU machine (torchrun for several GPUs). The architecture is
the reference package `tools/reference/optimem_ref` (one definition, official tensor names); this file adds only
what training needs: the auxiliary per-vision-token head (not exported), the loop, evaluation and checkpoints.

Recipe (training-notes.md, run 2/3): half the pages word-shuffled, auxiliary BCE on which character classes have a
glyph centre in each vision token's cell, length curriculum, bf16 autocast, AdamW, time-based schedule. Every
`--eval-every` seconds: teacher-forced held-out loss on real vs blank pages. At the end: greedy precision by bucket
at 64 (Tiny) and 100 (Small) vision tokens, a checkpoint, and a JSON summary line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import data as D  # noqa: E402
import evaluate as E  # noqa: E402

PROMPT_AFTER_IMAGE = "\nFree OCR."  # spec §5.3/§5.4: "<image>\nFree OCR.", BOS prepended, split at <image>


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", default=os.path.join(HERE, "..", "tools", "reference"), help="folder holding optimem_ref")
    ap.add_argument("--config", default=os.path.join(HERE, "model_config.json"))
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--aux-chars", required=True)
    ap.add_argument("--corpus", required=True, help="train split folder")
    ap.add_argument("--heldout", required=True, help="held-out split folder")
    ap.add_argument("--renderer", required=True)
    ap.add_argument("--state", required=True, help="folder for checkpoints and logs")
    ap.add_argument("--resume", default="", help="full checkpoint (.pt) or exported model folder")
    ap.add_argument("--resume-aux", default="", help="auxiliary head (.pt) when --resume is a model folder without one")
    ap.add_argument("--resume-glyph", default="",
                    help="glyph head (.pt) when --resume is a model folder (default: glyph_head.pt beside the weights)")
    ap.add_argument("--resume-stage", default="",
                    help="deep-supervision heads (.pt) when --resume is a model folder (default: stage_heads.pt beside it)")
    ap.add_argument("--resume-summary", default="", help="summary.json with the totals so far (pages, seconds, steps)")
    ap.add_argument("--run-id", default="run")
    ap.add_argument("--seconds", type=float, default=480, help="training time (excluding final evaluation)")
    ap.add_argument("--sched-seconds", type=float, default=0, help="length of the LR/curriculum schedule (0 = --seconds)")
    ap.add_argument("--sched-offset", type=float, default=0, help="seconds of the schedule already done (resume)")
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--encoder-lr-mult", type=float, default=1.0,
                    help="the DeepEncoder's (SAM, CLIP, projector) learning rate as a multiple of --lr")
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--aux-weight", type=float, default=0.3)
    ap.add_argument("--aux-buckets", type=int, default=256)
    ap.add_argument("--glyph-weight", type=float, default=0.0,
                    help="weight of the glyph loss: each glyph's character read back from its token's sub-cell")
    ap.add_argument("--glyph-grid", type=int, default=8, help="sub-cells per side of a token's 64-px cell")
    ap.add_argument("--glyph-rank", type=int, default=64, help="width of the glyph head's per-sub-cell code")
    ap.add_argument("--stage-glyph-weight", type=float, default=0.0,
                    help="weight of the glyph loss read from inside the encoder (deep supervision): from the SAM neck "
                         "(16-px cells) and from net_2 (32-px cells), the same glyphs and 8-px sub-cells as the "
                         "token-level head; needs --glyph-grid 8")
    ap.add_argument("--encoder-seconds", type=float, default=0.0,
                    help="first seconds of this run train the encoder alone on the auxiliary losses (no decoder)")
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--batch-tiny", type=int, default=64)
    ap.add_argument("--batch-small", type=int, default=64)
    ap.add_argument("--batch-base", type=int, default=24)
    ap.add_argument("--tiers", default="tiny:0.45,small:0.45,base:0.10")
    ap.add_argument("--curriculum", type=float, default=0.35)
    ap.add_argument("--min-max-chars", type=int, default=150)
    ap.add_argument("--max-chars", default="tiny:1200,small:2000,base:3600",
                    help="final length cap in characters: one number, or per tier as tier:n,...")
    ap.add_argument("--max-target-tokens", type=int, default=1024)
    ap.add_argument("--shuffle-share", type=float, default=0.6, help="pages with word-shuffled text")
    ap.add_argument("--scramble-share", type=float, default=0.1, help="pages with character-scrambled text")
    ap.add_argument("--long-share", type=float, default=0.0,
                    help="pages drawn dense (35-100 %% of the length cap, type no larger than fits) instead of "
                         "log-uniform in length")
    ap.add_argument("--long-font-slack", type=float, default=1.0,
                    help="dense pages draw their font size up to this many times what fits one page (1 = fits)")
    ap.add_argument("--low-share", type=float, default=0.0,
                    help="pages whose text starts 0-650 logical units down the page (every row of vision tokens "
                         "gets text to read)")
    ap.add_argument("--pos-gap", type=int, default=0,
                    help="skip a random 0..N positions between the image block and the prompt (per page), so that the "
                         "decoder cannot use its distance to the vision tokens as a pointer into the page")
    ap.add_argument("--token-noise", type=float, default=0.0,
                    help="replace this share of the target tokens fed to the decoder by other tokens of the batch "
                         "(labels unchanged), so that it learns to go on from a wrong token by reading the page")
    ap.add_argument("--zh-share", type=float, default=0.3)
    ap.add_argument("--eval-every", type=float, default=90)
    ap.add_argument("--ckpt-every", type=float, default=150)
    ap.add_argument("--eval-pages", type=int, default=32)
    ap.add_argument("--eval-max-chars", type=int, default=2500, help="longest teacher-forced held-out page")
    ap.add_argument("--greedy-per-bucket", type=int, default=6)
    ap.add_argument("--overfit", type=int, default=0,
                    help="over-fitting test: train on this many fixed pages only, then decode them (0 = off)")
    ap.add_argument("--overfit-chars", type=int, default=150, help="length cap of the over-fitting test's pages")
    ap.add_argument("--experts", default="grouped_mm", choices=["grouped_mm", "eager"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=0, help="stop after this many steps (CPU tests)")
    ap.add_argument("--device", default="cuda")
    return ap.parse_args()


class AuxHead(nn.Module):
    """Training-only probe of the vision tokens: LayerNorm then Linear → per-cell character-class logits.

    The LayerNorm matters: projector outputs grow to an rms of 20–60 during training (r1, r3), and a bare linear
    head on them learnt little (r3: recall of the cell's characters 0.64 vs 0.59 for another page's tokens)."""

    def __init__(self, n_embed: int, n_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(n_embed)
        self.linear = nn.Linear(n_embed, n_classes)
        nn.init.normal_(self.linear.weight, std=n_embed ** -0.5)
        nn.init.constant_(self.linear.bias, -4.0)

    def forward(self, x):
        return self.linear(self.norm(x))


class GlyphHead(nn.Module):
    """Training-only reader of the vision tokens: which character has its centre in each of the grid × grid
    sub-cells of a token's cell. LayerNorm, one Linear to a rank-r code per sub-cell, GELU, a shared Linear to
    the character classes; evaluated only at the sub-cells that hold a glyph (targets from glyph_targets)."""

    def __init__(self, n_embed: int, n_classes: int, grid: int, rank: int):
        super().__init__()
        self.grid2, self.rank, self.n_classes = grid * grid, rank, n_classes
        self.norm = nn.LayerNorm(n_embed)
        self.code = nn.Linear(n_embed, grid * grid * rank)
        self.cls = nn.Linear(rank, n_classes)

    def forward(self, tokens: torch.Tensor, idx: torch.Tensor):
        """tokens [B, T, D]; idx [B, K] flat (sub-cell * C + class), −1 padding → (logits [M, C], classes [M])."""
        b, t, _ = tokens.shape
        codes = self.code(self.norm(tokens)).reshape(b, t * self.grid2, self.rank)
        valid = idx >= 0
        sub = (idx.clamp(min=0) // self.n_classes).clamp(max=t * self.grid2 - 1)
        rows = codes[torch.arange(b, device=idx.device)[:, None].expand_as(idx)[valid], sub[valid]]
        return self.cls(F.gelu(rows)), idx[valid] % self.n_classes


def regrid(idx: torch.Tensor, n_classes: int, q: int, grid: int, cell_px: int) -> torch.Tensor:
    """Token-level glyph indices (64-px cells of a q × q grid, grid × grid sub-cells) → the same glyphs and
    sub-cells indexed on a finer grid of cell_px cells (cell_px * grid / 64 sub-cells per side); −1 stays −1."""
    g = cell_px * grid // D.CELL_PX
    n = q * D.CELL_PX // cell_px
    valid = idx >= 0
    cls, sub = idx.clamp(min=0) % n_classes, idx.clamp(min=0) // n_classes
    tok, r = sub // (grid * grid), sub % (grid * grid)
    y, x = (tok // q) * grid + r // grid, (tok % q) * grid + r % grid
    fine = (((y // g) * n + x // g) * g + y % g) * g + x % g
    return torch.where(valid, fine * n_classes + cls, torch.full_like(idx, -1))


# Deep supervision taps inside the DeepEncoder: (stage name, module path under the model, cell size in pixels).
STAGES = (("sam_neck", "sam_model.neck", 16), ("sam_net_2", "sam_model.proj.conv1", 32))


class Trainer(nn.Module):
    """The exported model plus the training-only heads over the projector outputs (bag of characters per
    token, and optionally the per-sub-cell glyph reader)."""

    def __init__(self, model: nn.Module, n_embed: int, n_classes: int, glyph_grid: int = 0, glyph_rank: int = 64,
                 use_aux: bool = True, token_glyph: bool = True, stage_glyph: bool = False):
        super().__init__()
        self.model = model
        self.aux_head = AuxHead(n_embed, n_classes)  # kept even when unused: checkpoints and evaluation carry it
        self.use_aux = use_aux
        self.glyph_grid = glyph_grid
        self.glyph_head = GlyphHead(n_embed, n_classes, glyph_grid, glyph_rank) if glyph_grid > 0 and token_glyph else None
        # deep supervision: glyph heads on the SAM neck and net_2 feature maps, captured by forward hooks
        self.stage_heads = nn.ModuleDict()
        self._stage_out: dict[str, torch.Tensor] = {}
        if stage_glyph and glyph_grid > 0:
            for name, path, cell in STAGES:
                module = model.get_submodule(path)
                chans = next(p for n, p in module.named_parameters() if n.endswith("weight")).shape[0]
                self.stage_heads[name] = GlyphHead(chans, n_classes, cell * glyph_grid // D.CELL_PX, glyph_rank)
                module.register_forward_hook(lambda _m, _i, out, name=name: self._stage_out.__setitem__(name, out))

    def stage_glyphs(self, glyph_idx: torch.Tensor, q: int) -> list:
        """(stage, logits, classes) of every deep-supervision head on the last forward's feature maps."""
        out = []
        for name, _path, cell in STAGES:
            if name in self.stage_heads and name in self._stage_out:
                fmap = self._stage_out[name]  # NCHW
                idx = regrid(glyph_idx, self.stage_heads[name].n_classes, q, self.glyph_grid, cell)
                out.append((name, *self.stage_heads[name](fmap.flatten(2).transpose(1, 2), idx)))
        self._stage_out.clear()
        return out

    def forward(self, input_ids, pixel_values, images_seq_mask, labels, glyph_idx=None, encoder_only=False,
                position_ids=None, attention_mask=None):
        """→ (CE loss or None when encoder_only, bag logits or None when unused, glyph (logits, classes) or None,
        the deep-supervision heads' [(stage, logits, classes)]). Every head runs here, inside forward, so that
        DistributedDataParallel sees each parameter used once per step."""
        if encoder_only:
            ce, vt = None, self.model.encode_images(pixel_values)
        else:
            out = self.model(input_ids, pixel_values=pixel_values, images_seq_mask=images_seq_mask, labels=labels,
                             return_logits=False, position_ids=position_ids, attention_mask=attention_mask)
            ce, vt = out.loss, out.vision_tokens
        glyph = self.glyph_head(vt, glyph_idx) if self.glyph_head is not None and glyph_idx is not None else None
        stages = self.stage_glyphs(glyph_idx, pixel_values.shape[-1] // D.CELL_PX) if glyph_idx is not None else []
        return ce, self.aux_head(vt) if self.use_aux else None, glyph, stages


def build_inputs(targets: torch.Tensor, n_img: int, prompt_ids: list[int], image_id: int, eos: int):
    """[BOS] + N×<image> + prompt + target; labels = the target ids (and EOS), −100 elsewhere."""
    b, L = targets.shape
    dev = targets.device
    head = torch.tensor([0] + [image_id] * n_img + prompt_ids, device=dev).expand(b, -1)
    tgt_in = torch.where(targets == -100, torch.full_like(targets, eos), targets)
    ids = torch.cat([head, tgt_in], 1)
    labels = torch.cat([torch.full_like(head, -100), targets], 1)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, 1:1 + n_img] = True
    return ids, mask, labels


def gapped_positions(ids: torch.Tensor, n_img: int, max_gap: int, exact: bool = False):
    """Position ids that skip a random 0..max_gap positions (per row) between the image block and the prompt, and
    the all-ones attention mask without which transformers reads the jump as a packed-sequence boundary; (None, None)
    when max_gap is 0. `exact`: every row skips max_gap (probes).

    Session 11: j15 finds its place by distance, not by content. With 25 positions of gap its teacher-forced accuracy
    on diag/row_offset.py's texts fell from 0.93 to 0.73, and with 50 to 0.43 (a blank page gives 0.25). A random
    gap makes the distance from a text token to the vision tokens useless as a pointer into the page."""
    if max_gap <= 0:
        return None, None
    b, t = ids.shape
    gap = torch.full((b, 1), max_gap) if exact else torch.randint(0, max_gap + 1, (b, 1))
    gap = gap.to(ids.device)
    pos = torch.arange(t, device=ids.device).expand(b, -1).clone()
    pos[:, 1 + n_img:] += gap
    return pos, torch.ones_like(ids)


def noisy_inputs(ids: torch.Tensor, labels: torch.Tensor, share: float, eos: int,
                 gen: torch.Generator | None = None):
    """`ids` with about `share` of the target tokens fed to the decoder (EOS excepted) replaced by target tokens drawn
    at random from the whole batch (EOS never); the labels stay as they were. Nothing changes when share is 0.

    Greedy decoding drifts: after one wrong token the decoder carries on from its own text rather than the page
    (RESULTS.md sessions 10-12; teacher-forced loss fell a quarter of a nat from j15 to j18 and greedy precision on
    long pages did not follow). Inputs with wrong tokens, predicted against the right ones, teach it to recover from
    the page. Nougat (Blecher et al., 2023) perturbs its training text in this way against repetition loops."""
    if share <= 0:
        return ids
    # labels line up with the inputs (the loss shifts them): the target tokens fed in are where a label is set
    target_in = (labels != -100) & (ids != eos)
    pool = ids[target_in]
    if pool.numel() == 0:
        return ids
    hit = target_in & (torch.rand(ids.shape, generator=gen, device=ids.device) < share)
    pick = torch.randint(0, pool.numel(), (int(hit.sum()),), generator=gen, device=ids.device)
    out = ids.clone()
    out[hit] = pool[pick]
    return out


def aux_loss(logits: torch.Tensor, aux_idx: torch.Tensor) -> torch.Tensor:
    """Multi-label BCE; targets given as flat indices cell*C+class (−1 padding). Sum over classes, mean over cells."""
    b, cells, c = logits.shape
    tgt = torch.zeros(b, cells * c, device=logits.device, dtype=torch.float32)
    valid = aux_idx >= 0
    tgt.scatter_(1, aux_idx.clamp(min=0), valid.float())
    loss = F.binary_cross_entropy_with_logits(logits.float().reshape(b, -1), tgt, reduction="sum")
    return loss / (b * cells)


def aux_dense(flat: list, shape) -> torch.Tensor:
    """Per-page flat auxiliary indices (cell * C + class) → dense 0/1 targets [B, cells, C]."""
    b, cells, c = shape
    t = torch.zeros(b, cells * c)
    for i, a in enumerate(flat):
        if len(a):
            t[i, torch.from_numpy(a)] = 1.0
    return t.reshape(b, cells, c)


def aux_recall(logits: torch.Tensor, tgt: torch.Tensor) -> float:
    """Recall@k of the auxiliary head: per cell with k characters present, the share of them among its k
    highest-scoring classes, pooled over cells."""
    tgt = tgt.to(logits.device)
    k = tgt.sum(-1, keepdim=True)
    rank = logits.argsort(-1, descending=True).argsort(-1).float()
    hits = ((rank < k) & (tgt > 0)).sum()
    return float(hits) / max(1.0, float(k.sum()))


def overfit_greedy(model, dcfg: dict, tok, prompt_ids, image_id, eos, dev, renderer: str, n: int = 32) -> dict:
    """Greedy precision (evaluate.greedy_precision) on the first n pages of the over-fitting set: the training
    pages themselves, one bucket per tier."""
    reqs = D.overfit_requests(dcfg, D.Corpus(dcfg["corpus"], dcfg["zh_share"]))[:n]
    es = E.EvalSet()
    for req, (header, pix) in zip(reqs, D.render_fixed(renderer, reqs)):
        if pix is not None and header["visible_text"].strip():
            es.greedy.setdefault(req["tier"], []).append(((0, 10**9), header, pix))
    return E.greedy_precision(model, es, tok, prompt_ids, image_id, eos, dev, D.pixels)


def parse_max_chars(spec: str):
    """"3000" → 3000 for every tier; "tiny:1200,small:2000,base:3600" → per tier."""
    if ":" not in spec:
        return int(spec)
    return {k: int(v) for k, v in (x.split(":") for x in spec.split(","))}


def lr_at(step: int, t_sched: float, args) -> float:
    """Linear warm-up over this process's first --warmup steps, then cosine (by time) down to min_lr_frac."""
    warm = min(1.0, (step + 1) / max(1, args.warmup))
    frac = min(1.0, max(0.0, t_sched))
    cos = args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac))
    return args.lr * warm * cos


def main():
    args = parse_args()
    sys.path.insert(0, os.path.abspath(args.ref))
    from optimem_ref import DeepseekOCR, OcrConfig
    from tokenizers import Tokenizer

    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if ddp and args.device == "cuda":
        dist.init_process_group("nccl")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    elif ddp:
        dist.init_process_group("gloo")  # CPU tests of the multi-process path
    dev = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}" if ddp and args.device == "cuda" else args.device)
    is_cuda = dev.type == "cuda"
    if is_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.enable_cudnn_sdp(False)  # training-notes.md: cuDNN SDPA re-plans per key length
    torch.manual_seed(args.seed + rank)
    os.makedirs(args.state, exist_ok=True)
    log_path = os.path.join(args.state, "log.jsonl")

    def log(rec: dict) -> None:
        if rank == 0:
            rec = {"run": args.run_id, "t": round(time.time(), 1), **rec}
            line = json.dumps(rec, ensure_ascii=False)
            print(line, flush=True)
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    tok = Tokenizer.from_file(args.tokenizer)
    image_id = tok.token_to_id("<image>")
    eos = 1
    prompt_ids = tok.encode(PROMPT_AFTER_IMAGE, add_special_tokens=False).ids
    with open(args.aux_chars, encoding="utf-8") as f:
        aux_chars = f.read()
    classes = D.CharClasses(aux_chars, args.aux_buckets)

    # ---------------------------------------------------------------- model
    state = None
    state_totals = (0, 0.0, 0)
    if args.resume and args.resume.endswith(".pt"):
        state = torch.load(args.resume, map_location="cpu", weights_only=False)
        cfg = OcrConfig.from_dict(state["config"])
        model = DeepseekOCR(cfg)
        model._rebuild_buffers(torch.device("cpu"))
    elif args.resume:
        model = DeepseekOCR.from_pretrained(args.resume, dtype=torch.float32)
        cfg = model.config
    else:
        with open(args.config, encoding="utf-8") as f:
            cfg = OcrConfig.from_dict(json.load(f))
        model = DeepseekOCR.from_config(cfg, seed=args.seed)
    if cfg.decoder.vocab_size != tok.get_vocab_size():
        raise SystemExit(f"vocab_size {cfg.decoder.vocab_size} != tokenizer {tok.get_vocab_size()}")
    # 0: no glyph head, no glyph targets
    glyph_grid = args.glyph_grid if args.glyph_weight > 0 or args.stage_glyph_weight > 0 else 0
    if args.stage_glyph_weight > 0 and args.glyph_grid != 8:
        raise SystemExit("--stage-glyph-weight needs --glyph-grid 8 (8-px sub-cells at every stage)")
    trainer = Trainer(model, cfg.n_embed, classes.n, glyph_grid, args.glyph_rank, use_aux=args.aux_weight > 0,
                      token_glyph=args.glyph_weight > 0, stage_glyph=args.stage_glyph_weight > 0)
    if state is not None:
        missing, unexpected = trainer.load_state_dict(state["trainer"], strict=False)
        if [k for k in missing if not k.startswith(("glyph_head.", "stage_heads."))] or unexpected:
            raise SystemExit(f"checkpoint does not fit: missing {missing}, unexpected {unexpected}")
    elif args.resume:
        # training-only heads exported beside the weights (bf16); one of another layout (an earlier bare-Linear
        # auxiliary head, another glyph grid or rank) is left fresh
        for head, path in ((trainer.aux_head, args.resume_aux or os.path.join(args.resume, "aux_head.pt")),
                           (trainer.glyph_head, args.resume_glyph or os.path.join(args.resume, "glyph_head.pt")),
                           (trainer.stage_heads if len(trainer.stage_heads) else None,
                            args.resume_stage or os.path.join(args.resume, "stage_heads.pt"))):
            if head is not None and os.path.exists(path):
                try:
                    head.load_state_dict({k: v.float() for k, v in torch.load(path, map_location="cpu").items()})
                except RuntimeError:
                    print(f"the head in {path} has another layout; starting a new one", flush=True)
        summ = args.resume_summary or os.path.join(args.resume, "summary.json")
        if os.path.exists(summ):  # totals so far (an exported folder carries no optimizer state)
            with open(summ, encoding="utf-8") as f:
                prev = json.load(f)
            state_totals = (prev.get("pages_total", 0), prev.get("train_seconds_total", 0.0), prev.get("step", 0))
    def set_experts(impl: str) -> None:
        for m in trainer.modules():
            if hasattr(m, "config") and hasattr(m.config, "_experts_implementation"):
                m.config._experts_implementation = impl

    set_experts(args.experts)
    trainer.to(dev)
    if args.experts == "grouped_mm":  # pre-flight: grouped_mm with fp32 master weights under bf16 autocast
        try:
            q = 8
            ids, mask, labels = build_inputs(torch.full((2, 8), 100, device=dev), q * (q + 1) + 1, prompt_ids, image_id, eos)
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                ce, _, _, _ = trainer(ids, D.pixels(torch.full((2, 512, 512), 200, dtype=torch.uint8, device=dev)), mask, labels)
            ce.backward()
        except (RuntimeError, NotImplementedError) as e:
            print(f"grouped_mm experts failed under autocast ({e}); using eager experts", flush=True)
            set_experts("eager")
        trainer.zero_grad(set_to_none=True)
    n_params = model.num_parameters()
    log({"event": "start", "params": n_params, "world": world, "device": str(dev),
         "gpu": torch.cuda.get_device_name(dev) if is_cuda else "cpu"})
    net = trainer
    if ddp:
        net = nn.parallel.DistributedDataParallel(trainer, device_ids=[dev.index] if is_cuda else None,
                                                  find_unused_parameters=True)

    # four groups: (DeepEncoder or the rest) × (weight decay or not); the encoder's learning rate is
    # --encoder-lr-mult times the schedule's (session 3: the SAM/CLIP encoder does not learn glyphs at 1.5e-3)
    groups: dict[tuple[bool, bool], list] = {}
    encoder_prefixes = ("model.sam_model.", "model.vision_model.", "model.projector.")
    for n, p in trainer.named_parameters():
        if not p.requires_grad:
            continue
        decays = p.dim() >= 2 and "pos" not in n and "embed" not in n
        groups.setdefault((n.startswith(encoder_prefixes), decays), []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "weight_decay": args.wd if dec else 0.0,
                              "lr_mult": args.encoder_lr_mult if enc else 1.0}
                             for (enc, dec), ps in sorted(groups.items())],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=is_cuda)
    pages_before, seconds_before, step0 = state_totals
    if state is not None:
        if "opt" in state:
            try:
                opt.load_state_dict(state["opt"])
            except ValueError as e:
                log({"event": "optimizer state not loaded", "why": str(e)})
            for g, (enc, _) in zip(opt.param_groups, sorted(groups)):  # this run's multiplier, not the saved one
                g["lr_mult"] = args.encoder_lr_mult if enc else 1.0
        pages_before = state.get("pages", 0)
        seconds_before = state.get("train_seconds", 0.0)
        step0 = state.get("step", 0)

    # ---------------------------------------------------------------- data
    sched_total = args.sched_seconds or args.seconds
    t_start = time.time()
    tiers = {k: float(v) for k, v in (x.split(":") for x in args.tiers.split(","))}
    dcfg = {
        "seed": args.seed + 7919 * (step0 + 1), "rank": rank, "corpus": args.corpus, "zh_share": args.zh_share,
        "tokenizer": args.tokenizer, "aux_chars": aux_chars, "aux_buckets": args.aux_buckets, "eos_id": eos,
        "renderer": args.renderer, "t0": t_start - args.sched_offset, "total_s": sched_total,
        "tiers": tiers, "batch": {"tiny": args.batch_tiny, "small": args.batch_small, "base": args.batch_base},
        "curriculum": args.curriculum, "min_max_chars": args.min_max_chars, "max_chars": parse_max_chars(args.max_chars),
        "max_target_tokens": args.max_target_tokens, "shuffle_share": args.shuffle_share,
        "scramble_share": args.scramble_share, "long_share": args.long_share,
        "long_font_slack": args.long_font_slack, "low_share": args.low_share, "glyph_grid": glyph_grid,
        "overfit": args.overfit, "overfit_chars": args.overfit_chars, "overfit_seed": args.seed,
    }
    loader = torch.utils.data.DataLoader(
        D.PageBatches(dcfg), batch_size=None, num_workers=args.workers, pin_memory=is_cuda,
        prefetch_factor=4 if args.workers else None, persistent_workers=args.workers > 0,
        multiprocessing_context="spawn" if args.workers else None)

    evalset = None
    if rank == 0:
        evalset = E.EvalSet.build(args.heldout, args.renderer, tok, args.eval_pages, args.greedy_per_bucket, seed=12345,
                                  tf_max_chars=args.eval_max_chars, langs=("en", "zh") if args.zh_share > 0 else ("en",))
        log({"event": "evalset", "tf_pages": {k: len(v) for k, v in evalset.tf.items()},
             "greedy_pages": {k: len(v) for k, v in evalset.greedy.items()}})

    def evaluate_tf() -> dict:
        trainer.eval()
        res = {}
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=True):
            for tier, pages in evalset.tf.items():
                imgs, tg = E.stack_pages(pages, dev)
                q = D.TIER_PX[tier.split("/")[0]] // D.CELL_PX
                ids, mask, labels = build_inputs(tg, q * (q + 1) + 1, prompt_ids, image_id, eos)
                out = model(ids, pixel_values=D.pixels(imgs), images_seq_mask=mask, labels=labels, return_logits=False)
                real = out.loss
                gi = D.pad_indices([D.glyph_targets(p[0], classes, args.glyph_grid) for p in pages]).to(dev) \
                    if glyph_grid > 0 else None
                # the stage heads on the real page's feature maps, kept by the hooks until the blank page's forward
                stage_acc = {f"glyph_acc_{name}": round(float((glg.argmax(-1) == gcl).float().mean()), 4)
                             for name, glg, gcl in (trainer.stage_glyphs(gi, q) if gi is not None else [])}
                blank = model(ids, pixel_values=D.pixels(torch.full_like(imgs, 255)), images_seq_mask=mask, labels=labels,
                              return_logits=False).loss
                lg = trainer.aux_head(out.vision_tokens).float()
                tgt = aux_dense([D.aux_targets(p[0], classes) for p in pages], lg.shape)
                res[tier] = {"real": round(float(real), 4), "blank": round(float(blank), 4),
                             "gap": round(float(blank - real), 4),
                             # does the encoder see which characters are in each cell? own page vs another page's
                             "aux_recall": round(aux_recall(lg, tgt), 4),
                             "aux_recall_other": round(aux_recall(lg.roll(1, 0), tgt), 4)}
                res[tier].update(stage_acc)
                if trainer.glyph_head is not None:  # top-1 of each glyph read back from its sub-cell
                    for key, vt in (("glyph_acc", out.vision_tokens), ("glyph_acc_other", out.vision_tokens.roll(1, 0))):
                        glg, gcl = trainer.glyph_head(vt, gi)
                        res[tier][key] = round(float((glg.argmax(-1) == gcl).float().mean()), 4)
        trainer.train()
        return res

    def save(final: bool, summary_rec: dict | None = None) -> None:
        if rank != 0:
            return
        ck = {"config": cfg.to_dict(), "trainer": trainer.state_dict(), "opt": opt.state_dict(), "step": step,
              "pages": pages_before + pages, "train_seconds": seconds_before + (time.time() - t_start)}
        tmp = os.path.join(args.state, "ckpt.pt.tmp")
        torch.save(ck, tmp)
        os.replace(tmp, os.path.join(args.state, "ckpt.pt"))
        # bf16 export in ≤ 14 MiB parts (official names) + the aux head: what comes back from the GPU machine.
        exp = os.path.join(args.state, "export")
        tmp_exp = exp + ".tmp"
        shutil.rmtree(tmp_exp, ignore_errors=True)
        model.save_pretrained(tmp_exp, dtype=torch.bfloat16, max_shard_bytes=14 * 2**20,
                              metadata={"pages_seen": str(pages_before + pages), "step": str(step)})
        for name, head in (("aux_head", trainer.aux_head), ("glyph_head", trainer.glyph_head),
                           ("stage_heads", trainer.stage_heads if len(trainer.stage_heads) else None)):
            if head is not None:
                torch.save({k: v.to(torch.bfloat16) for k, v in head.state_dict().items()},
                           os.path.join(tmp_exp, f"{name}.pt"))
        if final and summary_rec is not None:
            with open(os.path.join(tmp_exp, "summary.json"), "w", encoding="utf-8") as f:
                json.dump(summary_rec, f, indent=1, ensure_ascii=False)
        shutil.rmtree(exp, ignore_errors=True)
        os.replace(tmp_exp, exp)
        log({"event": "checkpoint", "final": final, "step": step, "pages": pages_before + pages})

    # ---------------------------------------------------------------- loop
    pages_local = 0
    step, pages, t_last_log, t_last_eval, t_last_ckpt = step0, 0, time.time(), time.time(), time.time()
    wait_s, comp_s, loss_acc, aux_acc, glyph_acc, n_acc, n_ce, shuf = 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0
    stage_acc = 0.0
    trainer.train()
    if rank == 0:
        log({"event": "eval", "step": step, "pages": pages_before, "tf": evaluate_tf()})
    it = iter(loader)
    t_loop = time.time()
    while True:
        elapsed = time.time() - t_start
        stop = (elapsed >= args.seconds or (args.steps and step - step0 >= args.steps)
                or (step % 10 == 0 and os.path.exists(os.path.join(args.state, "STOP"))))  # early stop on request
        if ddp:
            flag = torch.tensor([1.0 if stop else 0.0], device=dev)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            break
        t0 = time.time()
        batch = next(it)
        t1 = time.time()
        wait_s += t1 - t0
        tier = batch["tier"]
        imgs = batch["images"].to(dev, non_blocking=True)
        tg = batch["targets"].to(dev, non_blocking=True)
        aux_idx = batch["aux"].to(dev, non_blocking=True) if trainer.use_aux else None
        glyph_idx = batch["glyphs"].to(dev, non_blocking=True) if glyph_grid > 0 else None
        enc_only = time.time() - t_loop < args.encoder_seconds  # counted from the first step, not the set-up
        q = imgs.shape[-1] // D.CELL_PX
        ids, mask, labels = build_inputs(tg, q * (q + 1) + 1, prompt_ids, image_id, eos)
        pos, amask = gapped_positions(ids, q * (q + 1) + 1, args.pos_gap)
        ids = noisy_inputs(ids, labels, args.token_noise, eos)
        lr = lr_at(step - step0, (args.sched_offset + elapsed) / sched_total, args)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            ce, aux_logits, glyph, stages = net(ids, D.pixels(imgs), mask, labels, glyph_idx, enc_only, pos, amask)
            loss = 0.0
            if aux_logits is not None:
                al = aux_loss(aux_logits, aux_idx)
                loss = loss + args.aux_weight * al
                aux_acc = aux_acc + al.detach()
            if ce is not None:
                loss = loss + ce
            if glyph is not None:
                gl = F.cross_entropy(glyph[0].float(), glyph[1])
                loss = loss + args.glyph_weight * gl
                glyph_acc = glyph_acc + gl.detach()
            for _name, slg, scl in stages:
                sl = F.cross_entropy(slg.float(), scl)
                loss = loss + args.stage_glyph_weight * sl
                stage_acc = stage_acc + sl.detach()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(trainer.parameters(), 1.0)
        opt.step()
        step += 1
        pages_local += imgs.shape[0]
        pages = pages_local * world
        shuf += batch["shuffled"]
        if ce is not None:
            loss_acc = loss_acc + ce.detach()  # stays on the device: no host sync per step
            n_ce += 1
        n_acc += 1
        comp_s += time.time() - t1
        now = time.time()
        if rank == 0 and now - t_last_log >= 20:
            log({"event": "train", "step": step, "pages": pages_before + pages, "elapsed": round(now - t_start, 1),
                 "loss": round(float(loss_acc) / n_ce, 4) if n_ce else None, "aux": round(float(aux_acc) / n_acc, 3) if trainer.use_aux else None,
                 "glyph": round(float(glyph_acc) / n_acc, 3) if trainer.glyph_head is not None else None,
                 "stage_glyph": round(float(stage_acc) / n_acc / len(trainer.stage_heads), 3) if len(trainer.stage_heads) else None,
                 "encoder_only": enc_only, "lr": round(lr, 6),
                 "gnorm": round(float(gn), 3), "pages_per_s": round(pages / (now - t_loop), 1),
                 "data_wait": round(wait_s / max(1e-9, wait_s + comp_s), 3), "max_chars": batch["max_chars"],
                 "tier": tier, "mem_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if is_cuda else 0})
            t_last_log, loss_acc, aux_acc, glyph_acc, stage_acc, n_acc, n_ce = now, 0.0, 0.0, 0.0, 0.0, 0, 0
        if rank == 0 and now - t_last_eval >= args.eval_every:
            log({"event": "eval", "step": step, "pages": pages_before + pages, "elapsed": round(now - t_start, 1),
                 "tf": evaluate_tf()})
            t_last_eval = time.time()
        if now - t_last_ckpt >= args.ckpt_every:
            save(False)
            t_last_ckpt = time.time()

    train_seconds = time.time() - t_start
    if ddp:  # exact page count over all ranks (the running figure assumed equal batches)
        cnt = torch.tensor([float(pages_local)], device=dev)
        dist.all_reduce(cnt)
        pages = int(cnt.item())
    if rank == 0:
        tf = evaluate_tf()
        log({"event": "eval", "step": step, "pages": pages_before + pages, "elapsed": round(train_seconds, 1), "tf": tf})
        save(False)
        trainer.eval()
        t_g = time.time()
        greedy = E.greedy_precision(model, evalset, tok, prompt_ids, image_id, eos, dev, D.pixels)
        if args.overfit:  # can it read back the very pages it trained on?
            greedy["overfit"] = overfit_greedy(model, dcfg, tok, prompt_ids, image_id, eos, dev, args.renderer)
        summary = {"event": "summary", "step": step, "pages_run": pages, "pages_total": pages_before + pages,
                   "train_seconds_run": round(train_seconds, 1),
                   "train_seconds_total": round(seconds_before + train_seconds, 1),
                   "greedy_seconds": round(time.time() - t_g, 1), "tf": tf, "greedy": greedy}
        log(summary)
        save(True, summary)
    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    os._exit(0)  # DataLoader workers and renderer processes go with us


if __name__ == "__main__":
    main()
