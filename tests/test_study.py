"""`capalign study` on a tiny recipe (a 48-px nano Base trained for a few steps, 8 test images): the run
folder follows docs/run-layout.md, a study run twice gives the same bytes, finished stages are skipped and an
interrupted stage resumes, the summary's numbers are capalign.stats of the per-caption eval files, and a
bad recipe is one error line. `capalign vizer study` is a recipe: its flags map onto recipe fields and its
defaults are recipes/demo.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from capalign import stats
from capalign.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "name": "tiny",
    "seeds": [0],
    "data": {"mapper": 16, "unlabeled": 8, "test": 8, "image_size": 48},
    "base": {"steps": 6, "web_steps": 3, "n_train": 32, "n_val": 4, "eval_batch_size": 4, "batch_size": 8, "image_size": 48,
             "vision_width": 32, "text_width": 32, "vocab_size": 300},
    "mapper": {"variants": ["gt", "g"], "width": 8, "samples": 16, "epochs": 2, "center": True, "max_new_tokens": 6, "feature_batch_size": 16},
    "diagnose": {"group": 4, "device": "cpu"},
    "vizer": {"batch_size": 4, "lr": "1e-2", "lora_r": 2, "lora_alpha": 4, "max_new_tokens": 6, "save_every": 0, "steps": [1, 2]},
    "caption": {"batch_size": 4, "max_new_tokens": 6},
    "evaluate": {"metrics": "bleu,rouge,cider,grounding,degenerate"},
    "features": {},
    "summary": {"n_boot": 200},
}
SYSTEMS = ["Base", "ViZer_GT@1", "ViZer_GT@2", "ViZer_G@1", "ViZer_G@2"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("study")
    (w / "tiny.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    return w


def study(work: Path, out: str, *extra) -> int:
    return main(["study", str(work / "tiny.yaml"), "--out", str(work / out), *map(str, extra)])


@pytest.fixture(scope="module")
def run_a(work) -> Path:
    assert study(work, "a") == 0
    return work / "a"


@pytest.fixture(scope="module")
def run_b(work, run_a) -> Path:
    """The same study in a fresh process (its own hash seed, imports and RNG state), on one thread like run_a."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    env.pop("PYTHONHASHSEED", None)
    r = subprocess.run([sys.executable, "-m", "capalign", "study", str(work / "tiny.yaml"), "--out", str(work / "b")],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return work / "b"


def files(root: Path) -> dict[str, bytes]:
    """Every result file of a run folder (not logs, configs with paths, or TensorBoard events)."""
    keep = ("captions/", "eval/", "features.", "summary.json", "data/test/manifest.jsonl", "adapter_model.safetensors", "model.safetensors")
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and any(k in p.relative_to(root).as_posix() for k in keep)}


