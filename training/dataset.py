#!/usr/bin/env python3
"""Procedural training data for the embedded default model: seamless texture tiles and item sprites.

Everything is numpy/PIL and deterministic: sample i of (seed, size, vocabulary) is drawn from
np.random.default_rng([seed, i]), so any sample can be regenerated on its own.

* Tiles (RGBA, alpha 255) are periodic by construction (patterns.py), rendered at 2x and box-downsampled.
* Sprites (RGBA with real alpha) are drawn with PIL at 4x on a transparent canvas (objects.py); every object
  covers the centre and keeps the outer border transparent (checked by `--check`).
* v2 only: a style ("pixel art", "hand painted"; styles.py) changes the rendering of half the samples.

Vocabularies (vocab.py): `v1` is the v1 32x32 model's (shipped until session 14; 14 patterns, 12 objects, frozen), `v2` issue 12's
(24 materials, 22 objects, styles, freer captions; captions.py). Captions read like what a player types
("old red brick wall", "a glowing blue crystal"). Colour+class pairs listed in holdout.txt are never produced
for training (generalisation report).

CLI (default vocabulary v2 at 64 px; `--vocab v1` gives v1's data at 32 px):
  python dataset.py --preview grid.png [--n 64] [--seed 0]     contact sheet with captions printed
  python dataset.py --check [--n 2000]                          seam / alpha / colour self-checks
  python dataset.py --write-prompts prompts.txt                  (re)write the evaluation prompt list
  python dataset.py --vocab v1 --write-prompts prompts_v1.txt    v1's 208-row list
"""
import argparse
import os

import numpy as np
from PIL import Image

import styles
from captions import all_words, caption  # noqa: F401  (re-exported for clip_bpe)
from objects import render_sprite
from patterns import render_tile
from vocab import ACHROMATIC, ALL_CLASSES, COLOURS, MOD_WORDS_V2, NO_MOD_V2, VOCABS, WHERE_V2, kind_of

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VOCAB = "v2"
DEFAULT_SIZE = {"v1": 32, "v2": 64}
CLASSES = ALL_CLASSES  # v2 label order (v1's classifier keeps its own list in classifier.json)


def load_holdout(path=None):
    """holdout.txt: one `colour class_id` pair per line (# comments)."""
    path = path or os.path.join(HERE, "holdout.txt")
    pairs = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            colour, cls = line.split()
            assert colour in COLOURS and cls in ALL_CLASSES, line
            pairs.add((colour, cls))
    return pairs


# ----------------------------------------------------------------------------------------- sampling
def _pick_colour(rng, cls, default, holdout):
    names = list(COLOURS)
    while True:
        colour = default if rng.random() < 0.12 else names[int(rng.integers(len(names)))]
        if (colour, cls) not in holdout:
            return colour


def sample_spec(rng, holdout=frozenset(), tile_frac=None, vocab=DEFAULT_VOCAB):
    """One sample's spec: class, colour, modifiers, whether the caption says the colour (+ style in v2).
    v1's draws are frozen (same order and probabilities as v1's data)."""
    v = VOCABS[vocab]
    tile = rng.random() < (tile_frac if tile_frac is not None else (0.55 if vocab == "v1" else 0.52))
    table = v.tiles if tile else v.sprites
    cls = list(table)[int(rng.integers(len(table)))]
    default = table[cls][0]
    colour = _pick_colour(rng, cls, default, holdout)
    say_colour = not (colour == default and rng.random() < 0.6)
    pool = v.tile_mods if tile else v.sprite_mods
    k = int(rng.choice([0, 0, 1, 1, 2]))
    mods = []
    for m in rng.permutation(pool)[:k]:
        m = str(m)
        if m in ("dark", "light") and (colour in ("white", "black") or {"dark", "light"} & set(mods)):
            continue
        if m in ("mossy", "snowy") and {"mossy", "snowy"} & set(mods):
            continue
        if m == "small" and cls in v.thin:
            continue
        if vocab != "v1" and ((m, cls) in NO_MOD_V2 or (m in ("glowing", "old") and {"glowing", "old"} & set(mods))):
            continue
        mods.append(m)
    spec = {"cls": cls, "colour": colour, "mods": sorted(mods), "say_colour": say_colour}
    if vocab != "v1":
        r = rng.random()
        spec["style"] = None if r < 0.5 else ("pixel" if r < 0.75 else "painted")
    return spec


