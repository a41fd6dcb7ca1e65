"""Preference pairs (capalign.data.preferences): the shapes world's styled captions, every loader, splits,
nested budgets, the restricted unpickler, bad input as counted skips or one-line errors."""

import io
import json
import os
import pickle
import random

import pytest
from PIL import Image

from capalign import CapalignError
from capalign.cli import main
from capalign.data import shapes, shapes_style
from capalign.data.flickrstyle import read_name_list
from capalign.data.pairs import split_groups
from capalign.data.preferences import budget_subset, open_preferences, parse_budget
from capalign.data.style_fixtures import flickr_name, write_flickrstyle, write_newyorker
from capalign.metrics.grounding import grounding


def _scenes(n, seed=0):
    rng = random.Random(seed)
    return [shapes.sample_scene(rng) for _ in range(n)]


# ---------------------------------------------------------------- the shapes world
def _literal_chunks(frame):
    """The fixed text of a frame outside {all} and [a|b] choices (what identifies it in a caption)."""
    import re

    return [c.strip(" ,:") for c in re.split(r"\{all\}|\[[^\]]*\]", frame) if len(c.strip(" ,:")) >= 8]


def test_every_styled_caption_names_every_object_correctly():
    rng = random.Random(1)
    caps, objs = [], []
    for scene in _scenes(300):
        objects = [o.to_dict(144) for o in scene.objects]
        for held in (False, True):
            row = [shapes_style.styled_caption(scene, s, rng, held) for s in shapes.STYLES]
            if held:  # held-in factual captions are shapes.factual_captions (tested in test_shapes.py; grounded below)
                row.append(shapes_style.factual_caption(scene, rng, held))
            else:
                caps.append(shapes_style.factual_caption(scene, rng, held))
                objs.append(objects)
            for cap in row:
                words = cap.replace(",", " ").replace(".", " ").split()
                # one position phrase per object, each right after that object's size, colour and shape
                assert sum(words.count(w) for w in shapes_style.POSITION_WORDS) == len(scene.objects), cap
                for o in scene.objects:
                    assert any(f"{o.size} {o.color} {o.name} {w}" in cap for w in shapes_style.WHERE_FORMS[o.position]), (cap, o)
                caps.append(cap)
                objs.append(objects)
    g = grounding(caps, objs)
    for level in ("name", "attr"):
        assert g[level]["recall"] == 1.0 and g[level]["precision"] == 1.0 and g[level]["chair_s"] == 0.0, g[level]
    assert all(r["attr"]["hallucinated"] == 0 and r["attr"]["recall"] == 1.0 for r in g["per_caption"])


def test_templates_are_many_and_held_out_ones_are_disjoint():
    counts = shapes_style.template_counts()
    for s in shapes.STYLES:
        assert counts[s]["in"] >= 1000 and counts[s]["out"] >= 100, counts
        for parts in (shapes_style.FRAMES, shapes_style.OPENERS, shapes_style.CLOSERS):
            shared = set(parts[s]["in"]) & set(parts[s]["out"]) - {"", "."}
            assert not shared, shared
    # a generated test split uses held-out frames only; the train split never does
    prefs = open_preferences("shapes:40", seed=3)
    held = {s: [c for f in shapes_style.FRAMES[s]["out"] for c in _literal_chunks(f)] for s in shapes.STYLES}
    held_in = {s: [c for f in shapes_style.FRAMES[s]["in"] for c in _literal_chunks(f)] for s in shapes.STYLES}
    for p in prefs.train:
        assert not any(c in p.chosen for c in held[p.style]) and any(c in p.chosen for c in held_in[p.style]), p.chosen
        assert p.rejected in shapes.factual_captions(shapes.scene_from_objects(p.objects))
    for p in prefs.test:
        assert any(c in p.chosen for c in held[p.style]) and not any(c in p.chosen for c in held_in[p.style]), p.chosen
        assert p.meta["heldout_templates"] and p.rejected not in p.references


