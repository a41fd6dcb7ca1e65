"""The degeneracy metric (metrics/degenerate.py) on hand-checked captions, `capalign evaluate --metrics degenerate`,
the degenerate caption builders (judge/candidates.py), and one definition serving every reader."""

from __future__ import annotations

import json
import random

import pytest

from capalign import CapalignError
from capalign.cli import main
from capalign.data import shapes
from capalign.judge.candidates import FUNCTION_WORDS, KINDS, degenerate_caption, known_words
from capalign.metrics import degenerate as deg
from capalign.metrics.degenerate import collapse_reason, degeneracy, vocabulary_for, words

# caption -> (words, nonwords, empty, nonword, repeat) under the shapes vocabulary, each counted by hand
HAND = [
    ("a small red circle on the left.", 7, 0, False, False, False),
    ("", 0, 0, True, False, False),
    ("  !! 1987 :)", 0, 0, True, False, False),  # no letters: no word
    ("abssstled", 1, 1, False, True, False),
    ("so aesntic", 2, 1, False, False, False),  # half, not more than half
    ("aplaa_ xqzt circle", 3, 2, False, True, False),  # underscore is no letter: "aplaa"
    ("circle circle circle", 3, 0, False, False, True),  # one word 3/3 > half
    ("circle circle", 2, 0, False, False, False),  # fewer than 3 words: never the one-word rule
    ("red circle red square", 4, 0, False, False, False),  # "red" 2/4: not more than half; no 3-gram twice
    ("a red circle and a red circle", 7, 0, False, False, True),  # 3-gram "a red circle" twice
    ("IMG_1234.jpg", 2, 0, False, False, False),  # img, jpg: shapes-world words (web captions)
    ("A Small RED circle", 4, 0, False, False, False),  # lower-cased
]


def test_flags_and_counts_by_hand():
    res = degeneracy([h[0] for h in HAND], "shapes")
    for (cap, n, bad, empty, nonword, repeat), f in zip(HAND, res["per_caption"]):
        assert (f["words"], f["nonwords"], f["empty"], f["nonword"], f["repeat"]) == (n, bad, empty, nonword, repeat), cap
    # by hand: empty 2 ("", "  !! 1987 :)"), nonword 2, repeat 2; distinct: "a small red circle" twice after lower-casing? no:
    # "A Small RED circle" != "a small red circle on the left." -> all 12 distinct
    assert res["counts"] == {"captions": 12, "empty": 2, "nonword": 2, "repeat": 2, "distinct": 12}
    assert res["corpus"] == {"empty": 2 / 12, "nonword": 2 / 12, "repeat": 2 / 12, "distinct": 1.0}
    assert res["vocabulary"] == "shapes" and res["collapsed"].startswith("33% of captions are empty or non-words")


def test_distinct_lower_cases_and_collapses_whitespace():
    res = degeneracy(["A red  circle", "a red circle", " a RED circle ", "a blue square", "a blue square."], "shapes")
    assert res["counts"]["distinct"] == 3 and res["corpus"]["distinct"] == pytest.approx(3 / 5)


def test_english_vocabulary_and_words():
    assert words("It's a dog's IMG_12.jpg, café!") == ["it's", "a", "dog's", "img", "jpg", "café"]
    # English word list: inflections are words, made-up strings are not
    res = degeneracy(["two dogs were running", "brouzeled snaivy", "colours circles"], "english")
    assert [f["nonwords"] for f in res["per_caption"]] == [0, 2, 1] and [f["nonword"] for f in res["per_caption"]] == [False, True, False]
    custom = degeneracy(["foo bar", "foo baz qux"], {"foo", "bar"})
    assert custom["vocabulary"] == "custom" and [f["nonword"] for f in custom["per_caption"]] == [False, True]
    with pytest.raises(CapalignError, match="at least one caption"):
        degeneracy([])
    with pytest.raises(CapalignError, match="unknown vocabulary 'klingon'"):
        degeneracy(["a"], "klingon")


def test_shapes_vocabulary_covers_every_caption_the_world_writes():
    rows = [shapes.make_example(0, i, 48, "test")[0] for i in range(60)]
    for key in ("captions", "captions_web", "captions_humorous", "captions_romantic"):
        assert degeneracy([c for r in rows for c in r[key]], "shapes")["counts"]["nonword"] == 0
        assert not any(f["nonwords"] for f in degeneracy([c for r in rows for c in r[key]], "shapes")["per_caption"])
    assert vocabulary_for([r["captions"] for r in rows]) == "shapes"
    assert vocabulary_for([["a dog on a sofa"]]) == "english" and vocabulary_for([[""]]) == "english"


def test_collapse_rule():
    ok = {"empty": 0.0, "nonword": 0.04, "repeat": 0.9, "distinct": 0.5}
    assert collapse_reason(ok) is None  # repeat is reported, never a collapse by itself
    assert "5% of captions are empty or non-words" in collapse_reason({**ok, "empty": 0.01})
    assert "only 1.0% of captions are distinct" in collapse_reason({**ok, "distinct": 0.01})


