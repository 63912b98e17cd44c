"""PyTorch reference timings for BENCHMARKS.md, measured the same way as `msa bench`:
random weights, one warm-up, then N timed runs; prints one JSON object.

    python bench/pytorch_sam.py encoder --preset vit_b --size 1024 --runs 3
    python bench/pytorch_sam.py decoder --preset vit_b --size 1024 --runs 20
    (both take --device cuda, --precision bf16 and --attention sdpa; see pytorch_options.py)
"""
import argparse
import json
import resource
import statistics
import time

import torch
from segment_anything import sam_model_registry

import pytorch_options

p = argparse.ArgumentParser()
p.add_argument("part", choices=["encoder", "decoder"])
p.add_argument("--preset", default="vit_b")
p.add_argument("--size", type=int, default=1024)
p.add_argument("--runs", type=int, default=3)
p.add_argument("--device", default="cpu")
pytorch_options.add_options(p)
a = p.parse_args()
autocast = pytorch_options.apply(a)

torch.manual_seed(0)
sam = sam_model_registry[a.preset]().eval().to(a.device)
if a.size != 1024:
    raise SystemExit("this script times the published 1024 input size only")
dev = torch.device(a.device)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(f):
    with torch.inference_mode(), autocast:
        f()
        sync()
        out = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            f()
            sync()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


if a.part == "encoder":
    x = torch.randn(1, 3, a.size, a.size, device=dev)
    times = timed(lambda: sam.image_encoder(x))
else:
    g = a.size // 16
    emb = torch.randn(1, 256, g, g, device=dev)
    pts = (torch.tensor([[[a.size * 0.4, a.size * 0.6]]], device=dev), torch.ones(1, 1, device=dev))

    def step():
        sparse, dense = sam.prompt_encoder(points=pts, boxes=None, masks=None)
        low, iou = sam.mask_decoder(image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=True)
        low.sum().item()

    times = timed(step)

res = {
    "part": a.part if a.part == "encoder" else "decoder_per_prompt",
    "impl": f"pytorch {torch.__version__}",
    "preset": a.preset, "size": a.size, "runs": len(times),
    "median_ms": statistics.median(times), "min_ms": min(times),
    "mean_ms": statistics.mean(times),
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "device": a.device, "threads": torch.get_num_threads(),
    "precision": a.precision, "attention": a.attention,
}
if dev.type == "cuda":
    res["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(res))
