"""`capalign style sweep` on a tiny Idefics3: every cell evaluated on one test split, resume, the summary files."""

from __future__ import annotations

import json

from capalign.cli import main


def test_sweep_resumes_and_summarises(tiny_idefics3_path, one_thread, tmp_path, capsys):
    out = tmp_path / "style"
    argv = ["style", "sweep", "--model", str(tiny_idefics3_path), "--data", "shapes:12", "--out", str(out), "--methods", "dpo",
            "--styles", "humorous", "--budgets", "50%,100%", "--seeds", "1", "--n_test", "3", "--min_steps", "1", "--epochs", "1",
            "--batch_size", "4", "--lora_r", "4", "--max_new_tokens", "6"]
    assert main(argv) == 0
    s = json.loads((out / "sweep.json").read_text())
    names = [c["name"] for c in s["cells"]]
    assert s["complete"] and sorted(names) == sorted(["base", "zero-shot/humorous", "dpo/humorous/b50-s0", "dpo/humorous/b100-s0"])
    cells = {c["name"]: c for c in s["cells"]}
    # nested budgets on one test split: the 50% cell trains on fewer pairs, every cell is scored on the same pairs
    assert 0 < cells["dpo/humorous/b50-s0"]["n_pairs"] < cells["dpo/humorous/b100-s0"]["n_pairs"]
    assert len({c["n_test"] for c in s["cells"]}) == 1
    tests = [[json.loads(x)["id"] for x in (out / "cells" / n / "captions.jsonl").read_text().splitlines()] for n in names]
    assert all(t == tests[0] for t in tests)
    for c in s["cells"]:
        assert 0 <= c["measures"]["style_acc" if c["style"] else "style_acc/humorous"] <= 1
    assert 0 <= cells["zero-shot/humorous"]["measures"]["wr_logp"] <= 1
    curve = s["curves"]["wr_logp"]["humorous"]["dpo"]
    assert [p["budget"] for p in curve] == ["50%", "100%"] and curve[1]["mean"] == cells["dpo/humorous/b100-s0"]["measures"]["wr_logp"]
    # the report's rows (one per trained cell, budget in %) and flat saturation rows, one per measure x style x method
    assert sorted((r["budget"], r["wr_logp"]) for r in s["rows"]) == sorted(
        (float(n.split("/b")[1].split("-")[0]), cells[n]["measures"]["wr_logp"]) for n in cells if n.startswith("dpo/"))
    assert sorted(x["measure"] for x in s["saturation"]) == ["style_acc", "wr_logp", "wr_logp_sum"]
    assert all(x["budget"] in (50.0, 100.0) and x["zero_shot"] == cells["zero-shot/humorous"]["measures"][x["measure"]] for x in s["saturation"])
    assert (out / "cells.csv").read_text().count("\n") == 5 and (out / "plot-style_acc.png").stat().st_size > 1000
    assert s["classifier"]["heldout"]["accuracy"] is not None

    # resume: a finished cell is skipped; a cell killed before its result.json is re-run from scratch
    done = out / "cells" / "dpo" / "humorous" / "b100-s0" / "result.json"
    killed = out / "cells" / "dpo" / "humorous" / "b50-s0"
    (killed / "result.json").unlink()
    before = done.stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    assert "3 done, 1 to run" in capsys.readouterr().err
    assert done.stat().st_mtime_ns == before and (killed / "result.json").exists()
    again = json.loads((out / "sweep.json").read_text())
    assert again["complete"] and {c["name"]: c["measures"] for c in again["cells"]} == {c["name"]: c["measures"] for c in s["cells"]}


def test_sweep_bad_input(tmp_path, capsys):
    base = ["style", "sweep", "--model", "x", "--out", str(tmp_path)]
    for extra, msg in ((["--methods", "ppo"], "unknown method"), (["--budgets", "10,20"], "percentages"),
                       (["--budgets", "20%,10%"], "increasing"), (["--seeds", "0"], "seeds")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and msg in err and len(err.splitlines()) == 1, err
