"""Small shared helpers: rank-0 printing, progress bars, seeding, device/dtype resolution."""

from __future__ import annotations

import os
import random

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import CapalignError

console = Console(stderr=True)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def print0(*args, **kw) -> None:
    if is_main_process():
        console.print(*args, **kw)


def progress(disable: bool = False) -> Progress:
    """A rich progress bar with count, rate and ETA (silent on non-main ranks)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable or not is_main_process(),
        transient=False,
    )


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


_DTYPES = {"auto": None, "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def resolve_dtype(dtype: str, device: str):
    """'auto' is bf16 on CUDA and fp32 elsewhere; fp16 on CPU is refused (CPU kernels are missing or slow)."""
    import torch

    if dtype not in _DTYPES:
        raise CapalignError(f"unknown dtype {dtype!r}; expected one of {', '.join(_DTYPES)}")
    name = _DTYPES[dtype] or ("bfloat16" if device.startswith("cuda") else "float32")
    if device == "cpu" and name == "float16":
        raise CapalignError("dtype float16 is not supported on CPU; use float32 or bfloat16")
    return getattr(torch, name)
