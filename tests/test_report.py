"""`capalign report RUN`: a run folder built by hand to the contract (docs/run-layout.md), with captions whose
added and hallucinated words are known; the HTML must mark exactly those, its table must carry
capalign.stats' numbers, bad input must give one line or a note, and a real browser must show it."""

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from capalign import stats
from capalign.cli import main
from capalign.data.shapes import COLORS, write_dataset
from capalign.io import atomic_write_json, read_jsonl
from capalign.metrics.evaluate import evaluate_system

SEEDS = (0, 1)
SYSTEMS = ("Base", "ViZer_GT", "ViZer_G")
N = 8
METRICS = ["BLEU4", "ROUGE_L", "CIDEr", "precision_name", "recall_name", "recall_attr", "chair_i_name", "chair_i_attr", "chair_s_attr"]


def planted(row: dict, k: int) -> tuple[dict, dict]:
    """Captions of the three systems for test image k, and the marks each must get:
    {system: {"add": [...], "hal": [...], "attr": [...]}} (words, in order)."""
    o = row["objects"][0]
    base = f"a {o['color']} {o['name']}"
    wrong = next(c for c in COLORS if not any(x["name"] == o["name"] and x["color"] == c for x in row["objects"]))
    none = {"add": [], "hal": [], "attr": []}
    caps = {s: base for s in SYSTEMS}
    marks = {s: dict(none) for s in SYSTEMS}
    if k == 0:  # ViZer_GT adds a hallucinated object
        caps["ViZer_GT"] = base + " and a star"
        marks["ViZer_GT"] = {"add": ["and", "a", "star"], "hal": ["star"], "attr": []}
    elif k == 1:  # ViZer_G states a colour no such shape has
        caps["ViZer_G"] = f"a {wrong} {o['name']}"
        marks["ViZer_G"] = {"add": [wrong], "hal": [], "attr": [wrong]}
    elif k == 2:  # correct additions
        caps["ViZer_GT"] = f"a {o['size']} {o['color']} {o['name']}"
        caps["ViZer_G"] = base + " next to a heart"
        marks["ViZer_GT"] = {"add": [o["size"]], "hal": [], "attr": []}
        marks["ViZer_G"] = {"add": ["next", "to", "a", "heart"], "hal": [], "attr": []}
    elif k == 3:  # the Base hallucinates; ViZer_GT drops it (deletions are not marked), ViZer_G repeats it
        caps["Base"] = caps["ViZer_G"] = base + " and a star"
        marks["Base"] = marks["ViZer_G"] = {"add": [], "hal": ["star"], "attr": []}
    elif k == 4:
        caps["ViZer_GT"] = base + " today"
        caps["ViZer_G"] = "a shape"
        marks["ViZer_GT"] = {"add": ["today"], "hal": [], "attr": []}
        marks["ViZer_G"] = {"add": ["shape"], "hal": [], "attr": []}
    elif k == 5:  # case and punctuation are not differences
        caps["ViZer_GT"] = base.upper()
        caps["ViZer_G"] = base + "."
    # k = 5, 6, 7: every system says the same (up to case and punctuation): the "captions differ" filter hides them
    return caps, marks


