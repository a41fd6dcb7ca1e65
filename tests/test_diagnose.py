"""The ViZer reward-validity diagnostic: corruptions carry exactly one error, AUC and R@1 by hand, and
`capalign vizer diagnose` end to end on a tiny model (the same pairs as a recomputation)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from capalign.cli import main
from capalign.data import shapes
from capalign.vizer.diagnose import auc, score_mapper
from capalign.vizer.mapper import Mapper

pytestmark = pytest.mark.usefixtures("one_thread")


def _scene(i: int):
    return shapes.sample_scene(random.Random(i))


@pytest.mark.parametrize("kind", shapes.CORRUPTIONS)
def test_each_corruption_is_exactly_one_error(kind):
    applied = 0
    for i in range(200):
        scene = _scene(i)
        bad = shapes.corrupt(scene, kind, random.Random(i))
        if bad is None:  # only where the kind cannot apply
            n, free = len(scene.objects), 3 - len(scene.objects)
            assert (kind == "drop" and n == 1) or (kind in ("add", "position") and free == 0)
            continue
        applied += 1
        before = {(o.name, o.color, o.size, o.position) for o in scene.objects}
        after = {(o.name, o.color, o.size, o.position) for o in bad.objects}
        if kind == "drop":
            assert after < before and len(before - after) == 1
        elif kind == "add":
            assert before < after and len(after - before) == 1
        else:
            assert len(before - after) == 1 and len(after - before) == 1  # one object changed ...
            (o,), (p,) = before - after, after - before
            changed = [f for f, x, y in zip(("shape", "colour", "size", "position"), o, p) if x != y]
            assert changed == [kind]  # ... in exactly the named attribute
    assert applied > 50


def test_scene_from_objects_round_trips_the_canonical_caption():
    row, _ = shapes.make_example(0, 5, split="test")
    assert shapes.factual_captions(shapes.scene_from_objects(row["objects"]))[0] == row["captions"][0]


def test_auc_by_hand():
    assert auc(torch.tensor([0.1, 0.5, 0.3]), torch.tensor([0.2, 0.4, 0.3])) == pytest.approx((1 + 0 + 0.5) / 3)


def test_score_mapper_by_hand():
    """An identity mapper on states equal to the features: perfect R@1; wrong states = other images'
    features, so AUC is 1 (cos 1 beats anything below it)."""
    torch.manual_seed(0)
    feats = torch.randn(8, 5)
    m = Mapper(5, 5, width=5, depth=1)
    with torch.no_grad():
        m.net[0].weight.copy_(torch.eye(5))
        m.net[0].bias.zero_()
    wrong = {"colour": (torch.tensor([0, 1, 2]), feats[[3, 4, 5]]), "drop": (torch.tensor([7]), feats[[0]])}
    r = score_mapper(m, feats, feats.clone(), wrong, group=4)
    assert r["auc"] == {"colour": 1.0, "drop": 1.0, "all": 1.0}
    assert r["pairs"] == {"colour": 3, "drop": 1, "all": 4}
    assert (r["retrieval_r1"], r["retrieval_images"], r["retrieval_chance"]) == (1.0, 8, 0.25)
    # a mapper that maps every caption to the same point cannot rank: R@1 is that of a constant guess
    with torch.no_grad():
        m.net[0].weight.zero_()
        m.net[0].bias.copy_(torch.ones(5))
    r = score_mapper(m, feats, feats.clone(), wrong, group=4)
    assert r["auc"]["all"] == 0.5  # all ties
    assert r["retrieval_r1"] == 0.25  # argmax picks one image per group: 1 hit of 4


def test_diagnose_cli_on_a_tiny_model(tiny_idefics3_path, tmp_path):
    data = shapes.write_dataset(tmp_path / "test", 12, seed=0, split="test")
    mdir = tmp_path / "mapper"
    assert main(["mapper", "train", "--model", str(tiny_idefics3_path), "--data", str(data), "--variant", "gt", "--width", "16",
                 "--samples", "12", "--out", str(mdir), "--device", "cpu", "--center", "true"]) == 0
    out = tmp_path / "diag.json"
    assert main(["vizer", "diagnose", "--model", str(tiny_idefics3_path), "--mappers", str(mdir), "--data", str(data),
                 "--group", "4", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    res = r["mappers"][str(mdir)]
    # the pair counts are those of the corruptions that apply to the 12 scenes
    rng, expect = random.Random(0), {k: 0 for k in shapes.CORRUPTIONS}
    for line in (data / "manifest.jsonl").read_text().splitlines():
        scene = shapes.scene_from_objects(json.loads(line)["objects"])
        for k in shapes.CORRUPTIONS:
            expect[k] += shapes.corrupt(scene, k, rng) is not None
    assert {k: v for k, v in res["pairs"].items() if k != "all"} == {k: v for k, v in expect.items() if v}
    assert 0 <= res["auc"]["all"] <= 1 and res["retrieval_images"] == 12 and res["center"] is True
    # a folder that is not a mapper: one line, exit 2
    assert main(["vizer", "diagnose", "--model", str(tiny_idefics3_path), "--mappers", str(tmp_path), "--data", str(data)]) == 2