def render(spec, rng, size=32):
    """uint8 RGBA [size, size, 4] of a spec. A spec with a "style" key (v2) goes through styles.apply."""
    kind = kind_of(spec["cls"])
    fn = render_tile if kind == "tile" else render_sprite
    img = fn(spec["cls"], spec["colour"], spec["mods"], rng, size)
    if "style" in spec:
        img = styles.apply(img, spec["style"], kind, rng)
    return img


def make_sample(seed, i, size=32, holdout=frozenset(), vocab=DEFAULT_VOCAB):
    rng = np.random.default_rng([seed, i])
    spec = sample_spec(rng, holdout, vocab=vocab)
    img = render(spec, rng, size)
    return img, caption(spec, rng, vocab), spec


def generate(n, seed=0, size=32, holdout=None, start=0, log_every=0, vocab=DEFAULT_VOCAB):
    """n samples -> dict(images uint8 [n,size,size,4], captions list, labels int [n] (index into the
    vocabulary's classes), is_tile bool [n], specs)."""
    holdout = load_holdout() if holdout is None else holdout
    imgs = np.zeros((n, size, size, 4), np.uint8)
    caps, specs = [], []
    for k in range(n):
        img, cap, spec = make_sample(seed, start + k, size, holdout, vocab)
        imgs[k] = img
        caps.append(cap)
        specs.append(spec)
        if log_every and (k + 1) % log_every == 0:
            print(f"  generated {k + 1}/{n}", flush=True)
    classes = VOCABS[vocab].classes
    labels = np.array([classes.index(s["cls"]) for s in specs], np.int64)
    is_tile = np.array([kind_of(s["cls"]) == "tile" for s in specs], bool)
    return {"images": imgs, "captions": caps, "labels": labels, "is_tile": is_tile, "specs": specs}


def _generate_chunk(job):
    n, seed, size, holdout, start, vocab, log_every = job
    g = generate(n, seed, size, holdout, start=start, log_every=log_every, vocab=vocab)
    return {k: g[k] for k in ("images", "captions", "labels", "is_tile")}


def generate_parallel(n, seed=0, size=32, holdout=None, vocab=DEFAULT_VOCAB, workers=2):
    """generate(n, seed, size, holdout) split over `workers` processes (without "specs"). Sample i depends only on
    (seed, i), so the result equals one process's, sample for sample."""
    workers = max(1, min(workers, n, os.cpu_count() or 1))  # a flag: bounded by the machine's cores
    if workers == 1:
        return _generate_chunk((n, seed, size, holdout, 0, vocab, 10000))
    import multiprocessing as mp
    holdout = load_holdout() if holdout is None else holdout
    bounds = np.linspace(0, n, 4 * workers + 1).astype(int)  # 4 chunks per worker, for progress lines
    jobs = [(int(b - a), seed, size, holdout, int(a), vocab, 0) for a, b in zip(bounds[:-1], bounds[1:])]
    parts = []
    with mp.get_context().Pool(workers) as pool:  # the platform's default start method; _generate_chunk is importable
        for part in pool.imap(_generate_chunk, jobs):
            parts.append(part)
            print(f"  generated {sum(len(p['captions']) for p in parts)}/{n}", flush=True)
    return {"images": np.concatenate([p["images"] for p in parts]),
            "captions": [c for p in parts for c in p["captions"]],
            "labels": np.concatenate([p["labels"] for p in parts]),
            "is_tile": np.concatenate([p["is_tile"] for p in parts])}


