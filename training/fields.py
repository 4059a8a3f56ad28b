"""Shared drawing helpers of the procedural data: colours and periodic fields on the n x n torus."""
import colorsys
import math

import numpy as np

from vocab import COLOURS

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


def voronoi_pts(pts, n, jitter_field=None):
    """Wrap-around Voronoi of given points [(x, y)] in [0, 1)^2: (F1, F2, cell index, dx, dy to the nearest
    point, wrapped). argpartition instead of argsort: the same values, faster for many cells."""
    x, y = grid(n)
    if jitter_field is not None:
        x = x + jitter_field[0]
        y = y + jitter_field[1]
    dx = (x[None] - pts[:, 0, None, None] + 0.5) % 1.0 - 0.5
    dy = (y[None] - pts[:, 1, None, None] + 0.5) % 1.0 - 0.5
    d = np.sqrt(dx * dx + dy * dy)
    order = np.argpartition(d, 1, axis=0)[:2] if len(pts) > 2 else np.argsort(d, axis=0)[:2]
    f1 = np.take_along_axis(d, order[:1], 0)[0]
    f2 = np.take_along_axis(d, order[1:2], 0)[0]
    ndx = np.take_along_axis(dx, order[:1], 0)[0]
    ndy = np.take_along_axis(dy, order[:1], 0)[0]
    return f1, f2, order[0], ndx, ndy


def wrap_delta(a, centre, n):
    """Signed wrapped offset a - centre on a torus of size n."""
    return (a - centre + n / 2) % n - n / 2
