"""The report's figures (matplotlib, PNG files in the report folder): the PCA of vision and mapped
caption features (the ViZer paper's Figure 4), the mapper width x data heatmap (Figure 3, drawn by
`vizer sweep`'s own `heatmap_png`) and RL reward curves. Each returns HTML that points at its PNG,
or "" when the run has nothing to draw."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ..plotting import heatmap_png, pyplot, save
from .rundir import Run


def _img(name: str, alt: str) -> str:
    return f'<figure><img src="assets/{html.escape(name)}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def pca(features: dict[str, np.ndarray], panels: dict[str, str]) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Project "image" [N, D] and each panel's tensor (label -> key, e.g. "ViZer_GT" -> "mapped/ViZer_GT") [N, D] on
    the top 2 principal components of all of them together (one basis, so the panels compare).
    Returns (image [N, 2], {label: [N, 2]}, explained variance ratio [2])."""
    labels = [k for k, key in panels.items() if key in features]
    x = np.concatenate([features["image"]] + [features[panels[k]] for k in labels]).astype(np.float64)  # [(1+P)N, D]
    x = x - x.mean(0)
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    z = x @ vt[:2].T  # [(1+P)N, 2]
    n = len(features["image"])
    ratio = sv[:2] ** 2 / max(float((sv ** 2).sum()), 1e-12)
    return z[:n], {k: z[n * (i + 1): n * (i + 2)] for i, k in enumerate(labels)}, ratio


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean((a * b).sum(1) / np.maximum(den, 1e-12)))


def pca_section(run: Run, assets: Path) -> str:
    feats = run.index.get("features") if isinstance(run.index.get("features"), dict) else {}
    out = []
    for seed in run.seeds:
        rel = feats.get(seed)
        if not rel:
            continue
        p = run.file(rel)
        if not p.is_file():
            run.note(f"features of seed {seed}: {rel} is missing")
            continue
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            f = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            run.note(f"features of seed {seed}: {rel} is unreadable ({e})")
            continue
        shown = run.headline()
        panels = {x: f"mapped/{x}" for x in shown if f"mapped/{x}" in f}
        panels.update({k[7:]: k for k in sorted(f) if k.startswith("mapped/") and k[7:] not in run.systems})  # systems the index lacks
        if "reference" in f:
            panels["reference caption"] = "reference"  # the mapped first human caption: where a perfect caption lands
        if "image" not in f or not panels:
            run.note(f"features of seed {seed}: {rel} lacks 'image' or 'mapped/<System>' tensors")
            continue
        img, mapped, ratio = pca(f, panels)
        plt = pyplot()
        from matplotlib.collections import LineCollection

        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), sharex=True, sharey=True, squeeze=False)
        rows = []
        for ax, (label, key) in zip(axes[0], panels.items()):
            m = mapped[label]
            colour = "tab:orange" if label == run.baseline else "tab:green" if key == "reference" else "tab:blue"
            ax.add_collection(LineCollection(np.stack([img, m], 1), colors="0.85", linewidths=0.5, zorder=1))  # image -> its caption
            ax.scatter(img[:, 0], img[:, 1], s=9, c="0.45", label="image features", zorder=2)
            ax.scatter(m[:, 0], m[:, 1], s=9, c=colour, label="mapped caption features", zorder=3)
            cos = _cosine(f["image"], f[key])
            ax.set_title(f"{label}\nmean cos(image, caption) = {cos:.3f}", fontsize=9)
            ax.set_xlabel(f"PC1 ({100 * ratio[0]:.0f}%)")
            rows.append(f"<tr><th>{html.escape(label)}</th><td class='num'>{cos:.3f}</td>"
                        f"<td class='num'>{float(np.linalg.norm(f['image'].mean(0) - f[key].mean(0))):.3f}</td></tr>")
        axes[0][0].set_ylabel(f"PC2 ({100 * ratio[1]:.0f}%)")
        axes[0][0].legend(fontsize=7, loc="best")
        name = f"pca-seed{seed}.png"
        save(fig, assets / name)
        out.append(_img(name, f"Seed {seed}: PCA of the test images' vision features (grey) and each system's mapped caption features, one basis for all panels")
                   + "<table class='metrics small'><thead><tr><th>system</th><th>mean cosine image–caption</th><th>distance of the means</th></tr></thead>"
                   + f"<tbody>{''.join(rows)}</tbody></table>")
    return "".join(out)


