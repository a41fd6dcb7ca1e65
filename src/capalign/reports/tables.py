"""The metrics table: one row per system, the mean over seeds with its interval, and the paired
differences against the baseline.

The numbers come from summary.json, which `capalign study` writes with `capalign.stats`. A run whose
evaluation finished but whose summary is not written yet still gets a table: the same
`capalign.stats.mean_ci` over the seeds' corpus scores (the paired differences need the summary).
"""

from __future__ import annotations

import html

from .. import stats
from ..metrics import registry
from ..metrics.evaluate import collapse_of
from ..metrics.registry import lower_is_better
from .rundir import Run


def summary_from_evals(run: Run, level: float = 0.95) -> dict | None:
    """summary.json's "systems" part from the eval files: capalign.stats.mean_ci of each corpus score over seeds."""
    corpus: dict[str, dict[str, list[float]]] = {}
    collapsed: dict[str, dict[str, str]] = {}  # as summary.json's (study/summary.py collapsed_systems)
    for s in run.systems:
        for seed in run.seeds:
            ev = run.json(run.system_file(s, seed, "eval"), f"scores of {s}, seed {seed}")
            if isinstance(ev, dict) and collapse_of(ev):
                collapsed.setdefault(s, {})[str(seed)] = collapse_of(ev)
            for k, v in ((ev or {}).get("corpus") or {}).items():
                if isinstance(v, (int, float)):
                    corpus.setdefault(s, {}).setdefault(k, []).append(float(v))
    if not corpus:
        return None
    have = {k for per in corpus.values() for k in per}
    metrics = [m for m in registry.STUDY_METRICS if m in have] or sorted(have)  # summary.json's "metrics" when it exists
    return {"baseline": run.baseline, "level": level, "seeds": run.seeds, "metrics": metrics, "paired": {}, "collapsed": collapsed,
            "systems": {s: {m: {**stats.mean_ci(per.get(m, []), level), "values": per.get(m, [])} for m in metrics} for s, per in corpus.items()}}


def load_summary(run: Run) -> tuple[dict | None, str]:
    """(summary, where it came from)."""
    s = run.json("summary.json", "summary", required=False)
    if isinstance(s, dict) and isinstance(s.get("systems"), dict):
        return s, "summary.json (capalign.stats)"
    s = summary_from_evals(run)
    if s is None:
        return None, ""
    run.note("summary.json is missing: the table is capalign.stats.mean_ci over the eval files; no paired differences")
    return s, "the eval files, with capalign.stats.mean_ci"


