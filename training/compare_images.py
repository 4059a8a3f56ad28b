#!/usr/bin/env python3
"""Pixel differences between two folders of same-named PNGs (e.g. `texgen bake` of the f32 export and of its
compact copy): what storing the weights as f16 or 8-bit costs.

    python compare_images.py runs/v2/eval_f32 runs/v2/eval_int8

Prints, per RGBA channel in 1/255: the largest difference, the mean over all pixels (RGB and alpha apart), the
median and worst image mean, and the share of channel values off by more than 8. Exits 1 when a name is in one
folder only or two images differ in size.
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from evaluate import load_rgba  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args()
    names = sorted(n for n in os.listdir(args.a) if n.endswith(".png"))
    other = sorted(n for n in os.listdir(args.b) if n.endswith(".png"))
    if names != other:
        only = sorted(set(names) ^ set(other))
        sys.exit(f"the folders hold different PNG names ({len(only)} in one only, e.g. {only[:3]})")
    if not names:
        sys.exit(f"no PNG files in {args.a}")
    per_image, diffs = [], []
    for n in names:
        x = load_rgba(os.path.join(args.a, n)).astype(np.int16)
        y = load_rgba(os.path.join(args.b, n)).astype(np.int16)
        if x.shape != y.shape:
            sys.exit(f"{n}: {x.shape} in {args.a}, {y.shape} in {args.b}")
        d = np.abs(x - y)
        diffs.append(d.reshape(-1, 4))
        per_image.append(d.mean())
    d = np.concatenate(diffs)
    print(f"{len(names)} images: max {d.max()} (alpha {d[:, 3].max()}), mean {d.mean():.3f} "
          f"(RGB {d[:, :3].mean():.3f}, alpha {d[:, 3].mean():.3f}), image mean median {np.median(per_image):.3f} "
          f"worst {max(per_image):.3f}, values off by > 8: {100 * (d > 8).mean():.2f}%")


if __name__ == "__main__":
    main()
