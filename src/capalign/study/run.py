"""`capalign study RECIPE.yaml`: run a recipe's stages into one run folder, seed by seed.

Per seed, every per-seed stage in order (data, base, mapper, vizer, caption, evaluate, features), then the
study-wide ones (summary). A stage whose outputs all exist is skipped, so an interrupted study resumes
where it stopped (and a longer list of seeds only runs the new ones). index.json, the run folder's table
of contents for `capalign report`, is rewritten after every stage; study.log keeps one line per stage.
A run folder belongs to one recipe: re-running it with changed stage settings is refused (outputs made
with the old settings would be silently reused); new seeds and new stages may be added.

Launch: `capalign study recipes/demo.yaml --out runs/demo` (`--seeds 0,1,2`, `--set vizer.lr=1e-4`, `--dry_run`,
`--until diagnose`: the stages up to that one, e.g. to check the ViZer reward before any ViZer run).
"""

from __future__ import annotations

import datetime
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import CapalignError, __version__
from ..config import arg, show_config
from ..io import atomic_write_json, atomic_write_text
from ..utils import print0
from . import layout
from .recipe import Recipe, load_recipe, parse_seeds
from .stage import Context, Stage


@dataclass
class StudyConfig:
    """Run a study recipe: its stages into one run folder, seed by seed; finished stages are skipped (resume)."""

    recipe: str = arg(help="Recipe YAML (e.g. recipes/demo.yaml; docs/study.md lists the stages and their fields).")
    out: str = arg(None, "Run folder (default: runs/<recipe name>). Re-running the same command resumes.")
    seeds: str = arg(None, "Override the recipe's seeds, e.g. 0,1,2,3,4 (seeds already run are skipped).")
    set: list[str] = arg([], "Override recipe fields: stage.field=value (the value is YAML), e.g. --set vizer.lr=1e-4 mapper.width=128.")
    dry_run: bool = arg(False, "Print the plan (each stage and seed: done or to run) and stop.")
    until: str = arg(None, "Run the stages up to and including this one, for every seed, then stop (e.g. diagnose: the ViZer reward "
                           "check before any ViZer run); the same command without it goes on.")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _versions() -> dict:
    import torch
    import transformers

    return {"capalign": __version__, "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def _changed(old: dict, new: Recipe) -> list[str]:
    """stage.field entries whose value differs between a run folder's recipe and this one (sections in both)."""
    from .stages import STAGES

    out = []
    for name, sec in new.sections.items():
        if name not in old or STAGES[name].always_run:
            continue
        prev = old[name] or {}
        out += [f"{name}.{k}" for k in sorted(set(prev) | set(sec)) if prev.get(k) != sec.get(k)]
    return out


def plan(recipe: Recipe, root: Path) -> tuple[list[tuple[Stage, Context]], dict[int, Context]]:
    """Every (stage, context) to run, in order, with each context filled by the stages' publish()."""
    from .stages import STAGES

    stages = [STAGES[n] for n in recipe.sections]
    seeds = {s: Context(root, recipe, seed=s) for s in recipe.seeds}
    for ctx in seeds.values():
        for st in stages:
            if st.per_seed:
                st.publish(ctx)
    study = Context(root, recipe, seeds=seeds)
    for st in stages:
        if not st.per_seed:
            st.publish(study)
    steps = [(st, ctx) for ctx in seeds.values() for st in stages if st.per_seed] + [(st, study) for st in stages if not st.per_seed]
    return steps, seeds


def write_index(root: Path, recipe: Recipe, steps, seeds: dict[int, Context], status: dict, created: str) -> dict:
    def rel(p: Path | None):
        return p.relative_to(root).as_posix() if p is not None and p.exists() else None

    systems: dict = {}
    for s, c in seeds.items():
        for name in c.captions or c.systems:
            files = {k: rel(v.get(name)) for k, v in (("captions", c.captions), ("eval", c.evals))}
            if any(files.values()):
                systems.setdefault(name, {})[str(s)] = {k: v for k, v in files.items() if v}
    artifacts: dict = {k: p for k, p in (("vizer_sweep", "sweep/results.json"), ("style_sweep", "style/sweep.json"),
                                          ("summary_forest", "summary_forest.png"), ("summary_budget", "summary_budget.png"))
                       if (root / p).exists()}
    rl: dict = {}
    for h in sorted(root.glob("rl/*-seed*/history.json")):
        name, _, s = h.parent.name.rpartition("-seed")
        rl.setdefault(name, {})[s] = h.relative_to(root).as_posix()
    if rl:
        artifacts["rl_history"] = rl
    first = next(iter(seeds.values()))
    index = {
        "name": recipe.name, "created": created, "updated": _now(), "versions": _versions(), "recipe": recipe.to_dict(),
        "seeds": list(seeds), "test": {str(s): rel(c.test_manifest) for s, c in seeds.items() if rel(c.test_manifest)},
        "systems": systems, "baseline": (recipe.sections.get("summary") or {}).get("baseline", "Base"),
        "features": {str(s): rel(c.features) for s, c in seeds.items() if rel(c.features)},
        "summary": layout.SUMMARY if (root / layout.SUMMARY).exists() else None,
        "budget": first.budgets, "artifacts": artifacts,
        "stages": [{"name": st.name, "seed": ctx.seed, **status.get((st.name, ctx.seed), {"status": "missing"}),
                    "outputs": [o.relative_to(root).as_posix() for o in st.outputs(ctx)]} for st, ctx in steps],
    }
    atomic_write_json(root / layout.INDEX, index)
    return index


def run_study(recipe: Recipe, root: Path, dry_run: bool = False, until: str | None = None) -> dict:
    root = Path(root)
    old = root / layout.RECIPE
    if old.exists():
        changed = _changed(yaml.safe_load(old.read_text()) or {}, recipe)
        if changed:
            raise CapalignError(f"{root} holds a study made with other settings ({', '.join(changed)} changed); its finished stages "
                                f"would be reused as they are. Use another --out, or delete {root} to start over")
    steps, seeds = plan(recipe, root)
    if until:
        order = list(recipe.sections)
        if until not in order:
            raise CapalignError(f"--until {until}: not a stage of this recipe; its stages: {', '.join(order)}")
        steps = [(st, ctx) for st, ctx in steps if order.index(st.name) <= order.index(until)]
    if dry_run:
        for st, ctx in steps:
            done = st.outputs(ctx) and all(p.exists() for p in st.outputs(ctx)) and not st.always_run
            print0(f"{'done  ' if done else 'to run'}  {st.name:<9} {'seed ' + str(ctx.seed) if ctx.seed is not None else 'all seeds'}")
        if seeds:
            print0("systems: " + ", ".join(next(iter(seeds.values())).systems))
        return {}
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(old, recipe.dump())
    prev = root / layout.INDEX
    created = json.loads(prev.read_text()).get("created", _now()) if prev.exists() else _now()
    status: dict = {}
    log = open(root / layout.LOG, "a")

    def record(st: Stage, ctx: Context, entry: dict) -> None:
        status[(st.name, ctx.seed)] = entry
        where = f"seed {ctx.seed}" if ctx.seed is not None else "all seeds"
        log.write(f"{_now()} {st.name} {where} {entry['status']}" + (f" {entry['seconds']:.1f}s" if "seconds" in entry else "")
                  + (f" {entry['error']}" if "error" in entry else "") + "\n")
        log.flush()
        write_index(root, recipe, steps, seeds, status, created)

    write_index(root, recipe, steps, seeds, status, created)
    try:
        for st, ctx in steps:
            outs = st.outputs(ctx)
            where = f"seed {ctx.seed}" if ctx.seed is not None else f"seeds {', '.join(map(str, seeds))}"
            if outs and all(p.exists() for p in outs) and not st.always_run:
                print0(f"[dim]study {recipe.name}: {st.name} ({where}) done before, skipped")
                record(st, ctx, {"status": "skipped"})
                continue
            print0(f"[bold]study {recipe.name}: {st.name} ({where})[/bold] -> {root}")
            t0 = time.perf_counter()
            try:
                st.run(ctx)
            except Exception as e:
                record(st, ctx, {"status": "failed", "error": " ".join(str(e).split())[:300] or type(e).__name__,
                                 "seconds": round(time.perf_counter() - t0, 1)})
                raise
            record(st, ctx, {"status": "done", "seconds": round(time.perf_counter() - t0, 1)})
    finally:
        log.close()
    summary = root / layout.SUMMARY
    return json.loads(summary.read_text()) if summary.exists() else {}


def run(cfg: StudyConfig) -> dict:
    show_config(cfg)
    recipe = load_recipe(cfg.recipe, cfg.set)
    if cfg.seeds:
        recipe.seeds = parse_seeds(cfg.seeds, "--seeds")
    out = run_study(recipe, Path(cfg.out or f"runs/{recipe.name}"), cfg.dry_run, cfg.until)
    if not cfg.dry_run:
        print0(f"run folder: {cfg.out or f'runs/{recipe.name}'} (index.json; report: capalign report {cfg.out or f'runs/{recipe.name}'})")
    return out
