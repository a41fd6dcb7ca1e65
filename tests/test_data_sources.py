"""open_images: every source type yields the same ids/captions for the same content; bad images are
skipped and counted; resume via skip_ids; clear errors."""

import csv
import io
import json
import logging
import tarfile

import pytest
from PIL import Image

from capalign import CapalignError
from capalign.data.shapes import IMAGE_SIZE, write_dataset
from capalign.data.sources import Record, as_captions, batched, open_images

CONTENT = {  # id -> (colour, captions)
    "a/one": ((255, 0, 0), ["a red thing.", "red."]),
    "b": ((0, 255, 0), ["a green thing."]),
    "c": ((0, 0, 255), ["a blue thing.", "blue!"]),
}


def _png(color):
    b = io.BytesIO()
    Image.new("RGB", (12, 10), color).save(b, format="PNG")
    return b.getvalue()


def _tar(path, items):
    with tarfile.open(path, "w") as tf:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.fixture
def sources(tmp_path):
    """The same content as a folder, jsonl, csv, save_to_disk dataset, tar shards and a brace pattern."""
    import datasets

    folder = tmp_path / "folder"
    for key, (color, caps) in CONTENT.items():
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / f"{key}.png").write_bytes(_png(color))
        (folder / f"{key}.txt").write_text("\n".join(caps) + "\n")
    rows = [{"id": k, "image": f"folder/{k}.png", "captions": c} for k, (_, c) in CONTENT.items()]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["id", "image", "captions"])
        w.writeheader()
        w.writerows([{**r, "captions": json.dumps(r["captions"])} for r in rows])
    ds = datasets.Dataset.from_dict({"image_id": [r["id"] for r in rows], "image": [str(tmp_path / r["image"]) for r in rows],
                                     "sentences": [r["captions"] for r in rows]}).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hf"))
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "hfdict"))
    keys = list(CONTENT)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, part in enumerate([keys[:2], keys[2:]]):
        _tar(shards / f"s-{i:03d}.tar", [m for k in part for m in ((f"{k}.png", _png(CONTENT[k][0])),
                                                                    (f"{k}.txt", "\n".join(CONTENT[k][1]).encode()))])
    return {"folder": folder, "jsonl": tmp_path / "m.jsonl", "csv": tmp_path / "m.csv", "hf": tmp_path / "hf",
            "tars": shards, "brace": f"{shards}/s-{{000..001}}.tar", "tar": shards / "s-000.tar"}


def _collect(src):
    return {r.id: (r.image.getpixel((0, 0)), r.captions) for r in src}


@pytest.mark.parametrize("kind", ["folder", "jsonl", "csv", "hf", "tars", "brace"])
def test_same_content_same_records(sources, kind):
    src = open_images(str(sources[kind]))
    expect = {k: (c, caps) for k, (c, caps) in CONTENT.items()}
    assert _collect(src) == expect and src.skipped == []
    assert sorted(src.ids()) == sorted(CONTENT)
    assert src.num_known() == 3 and len(src) == 3
    r = next(iter(src))
    assert isinstance(r, Record) and r.image.mode == "RGB"


def test_single_tar_dataset_dict_and_limit(sources):
    assert open_images(str(sources["tar"])).ids() == ["a/one", "b"]
    assert sorted(_collect(open_images(str(sources["hf"].parent / "hfdict"), split="test"))) == sorted(CONTENT)
    # no split given: the one split there is (issue 19: a flickr30k save_to_disk holds only `test`)
    assert sorted(_collect(open_images(str(sources["hf"].parent / "hfdict")))) == sorted(CONTENT)
    with pytest.raises(CapalignError, match=r"has no split 'train'; its splits: test \(3\)"):
        open_images(str(sources["hf"].parent / "hfdict"), split="train")
    src = open_images(str(sources["jsonl"]), limit=2)
    assert src.ids() == ["a/one", "b"] and len(src) == 2 and len(list(src)) == 2


def test_shapes_dataset_folder_and_tar(tmp_path):
    d = write_dataset(tmp_path / "w", 6, seed=1)
    rows = [json.loads(line) for line in (d / "manifest.jsonl").read_text().splitlines()]
    src = open_images(str(d))
    recs = list(src)
    assert [r.id for r in recs] == [r["id"] for r in rows] and src.ids() == [r["id"] for r in rows]
    assert [r.captions for r in recs] == [r["captions"] for r in rows]
    assert recs[0].meta["objects"] == rows[0]["objects"] and recs[0].image.size == (IMAGE_SIZE, IMAGE_SIZE)
    web = open_images(str(d / "manifest.jsonl"), captions_field="captions_web")
    assert [r.captions for r in web] == [r["captions_web"] for r in rows]
    # the same dataset as a webdataset shard with .png + .json members
    _tar(tmp_path / "w.tar", [m for r in rows for m in ((f"{r['id']}.png", (d / r["image"]).read_bytes()),
                                                        (f"{r['id']}.json", json.dumps(r).encode()))])
    tar = list(open_images(str(tmp_path / "w.tar")))
    assert [(r.id, r.captions, r.meta["objects"]) for r in tar] == [(r.id, r.captions, r.meta["objects"]) for r in recs]


