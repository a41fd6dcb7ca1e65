"""Degenerate captions: one definition of empty, non-word, repetitive and non-distinct caption sets.

Pure functions of caption strings, so every reader of collapse uses the same numbers: `capalign evaluate
--metrics degenerate` (and through its eval files the study summary and the report), the RL and ViZer training
histories (the sampled captions of each step) and the style sweep's collapse guard. Definitions
(docs/degenerate.md):

- words: the lower-cased maximal runs of letters (Unicode letters; an inner apostrophe joins: "it's");
  digits, underscores, punctuation and emoji are not part of any word ("IMG_1234.jpg" -> img, jpg).
- `empty`: the caption has no word ("", "!!", "1987").
- `nonword`: more than half of the caption's words are not words of the vocabulary (an empty caption is
  never `nonword`, so the two are disjoint). A word is in the vocabulary if it is listed, or its part before
  an apostrophe is ("nobody's").
- `repeat`: one word makes up more than half of a caption of at least 3 words, or a word 3-gram occurs at
  least twice (overlapping occurrences count: "a a a a").
- `distinct`: the number of distinct captions after lower-casing and collapsing whitespace, over all captions.
- collapsed (`collapse_reason`): empty + nonword share >= COLLAPSE_SHARE, or distinct share < DISTINCT_MIN.

The vocabulary: `"shapes"`, every word the shapes world writes (data/shapes.py's and data/shapes_style.py's
templates and attribute words), for shapes-world data; `"english"` (the default), the English word list
of pyspellchecker (a word-frequency list of surface forms, so inflections such as "circles", "ran" are in
it; American spellings: "colour" is not, which alone never makes a caption `nonword`); or any set of words.
`vocabulary_for(references)` picks "shapes" when every word of the references is a shapes-world word.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter

from .. import CapalignError

FLAGS = ("empty", "nonword", "repeat")
# A set of captions has collapsed when this share of them is empty or non-words (issue 17's target: below 5%) ...
COLLAPSE_SHARE = 0.05
# ... or fewer than this share of them are distinct (one caption for every image; a healthy shapes-world Base
# greedy-captions 300 test images with >= 20% distinct captions, docs/metrics.md).
DISTINCT_MIN = 0.05
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


def words(caption: str) -> list[str]:
    """The caption's words (see the module docstring)."""
    return WORD.findall(caption.lower()) if isinstance(caption, str) else []


@functools.lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """pyspellchecker's English word list (~160k surface forms, inflections included), shipped inside the package."""
    from spellchecker import SpellChecker

    return frozenset(SpellChecker(language="en", distance=1).word_frequency.dictionary.keys())


