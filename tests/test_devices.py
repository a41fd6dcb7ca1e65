"""One precision rule for every training command (capalign.devices.resolve_precision), for each (device, flag),
with the machine's CUDA faked: no CUDA, CUDA with bf16, CUDA without bf16 (e.g. a V100)."""

from __future__ import annotations

import pytest
import torch

from capalign import CapalignError
from capalign.devices import resolve_dtype, resolve_precision

NO, BF16, FP16 = "no", "bf16", "fp16"
ERR = "error"

# machine -> device flag -> {mixed_precision flag: expected mixed precision, or ERR}
EXPECTED = {
    "cpu-only": {
        "auto": {"auto": NO, "no": NO, "bf16": BF16, "fp16": ERR},
        "cpu": {"auto": NO, "no": NO, "bf16": BF16, "fp16": ERR},
        "cuda": {"auto": ERR, "no": ERR, "bf16": ERR, "fp16": ERR},  # no CUDA: the device itself is refused
    },
    "cuda-bf16": {
        "auto": {"auto": BF16, "no": NO, "bf16": BF16, "fp16": FP16},
        "cpu": {"auto": NO, "no": NO, "bf16": BF16, "fp16": ERR},  # --device cpu on a GPU machine trains in fp32
        "cuda": {"auto": BF16, "no": NO, "bf16": BF16, "fp16": FP16},
    },
    "cuda-fp16-only": {
        "auto": {"auto": FP16, "no": NO, "bf16": ERR, "fp16": FP16},
        "cpu": {"auto": NO, "no": NO, "bf16": BF16, "fp16": ERR},
        "cuda": {"auto": FP16, "no": NO, "bf16": ERR, "fp16": FP16},
    },
}


def fake_machine(monkeypatch, machine: str) -> None:
    cuda = machine != "cpu-only"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: machine == "cuda-bf16")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


CASES = [(m, d, f, want) for m, per in EXPECTED.items() for d, flags in per.items() for f, want in flags.items()]


@pytest.mark.parametrize("machine,device,flag,want", CASES, ids=[f"{m}-{d}-{f}" for m, d, f, _ in CASES])
def test_precision_for_each_device_and_flag(monkeypatch, machine, device, flag, want):
    fake_machine(monkeypatch, machine)
    if want == ERR:
        with pytest.raises(CapalignError):
            resolve_precision(flag, device)
        return
    p = resolve_precision(flag, device)
    assert p.mixed_precision == want
    assert p.weights == ("bfloat16" if want == BF16 else "float32")  # fp16 autocasts from fp32 weights
    assert p.device == ("cpu" if device == "cpu" or machine == "cpu-only" else "cuda")


def test_unknown_flag_and_mps(monkeypatch):
    fake_machine(monkeypatch, "cpu-only")
    with pytest.raises(CapalignError, match="mixed_precision must be one of"):
        resolve_precision("fp8")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_precision("auto").device == "mps" and resolve_precision("auto").mixed_precision == NO
    with pytest.raises(CapalignError, match="MPS"):
        resolve_precision("bf16")


def test_inference_dtype_rule(monkeypatch):
    fake_machine(monkeypatch, "cuda-bf16")
    assert resolve_dtype("auto", "cuda") == torch.bfloat16 and resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("fp16", "cuda") == torch.float16
    with pytest.raises(CapalignError, match="not supported on CPU"):
        resolve_dtype("fp16", "cpu")


@pytest.mark.parametrize("command", ["vizer", "style", "rl"])
def test_every_training_command_uses_the_rule(monkeypatch, tmp_path, command):
    """The configs of vizer, style and rl train share RunArgs' mixed_precision field, and their Trainer arguments come
    from the rule: --device cpu on a bf16 GPU machine trains without mixed precision (vizer and style used to pick bf16)."""
    from capalign.training.args import trainer_arguments

    fake_machine(monkeypatch, "cuda-bf16")
    if command == "vizer":
        from capalign.vizer.train import VizerTrainConfig as C

        cfg = C(model="m", mapper="m", images="x", out=str(tmp_path), device="cpu")
    elif command == "style":
        from capalign.style.config import StyleTrainConfig as C

        cfg = C(model="m", data="shapes:10", out=str(tmp_path), device="cpu")
    else:
        from capalign.rl.config import RLTrainConfig as C

        cfg = C(model="m", data="x", out=str(tmp_path), device="cpu")
    kw = trainer_arguments(cfg, 1, 1)
    assert (kw["bf16"], kw["fp16"], kw["use_cpu"]) == (False, False, True)
    cfg.device = "auto"
    kw = trainer_arguments(cfg, 1, 1)
    assert (kw["bf16"], kw["fp16"], kw["use_cpu"]) == (True, False, False)
