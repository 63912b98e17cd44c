#!/usr/bin/env python3
"""Copies a Decathlon folder with, in its last N label volumes (the ones `--holdout N`
evaluates), every class erased from the axial slices where it covers fewer than MIN voxels.
`msa eval` draws one prompt per class and labelled slice, so on the copy it scores only the
slices where each class has a real cross-section. QUALITY.md uses it to ask how much of the
volumes' click weakness comes from the ends of each structure.

    python3 tools/trim_small_sections.py assets/hippocampus3d quality/trimmed --holdout 6 --min 20

Needs numpy and nibabel. The volumes must be stored RAS-like, so that the array's third
axis is the axial one (the hippocampus volumes are: their axis codes are R, A, S).
"""
import argparse
import glob
import os
import shutil

import nibabel as nib
import numpy as np


def trim(path, min_voxels):
    """Trims one label file in place; returns its labelled voxels before and after."""
    img = nib.load(path)
    if nib.aff2axcodes(img.affine)[2] not in "SI":
        raise SystemExit(f"{path}: the third array axis is not axial ({nib.aff2axcodes(img.affine)})")
    labels = np.asarray(img.dataobj).copy()
    before = np.count_nonzero(labels)
    for k in range(labels.shape[2]):
        section = labels[:, :, k]
        for c in np.unique(section[section > 0]):
            mask = section == c
            if mask.sum() < min_voxels:
                section[mask] = 0
    nib.save(nib.Nifti1Image(labels, img.affine, img.header), path)
    return before, np.count_nonzero(labels)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--holdout", type=int, required=True)
    ap.add_argument("--min", type=int, default=20, dest="min_voxels")
    args = ap.parse_args()
    os.makedirs(args.dst, exist_ok=True)
    for part in ("dataset.json", "imagesTr", "labelsTr"):
        src, dst = os.path.join(args.src, part), os.path.join(args.dst, part)
        if os.path.isdir(src):
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy(src, dst)
    for path in sorted(glob.glob(os.path.join(args.dst, "labelsTr", "*.nii*")))[-args.holdout:]:
        before, after = trim(path, args.min_voxels)
        print(f"{os.path.basename(path)}: {before} labelled voxels -> {after}")


if __name__ == "__main__":
    main()
