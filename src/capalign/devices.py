"""Device, weights dtype and mixed precision: one rule for every command.

- `resolve_device(flag)`: auto = cuda > mps > cpu; an explicit cuda without CUDA is an error.
- `resolve_dtype(flag, device)`: the weights dtype of inference commands (`--dtype`: caption, mapper
  features, judge, evaluate's models). auto = bf16 on CUDA, fp32 elsewhere; fp16 on CPU is refused.
- `resolve_precision(flag, device)`: the training commands' `--mixed_precision` (vizer, style, rl train).
  auto = bf16 on a CUDA device that has it, fp16 on an older CUDA device, no mixed precision elsewhere,
  decided from the device the run will use (so `--device cpu` on a CUDA machine is fp32, not bf16);
  fp16 needs CUDA (CPU autocast has no fp16 kernels worth using); bf16 runs on CUDA with bf16 support
  and on CPU; MPS trains without mixed precision. The frozen base weights are stored in bf16 under bf16
  (half the memory; LoRA weights stay fp32, peft's default), in fp32 otherwise (fp16 autocasts from fp32).
Under `accelerate launch` / torchrun the process's device is the one accelerate picks; `device` is only
the single-process choice.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import CapalignError

DTYPE_NAMES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
_DTYPES = {"auto": None, "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CapalignError(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
    return device


def resolve_dtype(dtype: str, device: str):
    """'auto' is bf16 on CUDA and fp32 elsewhere; fp16 on CPU is refused (CPU kernels are missing or slow)."""
    import torch

    if dtype not in _DTYPES:
        raise CapalignError(f"unknown dtype {dtype!r}; expected one of {', '.join(_DTYPES)}")
    name = _DTYPES[dtype] or ("bfloat16" if device.startswith("cuda") else "float32")
    if device == "cpu" and name == "float16":
        raise CapalignError("dtype float16 is not supported on CPU; use float32 or bfloat16")
    return getattr(torch, name)


@dataclass(frozen=True)
class Precision:
    device: str  # the resolved single-process device: cpu, cuda, cuda:N, mps
    mixed_precision: str  # what accelerate and the Trainer get: no, bf16 or fp16
    weights: str  # dtype of the frozen base weights: float32 or bfloat16

    @property
    def bf16(self) -> bool:
        return self.mixed_precision == "bf16"

    @property
    def fp16(self) -> bool:
        return self.mixed_precision == "fp16"


def _bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(mixed_precision: str, device: str = "auto") -> Precision:
    """The training rule of the module docstring; a combination that cannot run is one CapalignError line."""
    if mixed_precision not in MIXED_PRECISION:
        raise CapalignError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {mixed_precision!r}")
    dev = resolve_device(device)
    cuda = dev.startswith("cuda")
    mp = mixed_precision
    if mp == "auto":
        mp = ("bf16" if _bf16_supported() else "fp16") if cuda else "no"
    elif mp == "fp16" and not cuda:
        raise CapalignError(f"mixed_precision fp16 needs a CUDA device (the run's device is {dev}); use bf16 or no")
    elif mp == "bf16" and dev == "mps":
        raise CapalignError("mixed_precision bf16 is not supported on MPS here; use no")
    elif mp == "bf16" and cuda and not _bf16_supported():
        raise CapalignError("this CUDA device has no bf16; use --mixed_precision fp16 or no")
    return Precision(device=dev, mixed_precision=mp, weights="bfloat16" if mp == "bf16" else "float32")