def test_shapes_spec_matches_the_shapes_command(tmp_path):
    """shapes:N[:SEED] gives the scenes `capalign shapes --split style` writes; the folder gives the same pairs."""
    d = shapes.write_dataset(tmp_path / "w", 12, seed=5, split="style", image_size=144)
    a, b = open_preferences("shapes:12:5", seed=1), open_preferences(str(d), seed=1)
    rows = {json.loads(l)["id"]: json.loads(l) for l in (d / "manifest.jsonl").read_text().splitlines()}
    for pa, pb in zip(a.train + a.test, b.train + b.test):
        assert (pa.id, pa.chosen, pa.rejected, pa.group, pa.objects, pa.references) == (pb.id, pb.chosen, pb.rejected, pb.group, pb.objects, pb.references)
        assert pa.objects == rows[pa.group]["objects"] and pa.references == rows[pa.group]["captions"]
    assert a.train[0].load_image().tobytes() == Image.open(d / "images" / f"{a.train[0].group}.png").convert("RGB").tobytes()
    assert len(a.train) + len(a.test) == 24 and {p.style for p in a.train} == set(shapes.STYLES)


# ---------------------------------------------------------------- splits and budgets
def test_splits_are_by_image_seeded_and_the_same_for_every_style():
    full = open_preferences("shapes:50", seed=0)
    hum, rom = open_preferences("shapes:50", "humorous", seed=0), open_preferences("shapes:50", "romantic", seed=0)
    test_groups = {p.group for p in full.test}
    assert len(test_groups) == 10 and not test_groups & {p.group for p in full.train}
    assert {p.group for p in hum.test} == {p.group for p in rom.test} == test_groups
    assert [p.id for p in open_preferences("shapes:50", seed=0).test] == [p.id for p in full.test]
    assert {p.group for p in open_preferences("shapes:50", seed=1).test} != test_groups
    assert split_groups(["b", "a", "c", "a"], 0, 0.5) == split_groups(["c", "b", "a"], 0, 0.5)


def test_budgets_are_nested_and_checked():
    train = open_preferences("shapes:250", "humorous").train  # 200 pairs
    subsets = {b: budget_subset(train, b, seed=7) for b in ("1%", "2%", "5%", "10%", "50%", "100%")}
    assert [len(s) for s in subsets.values()] == [2, 4, 10, 20, 100, 200]
    ids = [{p.id for p in s} for s in subsets.values()]
    assert all(a < b for a, b in zip(ids, ids[1:]))  # strictly nested
    assert {p.id for p in budget_subset(list(reversed(train)), "5%", seed=7)} == ids[2]  # input order does not matter
    assert {p.id for p in budget_subset(train, "5%", seed=8)} != ids[2]
    assert [p.id for p in budget_subset(train, 20, seed=7)] == [p.id for p in subsets["10%"]]
    for bad, msg in (("0.1%", "below one pair"), ("201", "larger than the 200"), ("150%", r"\(0%, 100%\]"), ("ten", "not a percentage"), (0, "below one")):
        with pytest.raises(CapalignError, match=msg):
            parse_budget(bad, 200)


# ---------------------------------------------------------------- FlickrStyle10K and the unpickler
class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_restricted_unpickler(tmp_path):
    names = ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg"]
    for proto in range(0, 6):
        (tmp_path / "ok.p").write_bytes(pickle.dumps(names, protocol=proto))
        assert read_name_list(tmp_path / "ok.p") == names
    # Python 2 pickles store str with the STRING / SHORT_BINSTRING opcodes
    (tmp_path / "py2.p").write_bytes(b"(lp0\nS'1000268201_693b08cb0e.jpg'\np1\naS'1001773457_577c3a7d70.jpg'\np2\na.")
    assert read_name_list(tmp_path / "py2.p") == names
    (tmp_path / "py2b.p").write_bytes(b"\x80\x02]q\x00(U\x05a.jpgq\x01U\x05b.jpgq\x02e.")
    assert read_name_list(tmp_path / "py2b.p") == ["a.jpg", "b.jpg"]
    evil = _Evil()
    evil.target = tmp_path / "pwned"
    (tmp_path / "evil.p").write_bytes(pickle.dumps([evil, "a.jpg"]))
    with pytest.raises(CapalignError, match="refusing to unpickle.*STACK_GLOBAL|refusing to unpickle.*GLOBAL") as e:
        read_name_list(tmp_path / "evil.p")
    assert "\n" not in str(e.value) and not evil.target.exists()
    for obj, what in (({"a": "b"}, "EMPTY_DICT"), ([1, 2], "BININT1"), (("a",), "TUPLE1")):
        (tmp_path / "x.p").write_bytes(pickle.dumps(obj, protocol=2))
        with pytest.raises(CapalignError, match=what):
            read_name_list(tmp_path / "x.p")
    (tmp_path / "s.p").write_bytes(pickle.dumps("a.jpg"))
    with pytest.raises(CapalignError, match="holds a str, not a list"):
        read_name_list(tmp_path / "s.p")
    (tmp_path / "t.p").write_bytes(b"not a pickle")
    with pytest.raises(CapalignError, match="cannot read"):
        read_name_list(tmp_path / "t.p")