# ----------------------------------------------------------------------------------------- evaluation prompts
def prompt_lines_v1(holdout):
    """v1's evaluation list (208 rows): (prompt, seed, kind, colour, cls, mods, split)."""
    v = VOCABS["v1"]
    holdout = {p for p in holdout if p[1] in v.classes}
    rng = np.random.default_rng(1234)
    lines = []
    chrom = [c for c in COLOURS if c not in ("gold", "silver")]
    for table, mods_pool in ((v.tiles, ["", "", "mossy", "cracked", "dark", "wet"]),
                             (v.sprites, ["", "", "", "shiny", "dark", "small"])):
        for ci, cls in enumerate(table):
            cols = [c for c in chrom if (c, cls) not in holdout]
            picks = [cols[(ci * 5 + j * 7) % len(cols)] for j in range(6)]
            for j, colour in enumerate(picks):
                mod = mods_pool[j]
                if (mod in ("dark", "light") and colour in ACHROMATIC) or (mod == "small" and cls in v.thin):
                    mod = ""
                lines.append((colour, cls, [mod] if mod else [], "train"))
    for colour, cls in sorted(holdout, key=lambda p: v.classes.index(p[1])):
        for _ in range(2):
            lines.append((colour, cls, [], "heldout"))
    out = []
    for colour, cls, mods, split in lines:
        noun = v.nouns(cls)[0]
        text = " ".join(mods + [colour, noun])
        if kind_of(cls) == "sprite":
            text = ("an " if text[0] in "aeiou" else "a ") + text
        out.append((text, int(rng.integers(0, 2**31 - 1)), kind_of(cls), colour, cls, ",".join(mods) or "-", split))
    return out


TILE_ROW_MODS = ["old", "mossy", "cracked", "dark", "wet", "snowy", "light"]
SPRITE_ROW_MODS = ["shiny", "old", "glowing", "dark", "small", "light"]
STYLE_PREFIX = {"pixel": "pixel art", "painted": "hand painted"}


def _row_text(cls, colour, mods, style, form, j):
    """A prompt as a player would type it (form: plain / mod / style / phrase)."""
    from captions import OF_NOUN, article

    v = VOCABS["v2"]
    nouns = v.nouns(cls)
    noun = nouns[0] if form == "plain" else nouns[j % len(nouns)]
    words = [MOD_WORDS_V2[m][0] for m in mods] + [colour, noun]
    if style:
        words = [STYLE_PREFIX[style]] + words
    text = " ".join(words)
    if kind_of(cls) == "tile":
        if form == "phrase":
            where = WHERE_V2.get(cls)
            return f"a {where[0]} of {colour} {OF_NOUN.get(cls, nouns[0])}" if where else f"seamless {colour} {noun} texture"
        return text
    return f"{colour} {nouns[-1]} icon" if form == "phrase" else article(text)


# Prompts as players type them (train split: these colour+class pairs are trained on).
PLAYER_ROWS = [  # (prompt, class, colour, mods, style)
    ("old red brick wall", "bricks", "red", ["old"], None),
    ("a glowing blue crystal", "crystal", "blue", ["glowing"], None),
    ("mossy grey cobblestone path", "cobblestone", "grey", ["mossy"], None),
    ("a shiny golden crown", "crown", "gold", ["shiny"], None),
    ("dark wooden floor", "wooden_floor", "brown", ["dark"], None),
    ("snowy grey rock", "rock", "grey", ["snowy"], None),
    ("blue sci-fi panels", "scifi_panels", "blue", [], None),
    ("an old silver helmet", "helmet", "silver", ["old"], None),
    ("a red potion, pixel art", "potion", "red", [], "pixel"),
    ("hand painted green leaves", "leaves", "green", [], "painted"),
    ("a small red apple", "apple", "red", ["small"], None),
    ("gray gravel path", "gravel", "grey", [], None),
]


