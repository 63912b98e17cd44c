#!/usr/bin/env python3
"""A dataset as an nnU-Net v2 raw dataset, for QUALITY.md's baseline on the same splits:
train + val -> imagesTr (fold 0 of splits_final.json is our train/val split), test ->
imagesTs.

    python tools/nnunet_export.py quality/data/ph2 $nnUNet_raw/Dataset501_PH2 RGB
    python tools/nnunet_export.py assets/hippocampus2d $nnUNet_raw/Dataset503_Hip2D MRI
    python tools/nnunet_export.py assets/hippocampus3d $nnUNet_raw/Dataset504_Hip3D MRI \
        RUN/split.json

A 2D folder dataset (images/, masks/, split.json): images become PNG (RGB kept as one file, as
nnU-Net's natural-image reader expects), masks 0/1 PNG; needs numpy and pillow. A Decathlon
folder (dataset.json listing NIfTI volumes) takes the split an `msa train --3d` run wrote;
its files are copied as they are, with their label values and names.
"""
import json
import os
import shutil
import sys

import numpy as np
from PIL import Image


def find_image(images, case):
    for f in os.listdir(images):
        if os.path.splitext(f)[0] == case:
            return os.path.join(images, f)
    raise SystemExit(f"{images}: no image for case {case}")


def export_volumes(src, dst, channel, split):
    with open(os.path.join(src, "dataset.json")) as f:
        described = json.load(f)
    listed = {os.path.basename(e["image"]).removesuffix(".nii.gz"): e
              for e in described["training"]}
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(dst, sub), exist_ok=True)
    groups = {"Tr": split["train"] + split["val"], "Ts": split["test"]}
    for tag, cases in groups.items():
        for case in cases:
            if case not in listed:
                raise SystemExit(f"{src}/dataset.json: no training entry for case {case}")
            entry = listed[case]
            shutil.copyfile(os.path.join(src, entry["image"]),
                            os.path.join(dst, f"images{tag}", f"{case}_0000.nii.gz"))
            shutil.copyfile(os.path.join(src, entry["label"]),
                            os.path.join(dst, f"labels{tag}", f"{case}.nii.gz"))
    labels = {name: int(value) for value, name in described["labels"].items()}
    return {"channel_names": {"0": channel}, "labels": labels, "file_ending": ".nii.gz",
            "numTraining": len(groups["Tr"])}


def main(src, dst, channel, split_path=None):
    with open(split_path or os.path.join(src, "split.json")) as f:
        split = json.load(f)
    if os.path.exists(os.path.join(src, "dataset.json")):
        write_meta(dst, export_volumes(src, dst, channel, split), split)
        return
    rgb = channel.upper() == "RGB"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(dst, sub), exist_ok=True)
    groups = {"Tr": split["train"] + split["val"], "Ts": split["test"]}
    for tag, cases in groups.items():
        for case in cases:
            im = Image.open(find_image(os.path.join(src, "images"), case))
            im = im.convert("RGB" if rgb else "L")
            im.save(os.path.join(dst, f"images{tag}", f"{case}_0000.png"))
            mask = np.asarray(Image.open(os.path.join(src, "masks", f"{case}.png")).convert("L"))
            Image.fromarray((mask > 0).astype(np.uint8)).save(
                os.path.join(dst, f"labels{tag}", f"{case}.png")
            )
    channels = {"0": "R", "1": "G", "2": "B"} if rgb else {"0": channel}
    meta = {
        "channel_names": channels,
        "labels": {"background": 0, "target": 1},
        "numTraining": len(groups["Tr"]),
        "file_ending": ".png",
    }
    write_meta(dst, meta, split)


def write_meta(dst, meta, split):
    with open(os.path.join(dst, "dataset.json"), "w") as f:
        json.dump(meta, f, indent=1)
    folds = [{"train": split["train"], "val": split["val"]}]
    with open(os.path.join(dst, "splits_final.json"), "w") as f:
        json.dump(folds, f, indent=1)
    print(f"{dst}: {meta['numTraining']} training ({len(split['val'])} validation), "
          f"{len(split['test'])} test")


if __name__ == "__main__":
    main(*sys.argv[1:5])