def test_run_folder_follows_the_contract(run_a):
    idx = json.loads((run_a / "index.json").read_text())
    assert idx["name"] == "tiny" and idx["seeds"] == [0] and idx["baseline"] == "Base"
    assert set(idx["versions"]) >= {"capalign", "torch", "transformers", "python"}
    assert idx["test"] == {"0": "seed-0/data/test/manifest.jsonl"} and (run_a / idx["test"]["0"]).is_file()
    assert list(idx["systems"]) == SYSTEMS
    for name in SYSTEMS:
        entry = idx["systems"][name]["0"]
        assert entry == {"captions": f"seed-0/captions/{name}.jsonl", "eval": f"seed-0/eval/{name}.json"}
        caps = [json.loads(line) for line in (run_a / entry["captions"]).read_text().splitlines()]
        assert [c["id"] for c in caps] == [f"test-{i:06d}" for i in range(8)]
        ev = json.loads((run_a / entry["eval"]).read_text())
        assert ev["per_caption"]["id"] == [c["id"] for c in caps] and "CIDEr" in ev["corpus"] and len(ev["per_caption"]["grounding"]) == 8
    assert [(s["name"], s["seed"], s["status"]) for s in idx["stages"]] == [
        (n, 0, "done") for n in ("data", "base", "mapper", "diagnose", "vizer", "caption", "evaluate", "features")] + [("summary", None, "done")]
    assert all((run_a / o).exists() for s in idx["stages"] for o in s["outputs"])
    assert idx["budget"] == {"ViZer_GT": {"variant": "gt", "sampled": False, "steps": [1, 2], "systems": ["ViZer_GT@1", "ViZer_GT@2"]},
                             "ViZer_G": {"variant": "g", "sampled": False, "steps": [1, 2], "systems": ["ViZer_G@1", "ViZer_G@2"]}}
    assert idx["artifacts"] == {"summary_forest": "summary_forest.png", "summary_budget": "summary_budget.png"}
    assert (run_a / "summary_forest.png").read_bytes()[:4] == b"\x89PNG"
    # the resolved recipe is saved and runs as it is
    assert yaml.safe_load((run_a / "recipe.yaml").read_text()) == idx["recipe"]
    assert idx["recipe"]["vizer"]["steps"] == [1, 2] and idx["recipe"]["seeds"] == [0]

    # the reward check of both mappers on the seed's (shapes-world) test images, before ViZer
    diag = json.loads((run_a / "seed-0" / "diagnose.json").read_text())
    assert (diag["mode"], diag["images"], diag["group"]) == ("shapes", 8, 4)
    assert [Path(m).relative_to(run_a).as_posix() for m in diag["mappers"]] == ["seed-0/mappers/gt", "seed-0/mappers/g"]

    # features for the PCA figure: test images and every system's mapped captions, in the GT mapper's space
    from safetensors.torch import load_file

    assert idx["features"] == {"0": "seed-0/features.safetensors"}
    t = load_file(str(run_a / "seed-0" / "features.safetensors"))
    meta = json.loads((run_a / "seed-0" / "features.json").read_text())
    assert meta["ids"] == [f"test-{i:06d}" for i in range(8)] and meta["mapper"] == "seed-0/mappers/gt" and meta["center"] is True
    assert set(t) == {"image", "reference", *(f"mapped/{n}" for n in SYSTEMS)}
    assert all(v.shape == (8, 32) for v in t.values())  # [N, D_v]: the nano's vision width
    assert not np.allclose(t["mapped/Base"].numpy(), t["reference"].numpy())


def test_the_report_reads_a_real_run_folder(run_a, tmp_path):
    """The real writer (capalign study) and the real reader (capalign report) together: nothing missing."""
    import shutil

    run = shutil.copytree(run_a, tmp_path / "run")  # run_a's bytes are compared by other tests
    assert main(["report", str(run)]) == 0
    html = (run / "report/index.html").read_text()
    assert "What is missing" not in html and all(name in html for name in SYSTEMS)