def make_run(root: Path) -> dict:
    """A run folder by the contract: 2 seeds x 8 shapes-world test images, 3 systems, evals, summary,
    features, a mapper sweep, a style sweep, RL history. Returns the planted marks per (seed, id, system)."""
    expected = {}
    index = {"name": "fixture", "created": "2026-01-01T00:00:00Z", "seeds": list(SEEDS), "baseline": "Base", "test": {}, "systems": {},
             "versions": {"capalign": "0.1.0", "torch": "2.13.0", "transformers": "5.24.0", "python": "3.11"},
             "recipe": {"name": "fixture", "seeds": list(SEEDS)}, "features": {"0": "seed-0/features.safetensors"},
             "artifacts": {"vizer_sweep": "sweep/results.json", "style_sweep": "style/sweep.json",
                           "rl_history": {"RL_judge": {"0": "rl/RL_judge-seed0/history.json"}}},
             "stages": [{"name": "evaluate", "seed": s, "status": "done", "outputs": [], "seconds": 1.5} for s in SEEDS]}
    evals = {}
    for seed in SEEDS:
        data = write_dataset(root / f"seed-{seed}/data/test", N, seed=seed, split="test")
        rows = list(read_jsonl(data / "manifest.jsonl"))
        index["test"][str(seed)] = f"seed-{seed}/data/test/manifest.jsonl"
        refs = {r["id"]: r for r in rows}
        caps = {s: [] for s in SYSTEMS}
        for k, r in enumerate(rows):
            c, m = planted(r, k)
            for s in SYSTEMS:
                caps[s].append({"id": r["id"], "caption": c[s]})
                expected[(str(seed), r["id"], s)] = m[s]
        for s in SYSTEMS:
            cap_rel, ev_rel = f"seed-{seed}/captions/{s}.jsonl", f"seed-{seed}/eval/{s}.json"
            (root / cap_rel).parent.mkdir(parents=True, exist_ok=True)
            (root / cap_rel).write_text("".join(json.dumps(x) + "\n" for x in caps[s]))
            evals[(s, seed)] = evaluate_system(caps[s], refs, ["bleu", "rouge", "cider", "grounding"])
            atomic_write_json(root / ev_rel, evals[(s, seed)])
            index["systems"].setdefault(s, {})[str(seed)] = {"captions": cap_rel, "eval": ev_rel}
    summary = {"baseline": "Base", "level": 0.95, "seeds": list(SEEDS), "metrics": METRICS, "systems": {}, "paired": {}}
    for s in SYSTEMS:
        summary["systems"][s] = {m: {**stats.mean_ci([evals[(s, seed)]["corpus"][m] for seed in SEEDS]),
                                     "values": [evals[(s, seed)]["corpus"][m] for seed in SEEDS]} for m in METRICS}
        if s != "Base":
            pairs = [(evals[("Base", seed)]["per_caption"]["CIDEr"], evals[(s, seed)]["per_caption"]["CIDEr"]) for seed in SEEDS]
            summary["paired"][s] = {"CIDEr": stats.paired_bootstrap(pairs, n_boot=200)}
    atomic_write_json(root / "summary.json", summary)
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    img = rng.normal(size=(N, 16)).astype(np.float32)
    save_file({"image": img, "mapped/Base": rng.normal(size=(N, 16)).astype(np.float32),
               "mapped/ViZer_GT": (img + 0.1 * rng.normal(size=(N, 16))).astype(np.float32),
               "reference": (img + 0.05 * rng.normal(size=(N, 16))).astype(np.float32)}, str(root / "seed-0/features.safetensors"))
    atomic_write_json(root / "seed-0/features.json", {"ids": [f"test-{i:06d}" for i in range(N)], "mapper": "seed-0/mapper-gt", "center": True})
    atomic_write_json(root / "sweep/results.json", {"metric": "CIDEr", "variant": "gt", "cells": [
        {"width": w, "samples": n, "CIDEr": 0.1 * w / 8 + n / 100, "BLEU4": 0.2} for w in (8, 16) for n in (8, 16)]})
    atomic_write_json(root / "style/sweep.json", {"rows": [
        {"method": m, "style": "humorous", "budget": b, "seed": sd, "style_accuracy": 0.2 + 0.1 * i + 0.01 * sd + (0.1 if m == "dpo" else 0)}
        for m in ("sft", "dpo") for i, b in enumerate((10, 100, 1000)) for sd in SEEDS],
        "saturation": [{"method": "sft", "style": "humorous", "budget": 100, "lo": 10, "hi": 1000, "plateau": 0.41}],
        "collapsed": [{"style": "humorous", "method": "dpo", "budget": "10%", "reason": "60% of captions are empty or non-words (>= 5%)"}]})
    atomic_write_json(root / "rl/RL_judge-seed0/history.json", [{"step": i, "reward_mean": 0.1 * i, "reward_std": 0.05} for i in range(5)])
    (root / "recipe.yaml").write_text("name: fixture\nseeds: [0, 1]\n")
    atomic_write_json(root / "index.json", index)
    return expected


class Cells(HTMLParser):
    """Collect, per gallery caption cell (seed, id, system), the words inside each mark class."""

    def __init__(self):
        super().__init__()
        self.cells, self.row, self.cell, self.open = {}, None, None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-seed" in a:
            self.row = (a["data-seed"], a["data-id"])
        elif tag == "td" and "data-system" in a and self.row:
            self.cell = (*self.row, a["data-system"])
            self.cells[self.cell] = {"add": [], "hal": [], "attr": [], "obj": []}
        if tag == "span" and self.cell:
            self.open.append(set((a.get("class") or "").split()))

    def handle_endtag(self, tag):
        if tag == "span" and self.open:
            self.open.pop()
        elif tag == "td":
            self.cell = None

    def handle_data(self, data):
        if self.cell and self.open:
            for c in self.open[-1] & {"add", "hal", "attr", "obj"}:
                self.cells[self.cell][c] += data.lower().split()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    expected = make_run(root)
    assert main(["report", str(root)]) == 0
    return root, expected


