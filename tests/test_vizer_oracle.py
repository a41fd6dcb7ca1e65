"""benchmarks/vizer_oracle.py: its scene encoding, ridge fit, whitening, oracle AUC and colour read-out, by hand."""

import importlib.util
import random
from pathlib import Path

import pytest
import torch

from capalign.data import shapes

spec = importlib.util.spec_from_file_location("vizer_oracle", Path(__file__).parents[1] / "benchmarks" / "vizer_oracle.py")
O = importlib.util.module_from_spec(spec)
spec.loader.exec_module(O)


def _scenes(n, seed=0):
    rng = random.Random(seed)
    return [shapes.scene_from_objects([{"name": rng.choice(shapes.SHAPES), "color": rng.choice(list(shapes.COLORS)),
                                        "size": rng.choice(list(shapes.SIZES)), "position": p}
                                       for p in shapes.POSITIONS if rng.random() < 0.6] or
                                      [{"name": "circle", "color": "red", "size": "small", "position": "left"}]) for _ in range(n)]


def test_scene_vector_by_hand():
    sc = shapes.scene_from_objects([{"name": "square", "color": "blue", "size": "large", "position": "middle"}])
    x = O.scene_vector(sc).view(3, -1)
    k = len(shapes.COLORS)
    assert x[0].tolist() == [1] + [0] * (x.shape[1] - 1) and x[2].tolist() == x[0].tolist()  # left, right: empty
    want = torch.zeros(x.shape[1])
    want[1 + list(shapes.COLORS).index("blue")] = 1
    want[1 + k + shapes.SHAPES.index("square")] = 1
    want[1 + k + len(shapes.SHAPES) + list(shapes.SIZES).index("large")] = 1
    assert torch.equal(x[1], want)


def test_ridge_recovers_a_linear_map_and_the_whitener_whitens():
    torch.manual_seed(0)
    x, w = torch.randn(200, 5), torch.randn(5, 3)
    y = x @ w + 2.0
    got = O.ridge(x, y, lam=1e-6)
    assert torch.allclose(O.predict(got, x), y, atol=1e-3)
    f = torch.randn(500, 4) @ torch.randn(4, 4)
    mu, P = O.whitener(f)
    z = (f - mu) @ P
    assert torch.allclose(torch.cov(z.T), torch.eye(z.shape[1]), atol=1e-3)


def test_oracle_auc_is_one_for_features_made_of_the_scene_and_half_for_noise():
    torch.manual_seed(0)
    train, test = _scenes(400, 0), _scenes(200, 1)
    m = torch.randn(O.scene_vector(train[0]).shape[0], 16)
    feats = lambda ss: torch.stack([O.scene_vector(s) for s in ss]) @ m  # noqa: E731
    w = O.ridge(torch.stack([O.scene_vector(s) for s in train]), feats(train), lam=1e-4)
    ident = lambda f: f  # noqa: E731
    exact = O.oracle_aucs(feats(test), test, w, ident, seed=0)
    assert exact["colour"] == 1.0 and exact["shape"] == 1.0
    noise = O.oracle_aucs(torch.randn(200, 16), test, w, ident, seed=0)
    assert abs(noise["colour"] - 0.5) < 0.12


def test_readout_counts_cells_by_hand():
    a = shapes.scene_from_objects([{"name": "circle", "color": "red", "size": "small", "position": "left"}])
    b = shapes.scene_from_objects([{"name": "circle", "color": "blue", "size": "small", "position": "left"}])
    pred = torch.stack([O.scene_vector(a), O.scene_vector(a)])
    assert O.readout(pred, [a, b]) == pytest.approx(5 / 6)  # 6 cells; only image 1's left colour is wrong
