#!/usr/bin/env python3
"""Score a folder of generated PNGs against the prompt list (prompts.txt).

    python evaluate.py --images gen/ [--prompts prompts.txt] [--classifier runs/classifier64/classifier.safetensors]
                       [--json report.json]
    python evaluate.py --images gen32/ --prompts prompts_v1.txt      # v1's (32x32) list
    python evaluate.py --selftest [--out DIR]   # scores the procedural ground truth (the metrics' ceiling)
    python evaluate.py --selftest --vae-roundtrip runs/v2/export   # the same after the model's VAE (encode + decode)

Images are <id>.png (id = first column of prompts.txt), any size (RGB is taken as alpha 255).
Per image:
  colour   the dominant colour class of the opaque pixels (alpha >= 0.5) matches the prompt's colour word
           (HSV rules in `colour_class`; accepted classes per word in ACCEPT)
  class    the pattern/object classifier (classifier.py) predicts the prompt's class
  sprites  alpha: mean alpha of the outer border (size/16 px) <= 0.05 and of the central (size/8)^2 block >= 0.9
  tiles    seam: mean |last - first| column and row <= 1.1 x mean interior neighbour |difference|
           (even perfectly periodic ground truth passes only ~70%: the seam is one sample of neighbour
           differences; so seam_rank is reported too: the seam's rank among the interior columns/rows,
           ~0.5 for a seamless tile, -> 1 for a visible seam)
Reported separately for the "train" and "heldout" splits (holdout.txt combinations) and for tiles/sprites.
"""
import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import dataset  # noqa: E402

HUES = [(15, "red"), (40, "orange"), (70, "yellow"), (165, "green"), (200, "cyan"), (255, "blue"),
        (290, "purple"), (345, "pink"), (361, "red")]
# Which measured classes count as correct for a prompt's colour word. Two-tone patterns (checker, stripes)
# pair black/white with grey, and dark modifiers turn orange into brown, so those pairs are accepted.
ACCEPT = {
    "red": {"red"}, "orange": {"orange", "brown"}, "yellow": {"yellow"}, "green": {"green"}, "cyan": {"cyan"},
    "blue": {"blue"}, "purple": {"purple"}, "pink": {"pink"}, "brown": {"brown", "orange"},
    "white": {"white", "grey"}, "grey": {"grey"}, "black": {"black", "grey"},
    "gold": {"yellow", "orange", "brown"}, "silver": {"grey", "white"},
}
CHROMATIC_FRACTION = 0.3


