"""The words of the procedural data: colours, tile materials, sprite objects, modifiers, styles.

Two vocabularies:
* `v1`: what the v1 32x32 model (shipped until session 14) was trained on (14 tile patterns, 12 objects, 14 colours, no styles).
  Its tables, sampling and captions are frozen so that `train.py --config v1` regenerates the exact data.
* `v2` (issue 12): 24 tile materials, 22 objects, the same 14 colours (with a few synonyms), more modifiers
  (old, glowing), two styles ("pixel art", "hand painted") that change the rendering, and freer caption
  templates ("a glowing blue crystal", "old red brick wall", "a wall of red bricks").
Class ids of v1 are the first ones of v2 in the same order, so one holdout.txt serves both.
"""

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
# v2: words a player may type for the same colour class (the first is the canonical word).
COLOUR_SYNONYMS_V2 = {"grey": ["grey", "gray"], "gold": ["gold", "golden"], "silver": ["silver", "silvery"],
                      "purple": ["purple", "violet"], "red": ["red", "crimson"], "cyan": ["cyan", "turquoise"]}

# ----------------------------------------------------------------------------------------- v1 (frozen)
# tile class id -> (default colour, caption nouns)
TILES_V1 = {
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
SPRITES_V1 = {
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
TILE_MODS_V1 = ["dark", "light", "mossy", "cracked", "wet", "snowy"]
SPRITE_MODS_V1 = ["dark", "light", "shiny", "small"]
THIN_SPRITES_V1 = {"sword", "key", "bow"}  # never "small": their centre would no longer be covered
MOD_PHRASES = {"mossy": "with moss", "cracked": "with cracks", "snowy": "covered in snow", "wet": "wet"}

# ----------------------------------------------------------------------------------------- v2
TILES_V2 = {
    "bricks": ("red", ["bricks", "brick wall", "brick", "brickwork"]),
    "cobblestone": ("grey", ["cobblestone", "cobblestones", "cobblestone floor", "cobblestone path", "stone path"]),
    "wood_planks": ("brown", ["wood planks", "wooden planks", "planks", "plank wall", "wooden boards"]),
    "grass": ("green", ["grass", "grass tile", "lawn", "meadow", "grassy ground"]),
    "sand": ("yellow", ["sand", "sand tile", "desert sand", "beach sand"]),
    "water": ("blue", ["water", "water tile", "ocean water", "sea water", "lake"]),
    "lava": ("orange", ["lava", "molten lava", "magma"]),
    "ice": ("cyan", ["ice", "ice tile", "frozen ice", "ice floor"]),
    "metal_plates": ("grey", ["metal plates", "metal plate floor", "steel plates", "metal floor"]),
    "dirt": ("brown", ["dirt", "soil", "dirt ground", "earth"]),
    "marble": ("white", ["marble", "marble floor", "marble tiles"]),
    "roof_tiles": ("red", ["roof tiles", "roof shingles", "rooftop", "shingles"]),
    "stripes": ("blue", ["stripes", "striped pattern", "stripe pattern"]),
    "checker": ("black", ["checker", "checkerboard", "checkered floor"]),
    "hexagon_tiles": ("grey", ["hexagon tiles", "hex tiles", "hexagonal tiles", "hexagon floor"]),
    "scifi_panels": ("grey", ["sci-fi panels", "scifi panels", "sci-fi wall", "spaceship floor", "tech panels"]),
    "carpet": ("red", ["carpet", "rug", "carpet floor", "woven carpet"]),
    "leaves": ("green", ["leaves", "foliage", "leaf pile", "hedge"]),
    "rock": ("grey", ["rock", "rock wall", "cliff face", "rocky ground", "stone"]),
    "snow": ("white", ["snow", "snow ground", "fresh snow", "snowfield"]),
    "mud": ("brown", ["mud", "muddy ground", "swamp mud"]),
    "tree_bark": ("brown", ["tree bark", "bark", "oak bark", "tree trunk"]),
    "wooden_floor": ("brown", ["wooden floor", "wood floor", "parquet", "parquet floor"]),
    "gravel": ("grey", ["gravel", "pebbles", "gravel path", "gravel ground"]),
}
SPRITES_V2 = {
    "potion": ("red", ["potion", "potion bottle", "flask", "bottle"]),
    "sword": ("silver", ["sword", "blade", "longsword"]),
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
    "helmet": ("silver", ["helmet", "helm", "knight helmet"]),
    "axe": ("silver", ["axe", "battle axe", "hatchet"]),
    "staff": ("brown", ["staff", "magic staff", "wizard staff"]),
    "bomb": ("black", ["bomb", "round bomb"]),
    "apple": ("red", ["apple"]),
    "book": ("brown", ["book", "spellbook", "tome"]),
    "armor": ("silver", ["armor", "armour", "chestplate", "breastplate"]),
    "crown": ("gold", ["crown"]),
    "crystal": ("cyan", ["crystal", "crystals", "crystal shard"]),
    "hammer": ("silver", ["hammer", "war hammer"]),
}
TILE_MODS_V2 = TILE_MODS_V1 + ["old"]
SPRITE_MODS_V2 = SPRITE_MODS_V1 + ["glowing", "old"]
THIN_SPRITES_V2 = THIN_SPRITES_V1 | {"staff", "axe", "hammer"}
# (modifier, class) pairs that make no sense and are never sampled in v2.
NO_MOD_V2 = {("snowy", "snow"), ("wet", "water"), ("wet", "mud"), ("mossy", "water"), ("mossy", "lava"),
             ("snowy", "lava"), ("mossy", "snow"), ("wet", "lava")}
# words that caption a modifier in v2 (the first is the canonical one used in prompts.txt)
MOD_WORDS_V2 = {
    "dark": ["dark"], "light": ["light", "pale"], "mossy": ["mossy", "overgrown"], "cracked": ["cracked", "broken"],
    "wet": ["wet"], "snowy": ["snowy", "frosty"], "old": ["old", "worn", "weathered", "ancient"],
    "shiny": ["shiny", "polished", "gleaming"], "small": ["small", "tiny", "little"],
    "glowing": ["glowing", "magic", "enchanted"],
}
STYLES = ["pixel", "painted"]  # no style = the plain rendering v1 had
STYLE_WORDS = {"pixel": ["pixel art", "16-bit", "8-bit", "retro pixel art", "pixelated"],
               "painted": ["hand painted", "hand-painted", "painted", "painterly"]}
STYLE_SUFFIX = {"pixel": ["pixel art", "pixel art style"], "painted": ["hand painted", "hand painted style"]}
# "a <where> of <material>" captions
WHERE_V2 = {
    "bricks": ["wall"], "cobblestone": ["floor", "path", "road"], "wood_planks": ["wall", "floor"],
    "grass": ["field", "patch"], "sand": ["patch", "beach"], "water": ["pool", "surface"], "lava": ["pool", "river"],
    "ice": ["sheet", "floor"], "metal_plates": ["floor", "wall"], "dirt": ["patch", "field"], "marble": ["floor"],
    "roof_tiles": ["roof"], "hexagon_tiles": ["floor"], "scifi_panels": ["wall", "floor"], "carpet": ["floor"],
    "leaves": ["pile", "carpet"], "rock": ["wall", "face"], "snow": ["field", "patch"], "mud": ["patch", "puddle"],
    "tree_bark": ["trunk"], "wooden_floor": ["floor"], "gravel": ["path", "patch"],
}


class Vocab:
    """One vocabulary: its tables and which class ids it can draw."""

    def __init__(self, name, tiles, sprites, tile_mods, sprite_mods, thin, synonyms, styles):
        self.name, self.tiles, self.sprites = name, tiles, sprites
        self.tile_mods, self.sprite_mods, self.thin = tile_mods, sprite_mods, thin
        self.synonyms, self.styles = synonyms, styles
        self.classes = list(tiles) + list(sprites)  # classifier label order

    def nouns(self, cls):
        return (self.tiles.get(cls) or self.sprites[cls])[1]

    def default_colour(self, cls):
        return (self.tiles.get(cls) or self.sprites[cls])[0]


VOCABS = {
    "v1": Vocab("v1", TILES_V1, SPRITES_V1, TILE_MODS_V1, SPRITE_MODS_V1, THIN_SPRITES_V1, COLOUR_SYNONYMS, []),
    "v2": Vocab("v2", TILES_V2, SPRITES_V2, TILE_MODS_V2, SPRITE_MODS_V2, THIN_SPRITES_V2, COLOUR_SYNONYMS_V2, STYLES),
}
assert list(TILES_V2)[:len(TILES_V1)] == list(TILES_V1) and list(SPRITES_V2)[:len(SPRITES_V1)] == list(SPRITES_V1)
ALL_TILES = set(TILES_V2)
ALL_CLASSES = VOCABS["v2"].classes


def kind_of(cls):
    return "tile" if cls in ALL_TILES else "sprite"
