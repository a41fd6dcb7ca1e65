"""The multi-seed summary of a study: every system's scores over seeds, and every system minus the Base,
paired on the same test images, with capalign.stats (so terminal, summary.json, docs and report agree).

Per metric, the per-caption data that its corpus value is a statistic of:
- ROUGE_L, CIDEr (and any other per-caption score, e.g. BERTScore_F1, CLIPScore): the corpus value is the
  mean of per-caption scores -> `stats.mean`. (CIDEr-D's document frequencies come from the whole test
  set's references and stay fixed while captions are resampled: the usual approximation.)
- precision / recall / CHAIR_i (name or attr level): pooled ratios, e.g. CHAIR_i = hallucinated mentions /
  mentions over the corpus -> per-caption count pairs and `stats.ratio`; CHAIR_s: the mean of a 0/1 flag.
- BLEU-n: corpus BLEU is not a mean of sentence BLEU, so each caption contributes its n-gram counts
  (coco.bleu_counts: clipped matches, candidate n-grams, lengths) and every bootstrap replicate computes
  the exact corpus BLEU of the resampled captions (coco.corpus_bleu); these counts come from the caption
  files and the references, the rest from the eval files.
- distinct (metrics/degenerate.py): distinct captions over all captions is a statistic of the whole caption set,
  not of resampled captions (a bootstrap draws duplicates), so it has scores over seeds but no paired difference.
A system whose captions metrics/degenerate.py's rule marks collapsed in a seed (`collapse_of` of its eval file,
the verdict `capalign evaluate` warns with) is listed in summary.json's `collapsed`, marked in the table and
named in a terminal warning line.
Within a seed, test images are resampled (the same ones for both systems); over seeds, a two-stage
bootstrap resamples seeds and then images (`stats.paired_bootstrap`).
"""

from __future__ import annotations

import json
import warnings
from functools import partial
from pathlib import Path

import numpy as np

from .. import stats
from ..io import read_jsonl
from ..metrics import registry
from ..metrics.evaluate import collapse_of
from ..utils import print0
from . import layout

METRICS = list(registry.STUDY_METRICS)  # judge and words when evaluated (`--metrics judge,length`): RL's reward and caption length
CORPUS_ONLY = ("distinct",)  # corpus statistics with no per-caption data to pair (see the module docstring)
_COUNTS = {"precision": ("grounded", "mentions"), "recall": ("recalled", "annotated"), "chair_i": ("hallucinated", "mentions"), "chair_s": ("hallucinated", None)}


def item_data(metric: str, ev: dict, captions: dict[str, str], refs: dict[str, dict]):
    """(ids, per-item array [n] or [n, k], statistic) whose statistic over all items is the corpus value."""
    per = ev["per_caption"]
    ids = [str(i) for i in per["id"]]
    if metric.startswith("BLEU") and metric[4:].isdigit():
        from ..metrics.coco import bleu_counts, corpus_bleu

        x = bleu_counts({i: refs[i]["captions"] for i in ids}, {i: [captions[i]] for i in ids})
        return ids, x, partial(corpus_bleu, n=int(metric[4:]))
    kind, _, level = metric.rpartition("_")
    if kind in _COUNTS and level in ("name", "attr"):
        num, den = _COUNTS[kind]
        keep = [(i, row[level]) for i, row in zip(ids, per.get("grounding") or []) if row is not None]
        if den is None:  # CHAIR_s: share of captions with at least one hallucinated mention
            return [i for i, _ in keep], np.array([float(r[num] > 0) for _, r in keep]), stats.mean
        grounded = lambda r: r["mentions"] - r["hallucinated"]  # noqa: E731
        rows = [[grounded(r) if num == "grounded" else r[num], r[den]] for _, r in keep]
        return [i for i, _ in keep], np.array(rows, dtype=float).reshape(-1, 2), stats.ratio
    if metric not in per:
        raise KeyError(f"metric {metric} is not in the eval file's per-caption scores ({', '.join(k for k in per if k != 'id')})")
    keep = [(i, v) for i, v in zip(ids, per[metric]) if v is not None]
    return [i for i, _ in keep], np.array([v for _, v in keep], dtype=float), stats.mean