def _hsv(rgb):
    """rgb float [...,3] in [0,1] -> h (degrees), s, v."""
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = mx - mn
    s = np.where(mx > 0, d / np.maximum(mx, 1e-8), 0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    dd = np.maximum(d, 1e-8)
    h = np.where(mx == r, ((g - b) / dd) % 6, np.where(mx == g, (b - r) / dd + 2, (r - g) / dd + 4)) * 60
    return h, s, mx


def colour_class(img):
    """Dominant colour class of the opaque pixels of an RGBA uint8 image (None if nothing is opaque)."""
    px = img.reshape(-1, img.shape[-1]).astype(np.float64) / 255.0
    if px.shape[1] == 4:
        px = px[px[:, 3] >= 0.5]
    if len(px) == 0:
        return None
    h, s, v = _hsv(px[:, :3])
    chrom = (s >= 0.25) & (v >= 0.2)
    if chrom.mean() >= CHROMATIC_FRACTION:
        hc, vc = h[chrom], v[chrom]
        names = np.empty(len(hc), dtype=object)
        lo = 0
        for hi, name in HUES:
            names[(hc >= lo) & (hc < hi)] = name
            lo = hi
        names[(hc >= 10) & (hc < 45) & (vc < 0.6)] = "brown"
    else:
        va = v[~chrom]
        names = np.where(va < 0.25, "black", np.where(va > 0.8, "white", "grey"))
    vals, counts = np.unique(names.astype(str), return_counts=True)
    return str(vals[np.argmax(counts)])


def colour_correct(img, colour):
    return colour_class(img) in ACCEPT[colour]


def load_rgba(path):
    im = Image.open(path)
    return np.asarray(im.convert("RGBA"))


def score(rows, images, classifier=None):
    """rows: prompts.txt rows; images: dict id -> RGBA uint8. Returns (per-image list, summary dict)."""
    preds = {}
    if classifier is not None:
        ids = [r["id"] for r in rows if r["id"] in images]
        if ids:
            p = classifier.predict(np.stack([images[i] for i in ids]))
            preds = dict(zip(ids, p))
    per = []
    for r in rows:
        img = images.get(r["id"])
        if img is None:
            continue
        e = {"id": r["id"], "prompt": r["prompt"], "split": r["split"], "kind": r["kind"],
             "colour": r["colour"], "measured_colour": colour_class(img), "style": r.get("style")}
        e["colour_ok"] = e["measured_colour"] in ACCEPT[r["colour"]]
        if r["id"] in preds:
            e["predicted_class"] = classifier.classes[int(preds[r["id"]])]
            e["class_ok"] = e["predicted_class"] == r["cls"]
        if r["kind"] == "sprite":
            b, c = dataset.alpha_stats(img)
            e.update(border_alpha=round(float(b), 4), centre_alpha=round(float(c), 4))
            e["shape_ok"] = bool(b <= 0.05 and c >= 0.9)
        else:
            e["seam_ratio"] = round(float(dataset.seam_ratio(img)), 4)
            e["seam_rank"] = round(dataset.seam_rank(img), 4)
            e["alpha_mean"] = round(float(img[..., 3].mean() / 255.0), 4)
            e["shape_ok"] = bool(e["seam_ratio"] <= 1.1)
        per.append(e)
    summary = {"n_prompts": len(rows), "n_images": len(per)}
    for split in ("train", "heldout", "all"):
        for kind in ("tile", "sprite", "all"):
            sel = [e for e in per if (split == "all" or e["split"] == split) and (kind == "all" or e["kind"] == kind)]
            if not sel:
                continue
            d = {"n": len(sel), "colour_acc": float(np.mean([e["colour_ok"] for e in sel]))}
            if any("class_ok" in e for e in sel):
                d["class_acc"] = float(np.mean([e["class_ok"] for e in sel if "class_ok" in e]))
            if kind == "sprite":
                d["alpha_pass"] = float(np.mean([e["shape_ok"] for e in sel]))
                d["border_alpha_mean"] = float(np.mean([e["border_alpha"] for e in sel]))
                d["centre_alpha_mean"] = float(np.mean([e["centre_alpha"] for e in sel]))
            if kind == "tile":
                d["seam_pass"] = float(np.mean([e["shape_ok"] for e in sel]))
                d["seam_ratio_median"] = float(np.median([e["seam_ratio"] for e in sel]))
                d["seam_rank_mean"] = float(np.mean([e["seam_rank"] for e in sel]))  # 0.5 = seamless
            summary[f"{split}/{kind}"] = d
    if any(e["style"] for e in per):  # v2 prompts: the styles separately
        for st in (None, "pixel", "painted"):
            sel = [e for e in per if e["style"] == st]
            if sel:
                d = {"n": len(sel), "colour_acc": float(np.mean([e["colour_ok"] for e in sel]))}
                if any("class_ok" in e for e in sel):
                    d["class_acc"] = float(np.mean([e["class_ok"] for e in sel if "class_ok" in e]))
                summary[f"style/{st or 'plain'}"] = d
    return per, summary


def print_summary(summary):
    print(f"images scored: {summary['n_images']} / {summary['n_prompts']} prompts")
    for k, d in summary.items():
        if isinstance(d, dict):
            print(f"  {k:16s} " + "  ".join(f"{a}={b:.3f}" if isinstance(b, float) else f"{a}={b}" for a, b in d.items()))


def vae_roundtrip(model, rows, images, threads):
    """images (id -> uint8 [H,W,4]) encoded and decoded by model's VAE, as training saw them: tiles wrap-padded on
    encode (recipe.encode_wrapped) and decoded with circular padding, sprites plain; the posterior mean, no noise."""
    import torch
    from diffusers import AutoencoderKL

    import recipe

    torch.set_num_threads(threads)
    vae = AutoencoderKL.from_pretrained(os.path.join(model, "vae")).eval()
    out = {}
    with torch.no_grad():
        for r in rows:
            x = recipe.to_tensor(images[r["id"]][None])
            tile = r["kind"] == "tile"
            if tile:
                mean, _ = recipe.encode_wrapped(vae, x)
            else:
                mean = vae.encode(x).latent_dist.mean
            recipe.set_circular(vae.decoder, tile)
            out[r["id"]] = recipe.to_u8(vae.decode(mean).sample)[0]
            recipe.set_circular(vae.decoder, False)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", help="folder of <id>.png")
    ap.add_argument("--prompts", default=os.path.join(HERE, "prompts.txt"))
    ap.add_argument("--classifier", help="default: runs/classifier64/ for a v2 prompts file (9 columns), "
                                         "runs/classifier/ for v1's (prompts_v1.txt)")
    ap.add_argument("--size", type=int, default=0, help="--selftest image size (default 64 for v2 prompts, 32 for v1)")
    ap.add_argument("--json", help="write per-image results and the summary here")
    ap.add_argument("--selftest", action="store_true", help="score procedural ground truth for the prompt list")
    ap.add_argument("--out", help="with --selftest: also write the scored PNGs here (ground truth, or its VAE "
                                  "reconstruction with --vae-roundtrip)")
    ap.add_argument("--vae-roundtrip", metavar="MODEL",
                    help="with --selftest: pass the ground truth through MODEL/vae (diffusers AutoencoderKL: posterior "
                         "mean, tiles wrap-padded as in training, decoded with circular padding) before scoring: the "
                         "ceiling the VAE leaves the UNet")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.vae_roundtrip and not a.selftest:
        ap.error("--vae-roundtrip needs --selftest")
    rows = dataset.read_prompts(a.prompts)
    v2 = bool(rows) and rows[0]["v2"]
    size = a.size or (64 if v2 else 32)
    if a.classifier is None:
        a.classifier = os.path.join(HERE, "runs", "classifier64" if v2 else "classifier", "classifier.safetensors")
    images = {}
    if a.selftest:
        for r in rows:
            rng = np.random.default_rng([r["seed"], 7])
            spec = {"cls": r["cls"], "colour": r["colour"], "mods": r["mods"]}
            if r["v2"]:
                spec["style"] = r["style"]
            images[r["id"]] = dataset.render(spec, rng, size)
        if a.vae_roundtrip:
            images = vae_roundtrip(a.vae_roundtrip, rows, images, a.threads)
        if a.out:
            os.makedirs(a.out, exist_ok=True)
            for r in rows:
                Image.fromarray(images[r["id"]], "RGBA").save(os.path.join(a.out, r["id"] + ".png"))
    else:
        if not a.images:
            ap.error("--images or --selftest")
        for r in rows:
            p = os.path.join(a.images, r["id"] + ".png")
            if os.path.exists(p):
                images[r["id"]] = load_rgba(p)
    clf = None
    if a.classifier and os.path.exists(a.classifier):
        import classifier

        clf = classifier.Classifier.load(a.classifier, threads=a.threads)
    else:
        print(f"(no classifier at {a.classifier}: class accuracy skipped; train one with classifier.py)")
    per, summary = score(rows, images, clf)
    print_summary(summary)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"summary": summary, "images": per}, f, indent=1)


if __name__ == "__main__":
    main()
