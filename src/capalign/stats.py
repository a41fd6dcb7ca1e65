"""The one statistics helper every study, the docs and the HTML report use, so their numbers agree.

- `mean_ci`: mean over seeds with a Student-t interval (the usual "mean +- t * sd / sqrt(n)").
- `bootstrap_ci`: percentile bootstrap interval of a statistic of one sample.
- `paired_bootstrap`: a system minus a baseline, paired on the same items (test images), over several
  seeds. Within a seed, items are resampled with replacement (the same indices for both systems);
  over seeds, a two-stage bootstrap resamples seeds, then items within each drawn seed. Metrics that
  are not means of per-item scores (pooled ratios such as CHAIR_i = hallucinated / mentions, or corpus
  BLEU) are handled by giving per-item count vectors [n, k] and a statistic over them (`ratio`).
- `saturation_budget`: the smallest data budget whose mean score reaches a share of the plateau.

Statistics take arrays with a leading batch axis, [B, n, k] -> [B], so B bootstrap replicates are one
numpy call: `mean` (column 0 averaged) and `ratio` (sum of column 0 / sum of column 1) cover the
metrics capalign reports.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

Stat = Callable[[np.ndarray], np.ndarray]


def mean(x: np.ndarray) -> np.ndarray:
    """[..., n, k] -> [...]: the mean of column 0 over items."""
    return x[..., 0].mean(-1)


def ratio(x: np.ndarray) -> np.ndarray:
    """[..., n, 2] -> [...]: pooled ratio sum(numerator) / sum(denominator) (nan where the denominator is 0)."""
    den = x[..., 1].sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, x[..., 0].sum(-1) / np.where(den > 0, den, 1), np.nan)


def _items(x) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    return a[:, None] if a.ndim == 1 else a  # [n] -> [n, 1]


def _t_quantile(level: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean over seeds with a t interval; with one value the interval is that value (n says so)."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    n = len(v)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "sd": None, "n": 0}
    m = float(v.mean())
    if n == 1:
        return {"mean": m, "lo": m, "hi": m, "sd": 0.0, "n": 1}
    sd = float(v.std(ddof=1))
    h = _t_quantile(level, n - 1) * sd / math.sqrt(n)
    return {"mean": m, "lo": m - h, "hi": m + h, "sd": sd, "n": n}


def bootstrap_ci(values, stat: Stat = mean, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict:
    """Percentile bootstrap over items: {"value", "lo", "hi"}. `values`: [n] or [n, k] per-item data."""
    x = _items(values)
    rng = np.random.default_rng(seed)
    reps = stat(x[rng.integers(0, len(x), size=(n_boot, len(x)))])  # [B]
    lo, hi = np.nanquantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return {"value": float(stat(x[None])[0]), "lo": float(lo), "hi": float(hi)}


def paired_bootstrap(pairs: Sequence[tuple], stat: Stat = mean, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict:
    """Paired difference system - base over seeds.

    pairs: one (base, system) per seed; each is per-item data [n] or [n, k] over the same n items in the
    same order (n may differ between seeds). Returns per-seed differences with their within-seed
    bootstrap intervals, the mean difference over seeds with a two-stage bootstrap interval (seeds, then
    items) and a t interval over the per-seed differences, and how many seeds moved each way.
    """
    if not pairs:
        raise ValueError("paired_bootstrap needs at least one (base, system) pair")
    rng = np.random.default_rng(seed)
    q = [(1 - level) / 2, (1 + level) / 2]
    per_seed, reps = [], []
    for base, system in pairs:
        b, s = _items(base), _items(system)
        if b.shape != s.shape:
            raise ValueError(f"paired data must have the same shape, got {b.shape} and {s.shape}")
        idx = rng.integers(0, len(b), size=(n_boot, len(b)))  # the same resampled items for both systems
        r = stat(s[idx]) - stat(b[idx])  # [B]
        diff = float(stat(s[None])[0] - stat(b[None])[0])
        lo, hi = np.nanquantile(r, q)
        per_seed.append({"base": float(stat(b[None])[0]), "system": float(stat(s[None])[0]), "diff": diff, "lo": float(lo), "hi": float(hi), "n": len(b)})
        reps.append(r)
    diffs = np.array([p["diff"] for p in per_seed])
    S = len(pairs)
    R = np.stack(reps)  # [S, B]
    seeds = rng.integers(0, S, size=(n_boot, S))  # stage 1: seeds with replacement
    draws = rng.integers(0, n_boot, size=(n_boot, S))  # stage 2: an item-level replicate of each drawn seed
    two_stage = np.nanmean(R[seeds, draws], axis=1)  # [B]
    lo, hi = np.nanquantile(two_stage, q)
    t = mean_ci(diffs.tolist(), level)
    return {
        "mean_diff": float(diffs.mean()), "lo": float(lo), "hi": float(hi), "t_lo": t["lo"], "t_hi": t["hi"],
        "base_mean": float(np.mean([p["base"] for p in per_seed])), "system_mean": float(np.mean([p["system"] for p in per_seed])),
        "n_seeds": S, "n_up": int((diffs > 0).sum()), "n_down": int((diffs < 0).sum()), "per_seed": per_seed,
        "excludes_zero": bool(lo > 0 or hi < 0), "level": level,
    }


def saturation_budget(budgets: Sequence[float], scores, share: float = 0.95, floor: float = 0.0, level: float = 0.95,
                      n_boot: int = 2000, seed: int = 0) -> dict:
    """The smallest budget whose mean score over seeds reaches `share` of the way from `floor` to the plateau.

    budgets: increasing data budgets; scores: [seeds, budgets]. The plateau is the mean score at the
    largest budget (all the data the sweep has): saturation means "this little data already gives
    `share` of what all of it gives". `floor` is the level with no data (0, or the zero-shot score), so
    the share is of the gain over it. The interval comes from resampling seeds (percentiles of the
    budget over bootstrap replicates). Returns the budget, its interval, the plateau and the curve.
    """
    budgets = np.asarray(budgets, dtype=float)
    s = np.asarray(scores, dtype=float)
    if s.ndim != 2 or s.shape[1] != len(budgets):
        raise ValueError(f"scores must be [seeds, {len(budgets)}], got {s.shape}")
    if np.any(np.diff(budgets) <= 0):
        raise ValueError("budgets must be strictly increasing")

    def first_reaching(curve: np.ndarray) -> np.ndarray:  # [B, nb] -> [B] budget values
        target = floor + share * (curve[:, -1] - floor)
        ok = curve >= target[:, None] - 1e-12
        return budgets[ok.argmax(1)]  # the last budget always qualifies

    curve = np.nanmean(s, 0)
    rng = np.random.default_rng(seed)
    boot = first_reaching(np.nanmean(s[rng.integers(0, len(s), size=(n_boot, len(s)))], 1))
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return {"budget": float(first_reaching(curve[None])[0]), "lo": float(lo), "hi": float(hi), "plateau": float(curve[-1]),
            "floor": floor, "share": share, "curve": curve.tolist(), "budgets": budgets.tolist(), "n_seeds": len(s),
            "plateau_definition": "mean score over seeds at the largest budget"}
