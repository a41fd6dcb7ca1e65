"""Shapes world: determinism, caption correctness, geometry, manifest schema, CLI."""

import json
import random

import pytest

from capalign import CapalignError
from capalign.cli import main
from capalign.config import parse_config
from capalign.data import shapes
from capalign.data.shapes import (
    COLORS,
    SHAPES,
    SIZES,
    ShapesConfig,
    factual_captions,
    render,
    sample_scene,
    styled_captions,
    web_captions,
    write_dataset,
)


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    a = write_dataset(tmp_path / "a", 40, seed=3)
    b = write_dataset(tmp_path / "b", 40, seed=3)
    c = write_dataset(tmp_path / "c", 40, seed=4)
    assert _files(a) == _files(b)
    fa, fc = _files(a), _files(c)
    assert fa["manifest.jsonl"] != fc["manifest.jsonl"]
    assert sum(fa[k] != fc[k] for k in fa if k.startswith("images/")) > 30
    # image i does not depend on n; splits are independent streams
    d = write_dataset(tmp_path / "d", 10, seed=3)
    assert _files(d)["images/000007.png"] == fa["images/000007.png"]
    e = write_dataset(tmp_path / "e", 10, seed=3, split="val")
    assert (e / "images" / "val-000007.png").read_bytes() != fa["images/000007.png"]


def _scenes(n=400, seed=0):
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(n)]


def test_factual_and_styled_captions_name_every_object():
    rng = random.Random(1)
    for scene in _scenes():
        caps = factual_captions(scene)
        assert len(caps) >= 3 and caps == factual_captions(scene)
        styled = styled_captions(scene, "humorous", rng) + styled_captions(scene, "romantic", rng)
        for cap in caps + styled:
            for o in scene.objects:
                assert f"{o.size} {o.color} {o.name}" in cap, (cap, o)
        canon = " and ".join(o.phrase() for o in scene.objects)
        if len(scene.objects) < 3:
            assert caps[0] == canon + "."


def test_canonical_examples():
    o = shapes.ShapeObject
    s = shapes.Scene((o("circle", "red", "small", "left", (0.1, 0.4, 0.2, 0.5)), o("square", "blue", "large", "middle", (0.35, 0.3, 0.63, 0.58)),
                      o("triangle", "green", "small", "right", (0.75, 0.4, 0.85, 0.5))))
    assert factual_captions(s)[0] == "a small red circle on the left, a large blue square in the middle and a small green triangle on the right."
    one = shapes.Scene((o("diamond", "yellow", "large", "middle", (0.35, 0.3, 0.63, 0.58)),))
    assert factual_captions(one)[0] == "a large yellow diamond in the middle."
    with pytest.raises(ValueError):
        styled_captions(one, "sarcastic", random.Random(0))


def test_style_vocabulary_is_distinct():
    rng = random.Random(2)
    for scene in _scenes(100):
        for cap in styled_captions(scene, "humorous", rng):
            assert any(w in cap for w in ("lol", "joke", "hilarious", "silly", "clown")), cap
        for cap in styled_captions(scene, "romantic", rng):
            assert any(w in cap for w in ("love", "heart", "tender", "darling")), cap


def test_web_captions_never_fully_describe():
    rng = random.Random(3)
    partial = total = 0
    for scene in _scenes():
        web = web_captions(scene, rng)
        assert len(web) >= 3 and len(set(web)) == len(web)
        for cap in web:
            total += 1
            partial += any(o.name in cap for o in scene.objects)
            for o in scene.objects:  # never size + colour + shape of any object, so never a full scene
                assert f"{o.size} {o.color} {o.name}" not in cap
    assert 0.3 < partial / total < 0.7


def test_objects_do_not_overlap_and_look_right():
    for scene in _scenes(300):
        boxes = [o.bbox(64) for o in scene.objects]
        assert [o.position for o in scene.objects] == sorted((o.position for o in scene.objects), key=shapes.POSITIONS.index)
        for a, b in zip(boxes, boxes[1:]):
            assert a[2] <= b[0]
        for bx in boxes:
            assert 0 <= bx[0] < bx[2] <= 64 and 0 <= bx[1] < bx[3] <= 64
    # the centre pixel of a square or circle has exactly its colour; sizes are clearly different
    for scene in _scenes(50):
        im = render(scene, 64)
        assert im.size == (64, 64) and im.mode == "RGB"
        for o in scene.objects:
            x0, y0, x1, y1 = o.bbox(64)
            if o.name in ("square", "circle"):
                assert im.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == COLORS[o.color]
            assert (x1 - x0 > 16) == (o.size == "large")
    assert render(_scenes(1)[0], 97).size == (97, 97)


def test_manifest_schema(tmp_path):
    d = write_dataset(tmp_path / "w", 12, seed=0, image_size=48)
    rows = [json.loads(line) for line in (d / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12
    for r in rows:
        assert set(r) == {"id", "image", "captions", "captions_web", "captions_humorous", "captions_romantic", "objects"}
        assert r["image"] == f"images/{r['id']}.png" and (d / r["image"]).is_file()
        for o in r["objects"]:
            assert set(o) == {"name", "attributes", "color", "size", "position", "bbox"}
            assert o["name"] in SHAPES and o["color"] in COLORS and o["size"] in SIZES
            assert o["attributes"] == [o["color"], o["size"]] and max(o["bbox"]) <= 48
        assert all(isinstance(c, str) and c for k in r if k.startswith("captions") for c in r[k])
    info = json.loads((d / "dataset.json").read_text())
    assert info["seed"] == 0 and info["n"] == 12 and info["image_size"] == 48 and "generator_version" in info


def test_config_validation():
    with pytest.raises(ValueError):
        ShapesConfig(out="x", n=0)
    with pytest.raises(ValueError):
        ShapesConfig(out="x", image_size=4)
    with pytest.raises(CapalignError, match="n must be"):
        parse_config(ShapesConfig, ["--out", "x", "--n", "-3"])


def test_cli(tmp_path, capsys):
    assert main(["shapes", "--out", str(tmp_path / "cli"), "--n", "5", "--seed", "1"]) == 0
    assert len(list((tmp_path / "cli" / "images").glob("*.png"))) == 5
    saved = [p for p in (tmp_path / "cli").glob("*config.json")]  # name is save_config's business
    assert saved and json.loads(saved[0].read_text())["seed"] == 1
    assert main(["shapes", "--out", str(tmp_path / "bad"), "--n", "0"]) == 2
    assert "error: invalid ShapesConfig" in capsys.readouterr().err