def test_flickrstyle_as_distributed(tmp_path):
    root = write_flickrstyle(tmp_path / "fs", n=10)
    # romantic_train.txt is not clean UTF-8 in the real data: one Latin-1 line
    rom = (root / "romantic" / "romantic_train.txt").read_bytes().split(b"\n")
    rom[2] = "A man rides to the café of his beloved.".encode("latin-1")
    (root / "romantic" / "romantic_train.txt").write_bytes(b"\n".join(rom))
    prefs = open_preferences(str(root), test_share=0.2)
    pairs = {p.id: p for p in prefs.train + prefs.test}
    assert len(pairs) == 20 and prefs.styles == {"humorous": 10, "romantic": 10} and not prefs.skipped
    fid = flickr_name(2).split("_")[0]
    p = pairs[f"{fid}-romantic"]
    assert p.chosen == "A man rides to the café of his beloved." and p.rejected == "A man rides a bicycle down the street."
    assert p.references == ["A man rides a bicycle down the street.", "A cyclist on a city road."]
    assert p.meta["file_name"] == flickr_name(2) and p.load_image().size == (32, 24)
    assert pairs[f"{fid}-humorous"].group == p.group  # both styles of an image share the split
    assert {p.group for p in prefs.test}.isdisjoint({p.group for p in prefs.train})


def test_flickrstyle_bad_input(tmp_path):
    root = write_flickrstyle(tmp_path / "fs", n=6)
    (tmp_path / "fs" / "flickr30k-images" / f"{flickr_name(1).split('_')[0]}.jpg").unlink()  # a missing image
    (tmp_path / "fs" / "flickr30k-images" / f"{flickr_name(3).split('_')[0]}.jpg").write_bytes(b"\xff\xd8 truncated")
    lines = (root / "humor" / "funny_train.txt").read_text().split("\n")
    lines[4] = "   "  # an empty caption
    (root / "humor" / "funny_train.txt").write_text("\n".join(lines))
    prefs = open_preferences(str(root), "humorous", test_share=0.0)
    fid = lambda i: flickr_name(i).split("_")[0]  # noqa: E731
    assert dict(prefs.skipped) == {f"{fid(1)}-humorous": f"image not found: {tmp_path}/fs/flickr30k-images/{fid(1)}.jpg",
                                   f"{fid(1)}-romantic": f"image not found: {tmp_path}/fs/flickr30k-images/{fid(1)}.jpg",
                                   f"{fid(4)}-humorous": "empty chosen caption"}
    kept, images = prefs.load_images(prefs.train)  # the corrupt image is found when loaded, and counted
    assert len(kept) == len(images) == 3 and prefs.skipped[-1][0] == f"{fid(3)}-humorous"
    assert prefs.skipped[-1][1] == "not an image (format not recognised)"
    (root / "humor" / "funny_train.txt").write_text("one line\n")
    with pytest.raises(CapalignError, match="has 1 captions but .* lists 6 images"):
        open_preferences(str(root))
    with pytest.raises(CapalignError, match="Flickr30k caption file not found"):
        open_preferences(str(root), flickr_captions=str(tmp_path / "nope.token"))


# ---------------------------------------------------------------- manifests and HF datasets
def _png(color):
    b = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(b, format="PNG")
    return b.getvalue()