def _aligned(base, system):
    """Restrict two (ids, array) to the ids both have, in the base's order."""
    (bi, bx), (si, sx) = base, system
    pos = {i: k for k, i in enumerate(si)}
    common = [k for k, i in enumerate(bi) if i in pos]
    return bx[common], sx[[pos[bi[k]] for k in common]]


def summarize(seed_files: dict[int, dict], refs: dict[int, dict], baseline: str = "Base", metrics=None,
              level: float = 0.95, n_boot: int = 2000, seed: int = 0, budgets: dict | None = None) -> dict:
    """seed_files: seed -> system -> {"eval": path, "captions": path}; refs: seed -> id -> reference row."""
    seeds = sorted(seed_files)
    systems = list(dict.fromkeys(n for s in seeds for n in seed_files[s]))
    evals = {s: {n: json.loads(Path(p["eval"]).read_text()) for n, p in seed_files[s].items()} for s in seeds}
    if metrics is None:  # the standard columns the eval files have (no grounding columns without annotated objects)
        metrics = [m for m in METRICS if any(m in e["corpus"] for es in evals.values() for e in es.values())]
    caps = {s: {n: {str(r["id"]): r["caption"] for r in read_jsonl(p["captions"])} for n, p in seed_files[s].items()} for s in seeds}
    out: dict = {"baseline": baseline, "level": level, "seeds": seeds, "metrics": list(metrics), "n_boot": n_boot, "bootstrap_seed": seed,
                 "systems": {}, "paired": {}, "budget": budgets or {}, "collapsed": collapsed_systems(evals),
                 "definitions": {"systems": "corpus value per seed; mean over seeds with a Student-t interval (capalign.stats.mean_ci)",
                                 "paired": "system - baseline on the same test images: per-seed difference with a bootstrap over images; "
                                           "mean over seeds with a two-stage bootstrap (seeds, then images) [lo, hi] and a t interval "
                                           "over per-seed differences [t_lo, t_hi] (capalign.stats.paired_bootstrap)",
                                 "BLEU": "corpus BLEU recomputed per replicate from per-caption n-gram counts (exact corpus statistic)",
                                 "pooled ratios": "precision, recall, CHAIR_i: sum of per-caption counts over sum (stats.ratio)"}}
    for name in systems:
        out["systems"][name] = {}
        for m in metrics:
            vals = [evals[s][name]["corpus"].get(m) for s in seeds if name in evals[s]]
            vals = [v for v in vals if v is not None]
            out["systems"][name][m] = {**stats.mean_ci(vals, level), "values": vals}
    for name in systems:
        if name == baseline:
            continue
        out["paired"][name] = {}
        for m in metrics:
            if m in CORPUS_ONLY:
                continue
            pairs, used, stat = [], [], stats.mean
            for s in seeds:
                if name in evals[s] and baseline in evals[s] and all(m in evals[s][k]["corpus"] for k in (baseline, name)):
                    b = item_data(m, evals[s][baseline], caps[s][baseline], refs[s])
                    x = item_data(m, evals[s][name], caps[s][name], refs[s])
                    stat = b[2]
                    pairs.append(_aligned(b[:2], x[:2]))
                    used.append(s)
            if pairs:
                with warnings.catch_warnings():  # a ratio with no mentions at all is NaN (written as null), not a warning
                    warnings.simplefilter("ignore", RuntimeWarning)
                    out["paired"][name][m] = {**stats.paired_bootstrap(pairs, stat, level, n_boot, seed), "seeds": used}
    return out


