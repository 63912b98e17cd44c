"""Makes assets/hippocampus2d: 2D axial slices of the MSD Task04 Hippocampus subset (MRI,
CC-BY-SA 4.0) for `msa demo`, in the generic folder layout (images/<id>.png,
masks/<id>.png, split.json).

    python tools/make_hippocampus_2d.py ../shared/realdata/hippocampus assets/hippocampus2d

Per volume, three slices k of data[:, :, k] at 25/50/75% of the slices that hold the
hippocampus. The PNG's column is the first array axis (x) and its row the second (y).
Intensities are scaled per volume by its 0.5/99.5 percentiles to 0..255 (MSA-SPEC 1.4);
the mask is the whole hippocampus (labels 1 and 2) as 0/255. The first 20 volumes in sorted
order train (the last 2 of them as the validation split), the other 10 are the held-out test
split (whole volumes, so no patient is on two sides).
"""
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

src, out = Path(sys.argv[1]), Path(sys.argv[2])
(out / "images").mkdir(parents=True, exist_ok=True)
(out / "masks").mkdir(parents=True, exist_ok=True)
cases = sorted(p.name[: -len(".nii.gz")] for p in (src / "imagesTr").glob("*.nii.gz"))
split = {"train": [], "val": [], "test": []}
for n, case in enumerate(cases):
    vol = np.asarray(nib.load(src / "imagesTr" / f"{case}.nii.gz").dataobj, dtype=np.float32)
    lab = np.asarray(nib.load(src / "labelsTr" / f"{case}.nii.gz").dataobj)
    lo, hi = np.percentile(vol, [0.5, 99.5])
    scaled = np.clip((vol - lo) / max(hi - lo, 1e-8), 0, 1) * 255.0
    ks = [k for k in range(lab.shape[2]) if (lab[:, :, k] > 0).any()]
    for q in (0.25, 0.5, 0.75):
        k = ks[int(round(q * (len(ks) - 1)))]
        sid = f"{case}_z{k:02d}"
        Image.fromarray(np.round(scaled[:, :, k].T).astype(np.uint8)).save(out / "images" / f"{sid}.png")
        Image.fromarray(((lab[:, :, k] > 0).T * 255).astype(np.uint8)).save(out / "masks" / f"{sid}.png")
        split["train" if n < 18 else "val" if n < 20 else "test"].append(sid)
(out / "split.json").write_text(json.dumps(split, indent=1) + "\n")
print({k: len(v) for k, v in split.items()}, "slices")
