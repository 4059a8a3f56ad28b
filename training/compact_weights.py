#!/usr/bin/env python3
"""Write a compact copy of a model folder: what the crate ships, and what shipping it costs (issue 12 item 3).

    python compact_weights.py --model runs/default/export --out /tmp/v1-f16                 # f16 (how v1 shipped)
    python compact_weights.py --model runs/v2/export --out ../default_model/model --int8    # 8-bit weights
    python compact_weights.py --model runs/v2/export --out /tmp/v2-deq --int8 --dequantized # the same, as f32
    python compact_weights.py --model runs/v2/export --out /tmp/v2-mixed --int8 --int8-only unet  # 8-bit UNet, f16 rest

Copies the folder, rewriting every float tensor of each *.safetensors as f16 (the Rust loader converts f16 to
f32 at load), and prints each file's size raw and gzip-compressed (what a .crate holds). With --int8, weights
of 2+ dimensions and >= 256 values are instead quantized to 8 bits per output channel, in compressed-tensors'
int8 channel-wise layout, which the Rust loader dequantizes at load: `name` as I8 (same shape) plus
`name_scale`, f16, one value per output channel (shape [out]); w[c] = q[c] * scale[c]. Everything else stays
f16. --int8-only COMPONENT[,COMPONENT...] limits the 8-bit form to those top-level folders (e.g. `unet`, the
largest part; on v2 it carries almost all of the pixel difference anyway); the other components stay f16.
--dequantized writes the int8 model's values back as f32 (what the Rust loader computes), for tools that
cannot read I8 (diffusers). Input tensors may be f32 or f16 (f16 is upcast before quantizing).
Needs only numpy and safetensors (no torch).
"""
import argparse
import gzip
import os
import shutil

import numpy as np
from safetensors.numpy import load_file, save


def int8_per_channel(v):
    """(int8 values, f16 scales per output channel, dequantized f32) of f32 tensor v."""
    flat = v.reshape(v.shape[0], -1)
    scale = (np.abs(flat).max(axis=1) / 127.0).astype(np.float16)
    scale[scale == 0] = 1.0
    q = np.clip(np.round(flat / scale.astype(np.float32)[:, None]), -127, 127).astype(np.int8)
    deq = (q.astype(np.float32) * scale.astype(np.float32)[:, None]).reshape(v.shape)
    return q.reshape(v.shape), scale, deq


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--int8", action="store_true", help="8-bit weights with per-output-channel f16 scales")
    ap.add_argument("--dequantized", action="store_true", help="with --int8: write the dequantized f32 values")
    ap.add_argument("--int8-only", default="",
                    help="with --int8: comma-separated top-level folders to quantize (default: all)")
    args = ap.parse_args()
    if args.dequantized and not args.int8:
        raise SystemExit("--dequantized needs --int8")
    if args.int8_only and not args.int8:
        raise SystemExit("--int8-only needs --int8")
    only = {os.path.normpath(c.strip()).strip(os.sep) for c in args.int8_only.split(",") if c.strip()}
    if args.int8_only and not only:
        raise SystemExit(f"--int8-only {args.int8_only!r} names no component")
    for c in only:
        folder = os.path.join(args.model, c)
        if not os.path.isdir(folder) or not any(f.endswith(".safetensors") for f in os.listdir(folder)):
            raise SystemExit(f"--int8-only: {args.model} has no folder `{c}` with *.safetensors weights")
    if os.path.exists(args.out):
        raise SystemExit(f"{args.out} exists")
    shutil.copytree(args.model, args.out)
    raw_total = gz_total = 0
    for root, _, files in os.walk(args.out):
        for name in files:
            if not name.endswith(".safetensors"):
                continue
            path = os.path.join(root, name)
            tensors = load_file(path)
            component = os.path.relpath(path, args.out).split(os.sep)[0]
            quantize = args.int8 and (not only or component in only)
            shipped, loadable = {}, {}
            for key, v in tensors.items():
                if v.dtype not in (np.float32, np.float16):
                    shipped[key] = loadable[key] = v
                elif quantize and v.ndim >= 2 and v.size >= 256:
                    if key + "_scale" in tensors:
                        raise SystemExit(f"{path}: `{key}_scale` exists, so `{key}` cannot get its int8 scale")
                    q, scale, deq = int8_per_channel(v.astype(np.float32))
                    shipped[key], shipped[key + "_scale"], loadable[key] = q, scale, deq
                else:
                    shipped[key] = v.astype(np.float16)
                    loadable[key] = shipped[key].astype(np.float32)
            data = save(shipped)
            with open(path, "wb") as f:
                f.write(save(loadable) if args.dequantized else data)
            gz = len(gzip.compress(data, 6))
            raw_total, gz_total = raw_total + len(data), gz_total + gz
            print(f"{os.path.relpath(path, args.out)}: {len(data)} bytes, {gz} gzip-compressed")
    print(f"total: {raw_total} bytes, {gz_total} gzip-compressed")


if __name__ == "__main__":
    main()
