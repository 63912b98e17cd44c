"""Golden outputs of torch.nn.functional.interpolate for the resizes msa does as matrices:
pos_embed (bicubic), relative-position tables (linear), mask logits (bilinear).

    python tools/make_resize_fixtures.py tests/fixtures
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
torch.manual_seed(11)
T = {}
pos = torch.randn(1, 8, 8, 16)
T["pos.in"] = pos
for n in (10, 5):
    T[f"pos.out{n}"] = F.interpolate(pos.permute(0, 3, 1, 2), size=(n, n), mode="bicubic",
                                     align_corners=False).permute(0, 2, 3, 1).contiguous()
rel = torch.randn(15, 16)
T["rel.in"] = rel
for n in (19, 7):
    T[f"rel.out{n}"] = F.interpolate(rel.reshape(1, 15, -1).permute(0, 2, 1), size=n,
                                     mode="linear").reshape(-1, n).permute(1, 0).contiguous()
img = torch.randn(2, 3, 7, 5)
T["bil.in"] = img
T["bil.up"] = F.interpolate(img, (11, 13), mode="bilinear", align_corners=False)
big = torch.randn(2, 3, 20, 17)
T["bil.big"] = big
T["bil.down"] = F.interpolate(big, (6, 9), mode="bilinear", align_corners=False)
save_file(T, out / "resize_cases.safetensors")
print("ok")
