"""Every figure capalign draws (matplotlib, Agg), in one module below the methods, the study and the report, so
`capalign study`, `style sweep`, `vizer sweep` and `capalign report` draw the same picture of the same data:
the study's forest plot and ViZer budget curve, the mapper sweep's heatmap, the style sweep's learning curves.
Labels come from capalign.metrics.registry; intervals are computed by capalign.stats (never here)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from . import stats
from .io import atomic_write_bytes
from .metrics import registry


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def save(fig, path: Path, dpi: int = 110) -> None:
    """The figure as a PNG file, written atomically."""
    atomic_write_bytes(path, png(fig, dpi))


# ---- the study summary ---------------------------------------------------------------------------
def forest_png(summary: dict, heads: list[str]) -> bytes:
    """One row per metric (its own x scale: CIDEr moves more than recall), one colour per system: the mean
    paired difference with its interval; the dashed line is no difference."""
    plt = pyplot()
    metrics = summary["metrics"]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7, len(metrics) * (0.25 * len(heads) + 0.7) + 1), squeeze=False,
                             gridspec_kw={"hspace": 0.9})  # room for each row's own x tick labels
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, m in zip(axes[:, 0], metrics):
        for j, h in enumerate(heads):
            p = summary["paired"][h].get(m) or {}
            if p.get("mean_diff") is None:
                continue
            lo, hi = p.get("lo", p["mean_diff"]), p.get("hi", p["mean_diff"])
            ax.errorbar([p["mean_diff"]], [len(heads) - 1 - j], xerr=[[p["mean_diff"] - lo], [hi - p["mean_diff"]]], fmt="o", color=colours[j % len(colours)],
                        capsize=3, label=h)
        ax.axvline(0, color="grey", ls="--", lw=1)
        ax.set_yticks([])
        ax.set_ylim(-0.7, len(heads) - 0.3)
        ax.set_ylabel(registry.label(m), rotation=0, ha="right", va="center")
    axes[0, 0].legend(loc="lower left", bbox_to_anchor=(0, 1.02), ncol=max(1, len(heads)), frameon=False)
    n = len(summary["seeds"])
    axes[-1, 0].set_xlabel(f"system - {summary['baseline']} ({summary['level']:.0%} interval; {n} seed{'s' if n > 1 else ''})")
    return png(fig, dpi=120)


def budget_png(summary: dict) -> bytes:
    """One panel per metric: the paired difference (mean and interval band) against ViZer steps, one line per arm."""
    plt = pyplot()
    metrics = summary["metrics"]
    cols = 3
    rows = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        for arm, b in summary["budget"].items():
            ps = [summary["paired"][n].get(m) or {} for n in b["systems"]]
            ok = [(k, p) for k, p in zip(b["steps"], ps) if p.get("mean_diff") is not None]
            if not ok:
                continue
            ks = [k for k, _ in ok]
            line, = ax.plot(ks, [p["mean_diff"] for _, p in ok], marker="o", label=arm)
            ax.fill_between(ks, [p.get("lo", p["mean_diff"]) for _, p in ok], [p.get("hi", p["mean_diff"]) for _, p in ok],
                            color=line.get_color(), alpha=0.2)
        ax.axhline(0, color="grey", ls="--", lw=1)
        ax.set_xscale("log", base=2)
        steps = sorted({k for b in summary["budget"].values() for k in b["steps"]})
        ax.set_xticks(steps, [str(k) for k in steps])
        ax.minorticks_off()
        ax.set_title(registry.label(m))
        ax.set_xlabel("ViZer steps")
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes[0, 0].legend(frameon=False)
    fig.suptitle(f"ViZer - {summary['baseline']} against training steps ({summary['level']:.0%} interval, {len(summary['seeds'])} seeds)")
    fig.tight_layout()
    return png(fig, dpi=120)


# ---- the mapper sweep (`capalign vizer sweep`) ---------------------------------------------------
def heatmap_png(grid: list[list[float]], widths: list[int], sizes: list[int], title: str) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.4 * len(sizes) + 2, 1.0 * len(widths) + 1.5))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
    ax.set_yticks(range(len(widths)), [str(w) for w in widths])
    ax.set_xlabel("mapper data size (pairs)")
    ax.set_ylabel("mapper width")
    ax.set_title(title)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="w")
    fig.colorbar(im)
    return png(fig, dpi=120)


# ---- the style sweep (`capalign style sweep`, style/sweep.json) ----------------------------------
# The file is either a list of rows or an object with "rows" (and "saturation", "zero_shot", "base"). A row is
# {"method", "style", "budget", "seed", <measure>: number, ...}: every other numeric field is a measure.
def sweep_rows(data) -> list[dict]:
    rows = data.get("rows") if isinstance(data, dict) else data
    return [r for r in rows or [] if isinstance(r, dict) and isinstance(r.get("budget"), (int, float))]


def curves_png(rows: list[dict], measure: str, path: Path, levels: dict | None = None) -> None:
    """levels: optional {label: {style: value}} drawn as horizontal lines (the sweep's zero-shot and factual-base levels)."""
    styles = sorted({str(r.get("style", "")) for r in rows})
    xlabel = (levels or {}).pop("_xlabel", "data budget")
    plt = pyplot()
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
    save(fig, path)


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
    curves_png(sweep_rows(data), measure, path, _levels(data, measure))
