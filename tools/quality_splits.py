#!/usr/bin/env python3
"""Lays out a 2D folder dataset (images/, masks/) for QUALITY.md's runs: symlinks to the
original files and a split.json with a 70/30 split by sorted id; every fifth id of the
first 70% is validation.

    python3 tools/quality_splits.py /work/shared/realdata/ph2 /work/data/ph2
"""
import json
import os
import sys


def main(src, dst):
    ids = sorted(os.path.splitext(f)[0] for f in os.listdir(os.path.join(src, "masks")))
    n_fit = round(0.7 * len(ids))
    fit, test = ids[:n_fit], ids[n_fit:]
    val = fit[4::5]
    train = [i for i in fit if i not in set(val)]
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(dst, sub), exist_ok=True)
        for f in os.listdir(os.path.join(src, sub)):
            link = os.path.join(dst, sub, f)
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(os.path.join(src, sub, f)), link)
    with open(os.path.join(dst, "split.json"), "w") as out:
        json.dump({"train": train, "val": val, "test": test}, out, indent=1)
    print(f"{dst}: train {len(train)}, val {len(val)}, test {len(test)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