def test_summary_is_stats_of_the_eval_files(run_a):
    """summary.json's numbers, recomputed by hand from the per-caption eval files with capalign.stats."""
    from capalign.metrics.coco import bleu_counts, corpus_bleu
    from capalign.metrics.evaluate import collapse_of

    s = json.loads((run_a / "summary.json").read_text())
    assert s["seeds"] == [0] and s["baseline"] == "Base" and set(s["paired"]) == set(SYSTEMS[1:])
    refs = {json.loads(l)["id"]: json.loads(l) for l in (run_a / "seed-0/data/test/manifest.jsonl").read_text().splitlines()}
    ev = {n: json.loads((run_a / f"seed-0/eval/{n}.json").read_text()) for n in SYSTEMS}
    caps = {n: {json.loads(l)["id"]: json.loads(l)["caption"] for l in (run_a / f"seed-0/captions/{n}.jsonl").read_text().splitlines()}
            for n in SYSTEMS}
    for n in SYSTEMS:
        for m in s["metrics"]:
            assert s["systems"][n][m]["values"] == [ev[n]["corpus"][m]]
    # the degeneracy columns, and the collapsed systems: evaluate's verdict on each eval file (metrics/evaluate.py collapse_of)
    assert {"nonword", "distinct"} <= set(s["metrics"])
    assert s["collapsed"] == {n: {"0": collapse_of(ev[n])} for n in SYSTEMS if collapse_of(ev[n])}
    ids = ev["Base"]["per_caption"]["id"]
    for n in SYSTEMS[1:]:
        for m, (x, stat) in {
            "CIDEr": (lambda e: np.array(e["per_caption"]["CIDEr"]), stats.mean),
            "recall_name": (lambda e: np.array([[g["name"]["recalled"], g["name"]["annotated"]] for g in e["per_caption"]["grounding"]], float), stats.ratio),
            "chair_s_attr": (lambda e: np.array([float(g["attr"]["hallucinated"] > 0) for g in e["per_caption"]["grounding"]]), stats.mean),
        }.items():
            want = stats.paired_bootstrap([(x(ev["Base"]), x(ev[n]))], stat, 0.95, 200, 0)
            got = s["paired"][n][m]
            assert (got["mean_diff"], got["lo"], got["hi"], got["n_up"], got["n_down"]) == (want["mean_diff"], want["lo"], want["hi"], want["n_up"], want["n_down"])
        cnt = lambda name: bleu_counts({i: refs[i]["captions"] for i in ids}, {i: [caps[name][i]] for i in ids})  # noqa: E731
        want = stats.paired_bootstrap([(cnt("Base"), cnt(n))], corpus_bleu, 0.95, 200, 0)
        assert s["paired"][n]["BLEU4"]["mean_diff"] == want["mean_diff"]
        assert s["paired"][n]["BLEU4"]["per_seed"][0]["base"] == pytest.approx(ev["Base"]["corpus"]["BLEU4"], abs=1e-12)


def test_study_twice_gives_the_same_bytes(run_a, run_b):
    a, b = files(run_a), files(run_b)
    assert a.keys() == b.keys() and len(a) > 20
    assert [k for k in a if a[k] != b[k]] == []