def test_gallery_marks_exactly_the_planted_words(built):
    root, expected = built
    page = (root / "report/index.html").read_text()
    p = Cells()
    p.feed(page)
    assert set(p.cells) == set(expected)  # every (seed, image, system) has its cell
    for key, want in expected.items():
        got = p.cells[key]
        assert {c: got[c] for c in ("add", "hal", "attr")} == want, key
    # grounded mentions are marked too: the first object of every Base caption
    assert all(p.cells[(s, i, "Base")]["obj"] for s, i, _ in expected)
    # per-caption scores shown are the eval file's
    ev = json.loads((root / "seed-0/eval/ViZer_GT.json").read_text())
    assert f"CIDEr {ev['per_caption']['CIDEr'][0]:.3f}" in page
    assert "hallucinated objects 1/2 · wrong attributes 0" in page  # ViZer_GT, image 0: "a red circle and a star"


def test_metrics_table_carries_the_stats_numbers(built, tmp_path):
    root, _ = built
    summary = json.loads((root / "summary.json").read_text())

    def table_values(page: str) -> dict:
        import re

        out = {}
        for sysname, row in re.findall(r'<tr data-system="([^"]+)">(.*?)</tr>', page.split('<table id="metrics"')[1].split("</table>")[0]):
            cells = re.findall(r'<td class="num[^"]*"((?: data-\w+="[^"]*")*)>', row)
            out[sysname] = [dict(re.findall(r'data-(\w+)="([^"]*)"', c)) for c in cells]
        return out

    got = table_values((root / "report/index.html").read_text())
    for s in SYSTEMS:
        for m, cell in zip(METRICS, got[s]):
            want = summary["systems"][s][m]
            assert (float(cell["mean"]), float(cell["lo"]), float(cell["hi"]), int(cell["n"])) == (want["mean"], want["lo"], want["hi"], 2)
    assert 'id="paired"' in (root / "report/index.html").read_text()
    # without summary.json the table is capalign.stats.mean_ci over the eval files: the same numbers
    run = tmp_path / "run"
    shutil.copytree(root, run, ignore=shutil.ignore_patterns("report"))
    (run / "summary.json").unlink()
    assert main(["report", str(run)]) == 0
    page = (run / "report/index.html").read_text()
    assert table_values(page) == got and 'id="paired"' not in page
    assert "summary.json is missing" in page


def test_half_finished_run_and_missing_images(tmp_path, built, capsys):
    root, _ = built
    run = tmp_path / "run"
    shutil.copytree(root, run, ignore=shutil.ignore_patterns("report"))
    (run / "seed-1/captions/ViZer_G.jsonl").unlink()
    (run / "seed-1/eval/ViZer_G.json").unlink()
    (run / "seed-0/data/test/images/test-000002.png").unlink()
    (run / "seed-1/data/test/images/test-000005.png").write_bytes(b"not a png")
    shutil.rmtree(run / "sweep")
    index = json.loads((run / "index.json").read_text())
    index["stages"] += [{"name": "vizer_g", "seed": 1, "status": "failed", "error": "out of memory"},
                        {"name": "rl", "seed": 0, "status": "missing"}]
    atomic_write_json(run / "index.json", index)
    assert main(["report", str(run)]) == 0
    page = (run / "report/index.html").read_text()
    banner = page.split('id="missing"')[1].split("</section>")[0]
    for text in ("stage vizer_g (seed 1) is failed: out of memory", "stage rl (seed 0) is missing",
                 "captions of ViZer_G, seed 1: seed-1/captions/ViZer_G.jsonl is missing",
                 "2 test image(s) no longer exist or cannot be read", "mapper sweep: sweep/results.json is missing"):
        assert text in banner
    assert page.count('src="assets/missing.svg"') == 2
    assert page.count('class="cap none" data-system="ViZer_G"') == N  # seed 1 has no ViZer_G captions
    assert "Not in this run: sweep/results.json" in page
    assert main(["report", str(run), "--max_images", "3"]) == 0
    page = (run / "report/index.html").read_text()
    assert page.count("<tr id=") == 6 and "the first 3 test images of each seed (of 8 in seed 0, 8 in seed 1;" in page
    err = capsys.readouterr().err
    assert "missing: stage rl (seed 0) is missing" in err and f"wrote {run / 'report/index.html'} (16 gallery images, 2 of their images missing)" in err


