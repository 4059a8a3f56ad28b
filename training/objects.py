"""Item sprites: one drawing function per object (v1's 12 unchanged, v2's 10 new), drawn with PIL at 4x on a
transparent canvas and premultiplied-box-downsampled; fully transparent pixels are (0, 0, 0, 0). Every object
covers the centre and keeps the outer border transparent (checked by `dataset.py --check`).
The v1 functions and their random draws are frozen (`train.py --config v1` regenerates v1's data).
"""
import numpy as np
from PIL import Image, ImageDraw

from fields import base_rgb, lighten, mix

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


# ----------------------------------------------------------------------------------------- v2 objects
LEAF = np.array([0.25, 0.6, 0.2])
PAPER = np.array([0.95, 0.92, 0.8])


def s_helmet(cv, c, ol, hi):
    cv.d.chord([cv.p(0.18, 0.14), cv.p(0.82, 0.78)], 180, 360, fill=_u8(c), outline=_u8(ol), width=cv.w(0.03))
    cv.poly([(0.18, 0.44), (0.82, 0.44), (0.80, 0.80), (0.62, 0.86), (0.60, 0.62), (0.40, 0.62), (0.38, 0.86),
             (0.20, 0.80)], c, ol, 0.03)  # cheek guards
    cv.rect(0.26, 0.46, 0.74, 0.54, c * 0.25)  # visor slit
    cv.rect(0.46, 0.46, 0.54, 0.66, c * 0.25)
    cv.rect(0.46, 0.16, 0.54, 0.44, c * 0.8)  # ridge
    cv.ellipse(0.28, 0.24, 0.40, 0.36, hi)


def s_axe(cv, c, ol, hi):
    cv.line([(0.28, 0.90), (0.56, 0.12)], ol, 0.09)
    cv.line([(0.28, 0.90), (0.56, 0.12)], WOOD, 0.06)  # handle
    cv.poly([(0.40, 0.26), (0.60, 0.30), (0.76, 0.12), (0.88, 0.40), (0.78, 0.72), (0.60, 0.56), (0.40, 0.60)],
            c, ol, 0.03)  # bearded head over the centre
    cv.line([(0.77, 0.16), (0.85, 0.40), (0.77, 0.67)], hi, 0.03)  # cutting edge
    cv.rect(0.38, 0.30, 0.52, 0.56, c * 0.7, ol, 0.02)  # socket


def s_staff(cv, c, ol, hi):
    cv.line([(0.24, 0.90), (0.64, 0.24)], ol, 0.1)
    cv.line([(0.24, 0.90), (0.64, 0.24)], c, 0.07)  # shaft
    cv.ellipse(0.54, 0.10, 0.80, 0.36, mix(c, np.ones(3), 0.45), ol, 0.03)  # orb
    cv.ellipse(0.60, 0.15, 0.67, 0.22, np.ones(3))
    cv.rect(0.38, 0.39, 0.62, 0.61, c * 0.65, ol, 0.025)  # binding over the centre
    for y in (0.45, 0.51, 0.57):
        cv.line([(0.40, y), (0.60, y)], c * 0.45, 0.015)


def s_bomb(cv, c, ol, hi):
    cv.ellipse(0.16, 0.26, 0.82, 0.90, c, ol, 0.035)
    cv.ellipse(0.28, 0.38, 0.42, 0.52, hi)
    cv.rect(0.52, 0.18, 0.68, 0.32, STEEL * 0.8, ol, 0.02)
    cv.line([(0.60, 0.22), (0.68, 0.17), (0.74, 0.18)], WOOD * 1.4, 0.03)  # fuse
    cv.poly([(0.76, 0.13), (0.78, 0.17), (0.83, 0.18), (0.78, 0.20), (0.77, 0.24), (0.75, 0.20), (0.70, 0.18),
             (0.75, 0.16)], np.array([1.0, 0.8, 0.2]))  # spark


def s_apple(cv, c, ol, hi):
    cv.ellipse(0.14, 0.28, 0.60, 0.86, c, ol, 0.03)
    cv.ellipse(0.40, 0.28, 0.86, 0.86, c, ol, 0.03)
    cv.ellipse(0.18, 0.31, 0.82, 0.84, c)
    cv.line([(0.50, 0.34), (0.54, 0.14)], WOOD, 0.04)  # stem
    cv.poly([(0.55, 0.22), (0.66, 0.13), (0.80, 0.15), (0.70, 0.24)], LEAF, LEAF * 0.5, 0.015)
    cv.ellipse(0.26, 0.40, 0.36, 0.54, hi)


