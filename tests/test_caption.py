"""`capalign caption`: one line per image, resume without regenerating, torn-line repair, corrupt
images skipped and listed, outputs equal direct generation, one-line errors for bad input."""

import json
from pathlib import Path

import pytest

from capalign.caption import caption_source, merge_rank_files
from capalign.cli import main
from capalign.data.shapes import write_dataset
from capalign.data.sources import open_images
from capalign.io import read_jsonl
from capalign.models.loading import load_vlm
from capalign.models.tiny import build_idefics3

N = 12


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(build_idefics3(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("shapes") / "ds", N)


@pytest.fixture
def counted(monkeypatch):
    """Record the batch size of every VLM.generate call (whatever VLM object the CLI loads)."""
    from capalign.models.base import VLM

    calls: list[int] = []
    orig = VLM.generate

    def generate(self, enc, *a, **kw):
        calls.append(len(enc))
        return orig(self, enc, *a, **kw)

    monkeypatch.setattr(VLM, "generate", generate)
    return calls


def _ids(path):
    return [r["id"] for r in read_jsonl(path)]


def _all_ids(data_dir):
    return [f"{i:06d}" for i in range(N)]


def test_caption_one_line_per_image_and_config(model_dir, data_dir, tmp_path, capsys, counted):
    out = tmp_path / "caps.jsonl"
    assert main(["caption", "--model", model_dir, "--images", str(data_dir), "--out", str(out), "--batch_size", "5", "--max_new_tokens", "6"]) == 0
    rows = list(read_jsonl(out))
    assert [r["id"] for r in rows] == _all_ids(data_dir)
    assert all(set(r) == {"id", "caption"} and isinstance(r["caption"], str) for r in rows)
    assert counted == [5, 5, 2]
    cfg = json.loads(Path(str(out) + ".config.json").read_text())
    assert cfg["command"] == "CaptionConfig" and cfg["batch_size"] == 5 and cfg["model"] == model_dir
    assert Path(str(out) + ".skipped.jsonl").read_text() == ""
    err = capsys.readouterr().err
    assert "CaptionConfig" in err and "captioned 12 images" in err and "images/s" in err


def test_vision_batch_size_gives_the_same_captions(model_dir, data_dir, tmp_path, monkeypatch):
    from capalign.models.base import VLM

    passes: list[int] = []
    orig = VLM.run_vision
    monkeypatch.setattr(VLM, "run_vision", lambda self, v, i: passes.append(len(v["pixel_values"])) or orig(self, v, i))
    base = ["caption", "--model", model_dir, "--images", str(data_dir), "--batch_size", "5", "--max_new_tokens", "6"]
    assert main(base + ["--out", str(tmp_path / "a.jsonl"), "--vision_batch_size", "5"]) == 0
    assert passes == [5, 5, 2]
    passes.clear()
    assert main(base + ["--out", str(tmp_path / "b.jsonl"), "--vision_batch_size", "2"]) == 0
    assert passes == [2, 2, 1, 2, 2, 1, 2]
    passes.clear()
    assert main(base + ["--out", str(tmp_path / "c.jsonl")]) == 0
    assert passes == [1] * N  # CPU default: one image per vision pass
    a = list(read_jsonl(tmp_path / "a.jsonl"))
    assert a == list(read_jsonl(tmp_path / "b.jsonl")) == list(read_jsonl(tmp_path / "c.jsonl"))


def test_resume_generates_only_remaining(model_dir, data_dir, tmp_path, capsys, counted):
    out = tmp_path / "caps.jsonl"
    base = ["caption", "--model", model_dir, "--images", str(data_dir), "--out", str(out), "--batch_size", "4", "--max_new_tokens", "5"]
    assert main(base + ["--limit", "5"]) == 0
    assert _ids(out) == _all_ids(data_dir)[:5] and counted == [4, 1]
    counted.clear()
    assert main(base) == 0
    assert counted == [4, 3]  # only the 7 remaining ids
    ids = _ids(out)
    assert sorted(ids) == _all_ids(data_dir) and len(ids) == len(set(ids))
    assert "5 already done" in capsys.readouterr().err
    counted.clear()
    assert main(base) == 0  # nothing left: no model call
    assert counted == [] and len(_ids(out)) == N


def test_resume_with_other_settings_is_refused_and_overwrite_starts_over(model_dir, data_dir, tmp_path, counted, cli):
    """Issue 21, item 3: a resume with another decoding setup would mix two setups in one file under one config."""
    out = tmp_path / "caps.jsonl"
    saved = Path(str(out) + ".config.json")
    base = ["caption", "--model", model_dir, "--images", str(data_dir), "--out", str(out), "--batch_size", "4", "--max_new_tokens", "5"]
    assert cli(*base, "--limit", "4").code == 0
    before = out.read_bytes(), saved.read_bytes()
    for extra, field in ((["--max_new_tokens", "6"], "max_new_tokens: 5 before, 6 now"), (["--do_sample"], "do_sample: false before, true now"),
                         (["--prompt", "a photo of"], 'prompt: null before, "a photo of" now')):
        r = cli(*base[:-2], *extra) if extra[0] == "--max_new_tokens" else cli(*base, *extra)
        assert r.code == 2 and len(r.error_lines) == 1 and field in r.error_lines[0] and "--overwrite" in r.error_lines[0], r.err
        assert (out.read_bytes(), saved.read_bytes()) == before  # nothing appended, the saved config not replaced
    counted.clear()
    assert cli(*base, "--batch_size", "8", "--device", "cpu").code == 0  # batching and device do not change captions: a resume
    assert counted == [8] and len(_ids(out)) == N
    counted.clear()
    assert cli(*base[:-2], "--max_new_tokens", "6", "--overwrite").code == 0  # starts over: every image again, one setup
    assert counted == [4, 4, 4] and sorted(_ids(out)) == _all_ids(data_dir)
    assert json.loads(saved.read_text())["max_new_tokens"] == 6
    vlm = load_vlm(model_dir, device="cpu")
    recs = list(open_images(str(data_dir)))[:4]
    assert [r["caption"] for r in list(read_jsonl(out))[:4]] == vlm.generate_captions([r.image for r in recs], max_new_tokens=6)


def test_a_file_capalign_did_not_write_is_never_appended_to(model_dir, data_dir, tmp_path, cli):
    """Issue 21, item 2: references, a manifest, or caption rows without the saved config beside them."""
    refs = tmp_path / "refs.jsonl"
    refs.write_bytes((Path(data_dir) / "manifest.jsonl").read_bytes())
    theirs = tmp_path / "theirs.jsonl"
    theirs.write_text('{"id": "000000", "caption": "from another tool"}\n')
    for path, fragment in ((refs, "line 1: missing 'caption'"), (Path(data_dir) / "manifest.jsonl", "line 1: missing 'caption'"),
                           (theirs, "it was not written by `capalign caption`")):
        before = path.read_bytes()
        for extra in ([], ["--overwrite"]):
            r = cli("caption", "--model", model_dir, "--images", str(data_dir), "--out", str(path), "--max_new_tokens", "2", *extra)
            assert r.code == 2 and len(r.error_lines) == 1 and fragment in r.error_lines[0], r.err
            assert path.read_bytes() == before and not Path(str(path) + ".config.json").exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")  # nothing in it to harm: captioned into
    assert cli("caption", "--model", model_dir, "--images", str(data_dir), "--out", str(empty), "--max_new_tokens", "2").code == 0
    assert len(_ids(empty)) == N


def test_torn_last_line_is_repaired_on_resume(model_dir, data_dir, tmp_path, counted):
    out = tmp_path / "caps.jsonl"
    base = ["caption", "--model", model_dir, "--images", str(data_dir), "--out", str(out), "--max_new_tokens", "4"]
    assert main(base + ["--limit", "3"]) == 0
    with open(out, "ab") as f:
        f.write(b'{"id": "000003", "capt')  # a crash mid-write
    counted.clear()
    assert main(base) == 0
    assert counted == [N - 3]  # 000003 is regenerated
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(ln) for ln in lines[:-1])
    assert sorted(_ids(out)) == _all_ids(data_dir)