def test_finished_stages_are_skipped_and_an_interrupted_stage_resumes(work, run_a, monkeypatch):
    import shutil

    import capalign.models as cm
    from capalign.models.base import VLM

    before = files(run_a)
    # 1. everything exists: every per-seed stage is skipped and no model is even loaded
    with monkeypatch.context() as mp:
        mp.setattr(cm, "load_vlm", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a finished study loaded a model")))
        assert study(work, "a") == 0
    idx = json.loads((run_a / "index.json").read_text())
    assert {s["name"]: s["status"] for s in idx["stages"]} == {**{n: "skipped" for n in ("data", "base", "mapper", "diagnose", "vizer", "caption", "evaluate", "features")},
                                                                "summary": "done"}
    # 2. a copy loses one system's captions and evals; captioning it is killed after its first batch
    c = work / "c"
    shutil.copytree(run_a, c)
    for p in ("seed-0/captions/ViZer_G@2.jsonl", "seed-0/eval/ViZer_G@2.json", "seed-0/features.safetensors"):
        (c / p).unlink()
    real, calls = VLM.generate, {"n": 0}

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return real(self, *a, **k)

    with monkeypatch.context() as mp:
        mp.setattr(VLM, "generate", dying)
        with pytest.raises(RuntimeError, match="killed"):
            study(work, "c")
    idx = json.loads((c / "index.json").read_text())
    st = {s["name"]: s for s in idx["stages"]}
    assert st["caption"]["status"] == "failed" and st["caption"]["error"] == "killed" and st["evaluate"]["status"] == "missing"
    assert "ViZer_G@2" not in [n for n, v in idx["systems"].items() if "0" in v and "captions" in v["0"]]
    assert len((c / "seed-0/captions/ViZer_G@2.jsonl.part").read_text().splitlines()) == 4  # the first batch was kept
    calls["n"] = 0
    with monkeypatch.context() as mp:
        mp.setattr(VLM, "generate", lambda self, *a, **k: calls.__setitem__("n", calls["n"] + 1) or real(self, *a, **k))
        assert study(work, "c") == 0
    assert calls["n"] == 1  # only the second batch of the one missing system
    assert files(c) == before


def test_until_stops_after_a_stage(work, run_a, capsys):
    """--until diagnose: the stages up to the reward check, then stop; the same command without it goes on."""
    import shutil

    u = work / "u"
    shutil.copytree(run_a, u)
    for p in ("seed-0/diagnose.json", "seed-0/vizer/gt/vizer_result.json"):
        (u / p).unlink()
    capsys.readouterr()
    assert study(work, "u", "--until", "diagnose", "--dry_run") == 0
    cap = capsys.readouterr()
    plan = [(w[0], w[-3]) for w in (line.split() for line in (cap.out + cap.err).splitlines() if line.startswith(("done", "to run")))]
    assert plan == [("done", "data"), ("done", "base"), ("done", "mapper"), ("to", "diagnose")]
    assert study(work, "u", "--until", "diagnose") == 0
    assert (u / "seed-0/diagnose.json").is_file() and not (u / "seed-0/vizer/gt/vizer_result.json").exists()
    idx = json.loads((u / "index.json").read_text())
    assert [(s["name"], s["status"]) for s in idx["stages"]] == [("data", "skipped"), ("base", "skipped"), ("mapper", "skipped"), ("diagnose", "done")]
    assert study(work, "u", "--until", "bogus") == 2
    assert "--until bogus: not a stage of this recipe" in capsys.readouterr().err


def write_run(root: Path, seeds: dict[int, dict[str, list[str]]], metrics=("bleu", "rouge", "cider", "grounding")) -> dict:
    """A hand-made run folder: per seed, a 4-image shapes-world test split and given captions per system."""
    from capalign.data.shapes import write_dataset
    from capalign.io import atomic_write_json, read_references
    from capalign.metrics.evaluate import evaluate_system

    out = {}
    for s, systems in seeds.items():
        d = write_dataset(root / f"seed-{s}/data/test", 4, seed=s, split="test")
        refs = read_references(str(d / "manifest.jsonl"))
        out[s] = {}
        for name, caps in systems.items():
            preds = [{"id": i, "caption": c} for i, c in zip(refs, caps)]
            (root / f"seed-{s}/captions").mkdir(parents=True, exist_ok=True)
            (root / f"seed-{s}/captions/{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
            atomic_write_json(root / f"seed-{s}/eval/{name}.json", evaluate_system(preds, refs, list(metrics)))
            out[s][name] = {"eval": root / f"seed-{s}/eval/{name}.json", "captions": root / f"seed-{s}/captions/{name}.jsonl"}
    return out


def test_multi_seed_summary_pools_counts_over_captions(tmp_path):
    """Two seeds of hand-made captions: pooled ratios use the count columns, the interval covers seeds and images."""
    from capalign.io import read_references
    from capalign.study.summary import summarize

    base = ["a red circle", "a shape", "two squares", "a blue star and a green star"]
    better = ["a large red circle and a small blue square", "a yellow triangle", "a green square on the left", "a blue star"]
    f = write_run(tmp_path, {0: {"Base": base, "ViZer": better}, 1: {"Base": base[::-1], "ViZer": better[::-1]}})
    refs = {s: read_references(str(tmp_path / f"seed-{s}/data/test/manifest.jsonl")) for s in (0, 1)}
    s = summarize(f, refs, n_boot=500)
    ev = {k: {n: json.loads(Path(p["eval"]).read_text()) for n, p in v.items()} for k, v in f.items()}
    for m, (lvl, num, den) in {"chair_i_name": ("name", "hallucinated", "mentions"), "recall_attr": ("attr", "recalled", "annotated")}.items():
        x = lambda e: np.array([[g[lvl][num], g[lvl][den]] for g in e["per_caption"]["grounding"]], float)  # noqa: E731
        want = stats.paired_bootstrap([(x(ev[k]["Base"]), x(ev[k]["ViZer"])) for k in (0, 1)], stats.ratio, 0.95, 500, 0)
        got = s["paired"]["ViZer"][m]
        assert {k: got[k] for k in want} == want and got["seeds"] == [0, 1]
        for k in (0, 1):  # per seed, the pooled ratio is the eval file's corpus value
            assert got["per_seed"][k]["system"] == pytest.approx(ev[k]["ViZer"]["corpus"][m], abs=1e-12)
        assert s["systems"]["ViZer"][m]["values"] == [ev[k]["ViZer"]["corpus"][m] for k in (0, 1)]
        assert s["systems"]["ViZer"][m]["mean"] == pytest.approx(stats.mean_ci(s["systems"]["ViZer"][m]["values"])["mean"])
    assert s["paired"]["ViZer"]["recall_name"]["mean_diff"] > 0 and s["paired"]["ViZer"]["recall_name"]["n_up"] == 2


def test_summary_marks_and_warns_a_collapsed_system(tmp_path, capsys):
    """Eval files with the degenerate metric: the summary has its nonword and distinct columns (distinct has no paired
    difference: a corpus statistic), lists the system whose captions collapsed in a seed with metrics/degenerate.py's
    reason, and the terminal marks its row and names it in a warning line; a healthy system is never named."""
    from capalign.io import read_references
    from capalign.study.summary import print_summary, summarize

    base = ["a red circle", "a shape", "two squares", "a blue star and a green star"]
    junk = ["abssstled", "aplaa", "a red circle", "qqq zzz"]  # 3 of 4 non-words
    f = write_run(tmp_path, {0: {"Base": base, "RL": junk}, 1: {"Base": base[::-1], "RL": base}}, ("cider", "degenerate"))
    refs = {s: read_references(str(tmp_path / f"seed-{s}/data/test/manifest.jsonl")) for s in (0, 1)}
    s = summarize(f, refs, n_boot=200)
    assert {"CIDEr", "nonword", "distinct"} <= set(s["metrics"])
    assert s["systems"]["RL"]["nonword"]["values"] == [0.75, 0.0] and s["systems"]["Base"]["distinct"]["values"] == [1.0, 1.0]
    assert s["paired"]["RL"]["nonword"]["per_seed"][0]["system"] == 0.75 and "distinct" not in s["paired"]["RL"]
    assert s["collapsed"] == {"RL": {"0": "75% of captions are empty or non-words (>= 5%)"}}
    capsys.readouterr()
    print_summary(s)
    err = " ".join(capsys.readouterr().err.split())
    assert "RL (collapsed)" in err and "Base (collapsed)" not in err
    assert err.count("warning:") == 1 and "warning: RL: captions collapsed (seed 0): 75% of captions are empty or non-words" in err


@pytest.mark.parametrize("change, message", [
    ({"dpo": {"lr": 1}}, "unknown stage 'dpo'"),
    ({"vizer": {"learning_rate": 1}}, "unknown field vizer.learning_rate"),
    ({"mapper": {"out": "x"}}, "field mapper.out is set by the study"),
    ({"vizer": {"lr": "fast"}}, "invalid vizer settings"),
    ({"mapper": {"variants": ["gt", "h"]}}, "variants must be a non-empty subset"),
    ({"base": {"model": "HuggingFaceTB/SmolVLM-Base", "steps": 5}}, "training fields"),
    ({"vizer": {"steps": [1, 2], "max_steps": 3}}, "drop vizer.max_steps"),
    ({"caption": None, "evaluate": None, "features": None, "summary": None, "data": None}, "needs stage(s) data"),
    ({"seeds": [0, 0]}, "seeds must be distinct"),
    ({"diagnose": {"mappers": ["x"]}}, "field diagnose.mappers is set by the study"),
    ({"diagnose": {"corruptions": "words"}}, "invalid diagnose settings: corruptions must be auto, shapes or text"),
    ({"data": {"mapper": 16, "unlabeled": 8}, "caption": None, "evaluate": None, "features": None, "summary": None},
     "stage diagnose needs data.test"),
])
def test_bad_recipe_is_one_error_line(tmp_path, capsys, change, message):
    recipe = {k: v for k, v in {**TINY, **change}.items() if v is not None or k == "seeds"}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    capsys.readouterr()
    assert main(["study", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")]) == 2
    out = capsys.readouterr().err
    err = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and message in err[0] and "Traceback" not in out, out
    assert not (tmp_path / "out").exists()


def test_changed_recipe_is_refused_for_an_existing_run(work, run_a, capsys):
    capsys.readouterr()
    assert study(work, "a", "--set", "vizer.lr=0.5") == 2
    assert "vizer.lr changed" in capsys.readouterr().err


def test_every_recipe_parses_and_demo_is_vizer_study_defaults():
    from capalign.study.recipe import load_recipe
    from capalign.study.stages import STAGES
    from capalign.study.vizer import VizerStudyConfig, recipe_from_flags

    recipes = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
    assert {p.name for p in recipes} >= {"demo.yaml", "smolvlm-base-vizer.yaml", "qwen2-vl-2b-vizer.yaml", "smolvlm-base-rl.yaml", "shapes-style.yaml"}
    for p in recipes:
        r = load_recipe(p)  # unknown stages / fields are errors here
        for stage, section in r.sections.items():
            assert set(section) <= set(STAGES[stage].fields()), (p.name, stage)
    assert load_recipe(recipes[0].parent / "demo.yaml").to_dict() == recipe_from_flags(VizerStudyConfig(out="runs/demo")).to_dict()


def test_vizer_study_flags_map_onto_a_recipe():
    from capalign.config import parse_config
    from capalign.study.vizer import VizerStudyConfig, recipe_from_flags

    cfg = parse_config(VizerStudyConfig, ["--out", "runs/x", "--seeds", "0,1,2,3,4", "--vizer_steps", "25,50,100", "--vizer_sampling",
                                          "greedy,sampled", "--nano_steps", "123", "--variants", "g", "--center", "false"])
    r = recipe_from_flags(cfg).to_dict()
    assert r["seeds"] == [0, 1, 2, 3, 4] and r["base"]["steps"] == 123 and r["mapper"]["variants"] == ["g"] and r["mapper"]["center"] is False
    assert r["vizer"]["steps"] == [25, 50, 100] and r["vizer"]["sampling"] == ["greedy", "sampled"] and "do_sample" not in r["vizer"]
    assert r["features"] == {"variant": "g"}
    r = recipe_from_flags(parse_config(VizerStudyConfig, ["--base_from", "runs/demo"])).to_dict()
    assert r["base"] == {"model": "runs/demo/seed-{seed}/base/nano-web"}


class Stop(Exception):
    pass


def record_base_runs(monkeypatch) -> list:
    """`nano train` replaced: each config it is called with is recorded, and the second call stops the study (Stop)."""
    from capalign.nano import train as nano

    seen = []

    def fake_run(cfg):
        seen.append(cfg)
        if len(seen) == 2:
            raise Stop

    monkeypatch.setattr(nano, "run", fake_run)
    return seen


def test_vizer_study_base_trains_for_fixed_steps(tmp_path, monkeypatch):
    """The Base: clean pre-training for --nano_steps, then web fine-tuning from the clean weights (never a clock)."""
    from capalign.nano import train as nano

    seen = record_base_runs(monkeypatch)
    with pytest.raises(Stop):
        main(["vizer", "study", "--out", str(tmp_path / "s"), "--nano_steps", "123", "--web_steps", "45", "--n_mapper", "4",
              "--n_unlabeled", "4", "--n_test", "4"])
    clean, web = seen
    assert (clean.mode, clean.steps, clean.init_from, clean.seed) == ("clean", 123, None, 0)
    assert (web.mode, web.steps, web.lr, web.init_from, web.seed) == ("web", 45, 1e-3, str(tmp_path / "s/seed-0/base/nano-clean"), 1)
    seen.clear()
    monkeypatch.setattr(nano, "run", lambda cfg: seen.append(cfg) or (_ for _ in ()).throw(Stop()))
    with pytest.raises(Stop):
        main(["vizer", "study", "--out", str(tmp_path / "t"), "--web_from_scratch", "true", "--nano_steps", "77", "--n_mapper", "4",
              "--n_unlabeled", "4", "--n_test", "4"])
    assert [(c.mode, c.steps, c.init_from) for c in seen] == [("web", 77, None)]


def test_a_test_source_is_copied_into_the_run_folder(tmp_path, capsys):
    """data.test as an image source: its images (original bytes) and references land in RUN/data/test;
    unreadable images are skipped and counted."""
    from capalign.data.shapes import write_dataset
    from capalign.study.recipe import from_dict
    from capalign.study.run import plan

    src = write_dataset(tmp_path / "src", 5, seed=3, split="test")
    (src / "images" / "test-000002.png").write_bytes(b"not a png")
    recipe = from_dict({"seeds": [0, 1], "data": {"test": str(src), "test_limit": 4}}, "r")
    steps, seeds = plan(recipe, tmp_path / "run")
    assert seeds[0].test_manifest == seeds[1].test_manifest == tmp_path / "run/data/test/manifest.jsonl"  # shared by the seeds
    steps[0][0].run(steps[0][1])
    rows = [json.loads(l) for l in (tmp_path / "run/data/test/manifest.jsonl").read_text().splitlines()]
    orig = {json.loads(l)["id"]: json.loads(l) for l in (src / "manifest.jsonl").read_text().splitlines()}
    assert [r["id"] for r in rows] == ["test-000000", "test-000001", "test-000003"]
    for r in rows:
        assert r["captions"] == orig[r["id"]]["captions"] and r["objects"] == orig[r["id"]]["objects"]
        assert (tmp_path / "run/data/test" / r["image"]).read_bytes() == (src / orig[r["id"]]["image"]).read_bytes()
    assert "(1 skipped: unreadable" in " ".join(capsys.readouterr().err.split())


def test_a_karpathy_test_split_is_copied_into_the_run_folder(tmp_path):
    """The real recipes' data.test: Karpathy's dataset_coco.json (as distributed, tests/replicas.py) with
    data.test_split: test -> RUN/data/test holds that split's images (original bytes), COCO ids and captions."""
    import replicas

    from capalign.study.recipe import from_dict
    from capalign.study.run import plan

    path = replicas.karpathy_coco(tmp_path / "coco")
    recipe = from_dict({"seeds": [0], "data": {"test": str(path), "test_split": "test"}}, "r")
    steps, seeds = plan(recipe, tmp_path / "run")
    steps[0][0].run(steps[0][1])
    rows = [json.loads(l) for l in (tmp_path / "run/data/test/manifest.jsonl").read_text().splitlines()]
    test = [i for i, s in replicas.KARPATHY_SPLITS.items() if s == "test"]
    assert [r["id"] for r in rows] == [str(i) for i in test]
    for r, i in zip(rows, test):
        assert r["captions"] == replicas.captions(i)
        assert (tmp_path / "run/data/test" / r["image"]).read_bytes() == (tmp_path / "coco/val2014" / f"COCO_val2014_{i:012d}.jpg").read_bytes()


def test_base_vision_from_applies_to_the_clean_run_only(tmp_path, monkeypatch):
    """base.vision_from: the clean pre-training starts its tower from the `nano vision` folder; the web fine-tune
    starts from the clean model (re-applying the tower there would undo the clean run's training of it)."""
    seen = record_base_runs(monkeypatch)
    (tmp_path / "r.yaml").write_text("seeds: [0]\ndata: {mapper: 4, unlabeled: 4, test: 4}\n"
                                     f"base: {{vision_from: {tmp_path / 'nv'}, freeze_vision: true}}\n")
    with pytest.raises(Stop):
        main(["study", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "s")])
    clean, web = seen
    assert (clean.mode, clean.vision_from, clean.freeze_vision) == ("clean", str(tmp_path / "nv"), True)
    assert (web.mode, web.vision_from, web.freeze_vision, web.init_from) == ("web", None, True, str(tmp_path / "s/seed-0/base/nano-clean"))
