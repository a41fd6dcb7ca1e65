"""Small shared helpers: rank-0 printing, progress bars, seeding (devices and dtypes: devices.py)."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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
    """Python, NumPy and torch (CPU and CUDA) RNGs: transformers' set_seed, which the Trainer-backed commands use too."""
    from transformers import set_seed

    set_seed(seed)
