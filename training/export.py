#!/usr/bin/env python3
"""Export a trained run as a diffusers StableDiffusionPipeline folder (what the runtime loads).

    python export.py --run runs/default --out runs/default/export [--force] [--embedded] [--no-ema] [--no-check]
    python export.py --untrained v2-f8c32 --out runs/untrained-f8c32    # random weights, to time an architecture

Writes model_index.json, unet/, vae/, text_encoder/ (config.json + f32 .safetensors), tokenizer/ (tokenizer.json,
vocab.json, tokenizer_config.json, special_tokens_map.json; no merges.txt: tokenizer.json holds the merges and
transformers loads it) and scheduler/scheduler_config.json with
StableDiffusionPipeline.save_pretrained(dir, safe_serialization=True). --embedded adds
"_bevy_diffusion_embedded": true to model_index.json (how the runtime and `texgen inspect` recognise the
shipped default model; diffusers ignores it). Then it checks that
  * only .json / .safetensors files were written (no pickles),
  * the folder is <= 25 MB,
  * every tensor name in the files matches the freshly built model (text_encoder names start with text_model.),
  * (unless --no-check) StableDiffusionPipeline.from_pretrained(dir) reloads it and makes an RGBA image of the
    model's size (32x32 for v1, 64x64 for v2).
bevy_diffusion.json (the runtime's recommended steps, guidance, scheduler and size) is written beside
model_index.json.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import recipe  # noqa: E402

MAX_BYTES = 25 * 1000 * 1000
EMBEDDED_MARKER = "_bevy_diffusion_embedded"  # plugin/src/embedded.rs


def dir_files(path):
    out = []
    for root, _, files in os.walk(path):
        for fn in files:
            out.append(os.path.relpath(os.path.join(root, fn), path))
    return sorted(out)


def dir_size(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in dir_files(path))


def build_pipeline(run, use_ema=True):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    with open(os.path.join(run, "run.json"), encoding="utf-8") as f:
        meta = json.load(f)
    vst = torch.load(os.path.join(run, "vae.pt"), map_location="cpu", weights_only=False)
    if not vst.get("done"):
        sys.exit("the vae stage has not finished")
    ust = torch.load(os.path.join(run, "unet.pt"), map_location="cpu", weights_only=False)
    vae = recipe.build_vae(meta["vae"])
    vae.load_state_dict(vst["model"])
    unet = recipe.build_unet(meta["unet"])
    unet.load_state_dict(ust["ema_unet" if use_ema else "unet"])
    te = recipe.build_text_encoder(meta["text_encoder"], meta["tokenizer"])
    te.load_state_dict(ust["ema_text_encoder" if use_ema else "text_encoder"])
    for m in (vae, unet, te):
        m.eval()
    tok = CLIPTokenizer.from_pretrained(os.path.join(run, "tokenizer"))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=DDIMScheduler(**recipe.shipped_scheduler(meta)), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    return pipe, meta, ust["step"]


def build_untrained(config, tok_dir):
    """A pipeline of freshly initialised models of a named recipe config (for timing candidate architectures in
    the runtime before training them: `--untrained v2-f8c32`). Writes the config's tokenizer into tok_dir."""
    import clip_bpe
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    cfg = recipe.CONFIGS[config]
    tok = clip_bpe.write_tokenizer(tok_dir, vocab=cfg["vocab"])
    torch.manual_seed(0)
    vae, unet = recipe.build_vae(cfg["vae"]), recipe.build_unet(cfg["unet"])
    te = recipe.build_text_encoder(recipe.TEXT_CONFIG, tok)
    for m in (vae, unet, te):
        m.eval()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=CLIPTokenizer.from_pretrained(tok_dir),
                                   unet=unet, scheduler=DDIMScheduler(**recipe.SHIPPED_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    meta = {"vae": dict(cfg["vae"]), "unet": dict(cfg["unet"])}
    return pipe, meta, 0


def write_folder(pipe, run, out, embedded=False):
    from safetensors.torch import load_file, save_file

    pipe.save_pretrained(out, safe_serialization=True)
    # Every SD checkpoint (and the runtime) names CLIP tensors "text_model.<...>"; transformers 5 may save
    # them without that prefix. Rewrite in the usual layout (transformers loads both).
    te_path = os.path.join(out, "text_encoder", "model.safetensors")
    sd = load_file(te_path)
    sd = {(k if k.startswith("text_model.") else "text_model." + k): v.contiguous() for k, v in sd.items()}
    save_file(dict(sorted(sd.items())), te_path, metadata={"format": "pt"})
    # The canonical CLIP-layout tokenizer files (what tokenizer.json-based loaders read).
    shutil.rmtree(os.path.join(out, "tokenizer"))
    shutil.copytree(os.path.join(run, "tokenizer"), os.path.join(out, "tokenizer"))
    os.remove(os.path.join(out, "tokenizer", "merges.txt"))
    # The sampling settings the runtime should use for this model (plugin: request::RecommendedSettings).
    size = pipe.vae.config.sample_size
    with open(os.path.join(out, "bevy_diffusion.json"), "w", encoding="utf-8") as f:
        json.dump({"num_inference_steps": recipe.DEFAULT_STEPS, "guidance_scale": recipe.DEFAULT_GUIDANCE,
                   "scheduler": "ddim", "width": size, "height": size}, f, indent=2)
        f.write("\n")
    if embedded:
        index = os.path.join(out, "model_index.json")
        with open(index, encoding="utf-8") as f:
            j = json.load(f)
        j[EMBEDDED_MARKER] = True
        with open(index, "w", encoding="utf-8") as f:
            json.dump(j, f, indent=2)
            f.write("\n")
    for f in dir_files(out):
        os.chmod(os.path.join(out, f), 0o644)


def check_folder(out, pipe):
    from safetensors import safe_open

    problems = []
    for f in dir_files(out):
        if not (f.endswith(".json") or f.endswith(".safetensors")):
            problems.append(f"unexpected file {f}")
    size = dir_size(out)
    if size > MAX_BYTES:
        problems.append(f"folder is {size} bytes > {MAX_BYTES}")
    expect = {
        os.path.join("unet", "diffusion_pytorch_model.safetensors"): pipe.unet.state_dict(),
        os.path.join("vae", "diffusion_pytorch_model.safetensors"): pipe.vae.state_dict(),
        os.path.join("text_encoder", "model.safetensors"): {
            (k if k.startswith("text_model.") else "text_model." + k): v for k, v in pipe.text_encoder.state_dict().items()},
    }
    for f, sd in expect.items():
        with safe_open(os.path.join(out, f), "pt") as st:
            keys = set(st.keys())
            for k in keys:
                if st.get_slice(k).get_dtype() != "F32":
                    problems.append(f"{f}: {k} is not F32")
        want = {k for k in sd if not k.endswith("position_ids")}
        if keys != want:
            problems.append(f"{f}: missing {sorted(want - keys)[:5]} unexpected {sorted(keys - want)[:5]}")
    return size, problems


def reload_and_generate(out, size, prompt="a red potion", steps=4):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    img = pipe(prompt, num_inference_steps=steps, guidance_scale=recipe.DEFAULT_GUIDANCE, output_type="np",
               height=size, width=size, generator=torch.Generator().manual_seed(0)).images[0]
    assert img.shape == (size, size, 4), img.shape
    pil = pipe(prompt, num_inference_steps=steps, height=size, width=size,
               generator=torch.Generator().manual_seed(0)).images[0]
    assert pil.mode == "RGBA" and pil.size == (size, size), (pil.mode, pil.size)
    return img, pil


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=os.path.join(HERE, "runs", "default"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--force", action="store_true", help="replace an existing --out folder")
    ap.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA ones")
    ap.add_argument("--no-check", action="store_true", help="skip the reload + generate check")
    ap.add_argument("--embedded", action="store_true", help="mark the folder as the shipped default model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--untrained", metavar="CONFIG", choices=sorted(recipe.CONFIGS),
                    help="export freshly initialised models of a recipe config instead of a run (timing candidates)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = os.path.abspath(a.out)
    if os.path.exists(out) and os.listdir(out) and not a.force:
        sys.exit(f"{out} is not empty: pass --force to replace it")
    if a.untrained:
        a.run = tempfile.mkdtemp(prefix="untrained-")
        pipe, meta, step = build_untrained(a.untrained, os.path.join(a.run, "tokenizer"))
    else:
        pipe, meta, step = build_pipeline(a.run, use_ema=not a.no_ema)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        write_folder(pipe, a.run, tmp, embedded=a.embedded)
        size, problems = check_folder(tmp, pipe)
        if problems:
            sys.exit("export check failed:\n  " + "\n  ".join(problems))
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    print(f"exported step {step} ({'EMA' if not a.no_ema else 'raw'} weights) -> {out}")
    for f in dir_files(out):
        print(f"  {os.path.getsize(os.path.join(out, f)):>10}  {f}")
    print(f"  total {size} bytes ({size / 1e6:.2f} MB <= {MAX_BYTES / 1e6:.0f} MB)")
    n = {k: recipe.n_params(getattr(pipe, k)) for k in ("unet", "vae", "text_encoder")}
    print("  params: " + ", ".join(f"{k} {v / 1e6:.3f} M" for k, v in n.items()))
    if not a.no_check:
        img, _ = reload_and_generate(out, meta["vae"]["sample_size"])
        print(f"  reload check: StableDiffusionPipeline.from_pretrained -> {img.shape} RGBA image, "
              f"alpha mean {img[..., 3].mean():.3f}")


if __name__ == "__main__":
    main()