@functools.lru_cache(maxsize=1)
def shapes_words() -> frozenset[str]:
    """Every word the shapes world's captions use: factual, web, humorous and romantic templates (data/shapes.py),
    the preference-data parts (data/shapes_style.py), and every shape, colour, size and position word."""
    from ..data import shapes, shapes_style

    def strings(x):
        if isinstance(x, str):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from strings(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                yield from strings(v)

    texts = [*shapes._VAGUE, *shapes._PARTIAL, *shapes._COUNT.values(), *shapes.WHERE.values(), *shapes.SHAPES, *shapes.COLORS,
             *shapes.SIZES, *shapes.POSITIONS, *shapes.CORRUPTIONS]
    for n in (1, 2, 3):
        ph = ["x"] * n
        texts += shapes._humorous(ph) + shapes._romantic(ph)
    scene = shapes.sample_scene(random.Random(0))
    texts += shapes.factual_captions(scene) + ["there are two shapes: from left to right: an image of one shape: is a"]
    for name in ("FRAMES", "OPENERS", "CLOSERS", "WHERE_FORMS", "POSITION_WORDS"):
        texts += list(strings(getattr(shapes_style, name, ())))
    text = " ".join(re.sub(r"\{[^}]*\}", " ", t).replace("|", " ") for t in texts)  # placeholders out, both agreement forms in
    return frozenset(words(text)) | {w + "s" for w in shapes.SHAPES}  # plurals of the shapes ("two circles")


def resolve_vocabulary(vocabulary) -> tuple[str, frozenset[str]]:
    """None / "english" / "shapes" / a collection of words -> (name, word set)."""
    if vocabulary is None or vocabulary == "english":
        return "english", english_words()
    if vocabulary == "shapes":
        return "shapes", shapes_words()
    if isinstance(vocabulary, str):
        raise CapalignError(f"unknown vocabulary {vocabulary!r}; expected english, shapes or a set of words")
    return "custom", frozenset(w.lower() for w in vocabulary)


def vocabulary_for(references) -> str:
    """"shapes" when every word of the reference captions (strings or lists of strings) is a shapes-world word,
    else "english". So shapes-world data is judged by the world's own words and anything else by English."""
    vocab = shapes_words()
    seen = False
    for r in references:
        for c in [r] if isinstance(r, str) else (r or []):
            ws = words(c)
            seen = seen or bool(ws)
            if any(w not in vocab for w in ws):
                return "english"
    return "shapes" if seen else "english"


def caption_flags(caption: str, vocab: frozenset[str]) -> dict:
    """{"words", "nonwords", "empty", "nonword", "repeat"} of one caption."""
    ws = words(caption)
    n = len(ws)
    bad = sum(w not in vocab and w.split("'")[0] not in vocab for w in ws)
    grams = Counter(zip(ws, ws[1:], ws[2:]))
    repeat = n >= 3 and (2 * max(Counter(ws).values()) > n or max(grams.values()) >= 2)
    return {"words": n, "nonwords": bad, "empty": n == 0, "nonword": n > 0 and 2 * bad > n, "repeat": bool(repeat)}


def distinct_key(caption: str) -> str:
    return " ".join(caption.lower().split()) if isinstance(caption, str) else ""


def collapse_reason(corpus: dict) -> str | None:
    """Why a caption set counts as collapsed (None: it does not): the one rule evaluate's warning uses."""
    why = []
    if corpus["empty"] + corpus["nonword"] >= COLLAPSE_SHARE:
        why.append(f"{corpus['empty'] + corpus['nonword']:.0%} of captions are empty or non-words (>= {COLLAPSE_SHARE:.0%})")
    if corpus["distinct"] < DISTINCT_MIN:
        why.append(f"only {corpus['distinct']:.1%} of captions are distinct (< {DISTINCT_MIN:.0%})")
    return "; ".join(why) or None


def degeneracy(captions: list[str], vocabulary=None) -> dict:
    """{"corpus": {empty, nonword, repeat, distinct} shares, "counts": the same as counts + "captions",
    "per_caption": [caption_flags], "collapsed": collapse_reason or None, "vocabulary": its name}."""
    captions = list(captions)
    if not captions:
        raise CapalignError("degeneracy needs at least one caption")
    name, vocab = resolve_vocabulary(vocabulary)
    per = [caption_flags(c, vocab) for c in captions]
    counts = {k: sum(f[k] for f in per) for k in FLAGS}
    counts["distinct"] = len({distinct_key(c) for c in captions})
    corpus = {k: v / len(captions) for k, v in counts.items()}
    return {"corpus": corpus, "counts": {"captions": len(captions), **counts}, "per_caption": per,
            "collapsed": collapse_reason(corpus), "vocabulary": name}


DEFINITION = ("words = lower-cased runs of letters; empty: no word; nonword: more than half of the words not in the vocabulary; "
              "repeat: one word > half of a caption of >= 3 words, or a word 3-gram twice; distinct: distinct captions "
              "(lower-cased, whitespace collapsed) / all captions; collapsed: empty + nonword >= "
              f"{COLLAPSE_SHARE:.0%} or distinct < {DISTINCT_MIN:.0%}")
