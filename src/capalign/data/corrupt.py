"""Free-text caption corruptions for the ViZer reward diagnostic (`capalign vizer diagnose --corruptions text`).

Each rule makes exactly one change to a caption (one word or noun replaced, one span deleted or one span
inserted; the rest of the caption is kept byte for byte), so a reward that prefers the original caption
over the corrupted one sees that kind of error. They are rules, not a parser: nothing to download, the
same result on every machine, and a rule that cannot be sure of a change makes none (the caption is
skipped for that rule and counted). What they recognise:

- colours: the eleven basic colour terms of Berlin & Kay (1969), `COLOURS` ("grey" is read as "gray").
  "orange" is also a noun: it counts as a colour only when a word that is not a function word follows it;
- nouns: `WORDS`, COCO's 80 object category names (the `categories` of COCO 2017's instances_*.json, e.g.
  "dog", "traffic light", "teddy bear") and their plurals, plus six person words (man, woman, boy, girl,
  child, kid: COCO captions name people by these far more often than by "person", and CHAIR's synonym
  list, Rohrbach et al. 2018, maps them to it); the longest listed form wins ("hot dog" is one noun).
  Another domain passes its own nouns and colours (`load_words`; `--nouns`, `--colours` of the command);
- a noun phrase: a listed noun and the words before it back to a determiner ("a", "the", "two", ...) when
  at most three words lie between them and none is a function word, a listed noun or a word ending in
  -ing or -s (mostly verbs: "a sign shows dogs"); otherwise the noun and the colour words right before it.
  Its end is *closed* when punctuation, the caption's end, a function word, a preposition ("next to") or
  an -ing word follows (after a singular noun also a word ending in -s: "a dog sits"); a noun followed by
  another word may be part of a compound ("a pizza box"), so drop and add never cut or extend it there.

The rules (`corrupt_text(caption, kind, rng, references=..., pool=...)`; None = nothing to change):
- colour: one colour word -> another colour;
- noun: one listed noun -> another listed noun of the same number ("dog" -> "cat", "dogs" -> "horses");
- drop: one noun phrase deleted together with the word that joins it to the caption ("with a dog", "and
  a dog", ", a dog", a preposition + phrase, or "a dog and" before another phrase), when the caption has
  another noun phrase and names the dropped noun nowhere else;
- add: "and <noun phrase>" inserted after a closed noun phrase of the caption, the phrase taken from
  another image's caption (`phrase_pool`) and naming a noun the image's references do not name.
A replacement (colour or noun) is never a word that the image's references use, so the corrupted caption
is wrong for the image, not a synonym of something in it; after "a" / "an" only a replacement that takes
the same article is chosen (by its first letter), so the reward is not handed a wrong article to detect
instead of the content (an added phrase can still break subject-verb agreement: "a dog and a cat sits").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .. import CapalignError

TEXT_CORRUPTIONS = ("colour", "noun", "drop", "add")
COLOURS = ("black", "white", "red", "green", "yellow", "blue", "brown", "orange", "pink", "purple", "gray")
_COLOUR_SPELLINGS = {"grey": "gray"}
COCO_CATEGORIES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
PERSON_WORDS = ("man", "woman", "boy", "girl", "child", "kid")
_IRREGULAR = {"person": "people", "sheep": "sheep", "skis": "skis", "knife": "knives", "broccoli": "broccoli", "mouse": "mice",
              "scissors": "scissors", "man": "men", "woman": "women", "child": "children"}

DETERMINERS = {"a", "an", "the", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "some",
               "several", "many", "few", "this", "that", "these", "those", "his", "her", "its", "their", "another", "each",
               "every", "no"}
SINGULAR_DETERMINERS = {"a", "an", "one", "this", "that", "another", "each", "every"}
PREPOSITIONS = ("in front of", "on top of", "next to", "close to", "on", "in", "at", "by", "near", "under", "over", "behind",
                "above", "below", "beside", "between", "inside", "outside", "through", "across", "along", "around", "from",
                "into", "onto", "for", "to", "against", "toward", "towards", "beneath", "underneath", "among", "atop",
                "without", "past", "beyond", "upon", "within")
JOINERS = {"and", "or", "with"}
FUNCTION_WORDS = DETERMINERS | JOINERS | {p for p in PREPOSITIONS if " " not in p} | {
    "of", "but", "while", "as", "is", "are", "was", "were", "be", "been", "being", "has", "have", "had", "which",
    "who", "there", "it", "they", "he", "she", "very", "up", "down", "off", "out", "then", "than", "not"}
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")


def plural(noun: str) -> str:
    """English plural of a listed noun (the irregular ones of WORDS by table, the rest by rule)."""
    if noun in _IRREGULAR:
        return _IRREGULAR[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in tuple("aeiou"):
        return noun[:-1] + "ies"
    return noun + "s"


@dataclass(frozen=True)
class Words:
    """The words the rules know: nouns as (singular, plural) pairs, and colours. `forms` maps each lower-case
    noun form to (singular, number), number "sg", "pl" or "both" (sheep, skis)."""

    pairs: tuple[tuple[str, str], ...]
    colours: tuple[str, ...]
    source: str

    @cached_property
    def forms(self) -> dict[str, tuple[str, str]]:
        out: dict[str, tuple[str, str]] = {}
        for sg, pl in self.pairs:
            out[sg] = (sg, "both" if sg == pl else "sg")
            if pl != sg:
                out[pl] = (sg, "pl")
        return out

    @cached_property
    def max_words(self) -> int:
        return max(len(f.split()) for f in self.forms)

    @cached_property
    def plurals(self) -> dict[str, str]:
        return dict(self.pairs)

    def form(self, singular: str, number: str) -> str:
        return self.plurals[singular] if number == "pl" else singular


WORDS = Words(tuple((n, plural(n)) for n in COCO_CATEGORIES + PERSON_WORDS), COLOURS,
              "COCO's 80 category names and man, woman, boy, girl, child, kid, with plurals; the 11 basic colour terms")


def _entries(spec: str, what: str, pairs: bool) -> list[str]:
    """The entries of a word list given as a file (one per line; blank lines and # comments skipped) or inline as
    comma-separated words; `pairs`: a file line may be `singular,plural`."""
    example = "`singular` or `singular,plural`" if pairs else "one word"
    word = r"[a-z]+(?: [a-z]+)*"
    p = Path(spec)
    if p.is_file():
        lines = [(f"{spec} line {n}", ln.strip().lower()) for n, ln in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)]
        out = [(where, e) for where, e in lines if e and not e.startswith("#")]
        pattern = rf"{word}(?:,{word})?" if pairs else word
    elif re.fullmatch(r"[A-Za-z ,]+", spec):
        out, pattern = [(f"--{what}s {spec}", w.strip().lower()) for w in spec.split(",") if w.strip()], word
    else:
        raise CapalignError(f"{what} list not found: {spec} (a file, one {what} per line as {example}, or comma-separated words)")
    if not out:
        raise CapalignError(f"{what} list {spec} is empty (one {what} per line as {example}, or comma-separated words)")
    for where, e in out:
        if not re.fullmatch(pattern, e):
            raise CapalignError(f"{where}: {e!r} is not {example} (letters and single spaces)")
    return [e for _, e in out]


def load_words(nouns: str | None = None, colours: str | None = None) -> Words:
    """WORDS with its nouns and/or colours replaced: a file (nouns: `singular` or `singular,plural` per line, plural
    by English rule when not given; colours: one per line) or inline comma-separated words ("circle,square")."""
    if not nouns and not colours:
        return WORDS
    pairs = WORDS.pairs
    if nouns:
        pairs = tuple((sg, pl or plural(sg)) for sg, _, pl in (e.partition(",") for e in _entries(nouns, "noun", pairs=True)))
    cols = tuple(dict.fromkeys(_COLOUR_SPELLINGS.get(c, c) for c in _entries(colours, "colour", pairs=False))) if colours else WORDS.colours
    return Words(pairs, cols, f"nouns: {nouns or 'default'}; colours: {colours or 'default'}")


class Text:
    """A caption's words (lower case) with their character spans; `joined(k)`: nothing but spaces or a hyphen
    lies between word k-1 and word k."""

    def __init__(self, text: str):
        self.text = text
        ms = list(_WORD.finditer(text))
        self.spans = [m.span() for m in ms]
        self.words = [m.group().lower() for m in ms]

    def __len__(self) -> int:
        return len(self.words)

    def gap(self, k: int) -> str:
        return self.text[self.spans[k - 1][1]:self.spans[k][0]]

    def joined(self, k: int) -> bool:
        return 0 < k < len(self) and self.gap(k).strip() in ("", "-")

    def replace(self, i: int, j: int, new: str) -> str:
        """The caption with words i..j-1 replaced by `new` (capitalised like the old words)."""
        a, b = self.spans[i][0], self.spans[j - 1][1]
        old = self.text[a:b]
        if len(old) > 1 and old.isupper():
            new = new.upper()
        elif old[:1].isupper():
            new = new[:1].upper() + new[1:]
        return self.text[:a] + new + self.text[b:]


def colour_of(t: Text, i: int, vocab: Words = WORDS) -> str | None:
    """The colour word i names (canonical spelling), or None (not a colour, or "orange" used as a noun)."""
    w = _COLOUR_SPELLINGS.get(t.words[i], t.words[i])
    if w not in vocab.colours:
        return None
    if w in vocab.forms and not (t.joined(i + 1) and t.words[i + 1] not in FUNCTION_WORDS):
        return None
    return w


def article(word: str) -> str:
    return "an" if word[:1] in tuple("aeiou") else "a"


@dataclass(frozen=True)
class Phrase:
    """A noun phrase: words start..end-1 of a caption; the noun is words noun..end-1."""

    start: int
    noun: int
    end: int
    singular: str
    number: str  # "sg", "pl" or "both"


def find_nouns(t: Text, vocab: Words = WORDS) -> list[tuple[int, int, str, str]]:
    """(first word, end, singular, number) of every listed noun, left to right, longest form first."""
    forms, out, i = vocab.forms, [], 0
    while i < len(t):
        for n in range(min(vocab.max_words, len(t) - i), 0, -1):
            form = " ".join(t.words[i:i + n])
            if form in forms and all(t.joined(k) for k in range(i + 1, i + n)) and not (n == 1 and colour_of(t, i, vocab)):
                out.append((i, i + n, *forms[form]))
                i += n
                break
        else:
            i += 1
    return out


def phrases(t: Text, vocab: Words = WORDS) -> list[Phrase]:
    """The noun phrases of a caption (rules in the module docstring), left to right."""
    found = find_nouns(t, vocab)
    noun_words = {k for i, j, _, _ in found for k in range(i, j)}
    out = []
    for i, j, sg, number in found:
        start = i
        for k in range(i - 1, max(i - 5, -1), -1):  # a determiner at most three words before the noun
            w = t.words[k]
            if not t.joined(k + 1) or (w not in DETERMINERS and (w in FUNCTION_WORDS or k in noun_words or w.endswith(("ing", "s")))):
                break
            if w in DETERMINERS:
                start = k
                break
        if start == i:  # no determiner: the noun and the colour words right before it
            while start > 0 and t.joined(start) and colour_of(t, start - 1, vocab):
                start -= 1
        out.append(Phrase(start, i, j, sg, number))
    return out


def closed(t: Text, p: Phrase) -> bool:
    """Is the phrase's end sure (nothing after it could belong to it)?"""
    if not t.joined(p.end):
        return True  # punctuation or the end of the caption
    w = t.words[p.end]
    if w in FUNCTION_WORDS or w.endswith("ing") or (p.number == "sg" and w.endswith("s") and not w.endswith("ss")):
        return True
    return any(" ".join(t.words[p.end:p.end + len(q.split())]) == q for q in PREPOSITIONS if " " in q)  # "next to"


def mentioned(captions, vocab: Words = WORDS) -> tuple[set[str], set[str]]:
    """(colours, singular nouns) that any of the captions names."""
    colours, named = set(), set()
    for c in captions:
        t = Text(c)
        colours |= {x for i in range(len(t)) if (x := colour_of(t, i, vocab))}
        named |= {sg for _, _, sg, _ in find_nouns(t, vocab)}
    return colours, named


def swap_colour(caption: str, rng: random.Random, references=(), vocab: Words = WORDS) -> str | None:
    """One colour word replaced by a colour none of the references (nor the caption) names."""
    t = Text(caption)
    avoid = mentioned([caption, *references], vocab)[0]
    options = []
    for i in range(len(t)):
        if colour_of(t, i, vocab):
            art = t.words[i - 1] if t.joined(i) and t.words[i - 1] in ("a", "an") else None
            new = [c for c in vocab.colours if c not in avoid and (art is None or article(c) == art)]
            if new:
                options.append((i, new))
    if not options:
        return None
    i, new = options[rng.randrange(len(options))]
    return t.replace(i, i + 1, rng.choice(new))


def swap_noun(caption: str, rng: random.Random, references=(), vocab: Words = WORDS) -> str | None:
    """One listed noun replaced by another of the same number that none of the references (nor the caption) names."""
    t = Text(caption)
    avoid = mentioned([caption, *references], vocab)[1]
    options = []
    for i, j, sg, number in find_nouns(t, vocab):
        prev = t.words[i - 1] if t.joined(i) else None
        if number == "both":  # sheep, skis: the determiner says which
            number = "sg" if prev in SINGULAR_DETERMINERS else "pl"
        new = [vocab.form(s, number) for s, _ in vocab.pairs if s not in avoid]
        new = [f for f in new if prev not in ("a", "an") or article(f) == prev]
        if new:
            options.append((i, j, new))
    if not options:
        return None
    i, j, new = options[rng.randrange(len(options))]
    return t.replace(i, j, rng.choice(new))


def drop_phrase(caption: str, rng: random.Random, references=(), vocab: Words = WORDS) -> str | None:
    """One noun phrase deleted with the word that joins it (module docstring); None unless another phrase stays."""
    t = Text(caption)
    ps = phrases(t, vocab)
    starts = {p.start for p in ps}
    cuts = []  # (first character deleted, one past the last)
    for p in ps if len(ps) > 1 else ():
        if any(q.singular == p.singular for q in ps if q is not p):
            continue
        k, end = p.start, t.spans[p.end - 1][1]
        if closed(t, p) and k > 0:
            prep = next((n for n in (3, 2, 1) if k - n > 0 and all(t.joined(m) for m in range(k - n + 1, k + 1))
                         and " ".join(t.words[k - n:k]) in PREPOSITIONS), 0)
            if not t.joined(k) and t.gap(k).strip() == ",":  # ", a dog"
                cuts.append((t.spans[k - 1][1], end))
                continue
            if t.joined(k) and k > 1 and (t.words[k - 1] in JOINERS or prep):  # "and a dog", "on a couch" (", and" goes too)
                cuts.append((t.spans[k - 1 - max(prep, 1)][1], end))
                continue
        # "a dog and <phrase>": the phrase and the "and" after it
        if t.joined(p.end) and t.words[p.end] == "and" and t.joined(p.end + 1) and p.end + 1 in starts:
            cuts.append((t.spans[p.start][0], t.spans[p.end + 1][0]))
    if not cuts:
        return None
    a, b = cuts[rng.randrange(len(cuts))]
    out = caption[:a] + caption[b:]
    if a == 0 and caption[:1].isupper():
        out = out[:1].upper() + out[1:]
    return out


@dataclass(frozen=True)
class PoolPhrase:
    image: str  # id of the image whose caption it comes from
    text: str  # "a red umbrella"
    singular: str


def phrase_pool(captions, vocab: Words = WORDS) -> list[PoolPhrase]:
    """The closed noun phrases with a determiner of (image id, caption) pairs: what `add` inserts elsewhere."""
    out = []
    for image, caption in captions:
        t = Text(caption)
        for p in phrases(t, vocab):
            if t.words[p.start] in DETERMINERS and closed(t, p):
                text = caption[t.spans[p.start][0]:t.spans[p.end - 1][1]]
                out.append(PoolPhrase(image, text[:1].lower() + text[1:], p.singular))
    return out


def add_phrase(caption: str, rng: random.Random, references=(), pool=(), vocab: Words = WORDS) -> str | None:
    """"and <phrase>" inserted after a closed noun phrase, the phrase from `pool` naming a noun the references do not."""
    t = Text(caption)
    slots = [p for p in phrases(t, vocab) if closed(t, p)]
    named = mentioned([caption, *references], vocab)[1]
    cands = [q for q in pool if q.singular not in named]
    if not slots or not cands:
        return None
    at = t.spans[slots[rng.randrange(len(slots))].end - 1][1]
    return caption[:at] + " and " + cands[rng.randrange(len(cands))].text + caption[at:]


def corrupt_text(caption: str, kind: str, rng: random.Random, references=(), pool=(), vocab: Words = WORDS) -> str | None:
    """`caption` with exactly one error of `kind` (TEXT_CORRUPTIONS), or None where the rule finds nothing to change.
    `references`: every caption of the image (replacements avoid what they name); `pool`: phrase_pool of the
    other images' captions (for add)."""
    if kind == "colour":
        return swap_colour(caption, rng, references, vocab)
    if kind == "noun":
        return swap_noun(caption, rng, references, vocab)
    if kind == "drop":
        return drop_phrase(caption, rng, references, vocab)
    if kind == "add":
        return add_phrase(caption, rng, references, pool, vocab)
    raise ValueError(f"unknown corruption {kind!r}; expected one of {', '.join(TEXT_CORRUPTIONS)}")
