"""The study's `rl` stage on a tiny recipe: per seed, GRPO from the seed's Base with each reward (a judge
and CIDEr-D), published as systems RL_judge / RL_cider that caption, evaluate (with the judge's score and
caption length) and the summary pick up; RUN/rl/<System>-seed<s>/history.json as docs/run-layout.md says, and
the report draws the reward curves from it."""

from __future__ import annotations

import json

import pytest
import yaml

from capalign.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_recipe(judge: str) -> dict:
    return {
        "name": "tiny-rl",
        "seeds": [0, 1],
        "data": {"unlabeled": 8, "test": 6, "image_size": 48},
        "base": {"steps": 4, "web_steps": 2, "n_train": 16, "n_val": 2, "eval_batch_size": 2, "batch_size": 8, "image_size": 48,
                 "vision_width": 32, "text_width": 32, "vocab_size": 300},
        "rl": {"rewards": ["judge", "cider"], "judge": judge, "max_steps": 2, "batch_size": 2, "num_generations": 2,
               "max_new_tokens": 4, "lora_r": 2, "lora_alpha": 4, "save_every": 0, "lr": 1e-2},
        "caption": {"batch_size": 6, "max_new_tokens": 4},
        "evaluate": {"metrics": "bleu,cider,grounding,judge,length", "judge": judge},
        "summary": {"n_boot": 100},
    }


def test_rl_stage_systems_history_summary_report(tiny_idefics3_path, tmp_path, capsys):
    recipe = tmp_path / "tiny-rl.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(str(tiny_idefics3_path)), sort_keys=False))
    run = tmp_path / "run"
    assert main(["study", str(recipe), "--out", str(run)]) == 0, capsys.readouterr().err[-3000:]
    index = json.loads((run / "index.json").read_text())
    assert set(index["systems"]) == {"Base", "RL_judge", "RL_cider"}
    for system in ("RL_judge", "RL_cider"):
        for s in (0, 1):
            d = run / "rl" / f"{system}-seed{s}"
            assert (d / "adapter_model.safetensors").is_file() and (d / "rl_result.json").is_file()
            hist = json.loads((d / "history.json").read_text())
            assert [h["step"] for h in hist] == [1, 2] and all("reward_mean" in h and "reward_std" in h for h in hist)
            assert f"reward_{system[3:]}" in hist[0]
            assert index["artifacts"]["rl_history"][system][str(s)] == f"rl/{system}-seed{s}/history.json"
            cfg = json.loads((d / "capalign_config.json").read_text())
            assert cfg["model"] == str(run / f"seed-{s}" / "base" / "nano-web") and cfg["seed"] == s
            assert cfg["data"] == str(run / f"seed-{s}" / "data" / "unlabeled")
            ev = json.loads((run / index["systems"][system][str(s)]["eval"]).read_text())
            caps = [json.loads(ln)["caption"] for ln in (run / index["systems"][system][str(s)]["captions"]).read_text().splitlines()]
            assert ev["per_caption"]["words"] == [len(c.split()) for c in caps] and len(ev["per_caption"]["judge"]) == 6
    summary = json.loads((run / "summary.json").read_text())
    assert {"judge", "words", "CIDEr"} <= set(summary["metrics"])
    assert summary["paired"]["RL_judge"]["judge"]["seeds"] == [0, 1] and summary["systems"]["RL_cider"]["words"]["n"] == 2
    stages = {(st["name"], st["seed"]): st["status"] for st in index["stages"]}
    assert stages[("rl", 0)] == stages[("rl", 1)] == "done"

    # re-running skips the finished runs; the report draws the reward curves
    assert main(["study", str(recipe), "--out", str(run)]) == 0
    assert {st["status"] for st in json.loads((run / "index.json").read_text())["stages"] if st["name"] == "rl"} == {"skipped"}
    assert main(["report", str(run)]) == 0
    assert (run / "report" / "assets" / "rl-reward.png").is_file() and "rl-reward.png" in (run / "report" / "index.html").read_text()


def test_rl_stage_bad_recipe(tmp_path, capsys):
    recipe = tiny_recipe("")
    del recipe["rl"]["judge"]
    for change, message in ((lambda r: None, "rl.rewards has a judge reward; set rl.judge"),
                            (lambda r: r["rl"].update(rewards=["cider", "cider"]), "distinct reward specs"),
                            (lambda r: r["rl"].update(rewards=["cider"], split="test"), "split must be unlabeled or mapper"),
                            (lambda r: r["rl"].update(rewards=["cider"], model="x"), "field rl.model is set by the study")):
        r = json.loads(json.dumps(recipe))
        change(r)
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
        capsys.readouterr()
        assert main(["study", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "--dry_run"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
