"""`--report_to` for the training commands without a Trainer or an Accelerator of their own (nano train, judge
train, mapper train): accelerate's TensorBoard / W&B trackers, as `vizer train` (Accelerator) and the Trainer
-backed commands (style, rl: TrainingArguments.report_to) use them. TensorBoard logs go to `<out>/runs/<name>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .. import CapalignError

REPORT_TO = ("tensorboard", "wandb", "none")
REPORT_HELP = "Where training metrics go besides the run's JSON: tensorboard (logs in <out>/runs), wandb, or none."


def check_report_to(value: str) -> None:
    if value not in REPORT_TO:
        raise ValueError(f"report_to must be one of {', '.join(REPORT_TO)}, got {value!r}")


class Tracker:
    """One run's metric logger: `log({"train/loss": x}, step)`; `close()` flushes. report_to "none" logs nothing."""

    def __init__(self, report_to: str, out: str | Path, name: str, config: dict | None = None):
        check_report_to(report_to)
        self.tracker = None
        if report_to == "tensorboard":
            from accelerate.tracking import TensorBoardTracker

            self.tracker = TensorBoardTracker(name, Path(out) / "runs")
        elif report_to == "wandb":
            try:
                from accelerate.tracking import WandBTracker

                self.tracker = WandBTracker(name)
            except ImportError:
                raise CapalignError("--report_to wandb needs the wandb package (pip install wandb)") from None
        if self.tracker is not None:
            self.tracker.start()
        if self.tracker is not None and config:
            self.tracker.store_init_configuration({k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))})

    def log(self, values: dict, step: int) -> None:
        if self.tracker is not None:
            self.tracker.log(values, step=step)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()

    def logged_loss(self, loss_fn: Callable | None = None) -> Callable:
        """A `training.loop.fit` loss_fn that also logs each step's loss (`loss_fn` None: the model's own loss)."""
        step = 0

        def fn(model, batch):
            nonlocal step
            loss = loss_fn(model, batch) if loss_fn is not None else model(**batch).loss
            step += 1
            self.log({"train/loss": loss.item()}, step)
            return loss

        return fn
