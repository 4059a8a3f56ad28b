"""Rendering styles of the v2 data: what the words "pixel art" and "hand painted" change in an image.

Both act on a finished uint8 RGBA image (tile or sprite) of any size and keep what the data promises:
tiles stay periodic (only block-aligned downsampling, wrap-around filters and torus noise), sprites keep a
transparent border and an opaque centre.

* pixel: box-downsample by f (2 or 4 px blocks), a small palette (luminance levels, each the mean colour of
  its pixels), nearest-neighbour upsampling; sprites get hard alpha and a one-block dark outline.
* painted: soft wrap-around blur, brush-stroke noise along a random direction, low-frequency colour
  variation and a light relief (lit from the top left); sprites get softened edges and a shading gradient.
"""
import numpy as np

from fields import fnoise


def _levels(rgb, mask, k, contrast=0.8):
    """Map each pixel to the mean colour of its luminance level (k levels over the masked pixels), the levels
    pulled towards the overall mean by `contrast` (so the darkest level of a mid-grey does not read as black)."""
    lum = rgb @ np.array([0.3, 0.59, 0.11])
    vals = lum[mask]
    if vals.size == 0:
        return rgb
    edges = np.quantile(vals, np.linspace(0, 1, k + 1)[1:-1])
    lvl = np.digitize(lum, edges)
    out = rgb.copy()
    mean = rgb[mask].mean(axis=0)
    for i in range(k):
        sel = (lvl == i) & mask
        if sel.any():
            out[sel] = mean + contrast * (rgb[sel].mean(axis=0) - mean)
    return out


def _down(x, f):
    n = x.shape[0] // f
    return x.reshape(n, f, n, f, *x.shape[2:]).mean(axis=(1, 3))


def _up(x, f):
    return np.repeat(np.repeat(x, f, axis=0), f, axis=1)


def pixel_tile(img, rng):
    size = img.shape[0]
    f = int(rng.choice([f for f in (2, 4) if size // f >= 8 and size % f == 0] or [1]))
    rgb = _down(img[..., :3].astype(np.float64) / 255.0, f)
    rgb = _levels(rgb, np.ones(rgb.shape[:2], bool), int(rng.integers(4, 7)))
    # shift by less than a block, so the tile's edge falls inside blocks as often as any other column (a seam
    # on every block boundary would read as a visible seam to the evaluation's seam metric)
    out = np.roll(_up(rgb, f), (int(rng.integers(f)), int(rng.integers(f))), axis=(0, 1))
    return np.concatenate([np.round(out * 255).astype(np.uint8), img[..., 3:]], -1)


def pixel_sprite(img, rng):
    size = img.shape[0]
    f = int(rng.choice([f for f in (2, 4) if size // f >= 8 and size % f == 0] or [1]))
    a = img[..., 3:].astype(np.float64) / 255.0
    pm = _down(img[..., :3].astype(np.float64) / 255.0 * a, f)
    al = _down(a, f)[..., 0]
    rgb = pm / np.maximum(al[..., None], 1e-8)
    mask = al >= 0.5
    rgb = _levels(rgb, mask, int(rng.integers(3, 6)))
    # one-block outline: transparent blocks next to the shape (4-neighbourhood)
    nb = np.zeros_like(mask)
    nb[1:] |= mask[:-1]
    nb[:-1] |= mask[1:]
    nb[:, 1:] |= mask[:, :-1]
    nb[:, :-1] |= mask[:, 1:]
    outline = nb & ~mask
    outline[[0, -1]] = False  # never on the outermost ring of blocks (the sprite's transparent border)
    outline[:, [0, -1]] = False
    dark = rgb[mask].mean(axis=0) * 0.45 if mask.any() else np.zeros(3)
    rgb = np.where(outline[..., None], dark, rgb)
    alpha = (mask | outline).astype(np.float64)
    rgb = np.where(alpha[..., None] > 0, rgb, 0)
    out = np.concatenate([_up(rgb, f), _up(alpha, f)[..., None]], -1)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def _wrap_blur(x, passes=1):
    for _ in range(passes):
        x = (x + np.roll(x, 1, 0) + np.roll(x, -1, 0)) / 3
        x = (x + np.roll(x, 1, 1) + np.roll(x, -1, 1)) / 3
    return x


def _strokes(rng, n):
    """Periodic brush-stroke field: noise stretched along a random axis or diagonal."""
    aniso = [(0.15, 1.0), (1.0, 0.15)][int(rng.integers(2))]
    return fnoise(rng, n, 14, modes=40, aniso=aniso)


def painted_tile(img, rng):
    n = img.shape[0]
    rgb = _wrap_blur(img[..., :3].astype(np.float64) / 255.0, 1 + n // 48)
    lum = rgb.mean(-1)
    relief = (lum - np.roll(np.roll(lum, 1, 0), 1, 1)) * 2.5  # lit from the top left
    warm = fnoise(rng, n, 2)[..., None]
    rgb = rgb * (1 + 0.07 * _strokes(rng, n))[..., None] * (1 + 0.05 * warm * np.array([1, 0, -1]))
    rgb = np.clip(rgb + relief[..., None] * 0.5, 0, 1)
    sat = rgb.mean(-1, keepdims=True)
    rgb = np.clip(sat + (rgb - sat) * 1.15, 0, 1)  # painters push saturation a little
    return np.concatenate([np.round(rgb * 255).astype(np.uint8), img[..., 3:]], -1)


def painted_sprite(img, rng):
    n = img.shape[0]
    a = img[..., 3].astype(np.float64) / 255.0
    pm = img[..., :3].astype(np.float64) / 255.0 * a[..., None]
    r = 1 + n // 48
    pmb, ab = _wrap_blur(pm, r), _wrap_blur(a, 1)
    rgb = pmb / np.maximum(_wrap_blur(a, r)[..., None], 1e-6)
    yy, xx = np.mgrid[0:n, 0:n] / n
    light = 1.1 - 0.25 * (xx + yy)  # top left light
    rgb = rgb * light[..., None] * (1 + 0.06 * _strokes(rng, n))[..., None]
    sat = rgb.mean(-1, keepdims=True)
    rgb = np.clip(sat + (rgb - sat) * 1.15, 0, 1)
    alpha = np.where(a > 0.98, a, ab)  # softened silhouette, solid inside
    rgb = np.where(alpha[..., None] > 0.002, rgb, 0)
    out = np.concatenate([rgb, alpha[..., None]], -1)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def apply(img, style, kind, rng):
    """img uint8 [n,n,4] -> the same image in `style` (None = unchanged); kind 'tile' or 'sprite'."""
    if style == "pixel":
        img = pixel_tile(img, rng) if kind == "tile" else pixel_sprite(img, rng)
    elif style == "painted":
        img = painted_tile(img, rng) if kind == "tile" else painted_sprite(img, rng)
    elif style is not None:
        raise ValueError(f"unknown style {style!r}")
    if kind == "sprite":  # fully transparent pixels are (0, 0, 0, 0)
        img = np.where(img[..., 3:] == 0, 0, img).astype(np.uint8)
    return img