def prompt_lines_v2(holdout):
    """v2 evaluation list: per class 5 trained combinations (plain, a modifier, pixel art, hand painted, a phrase)
    and its held-out colour twice (plain and styled), then PLAYER_ROWS:
    (prompt, seed, kind, colour, cls, mods, split, style)."""
    v = VOCABS["v2"]
    rng = np.random.default_rng(4321)
    chrom = [c for c in COLOURS if c not in ("gold", "silver")]
    out = []
    for ci, cls in enumerate(v.classes):
        tile = kind_of(cls) == "tile"
        cols = [c for c in chrom if (c, cls) not in holdout]
        picks = [cols[(ci * 5 + j * 7) % len(cols)] for j in range(5)]
        pool = TILE_ROW_MODS if tile else SPRITE_ROW_MODS
        rows = []
        for j, (form, style) in enumerate([("plain", None), ("mod", None), ("style", "pixel"), ("style", "painted"),
                                           ("phrase", None)]):
            colour, mods = picks[j], []
            if form == "mod":
                for d in range(len(pool)):
                    m = pool[(ci + d) % len(pool)]
                    bad = (m in ("dark", "light") and colour in ACHROMATIC) or (m == "small" and cls in v.thin)
                    if not bad and (m, cls) not in NO_MOD_V2:
                        mods = [m]
                        break
            rows.append((colour, mods, style, form, j, "train"))
        for colour, c2 in sorted(p for p in holdout if p[1] == cls):
            rows.append((colour, [], None, "plain", 0, "heldout"))
            rows.append((colour, [], "pixel" if ci % 2 == 0 else "painted", "style", 1, "heldout"))
        for colour, mods, style, form, j, split in rows:
            text = _row_text(cls, colour, mods, style, form, j)
            out.append((text, int(rng.integers(0, 2**31 - 1)), kind_of(cls), colour, cls, ",".join(mods) or "-",
                        split, style or "-"))
    for text, cls, colour, mods, style in PLAYER_ROWS:
        assert (colour, cls) not in holdout, (colour, cls)
        out.append((text, int(rng.integers(0, 2**31 - 1)), kind_of(cls), colour, cls, ",".join(mods) or "-",
                    "train", style or "-"))
    return out


PROMPTS_HEADER = "# id\tprompt\tseed\tkind\tcolour\tclass\tmods\tsplit   (images are <id>.png)\n"
PROMPTS_HEADER_V2 = "# id\tprompt\tseed\tkind\tcolour\tclass\tmods\tsplit\tstyle   (images are <id>.png)\n"


def write_prompts(path, holdout, vocab=DEFAULT_VOCAB):
    rows = prompt_lines_v1(holdout) if vocab == "v1" else prompt_lines_v2(holdout)
    with open(path, "w", encoding="utf-8") as f:
        f.write(PROMPTS_HEADER if vocab == "v1" else PROMPTS_HEADER_V2)
        for i, row in enumerate(rows):
            f.write("\t".join([f"{i:04d}"] + [str(v) for v in row]) + "\n")
    n_held = sum(r[6] == "heldout" for r in rows)
    print(f"{path}: {len(rows)} rows ({len(rows) - n_held} train, {n_held} heldout = {n_held / len(rows):.1%})")


