"""Free-text corruptions (capalign.data.corrupt): each rule makes exactly one change, checked word by word
with difflib on a tokenisation of the test's own, and character by character outside the change; fixed
hand-written captions give the outcomes worked out by hand; a caption with nothing to change gives None."""

from __future__ import annotations

import difflib
import os
import random

import pytest

from capalign import CapalignError
from capalign.data import corrupt as C

CAPTIONS = [  # COCO-like captions, written for this test
    "A dog sitting on a couch.",
    "a man and a woman holding red umbrellas",
    "Two dogs, a cat and a bird on a bench.",
    "an orange cat next to a white car",
    "the orange is on a plate",
    "a hot dog and a pizza box on a dining table",
    "A red and white bus parked on the street.",
    "a sheep grazing near two cows",
    "a man with a dog on a leash",
    "Three people riding horses on a beach.",
    "A black and brown horse standing in a field with a boy.",
    "a kitchen with a grey refrigerator, an oven and a sink",
    "a cat sleeping under an umbrella next to a yellow surfboard",
    "a view of the mountains",
]
POOL = C.phrase_pool([(str(i), c) for i, c in enumerate(CAPTIONS)])


def words(s: str) -> list[str]:
    """The test's own tokenisation: lower case, punctuation as spaces."""
    return s.lower().replace(",", " ").replace(".", " ").split()


def change(a: str, b: str):
    """The one word-level change from a to b: (op, old words, new words); fails unless there is exactly one,
    and unless the characters around it are those of a."""
    ops = [op for op in difflib.SequenceMatcher(a=words(a), b=words(b), autojunk=False).get_opcodes() if op[0] != "equal"]
    assert len(ops) == 1, (a, b, ops)
    tag, i1, i2, j1, j2 = ops[0]
    return tag, tuple(words(a)[i1:i2]), tuple(words(b)[j1:j2])


def changed_chars(a: str, b: str) -> tuple[int, int]:
    """Characters of a and of b between their longest common prefix and suffix."""
    p = len(os.path.commonprefix([a, b]))
    s = min(len(os.path.commonprefix([a[::-1], b[::-1]])), min(len(a), len(b)) - p)
    return len(a) - p - s, len(b) - p - s


def outcomes(kind: str, caption: str, n: int = 60, **kw) -> set:
    return {C.corrupt_text(caption, kind, random.Random(s), **kw) for s in range(n)}


def test_word_lists():
    assert len(C.COCO_CATEGORIES) == len(set(C.COCO_CATEGORIES)) == 80
    assert len(C.COLOURS) == 11
    pl = C.WORDS.plurals
    assert (pl["person"], pl["knife"], pl["bus"], pl["sandwich"], pl["wine glass"], pl["mouse"], pl["toothbrush"], pl["man"]) == (
        "people", "knives", "buses", "sandwiches", "wine glasses", "mice", "toothbrushes", "men")
    assert C.WORDS.forms["people"] == ("person", "pl") and C.WORDS.forms["sheep"] == ("sheep", "both") and C.WORDS.max_words == 2


def test_colour_swap():
    # after "a" only colours taking "a" (not orange); never the caption's own colour
    got = outcomes("colour", "A red car.", references=["A red car."], n=200)
    assert got == {f"A {c} car." for c in C.COLOURS if c not in ("red", "orange")}
    # never a colour the image's references name; grey is gray
    got = outcomes("colour", "a red car", references=["a red car", "a blue car near grey walls"], n=200)
    assert got == {f"a {c} car" for c in C.COLOURS if c not in ("red", "orange", "blue", "gray")}
    # capitals are kept
    got = outcomes("colour", "Red cars parked.")
    assert len(got) == 10 and all(s[:1].isupper() and s.split()[0].lower() in C.COLOURS and s.endswith(" cars parked.") for s in got)
    # "an orange cat": no other colour takes "an"; "orange" as a noun is no colour: nothing to change
    assert C.corrupt_text("an orange cat", "colour", random.Random(0)) is None
    assert C.corrupt_text("the orange is on a plate", "colour", random.Random(0)) is None
    assert C.corrupt_text("A dog sitting on a couch.", "colour", random.Random(0)) is None