def s_book(cv, c, ol, hi):
    cv.rect(0.72, 0.18, 0.84, 0.84, PAPER, ol, 0.02)  # page edges
    for y in (0.3, 0.45, 0.6, 0.75):
        cv.line([(0.74, y), (0.82, y)], PAPER * 0.75, 0.01)
    cv.rect(0.18, 0.14, 0.76, 0.86, c, ol, 0.03)  # cover
    cv.rect(0.18, 0.14, 0.30, 0.86, c * 0.7, ol, 0.02)  # spine
    for y in (0.24, 0.76):
        cv.line([(0.19, y), (0.29, y)], GOLDC, 0.025)
    cv.poly([(0.52, 0.36), (0.62, 0.50), (0.52, 0.64), (0.42, 0.50)], mix(c, GOLDC, 0.7), ol, 0.015)  # emblem


def s_armor(cv, c, ol, hi):
    cv.ellipse(0.10, 0.18, 0.36, 0.44, c * 0.85, ol, 0.03)  # pauldrons
    cv.ellipse(0.64, 0.18, 0.90, 0.44, c * 0.85, ol, 0.03)
    cv.poly([(0.30, 0.18), (0.42, 0.24), (0.58, 0.24), (0.70, 0.18), (0.78, 0.30), (0.74, 0.50), (0.70, 0.86),
             (0.30, 0.86), (0.26, 0.50), (0.22, 0.30)], c, ol, 0.03)
    cv.d.chord([cv.p(0.40, 0.14), cv.p(0.60, 0.32)], 0, 180, fill=_u8(c * 0.4))  # neck opening
    cv.line([(0.50, 0.32), (0.50, 0.80)], hi, 0.03)
    for y in (0.64, 0.74):
        cv.line([(0.32, y), (0.68, y)], c * 0.6, 0.02)


def s_crown(cv, c, ol, hi):
    cv.poly([(0.16, 0.60), (0.16, 0.26), (0.33, 0.44), (0.50, 0.18), (0.67, 0.44), (0.84, 0.26), (0.84, 0.60)],
            c, ol, 0.03)
    cv.rect(0.16, 0.56, 0.84, 0.80, c * 0.85, ol, 0.03)  # band
    for x, y in ((0.16, 0.24), (0.50, 0.16), (0.84, 0.24)):
        cv.ellipse(x - 0.05, y - 0.05, x + 0.05, y + 0.05, hi, ol, 0.015)
    for x, col in ((0.32, (0.85, 0.1, 0.15)), (0.50, (0.15, 0.3, 0.9)), (0.68, (0.85, 0.1, 0.15))):
        cv.ellipse(x - 0.05, 0.62, x + 0.05, 0.74, np.array(col), ol, 0.012)


def _shard(cv, cx, top, bottom, w, lean, c, ol, hi):
    pts = [(cx - w + lean, top + w), (cx + lean, top), (cx + w + lean, top + w), (cx + w, bottom), (cx - w, bottom)]
    cv.poly(pts, c, ol, 0.025)
    cv.poly([(cx + lean, top), (cx + w + lean, top + w), (cx + w, bottom), (cx, bottom)], c * 0.72)  # shaded facet
    cv.line([(cx - w * 0.5 + lean, top + w), (cx - w * 0.5, bottom - 0.02)], hi, 0.02)


def s_crystal(cv, c, ol, hi):
    _shard(cv, 0.30, 0.34, 0.82, 0.09, -0.08, c * 0.9, ol, hi)
    _shard(cv, 0.70, 0.30, 0.82, 0.09, 0.08, c * 0.9, ol, hi)
    _shard(cv, 0.50, 0.10, 0.86, 0.12, 0.0, c, ol, hi)


def s_hammer(cv, c, ol, hi):
    cv.line([(0.50, 0.50), (0.50, 0.90)], ol, 0.12)
    cv.line([(0.50, 0.50), (0.50, 0.90)], WOOD, 0.09)  # handle
    cv.rect(0.16, 0.20, 0.84, 0.60, c, ol, 0.03)  # heavy head over the centre
    cv.rect(0.16, 0.20, 0.30, 0.60, c * 0.7, ol, 0.025)  # striking faces
    cv.rect(0.70, 0.20, 0.84, 0.60, c * 0.7, ol, 0.025)
    cv.rect(0.42, 0.20, 0.58, 0.60, c * 0.85)  # collar around the handle
    cv.line([(0.32, 0.26), (0.68, 0.26)], hi, 0.025)


