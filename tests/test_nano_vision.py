"""The nano vision tower's contrastive pretraining (capalign/nano/vision.py): the losses by hand, the pixels the
captioner sees, the probe targets and the probes' ability to fail, the retrieval hit rule, and `nano vision` /
`nano train --vision_from` / `nano probe` end to end at tiny size."""

import json
import math

import pytest
import torch

from capalign.cli import main
from capalign.nano import vision as V


def _rows(objs_per_row):
    return [{"captions": [f"c{i}"], "objects": objs} for i, objs in enumerate(objs_per_row)]


def _obj(pos, color="red", name="circle", size="small"):
    return {"position": pos, "color": color, "name": name, "size": size}


def test_sigmoid_and_infonce_losses_match_a_hand_computation():
    torch.manual_seed(0)
    zi, zt = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1), torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    pos = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 1, 1]], dtype=torch.bool)  # images 1 and 2 share a caption
    t, b = torch.tensor(2.0).log(), torch.tensor(-1.0)
    dot = [[sum(zi[i, k].item() * zt[j, k].item() for k in range(4)) for j in range(3)] for i in range(3)]
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    want = -sum(math.log(sig((1 if pos[i, j] else -1) * (2 * dot[i][j] - 1))) for i in range(3) for j in range(3)) / 3
    assert V.contrastive_loss(zi, zt, pos, t, b, "sigmoid").item() == pytest.approx(want, rel=1e-5)

    def ce(rows, targets):  # cross-entropy with soft targets, averaged over rows
        return sum(-sum(targets[i][j] * (2 * rows[i][j] - math.log(sum(math.exp(2 * x) for x in rows[i]))) for j in range(3)) for i in range(3)) / 3

    tgt = [[float(pos[i, j]) / pos[i].sum().item() for j in range(3)] for i in range(3)]
    dotT = [[dot[j][i] for j in range(3)] for i in range(3)]
    tgtT = [[float(pos[j, i]) / pos[:, i].sum().item() for j in range(3)] for i in range(3)]
    assert V.contrastive_loss(zi, zt, pos, t, b, "infonce").item() == pytest.approx((ce(dot, tgt) + ce(dotT, tgtT)) / 2, rel=1e-5)


def test_pixels_are_what_the_nano_captioners_processor_gives():
    from capalign.models.tiny import IDEFICS3_SPECIALS, build_tokenizer, idefics3_processor
    from capalign.nano.train import _examples

    ims = [im for _, im in _examples(0, 3, "train", 144)]
    proc = idefics3_processor(build_tokenizer(IDEFICS3_SPECIALS, ["a red circle"], vocab_size=300), 144, 16, 3, 144, splitting=False)
    want = torch.cat([proc.image_processor([[im]], return_tensors="pt")["pixel_values"][:, 0] for im in ims])
    assert torch.equal(V.pixels(ims, 144), want)


def test_probe_targets_by_hand():
    rows = _rows([[_obj("left", "red", "circle", "small")], [_obj("middle", "blue", "square", "large"), _obj("right", "green", "triangle", "small")]])
    t = V.probe_targets(rows)
    assert t["colour"] == [["red", "none"], ["none", "blue"], ["none", "green"]]
    assert t["shape"] == [["circle", "none"], ["none", "square"], ["none", "triangle"]]
    assert t["size"] == [["small", "none"], ["none", "large"], ["none", "small"]]
    assert t["count"] == [["1", "2"]]


