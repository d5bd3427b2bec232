"""bf16 CUDA smoke test of the reference: forward + backward + save/load at a small config and a
full-size (official) decoder/encoder timing. Run on the GPU machine:
    python tools/reference/dev/cuda_smoke.py
"""
import sys, time, torch
sys.path.insert(0, 'tools/reference')
from optimem_ref.config import OcrConfig
from optimem_ref.model import DeepseekOCR

dev = 'cuda'
d = {
 "vocab_size": 1024, "hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 128,
 "num_hidden_layers": 4, "num_attention_heads": 4, "n_routed_experts": 8,
 "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1, "bos_token_id": 0, "eos_token_id": 1,
 "vision": {"sam": {"embed_dim": 128, "depth": 4, "num_heads": 4, "global_attn_indexes": [1,3], "out_chans": 64, "net_2_chans": 128, "net_3_chans": 256},
            "clip": {"hidden_size": 256, "num_layers": 2, "num_heads": 4, "ffn_hidden_size": 1024}},
 "projector_config": {"projector_type": "linear", "input_dim": 512, "n_embed": 256}}
cfg = OcrConfig.from_dict(d)
m = DeepseekOCR.from_config(cfg, seed=1, device=dev, dtype=torch.bfloat16)
B, S = 16, 640
x = torch.randn(B, 3, S, S, device=dev, dtype=torch.bfloat16)
n_img = 111
T = n_img + 200
ids = torch.randint(2, 1000, (B, T), device=dev)
mask = torch.zeros(B, T, dtype=torch.bool, device=dev); mask[:, 1:1 + n_img] = True
labels = ids.clone(); labels[:, :1 + n_img] = -100
opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
m.train()
for it in range(3):
    torch.cuda.synchronize(); t = time.time()
    out = m(ids, pixel_values=x, images_seq_mask=mask, labels=labels, return_logits=False)
    out.loss.backward(); opt.step(); opt.zero_grad()
    torch.cuda.synchronize(); print('train step', it, float(out.loss), f'{time.time()-t:.3f}s', tuple(out.vision_tokens.shape))
print('peak GiB', torch.cuda.max_memory_allocated() / 2**30)
m.eval()
with torch.no_grad():
    o1 = m(ids[:2], pixel_values=x[:2], images_seq_mask=mask[:2])
m.save_pretrained('/tmp/cs_model')
m2 = DeepseekOCR.from_pretrained('/tmp/cs_model', device=dev)
with torch.no_grad():
    o2 = m2(ids[:2], pixel_values=x[:2], images_seq_mask=mask[:2])
print('reload max diff', float((o1.logits - o2.logits).abs().max()), o2.logits.dtype)

# official-size encode + prefill in bf16 with random weights
with torch.device('meta'):
    pass
big = DeepseekOCR.from_config(OcrConfig.official(), seed=0, device=dev, dtype=torch.bfloat16)
big.eval()
with torch.no_grad():
    for S in (512, 640, 1024, 1280):
        xx = torch.randn(1, 3, S, S, device=dev, dtype=torch.bfloat16)
        big.encode_images(xx); torch.cuda.synchronize(); t = time.time()
        v = big.encode_images(xx); torch.cuda.synchronize()
        print('official encode', S, tuple(v.shape), f'{time.time()-t:.3f}s', float(v.float().std()))
    ids = torch.randint(2, 128000, (1, 1200), device=dev)
    big(ids); torch.cuda.synchronize(); t = time.time()
    o = big(ids, logits_to_keep=1); torch.cuda.synchronize()
    print('official prefill 1200', f'{time.time()-t:.3f}s', tuple(o.logits.shape))
print('peak GiB', torch.cuda.max_memory_allocated() / 2**30)
