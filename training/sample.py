#!/usr/bin/env python3
"""Generate the evaluation images from an exported model folder with diffusers' StableDiffusionPipeline.

    python sample.py --model runs/default/export --out gen/ [--prompts prompts.txt] [--steps 12]
                     [--guidance 4] [--scheduler ddim|euler-a] [--tiling auto|none] [--limit N] [--every K]

Writes <id>.png (RGBA) for each prompts.txt row, seeded with the row's seed. --tiling auto turns on circular
padding in the UNet and VAE decoder for tile prompts (what the runtime's seamless tiling mode does).
Then: python evaluate.py --images gen/
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import dataset  # noqa: E402
import recipe  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompts", default=os.path.join(HERE, "prompts.txt"))
    ap.add_argument("--steps", type=int, default=recipe.DEFAULT_STEPS)
    ap.add_argument("--guidance", type=float, default=recipe.DEFAULT_GUIDANCE)
    ap.add_argument("--scheduler", choices=["ddim", "euler-a"], default="ddim")
    ap.add_argument("--tiling", choices=["auto", "none"], default="auto")
    ap.add_argument("--limit", type=int, default=0, help="only the first N prompts (0 = all)")
    ap.add_argument("--every", type=int, default=1, help="only every K-th prompt (a quick spread-out subset)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(a.model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    if a.scheduler == "euler-a":
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    rows = dataset.read_prompts(a.prompts)[:: a.every]
    if a.limit:
        rows = rows[: a.limit]
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()
    for r in rows:
        circ = a.tiling == "auto" and r["kind"] == "tile"
        recipe.set_circular(pipe.unet, circ)
        recipe.set_circular(pipe.vae.decoder, circ)
        img = pipe(r["prompt"], num_inference_steps=a.steps, guidance_scale=a.guidance,
                   generator=torch.Generator().manual_seed(r["seed"])).images[0]
        img.save(os.path.join(a.out, r["id"] + ".png"))
    dt = (time.time() - t0) / max(1, len(rows))
    print(f"{len(rows)} images -> {a.out} ({dt:.3f} s/image, {a.steps} steps, {a.scheduler}, guidance {a.guidance})")


if __name__ == "__main__":
    main()
