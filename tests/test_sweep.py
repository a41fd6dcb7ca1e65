"""`capalign vizer sweep`: every (width, size) cell is trained and scored, the VLM's features are
computed once and reused, the heatmap is written, and the table's numbers are those of `evaluate`."""

import json

import pytest

from capalign.cli import main
from capalign.data.shapes import write_dataset
from capalign.io import read_jsonl
from capalign.metrics.evaluate import evaluate_system

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sweep_cells_cache_heatmap(tmp_path, tiny_idefics3_path):
    data = write_dataset(tmp_path / "shapes", 16, seed=1)
    out = tmp_path / "sweep"
    args = ["vizer", "sweep", "--model", str(tiny_idefics3_path), "--mapper_data", str(data), "--images", str(data),
            "--test", str(data), "--out", str(out), "--widths", "8,16", "--sizes", "8,16", "--vizer_batch_size", "4",
            "--vizer_max_steps", "1", "--max_new_tokens", "4", "--device", "cpu", "--metric", "BLEU1"]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert {(c["width"], c["samples"]) for c in res["cells"]} == {(8, 8), (8, 16), (16, 8), (16, 16)}
    # one pass of the VLM for the mapper features: the largest size, reused by every other cell
    assert len(list((out / "feature-cache").glob("features-*.safetensors"))) == 1
    png = out / "heatmap-BLEU1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refs = {r["id"]: r for r in read_jsonl(data / "manifest.jsonl")}
    cell = out / "w16-n8"
    assert json.loads((cell / "mapper" / "mapper_meta.json").read_text())["width"] == 16
    direct = evaluate_system(list(read_jsonl(cell / "captions.jsonl")), refs, ["bleu", "rouge", "cider", "grounding"])["corpus"]
    row = next(c for c in res["cells"] if (c["width"], c["samples"]) == (16, 8))
    assert row["BLEU1"] == pytest.approx(direct["BLEU1"]) and row["recall_name"] == pytest.approx(direct["recall_name"])
    # re-running resumes: every cell is done, nothing is retrained
    mtime = (cell / "vizer" / "adapter_model.safetensors").stat().st_mtime
    assert main(args) == 0
    assert (cell / "vizer" / "adapter_model.safetensors").stat().st_mtime == mtime
