"""`capalign style sweep` on a tiny Idefics3: every cell evaluated on one test split, resume, the summary files."""

from __future__ import annotations

import dataclasses
import json

from capalign.cli import main


def test_sweep_resumes_and_summarises(tiny_idefics3_path, one_thread, tmp_path, capsys):
    out = tmp_path / "style"
    argv = ["style", "sweep", "--model", str(tiny_idefics3_path), "--data", "shapes:12", "--out", str(out), "--methods", "dpo",
            "--styles", "humorous", "--budgets", "50%,100%", "--seeds", "1", "--n_test", "3", "--steps", "2",
            "--batch_size", "4", "--lora_r", "4", "--max_new_tokens", "6"]
    assert main(argv) == 0
    s = json.loads((out / "sweep.json").read_text())
    names = [c["name"] for c in s["cells"]]
    assert s["complete"] and sorted(names) == sorted(["base", "zero-shot/humorous", "dpo/humorous/b50-s0", "dpo/humorous/b100-s0"])
    cells = {c["name"]: c for c in s["cells"]}
    # nested budgets on one test split: the 50% cell trains on fewer pairs, every cell is scored on the same pairs
    assert 0 < cells["dpo/humorous/b50-s0"]["n_pairs"] < cells["dpo/humorous/b100-s0"]["n_pairs"]
    assert cells["dpo/humorous/b50-s0"]["steps"] == cells["dpo/humorous/b100-s0"]["steps"] == 2  # --steps: budgets differ only in data
    assert len({c["n_test"] for c in s["cells"]}) == 1
    tests = [[json.loads(x)["id"] for x in (out / "cells" / n / "captions.jsonl").read_text().splitlines()] for n in names]
    assert all(t == tests[0] for t in tests)
    for c in s["cells"]:
        assert 0 <= c["measures"]["style_acc" if c["style"] else "style_acc/humorous"] <= 1
    assert 0 <= cells["zero-shot/humorous"]["measures"]["wr_logp"] <= 1
    curve = s["curves"]["wr_logp"]["humorous"]["dpo"]
    assert [p["budget"] for p in curve] == ["50%", "100%"] and curve[1]["mean"] == cells["dpo/humorous/b100-s0"]["measures"]["wr_logp"]
    # the report's rows (one per trained cell, budget in %) and flat saturation rows, one per measure x style x method
    assert sorted((r["budget"], r["wr_logp"]) for r in s["rows"]) == sorted(
        (float(n.split("/b")[1].split("-")[0]), cells[n]["measures"]["wr_logp"]) for n in cells if n.startswith("dpo/"))
    assert sorted(x["measure"] for x in s["saturation"]) == ["style_acc", "styled_faithful", "wr_logp", "wr_logp_sum"]
    assert all(x["budget"] in (50.0, 100.0, None) and x["zero_shot"] == cells["zero-shot/humorous"]["measures"][x["measure"]] for x in s["saturation"])
    assert (out / "cells.csv").read_text().count("\n") == 5 and (out / "plot-style_acc.png").stat().st_size > 1000
    assert s["classifier"]["heldout"]["accuracy"] is not None
    # styled_faithful recomputed from the saved captions: the classifier says the style AND the caption names every object with its colour
    from capalign.metrics.degenerate import degeneracy
    from capalign.metrics.grounding import grounding
    from capalign.metrics.style_classifier import load_classifier
    from capalign.style.sweep import StyleSweepConfig

    clf = load_classifier(s["classifier"]["path"])
    test = StyleSweepConfig(**{**s["config"], "out": str(out)}).open_data("humorous").test[:3]
    for n, c in cells.items():
        caps = [json.loads(x)["caption"] for x in (out / "cells" / n / "captions.jsonl").read_text().splitlines()]
        g = grounding(caps, [p.objects for p in test])["per_caption"]
        want = sum(bool(cap.strip()) and lab == "humorous" and r["attr"]["recalled"] == r["attr"]["annotated"] and not r["attr"]["hallucinated"]
                   for cap, lab, r in zip(caps, clf.predict(caps), g)) / 3
        assert c["measures"]["styled_faithful" if c["style"] else "styled_faithful/humorous"] == want
        # the collapse guard's degeneracy shares: metrics/degenerate.py on the cell's captions (shapes world: its own vocabulary)
        assert {k: c["measures"][f"degenerate_{k}"] for k in ("empty", "nonword", "repeat", "distinct")} == degeneracy(caps, "shapes")["corpus"]

    # resume: a finished cell is skipped; a cell killed before its result.json is re-run from scratch
    done = out / "cells" / "dpo" / "humorous" / "b100-s0" / "result.json"
    killed = out / "cells" / "dpo" / "humorous" / "b50-s0"
    (killed / "result.json").unlink()
    before = done.stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    assert "3 done, 1 to run" in capsys.readouterr().err
    assert done.stat().st_mtime_ns == before and (killed / "result.json").exists()
    again = json.loads((out / "sweep.json").read_text())
    assert again["complete"] and {c["name"]: c["measures"] for c in again["cells"]} == {c["name"]: c["measures"] for c in s["cells"]}