def test_budget_arms_and_the_study_figures(tmp_path, built):
    """A ViZer budget arm (several step counts of one run): the gallery keeps its largest, the metrics keep all,
    one table per arm; the figures `capalign study` drew are copied in."""
    root, _ = built
    run = tmp_path / "run"
    shutil.copytree(root, run, ignore=shutil.ignore_patterns("report"))
    arm = {"steps": [50, 100], "systems": ["ViZer_G", "ViZer_GT"]}
    summary = json.loads((run / "summary.json").read_text())
    summary["budget"] = {"GT": arm}
    atomic_write_json(run / "summary.json", summary)
    index = json.loads((run / "index.json").read_text())
    index["budget"], index["artifacts"]["summary_forest"] = {"GT": arm}, "summary_forest.png"
    atomic_write_json(run / "index.json", index)
    shutil.copy(root / "report/assets/rl-reward.png", run / "summary_forest.png")
    assert main(["report", str(run)]) == 0
    page = (run / "report/index.html").read_text()
    gallery_head = page.split('<table id="gallery">')[1].split("</thead>")[0]
    assert "ViZer_G<" not in gallery_head and "ViZer_GT<" in gallery_head
    assert "Left out of the gallery: the intermediate points of ViZer budget arms (ViZer_G)" in page
    assert '<tr data-system="ViZer_G">' in page  # the metrics table keeps every system
    budget = page.split('<table id="budget-GT"')[1].split("</table>")[0]
    assert "50 steps" in budget and "100 steps" in budget
    assert (run / "report/assets/summary_forest.png").read_bytes() == (run / "summary_forest.png").read_bytes()


