#!/usr/bin/env python3
"""Carry a training run across machines: pack its resumable state into a small folder that is committed to git,
and unpack it into a run folder that `train.py --resume` continues.

    python carry.py save --run runs/v2 --out carry/v2        # at the end of a session (after stopping train.py)
    python carry.py restore --carry carry/v2 --run runs/v2   # on a new machine, then: train.py --run runs/v2 ... --resume
    python carry.py save --run runs/classifier64 --out carry/classifier64   # the same for classifier.py --out folders

Why: a run folder (`runs/`, git-ignored) lives only as long as the machine, and this project's machines are replaced
between sessions. What is kept is what cannot be regenerated: `run.json`, `tokenizer/`, `log.jsonl` and each stage's
checkpoint (`vae.pt`, `unet.pt`, a classifier folder's `classifier.pt`) converted to safetensors as
`<stage>.ckpt.safetensors`; a classifier folder's finished `classifier.json` / `classifier.safetensors` are copied
as they are. The dataset cache (`data/`, ~0.5 GB at 64 px) and
`latents.pt` are not kept: train.py regenerates them (same seeds, same samples; `--data-workers` processes).

Checkpoint tensors are stored as they are (f32 weights and EMA, bit for bit), except the optimizer's moment
estimates (`exp_avg`, `exp_avg_sq`), which are stored as bf16 to halve their size; restored, they are widened back
to f32. So a run resumed from a carry continues with moments rounded to 8 bits of mantissa: it is not bit-identical
to an uninterrupted run (a resume from the run's own .pt still is).
"""
import argparse
import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

STAGES = ("vae", "unet", "classifier")
FILES = ("run.json", "log.jsonl", "classifier.json", "classifier.safetensors")
MOMENTS = ("exp_avg", "exp_avg_sq")


def _flatten(obj, path, tensors):
    """Checkpoint dict -> JSON skeleton (dict keys kept with their type) with tensors replaced by references."""
    if isinstance(obj, torch.Tensor):
        name = "/".join(path)
        t = obj.detach().cpu().contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        if path and path[-1] in MOMENTS and t.dtype == torch.float32:
            t = t.to(torch.bfloat16)
        tensors[name] = t.clone()
        return {"__tensor__": name, "dtype": dtype}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _flatten(v, path + [str(k)], tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, path + [str(i)], tensors) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{'/'.join(path)}: cannot carry a {type(obj).__name__}")


def _unflatten(node, tensors):
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]].to(getattr(torch, node["dtype"]))
        if "__dict__" in node:
            return {k: _unflatten(v, tensors) for k, v in node["__dict__"]}
        if "__list__" in node:
            items = [_unflatten(v, tensors) for v in node["__list__"]]
            return tuple(items) if node.get("tuple") else items
        raise ValueError(f"unknown node {sorted(node)}")
    return node


def _header(path):
    """A safetensors file's metadata dict (empty when it has none)."""
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        return f.metadata() or {}


def save(run, out, force=False):
    if not any(os.path.exists(os.path.join(run, f)) for f in ("run.json", "classifier.pt", "classifier.json")):
        sys.exit(f"{run}: no run.json, classifier.pt or classifier.json: not a train.py or classifier.py folder")
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for f in FILES:
        if os.path.exists(os.path.join(run, f)):
            shutil.copy2(os.path.join(run, f), tmp)
    if os.path.isdir(os.path.join(run, "tokenizer")):
        shutil.copytree(os.path.join(run, "tokenizer"), os.path.join(tmp, "tokenizer"))
    kept = []
    for stage in STAGES:
        pt = os.path.join(run, f"{stage}.pt")
        if not os.path.exists(pt):
            continue
        st = torch.load(pt, map_location="cpu", weights_only=False)
        old = os.path.join(out, f"{stage}.ckpt.safetensors")
        have = json.loads(_header(old).get("step", "null")) if os.path.exists(old) else None
        if have is not None and st.get("step", 0) < have and not force:
            shutil.rmtree(tmp)
            sys.exit(f"{old} is at step {have}, {pt} only at {st.get('step')}: not replaced (--force to replace it)")
        tensors = {}
        skeleton = _flatten(st, [], tensors)
        dst = os.path.join(tmp, f"{stage}.ckpt.safetensors")
        save_file(tensors, dst, metadata={"skeleton": json.dumps(skeleton), "step": json.dumps(st.get("step"))})
        size = os.path.getsize(dst)
        kept.append(f"{stage}: step {st.get('step')}{' (done)' if st.get('done') else ''}, {size / 1e6:.1f} MB")
    # Swap in the new folder; until the old one is removed, one complete copy always exists (out or out.old).
    old_dir = out.rstrip("/") + ".old"
    shutil.rmtree(old_dir, ignore_errors=True)
    if os.path.exists(out):
        os.replace(out, old_dir)
    os.replace(tmp, out)
    shutil.rmtree(old_dir, ignore_errors=True)
    print(f"{out}: " + ("; ".join(kept) or "no checkpoint yet"))


def restore(carry, run):
    if not any(os.path.exists(os.path.join(carry, f)) for f in ("run.json", "classifier.json", "classifier.safetensors")):
        sys.exit(f"{carry}: not a carry folder (no run.json or classifier files)")
    ckpts = []  # (stage, carried file, skeleton), all checked before anything is written
    for stage in STAGES:
        src = os.path.join(carry, f"{stage}.ckpt.safetensors")
        if not os.path.exists(src):
            continue
        if os.path.exists(os.path.join(run, f"{stage}.pt")):
            sys.exit(f"{run}/{stage}.pt exists: restore into a new --run (nothing was changed)")
        meta = _header(src)
        if "skeleton" not in meta:
            sys.exit(f"{src}: no checkpoint skeleton in its header, not written by carry.py save (nothing was changed)")
        ckpts.append((stage, src, json.loads(meta["skeleton"])))
    os.makedirs(run, exist_ok=True)
    for f in FILES:
        if os.path.exists(os.path.join(carry, f)):
            shutil.copy2(os.path.join(carry, f), run)
    if os.path.isdir(os.path.join(carry, "tokenizer")):
        shutil.copytree(os.path.join(carry, "tokenizer"), os.path.join(run, "tokenizer"), dirs_exist_ok=True)
    for stage, src, skeleton in ckpts:
        st = _unflatten(skeleton, load_file(src))
        dst = os.path.join(run, f"{stage}.pt")
        torch.save(st, dst + ".tmp")
        os.replace(dst + ".tmp", dst)
        print(f"{run}/{stage}.pt: step {st.get('step')}{' (done)' if st.get('done') else ''}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save", help="run folder -> carry folder")
    s.add_argument("--run", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--force", action="store_true", help="replace a carried checkpoint that is further on")
    r = sub.add_parser("restore", help="carry folder -> run folder")
    r.add_argument("--carry", required=True)
    r.add_argument("--run", required=True)
    a = ap.parse_args()
    if a.cmd == "save":
        save(a.run, a.out, a.force)
    else:
        restore(a.carry, a.run)


if __name__ == "__main__":
    main()