def test_manifest_jsonl_and_csv_with_bad_rows(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(4):
        (tmp_path / "img" / f"{i}.png").write_bytes(_png((60 * i, 0, 0)))
    rows = [{"id": "a", "image": "img/0.png", "chosen": "a funny dog, lol", "rejected": "a dog", "style": "humorous"},
            {"id": "b", "image": "img/1.png", "chosen": "a dog in love", "rejected": "a dog", "style": "romantic", "prompt": "Caption:"},
            {"id": "c", "image": "img/2.png", "chosen": "A  dog", "rejected": "a dog", "style": "humorous"},  # chosen == rejected
            {"id": "d", "image": "img/9.png", "chosen": "a silly cat", "rejected": "a cat", "style": "humorous"},  # missing image
            {"id": "e", "image": "img/3.png", "chosen": "", "rejected": "a cat", "style": "humorous"},
            {"id": "f", "image": "img/3.png", "chosen": "a cat with jokes", "rejected": "a cat", "style": "humorous",
             "references": ["a cat", "one cat"]}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import csv

    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "image", "chosen", "rejected", "style", "prompt", "references"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "references": json.dumps(r["references"]) if "references" in r else ""})
    for name in ("m.jsonl", "m.csv"):
        prefs = open_preferences(str(tmp_path / name), test_share=0)
        assert [(p.id, p.style, p.prompt) for p in prefs.train] == [("a", "humorous", None), ("b", "romantic", "Caption:"), ("f", "humorous", None)]
        assert dict(prefs.skipped) == {"c": "chosen equals rejected", "d": f"image not found: {tmp_path}/img/9.png", "e": "empty chosen caption"}
        assert prefs.train[2].references == ["a cat", "one cat"] and prefs.train[0].references == ["a dog"]
        assert prefs.train[0].load_image().getpixel((0, 0)) == (0, 0, 0)
    assert [p.id for p in open_preferences(str(tmp_path / "m.jsonl"), "romantic", test_share=0).train] == ["b"]
    with pytest.raises(CapalignError, match="no 'sarcastic' pairs .* styles with pairs: humorous \\(2\\), romantic \\(1\\)"):
        open_preferences(str(tmp_path / "m.jsonl"), "sarcastic")
    (tmp_path / "dup.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n")
    with pytest.raises(CapalignError, match="duplicate id 'a'"):
        open_preferences(str(tmp_path / "dup.jsonl"))
    (tmp_path / "nocol.jsonl").write_text(json.dumps({"image": "img/0.png", "caption": "x"}) + "\n")
    with pytest.raises(CapalignError, match="missing column\\(s\\) chosen, rejected"):
        open_preferences(str(tmp_path / "nocol.jsonl"))


def test_hf_dataset_generic_and_newyorker(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"image": [{"bytes": _png((i * 40, 0, 0)), "path": None} for i in range(5)],
                                     "chosen": [f"a joke about thing {i}" for i in range(5)], "rejected": [f"thing {i}" for i in range(5)],
                                     "id": [f"q{i}" for i in range(5)]}).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "gen"))
    with pytest.raises(CapalignError, match="no style column; pass style="):
        open_preferences(str(tmp_path / "gen"))
    prefs = open_preferences(str(tmp_path / "gen"), "humorous", test_share=0.4)
    assert len(prefs.train) == 3 and len(prefs.test) == 2 and prefs.train[0].load_image().size == (8, 8)
    assert sorted(p.id for p in prefs.train + prefs.test) == [f"q{i}" for i in range(5)]

    for config in ("explanation", "matching"):
        write_newyorker(tmp_path / config, config)
        ny = open_preferences(str(tmp_path / config), test_share=0.2)
        assert ny.styles == {"humorous": 20} and len(ny.train) + len(ny.test) == 20  # the hf "train" split
        allp = ny.train + ny.test
        from capalign.data.style_fixtures import SCENES

        for p in allp:
            i = int(p.id.split("-")[1])
            assert p.chosen == SCENES[i][2] and p.rejected == SCENES[i - i % 2][0] and p.group == f"contest-{500 + i // 2}"
        assert {p.group for p in ny.test}.isdisjoint({p.group for p in ny.train}) and len({p.group for p in ny.test}) == 2
        assert len(open_preferences(str(tmp_path / config), hf_split="test", test_share=0).train) == 5
    with pytest.raises(CapalignError, match="split 'dev' not in"):
        open_preferences(str(tmp_path / "matching"), hf_split="dev")