def test_evaluate_reports_degeneracy_and_warns(tmp_path, capsys):
    rows = [shapes.make_example(0, i, 48, "test")[0] for i in range(6)]
    refs = tmp_path / "refs.jsonl"
    refs.write_text("".join(json.dumps({"id": r["id"], "captions": r["captions"], "objects": r["objects"]}) + "\n" for r in rows))
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text("".join(json.dumps({"id": r["id"], "caption": r["captions"][0]}) + "\n" for r in rows))
    bad_caps = ["abssstled", "", "a red circle", "aplaa_", "circle circle circle", "a blue square"]
    bad.write_text("".join(json.dumps({"id": r["id"], "caption": c}) + "\n" for r, c in zip(rows, bad_caps)))
    out = tmp_path / "res.json"
    assert main(["evaluate", "--pred", str(good), str(bad), "--refs", str(refs), "--metrics", "degenerate,length", "--out", str(out)]) == 0
    printed = capsys.readouterr().err  # the terminal summary (rich console on stderr)
    res = json.loads(out.read_text())
    b = res["systems"]["bad"]
    assert b["corpus"] == pytest.approx({"empty": 1 / 6, "nonword": 2 / 6, "repeat": 1 / 6, "distinct": 1.0, "words": 11 / 6})  # words: 1+0+3+1+3+3
    assert b["per_caption"]["nonword"] == [True, False, False, True, False, False] and b["per_caption"]["empty"][1] is True
    assert b["counts"]["degenerate"]["vocabulary"] == "shapes" and b["counts"]["degenerate"]["nonword"] == 2
    assert res["systems"]["good"]["counts"]["degenerate"]["collapsed"] is None
    warnings = [ln for ln in " ".join(printed.split()).split("warning: ")[1:]]
    assert len(warnings) == 1 and warnings[0].startswith("bad: captions collapsed: 50% of captions are empty or non-words")
    assert "empty/nonword/repeat/distinct" in res["definitions"]


def test_one_definition_serves_evaluate_and_the_rl_history(tmp_path, monkeypatch):
    """Change the definition in metrics/degenerate.py and both readers change: evaluate's metric and the RL
    reward wrapper that logs degenerate/<flag> into history.json."""
    from capalign.metrics.evaluate import evaluate_system
    from capalign.rl.train import checked

    caps = ["a small red circle on the left.", "a blue square"]
    refs = {"1": {"captions": [caps[0]]}, "2": {"captions": [caps[1]]}}
    logged = {}
    reward = checked("r", lambda completions, **kw: [0.0] * len(completions), "shapes")

    def both():
        logged.clear()
        reward(caps, log_metric=logged.__setitem__)
        return evaluate_system({"1": caps[0], "2": caps[1]}, refs, ["degenerate"])["corpus"]["nonword"], logged["degenerate/nonword"]

    assert both() == (0.0, 0.0)
    flags = deg.caption_flags
    monkeypatch.setattr(deg, "caption_flags", lambda c, v: {**flags(c, v), "nonword": True})
    assert both() == (1.0, 1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_degenerate_captions_are_what_they_say(kind):
    """Each builder makes its kind, checked with the metric's own definition where it has one."""
    rng = random.Random(0)
    rows = [shapes.make_example(0, i, 48, "train")[0] for i in range(30)]
    for r in rows:
        cap = rng.choice(r["captions"])
        out = degenerate_caption(kind, cap, rng, other="another image's caption")
        f = degeneracy([out], "english")["per_caption"][0]
        fs = degeneracy([out], "shapes")["per_caption"][0]
        ws, cw = words(out), words(cap)
        if kind in ("nonword", "char_noise"):
            assert f["nonword"] and fs["nonword"] and f["nonwords"] == f["words"], out  # every word is made up
            assert kind == "nonword" or len(ws) == len(cw)
        elif kind == "repeat":
            assert fs["repeat"] and f["repeat"] and set(ws) <= set(cw), out
        elif kind == "truncated":
            assert 1 <= len(ws) <= max(1, len(cw) // 2) and cap.startswith(out), out
            assert ws[-1] in FUNCTION_WORDS or ws[-1] != cw[len(ws) - 1], out  # ends after a function word or inside a word
        elif kind == "empty":
            assert out == "" and fs["empty"]
        elif kind == "unrelated_image":
            assert out == "another image's caption"
        elif kind == "garbage_tail":
            tail = out[len(cap):].strip()  # made-up words or symbol runs, never a word
            assert out.startswith(cap) and tail and not set(words(tail)) & known_words(), out
    with pytest.raises(ValueError, match="unknown degenerate kind"):
        degenerate_caption("funny", "a", rng)


def test_one_definition_serves_evaluate_and_the_style_guard(tmp_path, monkeypatch):
    """Change the collapse threshold in metrics/degenerate.py and both evaluate's verdict and the style sweep's
    collapse guard change: 3% non-words is healthy at 5%, collapsed at 2%."""
    from test_style_sweep import _degenerate_cells

    from capalign.metrics.evaluate import collapse_of, evaluate_system
    from capalign.style.results import aggregate

    caps = {str(i): "a red circle" for i in range(33)} | {"x": "abssstled"}  # 1 of 34 captions non-words: 2.9%
    caps = {k: f"{v} {k}" if v != "abssstled" else v for k, v in caps.items()}  # distinct captions ("a red circle 7": 3 of 4 words are words)
    refs = {k: {"captions": ["a red circle"]} for k in caps}
    cfg = _degenerate_cells(tmp_path, {"10%": 1 / 34, "50%": 0.0, "100%": 0.0})

    def both():
        verdict = collapse_of(evaluate_system(caps, refs, ["degenerate"]))
        return verdict is not None, [c["budget"] for c in aggregate(cfg, str(tmp_path / "none"))["collapsed"]]

    assert both() == (False, [])
    monkeypatch.setattr(deg, "COLLAPSE_SHARE", 0.02)
    assert both() == (True, ["10%"])