def test_corrupt_image_skipped_counted_listed(model_dir, tmp_path, capsys):
    folder = tmp_path / "imgs"
    write_dataset(tmp_path / "ds", 4)
    folder.mkdir()
    for p in sorted((tmp_path / "ds" / "images").iterdir()):
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    out = tmp_path / "caps.jsonl"
    assert main(["caption", "--model", model_dir, "--images", str(folder), "--out", str(out), "--max_new_tokens", "4"]) == 0
    assert _ids(out) == [f"{i:06d}" for i in range(4)]
    skipped = list(read_jsonl(str(out) + ".skipped.jsonl"))
    assert [s["id"] for s in skipped] == ["broken"] and skipped[0]["reason"]
    err = capsys.readouterr().err
    assert "skipped 1 unreadable image(s): broken" in err and "1 skipped" in err


def test_outputs_equal_direct_generation(model_dir, data_dir, tmp_path):
    out = tmp_path / "caps.jsonl"
    assert main(["caption", "--model", model_dir, "--images", str(data_dir), "--out", str(out), "--batch_size", "4", "--max_new_tokens", "8"]) == 0
    got = {r["id"]: r["caption"] for r in read_jsonl(out)}
    vlm = load_vlm(model_dir, device="cpu")
    recs = list(open_images(str(data_dir)))
    want = {}
    for i in range(0, N, 4):
        b = recs[i : i + 4]
        want.update(zip([r.id for r in b], vlm.generate_captions([r.image for r in b], max_new_tokens=8)))
    assert got == want
    assert any(want.values())  # not all empty: the comparison means something


