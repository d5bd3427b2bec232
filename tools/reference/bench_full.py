#!/usr/bin/env python3
"""Side-by-side runs of our Rust model (`optimem bench encoder|decoder`) and the PyTorch reference
(`optimem_ref`) on the SAME weights: speed ratios and parity, at any size up to the official one.

Subcommands (run from the repo root; `--help` on each lists every flag):

    make-weights --out DIR [--seed 0] [--dtype bf16|f32]
        An official-size model folder in the official `deepseek_vl_v2` layout: config.json, one
        model.safetensors with all 2,710 official tensor names and shapes (3,336,106,240 parameters;
        6.7 GB in bf16) from a seeded random init scaled so that activations stay O(1), and the
        DeepSeek-V3 tokenizer (tokenizer.json, or tokenizer.json.zst where no zstd decoder is at hand;
        the Rust loader reads either). Tensors are generated and written one at a time.

    encoder --model DIR --binary PATH [--image FILE] [--mode base] [--iters 3] [--device cpu|cuda]
        Our binary (`bench encoder --model DIR --image FILE --mode M --iters N --dump X --json`), then
        the reference DeepEncoder on the same page (f32 on CPU; bf16 on CUDA, and once more in f32 for
        parity). Prints pages/s of both, the ratio, peak memory, and the parity of the laid-out
        `sequence` and the global view's `projector_out`.

    decoder --model DIR --binary PATH [--prompt-tokens 1000] [--decode-tokens 64] [--device cpu|cuda]
        Our binary (`bench decoder --model DIR --seed S --dump X --json`), then the reference decoder
        on the prompt ids of our dump: prefill seconds, batch-1 decode tokens/s with its KV cache, the
        ratio, and the parity of `hidden` (final-norm output) and `logits_last` (last 8 positions).

`--profile` (encoder, decoder): after the timed runs, one more on each side, ours by model span (`bench ... --profile`,
the device synchronised around each span) and the reference by operator (torch.profiler, self device time).

The two sides run one after the other, never at once (the official decoder is ~13 GB in f32).
`--threads N` gives both sides N threads on CPU: torch.set_num_threads(N) here, and
RAYON_NUM_THREADS=N (+ CANDLE_NUM_THREADS=N) for the binary; candle 0.11's CPU matmul (gemm) and its
element-wise pool both read them (see tools/reference/README.md).

Parity: max|Δ| and max|Δ| / max|ref| (the "max relative error" of the tables) of ours against the
reference. Expected: ~1e-5 or less in f32 on CPU (the invariant is 1e-4), ~1e-2 in bf16.
Needs only torch, transformers, safetensors, numpy and Pillow (the GPU machine's stock image has them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

from optimem_ref.config import OcrConfig, official_config_dict  # noqa: E402
from optimem_ref.model import DeepseekOCR  # noqa: E402
from optimem_ref.preprocess import load_image, pixel_values, prepare_image  # noqa: E402
from optimem_ref.weights import _CLIP_QKV, _EXPERTS, rename_to_official, to_official  # noqa: E402

TOKENIZER_ZST = ROOT / "assets/tokenizers/deepseek-v3/tokenizer.json.zst"
# Internal (reference) module prefixes of the two halves of the model.
VISION_PREFIXES = ("sam_model.", "vision_model.", "projector.", "image_newline", "view_seperator")
DECODER_PREFIXES = ("language_model.", "lm_head.")
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16"}


def die(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------------------------------- make-weights
def init_std(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) of the random init of an official tensor: matrices and convs N(0, 1/fan_in) so that
    activations stay O(1) through every layer (the router too, so routing spreads); norm weights
    1 + N(0, 0.05) (not 1, so that a missing norm weight shows in the parity); biases, position and
    rel-pos tables, class/newline/separator vectors and token embeddings N(0, 0.02)."""
    last = name.rsplit(".", 1)[-1]
    is_norm = any(k in name for k in ("norm", "layrnorm", "neck.1.", "neck.3."))
    if len(shape) == 1:
        if is_norm and last == "weight":
            return 1.0, 0.05
        return 0.0, 0.02
    if any(k in name for k in ("pos_embed", "rel_pos", "position_embedding", "embed_tokens")):
        return 0.0, 0.02
    fan_in = int(np.prod(shape[1:]))
    return 0.0, fan_in ** -0.5


