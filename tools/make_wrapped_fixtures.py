"""Small PyTorch checkpoints in the wrappings training scripts produce, for the loader tests.

    python tools/make_wrapped_fixtures.py tests/fixtures
"""
import sys
from pathlib import Path

import torch

out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
torch.manual_seed(7)
sd = {
    "image_encoder.pos_embed": torch.randn(1, 2, 2, 4),
    "mask_decoder.iou_token.weight": torch.randn(1, 8),
}
torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, out / "wrapped_model.pth")
torch.save({"state_dict": sd, "optimizer": {"lr": 1e-4}}, out / "wrapped_state_dict.pth")
torch.save({k: v.half() for k, v in sd.items()}, out / "flat_f16.pth")
# A strided view saved as-is: the storage is larger than the tensor.
base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
torch.save({"sliced": base[1:3]}, out / "offset_view.pth")
print("ok")

# A PyTorch-MSA-style training checkpoint holding adapter weights under `state_dict`.
from safetensors.torch import load_file
msa = load_file(str(out / "msa_tiny.safetensors"))
adapters = {k: v for k, v in msa.items() if "_Adapter." in k}
torch.save({"epoch": 7, "state_dict": adapters, "best_tol": 0.5}, out / "msa_pytorch_adapters.pth")
print("ok", len(adapters))
