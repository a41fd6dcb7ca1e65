"""The ViZer reward-validity diagnostic: corruptions carry exactly one error, AUC and R@1 by hand and against
scikit-learn, and `capalign vizer diagnose` end to end on tiny models (the same pairs as a recomputation):
shapes-world scenes, and free-text captions (data/corrupt.py, tested in test_corrupt.py) on tiny Idefics3
and Qwen2-VL models."""

from __future__ import annotations

import json
import random

import pytest
import torch

from capalign.cli import main
from capalign.data import corrupt, shapes
from capalign.data.sources import Record
from capalign.vizer.diagnose import auc, score_mapper, text_captions
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


def test_auc_by_hand_on_a_fixed_set():
    """Three images: losses of the correct caption and of its corruptions, the AUCs worked out by hand."""
    feats = torch.eye(4)[:3]  # identity mapper below: loss = 1 - cos(state, e_i)
    m = _identity(4)

    def state(loss: float, i: int) -> torch.Tensor:  # a unit vector at cos = 1 - loss with e_i
        c = 1 - loss
        v = torch.zeros(4)
        v[i], v[3] = c, (1 - c * c) ** 0.5
        return v

    correct = torch.stack([state(0.1, 0), state(0.5, 1), state(0.3, 2)])
    wrong = {"colour": (torch.tensor([0, 1, 2]), torch.stack([state(0.2, 0), state(0.4, 1), state(0.3, 2)])),  # win, lose, tie
             "drop": (torch.tensor([1]), torch.stack([state(0.9, 1)]))}  # win
    r = score_mapper(m, feats, correct, wrong, group=3)
    assert r["auc"]["colour"] == pytest.approx(1.5 / 3, abs=1e-6) and r["auc"]["drop"] == 1.0
    assert r["auc"]["all"] == pytest.approx(2.5 / 4, abs=1e-6) and r["pairs"] == {"colour": 3, "drop": 1, "all": 4}


