#!/usr/bin/env python3
"""Turn prompts.txt into a `texgen bake` manifest, so the evaluation images come from our Rust pipeline.

    python prompts_to_manifest.py [--steps 12] [--guidance 4] > eval.ron
    texgen bake eval.ron --out runs/default/eval_rust   # the compiled-in model; --model DIR for another
    python evaluate.py --images runs/default/eval_rust --json runs/default/eval_rust.json

Tiles are requested as seamless textures (tiling xy), sprites as sprites; each row's seed is used as is.
"""
import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", default=os.path.join(HERE, "prompts.txt"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--guidance", type=float, default=4.0)
    a = ap.parse_args()
    items = []
    for line in open(a.prompts, encoding="utf-8"):
        if not line.strip() or line.startswith("#"):
            continue
        pid, prompt, seed, kind = line.rstrip("\n").split("\t")[:4]
        extra = "kind: texture, tiling: xy" if kind == "tile" else "kind: sprite"
        items.append(f'        "{pid}": (prompt: {json.dumps(prompt)}, seed: {int(seed)}, {extra}, '
                     f"num_inference_steps: {a.steps}, guidance_scale: {a.guidance}),")
    print("(\n    items: {\n" + "\n".join(items) + "\n    },\n)")


if __name__ == "__main__":
    main()