def test_linear_probes_read_what_the_features_hold_and_not_more():
    """Features that spell out each cell's colour give colour accuracy 1; the same features know nothing of shape,
    which stays near its majority baseline; noise features stay near the baselines for everything."""
    import random

    from capalign.data import shapes

    rng = random.Random(0)
    colours, names = list(shapes.COLORS), list(shapes.SHAPES)

    def make(n):
        rows = []
        for i in range(n):
            objs = [_obj(p, rng.choice(colours), rng.choice(names)) for p in shapes.POSITIONS if rng.random() < 0.6]
            rows.append({"captions": [str(i)], "objects": objs})
        x = torch.zeros(n, 3 * (len(colours) + 1))
        for i, r in enumerate(rows):
            for c, pos in enumerate(shapes.POSITIONS):
                o = next((o for o in r["objects"] if o["position"] == pos), None)
                x[i, c * (len(colours) + 1) + (colours.index(o["color"]) + 1 if o else 0)] = 1
        return rows, x

    (tr, xtr), (te, xte) = make(600), make(300)
    got = V.linear_probes(xtr, tr, xte, te)
    assert got["colour"]["accuracy"] == 1.0
    assert got["shape"]["accuracy"] < got["shape"]["majority"] + 0.25  # shape is only known to be there or not
    noise = V.linear_probes(torch.randn(600, 8), tr, torch.randn(300, 8), te)
    assert all(noise[k]["accuracy"] < noise[k]["majority"] + 0.1 for k in V.PROBES)


def test_tower_features_mean_and_strip_means_by_hand():
    """A fake tower whose patch states are their own (row, column) on a 6x6 patch grid: strip c is columns 2c, 2c+1."""
    class Fake(torch.nn.Module):
        def forward(self, pixel_values):
            idx = torch.arange(36, dtype=torch.float32)
            hs = torch.stack([idx // 6, idx % 6], -1).expand(len(pixel_values), 36, 2)
            return type("O", (), {"last_hidden_state": hs})()

    f, r = V.tower_features(Fake(), torch.zeros(2, 3, 4, 4))
    assert f[0].tolist() == [2.5, 2.5]  # F_I: the mean over all 36 patches, from the same pass
    assert r.shape == (2, 3, 2)
    assert r[0].tolist() == [[2.5, 0.5], [2.5, 2.5], [2.5, 4.5]]  # mean row 2.5 everywhere; mean column of each strip


def test_region_probes_read_each_cell_from_its_own_region_only():
    """Region c holds cell c's colour one-hot: every cell's colour is read (accuracy 1). Shift the regions by one
    (region c holds cell c+1's colour) and the probe of cell c, seeing only region c, is near its baseline."""
    import random

    from capalign.data import shapes

    rng = random.Random(1)
    colours = list(shapes.COLORS)

    def make(n, shift):
        rows = [{"captions": [str(i)], "objects": [_obj(p, rng.choice(colours)) for p in shapes.POSITIONS if rng.random() < 0.6]} for i in range(n)]
        x = torch.zeros(n, 3, len(colours) + 1)
        for i, r in enumerate(rows):
            for c in range(3):
                pos = shapes.POSITIONS[(c + shift) % 3]
                o = next((o for o in r["objects"] if o["position"] == pos), None)
                x[i, c, colours.index(o["color"]) + 1 if o else 0] = 1
        return rows, x

    (tr, xtr), (te, xte) = make(600, 0), make(300, 0)
    assert V.region_probes(xtr, tr, xte, te)["colour"]["accuracy"] == 1.0
    (tr, xtr), (te, xte) = make(600, 1), make(300, 1)
    got = V.region_probes(xtr, tr, xte, te)["colour"]
    assert got["accuracy"] < got["majority"] + 0.1


def test_retrieval_counts_identical_captions_as_hits():
    class Fake:
        def eval(self):
            return self

        def embed(self, pix, texts):
            return pix, self.text(texts)

        def text(self, texts):  # caption "a" -> e0, "b" -> e1
            return torch.stack([torch.eye(2)[0 if t == "a" else 1] for t in texts])

    rows = [{"captions": [c]} for c in ("a", "a", "b")]
    pix = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, -0.1]])  # image 2 looks like an "a" image: a miss both ways
    r = V.retrieval_r1(Fake(), rows, pix)
    assert r["i2t"] == pytest.approx(2 / 3)  # images 0 and 1 retrieve caption 0: their own caption's text
    assert r["t2i"] == pytest.approx(2 / 3)  # caption "b" retrieves image 0 or 1, an "a" image