def sparkles(cv, rng, k=3):
    """Small four-point stars around the object (the 'glowing' modifier)."""
    for _ in range(k):
        x, y = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)
        r = rng.uniform(0.04, 0.06)
        cv.poly([(x, y - r), (x + r * 0.3, y - r * 0.3), (x + r, y), (x + r * 0.3, y + r * 0.3), (x, y + r),
                 (x - r * 0.3, y + r * 0.3), (x - r, y), (x - r * 0.3, y - r * 0.3)], np.ones(3))


def box_blur(a, r):
    """Separable box blur (zero outside) of a 2-D array, radius r px."""
    k = 2 * r + 1
    for ax in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[ax] = (r + 1, r)
        cs = np.cumsum(np.pad(a, pad), axis=ax)
        n = a.shape[ax]
        a = (np.take(cs, np.arange(k, k + n), axis=ax) - np.take(cs, np.arange(n), axis=ax)) / k
    return a


def add_halo(a, c, S):
    """Soft glow of colour c around the opaque shape (float RGBA [S,S,4], straight alpha)."""
    al = a[..., 3]
    halo = np.clip(box_blur(box_blur(al, max(1, S // 48)), max(1, S // 48)) * 1.8, 0, 1) * 0.55
    glow = np.minimum(1, mix(c, np.ones(3), 0.5))
    out_a = al + halo * (1 - al)
    rgb = (a[..., :3] * al[..., None] + glow * (halo * (1 - al))[..., None]) / np.maximum(out_a[..., None], 1e-8)
    return np.concatenate([rgb, out_a[..., None]], -1)


def weather(a, rng, S):
    """'old': desaturated, darker, with rust/dirt blotches on the opaque part (float RGBA [S,S,4])."""
    rgb = a[..., :3]
    rgb = mix(rgb, rgb.mean(-1, keepdims=True), 0.25) * 0.88
    cell = max(1, S // 24)
    blot = np.kron(rng.random((S // cell + 1, S // cell + 1)), np.ones((cell, cell)))[:S, :S]
    rust = np.array([0.42, 0.27, 0.14])
    rgb = np.where((blot < 0.12)[..., None], mix(rgb, rust, 0.55), rgb)
    return np.concatenate([rgb, a[..., 3:]], -1)


SPRITE_FN = {
    "potion": s_potion, "sword": s_sword, "shield": s_shield, "gem": s_gem, "coin": s_coin, "key": s_key,
    "mushroom": s_mushroom, "heart": s_heart, "chest": s_chest, "bow": s_bow, "scroll": s_scroll, "ring": s_ring,
    "helmet": s_helmet, "axe": s_axe, "staff": s_staff, "bomb": s_bomb, "apple": s_apple, "book": s_book,
    "armor": s_armor, "crown": s_crown, "crystal": s_crystal, "hammer": s_hammer,
}


def render_sprite(cls, colour, mods, rng, size=32):
    ss = 4
    S = size * ss
    c = base_rgb(colour, rng)
    if "dark" in mods:
        c = c * 0.55
    if "light" in mods:
        c = lighten(c)
    if "glowing" in mods:  # v2
        c = np.minimum(1, mix(c * 1.15, np.ones(3), 0.12))
    scale = rng.uniform(0.66, 0.76) if "small" in mods else rng.uniform(0.88, 1.0)
    off = rng.uniform(-0.03, 0.03, size=2) * (1.0 if scale > 0.8 else 0.5)
    cv = Canvas(S, scale, off)
    ol = c * 0.3
    hi = mix(c, np.ones(3), 0.6 if ("shiny" in mods or "glowing" in mods) else 0.35)
    SPRITE_FN[cls](cv, c, ol, hi)
    if "shiny" in mods:
        cv.ellipse(0.56, 0.30, 0.64, 0.38, np.ones(3))
    if "glowing" in mods:
        sparkles(cv, rng)
    a = np.asarray(cv.im).astype(np.float64) / 255.0
    if "old" in mods:
        a = weather(a, rng, S)
    if "glowing" in mods:
        a = add_halo(a, c, S)
    if rng.random() < 0.5:
        a = a[:, ::-1]
    pm = a[..., :3] * a[..., 3:]
    pm = pm.reshape(size, ss, size, ss, 3).mean(axis=(1, 3))
    al = a[..., 3].reshape(size, ss, size, ss).mean(axis=(1, 3))
    rgb = np.where(al[..., None] > 0, pm / np.maximum(al[..., None], 1e-8), 0)
    out = np.concatenate([rgb, al[..., None]], -1)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)

