"""Issue 21 item 5: when the output is not a terminal (pytest captures it, as a log file would), every training
command prints plain progress lines (step/total, rate, ETA, loss) while it runs, from utils.progress, and the
Trainer-backed ones print no raw log dicts. The lines are triggered by step count here (the 30-s trigger is
switched off, so no test depends on a clock)."""

from __future__ import annotations

import math
import re

import pytest

from capalign import utils
from capalign.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_time_trigger(monkeypatch):
    monkeypatch.setattr(utils, "LOG_SECONDS", math.inf)


def _steps(text: str, desc: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(rf"^{re.escape(desc)}: step (\d+)/(\d+)", text, flags=re.M)]


def test_log_lines_every_n_steps_and_at_the_end(capsys):
    with utils.progress(every=5) as bar:
        task = bar.add_task("work", total=22, rate="")
        for i in range(22):
            bar.update(task, advance=1, rate=f"loss {i:.3f}")
    err = capsys.readouterr().err
    assert _steps(err, "work") == [(5, 22), (10, 22), (15, 22), (20, 22), (22, 22)]
    assert "work: step 10/22 (45%), " in err and "loss 9.000" in err and "steps/s" in err and "ETA" in err
    with utils.progress() as bar:  # default: about LOG_LINES lines per task
        task = bar.add_task("more", total=30, rate="")
        for _ in range(30):
            bar.advance(task)
    assert [k for k, _ in _steps(capsys.readouterr().err, "more")] == [3 * i for i in range(1, 11)]


def test_nano_train_prints_progress_lines_before_it_ends(tmp_path, capsys):
    args = ["--steps", "6", "--n_train", "8", "--n_val", "2", "--batch_size", "4", "--eval_batch_size", "2"]
    assert main(["nano", "train", "--out", str(tmp_path / "nano"), *args]) == 0
    err = capsys.readouterr().err
    assert _steps(err, "nano clean") == [(k, 6) for k in range(1, 7)]
    assert re.search(r"^nano clean: step 3/6 \(50%\), [\d.]+ steps/s, ETA \d+:\d\d, loss \d+\.\d{3}$", err, flags=re.M)
    assert err.index("nano clean: step 6/6") < err.index("nano clean: 6 steps in")  # the lines come before the summary


def test_style_train_prints_capalign_progress_not_trainer_dicts(tiny_idefics3_path, tmp_path, capsys):
    assert main(["style", "train", "--model", str(tiny_idefics3_path), "--data", "shapes:16", "--out", str(tmp_path / "st"),
                 "--method", "sft", "--batch_size", "4", "--lora_r", "4", "--device", "cpu", "--report_to", "none",
                 "--save_every", "0", "--max_steps", "3", "--log_every", "1"]) == 0
    out, err = capsys.readouterr()
    assert "{'loss'" not in out + err and "'train_runtime'" not in out + err
    assert _steps(err, "sft humorous") == [(1, 3), (2, 3), (3, 3)]
    assert re.search(r"^sft humorous: step 3/3 .*loss \d+\.\d{3}$", err, flags=re.M)


def test_rl_train_prints_capalign_progress_not_trainer_dicts(tiny_idefics3_path, tmp_path, capsys):
    from capalign.data.shapes import write_dataset

    data = write_dataset(tmp_path / "shapes", 4, seed=0)
    assert main(["rl", "train", "--model", str(tiny_idefics3_path), "--data", str(data), "--out", str(tmp_path / "rl"),
                 "--reward", "cider", "--batch_size", "2", "--num_generations", "2", "--max_new_tokens", "4", "--max_steps", "2",
                 "--save_every", "0", "--log_every", "1", "--report_to", "none"]) == 0
    out, err = capsys.readouterr()
    assert "{'loss'" not in out + err and "'train_runtime'" not in out + err
    assert _steps(err, "rl train") == [(1, 2), (2, 2)]
    assert re.search(r"^rl train: step 2/2 .*loss -?\d+\.\d{3}, reward -?\d+\.\d{3}$", err, flags=re.M)
