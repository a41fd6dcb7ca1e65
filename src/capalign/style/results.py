"""The style sweep's results: cells -> sweep.json, cells.csv, one plot per measure (capalign.plotting, the
figure the report shows), a terminal table.

Curves: mean over seeds with a 95% Student-t interval (capalign.stats.mean_ci) per method, style, budget.
Saturation (capalign.stats.saturation_budget): the smallest budget whose seed-mean reaches 95% of the way
from the zero-shot level to the plateau (the mean at the largest budget); interval by resampling seeds.
When the plateau is not above the zero-shot level there is nothing to saturate, and the entry says so.
Collapse guard: a budget is collapsed when its seed-mean content recall is below collapse_share x the factual
Base's, or when metrics/degenerate.py's rule (`collapse_reason`, the one `capalign evaluate --metrics degenerate`
warns with) marks its captions collapsed on the seed-mean degeneracy shares the cells measured (cells of an older
capalign have none: only recall guards them). Collapsed budgets are listed in sweep.json's `collapsed`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..config import config_dict
from ..io import atomic_write_json, atomic_write_text
from ..metrics import registry
from ..metrics.degenerate import collapse_reason
from ..utils import print0

# the sweep's measures (labels and directions: capalign.metrics.registry), in plot and table order
MEASURES = ("style_acc", "wr_logp", "wr_logp_sum", "recall_attr", "chair_i_attr", "styled_faithful", "distinct_frames")
SATURATION = ("style_acc", "wr_logp", "wr_logp_sum", "styled_faithful")  # measures whose saturation budget is reported
CONTENT = "recall_attr"  # the collapse guard's content measure
DEGENERATE = ("empty", "nonword", "distinct")  # the degeneracy shares collapse_reason reads (cells store them as degenerate_<k>)


def _load_cells(out: Path, cells: list[dict]) -> tuple[dict, list[str]]:
    done, missing = {}, []
    for c in cells:
        f = out / "cells" / c["name"] / "result.json"
        if f.exists():
            done[c["name"]] = r = json.loads(f.read_text())
            m = r.get("measures", {})
            caps = out / "cells" / c["name"] / "captions.jsonl"
            if "distinct_frames" not in m and m.get("recall_attr") is not None and caps.exists():  # cells of an older capalign: from their captions
                from ..metrics.style import distinct_frames

                m["distinct_frames"] = distinct_frames([json.loads(x)["caption"] for x in caps.read_text().splitlines() if x.strip()])
        else:
            missing.append(c["name"])
    return done, missing


def aggregate(cfg, clf_path: str, wall_seconds: float | None = None) -> dict:
    from ..plotting import sweep_figure
    from ..stats import mean_ci

    out = Path(cfg.out)
    cells = cfg.cells()
    done, missing = _load_cells(out, cells)
    zero = {s: done.get(f"zero-shot/{s}", {}).get("measures", {}) for s in cfg.style_list}
    base = done.get("base", {}).get("measures", {})
    grids: dict = {}  # (measure, style, method) -> [seeds, budgets] values (None: cell missing)
    curves: dict = {}
    for meas in MEASURES:
        curves[meas] = {}
        for s in cfg.style_list:
            curves[meas][s] = {}
            for m in cfg.method_list:
                grid = grids[meas, s, m] = [[done.get(f"{m}/{s}/b{b.rstrip('%')}-s{seed}", {}).get("measures", {}).get(meas)
                                             for b in cfg.budget_list] for seed in range(cfg.seeds)]
                curves[meas][s][m] = [{"budget": b, "share": sh, **mean_ci([g[j] for g in grid])}
                                      for j, (b, sh) in enumerate(zip(cfg.budget_list, cfg.shares))]
    saturation: list[dict] = []  # flat rows (the report shows them as a table)
    why = {(s, m): collapsed(cfg, curves[CONTENT][s][m], base.get(CONTENT), degenerate_collapse(cfg, done, s, m))
           for s in cfg.style_list for m in cfg.method_list}
    for meas in SATURATION:
        for s in cfg.style_list:
            for m in cfg.method_list:
                if zero[s].get(meas) is not None:
                    row = _saturation_row(cfg, meas, s, m, grids[meas, s, m], zero[s][meas], [bool(w) for w in why[s, m]])
                    if row:
                        saturation.append(row)
    clf_cfg = json.loads((Path(clf_path) / "config.json").read_text()) if (Path(clf_path) / "config.json").exists() else {}
    summary = {
        "config": config_dict(cfg), "complete": not missing, "missing": missing,
        "methods": cfg.method_list, "styles": cfg.style_list, "budgets": cfg.budget_list, "shares": cfg.shares, "seeds": list(range(cfg.seeds)),
        "measures": {k: {"label": registry.get(k).description, "higher_is_better": registry.higher_is_better(k)} for k in MEASURES},
        "rows": [{"method": r["method"], "style": r["style"], "budget": 100 * r["share"], "seed": r["seed"], **r.get("measures", {})}
                 for r in done.values() if r["method"] not in ("base", "zero-shot")],  # one per trained cell; budget in % of the training split
        "zero_shot": zero, "base": base, "curves": curves, "saturation": saturation,
        "saturation_definition": "budget (% of the training split): the smallest budget whose mean over seeds reaches 95% of the way from the "
                                 "zero-shot level to the plateau (the mean at the largest budget); lo, hi: 2.5-97.5 percentiles over bootstrap "
                                 "resamples of the seeds. Collapse guard: a budget whose mean recall_attr (objects named with the right colour) "
                                 f"is below {cfg.collapse_share:g} x the factual Base's, or whose seed-mean degeneracy shares the degenerate "
                                 "metric's rule marks collapsed (metrics/degenerate.py), is collapsed (listed in `collapsed`); collapsed budgets "
                                 "are never a saturation budget, and a collapsed plateau gives none",
        "collapsed": [{"style": s, "method": m, "budget": b, "reason": w} for (s, m), ws in why.items() for b, w in zip(cfg.budget_list, ws) if w],
        "classifier": {"path": clf_path, "labels": clf_cfg.get("labels"), "heldout": clf_cfg.get("heldout") or clf_cfg.get("capalign_heldout")},
        "plots": {meas: f"plot-{meas}.png" for meas in MEASURES}, "paths_relative_to": "this file's folder",
        "cells": [done[c["name"]] for c in cells if c["name"] in done],
        "wall_seconds": wall_seconds, "cell_seconds": sum(r.get("seconds", 0) for r in done.values()),
    }
    atomic_write_json(out / "sweep.json", summary)
    _write_csv(out / "cells.csv", summary["cells"])
    for meas in MEASURES:
        sweep_figure(summary, meas, out / f"plot-{meas}.png")  # the same figure as the report's style section
    print_table(summary)
    for c in summary["collapsed"]:  # one line per collapsed budget, after the tables
        print0(f"warning: {c['method']}/{c['style']} at {c['budget']}: captions collapsed: {c['reason']}")
    print0(f"wrote {out / 'sweep.json'}, cells.csv and {len(MEASURES)} plots" + (f"; {len(missing)} cell(s) missing" if missing else ""))
    return summary


def collapsed(cfg, content_curve: list[dict], base_content, degenerate: list[str | None] | None = None) -> list[str | None]:
    """Per budget, why it collapsed (None: it did not): the seed-mean content recall (a curve point's mean) is below
    collapse_share x the factual Base's, and/or `degenerate`'s reason (degenerate_collapse) for that budget."""
    out = []
    for j, p in enumerate(content_curve):
        why = []
        if p["mean"] is not None and base_content is not None and p["mean"] < cfg.collapse_share * base_content:
            why.append(f"content recall {p['mean']:.2f} < {cfg.collapse_share:g} x the Base's {base_content:.2f}")
        if degenerate and degenerate[j]:
            why.append(degenerate[j])
        out.append("; ".join(why) or None)
    return out


def degenerate_collapse(cfg, done: dict, style: str, method: str) -> list[str | None]:
    """Per budget: metrics/degenerate.py's collapse_reason of the degeneracy shares averaged over the seeds' cells
    (None: not collapsed, or no cell measured them)."""
    out = []
    for b in cfg.budget_list:
        ms = [done.get(f"{method}/{style}/b{b.rstrip('%')}-s{seed}", {}).get("measures", {}) for seed in range(cfg.seeds)]
        ms = [x for x in ms if all(x.get(f"degenerate_{k}") is not None for k in DEGENERATE)]
        out.append(collapse_reason({k: sum(x[f"degenerate_{k}"] for x in ms) / len(ms) for k in DEGENERATE}) if ms else None)
    return out


def _saturation_row(cfg, meas: str, style: str, method: str, grid: list, zero: float, bad: list[bool]) -> dict | None:
    """One saturation entry: over the budgets that did not collapse, unless the plateau (largest budget) did."""
    from ..stats import saturation_budget

    full = [g for g in grid if all(v is not None for v in g)]  # seeds with every budget measured
    if not full:
        return None
    row = {"measure": meas, "style": style, "method": method, "budget": None, "lo": None, "hi": None, "zero_shot": zero,
           "plateau": sum(g[-1] for g in full) / len(full), "gain_over_zero_shot": None, "n_seeds": len(full),
           "collapsed": ",".join(b for b, x in zip(cfg.budget_list, bad) if x), "note": ""}
    if bad[-1]:
        row["note"] = "captions collapsed at the largest budget (content or degeneracy): no saturation budget"
        return row
    keep = [j for j, x in enumerate(bad) if not x]
    sat = saturation_budget([cfg.shares[j] for j in keep], [[g[j] for j in keep] for g in full], share=0.95, floor=zero)
    gain = sat["plateau"] - zero
    row.update(budget=100 * sat["budget"], lo=100 * sat["lo"], hi=100 * sat["hi"], gain_over_zero_shot=gain,
               note="" if gain > 0 else "plateau not above zero-shot: nothing saturates")
    return row


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys = ["name", "method", "style", "budget", "share", "seed", "n_pairs", "steps", "train_seconds", "eval_seconds", "final_loss"]
    meas = sorted({k for r in rows for k in r.get("measures", {})})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(keys + meas)
    for r in rows:
        w.writerow([r.get(k) for k in keys] + [r.get("measures", {}).get(k) for k in meas])
    atomic_write_text(path, buf.getvalue())


def print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table


    for meas in ("style_acc", "styled_faithful", "wr_logp", "recall_attr", "distinct_frames"):
        t = Table(title=f"{summary['measures'][meas]['label']} (mean over seeds [95% interval])")
        t.add_column("style / method")
        t.add_column("zero-shot", justify="right")
        for b in summary["budgets"]:
            t.add_column(b, justify="right")
        sat_cols = meas in SATURATION
        if sat_cols:
            t.add_column("saturates at", justify="right")
        for s in summary["styles"]:
            z = summary["zero_shot"].get(s, {}).get(meas)
            for m, pts in summary["curves"][meas][s].items():
                cells = [("-" if p["mean"] is None else f"{p['mean']:.2f} [{p['lo']:.2f},{p['hi']:.2f}]") for p in pts]
                sat = next((x for x in summary["saturation"] if (x["measure"], x["style"], x["method"]) == (meas, s, m)), None)
                extra = [] if not sat_cols else [
                    "-" if not sat else (sat["note"] or f"{sat['budget']:g}% [{sat['lo']:g},{sat['hi']:g}]")]
                t.add_row(f"{s} / {m}", "-" if z is None else f"{z:.2f}", *cells, *extra)
        Console(stderr=True, width=200).print(t)
