"""The `style` study stage: a tiny study (an existing tiny Idefics3 as the Base, a 2-budget x 2-seed DPO sweep)
writes RUN/style/sweep.json to the run-folder contract, resumes a partly failed sweep (only the failed cell
re-runs), and `capalign report` shows its curves and saturation table."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
import yaml

from capalign.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_style_stage_sweep_resume_and_report(tiny_idefics3_path, tmp_path, monkeypatch, capsys):
    from capalign.style import sweep as style_sweep

    recipe = {"name": "style-tiny", "seeds": [0], "base": {"model": str(tiny_idefics3_path)},
              "style": {"data": "shapes:12", "methods": "dpo", "styles": "humorous", "budgets": "50%,100%", "seeds": 2, "n_test": 3,
                        "steps": 1, "batch_size": 4, "lora_r": 4, "max_new_tokens": 6}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    argv = ["study", str(tmp_path / "r.yaml"), "--out", str(run)]

    # 1. one cell fails: the stage fails, sweep.json lists it as missing, the other cells are kept
    real = style_sweep.run_cell

    def flaky(cell, cfg, clf):
        if cell["name"] == "dpo/humorous/b50-s1":
            raise RuntimeError("simulated crash")
        return real(cell, cfg, clf)

    monkeypatch.setattr(style_sweep, "run_cell", flaky)
    assert main(argv) == 2
    assert "1 cell(s) failed (first: dpo/humorous/b50-s1: RuntimeError: simulated crash)" in capsys.readouterr().err
    idx = json.loads((run / "index.json").read_text())
    stage = next(s for s in idx["stages"] if s["name"] == "style")
    assert stage["status"] == "failed" and stage["seed"] is None
    partial = json.loads((run / "style/sweep.json").read_text())
    assert not partial["complete"] and partial["missing"] == ["dpo/humorous/b50-s1"]
    assert "style/cells/dpo/humorous/b50-s1/result.json" in stage["outputs"]

    # 2. re-run: only the failed cell runs; the stage is done and the index points the report at the sweep
    monkeypatch.setattr(style_sweep, "run_cell", real)
    assert main(argv) == 0
    assert "5 done, 1 to run" in capsys.readouterr().err
    idx = json.loads((run / "index.json").read_text())
    assert next(s for s in idx["stages"] if s["name"] == "style")["status"] == "done"
    assert idx["artifacts"]["style_sweep"] == "style/sweep.json"
    sweep = json.loads((run / "style/sweep.json").read_text())
    assert sweep["complete"] and sweep["config"]["model"] == str(tiny_idefics3_path)
    assert sorted((r["budget"], r["seed"]) for r in sweep["rows"]) == [(50.0, 0), (50.0, 1), (100.0, 0), (100.0, 1)]
    kept = {c["name"]: c["measures"] for c in partial["cells"]}
    assert all(kept[c["name"]] == c["measures"] for c in sweep["cells"] if c["name"] in kept)  # finished cells were not re-run
    assert main(argv) == 0 and "style (seeds 0) done before, skipped" in capsys.readouterr().err

    # 3. the report: one figure per measure of the rows, and the saturation table with the sweep's numbers
    assert main(["report", str(run)]) == 0
    page = (run / "report/index.html").read_text()
    figs = re.findall(r'<img src="assets/(style-\d+\.png)" alt="style sweep: ([^"]+)"', page)
    assert {"style_acc", "wr_logp", "wr_logp_sum", "recall_attr"} <= {m for _, m in figs}
    assert all((run / "report/assets" / f).stat().st_size > 1000 for f, _ in figs)
    table = page[page.index("<table id='saturation'"):]
    table = table[: table.index("</table>")]
    for s in sweep["saturation"]:
        budget = "-" if s["budget"] is None else f"{s['budget']:.3f}"
        assert f"<td>{s['measure']}</td><td>humorous</td><td>dpo</td><td>{budget}</td>" in table and html.escape(s["note"]) in table
    # the tiny random model writes non-words ("feainر..."): the collapse guard's degeneracy rule sets every budget aside
    # (so no saturation budget), and the report lists them with the reason
    assert [c["budget"] for c in sweep["collapsed"]] == ["50%", "100%"]
    assert all(c["method"] == "dpo" and "of captions are empty or non-words (>= 5%)" in c["reason"] for c in sweep["collapsed"])
    assert all(s["budget"] is None for s in sweep["saturation"])
    bad = page[page.index("<table id='style-collapsed'"):]
    assert bad[: bad.index("</table>")].count("<td>dpo</td>") == 2


def test_style_stage_base_model_nano_styled(tiny_idefics3_path, tmp_path, monkeypatch, capsys):
    """style.base_model: nano-styled trains the styled nano captioner once into RUN/style/nano-styled and sweeps from it;
    a path is used as given; unset, the first seed's Base."""
    from capalign.nano import train as nano
    from capalign.study.stages import style as stage
    from capalign.style import sweep as style_sweep

    trained, swept = [], []

    def fake_nano(cfg):
        trained.append((cfg.mode, cfg.out))
        Path(cfg.out).mkdir(parents=True)
        (Path(cfg.out) / "nano_result.json").write_text("{}")

    def fake_sweep(cfg):
        swept.append(cfg.model)
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "sweep.json").write_text('{"missing": []}')

    monkeypatch.setattr(nano, "run", fake_nano)
    monkeypatch.setattr(style_sweep, "run", fake_sweep)
    for i, (base_model, want) in enumerate(((stage.STYLED_NANO, "nano-styled"), ("some/model", "some/model"), ("", str(tiny_idefics3_path)))):
        style = {"data": "shapes:12", "styles": "humorous", **({"base_model": base_model} if base_model else {})}
        (tmp_path / "r.yaml").write_text(yaml.safe_dump({"name": "s", "seeds": [0], "base": {"model": str(tiny_idefics3_path)}, "style": style}))
        assert main(["study", str(tmp_path / "r.yaml"), "--out", str(tmp_path / f"run{i}")]) == 0
        assert swept[-1].endswith(want)
    assert trained == [("styled", str(tmp_path / "run0" / "style" / "nano-styled"))]
    # a style-only study (base_model, no base stage) and its report: no gallery, nothing reported missing
    rows = [{"method": "sft", "style": "humorous", "budget": b, "seed": 0, "style_acc": v} for b, v in ((50, 0.4), (100, 0.6))]
    monkeypatch.setattr(style_sweep, "run", lambda cfg: (swept.append(cfg.model), Path(cfg.out).mkdir(parents=True, exist_ok=True),
                                                        (Path(cfg.out) / "sweep.json").write_text(json.dumps({"missing": [], "rows": rows}))))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"name": "s", "seeds": [0], "style": {"data": "shapes:12", "base_model": "some/model"}}))
    assert main(["study", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "runs")]) == 0 and swept[-1] == "some/model"
    assert main(["report", str(tmp_path / "runs")]) == 0
    page = (tmp_path / "runs" / "report" / "index.html").read_text()
    assert "What is missing" not in page and "no test captions yet" in page, re.findall(r"<li>(.*?)</li>", page)[:5]
    assert 'alt="style sweep: style_acc"' in page
    # a style-only recipe needs base_model (there is no first-seed Base): one error line, not a traceback
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"name": "s", "seeds": [0], "style": {"data": "shapes:12", "styles": "humorous"}}))
    assert main(["study", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run9")]) == 2
    assert "stage style has no model: add a base stage to the recipe or set style.base_model" in capsys.readouterr().err
