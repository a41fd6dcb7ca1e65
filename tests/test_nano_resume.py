"""Issue 21 item 4: an interrupted `nano train` leaves a folder that `load_vlm` refuses, and the same
command resumes from its newest checkpoint to the weights an uninterrupted run gives."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from capalign import CapalignError
from capalign.cli import main
from capalign.models import load_vlm

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--steps", "6", "--save_every", "2", "--n_train", "8", "--n_val", "2", "--batch_size", "4", "--eval_batch_size", "2"]


def _interrupt_at_step(monkeypatch, k: int) -> None:
    """Ctrl-C during training step k (clip_grad_norm_ runs once per step of the nano loop)."""
    real, calls = torch.nn.utils.clip_grad_norm_, []

    def clip(*a, **kw):
        calls.append(1)
        if len(calls) == k:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)


def _weights(folder) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_interrupted_nano_train_is_refused_then_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["nano", "train", "--out", str(full), *TINY]) == 0

    with monkeypatch.context() as m:
        _interrupt_at_step(m, 5)  # after the checkpoint of step 4
        assert main(["nano", "train", "--out", str(cut), *TINY]) == 130
    assert "re-run the same command to resume" in capsys.readouterr().err
    assert [p.name for p in (cut / "checkpoints").iterdir()] == ["checkpoint-4"]  # older ones rotated away
    with pytest.raises(CapalignError, match="is an unfinished model"):
        load_vlm(str(cut), device="cpu")

    with monkeypatch.context() as m:
        _interrupt_at_step(m, 3)  # the resume runs steps 5 and 6 only: an interrupt at its 3rd step would mean it started over
        assert main(["nano", "train", "--out", str(cut), *TINY]) == 0
    assert "resuming from" in "".join(capsys.readouterr())
    a, b = _weights(full), _weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (cut / "checkpoints").exists() and not (cut / "capalign_unfinished.json").exists()
    load_vlm(str(cut), device="cpu")  # finished: loads


def test_resume_with_other_settings_is_refused_and_overwrite_starts_over(tmp_path, monkeypatch, capsys):
    out = tmp_path / "nano"
    with monkeypatch.context() as m:
        _interrupt_at_step(m, 3)
        assert main(["nano", "train", "--out", str(out), *TINY]) == 130
    assert main(["nano", "train", "--out", str(out), *TINY, "--lr", "0.01"]) == 2
    assert "lr: 0.003 before, 0.01 now" in capsys.readouterr().err
    assert (out / "checkpoints" / "checkpoint-2").is_dir()  # the refusal kept the checkpoint
    with monkeypatch.context() as m:
        _interrupt_at_step(m, 3)  # --overwrite starts over: step 3 of the new run is reached again
        assert main(["nano", "train", "--out", str(out), *TINY, "--lr", "0.01", "--overwrite"]) == 130


def test_interrupt_message_promises_a_resume_only_for_commands_that_resume(tmp_path, monkeypatch, capsys):
    import capalign.data.shapes as shapes_cmd

    def ctrl_c(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(shapes_cmd, "run", ctrl_c)
    assert main(["shapes", "--out", str(tmp_path / "ds"), "--n", "2"]) == 130
    err = capsys.readouterr().err
    assert "does not resume" in err and "to resume" not in err


def test_retraining_over_a_finished_folder_marks_it_unfinished_until_done(tmp_path, monkeypatch):
    out = tmp_path / "nano"
    assert main(["nano", "train", "--out", str(out), *TINY]) == 0
    assert (out / "nano_result.json").is_file()
    with monkeypatch.context() as m:
        _interrupt_at_step(m, 1)  # a second run over the finished folder, stopped before its first checkpoint
        assert main(["nano", "train", "--out", str(out), *TINY, "--lr", "0.01"]) == 130
    assert not (out / "nano_result.json").exists()  # the study's "stage done" marker is gone with the old model
    with pytest.raises(CapalignError, match="is an unfinished model"):
        load_vlm(str(out), device="cpu")
