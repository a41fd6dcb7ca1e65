"""`--report_to tensorboard|wandb|none` on every training command (issue 20, item 4): TensorBoard by default; the
Trainer-backed commands (style, rl) pass it to their TrainingArguments, vizer to its Accelerator, and nano, judge
and mapper train (own loops) log their loss through training/tracking.py into <out>/runs/<name>.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from capalign.cli import COMMANDS, _load

TRAINING = [p for p in COMMANDS if p[-1] == "train"]


def scalars(folder: Path, tag: str = "train/loss") -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(p.parent for p in folder.rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard events under {folder}"
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.mark.parametrize("path", TRAINING, ids=[" ".join(p) for p in TRAINING])
def test_every_training_command_has_report_to_defaulting_to_tensorboard(path, cli):
    cfg_cls, _ = _load(path)
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    assert fields["report_to"].default == "tensorboard"
    required = [a for f in fields.values() if f.default is dataclasses.MISSING and f.name != "out" for a in (f"--{f.name}", "x")]
    r = cli(*path, "--out", "/tmp/never-written", "--report_to", "bogus", *required)
    assert r.code == 2 and len(r.error_lines) == 1 and "report_to must be one of tensorboard, wandb, none" in r.error_lines[0], r.err


def test_trainer_backed_commands_pass_report_to():
    from capalign.rl.config import RLTrainConfig
    from capalign.rl.train import grpo_args
    from capalign.style.config import StyleTrainConfig
    from capalign.style.train import training_args

    for report_to, want in (("tensorboard", ["tensorboard"]), ("none", [])):
        style = StyleTrainConfig(model="m", data="d", out="/tmp/x", report_to=report_to, device="cpu")
        assert training_args(style, 2)[0]["report_to"] == want
        rl = RLTrainConfig(model="m", data="d", out="/tmp/x", report_to=report_to, device="cpu", batch_size=2, num_generations=2)
        assert grpo_args(rl, [1.0]).report_to == want


def test_nano_and_judge_train_log_their_loss(tmp_path, one_thread):
    from capalign.judge.train import JudgeTrainConfig
    from capalign.judge.train import run as judge_run
    from capalign.nano.train import NanoTrainConfig
    from capalign.nano.train import run as nano_run

    tiny = dict(n_train=8, n_val=4, steps=3, batch_size=4, vision_width=16, text_width=32, text_layers=1, vocab_size=300, eval_batch_size=4)
    result = nano_run(NanoTrainConfig(out=str(tmp_path / "nano"), **tiny))
    logged = scalars(tmp_path / "nano" / "runs" / "nano")
    assert [s for s, _ in logged] == [1, 2, 3]
    assert logged[-1][1] == pytest.approx(result["final_loss"] * 3 - logged[0][1] - logged[1][1], rel=1e-4)  # the mean of the 3 losses
    judge_run(JudgeTrainConfig(out=str(tmp_path / "judge"), report_to="none", **tiny))
    assert not (tmp_path / "judge" / "runs").exists()
    judge_run(JudgeTrainConfig(out=str(tmp_path / "judge-tb"), **tiny))
    assert [s for s, _ in scalars(tmp_path / "judge-tb" / "runs" / "judge")] == [1, 2, 3]


def test_mapper_and_vizer_train_log(tmp_path, cli, tiny_idefics3_path, one_thread):
    from capalign.data.shapes import write_dataset

    shapes = write_dataset(tmp_path / "shapes", 4, seed=0)
    assert cli("mapper", "train", "--model", tiny_idefics3_path, "--data", shapes, "--out", tmp_path / "mapper", "--width", 8, "--samples", 4,
               "--batch_size", 1, "--val_fraction", 0.25, "--device", "cpu").code == 0
    assert [s for s, _ in scalars(tmp_path / "mapper" / "runs" / "mapper")] == [1, 2, 3]  # 3 training pairs, batch 1
    r = cli("vizer", "train", "--model", tiny_idefics3_path, "--mapper", tmp_path / "mapper", "--images", shapes, "--out", tmp_path / "vizer",
            "--max_new_tokens", 4, "--max_steps", 2, "--batch_size", 2, "--device", "cpu", "--save_every", 0, "--report_to", "none")
    assert r.code == 0, r.err
    assert not list((tmp_path / "vizer").rglob("events.out.tfevents.*"))