def test_bad_run_folders_fail_with_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "index.json").write_text("{not json")
    for path in (tmp_path / "empty", tmp_path / "nope", bad):
        assert main(["report", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "empty/report").exists()
    assert main(["report"]) == 2 and capsys.readouterr().err.startswith("error: ")


def test_report_is_replaced_whole_or_not_at_all(tmp_path, built, monkeypatch):
    root, _ = built
    run = tmp_path / "run"
    shutil.copytree(root, run)
    before = (run / "report/index.html").read_bytes()
    from capalign.reports import figures

    def boom(*a, **k):
        raise RuntimeError("crash while building")

    monkeypatch.setattr(figures, "rl_section", boom)
    with pytest.raises(RuntimeError):
        main(["report", str(run)])
    assert (run / "report/index.html").read_bytes() == before  # the old report, whole
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temp folder left


def test_mention_spans_point_at_the_words():
    from capalign.metrics.grounding import mention_spans, mentions, vocabulary

    nouns, attrs = vocabulary([[{"name": "circle", "attributes": ["red", "small"]}]])
    text = "Two small RED circles and a box."
    ms = mention_spans(text, nouns, attrs)
    assert [(text[slice(*m["noun"])], m["name"]) for m in ms] == [("circles", "circle"), ("box", "square")]
    assert [text[s:e] for s, e, _ in ms[0]["attribute_spans"]] == ["small", "RED"]
    assert mentions(text, nouns, attrs) == [("circle", frozenset({"small", "red"})), ("square", frozenset())]


def test_pca_is_one_basis_for_all_systems():
    from capalign.reports.figures import pca

    rng = np.random.default_rng(0)
    plane = rng.normal(size=(2, 16))  # every point lies in a 2-D plane of a 16-D space
    feats = {k: (rng.normal(size=(6, 2)) @ plane).astype(np.float32) for k in ("image", "mapped/Base", "mapped/ViZer_GT")}
    img, mapped, ratio = pca(feats, {"Base": "mapped/Base", "ViZer_GT": "mapped/ViZer_GT", "absent": "mapped/absent"})
    assert set(mapped) == {"Base", "ViZer_GT"} and ratio.sum() == pytest.approx(1.0)
    # two components keep every distance, also between an image and a system's caption
    a, b = feats["image"][1], feats["mapped/ViZer_GT"][4]
    assert np.linalg.norm(img[1] - mapped["ViZer_GT"][4]) == pytest.approx(np.linalg.norm(a - b), rel=1e-5)


# ---------------------------------------------------------------- the report as a person sees it

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def test_report_in_a_real_browser(built, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("needs playwright: pip install -e '.[test]'")
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium: apt-get install -y chromium (then this test runs headless)")
    root, _ = built
    run = tmp_path / "run"
    shutil.copytree(root, run, ignore=shutil.ignore_patterns("report"))
    (run / "seed-0/data/test/images/test-000007.png").unlink()  # the placeholder must display too
    assert main(["report", str(run)]) == 0
    errors, remote = [], []
    with sync_playwright() as pw:
        # launch_persistent_context: a fresh profile folder of our own (--user-data-dir), headless
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
                                                    viewport={"width": 1280, "height": 900})
        try:
            page = ctx.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            ctx.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file://") else (remote.append(r.request.url), r.abort()))
            page.goto((run / "report/index.html").as_uri(), wait_until="load")
            imgs = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
            assert len(imgs) >= 2 * N + 4  # gallery + PCA, heatmap, style, RL figures
            assert [i for i in imgs if not (i[1] and i[2] > 0)] == []
            assert any(src == "assets/missing.svg" for src, _, _ in imgs)
            visible = "#gallery tbody tr:not([hidden])"
            assert page.locator(visible).count() == N  # seed 0, all images
            page.select_option("#f-filter", "differ")
            # hidden: images 6 and 7 (every system says the same) and 5 (the same up to case and punctuation)
            assert page.locator(visible).count() == N - 3
            assert page.inner_text("#f-count") == f"showing {N - 3} of {N} images"
            page.select_option("#f-filter", "hal:ViZer_G")
            assert page.locator(visible).count() == 2  # images 1 (wrong colour) and 3 (star)
            ev = {s: json.loads((run / f"seed-0/eval/{s}.json").read_text())["per_caption"]["CIDEr"] for s in ("Base", "ViZer_GT")}
            page.select_option("#f-filter", "better:ViZer_GT")  # metric: CIDEr
            assert page.locator(visible).count() == sum(g > b + 1e-9 for b, g in zip(ev["Base"], ev["ViZer_GT"])) > 0
            page.select_option("#f-filter", "all")
            page.select_option("#f-seed", "all")
            page.select_option("#f-sort", "high:ViZer_GT")
            ids = page.eval_on_selector_all(visible, "rs => rs.map(r => [r.dataset.seed, r.dataset.id])")
            assert len(ids) == 2 * N
            cider = {(s, i): v for s in SEEDS for i, v in zip(*(json.loads((run / f"seed-{s}/eval/ViZer_GT.json").read_text())["per_caption"][k]
                                                                 for k in ("id", "CIDEr")))}
            shown = [cider[(int(s), i)] for s, i in ids]
            assert shown == sorted(shown, reverse=True)
            page.select_option("#f-sort", "order")
            page.select_option("#f-seed", "0")
            png = page.screenshot()
            assert errors == [] and remote == []
        finally:
            ctx.close()
    import io

    from PIL import Image

    px = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    assert px.shape == (900, 1280) and px.std() > 20  # not blank: header, tables, images
    (tmp_path / "screenshot.png").write_bytes(png)


def test_a_collapsed_system_is_a_marked_row(tmp_path, built):
    """summary.json's `collapsed` (study/summary.py) marks the system's row with the reason; without summary.json the
    report finds the same verdict in the eval files (metrics/evaluate.py collapse_of)."""
    import html
    import re

    root, _ = built
    run = tmp_path / "run"
    shutil.copytree(root, run, ignore=shutil.ignore_patterns("report"))
    why = "75% of captions are empty or non-words (>= 5%)"
    summary = json.loads((run / "summary.json").read_text())
    atomic_write_json(run / "summary.json", {**summary, "collapsed": {"ViZer_G": {"1": why}}})
    assert main(["report", str(run)]) == 0

    def marked(page: str) -> dict:
        table = page.split('<table id="metrics"')[1].split("</table>")[0]
        return {m[0]: html.unescape(m[1]) for m in re.findall(r'<tr data-system="([^"]+)" class="collapsed"><th>[^<]*<span class="warn" title="([^"]*)"', table)}

    assert marked((run / "report/index.html").read_text()) == {"ViZer_G": f"seed 1: {why}"}
    collapsed_budgets = (run / "report/index.html").read_text().split("<table id='style-collapsed'")[1].split("</table>")[0]
    assert "dpo" in collapsed_budgets and "60% of captions are empty or non-words (&gt;= 5%)" in collapsed_budgets  # style sweep.json's list
    (run / "summary.json").unlink()
    ev = json.loads((run / "seed-0/eval/ViZer_GT.json").read_text())
    ev["counts"]["degenerate"] = {"collapsed": "only 1.0% of captions are distinct (< 5%)"}
    atomic_write_json(run / "seed-0/eval/ViZer_GT.json", ev)
    assert main(["report", str(run)]) == 0
    assert marked((run / "report/index.html").read_text()) == {"ViZer_GT": "seed 0: only 1.0% of captions are distinct (< 5%)"}