def test_lit_trains_the_text_side_only():
    from transformers import Idefics3VisionConfig, Idefics3VisionTransformer

    rows, ims = V._examples(0, 16, "train", 48)
    pix = V.pixels(ims, 48)
    tower = Idefics3VisionTransformer(Idefics3VisionConfig(**V.vision_shape(48, 16, 32, 1)))
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    dual, losses = V.train_dual(tower, rows, pix, 3, 8, 1e-2, 0, "sigmoid", 32, 1, 16, freeze_tower=True)
    assert all(torch.equal(v, tower.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in tower.parameters())  # handed back trainable
    V.train_dual(tower, rows, pix, 3, 8, 1e-2, 0, "sigmoid", 32, 1, 16)
    assert not all(torch.equal(v, tower.state_dict()[k]) for k, v in before.items())


TINY = ["--image_size", "48", "--patch_size", "16", "--vision_width", "32", "--vision_layers", "1"]


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("nv") / "vision"
    assert main(["nano", "vision", "--out", str(out), "--n_train", "32", "--steps", "3", "--batch_size", "8", "--text_width", "32",
                 "--text_layers", "1", "--embed_dim", "16", "--probe_train", "40", "--probe_test", "20", "--lit_steps", "2", *TINY]) == 0
    return out


def test_nano_vision_writes_tower_and_result(vision_dir):
    r = json.loads((vision_dir / V.RESULT_FILE).read_text())
    t = r["towers"]["contrastive"]
    assert set(t["probes"]) == set(V.PROBES) and {"i2t", "t2i"} <= set(t["lit_r1"]) and "r1" in t
    assert set(t["region_probes"]) == {"colour", "shape", "size"} and all(0 <= v["accuracy"] <= 1 for v in t["region_probes"].values())
    assert all(0 <= t["probes"][k]["accuracy"] <= 1 for k in V.PROBES)
    assert json.loads((vision_dir / V.META_FILE).read_text())["vision"]["hidden_size"] == 32


def test_nano_train_starts_from_the_tower_and_can_freeze_it(vision_dir, tmp_path, cli):
    from safetensors.torch import load_file

    from capalign.models import load_vlm

    want = load_file(vision_dir / V.TOWER_FILE)
    args = ["nano", "train", "--n_train", "16", "--n_val", "4", "--steps", "2", "--batch_size", "4", "--text_width", "32",
            "--text_layers", "1", "--vocab_size", "300", "--scale_factor", "1", *TINY, "--vision_from", str(vision_dir)]
    assert main([*args, "--out", str(tmp_path / "frozen"), "--freeze_vision", "true"]) == 0
    got = load_vlm(str(tmp_path / "frozen"), device="cpu", dtype="float32").model.model.vision_model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items())
    assert main([*args, "--out", str(tmp_path / "tuned")]) == 0
    got = load_vlm(str(tmp_path / "tuned"), device="cpu", dtype="float32").model.model.vision_model.state_dict()
    assert not all(torch.equal(got[k], v) for k, v in want.items())
    # the probe reads a captioner folder's tower too
    r = cli("nano", "probe", "--model", str(tmp_path / "frozen"), "--probe_train", "40", "--probe_test", "20", "--lit_steps", "0", "--out", str(tmp_path / "p.json"))
    got = json.loads((tmp_path / "p.json").read_text())
    assert r.code == 0 and got["probes"]["count"]["accuracy"] >= 0 and got["lit_r1"] is None  # --lit_steps 0: probes only
    # a tower of another shape is refused in one line
    bad = cli(*[a if a != "32" else "48" for a in args[:-2]], "--vision_from", str(vision_dir), "--out", str(tmp_path / "bad"))
    assert bad.code == 2 and "hidden_size (32 vs 48)" in bad.error_lines[0]
    assert cli("nano", "train", "--vision_from", str(tmp_path), "--out", str(tmp_path / "bad2"), "--steps", "1").code == 2
