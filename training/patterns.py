"""Seamless tile materials: one drawing function per material (v1's 14 here, unchanged; v2's 10 new ones in
materials_v2.py; shared helpers in fields.py), the tile modifiers and render_tile.

Every function takes (rng, n, base rgb) and returns float RGB (n, n, 3) in [0, 1], periodic on the n x n torus
(integer-frequency Fourier noise, wrap-around Voronoi cells, grids whose periods divide the tile). render_tile
draws at 2x and box-downsamples (which keeps periodicity). The v1 functions and their random draws are
frozen: `train.py --config v1` must regenerate v1's data (the model shipped until session 14) bit for bit.
"""
import math

import numpy as np

from fields import base_rgb, fnoise, grid, lighten, mix, roll_phase, voronoi, voronoi_pts
from materials_v2 import (t_carpet, t_gravel, t_hexagon_tiles, t_leaves, t_mud, t_rock, t_scifi_panels, t_snow,
                          t_tree_bark, t_wooden_floor)

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
    "hexagon_tiles": t_hexagon_tiles, "scifi_panels": t_scifi_panels, "carpet": t_carpet, "leaves": t_leaves,
    "rock": t_rock, "snow": t_snow, "mud": t_mud, "tree_bark": t_tree_bark, "wooden_floor": t_wooden_floor,
    "gravel": t_gravel,
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
        elif m == "old":  # v2: weathered - a little desaturated, grime stains, chipped spots
            grey = img.mean(-1, keepdims=True)
            img = mix(img, grey, 0.25) * 0.9
            grime = np.clip((fnoise(rng, n, 3) - 0.2) * 0.8, 0, 1)[..., None]
            img = img * (1 - 0.35 * grime)
            f1, _, _, _, _ = voronoi_pts(rng.random((12, 2)), n)
            chip = (f1 < rng.uniform(0.012, 0.02))[..., None]
            img = np.where(chip, np.minimum(1, img * 1.25 + 0.05), img)
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

