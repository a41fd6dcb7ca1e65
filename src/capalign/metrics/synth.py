"""A reproducible stress corpus of captions for the metric tests and the speed benchmark.

Captions are built from a caption-like vocabulary plus the things tokenisers trip on:
punctuation, quotes (straight and curly), contractions, possessives, hyphens, dashes,
numbers (decimals, thousands, times, percentages, currency, fractions), abbreviations,
brackets, accented/CJK unicode, emoji (dropped by the Java lexer), empty, blank and one-word captions.
"""

from __future__ import annotations

import random

WORDS = (
    "a an the man woman dog cat person people group of two three several on in at with near next to "
    "sitting standing walking running holding playing riding eating looking red blue green yellow white black "
    "small large big little old young street table field park beach kitchen room car bus train bike horse "
    "ball frisbee pizza plate sign building tree water snow grass sky circle square triangle diamond star "
    "is are and while behind front top side each other very some many her his their its it"
).split()
CONTRACTIONS = ["isn't", "don't", "can't", "won't", "it's", "he's", "she'd", "they're", "we've", "I'm", "you'll",
                "ain't", "couldn't", "I'd've", "CAN'T", "Don't", "YOU'RE", "it\u2019s", "don\u2019t", "gonna", "wanna",
                "gotta", "cannot", "Cannot", "lemme", "dog's", "dogs'", "man's", "people's", "1990's", "'90s", "'em",
                "rock'n'roll", "O'Neill", "o'clock", "l'amour", "y'all", "ol'", "'cause"]
HYPHENATED = ["e-mail", "state-of-the-art", "well-known", "black-and-white", "five-year-old", "t-shirt", "x-ray",
              "hi-fi", "self-driving", "double-decker", "3-4", "A-1"]
NUMBERS = ["3", "42", "3.5", "1,000", "10,000.50", ".5", "10:30", "12:00pm", "1st", "2nd", "3rd", "10th", "1990s",
           "5kg", "3D", "4x4", "-3", "+3", "50%", "$20", "US$5", "\u00a35", "\u20ac10", "\u00a25", "\u00bd", "1/2",
           "12/25/2020", "#1", "2x3", "0.5%"]
ABBREVS = ["Mr.", "mr.", "Dr.", "St.", "Mrs.", "etc.", "e.g.", "i.e.", "a.m.", "p.m.", "U.S.", "vs.", "Jr.", "A."]
UNICODE = ["caf\u00e9", "na\u00efve", "Z\u00fcrich", "\u00e9cole", "\u00c9COLE", "r\u00e9sum\u00e9", "fa\u00e7ade",
           "stra\u00dfe", "\u65e5\u672c", "\u00f1and\u00fa", "\u00c5ngstr\u00f6m", "\u00bfqu\u00e9?", "\u00a1s\u00ed!",
           "\U0001f436", "\U0001f600", "\u00a9", "\u00b0", "\u2192", "\u2605", "x\u00b2", "\u00d7"]
PUNCT_AFTER = [".", ",", "!", "?", "...", ";", ":", "!!", "?!", "!!!", ".", ".", ",", "\u2026", "'", '"', ")", "]", "}", "-"]
PUNCT_BEFORE = ['"', "'", "(", "[", "{", "\u201c", "\u2018", "-", "--", "*", "\u00ab", "`", "``"]
WRAP = [("\u201c", "\u201d"), ("\u2018", "\u2019"), ('"', '"'), ("'", "'"), ("(", ")"), ("*", "*"), ("-", "-"), ("<", ">"), ("\u00ab", "\u00bb")]
DASHES = ["--", "-", "\u2014", "\u2013", "---", " - ", "...", "&", "&amp;", "/", "+", "=", "AT&T", "<br>", "\u201c\u201d"]


def _word(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.70:
        w = rng.choice(WORDS)
    elif r < 0.78:
        w = rng.choice(CONTRACTIONS)
    elif r < 0.83:
        w = rng.choice(HYPHENATED)
    elif r < 0.90:
        w = rng.choice(NUMBERS)
    elif r < 0.94:
        w = rng.choice(ABBREVS)
    elif r < 0.98:
        w = rng.choice(UNICODE)
    else:
        w = rng.choice(DASHES)
    c = rng.random()
    if c < 0.08:
        w = w.capitalize()
    elif c < 0.11:
        w = w.upper()
    p = rng.random()
    if p < 0.12:
        w = w + rng.choice(PUNCT_AFTER)
    elif p < 0.16:
        w = rng.choice(PUNCT_BEFORE) + w
    elif p < 0.19:
        a, b = rng.choice(WRAP)
        w = a + w + b
    return w


def caption(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.01:
        return ""
    if r < 0.015:
        return rng.choice([" ", "  ", "\t", ".", "!", "...", "\U0001f436"])
    if r < 0.04:
        return _word(rng)
    n = rng.randint(3, 18)
    words = [_word(rng) for _ in range(n)]
    s = " ".join(words)
    if rng.random() < 0.5:
        s = s[0].upper() + s[1:]
    if rng.random() < 0.4:
        s += rng.choice([".", ".", "!", "?", " .", "..."])
    if rng.random() < 0.03:
        s = "  " + s + "  "
    return s


def corpus(n_images: int, n_refs: int = 5, seed: int = 0) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(gts, res): ids -> reference captions and ids -> [one candidate], pycocoevalcap's input shape."""
    rng = random.Random(seed)
    gts, res = {}, {}
    for i in range(n_images):
        key = f"img{i}"
        gts[key] = [caption(rng) for _ in range(n_refs)]
        # candidates share words with a reference now and then so n-gram scores are not all zero
        if rng.random() < 0.3:
            ref = gts[key][rng.randrange(n_refs)].split()
            rng.shuffle(ref) if rng.random() < 0.3 else None
            res[key] = [" ".join(ref[: max(1, len(ref) - rng.randint(0, 3))])]
        else:
            res[key] = [caption(rng)]
    return gts, res
