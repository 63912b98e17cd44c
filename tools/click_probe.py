#!/usr/bin/env python3
"""Do a model's corrective clicks do what they ask? QUALITY.md's probe of why more clicks stop
helping (or hurt) adapted LiteMedSAM.

    python tools/click_probe.py DATA [ADAPTERS] [--clicks 8] [--box]

DATA is a folder dataset with split.json (images/, masks/); its test cases are clicked
through with msa's Python module (no mask prompt): the first click at the target's deepest
point, each next one at the deepest point of the largest error region (positive where the
target was missed, negative where the mask spills), as `msa eval --clicks` places them.
With --box the box of the target comes first and every click corrects it.

Prints, per click number, the mean Dice, how often the clicked pixel ends up with the label
the click asked for ("obeyed"), and how often the click made Dice worse.
"""
import argparse
import json
import os

import numpy as np
from PIL import Image
from scipy import ndimage

import msa

FOUR = ndimage.generate_binary_structure(2, 1)


def deepest(region):
    """(x, y) of the pixel farthest from the region's border (the image edge counts)."""
    d = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(d), d.shape)
    return int(x), int(y)


def largest(mask):
    lab, n = ndimage.label(mask, structure=FOUR)
    if n == 0:
        return None
    sizes = ndimage.sum(mask, lab, range(1, n + 1))
    return lab == 1 + int(np.argmax(sizes))


def next_click(pred, target):
    missed, spilled = largest(target & ~pred), largest(pred & ~target)
    if missed is None and spilled is None:
        return None
    if spilled is None or (missed is not None and missed.sum() >= spilled.sum()):
        return (*deepest(missed), 1)
    return (*deepest(spilled), 0)


def dice(a, b):
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * (a & b).sum() / s


def probe(model, image, target, clicks, box):
    e = model.embed(image)
    points, labels, rows = [], [], []
    ys, xs = np.nonzero(target)
    bbox = [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())] if box else None
    if not box:
        x, y = deepest(target)
        points, labels = [[x, y]], [1]
    pred = model.predict(e, points=points or None, labels=labels or None, box=bbox)[0]
    rows.append((dice(pred, target), None, None))
    for _ in range(clicks - 1 + box):
        c = next_click(pred, target)
        if c is None:
            break
        points.append([c[0], c[1]])
        labels.append(c[2])
        before = dice(pred, target)
        pred = model.predict(e, points=points, labels=labels, box=bbox)[0]
        obeyed = bool(pred[c[1], c[0]]) == bool(c[2])
        rows.append((dice(pred, target), obeyed, dice(pred, target) < before - 1e-3))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("adapters", nargs="?")
    ap.add_argument("--clicks", type=int, default=8)
    ap.add_argument("--box", action="store_true")
    a = ap.parse_args()
    model = msa.Model("lite_medsam", adapters=a.adapters)
    split = json.load(open(os.path.join(a.data, "split.json")))
    masks = {os.path.splitext(f)[0]: f for f in os.listdir(os.path.join(a.data, "masks"))}
    images = {os.path.splitext(f)[0]: f for f in os.listdir(os.path.join(a.data, "images"))}
    per_click = {}
    for case in split["test"]:
        image = np.asarray(Image.open(os.path.join(a.data, "images", images[case])).convert("RGB"))
        target = np.asarray(Image.open(os.path.join(a.data, "masks", masks[case])).convert("L")) > 0
        for k, row in enumerate(probe(model, image, target, a.clicks, a.box)):
            per_click.setdefault(k, []).append(row)
    print("| clicks | Dice | click obeyed | Dice fell | cases |")
    print("| --- | --- | --- | --- | --- |")
    for k, rows in sorted(per_click.items()):
        d = np.mean([r[0] for r in rows])
        ob = [r[1] for r in rows if r[1] is not None]
        fell = [r[2] for r in rows if r[2] is not None]
        n = k + 1 if not a.box else k
        label = f"box + {n}" if a.box else f"{n}"
        obeyed = f"{np.mean(ob):.2f}" if ob else "-"
        worse = f"{np.mean(fell):.2f}" if fell else "-"
        print(f"| {label} | {d:.3f} | {obeyed} | {worse} | {len(rows)} |")


if __name__ == "__main__":
    main()
