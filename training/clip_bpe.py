"""A tiny CLIP-style byte-level BPE tokenizer, learned deterministically from the caption vocabulary.

Same layout and pipeline as openai/clip-vit-large-patch14's tokenizer (and tests/fixtures/tiny-sd): ids 0-255
byte characters, 256-511 byte characters + '</w>', then merge results in merge order, then <|startoftext|>,
<|endoftext|>. tokenizer.json: NFC -> collapse whitespace -> lowercase; split with CLIP's regex, ByteLevel
(no regex); BPE with end_of_word_suffix '</w>'; RobertaProcessing adds bos/eos. Padding is <|endoftext|> (SD 1.x).

`write_tokenizer(out_dir)` writes tokenizer.json, vocab.json, merges.txt (#version: 0.2), tokenizer_config.json,
special_tokens_map.json and returns {vocab_size, bos_id, eos_id, pad_id}.
"""
import json
import os
from collections import Counter

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
MAX_LENGTH = 77
MAX_VOCAB = 2048

# Extra words players are likely to type (beyond the caption vocabulary), so they become few tokens.
EXTRA_WORDS = """
stone rock wall floor ground path road tile tiles texture seamless tileable pattern game asset sprite icon item
pixel art 16-bit 8-bit retro top down old new ancient magic magical fantasy dungeon castle forest desert
snow frozen fire glowing shiny rusty rusted worn weathered dirty clean bright pale deep small big large
tiny huge round square golden silvery wooden metal steel iron copper bronze crystal glass leather cloth
violet magenta teal turquoise beige tan navy olive lime crimson scarlet gray light dark with and of the on
in a an for made covered moss cracks puddles water fire health mana poison apple bread bone skull arrow
axe hammer staff wand crown helmet armor boots gloves amulet book map bag box barrel crate door window
""".split()


def bytes_to_unicode():
    """GPT-2 / CLIP byte -> printable unicode character table (CLIP's ids 0..255 in this order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _clip_parts(tok):
    from tokenizers import Regex, normalizers, pre_tokenizers

    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])


# v2 adds words players type for its new classes and styles (v1's list above stays as it was: the shipped
# tokenizer is learned from it).
EXTRA_WORDS_V2 = """
hexagon hex honeycomb sci-fi scifi futuristic spaceship panel panels tech carpet rug leaf leaves foliage bush
rocky boulder cliff snowy mud muddy swamp bark trunk tree parquet floorboards gravel pebble pebbles
helmet helm axe staff wand bomb apple book tome spellbook armor armour chestplate crown crystal crystals gem
hammer painted hand-painted painterly pixelated 8-bit 16-bit 32-bit glowing enchanted rusty worn weathered
""".split()


def corpus(vocab="v1"):
    """Caption-like lines: every caption word (weighted by a deterministic caption sample) plus EXTRA_WORDS
    (and EXTRA_WORDS_V2 for the v2 vocabulary)."""
    import numpy as np

    import dataset

    lines = []
    rng = np.random.default_rng(20240)
    for _ in range(3000):
        spec = dataset.sample_spec(rng, vocab=vocab)
        lines.append(dataset.caption(spec, rng, vocab))
    lines += dataset.all_words(vocab) + EXTRA_WORDS + (EXTRA_WORDS_V2 if vocab != "v1" else [])
    return lines


def learn_merges(lines, max_new_tokens):
    """Most frequent adjacent pair wins, ties by the smallest pair (deterministic); stops when every pre-token
    is a single symbol or max_new_tokens new symbols exist."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    t = Tokenizer(BPE())
    _clip_parts(t)
    counts = Counter()
    for line in lines:
        for piece, _ in t.pre_tokenizer.pre_tokenize_str(t.normalizer.normalize_str(line)):
            counts[piece] += 1
    words = {w: tuple(list(w[:-1]) + [w[-1] + "</w>"]) for w in sorted(counts)}
    base = set(bytes_to_unicode().values())
    known = base | {b + "</w>" for b in base}
    merges, new = [], 0
    while new < max_new_tokens:
        pairs = Counter()
        for w, sym in words.items():
            for a, b in zip(sym, sym[1:]):
                pairs[(a, b)] += counts[w]
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        if best[0] + best[1] not in known:
            known.add(best[0] + best[1])
            new += 1
        for w, sym in words.items():
            if len(sym) < 2:
                continue
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and sym[i] == best[0] and sym[i + 1] == best[1]:
                    out.append(sym[i] + sym[i + 1])
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            words[w] = tuple(out)
    return merges


def write_tokenizer(out_dir, max_vocab=MAX_VOCAB, vocab="v1"):
    from tokenizers import AddedToken, Tokenizer, decoders, processors
    from tokenizers.models import BPE

    merges = learn_merges(corpus(vocab), max_vocab - 512 - 2)
    base = list(bytes_to_unicode().values())
    vocab_list = base + [b + "</w>" for b in base]
    seen = set(vocab_list)
    for a, b in merges:
        if a + b not in seen:
            vocab_list.append(a + b)
            seen.add(a + b)
    vocab_list += [SOT, EOT]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    tok = Tokenizer(BPE(vocab=vocab, merges=list(merges), unk_token=EOT, end_of_word_suffix="</w>",
                        continuing_subword_prefix="", fuse_unk=False, dropout=None))
    _clip_parts(tok)
    tok.add_special_tokens([
        AddedToken(SOT, single_word=False, lstrip=False, rstrip=False, normalized=True, special=True),
        AddedToken(EOT, single_word=False, lstrip=False, rstrip=False, normalized=True, special=True),
    ])
    tok.post_processor = processors.RobertaProcessing((EOT, vocab[EOT]), (SOT, vocab[SOT]), trim_offsets=False,
                                                      add_prefix_space=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"), pretty=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump({"bos_token": SOT, "eos_token": EOT, "pad_token": EOT, "unk_token": EOT}, f, indent=2)
    cfg = {"add_prefix_space": False, "bos_token": SOT, "clean_up_tokenization_spaces": True, "do_lower_case": True,
           "eos_token": EOT, "errors": "replace", "model_max_length": MAX_LENGTH, "pad_token": EOT,
           "tokenizer_class": "CLIPTokenizer", "unk_token": EOT}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    return {"vocab_size": len(vocab), "bos_id": vocab[SOT], "eos_id": vocab[EOT], "pad_id": vocab[EOT]}


def encode(tokenizer_json, prompts, max_len=MAX_LENGTH):
    """The runtime's algorithm (tokenizer.json + truncate to bos + 75 + eos + pad with eos) -> list of id lists."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    pad = tok.token_to_id(EOT)
    out = []
    for p in prompts:
        ids = tok.encode(p, add_special_tokens=True).ids
        if len(ids) > max_len:
            ids = ids[: max_len - 1] + [ids[-1]]
        out.append(ids + [pad] * (max_len - len(ids)))
    return out
