"""v2's ten new seamless tile materials (issue 12). Same contract as patterns.py: (rng, n, base rgb) ->
float RGB (n, n, 3) in [0, 1], periodic on the n x n torus."""
import math

import numpy as np

from fields import fnoise, grid, hsv_rgb, mix, voronoi_pts, wrap_delta

def t_hexagon_tiles(rng, n, c):
    cols, rows = [(3, 4), (5, 6)][int(rng.integers(2))]  # rows/cols ~ 2/sqrt(3): near-regular hexagons
    pts = np.array([((i + 0.5 * (j % 2)) / cols, (j + 0.5) / rows) for j in range(rows) for i in range(cols)])
    f1, f2, idx, _, _ = voronoi_pts(pts, n)
    var = rng.uniform(0.8, 1.12, size=len(pts))[idx]
    edge = f2 - f1
    w = 0.5 / cols
    bevel = np.clip(edge / (0.35 * w), 0, 1)
    img = c[None, None] * (var * (0.8 + 0.2 * bevel) * (1 + 0.05 * fnoise(rng, n, 8)))[..., None]
    grout = mix(np.full(3, rng.choice([0.85, 0.25])), c, 0.2)
    return np.where((edge < 0.09 * w)[..., None], grout, img)


def t_scifi_panels(rng, n, c):
    k = int(rng.choice([1, 2]))
    pw = n // k
    yy, xx = np.mgrid[0:n, 0:n]
    u, v = xx % pw, yy % pw
    pid = (yy // pw) * k + xx // pw
    split = rng.integers(0, 3, size=k * k)[pid]  # 0 none, 1 horizontal, 2 vertical sub-panel seam
    img = c[None, None] * (rng.uniform(0.82, 1.08, size=k * k)[pid] * (1 + 0.03 * fnoise(rng, n, 6)))[..., None]
    lw = max(1, n // 64)
    half = pw // 2
    sub = np.where(split == 1, v >= half, np.where(split == 2, u >= half, False))
    img = np.where(sub[..., None], img * 0.88, img)
    seam = (u < 2 * lw) | (v < 2 * lw) | ((split == 1) & (np.abs(v - half) < lw)) | ((split == 2) & (np.abs(u - half) < lw))
    hi = (u >= 2 * lw) & (u < 3 * lw) | (v >= 2 * lw) & (v < 3 * lw)
    img = np.where(hi[..., None], np.minimum(1, img * 1.2 + 0.06), img)
    # details in panel coordinates: a vent (horizontal slits) and a glowing light strip, positions per tile
    accent = hsv_rgb(rng.choice([185, 30, 120, 0]), 0.8, 1.0)
    vy0, vx0 = int(pw * rng.uniform(0.15, 0.45)), int(pw * rng.uniform(0.12, 0.3))
    vent = (v >= vy0) & (v < vy0 + pw // 5) & (u >= vx0) & (u < vx0 + pw // 3) & ((v - vy0) % (3 * lw) < lw * 1.5)
    img = np.where(vent[..., None], c * 0.3, img)
    ly = int(pw * rng.uniform(0.65, 0.8))
    strip = (np.abs(v - ly) <= lw) & (u > pw * 0.55) & (u < pw * 0.9)
    img = np.where(strip[..., None], accent, img)
    glow = np.exp(-np.abs(v - ly) / (2.5 * lw)) * ((u > pw * 0.53) & (u < pw * 0.92))
    img = mix(img, accent, (0.35 * glow * ~strip)[..., None])
    for cx, cy in ((0.08, 0.08), (0.92, 0.08), (0.08, 0.92), (0.92, 0.92)):
        d = np.hypot(u + 0.5 - cx * pw, v + 0.5 - cy * pw)
        img = np.where((d < 1.6 * lw)[..., None], c * 0.4, img)
    return np.clip(np.where(seam[..., None], c * 0.25, img), 0, 1)


def t_carpet(rng, n, c):
    x, y = grid(n)
    k = int(rng.choice([1, 2, 4]))
    u, v = (x * k) % 1.0 - 0.5, (y * k) % 1.0 - 0.5
    d = np.abs(u) + np.abs(v)  # diamond motif per cell
    second = mix(c, np.array([0.95, 0.8, 0.35]), 0.6) if rng.random() < 0.5 else c * 0.5
    motif = (np.abs(d - 0.35) < 0.06) | (d < 0.1) | (np.abs(np.abs(v) - 0.46) < 0.025)
    img = np.where(motif[..., None], second, c[None, None] * np.ones((n, n, 1)))
    yy, xx = np.mgrid[0:n, 0:n]
    weave = 0.06 * np.sign(np.sin(np.pi * xx / 2 + 0.3) * np.sin(np.pi * yy / 2 + 0.3))
    fibre = rng.normal(0, 0.04, size=(n, n)) + 0.05 * fnoise(rng, n, 3)
    return np.clip(img * (1 + weave + fibre)[..., None], 0, 1)


def t_leaves(rng, n, c):
    yy, xx = np.mgrid[0:n, 0:n] + 0.5
    img = c[None, None] * (0.32 + 0.06 * fnoise(rng, n, 4))[..., None] * np.ones((n, n, 1))
    count = int(rng.integers(45, 70))
    length = n * rng.uniform(0.08, 0.12)
    for _ in range(count):
        cx, cy = rng.uniform(0, n, size=2)
        th = rng.uniform(0, np.pi)
        ln, wd = length * rng.uniform(0.8, 1.25), length * rng.uniform(0.38, 0.5)
        dx, dy = wrap_delta(xx, cx, n), wrap_delta(yy, cy, n)
        a = dx * math.cos(th) + dy * math.sin(th)
        b = -dx * math.sin(th) + dy * math.cos(th)
        inside = (np.abs(a) < ln) & (np.abs(b) < wd * (1 - (a / ln) ** 2))
        if not inside.any():
            continue
        tone = c * rng.uniform(0.6, 1.15) * np.array([rng.uniform(0.9, 1.1), 1.0, rng.uniform(0.85, 1.05)])
        shade = 0.8 + 0.25 * np.clip(b / wd, -1, 1)
        leaf = tone[None, None] * shade[..., None]
        leaf = np.where((np.abs(b) < 0.6)[..., None], tone * 0.6, leaf)  # central vein
        img = np.where(inside[..., None], leaf, img)
    return np.clip(img, 0, 1)


def t_rock(rng, n, c):
    cells = int(rng.integers(4, 8))
    pts = rng.random((cells, 2))
    jit = (0.03 * fnoise(rng, n, 5), 0.03 * fnoise(rng, n, 5))
    f1, f2, idx, dx, dy = voronoi_pts(pts, n, jit)
    ang = rng.uniform(0, 2 * np.pi, size=cells)
    facet = np.cos(ang)[idx] * dx + np.sin(ang)[idx] * dy  # a tilted plane per cell: faceted faces
    var = rng.uniform(0.8, 1.1, size=cells)[idx]
    rough = 0.1 * fnoise(rng, n, 6) + 0.07 * fnoise(rng, n, 16)
    img = c[None, None] * (var * (0.85 + 1.0 * facet + rough))[..., None]
    crack = (f2 - f1) < 0.01
    return np.clip(np.where(crack[..., None], c * 0.3, img), 0, 1)


def t_snow(rng, n, c):
    drift = fnoise(rng, n, 3)
    light = np.clip(0.5 + 0.5 * (drift - np.roll(drift, 3, axis=0)), 0, 1)  # lit slopes face up
    shadow = mix(c, np.array([0.55, 0.65, 0.9]) * max(0.3, c.mean()), 0.35)
    img = mix(shadow, np.minimum(1, c * 1.04), light[..., None]) * (1 + 0.02 * fnoise(rng, n, 12))[..., None]
    sparkle = rng.random((n, n)) < 0.006
    return np.clip(np.where(sparkle[..., None], np.ones(3), img), 0, 1)


def t_mud(rng, n, c):
    img = c[None, None] * (0.62 + 0.1 * fnoise(rng, n, 3) + 0.05 * fnoise(rng, n, 12))[..., None]
    wet = fnoise(rng, n, 3)
    puddle = wet > 0.7
    rim = (wet > 0.45) & ~puddle
    img = np.where(rim[..., None], img * 0.8, img)
    refl = np.clip((fnoise(rng, n, 6, aniso=(1.0, 0.3)) - 0.6) * 1.5, 0, 1)
    pud = mix(c * 0.4, np.minimum(1, c * 0.9 + 0.25), 0.6 * refl[..., None])
    img = np.where(puddle[..., None], pud, img)
    f1, _, _, _, _ = voronoi_pts(rng.random((14, 2)), n)
    clump = (f1 < 0.025) & ~puddle
    return np.clip(np.where(clump[..., None], c * 0.45, img), 0, 1)


def t_tree_bark(rng, n, c):
    x, y = grid(n)
    k = int(rng.integers(4, 8))
    ridge = np.sin(2 * np.pi * (k * x + 0.35 * fnoise(rng, n, 3)))
    streak = fnoise(rng, n, 12, aniso=(0.15, 1.0))
    img = c[None, None] * (0.8 + 0.12 * streak + 0.12 * ridge)[..., None]
    furrow = ridge < -0.55
    img = np.where(furrow[..., None], c * (0.3 + 0.1 * fnoise(rng, n, 8))[..., None], img)
    # occasional horizontal breaks across the plates
    yy, xx = np.mgrid[0:n, 0:n]
    brk = np.zeros((n, n), bool)
    for _ in range(int(rng.integers(3, 7))):
        y0, x0, w = int(rng.integers(n)), int(rng.integers(n)), int(rng.integers(n // 10, n // 5))
        brk |= (np.abs(wrap_delta(yy, y0, n)) < 1) & (np.abs(wrap_delta(xx, x0, n)) < w)
    return np.clip(np.where((brk & ~furrow)[..., None], c * 0.45, img), 0, 1)


def t_wooden_floor(rng, n, c):
    nb = int(rng.choice([2, 4]))
    bs = n // nb
    k = int(rng.choice([3, 4]))
    yy, xx = np.mgrid[0:n, 0:n]
    bx, by, u, v = xx // bs, yy // bs, xx % bs, yy % bs
    horiz = (bx + by) % 2 == 0  # basket-weave parquet: blocks alternate orientation
    along, across = np.where(horiz, u, v), np.where(horiz, v, u)
    plank = (across * k) // bs
    pid = ((by * nb + bx) * k + plank) % (nb * nb * k)
    var = rng.uniform(0.78, 1.12, size=nb * nb * k)[pid]
    pos = (across * k % bs) / bs  # position across the plank in [0, 1)
    grain = np.sin(2 * np.pi * (3 * pos + 0.15 * np.sin(2 * np.pi * along / bs * rng.uniform(1, 3)) + pid * 0.37))
    img = c[None, None] * (var * (0.86 + 0.1 * grain))[..., None] * (1 + 0.04 * fnoise(rng, n, 8))[..., None]
    gw = max(1, n // 64)
    gap = (u < gw) | (v < gw) | ((across * k) % bs < gw * k)
    return np.clip(np.where(gap[..., None], c * 0.35, img), 0, 1)


def t_gravel(rng, n, c):
    cells = int(rng.integers(45, 75))
    jit = (0.01 * fnoise(rng, n, 8), 0.01 * fnoise(rng, n, 8))
    f1, f2, idx, _, _ = voronoi_pts(rng.random((cells, 2)), n, jit)
    r = 0.55 / math.sqrt(cells)
    var = rng.uniform(0.6, 1.25, size=cells)[idx]
    tint = rng.uniform(-0.06, 0.06, size=(cells, 3))[idx]
    dome = np.clip(1 - f1 / r, 0, 1) ** 0.6
    img = (c[None, None] * var[..., None] + tint) * (0.6 + 0.5 * dome)[..., None]
    gap = ((f2 - f1) < 0.012) | (f1 > r)
    return np.clip(np.where(gap[..., None], c * 0.3, img), 0, 1)
