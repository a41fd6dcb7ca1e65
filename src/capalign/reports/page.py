"""The report page: one HTML file with its CSS and script inline (no server, no network, no CDN).

The gallery's rows are rendered in HTML (readable without the script); the script only reorders and
hides them, from the scores in the `gallery-data` JSON block: sort by a metric of one system, by the
gain over the baseline, or by how much the systems disagree; filter to rows where the captions
differ, where the metric differs, where a system beats / trails the baseline, or hallucinates.
"""

from __future__ import annotations

import html
import json
import math

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f2d3d;color:#fff;padding:14px 24px}header h1{margin:0 0 4px;font-size:22px}header p{margin:0;color:#cfd8e3}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:6px 24px;z-index:2}nav a{margin-right:14px;color:#1f5fa8;text-decoration:none}
main{padding:8px 24px 40px}section{margin:18px 0 30px;scroll-margin-top:40px}h2{border-bottom:2px solid #1f2d3d;padding-bottom:3px}
.banner{background:#fff4d6;border:1px solid #e6c35c;padding:8px 14px;border-radius:4px}.banner ul{margin:4px 0}
.absent{color:#777;font-style:italic}
table.metrics{border-collapse:collapse;background:#fff;margin:6px 0}table.metrics th,table.metrics td{border:1px solid #ddd;padding:4px 8px}
table.metrics thead th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.best{font-weight:700}td.up{background:#dff3dc}td.down{background:#f8dcdc}tr.collapsed{background:#fdecea}.warn{color:#b00020;font-size:12px}.ci{color:#777;font-size:12px}
table.small{font-size:12px}.legend{color:#555;font-size:12px;margin:2px 0 10px}
figure{display:inline-block;margin:8px 16px 8px 0;vertical-align:top}figure img{max-width:100%;border:1px solid #ddd;background:#fff}
figcaption{font-size:12px;color:#555;max-width:720px}
.controls{background:#fff;border:1px solid #ddd;padding:8px 10px;border-radius:4px;margin:6px 0}
.controls label{margin-right:12px;white-space:nowrap}.controls select{max-width:300px}.scroll{overflow-x:auto}
tr.st-failed td,tr.st-missing td{background:#fde2e2}#f-count{font-weight:600}
#gallery{border-collapse:collapse;background:#fff;width:100%}#gallery th{background:#eef1f5;position:sticky;top:33px;z-index:1}
#gallery td,#gallery th{border:1px solid #ddd;padding:6px 8px;vertical-align:top;text-align:left}
#gallery tr[hidden]{display:none}td.im img{width:144px;height:auto;display:block;image-rendering:auto}
td.im .id,.sc,.more{font-size:11px;color:#777}.sc{margin-top:4px}td.ref{color:#333;max-width:260px}td.none{color:#aaa;font-style:italic}
.add{box-shadow:inset 0 -0.5em #bdeab0}.hal{background:#ffc9c9;color:#8a0000;text-decoration:underline wavy #d00}
.attr{background:#ffe3a6;text-decoration:underline wavy #d07a00}.obj{border-bottom:1px dotted #2a7a3a}
.key span{padding:0 3px;margin-right:10px}pre{background:#fff;border:1px solid #ddd;padding:8px;overflow:auto;max-height:480px}
"""

SCRIPT = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("gallery-data").textContent);
  var tbody = document.querySelector("#gallery tbody");
  if (!tbody) { return; }
  var trs = D.rows.map(function (_, k) { return document.getElementById("g" + k); });
  function el(id) { return document.getElementById(id); }
  function val(r, s, m) { var x = r.s[s]; return x && typeof x[m] === "number" ? x[m] : null; }
  function higher(m) { for (var i = 0; i < D.metrics.length; i++) { if (D.metrics[i].key === m) { return D.metrics[i].higher; } } return true; }
  function spread(r, m) {
    var v = D.systems.map(function (s) { return val(r, s, m); }).filter(function (x) { return x !== null; });
    return v.length > 1 ? Math.max.apply(null, v) - Math.min.apply(null, v) : null;
  }
  function gain(r, s, m) {  // > 0: the system is better than the baseline on this image
    var a = val(r, s, m), b = val(r, D.baseline, m);
    return a === null || b === null ? null : (a - b) * (higher(m) ? 1 : -1);
  }
  function keep(r, f, m) {
    var i = f.indexOf(":"), kind = i < 0 ? f : f.slice(0, i), s = f.slice(i + 1), g;
    if (kind === "differ") { return r.differ; }
    if (kind === "spread") { g = spread(r, m); return g !== null && g > 1e-9; }
    if (kind === "better") { g = gain(r, s, m); return g !== null && g > 1e-9; }
    if (kind === "worse") { g = gain(r, s, m); return g !== null && g < -1e-9; }
    if (kind === "hal") { return (val(r, s, "halluc_attr") || 0) > 0; }
    return true;
  }
  function key(r, k, sort, m) {  // larger first; null last
    var i = sort.indexOf(":"), kind = i < 0 ? sort : sort.slice(0, i), s = sort.slice(i + 1), v;
    if (kind === "spread") { return spread(r, m); }
    if (kind === "high") { return val(r, s, m); }
    if (kind === "low") { v = val(r, s, m); return v === null ? null : -v; }
    if (kind === "gain") { return gain(r, s, m); }
    return -k;
  }
  function update() {
    var seed = el("f-seed").value, m = el("f-metric").value, sort = el("f-sort").value, f = el("f-filter").value;
    var shown = [];
    D.rows.forEach(function (r, k) { if ((seed === "all" || r.seed === seed) && keep(r, f, m)) { shown.push({k: k, v: key(r, k, sort, m)}); } });
    shown.sort(function (a, b) {
      if (a.v === null && b.v === null) { return a.k - b.k; }
      if (a.v === null) { return 1; }
      if (b.v === null) { return -1; }
      return b.v - a.v || a.k - b.k;
    });
    trs.forEach(function (tr) { tr.hidden = true; });
    shown.forEach(function (x) { trs[x.k].hidden = false; tbody.appendChild(trs[x.k]); });
    var total = D.rows.filter(function (r) { return seed === "all" || r.seed === seed; }).length;
    el("f-count").textContent = "showing " + shown.length + " of " + total + " images";
  }
  ["f-seed", "f-metric", "f-sort", "f-filter"].forEach(function (id) { el(id).addEventListener("change", update); });
  update();
})();
"""


def _clean(x):
    """JSON for a <script> block: non-finite floats become null (JSON.parse rejects NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def _options(pairs: list[tuple[str, str]], selected: str | None = None) -> str:
    return "".join(f'<option value="{html.escape(v)}"{" selected" if v == selected else ""}>{html.escape(t)}</option>' for v, t in pairs)


def gallery_controls(data: dict) -> str:
    seeds = sorted({r["seed"] for r in data["rows"]}, key=data["seeds"].index)
    others = [s for s in data["systems"] if s != data["baseline"]]
    metrics = [(m["key"], m["label"] + ("" if m["higher"] else " (lower is better)")) for m in data["metrics"]] or [("none", "no scores")]
    sorts = [("order", "test order"), ("spread", "disagreement: largest spread of the metric across systems")]
    sorts += [(f"gain:{s}", f"gain of {s} over {data['baseline']}") for s in others]
    sorts += [(f"{d}:{s}", f"{s}: {'highest' if d == 'high' else 'lowest'} first") for s in data["systems"] for d in ("high", "low")]
    filters = [("all", "all images"), ("differ", "systems disagree: captions differ"), ("spread", "systems disagree: the metric differs")]
    filters += [(f"{d}:{s}", f"{s} {'better' if d == 'better' else 'worse'} than {data['baseline']} on the metric") for s in others for d in ("better", "worse")]
    filters += [(f"hal:{s}", f"{s} hallucinates (object or attribute)") for s in data["systems"]]
    return (f'<div class="controls"><label>seed <select id="f-seed">{_options([("all", "all seeds")] + [(s, s) for s in seeds], seeds[0])}</select></label>'
            f'<label>metric <select id="f-metric">{_options(metrics)}</select></label>'
            f'<label>sort <select id="f-sort">{_options(sorts)}</select></label>'
            f'<label>show <select id="f-filter">{_options(filters)}</select></label><span id="f-count"></span></div>'
            '<p class="key">Marks: <span class="add">added relative to Base</span><span class="hal">hallucinated object</span>'
            '<span class="attr">wrong attribute</span><span class="obj">object in the image</span> (objects: shapes world only; '
            'hover a mark for details)</p>'
            + (f'<p class="legend">Left out of the gallery: the intermediate points of ViZer budget arms ({html.escape(", ".join(data["left_out"]))}); '
               'the metrics section has them.</p>' if data.get("left_out") else "")
            + (f'<p class="legend">The gallery shows the first {data["max_images"]} test images of each seed (of '
               + html.escape(", ".join(f"{n} in seed {s}" for s, n in data["cut"].items())) + '; `--max_images 0` shows all).</p>' if data.get("cut") else ""))


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]], gallery_data: dict | None, footer: str) -> str:
    """sections: (anchor, heading, html body)."""
    nav = "".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{html.escape(h)}</h2>{b}</section>' for a, h, b in sections)
    data = json.dumps(_clean(gallery_data or {"rows": []}), ensure_ascii=False).replace("</", "<\\/")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(title)}</title><link rel="icon" href="data:,"><style>{CSS}</style></head><body>'
            f'<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header><nav>{nav}</nav><main>{body}</main>'
            f'<footer class="legend" style="padding:0 24px 20px">{html.escape(footer)}</footer>'
            f'<script id="gallery-data" type="application/json">{data}</script><script>{SCRIPT}</script></body></html>')
