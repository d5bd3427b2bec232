"""f32 on CUDA vs the f32 CPU fixtures, with cuDNN TF32 convolutions on (PyTorch default) and off."""
import sys, torch
sys.path.insert(0, 'tools/reference')
from safetensors.torch import load_file
from optimem_ref import DeepseekOCR, normalize

torch.backends.cuda.matmul.allow_tf32 = False
pre = load_file('tests/fixtures/preprocess.safetensors')
m = DeepseekOCR.from_pretrained('tests/fixtures/ocr-small', device='cuda').eval()
for tf32 in (True, False):
    torch.backends.cudnn.allow_tf32 = tf32
    with torch.no_grad():
        for mode, src in (('tiny', pre['image_a_view_512']), ('base', pre['image_b_global_1024'])):
            ref = load_file(f'tests/fixtures/ocr-small/encoder_{mode}.safetensors')
            c = {}
            got = m.image_embeddings(normalize(src)[None].cuda(), collect=c).cpu()
            e = {k: float((c['global.' + k].cpu() - ref[k]).norm() / ref[k].norm()) for k in ('sam_out', 'projector_out')}
            print(f'cudnn.allow_tf32={tf32} {mode}: sequence rel err {float((got - ref["sequence"]).norm() / ref["sequence"].norm()):.2e}', e)
