"""recipes/shapes-compare.yaml (one table of every method) and the study's extra mappers (`mapper.extra`): a ViZer
system trained with a mapper of another objective and pooling, named ViZer_<name>, scored as it was trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from capalign.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
RECIPES = Path(__file__).parents[1] / "recipes"


def test_shapes_compare_dry_run_lists_every_system(tmp_path, capsys):
    capsys.readouterr()
    assert main(["study", str(RECIPES / "shapes-compare.yaml"), "--out", str(tmp_path / "run"), "--dry_run"]) == 0
    out = capsys.readouterr()
    out = out.out + out.err  # the plan goes where the study's progress lines go
    assert "systems: Base, ViZer_GT, ViZer_G, ViZer_text, RL_judge, RL_cider" in out
    assert all(f"to run  vizer     seed {s}" in out for s in range(5)) and not (tmp_path / "run").exists()
    recipe = yaml.safe_load((RECIPES / "shapes-compare.yaml").read_text())
    assert "degenerate" in recipe["evaluate"]["metrics"].split(",") and recipe["seeds"] == [0, 1, 2, 3, 4]


def test_shapes_vizer_text_dry_run(tmp_path, capsys):
    capsys.readouterr()
    assert main(["study", str(RECIPES / "shapes-vizer-text.yaml"), "--out", str(tmp_path / "run"), "--dry_run"]) == 0
    out = capsys.readouterr()
    assert "systems: Base, ViZer_GT, ViZer_G, ViZer_text" in out.out + out.err
    extra = yaml.safe_load((RECIPES / "shapes-vizer-text.yaml").read_text())["mapper"]["extra"]["text"]
    assert extra == yaml.safe_load((RECIPES / "shapes-compare.yaml").read_text())["mapper"]["extra"]["text"]  # the same ViZer_text


TINY = {
    "name": "tiny-extra",
    "seeds": [0],
    "data": {"mapper": 8, "unlabeled": 4, "test": 4, "image_size": 48},
    "base": {"steps": 4, "web_steps": 2, "n_train": 16, "n_val": 2, "eval_batch_size": 2, "batch_size": 8, "image_size": 48,
             "vision_width": 32, "text_width": 32, "vocab_size": 300},
    "mapper": {"variants": ["gt"], "width": 8, "samples": 8, "epochs": 2, "max_new_tokens": 4,
               "extra": {"late": {"variant": "gt", "objective": "late", "pooling": "grid1x2"},
                         "text": {"variant": "gt", "pooling": "grid1x2", "text_only": True, "states_layer": 1}}},
    "diagnose": {"group": 2, "device": "cpu"},
    "vizer": {"batch_size": 4, "lr": "1e-2", "lora_r": 2, "lora_alpha": 4, "max_new_tokens": 4, "save_every": 0, "max_steps": 1},
    "caption": {"batch_size": 4, "max_new_tokens": 4},
    "evaluate": {"metrics": "cider,degenerate"},
}


def test_extra_mapper_is_a_vizer_system_trained_and_diagnosed_with_its_objective(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    run = tmp_path / "run"
    assert main(["study", str(tmp_path / "r.yaml"), "--out", str(run)]) == 0, capsys.readouterr().err[-3000:]
    meta = json.loads((run / "seed-0" / "mappers" / "late" / "mapper_meta.json").read_text())
    assert (meta["objective"], meta["pooling"], meta["regions"], meta["variant"], meta["width"]) == ("late", "grid1x2", 2, "gt", 8)
    assert json.loads((run / "seed-0" / "mappers" / "gt" / "mapper_meta.json").read_text())["objective"] == "cosine"
    result = json.loads((run / "seed-0" / "vizer" / "late" / "vizer_result.json").read_text())
    assert result["mapper_meta"]["objective"] == "late" and result["steps"] == 1
    diag = json.loads((run / "seed-0" / "diagnose.json").read_text())["mappers"]
    assert sorted((v["objective"], v["pooling"], v["text_only"], v["states_layer"]) for v in diag.values()) == [
        ("cosine", "grid1x2", True, 1), ("cosine", "mean", False, -1), ("late", "grid1x2", False, -1)]
    text = json.loads((run / "seed-0" / "vizer" / "text" / "vizer_result.json").read_text())["mapper_meta"]
    assert (text["text_only"], text["states_layer"], text["pooling"]) == (True, 1, "grid1x2")
    assert set(json.loads((run / "index.json").read_text())["systems"]) == {"Base", "ViZer_GT", "ViZer_late", "ViZer_text"}


@pytest.mark.parametrize("extra,message", [
    ({"gt": {"objective": "late"}}, "not gt or g"),
    ({"late": {"objective": "late", "model": "x"}}, "mapper.extra.late: unknown or study-set field(s) model"),
    ({"late": {"objective": "mse"}}, "objective must be one of cosine, infonce, late"),
    ({"late": {"pooling": "grid0x1"}}, "unknown pooling"),
])
def test_bad_extra_mapper_is_one_error_line(tmp_path, capsys, extra, message):
    recipe = json.loads(json.dumps(TINY))
    recipe["mapper"]["extra"] = extra
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    capsys.readouterr()
    assert main(["study", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