# ---------------------------------------------------------------- one-line errors through the CLI
@pytest.mark.parametrize("args,msg", [
    (["--data", "shapes:20", "--styles", "sarcastic"], "no 'sarcastic' pairs"),
    (["--data", "nowhere/x.jsonl"], "preference data not found"),
    (["--data", "shapes:x"], "bad shapes spec"),
    (["--data", "shapes:20", "--test_share", "1.5"], "test_share must be in"),
])
def test_cli_bad_input_is_one_line(args, msg, capsys, tmp_path):
    assert main(["style", "classifier", "--out", str(tmp_path / "c"), *args]) == 2
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("error")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0] and "Traceback" not in err
    assert not (tmp_path / "c").exists()  # nothing half-written


def test_cli_flickrstyle_evil_pickle(tmp_path, capsys):
    root = write_flickrstyle(tmp_path / "fs", n=4)
    evil = _Evil()
    evil.target = tmp_path / "pwned"
    (root / "humor" / "train.p").write_bytes(pickle.dumps([evil] * 4))
    assert main(["style", "wrlogp", "--model", "m", "--style", "humorous", "--data", str(root)]) == 2
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("error")]
    assert len(lines) == 1 and "refusing to unpickle" in lines[0] and "Traceback" not in err and not evil.target.exists()


def test_cli_pairs_round_trip(tmp_path):
    """`capalign style pairs` writes the split; the files read back (test_share 0) give the same pairs."""
    assert main(["style", "pairs", "--data", "shapes:10", "--out", str(tmp_path / "p"), "--style", "romantic"]) == 0
    prefs = open_preferences("shapes:10", "romantic")
    for split, pairs in (("train", prefs.train), ("test", prefs.test)):
        back = open_preferences(str(tmp_path / "p" / f"{split}.jsonl"), test_share=0).train
        assert [(p.id, p.chosen, p.rejected, p.style, p.references, p.objects) for p in back] == \
               [(p.id, p.chosen, p.rejected, p.style, p.references, p.objects) for p in pairs]
        assert back[0].load_image().tobytes() == pairs[0].load_image().tobytes()
    refs = [json.loads(l) for l in (tmp_path / "p" / "test_refs.jsonl").read_text().splitlines()]
    assert [r["id"] for r in refs] == [p.group for p in prefs.test] and refs[0]["objects"] == prefs.test[0].objects


def test_caption_frame_masks_every_object_phrase_and_nothing_else():
    """distinct_frames counts how a caption is said, not what it describes: object phrases (article, size, colour, shape,
    position) are masked, so one template over two scenes is one frame, and no content word survives the mask."""
    import random

    from capalign.data.shapes import COLORS, SHAPES, SIZES, scene_from_objects
    from capalign.data.shapes_style import caption_frame, styled_caption
    from capalign.metrics.style import distinct_frames

    frame = "ok so {}, secretly plotting to steal the last slice of pizza, what a clown show."
    one = frame.format("the small purple square in the centre and the large red square at the right")
    two = frame.format("a large blue circle on the left side")
    assert caption_frame(one) == caption_frame(two) == frame.format("OBJS")
    prefs = open_preferences("shapes:150", style="humorous", seed=0, test_share=0.2)
    content = set(COLORS) | set(SHAPES) | set(SIZES) | {"left", "right", "middle", "centre", "center"}
    for k, p in enumerate(prefs.train + prefs.test):
        for style in ("humorous", "romantic"):
            f = caption_frame(styled_caption(scene_from_objects(p.objects), style, random.Random(k), heldout=k % 2 == 0))
            assert "OBJ" in f and not content & set(f.replace(".", " ").replace(",", " ").split()), f
    assert distinct_frames([one, two, two, ""]) == 0.25
    assert distinct_frames([one, frame.replace("pizza", "cake").format("a small red circle on the left")]) == 1.0