def read_prompts(path):
    """Rows of a prompts file (8 columns for v1, 9 with the style for v2); style None when absent."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            cols = line.rstrip("\n").split("\t")
            pid, text, seed, kind, colour, cls, mods, split = cols[:8]
            style = cols[8] if len(cols) > 8 and cols[8] != "-" else None
            rows.append({"id": pid, "prompt": text, "seed": int(seed), "kind": kind, "colour": colour, "cls": cls,
                         "mods": [] if mods == "-" else mods.split(","), "split": split, "style": style,
                         "v2": len(cols) > 8})
    return rows


# ----------------------------------------------------------------------------------------- checks / preview
def seam_ratio(img):
    x = img[..., :3].astype(np.float64)
    seam = np.concatenate([np.abs(x[:, -1] - x[:, 0]).ravel(), np.abs(x[-1] - x[0]).ravel()]).mean()
    inner = np.concatenate([np.abs(np.diff(x, axis=1)).ravel(), np.abs(np.diff(x, axis=0)).ravel()]).mean()
    return seam / max(inner, 1e-6)


def seam_rank(img):
    """Where the wrap-around seam's mean |difference| ranks among the interior columns' (rows') ones:
    ~0.5 on average for a seamless tile, -> 1.0 for a visible seam. Mean of the two axes."""
    x = img[..., :3].astype(np.float64)
    out = []
    for ax in (1, 0):
        d = np.abs(np.diff(x, axis=ax)).mean(axis=tuple(i for i in range(3) if i != ax))
        s = np.abs(np.take(x, -1, axis=ax) - np.take(x, 0, axis=ax)).mean()
        out.append((np.sum(d < s) + 0.5 * np.sum(d == s)) / len(d))
    return float(np.mean(out))


def alpha_stats(img):
    a = img[..., 3].astype(np.float64) / 255.0
    n = a.shape[0]
    b = max(1, n // 16)
    border = np.concatenate([a[:b].ravel(), a[-b:].ravel(), a[b:-b, :b].ravel(), a[b:-b, -b:].ravel()]).mean()
    c = max(2, n // 8)
    lo = (n - c) // 2
    centre = a[lo:lo + c, lo:lo + c].mean()
    return border, centre


def preview(path, n=64, seed=0, size=32, scale=3, vocab=DEFAULT_VOCAB):
    data = generate(n, seed, size, vocab=vocab)
    cols = 8
    rows = (n + cols - 1) // cols
    cell = size * scale
    sheet = Image.new("RGBA", (cols * cell, rows * cell), (255, 0, 255, 255))
    for k in range(n):
        im = Image.fromarray(data["images"][k], "RGBA").resize((cell, cell), Image.NEAREST)
        bg = Image.new("RGBA", im.size, (255, 0, 255, 255) if (k // cols + k) % 2 else (40, 160, 40, 255))
        sheet.paste(Image.alpha_composite(bg, im), ((k % cols) * cell, (k // cols) * cell))
    sheet.save(path)
    for k in range(n):
        print(f"{k:3d} {data['captions'][k]}")


def check(n=2000, seed=0, size=32, vocab=DEFAULT_VOCAB):
    from evaluate import colour_correct  # same metric as the evaluation

    data = generate(n, seed, size, vocab=vocab)
    holdout = load_holdout()
    ratios, ranks, border, centre, col_ok = [], [], [], [], []
    for img, spec in zip(data["images"], data["specs"]):
        assert (spec["colour"], spec["cls"]) not in holdout
        if kind_of(spec["cls"]) == "tile":
            assert (img[..., 3] == 255).all()
            ratios.append(seam_ratio(img))
            ranks.append(seam_rank(img))
        else:
            b, c = alpha_stats(img)
            border.append(b)
            centre.append(c)
            assert ((img[..., 3] > 0) | (img[..., :3].max(-1) == 0)).all() or vocab == "v1", spec
        col_ok.append(colour_correct(img, spec["colour"]))
    ratios, border, centre = map(np.array, (ratios, border, centre))
    print(f"tiles {len(ratios)}: seam ratio median {np.median(ratios):.3f}, pass(<=1.1) {np.mean(ratios <= 1.1):.3f}, "
          f"seam rank mean {np.mean(ranks):.3f} (0.5 = seamless)")
    print(f"sprites {len(border)}: border max {border.max():.4f} (<=0.05), centre min {centre.min():.3f} (>=0.9)")
    print(f"colour metric on ground truth: {np.mean(col_ok):.3f}")
    for key in ("colour", "cls", "style"):
        per = {}
        for spec, ok in zip(data["specs"], col_ok):
            per.setdefault(str(spec.get(key)), []).append(ok)
        print(f"  per {key}:", {k: round(float(np.mean(v)), 2) for k, v in sorted(per.items())})
    bad = [(s["cls"], s["mods"], s.get("style"), round(float(b), 3), round(float(c), 3))
           for s, b, c in zip([s for s in data["specs"] if kind_of(s["cls"]) == "sprite"], border, centre)
           if b > 0.05 or c < 0.9]
    if bad:
        print("  sprites failing the alpha rules:", bad[:20])
    assert border.max() <= 0.05 and centre.min() >= 0.9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preview", help="write a contact sheet PNG")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--write-prompts")
    ap.add_argument("--vocab", choices=sorted(VOCABS), default=DEFAULT_VOCAB)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=0, help="pixels (default: 64 for v2, 32 for v1)")
    a = ap.parse_args()
    size = a.size or DEFAULT_SIZE[a.vocab]
    if a.preview:
        preview(a.preview, a.n, a.seed, size, vocab=a.vocab)
    if a.check:
        check(a.n, a.seed, size, vocab=a.vocab)
    if a.write_prompts:
        write_prompts(a.write_prompts, load_holdout(), a.vocab)


if __name__ == "__main__":
    main()
