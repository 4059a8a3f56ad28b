#!/usr/bin/env python3
"""A contact sheet of generated images for the README: a grid of <id>.png from a folder (e.g. the
Rust-baked evaluation images), each upscaled with nearest-neighbour on a dark background with its prompt.

    python contact_sheet.py --images runs/default/eval_rust --out ../docs/contact_sheet.png [--cols 8 --rows 6]
"""
import argparse
import os

from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompts", default=os.path.join(HERE, "prompts.txt"))
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--scale", type=int, default=0, help="upscale factor (default: 128 px cells, 4 for 32 px, 2 for 64)")
    a = ap.parse_args()
    rows = [line.rstrip("\n").split("\t") for line in open(a.prompts, encoding="utf-8") if line.strip() and not line.startswith("#")]
    rows = [r for r in rows if os.path.exists(os.path.join(a.images, r[0] + ".png"))]
    n = a.cols * a.rows
    step = max(1, len(rows) // n)
    picked = rows[::step][:n]
    size = Image.open(os.path.join(a.images, picked[0][0] + ".png")).size[0] if picked else 32
    cell, label = size * (a.scale or max(1, 128 // size)), 14
    sheet = Image.new("RGBA", (a.cols * (cell + 8) + 8, a.rows * (cell + label + 8) + 8), (40, 42, 50, 255))
    draw = ImageDraw.Draw(sheet)
    for i, r in enumerate(picked):
        x, y = 8 + (i % a.cols) * (cell + 8), 8 + (i // a.cols) * (cell + label + 8)
        im = Image.open(os.path.join(a.images, r[0] + ".png")).convert("RGBA").resize((cell, cell), Image.NEAREST)
        tile = Image.new("RGBA", (cell, cell), (40, 42, 50, 255))
        tile.alpha_composite(im)
        sheet.paste(tile, (x, y))
        draw.text((x, y + cell + 1), r[1][:22], fill=(220, 220, 220, 255))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    sheet.save(a.out)
    print(f"wrote {a.out} ({len(picked)} images)")


if __name__ == "__main__":
    main()
