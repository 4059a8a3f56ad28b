"""Captions of the procedural data: what a player would type for a sample's spec.

v1 (frozen, the v1 model's data): "mossy dark cobblestone", "seamless red bricks texture", "a red potion".
v2 adds free phrasing: modifier synonyms ("old"/"worn"/"weathered"), colour synonyms ("violet", "gray"), style
words ("pixel art", "hand painted", "16-bit") before or after the subject, "a wall of red bricks",
"an icon of a golden crown", "the ...", no article, "..., game item". Every caption keeps the subject's
colour word (unless the sample shows its class's default colour) and one of its class's nouns.
"""
from vocab import (COLOURS, MOD_PHRASES, MOD_WORDS_V2, SPRITES_V1, STYLE_SUFFIX, STYLE_WORDS, TILES_V1, VOCABS,
                   WHERE_V2, kind_of)

PLURAL_NOUNS = {"crystals", "pebbles", "leaves", "bricks", "planks", "stripes", "cobblestones", "shingles"}
OF_NOUN = {"wooden_floor": "parquet", "tree_bark": "bark"}  # "a floor of parquet", not "a floor of wooden floor"


def pick(seq, rng):
    return seq[int(rng.integers(len(seq)))]


def colour_word(colour, rng, synonyms=None):
    syn = (synonyms if synonyms is not None else VOCABS["v1"].synonyms).get(colour, [colour])
    return syn[int(rng.integers(len(syn)))]


def article(text):
    last = text.split()[-1] if text else ""
    if last in PLURAL_NOUNS:
        return text
    return ("an " if text[0] in "aeiou" else "a ") + text


# ----------------------------------------------------------------------------------------- v1 (frozen)
def caption_v1(spec, rng):
    cls, colour, mods, say_colour = spec["cls"], spec["colour"], spec["mods"], spec["say_colour"]
    nouns = (TILES_V1.get(cls) or SPRITES_V1[cls])[1]
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


# ----------------------------------------------------------------------------------------- v2
def _join(words):
    return " ".join(w for w in words if w)


def caption_v2(spec, rng):
    v = VOCABS["v2"]
    cls, colour, style = spec["cls"], spec["colour"], spec.get("style")
    noun = pick(v.nouns(cls), rng)
    cw = colour_word(colour, rng, v.synonyms) if spec["say_colour"] else ""
    mods = list(spec["mods"])
    rng.shuffle(mods)
    mw = [pick(MOD_WORDS_V2[m], rng) for m in mods]
    st_pos = int(rng.integers(3)) if style else -1  # 0 before the subject, 1 ", pixel art", 2 "in ... style"
    pre_style = [pick(STYLE_WORDS[style], rng)] if st_pos == 0 else []
    core = _join(pre_style + mw + [cw, noun])
    if kind_of(cls) == "tile":
        has_suffix = noun.endswith(("tile", "tiles", "texture"))
        form = int(rng.integers(9))
        if form == 1:
            text = "seamless " + core + ("" if has_suffix else " texture")
        elif form == 2:
            text = core + ("" if has_suffix else " texture")
        elif form == 3:
            text = core + ("" if has_suffix else " tile")
        elif form == 4:
            text = "tileable " + core
        elif form == 5 and any(m in MOD_PHRASES and m != "wet" for m in mods):
            pre = [w for m, w in zip(mods, mw) if m not in MOD_PHRASES or m == "wet"]
            post = [MOD_PHRASES[m] for m in mods if m in MOD_PHRASES and m != "wet"]
            text = _join(pre_style + pre + [cw, noun] + post)
        elif form == 6:
            text = article(core if " " in noun else core + " texture")
        elif form == 7:
            base = _join(pre_style + mw + [cw, OF_NOUN.get(cls, v.nouns(cls)[0])])
            text = f"a {pick(WHERE_V2[cls], rng)} of {base}" if cls in WHERE_V2 else f"texture of {base}"
        elif form == 8:
            text = core + pick([", game texture", " material", " surface"], rng)
        else:
            text = core
    else:
        form = int(rng.integers(10))
        text = [article(core), core + " sprite", core + " icon", core, article(core) + ", item sprite",
                "an icon of " + article(core), "the " + core, core + " item", article(core) + ", game item",
                "sprite of " + article(core)][form]
    if st_pos == 1:
        text += ", " + pick(STYLE_SUFFIX[style], rng)
    elif st_pos == 2:
        text += " in " + {"pixel": "pixel art style", "painted": "a hand painted style"}[style]
    return " ".join(text.split())


def caption(spec, rng, vocab="v2"):
    return caption_v1(spec, rng) if vocab == "v1" else caption_v2(spec, rng)


def all_words(vocab="v2"):
    """Every word the captions can use (for the tokenizer corpus)."""
    v = VOCABS[vocab]
    words = set()
    for cls in v.classes:
        for nn in v.nouns(cls):
            words.update(nn.split())
    for c in COLOURS:
        words.update(v.synonyms.get(c, [c]))
    words.update(v.tile_mods + v.sprite_mods)
    for p in MOD_PHRASES.values():
        words.update(p.split())
    words.update(["a", "an", "seamless", "texture", "tile", "tileable", "sprite", "icon", "pixel", "art", "item"])
    if vocab != "v1":
        for table in (MOD_WORDS_V2, STYLE_WORDS, STYLE_SUFFIX, WHERE_V2):
            for ws in table.values():
                for w in ws:
                    words.update(w.replace(",", " ").split())
        words.update(OF_NOUN.values())
        words.update(["of", "the", "in", "style", "game", "material", "surface"])
    return sorted(words)
