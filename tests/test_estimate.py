"""`capalign estimate`: the parameter counts behind the estimates match instantiated models (tiny random
Idefics3 and Qwen2-VL) and the published sizes of the shipped configs; every real recipe estimates."""

from __future__ import annotations

from pathlib import Path

import pytest

from capalign.cli import main
from capalign.study.estimate import EstimateConfig, estimate, model_facts
from capalign.study.recipe import load_recipe

RECIPES = Path(__file__).parents[1] / "recipes"


@pytest.mark.parametrize("fixture", ["tiny_idefics3_path", "tiny_qwen2_vl_path"])
def test_parameter_count_matches_the_model(request, fixture):
    from capalign.models import load_vlm

    path = request.getfixturevalue(fixture)
    f = model_facts(str(path), RECIPES, (640, 480))
    model = load_vlm(str(path), device="cpu").model
    actual = sum(p.numel() for p in model.parameters())
    assert abs(f["total"] - actual) / actual < 0.02, (f["total"], actual)  # norms and biases are not counted


def test_shipped_configs_give_the_published_sizes():
    smol = model_facts("HuggingFaceTB/SmolVLM-Base", RECIPES, (640, 480))
    qwen = model_facts("Qwen/Qwen2-VL-2B-Instruct", RECIPES, (640, 480))
    assert smol["total"] == pytest.approx(2.25e9, rel=0.02) and qwen["total"] == pytest.approx(2.21e9, rel=0.02)
    assert smol["img_tokens"] == 13 * 81  # 1536x1152 -> 4x3 tiles of 384 px + the global image, 81 tokens each
    assert qwen["img_tokens"] == (644 // 14) * (476 // 14) // 4  # 28-px multiples, 14-px patches merged 2x2


def test_estimates_of_every_real_recipe(capsys):
    for name in ("smolvlm-base-vizer", "qwen2-vl-2b-vizer"):
        recipe = load_recipe(RECIPES / f"{name}.yaml")
        facts = model_facts(recipe.sections["base"]["model"], RECIPES, (640, 480))
        rows = estimate(recipe, facts, EstimateConfig(recipe="x"))
        assert [r["stage"].split()[0] for r in rows] == ["mapper", "mapper", "diagnose", "vizer", "caption", "features"]
        assert all(r["minutes"] > 0 and 0 < r["memory_gb"] < 80 for r in rows)
        recipe.sections["vizer"]["gradient_checkpointing"] = False
        no_ckpt = estimate(recipe, facts, EstimateConfig(recipe="x"))
        assert no_ckpt[3]["memory_gb"] > rows[3]["memory_gb"] and no_ckpt[3]["minutes"] == rows[3]["minutes"]
    assert main(["estimate", str(RECIPES / "qwen2-vl-2b-vizer.yaml"), "--gpu", "L4"]) == 0
    assert "ESTIMATE" in capsys.readouterr().err
    assert main(["estimate", str(RECIPES / "demo.yaml")]) == 0  # the nano Base trains on CPU: nothing to estimate


def test_style_sweep_estimate_counts_every_cell(capsys):
    """flickrstyle10k-sweep: 2 epochs of 16-pair steps over nested budgets of 5600 pairs, at least 30 steps per cell:
    1%..100% -> 30, 30, 35, 70, 140, 350, 700 steps, for 3 methods x 2 styles x 3 seeds."""
    recipe = load_recipe(RECIPES / "flickrstyle10k-sweep.yaml")
    facts = model_facts(recipe.sections["base"]["model"], RECIPES, (500, 375))
    rows = estimate(recipe, facts, EstimateConfig(recipe="x", style_pairs=5600))
    assert [r["stage"] for r in rows] == ["style sweep (126 trained cells)", "style eval (129 cells)"]
    assert f"{(30 + 30 + 35 + 70 + 140 + 350 + 700) * 18} steps x 16 pairs" in rows[0]["what"]
    assert all(r["minutes"] > 0 and 0 < r["memory_gb"] < 80 for r in rows)
    assert main(["estimate", str(RECIPES / "flickrstyle10k-sweep.yaml")]) == 2  # a folder of unknown size: --style_pairs
    assert "pass --style_pairs N" in capsys.readouterr().err


def test_estimate_of_the_rl_recipe():
    """The rl stage: one row per reward; the judge's rows add the judge's weights and per-sample forward."""
    judge = model_facts("Qwen/Qwen2.5-VL-3B-Instruct", RECIPES, (640, 480))
    assert judge["total"] == pytest.approx(3.75e9, rel=0.02)  # the published size
    recipe = load_recipe(RECIPES / "smolvlm-base-rl.yaml")
    facts = model_facts(recipe.sections["base"]["model"], RECIPES, (640, 480))
    rows = estimate(recipe, facts, EstimateConfig(recipe="x"), judge)
    assert [r["stage"] for r in rows] == ["rl (judge)", "rl (cider)", "caption (x3 systems)"]
    assert rows[0]["memory_gb"] - rows[1]["memory_gb"] > 2 * judge["total"] / 1e9 and rows[0]["minutes"] > rows[1]["minutes"]
    assert all(0 < r["memory_gb"] < 80 for r in rows)
