"""The run folder of `capalign study`: every path in it, relative to the run folder, in one place. The stages
write where these functions say and `capalign report` (reports/rundir.py) reads from the same functions,
with index.json naming the files that exist (docs/run-layout.md is the contract in words).

    RUN/index.json, recipe.yaml, study.log, summary.json, summary_forest.png, summary_budget.png
    RUN/seed-<s>/data/{mapper,unlabeled,test}/manifest.jsonl      (a test source given by path: RUN/data/test)
    RUN/seed-<s>/base/{nano-clean,nano-web}/                      the Base (nano captioner) unless base.model
    RUN/seed-<s>/mappers/<variant>/, feature-cache/               ViZer mappers and their feature cache
    RUN/seed-<s>/diagnose.json                                    the mappers' reward check (`vizer diagnose`)
    RUN/seed-<s>/vizer/<arm>/ (step-<k>/)                         ViZer adapters (budget snapshots)
    RUN/rl/<system>-seed<s>/                                      RL adapters
    RUN/seed-<s>/captions/<system>.jsonl, eval/<system>.json      captions and scores of every system
    RUN/seed-<s>/features.safetensors                             vision features + mapped captions (PCA)
    RUN/style/sweep.json, style/cells/                            the style sweep
    RUN/report/index.html                                         `capalign report RUN`
"""

from __future__ import annotations

INDEX, RECIPE, LOG, SUMMARY = "index.json", "recipe.yaml", "study.log", "summary.json"
FOREST, BUDGET = "summary_forest.png", "summary_budget.png"
STYLE = "style"
STYLE_SWEEP = f"{STYLE}/sweep.json"
REPORT = "report"
SHARED_TEST = "data/test"  # a test image source given by path is copied here once, for every seed


def seed_dir(seed) -> str:
    return f"seed-{seed}"


def data_dir(seed, split: str) -> str:
    return f"{seed_dir(seed)}/data/{split}"


def test_manifest(seed) -> str:
    return f"{data_dir(seed, 'test')}/manifest.jsonl"


def base_dir(seed, name: str) -> str:
    return f"{seed_dir(seed)}/base/{name}"


def mapper_dir(seed, variant: str) -> str:
    return f"{seed_dir(seed)}/mappers/{variant}"


def feature_cache(seed) -> str:
    return f"{seed_dir(seed)}/feature-cache"


def diagnose(seed) -> str:
    return f"{seed_dir(seed)}/diagnose.json"


def vizer_dir(seed, arm: str) -> str:
    return f"{seed_dir(seed)}/vizer/{arm}"


def rl_dir(seed, system: str) -> str:
    return f"rl/{system}-seed{seed}"


def captions(seed, system: str) -> str:
    return f"{seed_dir(seed)}/captions/{system}.jsonl"


def eval_file(seed, system: str) -> str:
    return f"{seed_dir(seed)}/eval/{system}.json"


def features(seed) -> str:
    return f"{seed_dir(seed)}/features.safetensors"


def headline(systems, budget: dict | None) -> list[str]:
    """The systems of the main table, forest plot and gallery: all but the intermediate points of a ViZer
    budget arm (`budget`: {arm: {"steps": [...], "systems": [...]}}, as in index.json and summary.json), whose
    largest budget stays, in the order given."""
    arms = [b for b in (budget or {}).values() if isinstance(b, dict) and b.get("systems")]
    hidden = {n for b in arms for n in b["systems"][:-1]}
    return [s for s in systems if s not in hidden]
