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


LOG_SECONDS = 30.0  # a log line at least this often while work progresses
LOG_LINES = 10  # and about this many per task (every total/LOG_LINES steps)


class LogProgress(Progress):
    """What `progress()` gives when the console is not a terminal (output to a file or a pipe): no live bar
    (rich would draw it only at the end) but a plain line every `every` steps (default total/LOG_LINES) or
    LOG_SECONDS of work, and at the last step: `desc: step k/total (p%), r steps/s, ETA m:ss, <rate field>`."""

    def __init__(self, *columns, every: int | None = None, **kw):
        super().__init__(*columns, **{**kw, "disable": True})
        self.every, self._last = every, {}  # task -> (steps, time) at its last line

    def add_task(self, *a, **kw):
        import time

        task_id = super().add_task(*a, **kw)
        self._last[task_id] = (int(self._tasks[task_id].completed), time.monotonic())
        return task_id

    def update(self, task_id, **kw) -> None:
        import time

        super().update(task_id, **kw)
        task = self._tasks[task_id]
        done, total, now = int(task.completed), task.total, time.monotonic()
        first_done, first_t = self._last[task_id]
        every = self.every or max(1, int(total or 0) // LOG_LINES)
        due = done - first_done >= every or now - first_t >= LOG_SECONDS or (total is not None and done >= total)
        if done > first_done and due:
            self._last[task_id] = (done, now)
            console.print(log_line(task.description, done, total, task.speed, task.time_remaining, task.fields.get("rate", "")),
                          markup=False, highlight=False, soft_wrap=True)

    def advance(self, task_id, advance: float = 1) -> None:
        self.update(task_id, advance=advance)


def log_line(desc: str, done: int, total, speed: float | None, eta: float | None, extra: str = "") -> str:
    """One plain progress line: `desc: step k/total (p%), r steps/s, ETA m:ss, extra`."""
    parts = [f"{desc}: step {done}/{total if total is not None else '?'}" + (f" ({done / total:.0%})" if total else "")]
    if speed:
        parts.append(f"{speed:.2f} steps/s")
    if eta is not None:
        parts.append(f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")
    if extra:
        parts.append(extra)
    return ", ".join(parts)


def progress(disable: bool = False, every: int | None = None) -> Progress:
    """A rich progress bar with count, rate and ETA (silent on non-main ranks); when the console is not a
    terminal, plain lines instead (LogProgress; `every`: a line every N steps, default total/LOG_LINES)."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    if disable or not is_main_process():
        return Progress(*columns, console=console, disable=True)
    if not console.is_terminal:
        return LogProgress(*columns, console=console, every=every)
    return Progress(*columns, console=console, transient=False)


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (CPU and CUDA) RNGs: transformers' set_seed, which the Trainer-backed commands use too."""
    from transformers import set_seed

    set_seed(seed)
