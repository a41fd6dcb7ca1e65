"""Figures of the multi-seed summary (matplotlib, PNG bytes): a forest plot of the paired differences
(one row per metric, one colour per system) and the ViZer budget curve (difference against steps)."""

from __future__ import annotations

import io

from .summary import SHORT, headline_systems


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def forest_png(summary: dict) -> bytes:
    """One row per metric (its own x scale: CIDEr moves more than recall), one colour per system: the mean
    paired difference with its interval; the dashed line is no difference."""
    plt = _plt()
    heads, metrics = headline_systems(summary), summary["metrics"]
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
        ax.set_ylabel(SHORT.get(m, m), rotation=0, ha="right", va="center")
    axes[0, 0].legend(loc="lower left", bbox_to_anchor=(0, 1.02), ncol=max(1, len(heads)), frameon=False)
    n = len(summary["seeds"])
    axes[-1, 0].set_xlabel(f"system - {summary['baseline']} ({summary['level']:.0%} interval; {n} seed{'s' if n > 1 else ''})")
    return _png(fig)


def budget_png(summary: dict) -> bytes:
    """One panel per metric: the paired difference (mean and interval band) against ViZer steps, one line per arm."""
    plt = _plt()
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
        ax.set_title(SHORT.get(m, m))
        ax.set_xlabel("ViZer steps")
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes[0, 0].legend(frameon=False)
    fig.suptitle(f"ViZer - {summary['baseline']} against training steps ({summary['level']:.0%} interval, {len(summary['seeds'])} seeds)")
    fig.tight_layout()
    return _png(fig)