def test_noun_swap_keeps_number_and_article():
    sg = {s for s, _ in C.WORDS.pairs}
    got = {noun_replaced("a dog on a bench", b) for b in outcomes("noun", "a dog on a bench", n=300)}
    assert {o for o, _ in got} == {"dog", "bench"}
    assert all(new in sg and C.article(new) == "a" for _, new in got)
    got = {noun_replaced("an apple", b)[1] for b in outcomes("noun", "an apple", n=300)}
    assert got and all(C.article(n) == "an" and n != "apple" for n in got)  # an elephant, an oven, ...
    plurals = set(C.WORDS.plurals.values())
    got = {noun_replaced("two dogs", b)[1] for b in outcomes("noun", "two dogs", n=200)}
    assert got <= plurals and "dogs" not in got and len(got) > 20
    # a two-word noun is one noun ("hot dog" is never "hot cat"); the references' nouns are never chosen
    for b in outcomes("noun", "a hot dog", references=["a hot dog", "a hot dog with a cup"], n=100):
        assert b.startswith("a ") and b[2:] in sg and b[2:] not in ("hot dog", "cup")
    # sheep is singular after "a", plural after "many"
    assert {noun_replaced("a sheep", b)[1] for b in outcomes("noun", "a sheep")} <= sg
    assert {noun_replaced("many sheep", b)[1] for b in outcomes("noun", "many sheep")} <= plurals
    assert C.corrupt_text("a view of the mountains", "noun", random.Random(0)) is None


def test_drop_by_hand():
    assert outcomes("drop", "A dog sitting on a couch.") == {"A dog sitting."}
    assert outcomes("drop", "a man and a woman") == {"a man", "a woman"}
    assert outcomes("drop", "Two dogs, a cat and a bird.") == {"Two dogs and a bird.", "Two dogs, a cat."}
    assert "a dog, a cat." in outcomes("drop", "a dog, a cat, and a bird.")
    assert outcomes("drop", "A dog and a cat.") == {"A cat.", "A dog."}  # the first letter stays a capital
    assert outcomes("drop", "a pizza box and a cat") == {"a pizza box"}  # "a pizza" could be part of "a pizza box"
    for nothing in ("a dog", "a dog and a dog", "a man holding an umbrella", "a view of the mountains"):
        assert C.corrupt_text(nothing, "drop", random.Random(0)) is None, nothing


def test_add_by_hand():
    pool = [C.PoolPhrase("x", "a red umbrella", "umbrella")]
    assert outcomes("add", "a dog on a couch", pool=pool) == {"a dog and a red umbrella on a couch", "a dog on a couch and a red umbrella"}
    # a phrase naming what the references name is not an error: nothing to add
    assert C.corrupt_text("a dog", "add", random.Random(0), references=["a dog", "a dog under an umbrella"], pool=pool) is None
    assert C.corrupt_text("a view of the mountains", "add", random.Random(0), pool=pool) is None
    assert [(p.text, p.singular) for p in C.phrase_pool([("1", "A red umbrella on the beach."), ("2", "people walking")])] == [
        ("a red umbrella", "umbrella")]  # a phrase without a determiner is not taken


def count_nouns(ws) -> int:
    """Listed nouns in a word list, longest form first (the test's own count)."""
    n, i = 0, 0
    while i < len(ws):
        i, n = (i + 2, n + 1) if " ".join(ws[i:i + 2]) in C.WORDS.forms else (i + 1, n + (ws[i] in C.WORDS.forms))
    return n


def noun_replaced(a: str, b: str) -> tuple[str, str] | None:
    """(old, new) if b is a with one listed noun form (one or two words) replaced by another, else None."""
    wa, wb = words(a), words(b)
    for i in range(len(wa)):
        for j in (i + 1, i + 2):
            for k in (j - i - 1, j - i, j - i + 1):  # the new form has one or two words
                old, new = " ".join(wa[i:j]), " ".join(wb[i:i + k])
                if k and wa[:i] == wb[:i] and wa[j:] == wb[i + k:] and old in C.WORDS.forms and new in C.WORDS.forms and old != new:
                    return old, new
    return None