def sweep_section(run: Run, assets: Path) -> str:
    rel = run.artifact("vizer_sweep", "sweep/results.json")
    res = run.json(rel, "mapper sweep", required=bool(run.artifact("vizer_sweep")))
    if not isinstance(res, dict) or not res.get("cells"):
        return ""

    metric = res.get("metric", "CIDEr")
    cells = {(c["width"], c["samples"]): c for c in res["cells"]}
    widths, sizes = sorted({w for w, _ in cells}), sorted({n for _, n in cells})
    grid = [[(cells.get((w, n)) or {}).get(metric, float("nan")) for n in sizes] for w in widths]
    (assets / f"sweep-{metric}.png").write_bytes(heatmap_png(grid, widths, sizes, f"ViZer_{str(res.get('variant', '')).upper()}: {metric}"))
    keys = [k for k in ("CIDEr", "BLEU4", "ROUGE_L", "recall_name", "chair_i_name", "chair_i_attr") if any(k in c for c in cells.values())]
    head = "<th>width</th><th>samples</th>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join(f"<tr><td class='num'>{w}</td><td class='num'>{n}</td>"
                   + "".join(f"<td class='num'>{c[k]:.3f}</td>" if isinstance(c.get(k), (int, float)) else "<td>-</td>" for k in keys) + "</tr>"
                   for (w, n), c in sorted(cells.items()))
    return (_img(f"sweep-{metric}.png", f"Mapper width x mapper data size: {metric} of ViZer_{str(res.get('variant', '')).upper()} ({rel})")
            + f"<table class='metrics small'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def study_figures(run: Run, assets: Path) -> str:
    """The summary's own figures that `capalign study` drew (index artifacts summary_forest / summary_budget), copied."""
    out = []
    for key, alt in (("summary_forest", "Paired differences with the baseline per metric (capalign study)"),
                     ("summary_budget", "ViZer budget: difference with the baseline against training steps (capalign study)")):
        rel = run.artifact(key)
        p = run.file(rel) if isinstance(rel, str) else None
        if p is None:
            continue
        if not p.is_file():
            run.note(f"{key}: {rel} is missing")
            continue
        (assets / f"{key}.png").write_bytes(p.read_bytes())
        out.append(_img(f"{key}.png", alt))
    return "".join(out)


def rl_section(run: Run, assets: Path) -> str:
    listed = run.artifact("rl_history", {})
    listed = listed if isinstance(listed, dict) else {}
    paths = {f"{s} seed {seed}": rel for s, per in listed.items() if isinstance(per, dict) for seed, rel in per.items()}
    if not listed:  # not in the index: take what the layout's folder holds
        paths = {p.parent.name: str(p.relative_to(run.root)) for p in sorted((run.root / "rl").glob("*/history.json"))}
    curves = {}
    for label, rel in paths.items():
        h = run.json(rel, f"RL history of {label}")
        rows = [r for r in h or [] if isinstance(r, dict) and isinstance(r.get("step"), (int, float)) and isinstance(r.get("reward_mean"), (int, float))]
        if rows:
            curves[label] = rows
    if not curves:
        return ""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for label, rows in curves.items():
        x = np.array([r["step"] for r in rows], dtype=float)
        y = np.array([r["reward_mean"] for r in rows], dtype=float)
        ax.plot(x, y, label=label)
        if all(isinstance(r.get("reward_std"), (int, float)) for r in rows):
            sd = np.array([r["reward_std"] for r in rows], dtype=float)
            ax.fill_between(x, y - sd, y + sd, alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel("reward (mean ± sd over the batch)")
    ax.legend(fontsize=8)
    save(fig, assets / "rl-reward.png")
    return _img("rl-reward.png", "RL training reward per step")