def official_shapes(cfg: OcrConfig) -> dict[str, tuple[int, ...]]:
    """Every official tensor name -> shape, from a meta-device model (no memory)."""
    with torch.device("meta"):
        model = DeepseekOCR(cfg)
    return {k: tuple(v.shape) for k, v in to_official(model.state_dict()).items()}


def write_safetensors_streaming(path: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype,
                                make, metadata: dict[str, str]) -> None:
    """Writes a safetensors file tensor by tensor: the header first (all shapes are known), then each
    tensor's bytes as `make(name, shape)` returns it, so only one tensor is in memory at a time."""
    names = sorted(shapes)
    elem = torch.empty((), dtype=dtype).element_size()
    header: dict = {"__metadata__": metadata}
    offset = 0
    for n in names:
        size = int(np.prod(shapes[n])) * elem
        header[n] = {"dtype": ST_DTYPES[dtype], "shape": list(shapes[n]), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for i, n in enumerate(names):
            t = make(n, shapes[n]).to(dtype).contiguous()
            f.write(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            if (i + 1) % 200 == 0 or i + 1 == len(names):
                print(f"  {i + 1}/{len(names)} tensors", file=sys.stderr, flush=True)
    tmp.replace(path)


def write_tokenizer(out: Path) -> str:
    """tokenizer.json decompressed from the committed .zst (python zstandard or the zstd CLI), else the
    .zst itself as tokenizer.json.zst (the Rust loader reads that when tokenizer.json is absent)."""
    data = TOKENIZER_ZST.read_bytes()
    try:
        import zstandard  # type: ignore[import-not-found]

        (out / "tokenizer.json").write_bytes(zstandard.ZstdDecompressor().stream_reader(data).read())
        return "tokenizer.json (python zstandard)"
    except ImportError:
        pass
    if shutil.which("zstd"):
        r = subprocess.run(["zstd", "-dc", str(TOKENIZER_ZST)], capture_output=True, check=False)
        if r.returncode == 0:
            (out / "tokenizer.json").write_bytes(r.stdout)
            return "tokenizer.json (zstd CLI)"
    shutil.copyfile(TOKENIZER_ZST, out / "tokenizer.json.zst")
    return "tokenizer.json.zst (no zstd decoder here; the Rust loader reads it)"


def cmd_make_weights(a: argparse.Namespace) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.config:
        with open(a.config, encoding="utf-8") as f:
            cfg_dict = json.load(f)
    else:
        cfg_dict = official_config_dict()
    dtype = DTYPES[a.dtype]
    cfg_dict["torch_dtype"] = "bfloat16" if dtype == torch.bfloat16 else "float32"
    cfg = OcrConfig.from_dict(cfg_dict)
    shapes = official_shapes(cfg)
    total = sum(int(np.prod(s)) for s in shapes.values())
    print(f"{len(shapes)} tensors, {total:,} parameters, {a.dtype} -> {out}", file=sys.stderr)
    index = {n: i for i, n in enumerate(sorted(shapes))}

    def make(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        g = torch.Generator().manual_seed(a.seed * 1_000_003 + index[name])
        mean, std = init_std(name, shape)
        return torch.randn(shape, generator=g, dtype=torch.float32).mul_(std).add_(mean)

    meta = {"format": "pt", "generator": "tools/reference/bench_full.py make-weights", "seed": str(a.seed),
            "torch": torch.__version__}
    t0 = time.perf_counter()
    write_safetensors_streaming(out / "model.safetensors", shapes, dtype, make, meta)
    with open(out / "config.json", "w", encoding="utf-8") as f:
        json.dump(cfg_dict, f, indent=2)
        f.write("\n")
    tok = write_tokenizer(out)
    size = (out / "model.safetensors").stat().st_size
    print(f"wrote config.json, model.safetensors ({size / 1e9:.2f} GB) and {tok} in {time.perf_counter() - t0:.0f} s")


# ---------------------------------------------------------------------------------------- loading
def load_part(directory: Path, part: str, device: str, dtype: torch.dtype) -> DeepseekOCR:
    """The reference model with only `part` ("vision" or "decoder") loaded from the folder's
    *.safetensors (official names), converted to `dtype` on `device` tensor by tensor; the other half
    stays on the meta device and costs no memory. A missing tensor is an error that names it."""
    from safetensors import safe_open

    cfg = OcrConfig.from_file(directory / "config.json")
    with torch.device("meta"):
        model = DeepseekOCR(cfg)
    prefixes = VISION_PREFIXES if part == "vision" else DECODER_PREFIXES
    wanted = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        die(f"no *.safetensors file in {directory}")
    handles = [safe_open(str(f), framework="pt", device="cpu") for f in files]
    where = {name: h for h in handles for name in h.keys()}

    def get(name: str) -> torch.Tensor:
        if name not in where:
            die(f"{directory}: checkpoint lacks tensor `{name}`")
        return where[name].get_tensor(name)

    def put(dst: torch.Tensor, name: str) -> None:
        src = get(name)
        if tuple(src.shape) != tuple(dst.shape):
            die(f"{directory}: tensor `{name}` has shape {list(src.shape)}, expected {list(dst.shape)}")
        dst.copy_(src)

    sd = {}
    for key, meta_t in wanted.items():
        t = torch.empty(meta_t.shape, dtype=dtype, device=device)
        m = _CLIP_QKV.match(key)
        e = _EXPERTS.match(key)
        if m:  # q/k/v rows of the fused official qkv_proj
            layer, which, kind = m.group(1), m.group(2), m.group(3)
            fused = get(f"model.vision_model.transformer.layers.{layer}.self_attn.qkv_proj.{kind}")
            t.copy_(torch.chunk(fused, 3, dim=0)["qkv".index(which)])
        elif e:  # stacked experts, filled expert by expert without a second copy
            layer, kind = e.group(1), e.group(2)
            base = f"model.layers.{layer}.mlp.experts"
            for j in range(t.shape[0]):
                if kind == "gate_up_proj":
                    inter = t.shape[1] // 2
                    put(t[j, :inter], f"{base}.{j}.gate_proj.weight")
                    put(t[j, inter:], f"{base}.{j}.up_proj.weight")
                else:
                    put(t[j], f"{base}.{j}.down_proj.weight")
        else:
            put(t, rename_to_official(key))
        sd[key] = t
    model.load_state_dict(sd, strict=False, assign=True)
    if part == "decoder":
        _rebuild_rope(model, device)
    left = [n for n, b in model.named_buffers() if b.is_meta and n.startswith(prefixes)]
    if left:
        die(f"reference buffers left on the meta device: {left}")
    return model.eval()


def _rebuild_rope(model: DeepseekOCR, device: str) -> None:
    from optimem_ref.decoder import Fp32RotaryEmbedding

    with torch.device(device):
        model.language_model.rotary_emb = Fp32RotaryEmbedding(model.language_model.config)


# ---------------------------------------------------------------------------------------- measuring
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class GpuMemSampler:
    """Peak GPU memory in use while a block runs, sampled with nvidia-smi every 50 ms, minus what was in
    use before (so it counts the CUDA context too, for both sides alike). None without nvidia-smi.
    Other processes on the same GPU would be counted: run on an otherwise idle GPU."""

    def __init__(self, enabled: bool, gpu: int = 0):
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.gpu = gpu
        self.peak = None

    def _used(self) -> int | None:
        r = subprocess.run(["nvidia-smi", f"--id={self.gpu}", "--query-gpu=memory.used",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True, check=False)
        try:
            return int(r.stdout.strip().splitlines()[0]) << 20
        except (ValueError, IndexError):
            return None

    def __enter__(self):
        if self.enabled:
            self.base = self._used()
            self.max = self.base
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._loop, daemon=True)
            self.thread.start()
        return self

    def _loop(self):
        while not self.stop.wait(0.05):
            u = self._used()
            if u is not None and (self.max is None or u > self.max):
                self.max = u

    def __exit__(self, *exc):
        if self.enabled:
            self.stop.set()
            self.thread.join()
            u = self._used()
            if u is not None and self.max is not None:
                self.max = max(self.max, u)
            if self.base is not None and self.max is not None:
                self.peak = self.max - self.base
        return False


def run_ours(cmd: list[str], threads: int | None, device: str) -> tuple[dict, int | None]:
    """Runs our binary; returns its --json object and the sampled GPU memory peak (CUDA)."""
    env = dict(os.environ)
    if threads:
        env["RAYON_NUM_THREADS"] = str(threads)
        env["CANDLE_NUM_THREADS"] = str(threads)
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    with GpuMemSampler(device.startswith("cuda")) as mem:
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if r.returncode != 0:
        die(f"our binary failed (exit {r.returncode}); its error is above")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        die(f"no JSON line in the binary's output:\n{r.stdout}")
    return json.loads(lines[-1]), mem.peak


def parity(ours: torch.Tensor, ref: torch.Tensor) -> dict:
    ours, ref = ours.double().cpu(), ref.double().cpu()
    if ours.shape != ref.shape:
        return {"shape_ours": list(ours.shape), "shape_ref": list(ref.shape)}
    d = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    return {"max_abs": d, "max_ref": scale, "max_rel": d / scale if scale else float("inf")}


def fmt_parity(p: dict) -> str:
    if "max_abs" not in p:
        return f"shape mismatch: ours {p['shape_ours']} vs reference {p['shape_ref']} | | "
    return f"{p['max_abs']:.3e} | {p['max_ref']:.3e} | **{p['max_rel']:.3e}**"


def gib(b: float | None) -> str:
    return "n/a" if b is None else f"{b / (1 << 30):.2f} GiB"


def host_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def setup_torch(a: argparse.Namespace) -> tuple[str, torch.dtype]:
    if a.threads:
        torch.set_num_threads(a.threads)
    device = a.device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            die("--device cuda but torch sees no GPU")
        # f32 means f32: no TF32 in matmuls or convolutions (the fixtures README measured 4e-4 with it).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    dtype = DTYPES[a.ref_dtype] if a.ref_dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    return device, dtype


def ratio(ours: float, ref: float) -> str:
    return f"**{ours / ref:.2f}×**" if ref > 0 else "n/a"


def ref_memory(device: str, mem: GpuMemSampler) -> str:
    if device.startswith("cuda"):
        return (f"{gib(mem.peak)} (nvidia-smi); torch max allocated "
                f"{gib(torch.cuda.max_memory_allocated())}, reserved {gib(torch.cuda.max_memory_reserved())}")
    return f"{gib(host_peak_rss())} (RSS)"


def ours_memory(device: str, j: dict, gpu_peak: int | None) -> str:
    if device.startswith("cuda"):
        return f"{gib(gpu_peak)} (nvidia-smi); host RSS {gib(j.get('peak_rss_bytes'))}"
    return f"{gib(j.get('peak_rss_bytes'))} (RSS)"


def free_model(model) -> None:
    del model
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def write_json(path: str | None, result: dict) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


# ---------------------------------------------------------------------------------------- encoder
def torch_profile(fn, device: str, rows: int = 20) -> str:
    """One more call of `fn` under torch.profiler: its operators by self device time (CPU time on the CPU)."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with torch.inference_mode(), profile(activities=acts) as prof:
        fn()
        sync(device)
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)


def ours_profile(ours: dict) -> str:
    """Our binary's `--profile` rows as a markdown table."""
    rows = ours.get("profile") or []
    total = sum(r["self_ms"] for r in rows) or 1.0
    out = ["| span (ours) | calls | total ms | self ms | self share |", "|---|---|---|---|---|"]
    out += [f"| {r['name']} | {r['calls']} | {r['total_ms']:.2f} | {r['self_ms']:.2f} | "
            f"{100 * r['self_ms'] / total:.1f} % |" for r in rows]
    return "\n".join(out)


def synthetic_page(path: Path) -> None:
    """The page `optimem bench encoder` draws without --image: 1191x1684 gray, dark dashes on white."""
    from PIL import Image

    y, x = np.mgrid[0:1684, 0:1191]
    page = np.where(((y // 6) % 4 == 0) & ((x // 5) % 7 != 0), 20, 250).astype(np.uint8)
    Image.fromarray(page, mode="L").save(path)


def ref_encode(model, img, mode: str, device: str, dtype: torch.dtype, collect: dict | None):
    """Preprocess (Pillow) and encode one page; returns (preprocess s, encode s, sequence, prepared)."""
    t0 = time.perf_counter()
    prepared = prepare_image(img, mode)
    t1 = time.perf_counter()
    glob, tiles = pixel_values(prepared)
    glob = glob.to(device=device, dtype=dtype)
    tiles = None if tiles is None else tiles.to(device=device, dtype=dtype)
    seq = model.image_embeddings(glob, tiles, prepared.grid, collect=collect)
    sync(device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, seq, prepared


def cmd_encoder(a: argparse.Namespace) -> None:
    device, dtype = setup_torch(a)
    model_dir = Path(a.model)
    work = Path(tempfile.mkdtemp(prefix="bench_full_"))
    image = Path(a.image) if a.image else work / "synthetic_page.png"
    if not a.image:
        synthetic_page(image)
    warmup = a.warmup if a.warmup is not None else int(device.startswith("cuda"))
    dump = work / "encoder_dump.safetensors"
    ours, ours_gpu = run_ours([a.binary, "bench", "encoder", "--model", str(model_dir), "--image", str(image),
                               "--mode", a.mode, "--iters", str(a.iters), "--warmup", str(warmup),
                               "--dump", str(dump), "--json"] + (["--profile"] if a.profile else []),
                              a.threads, device)
    if ours["device"].split(":")[0] != device.split(":")[0]:
        print(f"warning: our binary ran on {ours['device']}, the reference on {device}", file=sys.stderr)

    from safetensors.torch import load_file

    d = load_file(str(dump))
    img = load_image(image)
    with GpuMemSampler(device.startswith("cuda")) as mem:
        model = load_part(model_dir, "vision", device, dtype)
        pre = enc = 0.0
        enc_min = float("inf")
        first = None
        with torch.inference_mode():
            for i in range(warmup + a.iters):
                collect = {} if first is None else None
                p, e, seq, prepared = ref_encode(model, img, a.mode, device, dtype, collect)
                if i >= warmup:
                    pre, enc, enc_min = pre + p, enc + e, min(enc_min, e)
                if first is None:
                    first = (seq.float().cpu(), collect["global.projector_out"].float().cpu(), prepared)
        ref_prof = torch_profile(lambda: ref_encode(model, img, a.mode, device, dtype, None), device) \
            if a.profile else None
    seq_ref, proj_ref, prepared = first
    ref_mem = ref_memory(device, mem)
    ref = {"preprocess_s": pre / a.iters, "encode_mean_s": enc / a.iters, "encode_min_s": enc_min,
           "tokens": seq_ref.shape[0]}
    ref["pages_per_s"] = 1.0 / (ref["preprocess_s"] + ref["encode_mean_s"])

    view_ref = torch.from_numpy(np.asarray(prepared.global_view.convert("RGB"), dtype=np.uint8).copy())
    view_diff = int((view_ref.int() - d["global_view"].int()).abs().amax(-1).ne(0).sum()) \
        if view_ref.shape == d["global_view"].shape else -1
    checks = {"sequence": parity(d["sequence"], seq_ref), "projector_out": parity(d["projector_out"], proj_ref)}
    if view_diff != 0 and prepared.grid is None:
        # Pillow here made another global view than ours: also compare on OUR pixels, so that the
        # model's parity is not hidden behind a preprocessing difference.
        with torch.inference_mode():
            px = ((d["global_view"].float() / 255.0 - 0.5) / 0.5).permute(2, 0, 1)[None].to(device, dtype)
            checks["sequence (our pixels)"] = parity(d["sequence"], model.image_embeddings(px).float().cpu())
    free_model(model)
    f32_checks = {}
    if device.startswith("cuda") and dtype != torch.float32 and not a.no_f32_check:
        with torch.inference_mode():
            m32 = load_part(model_dir, "vision", device, torch.float32)
            _, _, seq32, _ = ref_encode(m32, img, a.mode, device, torch.float32, None)
            seq32 = seq32.float().cpu()
            free_model(m32)
        f32_checks = {"ours vs reference f32": parity(d["sequence"], seq32),
                      f"reference {a.ref_dtype or 'bf16'} vs reference f32": parity(seq_ref, seq32)}

    threads = a.threads or f"default (torch {torch.get_num_threads()})"
    ref_dt = str(dtype).replace("torch.", "")
    lines = [
        f"### encoder, mode {a.mode}, {a.iters} timed page(s) after {warmup} warm-up, image {image.name}",
        f"weights: {model_dir} · threads: {threads}",
        "",
        "| | ours (candle) | PyTorch reference | speed ours / reference |",
        "|---|---|---|---|",
        f"| device, dtype | {ours['device']} {ours['dtype']} | {device} {ref_dt} | |",
        f"| tokens per page | {ours['tokens']} | {ref['tokens']} | |",
        f"| preprocess s/page | {ours['preprocess_s']:.4f} | {ref['preprocess_s']:.4f} | |",
        f"| encode s/page (mean) | {ours['encode_mean_s']:.4f} | {ref['encode_mean_s']:.4f} | "
        f"{ratio(ref['encode_mean_s'], ours['encode_mean_s'])} |",
        f"| encode s/page (min) | {ours['encode_min_s']:.4f} | {ref['encode_min_s']:.4f} | |",
        f"| pages/s | {ours['pages_per_s']:.3f} | {ref['pages_per_s']:.3f} | {ratio(ours['pages_per_s'], ref['pages_per_s'])} |",
        f"| peak memory | {ours_memory(device, ours, ours_gpu)} | {ref_mem} | |",
        "",
        f"global view pixels differing from the reference's Pillow preprocessing: {view_diff} "
        f"(-1 = different sizes)",
        "",
        "| parity (ours − reference) | max abs Δ | max abs ref | max rel err |",
        "|---|---|---|---|",
    ]
    lines += [f"| {k} | {fmt_parity(v)} |" for k, v in checks.items()]
    lines += [f"| {k}: sequence | {fmt_parity(v)} |" for k, v in f32_checks.items()]
    if a.profile:
        lines += ["", "one more page, ours by model span (device synchronised around each):", ours_profile(ours),
                  "", "one more page, the reference by operator (torch.profiler):", ref_prof]
    print("\n".join(lines))
    write_json(a.json_out, {"bench": "encoder", "ours": ours, "ours_gpu_peak_bytes": ours_gpu, "reference": ref,
                            "reference_memory": ref_mem, "parity": checks, "parity_f32": f32_checks,
                            "global_view_pixels_differing": view_diff})
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------- decoder
def ref_decode(model, ids: torch.Tensor, n_decode: int, kept: int, device: str):
    """Prefill (timed from the embeddings, as ours) and `n_decode` batch-1 greedy steps with the KV cache.
    Returns (prefill s, decode s, hidden [T, H], logits_last [kept, V], decoded ids, KV bytes/position)."""
    lm = model.language_model
    emb = lm.embed_tokens(ids[None].to(device))
    sync(device)
    t0 = time.perf_counter()
    out = lm(inputs_embeds=emb, use_cache=True)
    hidden = out.last_hidden_state[0]
    logits = model.lm_head(hidden[-kept:]).float()
    nxt = int(torch.argmax(logits[-1]))
    t1 = time.perf_counter()
    cache = out.past_key_values
    decoded = []
    for _ in range(n_decode):
        decoded.append(nxt)
        o = lm(inputs_embeds=lm.embed_tokens(torch.tensor([[nxt]], device=device)), past_key_values=cache,
               use_cache=True)
        cache = o.past_key_values
        nxt = int(torch.argmax(model.lm_head(o.last_hidden_state[0, -1]).float()))
    t2 = time.perf_counter()
    kv = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                kv += t.numel() * t.element_size()
    positions = ids.numel() + n_decode
    return t1 - t0, t2 - t1, hidden, logits, decoded, kv / positions


def span(runs) -> str:
    """'min–max' of timed runs, or '' for fewer than two."""
    if not runs or len(runs) < 2:
        return ""
    return f"{min(runs):.4f}–{max(runs):.4f}"


def cmd_decoder(a: argparse.Namespace) -> None:
    if a.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    device, dtype = setup_torch(a)
    model_dir = Path(a.model)
    work = Path(tempfile.mkdtemp(prefix="bench_full_"))
    dump = work / "decoder_dump.safetensors"
    ours, ours_gpu = run_ours([a.binary, "bench", "decoder", "--model", str(model_dir),
                               "--prompt-tokens", str(a.prompt_tokens), "--decode-tokens", str(a.decode_tokens),
                               "--warmup", str(a.warmup), "--repeat", str(a.repeat), "--seed", str(a.seed),
                               "--dump", str(dump), "--json"] + (["--profile"] if a.profile else []),
                              a.threads, device)
    from safetensors.torch import load_file

    d = load_file(str(dump))
    ids = d["ids"].long()
    kept = d["logits_last"].shape[0]
    if device.startswith("cuda"):
        # As the reference's greedy_generate: cuDNN SDPA builds a plan per key length during decoding.
        torch.backends.cuda.enable_cudnn_sdp(False)
    with GpuMemSampler(device.startswith("cuda")) as mem:
        model = load_part(model_dir, "decoder", device, dtype)
        pre_runs, dec_runs = [], []
        with torch.inference_mode():
            for i in range(a.warmup + a.repeat):
                pre_s, dec_s, hidden, logits, decoded, kv_per_pos = ref_decode(model, ids, a.decode_tokens, kept,
                                                                              device)
                if i == 0:
                    first = (hidden.float().cpu(), logits.float().cpu())
                if i >= a.warmup:
                    pre_runs.append(pre_s)
                    dec_runs.append(dec_s)
            ref_prof = torch_profile(lambda: ref_decode(model, ids, 0, kept, device), device) if a.profile else None
        # The median of the timed runs, as ours reports (this machine's timings vary by ±15 % run to run).
        pre_s, dec_s = statistics.median(pre_runs), statistics.median(dec_runs)
    hidden_ref, logits_ref = first
    ref_mem = ref_memory(device, mem)
    free_model(model)
    ours_dec = d["decoded"].tolist()
    agree = next((i for i, (x, y) in enumerate(zip(ours_dec, decoded)) if x != y), len(decoded))
    checks = {"hidden": parity(d["hidden"], hidden_ref), "logits_last": parity(d["logits_last"], logits_ref)}
    f32_checks = {}
    if device.startswith("cuda") and dtype != torch.float32 and not a.no_f32_check:
        with torch.inference_mode():
            m32 = load_part(model_dir, "decoder", device, torch.float32)
            _, _, h32, l32, _, _ = ref_decode(m32, ids, 0, kept, device)
            h32, l32 = h32.float().cpu(), l32.float().cpu()
            free_model(m32)
        f32_checks = {"ours vs reference f32: hidden": parity(d["hidden"], h32),
                      "ours vs reference f32: logits_last": parity(d["logits_last"], l32),
                      "reference bf16 vs f32: hidden": parity(hidden_ref, h32),
                      "reference bf16 vs f32: logits_last": parity(logits_ref, l32)}
    ref = {"prefill_s": pre_s, "prefill_runs_s": pre_runs, "decode_s": dec_s, "decode_runs_s": dec_runs,
           "decode_tokens_per_s": a.decode_tokens / dec_s,
           "prefill_tokens_per_s": a.prompt_tokens / pre_s, "kv_bytes_per_1000_tokens": kv_per_pos * 1000}
    threads = a.threads or f"default (torch {torch.get_num_threads()})"
    ref_dt = str(dtype).replace("torch.", "")
    lines = [
        f"### decoder, prompt {a.prompt_tokens} tokens (seed {a.seed}), {a.decode_tokens} decode steps at batch 1, "
        f"{a.warmup} warm-up run(s), median of {a.repeat} timed run(s) on each side",
        f"weights: {model_dir} · threads: {threads}",
        "",
        "| | ours (candle) | PyTorch reference | speed ours / reference |",
        "|---|---|---|---|",
        f"| device, dtype | {ours['device']} {ours['dtype']} | {device} {ref_dt} | |",
        f"| prefill s | {ours['prefill_s']:.4f} | {ref['prefill_s']:.4f} | "
        f"{ratio(ref['prefill_s'], ours['prefill_s'])} |",
        f"| prefill s, range | {span(ours.get('prefill_runs_s'))} | {span(pre_runs)} | |",
        f"| prefill tokens/s | {ours['prefill_tokens_per_s']:.1f} | {ref['prefill_tokens_per_s']:.1f} | |",
        f"| decode tokens/s | {ours['decode_tokens_per_s']:.2f} | {ref['decode_tokens_per_s']:.2f} | "
        f"{ratio(ours['decode_tokens_per_s'], ref['decode_tokens_per_s'])} |",
        f"| decode s, range | {span(ours.get('decode_runs_s'))} | {span(dec_runs)} | |",
        f"| KV bytes per 1,000 tokens | {ours['kv_bytes_per_1000_tokens']:,} | {ref['kv_bytes_per_1000_tokens']:,.0f} | |",
        f"| peak memory | {ours_memory(device, ours, ours_gpu)} | {ref_mem} | |",
        "",
        f"greedy tokens equal to the reference's: the first {agree} of {len(decoded)}",
        "",
        "| parity (ours − reference) | max abs Δ | max abs ref | max rel err |",
        "|---|---|---|---|",
    ]
    lines += [f"| {k} | {fmt_parity(v)} |" for k, v in checks.items()]
    lines += [f"| {k} | {fmt_parity(v)} |" for k, v in f32_checks.items()]
    if a.profile:
        lines += ["", "one more prefill, ours by model span (device synchronised around each):", ours_profile(ours),
                  "", "one more prefill, the reference by operator (torch.profiler):", ref_prof]
    print("\n".join(lines))
    write_json(a.json_out, {"bench": "decoder", "ours": ours, "ours_gpu_peak_bytes": ours_gpu, "reference": ref,
                            "reference_memory": ref_mem, "parity": checks, "parity_f32": f32_checks,
                            "greedy_tokens_agreeing": agree})
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------- CLI
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-weights", help="official-size random-weight model folder")
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    m.add_argument("--config", help="another config.json to use instead of the official one (small tests)")
    m.set_defaults(func=cmd_make_weights)

    def common(s):
        s.add_argument("--model", required=True, help="model folder (official layout)")
        s.add_argument("--binary", required=True, help="the optimem binary (CUDA build on the GPU machine)")
        s.add_argument("--device", default="cpu", help="cpu or cuda (reference side; ours picks its own)")
        s.add_argument("--ref-dtype", choices=sorted(DTYPES), help="reference dtype (default: f32 on CPU, bf16 on CUDA)")
        s.add_argument("--threads", type=int, help="CPU threads for both sides")
        s.add_argument("--no-f32-check", action="store_true", help="CUDA: skip the second reference run in f32")
        s.add_argument("--json-out", help="also write every figure to this JSON file")
        s.add_argument("--keep", action="store_true", help="keep the temporary dump folder")
        s.add_argument("--profile", action="store_true",
                       help="after the timed runs, one more on each side by model span (ours) / operator (torch)")

    e = sub.add_parser("encoder", help="DeepEncoder: ours vs the reference")
    common(e)
    e.add_argument("--image", help="PNG/JPEG page (default: our synthetic page)")
    e.add_argument("--mode", default="base", choices=["tiny", "small", "base", "large", "gundam"])
    e.add_argument("--iters", type=int, default=3)
    e.add_argument("--warmup", type=int, help="untimed pages first (default: 1 on CUDA, 0 on CPU)")
    e.set_defaults(func=cmd_encoder)
    d = sub.add_parser("decoder", help="MoE decoder: ours vs the reference")
    common(d)
    d.add_argument("--prompt-tokens", type=int, default=1000)
    d.add_argument("--decode-tokens", type=int, default=64)
    d.add_argument("--warmup", type=int, default=1, help="untimed prefill + decode runs first")
    d.add_argument("--repeat", type=int, default=1, help="timed runs on each side; the medians are compared")
    d.add_argument("--seed", type=int, default=0, help="seed of the prompt ids (ours draws them)")
    d.set_defaults(func=cmd_decoder)
    a = p.parse_args()
    if getattr(a, "binary", None) and not (Path(a.binary).is_file() and os.access(a.binary, os.X_OK)):
        die(f"--binary {a.binary} is not an executable file")
    if getattr(a, "model", None) and not (Path(a.model) / "config.json").is_file():
        die(f"--model {a.model} has no config.json")
    if getattr(a, "iters", 1) < 1 or getattr(a, "prompt_tokens", 1) < 1 or getattr(a, "decode_tokens", 1) < 1:
        die("--iters, --prompt-tokens and --decode-tokens must be at least 1")
    a.func(a)


if __name__ == "__main__":
    main()
