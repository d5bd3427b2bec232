"""bf16 CUDA checks of the reference (run on the GPU machine from the repo root):
    python tools/reference/dev/cuda_smoke.py
1. the fixture model (tests/fixtures/ocr-small) in bf16 on CUDA vs its f32 fixtures (relative error);
2. a training step (bf16, AdamW) with and without gradient checkpointing, save/load round trip;
3. official-size random model: encode per mode, prefill, and decode speed with KV cache.
"""
import sys, time, torch
sys.path.insert(0, 'tools/reference')
from safetensors.torch import load_file
from optimem_ref import DeepseekOCR, OcrConfig, greedy_generate, normalize

dev = 'cuda'
torch.backends.cuda.matmul.allow_tf32 = False
fx = 'tests/fixtures'
pre = load_file(f'{fx}/preprocess.safetensors')
for dtype in (torch.float32, torch.bfloat16):
    m = DeepseekOCR.from_pretrained(f'{fx}/ocr-small', device=dev, dtype=dtype).eval()
    with torch.no_grad():
        for mode, src in (('tiny', pre['image_a_view_512']), ('base', pre['image_b_global_1024'])):
            ref = load_file(f'{fx}/ocr-small/encoder_{mode}.safetensors')['sequence']
            got = m.image_embeddings(normalize(src)[None].to(dev, dtype)).float().cpu()
            print(f'{dtype} encoder_{mode} sequence rel err', float((got - ref).norm() / ref.norm()))
        d = load_file(f'{fx}/ocr-small/decoder.safetensors')
        ids, mask = d['input_ids'].to(dev), d['images_seq_mask'].bool().to(dev)
        lg = m(ids[None], image_embeds=d['image_embeds'].to(dev, dtype), images_seq_mask=mask[None]).logits[0].cpu()
        print(f'{dtype} decoder logits rel err', float((lg - d['logits']).norm() / d['logits'].norm()))
        g = greedy_generate(m, ids, d['image_embeds'].to(dev, dtype), mask, max_new_tokens=64)
        print(f'{dtype} greedy matches fixture: {g == d["greedy_ids"].tolist()} (first diff at',
              next((i for i, (a, b) in enumerate(zip(g, d['greedy_ids'].tolist())) if a != b), None), ')')

d = {
 "vocab_size": 1024, "hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 128,
 "num_hidden_layers": 4, "num_attention_heads": 4, "n_routed_experts": 8,
 "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1, "bos_token_id": 0, "eos_token_id": 1,
 "vision": {"sam": {"embed_dim": 128, "depth": 4, "num_heads": 4, "global_attn_indexes": [1,3], "out_chans": 64, "net_2_chans": 128, "net_3_chans": 256},
            "clip": {"hidden_size": 256, "num_layers": 2, "num_heads": 4, "ffn_hidden_size": 1024}},
 "projector_config": {"projector_type": "linear", "input_dim": 512, "n_embed": 256}}
cfg = OcrConfig.from_dict(d)
B, S, n_img = 32, 640, 111
T = n_img + 300
for ckpt in (False, True):
    m = DeepseekOCR.from_config(cfg, seed=1, device=dev, dtype=torch.bfloat16)
    if ckpt:
        m.gradient_checkpointing_enable()
    x = torch.randn(B, 3, S, S, device=dev, dtype=torch.bfloat16)
    ids = torch.randint(2, 1000, (B, T), device=dev)
    mask = torch.zeros(B, T, dtype=torch.bool, device=dev); mask[:, 1:1 + n_img] = True
    labels = ids.clone(); labels[:, :1 + n_img] = -100
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    m.train(); torch.cuda.reset_peak_memory_stats()
    for it in range(4):
        torch.cuda.synchronize(); t = time.time()
        out = m(ids, pixel_values=x, images_seq_mask=mask, labels=labels, return_logits=False)
        out.loss.backward(); opt.step(); opt.zero_grad()
        torch.cuda.synchronize()
    print(f'train step B={B} S={S} T={T} ckpt={ckpt}: loss {float(out.loss):.3f}, {time.time()-t:.3f}s/step, '
          f'peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB')
m.eval()
with torch.no_grad():
    o1 = m(ids[:2], pixel_values=x[:2], images_seq_mask=mask[:2])
m.save_pretrained('/tmp/cs_model')
m2 = DeepseekOCR.from_pretrained('/tmp/cs_model', device=dev)
with torch.no_grad():
    o2 = m2(ids[:2], pixel_values=x[:2], images_seq_mask=mask[:2])
print('bf16 save/load max logit diff', float((o1.logits - o2.logits).abs().max()))

big = DeepseekOCR.from_config(OcrConfig.official(), seed=0, device=dev, dtype=torch.bfloat16).eval()
with torch.no_grad():
    for S in (512, 640, 1024, 1280):
        xx = torch.randn(1, 3, S, S, device=dev, dtype=torch.bfloat16)
        big.encode_images(xx); torch.cuda.synchronize(); t = time.time()
        v = big.encode_images(xx); torch.cuda.synchronize()
        print('official encode', S, tuple(v.shape), f'{(time.time()-t)*1e3:.1f} ms')
    ids = torch.randint(2, 128000, (1, 1200), device=dev)
    big(ids, logits_to_keep=1); torch.cuda.synchronize(); t = time.time()
    o = big(ids, logits_to_keep=1); torch.cuda.synchronize()
    print('official prefill 1200 tokens', f'{(time.time()-t)*1e3:.1f} ms')
    greedy_generate(big, ids[0, :300], max_new_tokens=8)
    torch.cuda.synchronize(); t = time.time()
    g = greedy_generate(big, ids[0, :300], max_new_tokens=128)
    torch.cuda.synchronize()
    print('official greedy decode', len(g), 'tokens', f'{len(g)/(time.time()-t):.1f} tok/s')
print('peak GiB', torch.cuda.max_memory_allocated() / 2**30)
