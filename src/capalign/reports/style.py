"""The style sweep's learning curves and saturation table (style/sweep.json, written by `capalign style sweep`).

Kept apart and generic on purpose, because the sweep's format is defined elsewhere: the file is
either a list of rows or an object with "rows" (and "saturation"). A row is {"method", "style",
"budget", "seed", <measure>: number, ...}: every other numeric field is a measure. Each measure gets
one figure, one panel per style, one line per method: the mean over seeds at each budget with its
`capalign.stats.mean_ci` interval as a band; the zero-shot and factual-base levels ("zero_shot": {style:
{measure: value}}, "base": {measure: value}) as lines when the file has them. "saturation" is a list of flat objects, shown as a table
of their scalar fields (nested values such as curves are left out).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from .. import stats
from .rundir import Run

KEYS = ("method", "style", "budget", "seed")


def _rows(data) -> list[dict]:
    rows = data.get("rows") if isinstance(data, dict) else data
    return [r for r in rows or [] if isinstance(r, dict) and isinstance(r.get("budget"), (int, float))]


def curves_png(rows: list[dict], measure: str, path: Path, levels: dict | None = None) -> None:
    """levels: optional {label: {style: value}} drawn as horizontal lines (the sweep's zero-shot and factual-base levels)."""
    from .figures import _plt, _save

    styles = sorted({str(r.get("style", "")) for r in rows})
    xlabel = (levels or {}).pop("_xlabel", "data budget")
    plt = _plt()
    vals = [r[measure] for r in rows if isinstance(r.get(measure), (int, float))]
    lo_clip, hi_clip = (0.0, 1.0) if vals and all(0 <= v <= 1 for v in vals) else (-np.inf, np.inf)  # a share: its band stays in [0, 1]
    fig, axes = plt.subplots(1, len(styles), figsize=(4.2 * len(styles), 3.4), squeeze=False, sharey=True)
    for ax, style in zip(axes[0], styles):
        sub = [r for r in rows if str(r.get("style", "")) == style and isinstance(r.get(measure), (int, float))]
        for method in sorted({str(r.get("method", "")) for r in sub}):
            budgets = sorted({r["budget"] for r in sub if str(r.get("method", "")) == method})
            ci = [stats.mean_ci([r[measure] for r in sub if str(r.get("method", "")) == method and r["budget"] == b]) for b in budgets]
            x, y = np.array(budgets, float), np.array([c["mean"] for c in ci], float)
            ax.plot(x, y, marker="o", ms=3, label=method)
            ax.fill_between(x, np.clip([c["lo"] for c in ci], lo_clip, hi_clip), np.clip([c["hi"] for c in ci], lo_clip, hi_clip), alpha=0.15)
        for (label, per_style), ls in zip((levels or {}).items(), ("--", ":", "-.")):
            v = per_style.get(style)
            if isinstance(v, (int, float)):
                ax.axhline(v, color="k" if ls == "--" else "grey", ls=ls, lw=1, label=label)
        if sub and max(r["budget"] for r in sub) > 10 * max(min(r["budget"] for r in sub), 1e-12):
            ax.set_xscale("log")
            ticks = sorted({r["budget"] for r in sub})
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=7)  # the budgets themselves, not powers of ten
            ax.minorticks_off()
        ax.set_title(style or "all", fontsize=9)
        ax.set_xlabel(xlabel)
    axes[0][0].set_ylabel(measure)
    axes[0][0].legend(fontsize=7)
    _save(fig, path)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def saturation_table(items: list) -> str:
    items = [s for s in items or [] if isinstance(s, dict)]
    cols = list(dict.fromkeys(k for s in items for k, v in s.items() if v is None or isinstance(v, (str, int, float, bool))))
    if not items or not cols:
        return ""
    body = "".join("<tr>" + "".join(f"<td>{_fmt(s.get(k, ''))}</td>" for k in cols) + "</tr>" for s in items)
    return (f"<table id='saturation' class='metrics small'><thead><tr>{''.join(f'<th>{html.escape(k)}</th>' for k in cols)}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _levels(data, measure: str) -> dict:
    """`capalign style sweep` output also holds the zero-shot level per style and the factual base's level."""
    if not isinstance(data, dict):
        return {}
    out = {}
    zero, base = data.get("zero_shot"), data.get("base")
    if isinstance(zero, dict):
        out["zero-shot"] = {s: v.get(measure) for s, v in zero.items() if isinstance(v, dict)}
    if isinstance(base, dict) and isinstance(base.get(measure), (int, float)):
        out["factual base"] = {s: base[measure] for s in (zero or {})}
    if "shares" in data:
        out["_xlabel"] = "budget (% of the training pairs)"
    return out


def sweep_figure(data, measure: str, path: Path) -> None:
    """One measure of a style sweep's output (rows, and the zero-shot / factual-base levels when it has them)."""
    curves_png(_rows(data), measure, path, _levels(data, measure))


def style_section(run: Run, assets: Path) -> str:
    rel = run.artifact("style_sweep", "style/sweep.json")
    data = run.json(rel, "style sweep", required=bool(run.artifact("style_sweep")))
    if data is None:
        return ""
    rows = _rows(data)
    measures = list(dict.fromkeys(k for r in rows for k, v in r.items() if k not in KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)))
    out = []
    for i, m in enumerate(measures):
        name = f"style-{i}.png"
        sweep_figure(data, m, assets / name)
        out.append(f'<figure><img src="assets/{name}" alt="style sweep: {html.escape(m)}"><figcaption>{html.escape(m)} over the data budget '
                   '(mean over seeds, band: 95% t interval)</figcaption></figure>')
    sat = saturation_table(data.get("saturation") if isinstance(data, dict) else None)
    if sat:
        out.append("<h3>Saturation</h3>" + sat)
    if not out:
        run.note(f"style sweep: {rel} has no rows with a budget and a numeric measure")
    return "".join(out)