def collapsed_systems(evals: dict) -> dict:
    """seed -> system -> eval result  ->  {system: {seed (str): why its captions collapsed}} for the systems that did."""
    out: dict = {}
    for s, es in evals.items():
        for name, ev in es.items():
            if collapse_of(ev):
                out.setdefault(name, {})[str(s)] = collapse_of(ev)
    return out


def clean(obj):
    """NaN/inf -> None, so summary.json is strict JSON."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def headline_systems(summary: dict) -> list[str]:
    """Systems for the main table and forest plot: every system but the intermediate points of a ViZer budget arm."""
    return layout.headline(summary["paired"], summary["budget"])


def _fmt(v, sign=False) -> str:
    return "-" if v is None else f"{v:+.3f}" if sign else f"{v:.3f}"


def _colour(p: dict, metric: str) -> str:
    direction = registry.higher_is_better(metric)
    if p.get("lo") is None or not p.get("excludes_zero") or direction is None:  # e.g. longer captions: neither better nor worse
        return ""
    good = (p["lo"] > 0) == direction
    return "green" if good else "red"


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True, width=160)
    seeds, metrics, level = summary["seeds"], summary["metrics"], summary["level"]
    n = len(seeds)
    t = Table(title=f"Scores on the test images: {'seed ' + str(seeds[0]) if n == 1 else f'mean over {n} seeds (± {level:.0%} t-interval half-width)'}")
    t.add_column("system", no_wrap=True)
    for m in metrics:
        t.add_column(registry.label(m), justify="right")
    for name, row in summary["systems"].items():
        cells = []
        for m in metrics:
            r = row.get(m) or {}
            half = None if r.get("hi") is None or r.get("mean") is None else r["hi"] - r["mean"]
            cells.append(_fmt(r.get("mean")) + (f" ±{half:.3f}" if n > 1 and half is not None else ""))
        bad = name in (summary.get("collapsed") or {})
        t.add_row(name + (" (collapsed)" if bad else ""), *cells, style="red" if bad else None)
    console.print(t)

    heads = headline_systems(summary)
    if heads:
        t = Table(title=f"{' / '.join(heads)} minus {summary['baseline']}, paired on the same images: mean difference "
                        f"[{level:.0%} bootstrap interval over images{' and seeds' if n > 1 else ''}]"
                        + ("; seeds up / down" if n > 1 else "") + " (green/red: the interval excludes 0, better/worse)")
        t.add_column("metric", no_wrap=True)
        for h in heads:
            t.add_column(h, justify="right")
        for m in metrics:
            cells = []
            for h in heads:
                p = summary["paired"][h].get(m) or {}
                txt = f"{_fmt(p.get('mean_diff'), True)} [{_fmt(p.get('lo'), True)}, {_fmt(p.get('hi'), True)}]" + (f" {p['n_up']}↑{p['n_down']}↓" if n > 1 and p else "")
                c = _colour(p, m)
                cells.append(f"[{c}]{txt}[/{c}]" if c else txt)
            t.add_row(registry.label(m), *cells)
        console.print(t)

    for arm, b in summary["budget"].items():
        t = Table(title=f"ViZer budget, {arm} minus {summary['baseline']}: mean difference by training steps (green/red: interval excludes 0)")
        t.add_column("steps", justify="right")
        for m in metrics:
            t.add_column(registry.label(m), justify="right")
        for k, name in zip(b["steps"], b["systems"]):
            cells = []
            for m in metrics:
                p = summary["paired"][name].get(m) or {}
                c = _colour(p, m)
                cells.append(f"[{c}]{_fmt(p.get('mean_diff'), True)}[/{c}]" if c else _fmt(p.get("mean_diff"), True))
            t.add_row(str(k), *cells)
        console.print(t)
    for name, seeds_why in (summary.get("collapsed") or {}).items():  # one line per collapsed system (metrics/degenerate.py's rule)
        for s, why in seeds_why.items():
            print0(f"warning: {name}: captions collapsed (seed {s}): {why}")
