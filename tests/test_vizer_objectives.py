"""ViZer mapper objectives beyond the paper (cosine = the paper, infonce, late interaction) and region pooling.

Each objective's loss is worked out by hand on fixed small tensors; `vizer train` and `vizer diagnose` use the
objective a mapper was saved with; a mapper saved before objectives existed loads as the paper's."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from capalign.cli import main
from capalign.data import shapes
from capalign.models import load_vlm
from capalign.models.base import grid_shape, region_means
from capalign.models.qwen2_vl import patch_positions
from capalign.vizer.diagnose import score_mapper
from capalign.vizer.mapper import Mapper, fit_mapper
from capalign.vizer.train import VizerObjective

pytestmark = pytest.mark.usefixtures("one_thread")

R2 = 1 / math.sqrt(2)
STATES = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # two pooled captions
FEATS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # their two images
# late interaction: 2 regions per image; caption 0 has tokens (1,0), (1,1) and one padding token, caption 1 one token (0,1)
TOKENS = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]], [[0.0, 1.0], [5.0, 5.0], [5.0, 5.0]]])
WEIGHTS = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
REGION_FEATS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]])  # image 0: regions (1,0), (0,1); image 1: (1,0) twice


def identity(objective="cosine", temperature=0.07, regions=1) -> Mapper:
    m = Mapper(2, 2, width=2, depth=1, objective=objective, temperature=temperature, regions=regions)
    with torch.no_grad():
        m.net[0].weight.copy_(torch.eye(2))
        m.net[0].bias.zero_()
    return m.eval()


def ce(logits: list[float], positive: int) -> float:
    return -logits[positive] + math.log(sum(math.exp(x) for x in logits))


COSINE = ((1 - 1) + (1 - R2)) / 2
# InfoNCE, temperature 0.5: cos matrix [[1, 0], [1/sqrt2, 1/sqrt2]] / 0.5; rows = captions, columns = images
L = [[2.0, 0.0], [2 * R2, 2 * R2]]
INFONCE = ((ce(L[0], 0) + ce(L[1], 1)) / 2 + (ce([L[0][0], L[1][0]], 0) + ce([L[0][1], L[1][1]], 1)) / 2) / 2
# late: caption 0's tokens best-match cos 1 and 1/sqrt2 (the padding token is not counted); caption 1's token: cos 0
LATE = ((1 - (1 + R2) / 2) + (1 - 0)) / 2


def test_each_objective_by_hand():
    assert identity().loss(STATES, FEATS).item() == pytest.approx(COSINE, abs=1e-6)
    assert identity("infonce", temperature=0.5).loss(STATES, FEATS).item() == pytest.approx(INFONCE, abs=1e-6)
    late = identity("late", regions=2)
    assert late.loss(TOKENS, REGION_FEATS, WEIGHTS).item() == pytest.approx(LATE, abs=1e-6)
    assert late.pair_loss(TOKENS, REGION_FEATS, WEIGHTS).tolist() == pytest.approx([1 - (1 + R2) / 2, 1.0], abs=1e-6)
    # the all-pairs matrix (retrieval) has the pair scores on its diagonal; caption 1 against image 0: its token's best region (0,1)
    sim = late.similarity_matrix(TOKENS, REGION_FEATS, WEIGHTS)
    assert torch.allclose(sim, torch.tensor([[(1 + R2) / 2, (1 + R2) / 2], [1.0, 0.0]]), atol=1e-6)
    # token states given to a pooled objective are pooled by their weights (caption_states' mean over content tokens)
    pooled = torch.stack([TOKENS[0, :2].mean(0), TOKENS[1, 0]])
    assert identity().loss(TOKENS, FEATS, WEIGHTS).item() == pytest.approx(identity().loss(pooled, FEATS).item(), abs=1e-6)
    with pytest.raises(ValueError, match="objective"):
        Mapper(2, 2, objective="mse")


def test_old_mapper_without_objective_loads_as_the_paper(tmp_path):
    """A mapper saved before objectives existed (config.json: dims only) is the paper's cosine mapper."""
    identity("infonce", temperature=0.5).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"in_dim": 2, "out_dim": 2, "width": 2, "depth": 1}))
    m = Mapper.from_pretrained(tmp_path).eval()
    assert (m.objective, m.regions) == ("cosine", 1)
    assert m.loss(STATES, FEATS).item() == pytest.approx(COSINE, abs=1e-6)
    r = score_mapper(m, FEATS, STATES, {"colour": (torch.tensor([0]), STATES[[1]])}, group=2)
    assert r["auc"]["colour"] == 1.0 and r["retrieval_r1"] == 0.5  # caption 1 (1,1) ties both images: argmax picks image 0


