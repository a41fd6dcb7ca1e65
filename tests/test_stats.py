"""capalign.stats against hand computations on small examples."""

import math

import numpy as np
import pytest

from capalign import stats


def test_mean_ci_is_the_t_interval():
    v = [1.0, 2.0, 4.0]
    m, sd = 7 / 3, math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    h = 4.302652729911275 * sd / math.sqrt(3)  # t_{0.975, df=2}
    r = stats.mean_ci(v)
    assert r["n"] == 3 and r["mean"] == pytest.approx(m) and r["sd"] == pytest.approx(sd)
    assert (r["lo"], r["hi"]) == (pytest.approx(m - h), pytest.approx(m + h))
    assert stats.mean_ci([0.5]) == {"mean": 0.5, "lo": 0.5, "hi": 0.5, "sd": 0.0, "n": 1}
    assert stats.mean_ci([])["mean"] is None


def test_ratio_pools_counts_and_mean_averages():
    x = np.array([[1, 2], [0, 0], [3, 4]], dtype=float)  # 4 of 6 mentions hallucinated, pooled
    assert stats.ratio(x[None])[0] == pytest.approx(4 / 6)
    assert stats.mean(x[None])[0] == pytest.approx(4 / 3)
    assert math.isnan(stats.ratio(np.zeros((1, 2, 2)))[0])


def test_bootstrap_ci_of_a_constant_is_the_constant_and_covers_the_mean():
    r = stats.bootstrap_ci([3.0] * 10)
    assert r == {"value": 3.0, "lo": 3.0, "hi": 3.0}
    x = np.random.default_rng(1).normal(5, 1, size=400)
    r = stats.bootstrap_ci(x, n_boot=4000)
    se = x.std(ddof=1) / math.sqrt(len(x))
    # the percentile interval of a mean is close to mean +- 1.96 se for 400 normal items
    assert r["lo"] == pytest.approx(x.mean() - 1.96 * se, abs=0.3 * se)
    assert r["hi"] == pytest.approx(x.mean() + 1.96 * se, abs=0.3 * se)


def test_paired_bootstrap_by_hand():
    # seed 0: system is base + 1 on every item -> diff exactly 1 with a zero-width interval
    # seed 1: system is base + 3 on every item
    b0, b1 = np.array([0.0, 1.0, 5.0]), np.array([2.0, 2.0, 4.0, 0.0])
    r = stats.paired_bootstrap([(b0, b0 + 1), (b1, b1 + 3)], n_boot=500)
    assert [p["diff"] for p in r["per_seed"]] == [pytest.approx(1.0), pytest.approx(3.0)]
    assert [(p["lo"], p["hi"]) for p in r["per_seed"]] == [(pytest.approx(1.0), pytest.approx(1.0)), (pytest.approx(3.0), pytest.approx(3.0))]
    assert r["mean_diff"] == pytest.approx(2.0) and (r["n_up"], r["n_down"], r["n_seeds"]) == (2, 0, 2)
    # two-stage bootstrap: seeds {0,0}, {0,1}, {1,1} -> means 1, 2, 3: the interval spans [1, 3]
    assert r["lo"] == pytest.approx(1.0) and r["hi"] == pytest.approx(3.0) and r["excludes_zero"]
    h = 12.706204736174698 * math.sqrt(2) / math.sqrt(2)  # t_{0.975, df=1} * sd([1, 3]) / sqrt(2)
    assert (r["t_lo"], r["t_hi"]) == (pytest.approx(2 - h), pytest.approx(2 + h))


def test_paired_bootstrap_pairs_items_and_handles_ratios():
    rng = np.random.default_rng(0)
    base = rng.normal(size=200)
    system = base + 0.1  # a tiny shift, perfectly paired: any unpaired resampling would blur it
    r = stats.paired_bootstrap([(base, system)])
    assert r["per_seed"][0]["lo"] == pytest.approx(0.1) and r["per_seed"][0]["hi"] == pytest.approx(0.1)
    # pooled ratios: hallucinated / mentions per caption
    b = np.array([[1, 2], [1, 2], [0, 2]], dtype=float)  # 2/6
    s = np.array([[0, 2], [1, 2], [0, 2]], dtype=float)  # 1/6
    r = stats.paired_bootstrap([(b, s)], stat=stats.ratio)
    assert r["mean_diff"] == pytest.approx(1 / 6 - 2 / 6) and r["n_down"] == 1
    with pytest.raises(ValueError):
        stats.paired_bootstrap([(b, s[:2])])


def test_saturation_budget_by_hand():
    budgets = [1, 2, 5, 10, 100]
    scores = [[0.1, 0.5, 0.96, 0.99, 1.0],
              [0.1, 0.5, 0.94, 0.97, 1.0]]  # mean curve 0.1, 0.5, 0.95, 0.98, 1.0
    r = stats.saturation_budget(budgets, scores, share=0.95)
    assert r["plateau"] == pytest.approx(1.0) and r["budget"] == 5
    # seed resampling: {0,0} -> 5, {1,1} -> 10 (0.94 < 0.95), {0,1} -> 5
    assert (r["lo"], r["hi"]) == (5, 10)
    # with a floor (e.g. the zero-shot score) the share is of the gain over it: 0.5 + 0.95 * 0.5 = 0.975
    assert stats.saturation_budget(budgets, scores, share=0.95, floor=0.5)["budget"] == 10
    with pytest.raises(ValueError):
        stats.saturation_budget([1, 1], [[0, 1]])
