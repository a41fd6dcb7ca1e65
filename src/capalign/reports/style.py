"""The style sweep's learning curves and saturation table (style/sweep.json, written by `capalign style sweep`).

Kept apart and generic on purpose, because the sweep's format is defined elsewhere: the file is
either a list of rows or an object with "rows" (and "saturation"). A row is {"method", "style",
"budget", "seed", <measure>: number, ...}: every other numeric field is a measure. Each measure gets
one figure, one panel per style, one line per method: the mean over seeds at each budget with its
`capalign.stats.mean_ci` interval as a band; the zero-shot and factual-base levels ("zero_shot": {style:
{measure: value}}, "base": {measure: value}) as lines when the file has them. "saturation" is a list of flat objects, shown as a table
of their scalar fields (nested values such as curves are left out); so is "collapsed" (the budgets the collapse guard
set aside, with the reason: content recall or metrics/degenerate.py's rule).
"""

from __future__ import annotations

import html
from pathlib import Path

from ..plotting import sweep_figure, sweep_rows
from .rundir import Run

KEYS = ("method", "style", "budget", "seed")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def saturation_table(items: list, table_id: str = "saturation") -> str:
    items = [s for s in items or [] if isinstance(s, dict)]
    cols = list(dict.fromkeys(k for s in items for k, v in s.items() if v is None or isinstance(v, (str, int, float, bool))))
    if not items or not cols:
        return ""
    body = "".join("<tr>" + "".join(f"<td>{_fmt(s.get(k, ''))}</td>" for k in cols) + "</tr>" for s in items)
    return (f"<table id='{table_id}' class='metrics small'><thead><tr>{''.join(f'<th>{html.escape(k)}</th>' for k in cols)}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def style_section(run: Run, assets: Path) -> str:
    rel = run.artifact("style_sweep", "style/sweep.json")
    data = run.json(rel, "style sweep", required=bool(run.artifact("style_sweep")))
    if data is None:
        return ""
    rows = sweep_rows(data)
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
    bad = saturation_table(data.get("collapsed") if isinstance(data, dict) else None, "style-collapsed")
    if bad:
        out.append("<h3>Collapsed budgets</h3>" + bad)
    if not out:
        run.note(f"style sweep: {rel} has no rows with a budget and a numeric measure")
    return "".join(out)
