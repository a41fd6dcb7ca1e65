"""Degenerate captions built from a correct one: what a judge must grade E (wrong) and a collapsed policy writes.

Issue 17: RL with the nano judge collapsed to non-words ("abssstled", "aplaa_") that the judge scored like a
vague caption (0.5). These builders make such captions from any caption text, so the same kinds serve the
nano judge's training (training/judge.py, source `degenerate`) and `capalign judge calibrate`, which
checks any judge (a hub Qwen2.5-VL too) on the user's own references. Kinds, each graded E:

- `nonword`: 1-4 made-up words (letter strings that are neither English nor shapes-world words).
- `char_noise`: every word of the caption garbled by character edits until it is no word ("a smlal rde").
- `repeat`: one word of the caption repeated 3-8 times, or its first three words said 2-3 times over.
- `truncated`: the caption cut mid-phrase, keeping at most half its words: after a function word
  ("a small red circle on the") or inside a word ("a small red cir").
- `empty`: "".
- `unrelated_image`: a caption of another image (the caller picks it: for the shapes world one that names no
  object of this image, so the content rule of training/judge.py grades it E too).
- `garbage_tail`: the correct caption followed by 2-5 made-up words or symbol runs.

`nonword` and `char_noise` captions are `nonword` and `repeat` captions `repeat` by metrics/degenerate.py's
definition (tested), so the judge's training data and the degeneracy metric agree on what degenerate is.
"""

from __future__ import annotations

import functools
import random

from ..metrics.degenerate import WORD, english_words, shapes_words, words

KINDS = ("nonword", "char_noise", "repeat", "truncated", "empty", "unrelated_image", "garbage_tail")
# Words after which a caption cannot end: cutting there leaves a phrase unfinished.
FUNCTION_WORDS = frozenset("a an the of on in at to and or with from by for is are was were its their his her my your this that "
                           "these those there some one two three".split())
_ONSETS = ["b", "bl", "br", "c", "ch", "cl", "d", "dr", "f", "fl", "g", "gl", "gr", "h", "j", "k", "l", "m", "n", "p", "pl", "pr",
           "qu", "r", "s", "sl", "sn", "sp", "st", "str", "t", "tr", "v", "w", "z", "x"]
_VOWELS = ["a", "e", "i", "o", "u", "aa", "ae", "ai", "ee", "ou", "y"]
_CODAS = ["", "", "b", "ck", "d", "ff", "g", "k", "l", "m", "n", "nt", "p", "r", "s", "sss", "st", "t", "x", "z", "led", "tic"]
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@functools.lru_cache(maxsize=1)
def known_words() -> frozenset[str]:
    """Words a made-up word must not be: English (the degeneracy metric's list) and the shapes world's."""
    return english_words() | shapes_words()


def made_up_word(rng: random.Random, vocab: frozenset[str]) -> str:
    """A pronounceable letter string of 2-3 syllables that is no word of `vocab` ("brouzeled", "aplaa")."""
    while True:
        w = "".join(rng.choice(_ONSETS) * (rng.random() < 0.8) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 3))) + rng.choice(_CODAS)
        if len(w) >= 4 and w not in vocab:
            return w + ("_" if rng.random() < 0.1 else "")


def garble(word: str, rng: random.Random, vocab: frozenset[str]) -> str:
    """`word` after random character edits (swap, drop, double, substitute) until it is no word of `vocab`."""
    w = list(word)
    for _ in range(100):
        op, i = rng.randrange(4), rng.randrange(len(w))
        if op == 0 and len(w) > 1:
            j = min(i + 1, len(w) - 1) if i < len(w) - 1 else i - 1
            w[i], w[j] = w[j], w[i]
        elif op == 1 and len(w) > 2:
            del w[i]
        elif op == 2:
            w.insert(i, w[i])
        else:
            w[i] = rng.choice(_LETTERS)
        if "".join(w) not in vocab and "".join(w) != word:
            return "".join(w)
    return made_up_word(rng, vocab)


def degenerate_caption(kind: str, caption: str, rng: random.Random, other: str | None = None, vocab: frozenset[str] | None = None) -> str:
    """A degenerate caption of `kind` (KINDS) built from the correct `caption`; `other`: a caption of another image."""
    vocab = known_words() if vocab is None else vocab
    ws = words(caption) or ["caption"]
    if kind == "nonword":
        return " ".join(made_up_word(rng, vocab) for _ in range(rng.randint(1, 4)))
    if kind == "char_noise":
        return " ".join(garble(w, rng, vocab) for w in ws)
    if kind == "repeat":
        if len(ws) >= 3 and rng.random() < 0.5:
            return " ".join(ws[:3] * rng.randint(2, 3))
        word = rng.choice([w for w in ws if w not in FUNCTION_WORDS] or ws)
        return " ".join([word] * rng.randint(3, 8))
    if kind == "truncated":  # a prefix of the caption's own text (case and punctuation kept)
        spans = [m.span() for m in WORD.finditer(caption)] or [(0, len(caption))]
        half = max(1, len(spans) // 2)
        cuts = [k for k in range(1, half + 1) if ws[k - 1] in FUNCTION_WORDS]
        if cuts and rng.random() < 0.5:
            return caption[: spans[rng.choice(cuts) - 1][1]]
        start, end = spans[rng.randrange(0, half)]  # cut inside this word, keeping 1 .. len-2 of its letters
        return caption[: start + rng.randint(1, max(1, end - start - 2))]
    if kind == "empty":
        return ""
    if kind == "unrelated_image":
        if other is None:
            raise ValueError("kind unrelated_image needs the caption of another image")
        return other
    if kind == "garbage_tail":
        tail = [made_up_word(rng, vocab) if rng.random() < 0.7 else "".join(rng.choice("#@%&*_~^") for _ in range(rng.randint(2, 5)))
                for _ in range(rng.randint(2, 5))]
        return caption.rstrip() + " " + " ".join(tail)
    raise ValueError(f"unknown degenerate kind {kind!r}; expected one of {', '.join(KINDS)}")
