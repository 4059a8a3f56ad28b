#!/usr/bin/env python3
"""Procedural training data for the embedded default model: seamless texture tiles and item sprites.

Everything is numpy/PIL and deterministic: sample i of (seed, size) is drawn from
np.random.default_rng([seed, i]), so any sample can be regenerated on its own.

* Tiles (RGBA, alpha 255) are periodic by construction: every ingredient is a function on the torus
  (integer-frequency Fourier noise, wrap-around Voronoi cells, brick/plank/plate grids whose periods divide
  the tile), rendered at 2x and box-downsampled (which keeps periodicity).
* Sprites (RGBA with real alpha) are drawn with PIL at 4x on a transparent canvas, premultiplied-box-
  downsampled; fully transparent pixels are (0, 0, 0, 0). Every object covers the centre and keeps the
  outer border transparent (checked by `--check`).

Captions read like what a player types ("mossy dark cobblestone", "a red potion").
Colour+class pairs listed in holdout.txt are never produced for training (generalisation report).

CLI:
  python dataset.py --preview grid.png [--n 64] [--seed 0]     contact sheet with captions printed
  python dataset.py --check [--n 2000]                          seam / alpha / colour self-checks
  python dataset.py --write-prompts prompts.txt                  (re)write the evaluation prompt list
"""
import argparse
import colorsys
import math
import os

import numpy as np
from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))

# ----------------------------------------------------------------------------------------- vocabulary
# colour word -> (hue degrees, saturation, value)
COLOURS = {
    "red": (0, 0.80, 0.80),
    "orange": (26, 0.85, 0.95),
    "yellow": (52, 0.80, 0.95),
    "green": (115, 0.65, 0.65),
    "cyan": (185, 0.70, 0.85),
    "blue": (222, 0.75, 0.80),
    "purple": (275, 0.60, 0.70),
    "pink": (328, 0.45, 0.95),
    "brown": (28, 0.65, 0.45),
    "white": (40, 0.04, 0.93),
    "grey": (210, 0.04, 0.55),
    "black": (220, 0.10, 0.14),
    "gold": (45, 0.80, 0.90),
    "silver": (210, 0.06, 0.78),
}
ACHROMATIC = {"white", "grey", "black", "silver"}
COLOUR_SYNONYMS = {"grey": ["grey", "gray"], "gold": ["gold", "golden"], "silver": ["silver"]}

# tile class id -> (default colour, caption nouns)
TILES = {
    "bricks": ("red", ["bricks", "brick wall", "brick"]),
    "cobblestone": ("grey", ["cobblestone", "cobblestones", "cobblestone floor"]),
    "wood_planks": ("brown", ["wood planks", "wooden planks", "planks", "wooden floor"]),
    "grass": ("green", ["grass", "grass tile", "lawn"]),
    "sand": ("yellow", ["sand", "sand tile", "desert sand"]),
    "water": ("blue", ["water", "water tile", "ocean water"]),
    "lava": ("orange", ["lava", "molten lava", "magma"]),
    "ice": ("cyan", ["ice", "ice tile", "frozen ice"]),
    "metal_plates": ("grey", ["metal plates", "metal plate floor", "steel plates"]),
    "dirt": ("brown", ["dirt", "soil", "dirt ground"]),
    "marble": ("white", ["marble", "marble floor", "marble tiles"]),
    "roof_tiles": ("red", ["roof tiles", "roof shingles", "rooftop"]),
    "stripes": ("blue", ["stripes", "striped pattern", "stripe pattern"]),
    "checker": ("black", ["checker", "checkerboard", "checkered floor"]),
}
# sprite class id -> (default colour, caption nouns)
SPRITES = {
    "potion": ("red", ["potion", "potion bottle", "flask"]),
    "sword": ("silver", ["sword", "blade"]),
    "shield": ("blue", ["shield"]),
    "gem": ("green", ["gem", "gemstone", "jewel"]),
    "coin": ("gold", ["coin"]),
    "key": ("gold", ["key"]),
    "mushroom": ("red", ["mushroom", "toadstool"]),
    "heart": ("red", ["heart"]),
    "chest": ("brown", ["chest", "treasure chest"]),
    "bow": ("brown", ["bow", "longbow"]),
    "scroll": ("white", ["scroll", "paper scroll"]),
    "ring": ("gold", ["ring"]),
}
CLASSES = list(TILES) + list(SPRITES)  # classifier label order
TILE_MODS = ["dark", "light", "mossy", "cracked", "wet", "snowy"]
SPRITE_MODS = ["dark", "light", "shiny", "small"]
THIN_SPRITES = {"sword", "key", "bow"}  # never "small": their centre would no longer be covered
MOD_PHRASES = {"mossy": "with moss", "cracked": "with cracks", "snowy": "covered in snow", "wet": "wet"}


def kind_of(cls):
    return "tile" if cls in TILES else "sprite"


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
            assert colour in COLOURS and cls in CLASSES, line
            pairs.add((colour, cls))
    return pairs