def test_sharded_ranks_merge_to_the_single_process_result(model_dir, data_dir, tmp_path):
    """What each rank does under `accelerate launch`, run here one rank after the other."""
    vlm = load_vlm(model_dir, device="cpu")
    single = tmp_path / "single.jsonl"
    caption_source(vlm, open_images(str(data_dir)), single, batch_size=4, max_new_tokens=6, show_progress=False)
    out = tmp_path / "sharded.jsonl"
    s0 = caption_source(vlm, open_images(str(data_dir)), out, batch_size=4, max_new_tokens=6, rank=0, world_size=3, show_progress=False)
    assert _ids(str(out) + ".rank0") == ["000000", "000003", "000006", "000009"] and s0.captioned == 4
    for r in (1, 2):
        caption_source(vlm, open_images(str(data_dir)), out, batch_size=4, max_new_tokens=6, rank=r, world_size=3, show_progress=False)
    assert merge_rank_files(out) == N and not list(tmp_path.glob("sharded.jsonl.rank*"))
    assert {r["id"]: r["caption"] for r in read_jsonl(out)} == {r["id"]: r["caption"] for r in read_jsonl(single)}


@pytest.mark.parametrize("case", ["missing_model", "unknown_family", "no_images", "max_new_tokens_0", "fp16_cpu"])
def test_bad_input_one_line_exit_2(case, model_dir, data_dir, tmp_path, capsys):
    model, images, extra = model_dir, str(data_dir), []
    if case == "missing_model":
        model = str(tmp_path / "nope")
    elif case == "unknown_family":
        model = str(tmp_path / "bert")
        Path(model).mkdir()
        Path(model, "config.json").write_text(json.dumps({"model_type": "bert"}))
    elif case == "no_images":
        images = str(tmp_path / "empty")
        Path(images).mkdir()
    elif case == "max_new_tokens_0":
        extra = ["--max_new_tokens", "0"]
    else:
        extra = ["--device", "cpu", "--dtype", "float16"]
    out = tmp_path / "caps.jsonl"
    assert main(["caption", "--model", model, "--images", images, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    expect = {"missing_model": "model path not found", "unknown_family": "unsupported model family 'bert'",
              "no_images": "no images found", "max_new_tokens_0": "max_new_tokens must be > 0",
              "fp16_cpu": "float16 is not supported on CPU"}[case]
    assert expect in err[0]
    assert not out.exists()


def test_benchmark_flop_count_matches_torch_flop_counter(tmp_path, data_dir):
    """benchmarks/caption_throughput.py counts FLOPs analytically; check it against torch's counter."""
    import importlib.util

    from torch.utils.flop_counter import FlopCounterMode

    from capalign.models.tiny import TINY

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("caption_throughput", root / "benchmarks" / "caption_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    vlm = load_vlm(str(build_idefics3(tmp_path / "m", longest_edge=32)), device="cpu", attn_implementation="eager")
    vlm.model.generation_config.min_new_tokens = 5
    img = [next(iter(open_images(str(data_dir)))).image]
    with FlopCounterMode(display=False) as fc:
        enc = vlm.encode(img)
    vision = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        caps = vlm.generate(enc, max_new_tokens=5)
    lm = fc.get_total_flops()
    assert caps.ids.shape == (1, 5)
    fl = bench.flops_per_image(TINY, 1, enc.inputs["input_ids"].shape[1], 5, vlm.model.config.text_config.vocab_size)
    assert fl["vision"] + fl["connector"] == vision
    assert fl["lm_prefill"] + fl["lm_decode"] == lm