def test_auc_against_scikit_learn():
    """The AUC over all pairs equals scikit-learn's roc_auc_score computed per image (the correct caption the
    positive, its corruptions the negatives, score = -loss) and pooled with the image's pair count as weight."""
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    g = torch.Generator().manual_seed(0)
    n, d = 12, 6
    feats, correct = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    wrong = {"colour": (torch.arange(n), torch.randn(n, d, generator=g)), "noun": (torch.arange(0, n, 2), torch.randn(n // 2, d, generator=g)),
             "add": (torch.tensor([3, 5]), correct[[3, 5]].clone())}  # ties: the same state as the correct caption
    m = _identity(d)
    r = score_mapper(m, feats, correct, wrong, group=4)
    loss = lambda s, i: 1 - torch.nn.functional.cosine_similarity(s, feats[i], dim=-1).item()  # noqa: E731
    per_image, weights, per_kind = [], [], {}
    for i in range(n):
        neg = [loss(s, i) for kind, (idx, st) in wrong.items() for j, s in zip(idx.tolist(), st) if j == i]
        per_image.append(roc_auc_score([1] + [0] * len(neg), [-loss(correct[i], i)] + [-x for x in neg]))
        weights.append(len(neg))
    for kind, (idx, st) in wrong.items():  # one pair per image: roc_auc_score of that pair, averaged
        per_kind[kind] = sum(roc_auc_score([1, 0], [-loss(correct[i], i), -loss(s, i)]) for i, s in zip(idx.tolist(), st)) / len(idx)
    assert r["auc"]["all"] == pytest.approx(sum(a * w for a, w in zip(per_image, weights)) / sum(weights), abs=1e-6)
    assert {k: r["auc"][k] for k in wrong} == pytest.approx(per_kind, abs=1e-6) and r["auc"]["add"] == 0.5


def _identity(d: int) -> Mapper:
    m = Mapper(d, d, width=d, depth=1)
    with torch.no_grad():
        m.net[0].weight.copy_(torch.eye(d))
        m.net[0].bias.zero_()
    return m


def test_text_captions_counts_what_each_rule_skips():
    caps = {"a": ["A dog sitting on a couch.", "a brown dog on a sofa"],  # no colour in the caption: colour skipped
            "b": ["a red car"],  # one phrase: nothing to drop
            "c": [],  # no caption: the image is left out
            "d": ["a view of the mountains"]}  # no colour, no listed noun: every rule skipped
    pool = corrupt.phrase_pool([(k, v[0]) for k, v in caps.items() if v])
    skipped = {k: 0 for k in (*corrupt.TEXT_CORRUPTIONS, "no_caption")}
    of = text_captions(pool, corrupt.WORDS, random.Random(0), skipped)
    got = {k: of(Record(k, None, v)) for k, v in caps.items()}
    assert skipped == {"colour": 2, "noun": 1, "drop": 2, "add": 1, "no_caption": 1}
    assert [k for k, _ in got["a"]] == [None, "noun", "drop", "add"] and got["a"][0] == (None, "A dog sitting on a couch.")
    assert [k for k, _ in got["b"]] == [None, "colour", "noun", "add"] and got["c"] == [] and got["d"] == [(None, "a view of the mountains")]
    # the phrase added to a's caption comes from another image: b's "a red car" (a's own "a couch" is named by a)
    assert dict(got["a"])["add"] in ("A dog and a red car sitting on a couch.", "A dog sitting on a couch and a red car.")


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
    assert 0 <= res["auc"]["all"] <= 1 and res["retrieval_images"] == 12 and res["center"] is True and r["mode"] == "shapes"
    # a folder that is not a mapper: one line, exit 2
    assert main(["vizer", "diagnose", "--model", str(tiny_idefics3_path), "--mappers", str(tmp_path), "--data", str(data)]) == 2


FREE_TEXT = [  # COCO-like captions for 8 images (which images they are does not matter to what is checked)
    "A dog sitting on a couch.", "a man and a woman holding red umbrellas", "Two dogs, a cat and a bird on a bench.",
    "an orange cat next to a white car", "A red and white bus parked on the street.", "a view of the mountains",
    "a man with a dog on a leash", "a cat sleeping under an umbrella next to a yellow surfboard"]


@pytest.mark.parametrize("family", ["idefics3", "qwen2_vl"])
def test_diagnose_free_text_on_tiny_models(family, request, tmp_path):
    """A captioned set without shapes-world objects: `auto` picks the free-text corruptions; the pairs and the
    skipped counts are those of the rules applied in the same order with the same seed."""
    model = request.getfixturevalue(f"tiny_{family}_path")
    shapes.write_dataset(tmp_path / "imgs", 8, seed=1, split="test")
    data = tmp_path / "coco-like"
    data.mkdir()
    rows = [{"id": f"im{i}", "image": f"../imgs/images/test-{i:06d}.png", "captions": [c, "a photo"]} for i, c in enumerate(FREE_TEXT)]
    assert all((data / r["image"]).is_file() for r in rows)
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mdir = tmp_path / "mapper"
    assert main(["mapper", "train", "--model", str(model), "--data", str(data), "--variant", "gt", "--width", "16",
                 "--samples", "8", "--out", str(mdir), "--device", "cpu", "--max_new_tokens", "4"]) == 0
    out = tmp_path / "diag.json"
    assert main(["vizer", "diagnose", "--model", str(model), "--mappers", str(mdir), "--data", str(data), "--group", "4",
                 "--batch_size", "3", "--seed", "5", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    # the same rules, applied here in the order the command applies them
    rng, pool = random.Random(5), corrupt.phrase_pool([(x["id"], x["captions"][0]) for x in rows])
    pairs, skipped, first = {k: 0 for k in corrupt.TEXT_CORRUPTIONS}, {k: 0 for k in corrupt.TEXT_CORRUPTIONS}, None
    for x in rows:
        got = {k: corrupt.corrupt_text(x["captions"][0], k, rng, references=x["captions"], pool=[p for p in pool if p.image != x["id"]])
               for k in corrupt.TEXT_CORRUPTIONS}
        first = first or {"id": x["id"], "correct": x["captions"][0], **{k: v for k, v in got.items() if v is not None}}
        for k, v in got.items():
            pairs[k] += v is not None
            skipped[k] += v is None
    res = r["mappers"][str(mdir)]
    assert (r["mode"], r["corruptions"], r["images"]) == ("text", list(corrupt.TEXT_CORRUPTIONS), 8)
    assert r["skipped"] == {**skipped, "no_caption": 0} and all(v > 0 for v in pairs.values())
    assert {k: v for k, v in res["pairs"].items() if k != "all"} == pairs and res["pairs"]["all"] == sum(pairs.values())
    assert r["examples"][0] == first and len(r["examples"]) == 5
    assert all(0 <= v <= 1 for v in res["auc"].values()) and res["retrieval_images"] == 8
    # shapes corruptions need shapes-world rows: one error line
    assert main(["vizer", "diagnose", "--model", str(model), "--mappers", str(mdir), "--data", str(data), "--corruptions", "shapes",
                 "--device", "cpu"]) == 2