def _num(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _cell(c: dict | None, best: bool) -> str:
    if not c or c.get("mean") is None:
        return '<td class="num">-</td>'
    ci = f'<br><span class="ci">[{_num(c.get("lo"))}, {_num(c.get("hi"))}]</span>' if (c.get("n") or 0) > 1 else ""
    attrs = "".join(f' data-{k}="{c[k]!r}"' for k in ("mean", "lo", "hi", "n") if c.get(k) is not None)
    return f'<td class="num{" best" if best else ""}"{attrs}>{_num(c["mean"])}{ci}</td>'


def metrics_table(summary: dict, systems: list[str]) -> str:
    metrics = summary.get("metrics") or sorted({m for per in summary["systems"].values() for m in per})
    rows = [s for s in systems if s in summary["systems"]] + [s for s in summary["systems"] if s not in systems]
    best = {}
    for m in metrics:
        vals = [(summary["systems"][s].get(m) or {}).get("mean") for s in rows]
        vals = [v for v in vals if v is not None]
        best[m] = (min(vals) if lower_is_better(m) else max(vals)) if len(vals) > 1 and min(vals) < max(vals) else None  # no bold for a tie of all
    head = "<th>system</th>" + "".join(f'<th title="{html.escape(m)}">{html.escape(registry.label(m))}{" ↓" if lower_is_better(m) else ""}</th>'
                                       for m in metrics) + "<th>seeds</th>"
    body = []
    for s in rows:
        per = summary["systems"][s]
        n = max([(c or {}).get("n") or 0 for c in per.values()] or [0])
        cells = "".join(_cell(per.get(m), best[m] is not None and (per.get(m) or {}).get("mean") == best[m]) for m in metrics)
        why = (summary.get("collapsed") or {}).get(s)  # {seed: reason}: metrics/degenerate.py's rule
        mark = ("" if not why else f' <span class="warn" title="{html.escape("; ".join(f"seed {k}: {v}" for k, v in why.items()))}">'
                f'⚠ collapsed (seed{"s" if len(why) > 1 else ""} {", ".join(why)})</span>')
        cls = ' class="collapsed"' if why else ""
        body.append(f'<tr data-system="{html.escape(s)}"{cls}><th>{html.escape(s)}{mark}</th>{cells}<td class="num">{n}</td></tr>')
    level = summary.get("level", 0.95)
    return (f'<div class="scroll"><table id="metrics" class="metrics"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
            f'<p class="legend">Mean over seeds with its {100 * level:.0f}% t interval [lo, hi] where there are several seeds; '
            'bold: the best mean of the column; ↓: lower is better'
            + ('; ⚠ collapsed: the degeneracy rule (empty + non-word captions, or too few distinct ones; docs/degenerate.md) '
               'marks the system\'s captions collapsed in those seeds' if summary.get("collapsed") else "") + '.</p>')


def _diff_cell(p: dict | None, m: str) -> str:
    if not p or p.get("mean_diff") is None:
        return '<td class="num">-</td>'
    good = (p["mean_diff"] < 0) == lower_is_better(m)
    cls = (" up" if good else " down") if p.get("excludes_zero") else ""
    moves = f' <span class="ci">↑{p.get("n_up", 0)} ↓{p.get("n_down", 0)}</span>' if "n_up" in p else ""
    return (f'<td class="num{cls}" data-mean_diff="{p["mean_diff"]!r}">{p["mean_diff"]:+.3f}{moves}<br>'
            f'<span class="ci">[{_num(p.get("lo"))}, {_num(p.get("hi"))}]</span></td>')


def _diff_table(table_id: str, corner: str, rows: list[tuple[str, dict]], metrics: list[str]) -> str:
    head = f"<th>{html.escape(corner)}</th>" + "".join(f"<th>{html.escape(registry.label(m))}</th>" for m in metrics)
    body = "".join(f"<tr><th>{html.escape(label)}</th>{''.join(_diff_cell(per.get(m), m) for m in metrics)}</tr>" for label, per in rows)
    return f'<div class="scroll"><table id="{table_id}" class="metrics"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def paired_table(summary: dict, headline: list[str]) -> str:
    """system - baseline for the headline systems, then one table per ViZer budget arm (a row per step count)."""
    paired = summary.get("paired") or {}
    if not paired:
        return ""
    metrics = [m for m in summary.get("metrics") or [] if any(m in p for p in paired.values())] or sorted({m for p in paired.values() for m in p})
    base = summary.get("baseline", "Base")
    rows = [(s, paired[s]) for s in headline if s in paired] + [(s, p) for s, p in paired.items() if s not in headline and s not in
                                                                 {n for b in (summary.get("budget") or {}).values() for n in b.get("systems", [])}]
    out = _diff_table("paired", f"system − {base}", rows, metrics)
    for arm, b in (summary.get("budget") or {}).items():
        steps = [(f"{k} step{'' if k == 1 else 's'}", paired.get(n) or {}) for k, n in zip(b.get("steps") or [], b.get("systems") or [])]
        if steps:
            out += f"<h3>ViZer budget: {html.escape(arm)} − {html.escape(base)}</h3>" + _diff_table(f"budget-{html.escape(arm)}", "training", steps, metrics)
    return out + ('<p class="legend">Paired difference with the baseline on the same test images (capalign.stats.paired_bootstrap: '
                  'two-stage bootstrap over seeds and images); ↑/↓: seeds where the system is above/below the baseline; '
                  'coloured: the interval excludes 0 (green better, red worse).</p>')