# ----------------------------------------------------------------------------------------- colour helpers
def hsv_rgb(h, s, v):
    return np.array(colorsys.hsv_to_rgb((h % 360) / 360.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))))


def base_rgb(colour, rng, jitter=True):
    h, s, v = COLOURS[colour]
    if jitter:
        h += rng.uniform(-7, 7)
        s *= rng.uniform(0.88, 1.08)
        v *= rng.uniform(0.88, 1.06)
    return hsv_rgb(h, s, v)


def mix(a, b, t):
    return np.asarray(a) * (1 - t) + np.asarray(b) * t


def lighten(rgb):
    """'light' modifier: raise the value (max channel) 55% of the way to 1, then 20% towards white
    (keeps most of the saturation, so light brown reads as tan, not grey)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    v = rgb.max(-1, keepdims=True)
    return mix(rgb * (v + (1 - v) * 0.55) / np.maximum(v, 1e-6), 1.0, 0.2)


# ----------------------------------------------------------------------------------------- periodic fields
def grid(n):
    """Pixel-centre coordinates in [0, 1) on an n x n torus."""
    c = (np.arange(n) + 0.5) / n
    return np.meshgrid(c, c)  # x, y (y = rows)


def fnoise(rng, n, fmax=4, modes=24, beta=1.0, aniso=(1.0, 1.0)):
    """Periodic noise: sum of integer-frequency cosines, normalised to zero mean / unit std."""
    x, y = grid(n)
    out = np.zeros((n, n))
    for _ in range(modes):
        kx, ky = rng.integers(-fmax, fmax + 1, size=2)
        if kx == 0 and ky == 0:
            kx = 1
        amp = 1.0 / (math.hypot(kx * aniso[0], ky * aniso[1]) ** beta)
        out += amp * np.cos(2 * np.pi * (kx * x + ky * y) + rng.uniform(0, 2 * np.pi))
    out -= out.mean()
    return out / (out.std() + 1e-8)


def voronoi(rng, n, cells, jitter_field=None):
    """Wrap-around Voronoi: returns (F1, F2, cell index) on an n x n torus (distances in tile units)."""
    pts = rng.random((cells, 2))
    x, y = grid(n)
    if jitter_field is not None:
        x = x + jitter_field[0]
        y = y + jitter_field[1]
    dx = np.abs(x[None] - pts[:, 0, None, None])
    dy = np.abs(y[None] - pts[:, 1, None, None])
    dx = np.minimum(dx % 1.0, 1.0 - dx % 1.0)
    dy = np.minimum(dy % 1.0, 1.0 - dy % 1.0)
    d = np.sqrt(dx * dx + dy * dy)
    order = np.argsort(d, axis=0)
    f1 = np.take_along_axis(d, order[:1], 0)[0]
    f2 = np.take_along_axis(d, order[1:2], 0)[0]
    return f1, f2, order[0]


def roll_phase(img, rng):
    n = img.shape[0]
    return np.roll(img, (int(rng.integers(n)), int(rng.integers(n))), axis=(0, 1))


# ----------------------------------------------------------------------------------------- tile patterns
# Each takes (rng, n, base rgb) and returns float RGB (n, n, 3) in [0, 1], periodic on the n x n torus.
def t_bricks(rng, n, c):
    rows = int(rng.choice([4, 8]))
    per_row = rows // 2
    bh, bw = n // rows, n // per_row
    yy, xx = np.mgrid[0:n, 0:n]
    r = yy // bh
    xs = (xx + (r % 2) * (bw // 2)) % n
    col = xs // bw
    mort = max(1, n // 32)
    mortar = ((yy % bh) < mort) | ((xs % bw) < mort)
    var = rng.uniform(0.78, 1.12, size=(rows, per_row))[r, col]
    img = c[None, None] * var[..., None] * (1 + 0.07 * fnoise(rng, n, 8)[..., None])
    mcol = mix(np.full(3, rng.choice([0.78, 0.3])), c, 0.15)
    return np.where(mortar[..., None], mcol, img)


def t_cobblestone(rng, n, c):
    jit = (0.02 * fnoise(rng, n, 6), 0.02 * fnoise(rng, n, 6))
    cells = int(rng.integers(9, 18))
    f1, f2, idx = voronoi(rng, n, cells, jit)
    var = rng.uniform(0.75, 1.15, size=cells)[idx]
    edge = f2 - f1
    w = 0.5 / math.sqrt(cells)
    dome = np.clip(edge / w, 0, 1) ** 0.5
    img = c[None, None] * (var * (0.65 + 0.4 * dome))[..., None]
    img *= 1 + 0.06 * fnoise(rng, n, 8)[..., None]
    gap = edge < 0.025
    return np.where(gap[..., None], c * 0.3, img)


def t_wood_planks(rng, n, c):
    planks = int(rng.choice([2, 4]))
    ph = n // planks
    x, y = grid(n)
    yy, xx = np.mgrid[0:n, 0:n]
    p = yy // ph
    grain_n = fnoise(rng, n, 3, aniso=(0.3, 1.0))
    grain = np.sin(2 * np.pi * (rng.integers(6, 12) * y + 0.35 * grain_n + p * 0.37))
    var = rng.uniform(0.8, 1.1, size=planks)[p]
    img = c[None, None] * (var * (0.85 + 0.12 * grain))[..., None]
    gap = (yy % ph) < max(1, n // 32)
    joints = rng.integers(0, n, size=planks)
    joint = np.abs(((xx - joints[p]) % n)) < max(1, n // 32)
    img = np.where((gap | joint)[..., None], c * 0.4, img)
    return img


def t_grass(rng, n, c):
    img = c[None, None] * (0.8 + 0.15 * fnoise(rng, n, 3))[..., None]
    shade = np.zeros((n, n))
    for _ in range(n * 2):
        x0, y0 = rng.integers(0, n, size=2)
        ln = int(rng.integers(n // 16, n // 6))
        lean = rng.choice([-1, 0, 1])
        s = rng.uniform(-0.35, 0.35)
        for k in range(ln):
            shade[(y0 - k) % n, (x0 + (lean * k) // 3) % n] = s
    return np.clip(img * (1 + shade[..., None]), 0, 1)


def t_sand(rng, n, c):
    x, y = grid(n)
    kx, ky = rng.integers(-2, 3), rng.integers(3, 7)
    rip = np.sin(2 * np.pi * (kx * x + ky * y) + 1.2 * fnoise(rng, n, 2))
    speck = rng.normal(0, 0.04, size=(n, n))
    return c[None, None] * (0.88 + 0.07 * fnoise(rng, n, 3) + 0.06 * rip + speck)[..., None]


def t_water(rng, n, c):
    a, b = fnoise(rng, n, 4), fnoise(rng, n, 4)
    caust = np.exp(-((a - b) ** 2) / 0.05)
    img = c[None, None] * (0.78 + 0.12 * fnoise(rng, n, 2))[..., None]
    return np.clip(mix(img, np.minimum(1, c * 0.5 + 0.6), (0.55 * caust)[..., None]), 0, 1)


def t_lava(rng, n, c):
    jit = (0.03 * fnoise(rng, n, 5), 0.03 * fnoise(rng, n, 5))
    f1, f2, _ = voronoi(rng, n, int(rng.integers(6, 12)), jit)
    glow = np.exp(-(f2 - f1) / 0.045)
    crust = c * 0.28 * (1 + 0.15 * fnoise(rng, n, 6))[..., None]
    hot = np.minimum(1, c * 1.15 + np.array([0.15, 0.12, 0.05]))
    return np.clip(mix(crust, hot, glow[..., None]), 0, 1)


def t_ice(rng, n, c):
    c = mix(c, np.ones(3), 0.25)
    f1, f2, _ = voronoi(rng, n, int(rng.integers(4, 8)), (0.02 * fnoise(rng, n, 6), 0.02 * fnoise(rng, n, 6)))
    crack = (f2 - f1) < 0.012
    x, y = grid(n)
    streak = np.sin(2 * np.pi * (2 * x + 2 * y + 0.2 * fnoise(rng, n, 2))) > 0.9
    img = c[None, None] * (0.9 + 0.06 * fnoise(rng, n, 3))[..., None]
    img = np.where(streak[..., None], np.minimum(1, img + 0.12), img)
    return np.clip(np.where(crack[..., None], np.minimum(1, img + 0.25), img), 0, 1)


def t_metal_plates(rng, n, c):
    k = int(rng.choice([1, 2]))
    pw = n // k
    yy, xx = np.mgrid[0:n, 0:n]
    u, v = xx % pw, yy % pw
    brushed = fnoise(rng, n, 6, aniso=(0.1, 1.0))
    img = c[None, None] * (0.85 + 0.06 * brushed)[..., None]
    bev = max(1, n // 32)
    img = np.where(((u < bev) | (v < bev))[..., None], np.minimum(1, c * 1.25 + 0.08), img)
    img = np.where(((u >= pw - bev) | (v >= pw - bev))[..., None], c * 0.45, img)
    rv = pw / 8
    for cx in (pw * 0.18, pw * 0.82):
        for cy in (pw * 0.18, pw * 0.82):
            d = np.hypot(u + 0.5 - cx, v + 0.5 - cy)
            img = np.where((d < rv)[..., None], np.minimum(1, c * 1.3 + 0.1) * (1 - 0.3 * (d / rv))[..., None], img)
    return img


def t_dirt(rng, n, c):
    img = c[None, None] * (0.85 + 0.12 * fnoise(rng, n, 3) + 0.08 * fnoise(rng, n, 10))[..., None]
    f1, _, idx = voronoi(rng, n, 10)
    peb = f1 < rng.uniform(0.02, 0.04)
    pv = rng.uniform(0.6, 1.3, size=10)[idx]
    return np.clip(np.where(peb[..., None], c * pv[..., None], img), 0, 1)


def t_marble(rng, n, c):
    x, y = grid(n)
    kx, ky = rng.integers(1, 3), rng.integers(-2, 3)
    v = np.abs(np.sin(np.pi * (kx * x + ky * y) + 1.4 * fnoise(rng, n, 3)))
    vein = np.exp(-v / 0.06)
    img = c[None, None] * (0.92 + 0.05 * fnoise(rng, n, 2))[..., None]
    vc = c * 0.45 if c.mean() > 0.5 else np.minimum(1, c + 0.35)
    return np.clip(mix(img, vc, (0.85 * vein)[..., None]), 0, 1)


def t_roof_tiles(rng, n, c):
    rows = int(rng.choice([4, 8]))
    h = n // rows
    w = h * 2
    per = n // w
    yy, xx = np.mgrid[0:n, 0:n]
    img = np.zeros((n, n, 3))
    # Draw rows bottom-up so each row's scallops overlap the row below (periodic in y by wrap).
    depth = np.full((n, n), np.inf)
    for r in range(rows):
        cy = (r + 1) * h
        off = (r % 2) * (w // 2)
        for j in range(per + 1):
            cx = j * w + off
            dx = (xx + 0.5 - cx + n / 2) % n - n / 2
            dy = (yy + 0.5 - (cy - h)) % n
            inside = (np.hypot(dx, dy - h * 0.15) < w * 0.5) & (dy < h * 1.15)
            m = inside & (depth > r)
            depth = np.where(m, r, depth)
            shade = 0.65 + 0.45 * np.clip(dy / (h * 1.15), 0, 1)
            var = rng.uniform(0.85, 1.1)
            img = np.where(m[..., None], c * (shade * var)[..., None], img)
    return np.where(np.isinf(depth)[..., None], c * 0.35, img)


def t_stripes(rng, n, c):
    x, y = grid(n)
    k = int(rng.integers(2, 7))
    d = int(rng.integers(0, 3))
    u = [x, y, (x + y) / 1.0][d] * k
    band = (u % 1.0) < 0.5
    other = c * 0.45 if rng.random() < 0.6 else mix(c, np.ones(3), 0.55)
    return np.where(band[..., None], c[None, None] * np.ones((n, n, 1)), other)


def t_checker(rng, n, c):
    k = int(rng.choice([2, 4, 8]))
    yy, xx = np.mgrid[0:n, 0:n]
    a = ((xx * k // n) + (yy * k // n)) % 2 == 0
    other = mix(c, np.ones(3), 0.6) if c.mean() < 0.6 else c * 0.45
    img = np.where(a[..., None], c[None, None] * np.ones((n, n, 1)), other)
    return img * (1 + 0.03 * fnoise(rng, n, 8))[..., None]


TILE_FN = {
    "bricks": t_bricks, "cobblestone": t_cobblestone, "wood_planks": t_wood_planks, "grass": t_grass,
    "sand": t_sand, "water": t_water, "lava": t_lava, "ice": t_ice, "metal_plates": t_metal_plates,
    "dirt": t_dirt, "marble": t_marble, "roof_tiles": t_roof_tiles, "stripes": t_stripes, "checker": t_checker,
}


def apply_tile_mods(img, mods, rng):
    n = img.shape[0]
    for m in mods:
        if m == "mossy":
            mask = np.clip((fnoise(rng, n, 4) - 0.6) * 2.5, 0, 1)[..., None]
            moss = np.array([0.28, 0.45, 0.14]) * (0.85 + 0.25 * fnoise(rng, n, 12))[..., None]
            img = mix(img, moss, 0.85 * mask)
        elif m == "snowy":
            mask = np.clip((fnoise(rng, n, 4) - 0.5) * 3, 0, 1)[..., None]
            img = mix(img, np.full(3, 0.95), 0.9 * mask)
        elif m == "cracked":
            jit = (0.03 * fnoise(rng, n, 8), 0.03 * fnoise(rng, n, 8))
            f1, f2, _ = voronoi(rng, n, int(rng.integers(3, 6)), jit)
            crack = np.clip(1 - (f2 - f1) / 0.012, 0, 1)[..., None]
            img = mix(img, img * 0.25, crack)
        elif m == "wet":
            img = img * 0.8
            hi = np.clip((fnoise(rng, n, 6) - 1.3) * 2, 0, 1)[..., None]
            img = mix(img, np.minimum(1, img + 0.35), hi)
    for m in mods:  # value modifiers last so they act on the whole surface
        if m == "dark":
            img = img * 0.55
        elif m == "light":
            img = lighten(img)
    return np.clip(img, 0, 1)


def render_tile(cls, colour, mods, rng, size=32):
    n = size * 2
    img = TILE_FN[cls](rng, n, base_rgb(colour, rng))
    img = apply_tile_mods(img, mods, rng)
    img = roll_phase(img, rng)
    img = img.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))  # box 2x: keeps the torus
    rgb = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return np.concatenate([rgb, np.full((size, size, 1), 255, np.uint8)], -1)


# ----------------------------------------------------------------------------------------- sprites
def _u8(c):
    c = np.clip(np.asarray(c, dtype=np.float64), 0, 1)
    return tuple(int(round(v * 255)) for v in c) + (255,)


class Canvas:
    """Draws in unit coordinates ([0,1]^2, y down) on an S x S RGBA canvas with jitter (scale, offset)."""

    def __init__(self, S, scale, off):
        self.S, self.scale, self.off = S, scale, off
        self.im = Image.new("RGBA", (S, S), (0, 0, 0, 0))
        self.d = ImageDraw.Draw(self.im)

    def p(self, x, y):
        return ((0.5 + (x - 0.5) * self.scale + self.off[0]) * self.S,
                (0.5 + (y - 0.5) * self.scale + self.off[1]) * self.S)

    def w(self, v):
        return max(1, int(round(v * self.scale * self.S)))

    def poly(self, pts, fill, outline=None, width=0.0):
        self.d.polygon([self.p(*q) for q in pts], fill=_u8(fill), outline=_u8(outline) if outline is not None else None,
                       width=self.w(width) if outline is not None else 0)

    def ellipse(self, x0, y0, x1, y1, fill, outline=None, width=0.0):
        a, b = self.p(x0, y0), self.p(x1, y1)
        self.d.ellipse([a, b], fill=_u8(fill) if fill is not None else None,
                       outline=_u8(outline) if outline is not None else None,
                       width=self.w(width) if outline is not None else 0)

    def rect(self, x0, y0, x1, y1, fill, outline=None, width=0.0):
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], fill, outline, width)

    def line(self, pts, fill, width):
        self.d.line([self.p(*q) for q in pts], fill=_u8(fill), width=self.w(width), joint="curve")

    def arc(self, x0, y0, x1, y1, start, end, fill, width):
        a, b = self.p(x0, y0), self.p(x1, y1)
        self.d.arc([a, b], start, end, fill=_u8(fill), width=self.w(width))


WOOD = np.array([0.45, 0.28, 0.13])
STEEL = np.array([0.72, 0.74, 0.78])
GOLDC = np.array([0.92, 0.74, 0.2])


def s_potion(cv, c, ol, hi):
    cv.rect(0.42, 0.12, 0.58, 0.24, WOOD, ol, 0.03)  # cork
    cv.rect(0.40, 0.22, 0.60, 0.40, mix(c, np.ones(3), 0.55), ol, 0.03)  # glass neck
    cv.ellipse(0.20, 0.30, 0.80, 0.88, c, ol, 0.035)  # flask
    cv.ellipse(0.31, 0.42, 0.44, 0.58, hi)


def s_sword(cv, c, ol, hi):
    n = np.array([0.0672, 0.0672])  # half-width 0.095 across the diagonal blade
    p0, p1, tip = np.array([0.36, 0.64]), np.array([0.82, 0.18]), (0.90, 0.10)
    cv.poly([tuple(p0 + n), tuple(p1 + n), tip, tuple(p1 - n), tuple(p0 - n)], c, ol, 0.03)  # blade over the centre
    cv.line([(0.40, 0.60), (0.80, 0.20)], hi, 0.025)
    cv.line([tuple(p0 + 2.4 * n), tuple(p0 - 2.4 * n)], c * 0.6, 0.07)  # guard
    cv.line([(0.34, 0.66), (0.18, 0.82)], WOOD, 0.07)  # grip
    cv.ellipse(0.11, 0.81, 0.21, 0.91, c * 0.6, ol, 0.02)


def s_shield(cv, c, ol, hi):
    pts = [(0.18, 0.14), (0.82, 0.14), (0.82, 0.48), (0.72, 0.70), (0.50, 0.88), (0.28, 0.70), (0.18, 0.48)]
    cv.poly(pts, STEEL * 0.9, ol, 0.03)
    inner = [(0.5 + (x - 0.5) * 0.78, 0.14 + (y - 0.14) * 0.85 + 0.04) for x, y in pts]
    cv.poly(inner, c)
    cv.rect(0.45, 0.20, 0.55, 0.76, hi)


def s_gem(cv, c, ol, hi):
    cv.poly([(0.28, 0.30), (0.72, 0.30), (0.86, 0.44), (0.50, 0.86), (0.14, 0.44)], c, ol, 0.03)
    cv.poly([(0.36, 0.30), (0.64, 0.30), (0.58, 0.44), (0.42, 0.44)], hi)
    cv.poly([(0.14, 0.44), (0.86, 0.44), (0.50, 0.86)], c * 0.8, ol, 0.015)


def s_coin(cv, c, ol, hi):
    cv.ellipse(0.16, 0.16, 0.84, 0.84, c, ol, 0.04)
    cv.ellipse(0.28, 0.28, 0.72, 0.72, c * 0.82)
    cv.rect(0.46, 0.36, 0.54, 0.64, hi)


def s_key(cv, c, ol, hi):
    cv.rect(0.34, 0.40, 0.86, 0.60, c, ol, 0.025)  # shaft through the centre
    cv.rect(0.70, 0.56, 0.77, 0.72, c, ol, 0.025)
    cv.rect(0.80, 0.56, 0.86, 0.68, c, ol, 0.025)
    cv.ellipse(0.10, 0.28, 0.42, 0.72, c, ol, 0.03)  # bow of the key
    cv.ellipse(0.19, 0.40, 0.31, 0.60, (0, 0, 0), None)
    cv.line([(0.40, 0.46), (0.82, 0.46)], hi, 0.025)


def s_mushroom(cv, c, ol, hi):
    cv.rect(0.38, 0.46, 0.62, 0.86, np.array([0.93, 0.88, 0.78]), ol, 0.03)  # stem
    cv.d.chord([cv.p(0.12, 0.14), cv.p(0.88, 0.82)], 180, 360, fill=_u8(c), outline=_u8(ol), width=cv.w(0.03))
    for x, y, r in ((0.32, 0.34, 0.06), (0.55, 0.24, 0.05), (0.68, 0.40, 0.05)):
        cv.ellipse(x - r, y - r, x + r, y + r, np.array([0.97, 0.97, 0.95]))


def s_heart(cv, c, ol, hi):
    cv.poly([(0.14, 0.44), (0.50, 0.86), (0.86, 0.44), (0.50, 0.30)], c, ol, 0.03)
    cv.ellipse(0.12, 0.18, 0.52, 0.58, c, ol, 0.03)
    cv.ellipse(0.48, 0.18, 0.88, 0.58, c, ol, 0.03)
    cv.poly([(0.17, 0.46), (0.50, 0.82), (0.83, 0.46), (0.50, 0.34)], c)
    cv.rect(0.20, 0.36, 0.80, 0.50, c)
    cv.ellipse(0.22, 0.26, 0.34, 0.38, hi)


def s_chest(cv, c, ol, hi):
    cv.rect(0.14, 0.42, 0.86, 0.82, c, ol, 0.03)
    cv.d.chord([cv.p(0.14, 0.20), cv.p(0.86, 0.62)], 180, 360, fill=_u8(c * 0.85), outline=_u8(ol), width=cv.w(0.03))
    cv.rect(0.14, 0.40, 0.86, 0.46, c * 0.6)
    cv.rect(0.28, 0.22, 0.34, 0.82, c * 0.6)
    cv.rect(0.66, 0.22, 0.72, 0.82, c * 0.6)
    cv.rect(0.44, 0.44, 0.56, 0.58, GOLDC, ol, 0.02)


def s_bow(cv, c, ol, hi):
    cv.line([(0.31, 0.10), (0.31, 0.90)], np.array([0.9, 0.9, 0.85]), 0.02)  # string
    cv.arc(-0.10, 0.08, 0.62, 0.92, -80, 80, ol, 0.13)  # limbs, apex right of the centre
    cv.arc(-0.09, 0.09, 0.61, 0.91, -78, 78, c, 0.09)
    cv.line([(0.12, 0.5), (0.86, 0.5)], WOOD * 1.2, 0.03)  # arrow
    cv.poly([(0.86, 0.44), (0.95, 0.5), (0.86, 0.56)], STEEL)
    cv.rect(0.36, 0.36, 0.66, 0.64, c * 0.75, ol, 0.025)  # grip over the centre


def s_scroll(cv, c, ol, hi):
    paper = mix(c, np.array([0.96, 0.92, 0.8]), 0.35)
    cv.rect(0.24, 0.24, 0.76, 0.76, paper, ol, 0.025)
    for y in (0.38, 0.48, 0.58):
        cv.line([(0.32, y), (0.68, y)], paper * 0.55, 0.025)
    for x in (0.16, 0.74):
        cv.rect(x, 0.18, x + 0.10, 0.82, paper * 0.8, ol, 0.025)


def s_ring(cv, c, ol, hi):
    cv.ellipse(0.16, 0.16, 0.84, 0.84, None, ol, 0.13)
    cv.ellipse(0.18, 0.18, 0.82, 0.82, None, c, 0.09)
    cv.ellipse(0.32, 0.32, 0.68, 0.68, mix(c, np.ones(3), 0.3), ol, 0.03)  # gem setting over the centre
    cv.ellipse(0.40, 0.38, 0.50, 0.48, hi)


SPRITE_FN = {
    "potion": s_potion, "sword": s_sword, "shield": s_shield, "gem": s_gem, "coin": s_coin, "key": s_key,
    "mushroom": s_mushroom, "heart": s_heart, "chest": s_chest, "bow": s_bow, "scroll": s_scroll, "ring": s_ring,
}


def render_sprite(cls, colour, mods, rng, size=32):
    ss = 4
    S = size * ss
    c = base_rgb(colour, rng)
    if "dark" in mods:
        c = c * 0.55
    if "light" in mods:
        c = lighten(c)
    scale = rng.uniform(0.66, 0.76) if "small" in mods else rng.uniform(0.88, 1.0)
    off = rng.uniform(-0.03, 0.03, size=2) * (1.0 if scale > 0.8 else 0.5)
    cv = Canvas(S, scale, off)
    ol = c * 0.3
    hi = mix(c, np.ones(3), 0.6 if "shiny" in mods else 0.35)
    SPRITE_FN[cls](cv, c, ol, hi)
    if "shiny" in mods:
        cv.ellipse(0.56, 0.30, 0.64, 0.38, np.ones(3))
    a = np.asarray(cv.im).astype(np.float64) / 255.0
    if rng.random() < 0.5:
        a = a[:, ::-1]
    pm = a[..., :3] * a[..., 3:]
    pm = pm.reshape(size, ss, size, ss, 3).mean(axis=(1, 3))
    al = a[..., 3].reshape(size, ss, size, ss).mean(axis=(1, 3))
    rgb = np.where(al[..., None] > 0, pm / np.maximum(al[..., None], 1e-8), 0)
    out = np.concatenate([rgb, al[..., None]], -1)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------- captions
def colour_word(colour, rng):
    syn = COLOUR_SYNONYMS.get(colour, [colour])
    return syn[int(rng.integers(len(syn)))]


def caption(spec, rng):
    cls, colour, mods, say_colour = spec["cls"], spec["colour"], spec["mods"], spec["say_colour"]
    nouns = (TILES.get(cls) or SPRITES[cls])[1]
    noun = nouns[int(rng.integers(len(nouns)))]
    cw = colour_word(colour, rng) if say_colour else ""
    if kind_of(cls) == "tile":
        mods = list(mods)
        rng.shuffle(mods)
        form = int(rng.integers(6))
        if form == 5 and mods and any(m in MOD_PHRASES for m in mods):
            pre = [m for m in mods if m not in MOD_PHRASES or m == "wet"]
            post = [MOD_PHRASES[m] for m in mods if m in MOD_PHRASES and m != "wet"]
            words = pre + [cw, noun] + post
            text = " ".join(w for w in words if w)
        else:
            text = " ".join(w for w in mods + [cw, noun] if w)
            has_suffix = noun.endswith(("tile", "tiles", "texture"))
            if form == 1:
                text = "seamless " + text + ("" if has_suffix else " texture")
            elif form == 2 and not has_suffix:
                text += " texture"
            elif form == 3 and not has_suffix:
                text += " tile"
            elif form == 4:
                text = "tileable " + text
    else:
        text = " ".join(w for w in list(mods) + [cw, noun] if w)
        form = int(rng.integers(7))
        if form == 0:
            text = ("an " if text[0] in "aeiou" else "a ") + text
        elif form == 1:
            text += " sprite"
        elif form == 2:
            text += " icon"
        elif form == 3:
            text = "pixel art " + text
        elif form == 4:
            text = ("an " if text[0] in "aeiou" else "a ") + text + ", item sprite"
    return " ".join(text.split())


# ----------------------------------------------------------------------------------------- sampling
def sample_spec(rng, holdout=frozenset(), tile_frac=0.55):
    tile = rng.random() < tile_frac
    table = TILES if tile else SPRITES
    cls = list(table)[int(rng.integers(len(table)))]
    default = table[cls][0]
    names = list(COLOURS)
    while True:
        colour = default if rng.random() < 0.12 else names[int(rng.integers(len(names)))]
        if (colour, cls) not in holdout:
            break
    say_colour = not (colour == default and rng.random() < 0.6)
    pool = TILE_MODS if tile else SPRITE_MODS
    k = int(rng.choice([0, 0, 1, 1, 2]))
    mods = []
    for m in rng.permutation(pool)[:k]:
        m = str(m)
        if m in ("dark", "light") and (colour in ("white", "black") or {"dark", "light"} & set(mods)):
            continue
        if m in ("mossy", "snowy") and {"mossy", "snowy"} & set(mods):
            continue
        if m == "small" and cls in THIN_SPRITES:
            continue
        mods.append(m)
    return {"cls": cls, "colour": colour, "mods": sorted(mods), "say_colour": say_colour}


def render(spec, rng, size=32):
    fn = render_tile if kind_of(spec["cls"]) == "tile" else render_sprite
    return fn(spec["cls"], spec["colour"], spec["mods"], rng, size)


def make_sample(seed, i, size=32, holdout=frozenset()):
    rng = np.random.default_rng([seed, i])
    spec = sample_spec(rng, holdout)
    img = render(spec, rng, size)
    return img, caption(spec, rng), spec


def generate(n, seed=0, size=32, holdout=None, start=0, log_every=0):
    """n samples -> dict(images uint8 [n,size,size,4], captions list, labels int [n], is_tile bool [n], specs)."""
    holdout = load_holdout() if holdout is None else holdout
    imgs = np.zeros((n, size, size, 4), np.uint8)
    caps, specs = [], []
    for k in range(n):
        img, cap, spec = make_sample(seed, start + k, size, holdout)
        imgs[k] = img
        caps.append(cap)
        specs.append(spec)
        if log_every and (k + 1) % log_every == 0:
            print(f"  generated {k + 1}/{n}", flush=True)
    labels = np.array([CLASSES.index(s["cls"]) for s in specs], np.int64)
    is_tile = np.array([kind_of(s["cls"]) == "tile" for s in specs])
    return {"images": imgs, "captions": caps, "labels": labels, "is_tile": is_tile, "specs": specs}


def all_words():
    """Every word the captions can use (for the tokenizer corpus)."""
    words = set()
    for table in (TILES, SPRITES):
        for _, (_, nouns) in table.items():
            for nn in nouns:
                words.update(nn.split())
    for c in COLOURS:
        words.update(COLOUR_SYNONYMS.get(c, [c]))
    words.update(TILE_MODS + SPRITE_MODS)
    for p in MOD_PHRASES.values():
        words.update(p.split())
    words.update(["a", "an", "seamless", "texture", "tile", "tileable", "sprite", "icon", "pixel", "art", "item"])
    return sorted(words)


# ----------------------------------------------------------------------------------------- evaluation prompts
def prompt_lines(holdout):
    """Deterministic evaluation prompt list: (prompt, seed, kind, colour, cls, mods, split)."""
    rng = np.random.default_rng(1234)
    lines = []
    chrom = [c for c in COLOURS if c not in ("gold", "silver")]
    for table, mods_pool in ((TILES, ["", "", "mossy", "cracked", "dark", "wet"]),
                             (SPRITES, ["", "", "", "shiny", "dark", "small"])):
        for ci, cls in enumerate(table):
            cols = [c for c in chrom if (c, cls) not in holdout]
            picks = [cols[(ci * 5 + j * 7) % len(cols)] for j in range(6)]
            for j, colour in enumerate(picks):
                mod = mods_pool[j]
                if (mod in ("dark", "light") and colour in ACHROMATIC) or (mod == "small" and cls in THIN_SPRITES):
                    mod = ""
                lines.append((colour, cls, [mod] if mod else [], "train"))
    for colour, cls in sorted(holdout, key=lambda p: CLASSES.index(p[1])):
        for _ in range(2):
            lines.append((colour, cls, [], "heldout"))
    out = []
    for i, (colour, cls, mods, split) in enumerate(lines):
        table = TILES if cls in TILES else SPRITES
        noun = table[cls][1][0]
        text = " ".join(mods + [colour, noun])
        if kind_of(cls) == "sprite":
            text = ("an " if text[0] in "aeiou" else "a ") + text
        out.append((text, int(rng.integers(0, 2**31 - 1)), kind_of(cls), colour, cls, ",".join(mods) or "-", split))
    return out


PROMPTS_HEADER = "# id\tprompt\tseed\tkind\tcolour\tclass\tmods\tsplit   (images are <id>.png)\n"


def write_prompts(path, holdout):
    with open(path, "w", encoding="utf-8") as f:
        f.write(PROMPTS_HEADER)
        for i, row in enumerate(prompt_lines(holdout)):
            f.write("\t".join([f"{i:04d}"] + [str(v) for v in row]) + "\n")


def read_prompts(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            pid, text, seed, kind, colour, cls, mods, split = line.rstrip("\n").split("\t")
            rows.append({"id": pid, "prompt": text, "seed": int(seed), "kind": kind, "colour": colour, "cls": cls,
                         "mods": [] if mods == "-" else mods.split(","), "split": split})
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


def preview(path, n=64, seed=0, size=32, scale=3):
    data = generate(n, seed, size)
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


def check(n=2000, seed=0, size=32):
    from evaluate import colour_correct  # same metric as the evaluation

    data = generate(n, seed, size)
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
        col_ok.append(colour_correct(img, spec["colour"]))
    ratios, border, centre = map(np.array, (ratios, border, centre))
    print(f"tiles {len(ratios)}: seam ratio median {np.median(ratios):.3f}, pass(<=1.1) {np.mean(ratios <= 1.1):.3f}, "
          f"seam rank mean {np.mean(ranks):.3f} (0.5 = seamless)")
    print(f"sprites {len(border)}: border max {border.max():.4f} (<=0.05), centre min {centre.min():.3f} (>=0.9)")
    print(f"colour metric on ground truth: {np.mean(col_ok):.3f}")
    per = {}
    for spec, ok in zip(data["specs"], col_ok):
        per.setdefault(spec["colour"], []).append(ok)
    print("  per colour:", {k: round(float(np.mean(v)), 2) for k, v in sorted(per.items())})
    assert border.max() <= 0.05 and centre.min() >= 0.9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preview", help="write a contact sheet PNG")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--write-prompts")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=32)
    a = ap.parse_args()
    if a.preview:
        preview(a.preview, a.n, a.seed, a.size)
    if a.check:
        check(a.n, a.seed, a.size)
    if a.write_prompts:
        write_prompts(a.write_prompts, load_holdout())


if __name__ == "__main__":
    main()