def test_sweep_bad_input(tmp_path, capsys):
    base = ["style", "sweep", "--model", "x", "--out", str(tmp_path)]
    for extra, msg in ((["--methods", "ppo"], "unknown method"), (["--budgets", "10,20"], "percentages"),
                       (["--budgets", "20%,10%"], "increasing"), (["--seeds", "0"], "seeds")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and msg in err and len(err.splitlines()) == 1, err


def test_styled_faithful_needs_the_style_and_every_object(tmp_path, monkeypatch):
    """The joint measure: styled captions that name every object count; the same captions with one colour changed do not,
    although the classifier still calls them styled; factual captions are faithful but not styled."""
    import re
    from types import SimpleNamespace

    import torch

    from capalign.data.shapes import COLORS
    from capalign.metrics.style import classifier_data
    from capalign.metrics.style_classifier import StyleClassifier
    from capalign.style import sweep as style_sweep

    cfg = style_sweep.StyleSweepConfig(model="x", out=str(tmp_path), data="shapes:60", styles="humorous")
    prefs = cfg.open_data("humorous")
    StyleClassifier.fit(*classifier_data(prefs.train)).save_pretrained(tmp_path / "clf")
    test = prefs.test[:8]
    monkeypatch.setattr("capalign.metrics.style.wr_logp", lambda vlm, pairs: {"wr_logp": 0.5, "wr_logp_sum": 0.5, "margin_mean": 0.0})

    def measure(caps):
        monkeypatch.setattr(style_sweep, "_caption", lambda *a, **k: caps)
        return style_sweep.evaluate(SimpleNamespace(model=torch.nn.Linear(1, 1)), test, "humorous", "p", cfg, str(tmp_path / "clf"))[0]

    styled = measure([p.chosen for p in test])
    assert styled["recall_attr"] == 1 and styled["chair_i_attr"] == 0
    assert styled["styled_faithful"] == styled["style_acc"] >= 0.5
    colours = "|".join(COLORS)

    def recolour(cap):  # the first colour word becomes a colour that is nowhere in the caption (so no other object has it)
        new = next(c for c in COLORS if not re.search(rf"\b{c}\b", cap))
        return re.sub(rf"\b({colours})\b", new, cap, count=1)

    recoloured = measure([recolour(p.chosen) for p in test])
    assert recoloured["style_acc"] >= 0.5 and recoloured["styled_faithful"] == 0
    factual = measure([p.rejected for p in test])
    assert factual["recall_attr"] == 1 and factual["styled_faithful"] == factual["style_acc"] <= 0.25


def test_collapse_guard_in_the_saturation_rule(tmp_path):
    """A budget whose content recall fell below collapse_share x the factual Base's is never the saturation budget; a collapsed plateau
    gives no budget at all (SimPO's degenerate captions score high on style accuracy and WR-LogP)."""
    from capalign.io import atomic_write_json
    from capalign.style.results import aggregate
    from capalign.style.sweep import StyleSweepConfig

    cfg = StyleSweepConfig(model="x", out=str(tmp_path), methods="sft,simpo", styles="humorous", budgets="10%,50%,100%", seeds=2)
    cells = {"zero-shot/humorous": (0.2, 0.0), "base": (None, 0.4)}  # (style_acc, recall_attr); the guard compares with the base
    cells.update({f"sft/humorous/b{b}-s{s}": v for s in (0, 1) for b, v in (("10", (0.8, 0.1)), ("50", (0.51, 0.4)), ("100", (0.52, 0.4)))})
    cells.update({f"simpo/humorous/b{b}-s{s}": v for s in (0, 1) for b, v in (("10", (0.3, 0.35)), ("50", (0.98, 0.05)), ("100", (1.0, 0.0)))})
    for c in cfg.cells():
        if c["name"] in cells:
            acc, rec = cells[c["name"]]
            meas = {"recall_attr": rec} if acc is None else {"style_acc": acc, "recall_attr": rec}
            atomic_write_json(tmp_path / "cells" / c["name"] / "result.json", {**c, "measures": meas})
    sat = {(r["method"], r["measure"]): r for r in aggregate(cfg, str(tmp_path / "none"))["saturation"]}
    # sft: 10% collapsed (recall 0.1 < 0.5 x 0.4) though its style accuracy 0.8 is above the plateau: the saturation budget is 50%
    assert sat["sft", "style_acc"]["collapsed"] == "10%" and sat["sft", "style_acc"]["budget"] == 50.0
    assert sat["simpo", "style_acc"]["collapsed"] == "50%,100%" and sat["simpo", "style_acc"]["budget"] is None
    assert "collapsed" in sat["simpo", "style_acc"]["note"]
    unguarded = dataclasses.replace(cfg, collapse_share=0.0)
    sat0 = {(r["method"], r["measure"]): r for r in aggregate(unguarded, str(tmp_path / "none"))["saturation"]}
    assert sat0["sft", "style_acc"]["budget"] == 10.0 and sat0["simpo", "style_acc"]["budget"] == 50.0


def _degenerate_cells(tmp_path, nonword: dict):
    """Cells of a sweep whose content recall never collapses (0.4, the Base's) but whose sft captions have these
    degenerate_nonword shares per budget (empty 0, distinct 1: only nonword can trip the degeneracy rule)."""
    from capalign.io import atomic_write_json
    from capalign.style.sweep import StyleSweepConfig

    cfg = StyleSweepConfig(model="x", out=str(tmp_path), methods="sft", styles="humorous", budgets="10%,50%,100%", seeds=2)
    for c in cfg.cells():
        meas = {"recall_attr": 0.4} if c["method"] == "base" else {"style_acc": 0.2, "recall_attr": 0.4}
        if c["method"] == "sft":
            meas = {"style_acc": {"10%": 0.9, "50%": 0.6, "100%": 0.62}[c["budget"]], "recall_attr": 0.4,
                    "degenerate_empty": 0.0, "degenerate_nonword": nonword[c["budget"]], "degenerate_repeat": 0.0, "degenerate_distinct": 1.0}
        atomic_write_json(tmp_path / "cells" / c["name"] / "result.json", {**c, "measures": meas})
    return cfg


def test_collapse_guard_uses_the_degeneracy_rule(tmp_path, capsys):
    """Content kept but captions non-words: metrics/degenerate.py's rule (empty + nonword >= 5%) collapses the budget,
    so its high style accuracy is not a saturation budget; sweep.json lists it and the terminal warns."""
    from capalign.style.results import aggregate

    cfg = _degenerate_cells(tmp_path, {"10%": 0.5, "50%": 0.0, "100%": 0.01})
    s = aggregate(cfg, str(tmp_path / "none"))
    sat = {r["measure"]: r for r in s["saturation"]}["style_acc"]
    assert sat["collapsed"] == "10%" and sat["budget"] == 50.0  # unguarded, 10% (0.9 >= the plateau) would be the budget
    assert [(c["budget"], c["reason"]) for c in s["collapsed"]] == [("10%", "50% of captions are empty or non-words (>= 5%)")]
    assert "warning: sft/humorous at 10%: captions collapsed: 50% of captions are empty or non-words" in " ".join(capsys.readouterr().err.split())
    assert json.loads((tmp_path / "sweep.json").read_text())["collapsed"] == s["collapsed"]