def test_bad_images_are_skipped_and_counted(tmp_path, caplog):
    good = _png((1, 2, 3))
    b = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(b, format="JPEG")
    (tmp_path / "good.png").write_bytes(good)
    (tmp_path / "trunc_png.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "trunc_jpg.jpg").write_bytes(b.getvalue()[: len(b.getvalue()) // 2])
    (tmp_path / "text.jpg").write_text("not really a jpeg")
    (tmp_path / "notes.md").write_text("ignored: not an image extension")
    src = open_images(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="capalign.data.sources"):
        assert [r.id for r in src] == ["good"]
    assert sorted(i for i, _ in src.skipped) == ["text", "trunc_jpg", "trunc_png"]
    assert len([m for m in caplog.messages if m.startswith("skipping image")]) == len(src.skipped)
    assert all("\n" not in reason for _, reason in src.skipped)


def test_bad_images_in_every_source(tmp_path):
    good = _png((5, 5, 5))
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "ok.png").write_bytes(good)
    (tmp_path / "img" / "bad.png").write_bytes(good[:40])
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"id": i, "image": f"img/{i}.png"}) + "\n" for i in ["ok", "bad", "gone"]))
    src = open_images(str(tmp_path / "m.jsonl"))
    assert [r.id for r in src] == ["ok"] and [i for i, _ in src.skipped] == ["bad", "gone"]
    assert "not found" in src.skipped[1][1]
    _tar(tmp_path / "t.tar", [("ok.png", good), ("bad.png", good[:40]), ("caponly.txt", b"no image here"),
                              ("big.png", _png((7, 7, 7)) + b"x" * 3000)])
    src = open_images(str(tmp_path / "t.tar"))
    assert [r.id for r in src] == ["ok", "big"] and [i for i, _ in src.skipped] == ["bad", "caponly"]
    data = (tmp_path / "t.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:512 * 7 + 100])  # cut inside big.png: earlier samples survive
    src = open_images(str(tmp_path / "cut.tar"))
    assert [r.id for r in src] == ["ok"] and [i for i, _ in src.skipped] == ["bad", "caponly", "cut.tar"]


def test_resume_skip_ids(sources):
    for kind in ("folder", "jsonl", "hf", "brace"):
        src = open_images(str(sources[kind]))
        assert [r.id for r in src.iter(skip_ids={"a/one", "c"})] == ["b"]


def test_batched_and_captions():
    assert list(batched(range(5), 2)) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError):
        list(batched([], 0))
    assert as_captions('["x", "y"]') == ["x", "y"] and as_captions("x") == ["x"]
    assert as_captions([{"raw": "a"}, {"raw": "b"}]) == ["a", "b"] and as_captions(None) == []


def test_errors(tmp_path):
    with pytest.raises(CapalignError, match="not found"):
        open_images(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CapalignError, match="no images found"):
        open_images(str(tmp_path / "empty"))
    (tmp_path / "x.parquetx").write_text("?")
    with pytest.raises(CapalignError, match="unknown image source"):
        open_images(str(tmp_path / "x.parquetx"))
    (tmp_path / "dup.jsonl").write_text('{"id": "a", "image": "a.png"}\n{"id": "a", "image": "b.png"}\n')
    with pytest.raises(CapalignError, match="duplicate id 'a'.*lines 1 and 2"):
        open_images(str(tmp_path / "dup.jsonl"))
    (tmp_path / "noid.jsonl").write_text('{"image": "a.png"}\n')
    with pytest.raises(CapalignError, match="line 1: missing 'id'"):
        open_images(str(tmp_path / "noid.jsonl"))
    with pytest.raises(CapalignError, match="shard not found"):
        open_images(str(tmp_path / "s-{000..002}.tar"))
    for msg in ("not found", "no images"):
        try:
            open_images(str(tmp_path / ("nope" if msg == "not found" else "empty")))
        except CapalignError as e:
            assert "\n" not in str(e) and "expected" in str(e)


def test_hf_spec_streaming_and_corrupt_cells(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cells = [{"bytes": _png((i * 40, 0, 0)), "path": None} for i in range(3)] + [{"bytes": b"junk", "path": None}]
    ds = datasets.Dataset.from_dict({"img": cells, "text": [f"cap {i}" for i in range(4)]}).cast_column("img", datasets.Image())
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "data.parquet"))
    src = open_images(f"hf:{tmp_path / 'pq'}", streaming=True)  # streaming: no cache files written
    assert src.num_known() is None and src.ids() == ["0", "1", "2", "3"]
    with pytest.raises(TypeError):
        len(src)
    recs = list(src.iter(skip_ids={"1"}))
    assert [(r.id, r.captions, r.image.getpixel((0, 0))) for r in recs] == [("0", ["cap 0"], (0, 0, 0)), ("2", ["cap 2"], (80, 0, 0))]
    assert [i for i, _ in src.skipped] == ["3"]
    with pytest.raises(CapalignError, match="caption column 'nope' not in"):
        open_images(f"hf:{tmp_path / 'pq'}", streaming=True, caption_column="nope")