class FakeVLM:
    """caption_states / caption_token_states return the fixed tensors above (what vizer train's objective reads)."""

    def __init__(self):
        self.model = torch.nn.Linear(1, 1)

    def caption_states(self, enc, caps):
        return STATES

    def caption_token_states(self, enc, caps):
        return TOKENS, WEIGHTS


@pytest.mark.parametrize("objective,feats,expect", [("cosine", FEATS, COSINE), ("infonce", FEATS, INFONCE), ("late", REGION_FEATS, LATE)])
def test_vizer_reward_uses_the_saved_objective(objective, feats, expect, tmp_path):
    """vizer train's loss module, with a mapper read back from disk, computes that mapper's objective (the
    three values differ, so a module that fell back to the paper's cosine fails)."""
    identity(objective, temperature=0.5, regions=2 if objective == "late" else 1).save_pretrained(tmp_path)
    loss, _ = VizerObjective(FakeVLM(), Mapper.from_pretrained(tmp_path).eval())(SimpleNamespace(features=feats), None)
    assert loss.item() == pytest.approx(expect, abs=1e-6)
    assert len({round(COSINE, 4), round(INFONCE, 4), round(LATE, 4)}) == 3


def test_fit_mapper_objectives_learn():
    """Each objective fits a linear map well beyond the caption-blind baseline."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 4, generator=g)
    states = torch.randn(256, 6, generator=g)
    m, st = fit_mapper(states, states @ W, width=16, epochs=30, batch_size=32, lr=1e-2, objective="infonce", temperature=0.1)
    assert m.objective == "infonce" and st["val_cos"] > 0.8 and st["beats_mean_feature_baseline"]
    tokens = torch.randn(256, 3, 6, generator=g)  # region r of image n = W applied to token r
    m, st = fit_mapper(tokens, (tokens @ W).flatten(1), width=16, epochs=30, batch_size=32, lr=1e-2, objective="late", regions=3,
                       weights=torch.ones(256, 3))
    assert (m.regions, m.feature_dim) == (3, 12) and st["val_cos"] > 0.8 and st["beats_mean_feature_baseline"]


def test_region_means_by_hand():
    """A 2 x 4 patch grid cut into 1 x 3 regions: columns 0-1, 2, 3 (column c in region c*3//4)."""
    rows, cols = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    states = torch.arange(8.0)[:, None]
    assert region_means(states, rows, cols, 2, 4, (1, 3)).tolist() == [(0 + 1 + 4 + 5) / 4, (2 + 6) / 2, (3 + 7) / 2]
    assert grid_shape("grid2x2") == (2, 2) and grid_shape("mean") is None
    with pytest.raises(Exception, match="unknown pooling"):
        grid_shape("grid0x2")


def test_idefics3_grid_pooling_of_the_global_image(tiny_idefics3_path):
    vlm = load_vlm(str(tiny_idefics3_path), device="cpu", pooling="grid1x2")
    p = vlm.model.config.vision_config.patch_size
    side = vlm.model.config.vision_config.image_size // p
    h = torch.randn(1, side * side, 3)  # one sub-image (no splitting), its patches row by row
    inputs = {"pixel_values": torch.ones(1, 1, 3, side * p, side * p), "pixel_attention_mask": torch.ones(1, 1, side * p, side * p, dtype=torch.bool)}
    got = vlm.pool(SimpleNamespace(last_hidden_state=h), inputs, "grid1x2")
    grid = h[0].view(side, side, 3)
    assert torch.allclose(got[0], torch.cat([grid[:, : side // 2].mean((0, 1)), grid[:, side // 2 :].mean((0, 1))]), atol=1e-6)
    img = Image.new("RGB", (64, 64), (200, 30, 30))
    assert vlm.encode([img]).features.shape == (1, vlm.feature_size) and vlm.feature_size == 2 * vlm.vision_hidden_size


def test_qwen_patch_positions_match_the_processor(tiny_qwen2_vl_path):
    """A left-dark, right-bright image: the patches patch_positions puts in the left half are the dark ones."""
    vlm = load_vlm(str(tiny_qwen2_vl_path), device="cpu", pooling="grid1x2")
    img = Image.new("RGB", (112, 112), (0, 0, 0))
    img.paste((255, 255, 255), (56, 0, 112, 112))
    batch = vlm.processor(text=vlm.prompt_texts(1, vlm.prompt), images=[img], return_tensors="pt")
    _, hh, ww = batch["image_grid_thw"][0].tolist()
    rows, cols = patch_positions(hh, ww, vlm.model.config.vision_config.spatial_merge_size, len(batch["pixel_values"]))
    bright = batch["pixel_values"].mean(-1) > 0
    assert ww >= 4 and torch.equal(bright, cols >= ww // 2) and sorted(set(rows.tolist())) == list(range(hh))
    assert vlm.encode([img]).features.shape == (1, 2 * vlm.vision_hidden_size)


def test_qwen2_5_grid_pooling_undoes_the_window_order(tiny_qwen2_5_vl_path):
    """Qwen2.5-VL's encoder returns merge blocks in window order: pooling states permuted that way gives the
    region means of the states in the processor's order."""
    from transformers.vision_utils import get_vision_window_index

    vlm = load_vlm(str(tiny_qwen2_5_vl_path), device="cpu", pooling="grid1x2")
    vc = vlm.model.config.vision_config
    thw = torch.tensor([[1, 8, 8]])
    order, _ = get_vision_window_index(thw, vc.spatial_merge_size, vc.window_size, vc.patch_size)
    assert not torch.equal(order, torch.arange(len(order)))  # several windows: the order is not the identity
    states = torch.randn(64, 3)
    unit = vc.spatial_merge_size**2
    permuted = states.view(-1, unit, 3)[order].flatten(0, 1)  # as the model's permute_input_for_window_attn
    got = vlm.pool(SimpleNamespace(last_hidden_state=permuted), {"image_grid_thw": thw}, "grid1x2")
    rows, cols = patch_positions(8, 8, vc.spatial_merge_size, 64)
    expect = torch.cat([states[cols < 4].mean(0), states[cols >= 4].mean(0)])
    assert torch.allclose(got[0], expect, atol=1e-6)


def test_late_mapper_train_vizer_and_diagnose_on_a_tiny_model(tiny_idefics3_path, tmp_path):
    """mapper train --objective late --pooling grid1x2 records its objective; vizer train's first-step loss is that
    objective on the frozen model's greedy captions (LoRA starts as the identity); diagnose scores it as late."""
    data = shapes.write_dataset(tmp_path / "data", 8, seed=0, split="test")
    mdir = tmp_path / "mapper"
    assert main(["mapper", "train", "--model", str(tiny_idefics3_path), "--data", str(data), "--variant", "gt", "--width", "16",
                 "--samples", "8", "--out", str(mdir), "--device", "cpu", "--objective", "late", "--pooling", "grid1x2"]) == 0
    meta = json.loads((mdir / "mapper_meta.json").read_text())
    assert (meta["objective"], meta["regions"], meta["pooling"]) == ("late", 2, "grid1x2")
    out = tmp_path / "vizer"
    assert main(["vizer", "train", "--model", str(tiny_idefics3_path), "--mapper", str(mdir), "--images", str(data), "--out", str(out),
                 "--max_steps", "1", "--batch_size", "4", "--max_new_tokens", "4", "--device", "cpu", "--save_every", "0"]) == 0
    first = json.loads((out / "vizer_result.json").read_text())["history"][0]["loss"]
    vlm = load_vlm(str(tiny_idefics3_path), device="cpu", pooling="grid1x2", prompt=meta["prompt"] or "")
    mapper = Mapper.from_pretrained(mdir).eval()
    images = [Image.open(data / "images" / f"test-{i:06d}.png").convert("RGB") for i in range(4)]
    with torch.no_grad():
        enc = vlm.encode(images)
        tokens, weights = vlm.caption_token_states(enc, vlm.generate(enc, max_new_tokens=4))
        assert first == pytest.approx(mapper.loss(tokens, enc.features, weights).item(), abs=1e-5)
    # diagnose the late mapper together with a mean-pooled paper mapper: one pass per pooling, each as it was trained,
    # the paper mapper's numbers the same as when it is diagnosed alone
    paper = tmp_path / "paper"
    assert main(["mapper", "train", "--model", str(tiny_idefics3_path), "--data", str(data), "--variant", "gt", "--width", "16",
                 "--samples", "8", "--out", str(paper), "--device", "cpu"]) == 0
    both, alone = tmp_path / "both.json", tmp_path / "alone.json"
    for out_file, mappers in ((both, [str(mdir), str(paper)]), (alone, [str(paper)])):
        assert main(["vizer", "diagnose", "--model", str(tiny_idefics3_path), "--mappers", *mappers, "--data", str(data),
                     "--group", "4", "--out", str(out_file)]) == 0
    res = json.loads(both.read_text())["mappers"]
    assert list(res) == [str(mdir), str(paper)]
    assert (res[str(mdir)]["objective"], res[str(mdir)]["pooling"], res[str(paper)]["objective"]) == ("late", "grid1x2", "cosine")
    assert 0 <= res[str(mdir)]["auc"]["all"] <= 1 and res[str(mdir)]["retrieval_images"] == 8
    assert res[str(paper)] == json.loads(alone.read_text())["mappers"][str(paper)]


def test_states_layer_flows_from_mapper_train_to_vizer_train_and_diagnose(tiny_idefics3_path, tmp_path, cli):
    """mapper train --states_layer 1 records it (and caches its states apart from the last layer's); vizer train's
    first-step loss is the mapper's loss on that layer's states; diagnose scores it on them, the paper mapper beside it
    unchanged."""
    data = shapes.write_dataset(tmp_path / "data", 8, seed=0, split="test")
    mdir, paper, cache = tmp_path / "m0", tmp_path / "paper", tmp_path / "cache"
    common = ["mapper", "train", "--model", str(tiny_idefics3_path), "--data", str(data), "--variant", "gt", "--width", "16",
              "--samples", "8", "--device", "cpu", "--cache_dir", str(cache)]
    assert main([*common, "--out", str(paper)]) == 0
    assert main([*common, "--out", str(tmp_path / "m-emb"), "--states_layer", "0"]) == 0
    assert main([*common, "--out", str(mdir), "--states_layer", "1"]) == 0
    assert json.loads((mdir / "mapper_meta.json").read_text())["states_layer"] == 1
    assert len(list(cache.glob("*.safetensors"))) == 3  # one cache per layer
    out = tmp_path / "vizer"
    r = cli("vizer", "train", "--model", tiny_idefics3_path, "--mapper", tmp_path / "m-emb", "--images", data, "--out", out, "--device", "cpu")
    assert r.code == 2 and "reads states_layer 0, the token embeddings" in r.error_lines[0]  # nothing to train through
    assert main(["vizer", "train", "--model", str(tiny_idefics3_path), "--mapper", str(mdir), "--images", str(data), "--out", str(out),
                 "--max_steps", "1", "--batch_size", "4", "--max_new_tokens", "4", "--device", "cpu", "--save_every", "0"]) == 0
    first = json.loads((out / "vizer_result.json").read_text())["history"][0]["loss"]
    meta = json.loads((mdir / "mapper_meta.json").read_text())
    vlm = load_vlm(str(tiny_idefics3_path), device="cpu", prompt=meta["prompt"] or "", states_layer=1)
    mapper = Mapper.from_pretrained(mdir).eval()
    images = [Image.open(data / "images" / f"test-{i:06d}.png").convert("RGB") for i in range(4)]
    with torch.no_grad():
        enc = vlm.encode(images)
        caps = vlm.generate(enc, max_new_tokens=4)
        want = mapper.loss(vlm.caption_states(enc, caps), enc.features).item()
        last = load_vlm(str(tiny_idefics3_path), device="cpu", prompt=meta["prompt"] or "")
        other = mapper.loss(last.caption_states(enc, caps), enc.features).item()
    assert first == pytest.approx(want, abs=1e-5) and abs(first - other) > 1e-4
    both, alone = tmp_path / "both.json", tmp_path / "alone.json"
    for out_file, mappers in ((both, [str(mdir), str(paper)]), (alone, [str(paper)])):
        assert main(["vizer", "diagnose", "--model", str(tiny_idefics3_path), "--mappers", *mappers, "--data", str(data),
                     "--group", "4", "--out", str(out_file)]) == 0
    res = json.loads(both.read_text())["mappers"]
    assert (res[str(mdir)]["states_layer"], res[str(paper)]["states_layer"]) == (1, -1)
    assert res[str(paper)] == json.loads(alone.read_text())["mappers"][str(paper)]