@pytest.mark.parametrize("kind", C.TEXT_CORRUPTIONS)
def test_each_rule_makes_exactly_one_change(kind):
    forms, pool_texts = C.WORDS.forms, {p.text for p in POOL}
    colours = set(C.COLOURS) | {"grey"}
    applied = 0
    for i, cap in enumerate(CAPTIONS):
        others = [p for p in POOL if p.image != str(i)]
        for seed in range(15):
            bad = C.corrupt_text(cap, kind, random.Random(seed), references=[cap], pool=others)
            if bad is None:
                continue
            applied += 1
            removed, inserted = changed_chars(cap, bad)
            if kind == "colour":
                tag, old, new = change(cap, bad)
                assert tag == "replace" and len(old) == len(new) == 1 and old[0] in colours and new[0] in colours and old != new
                assert removed <= len(old[0]) and inserted <= len(new[0])  # nothing but the word changed
            elif kind == "noun":
                old, new = noun_replaced(cap, bad)
                (_, n_old), (_, n_new) = forms[old], forms[new]
                assert forms[old][0] != forms[new][0] and (n_old == n_new or "both" in (n_old, n_new))
                assert removed <= len(old) and inserted <= len(new)  # nothing else changed
            elif kind == "drop":
                # one span deleted (the first letter may become a capital), holding exactly one listed noun
                a = len(os.path.commonprefix([cap.lower(), bad.lower()]))
                b = a + len(cap) - len(bad)
                assert cap[b:].lower() == bad[a:].lower() and inserted <= 1, (cap, bad)
                assert count_nouns(words(cap[a:b])) == 1 and count_nouns(words(bad)) >= 1, (cap, bad)
            else:
                # " and <a phrase of another caption>" inserted, nothing else changed
                assert removed == 0 and any(bad == cap[:k] + " and " + q + cap[k:] for q in pool_texts for k in range(len(cap) + 1)), (cap, bad)
                tag, old, new = change(cap, bad)
                assert tag == "insert" and "and" in new
    assert applied >= 3 * 15


def test_unknown_kind_and_word_lists(tmp_path):
    with pytest.raises(ValueError, match="unknown corruption"):
        C.corrupt_text("a dog", "size", random.Random(0))
    assert C.load_words() is C.WORDS
    f = tmp_path / "nouns.txt"
    f.write_text("# shapes\ncircle\nsquare\ntriangle\nbox,boxes\nsheep,sheep\n\n")
    w = C.load_words(str(f))
    assert w.pairs == (("circle", "circles"), ("square", "squares"), ("triangle", "triangles"), ("box", "boxes"), ("sheep", "sheep"))
    assert w.colours == C.COLOURS
    assert outcomes("noun", "a red circle", vocab=w) == {f"a red {x}" for x in ("square", "triangle", "box", "sheep")}
    # inline lists; only the given colours are colours (and their spelling: grey is gray)
    w = C.load_words("circle,square", "red, grey")
    assert w.pairs == (("circle", "circles"), ("square", "squares")) and w.colours == ("red", "gray")
    assert outcomes("colour", "a red circle", vocab=w) == {"a gray circle"}
    assert C.corrupt_text("a blue circle", "colour", random.Random(0), vocab=w) is None  # blue is no colour here
    f.write_text("circle\nred-ish\n")
    with pytest.raises(CapalignError, match="nouns.txt line 2: 'red-ish' is not"):
        C.load_words(str(f))
    (tmp_path / "colours.txt").write_text("red,blue\n")
    with pytest.raises(CapalignError, match="colours.txt line 1: 'red,blue' is not one word"):
        C.load_words(None, str(tmp_path / "colours.txt"))
    f.write_text("# nothing\n")
    with pytest.raises(CapalignError, match="empty"):
        C.load_words(str(f))
    with pytest.raises(CapalignError, match="noun list not found"):
        C.load_words(str(tmp_path / "nope.txt"))
