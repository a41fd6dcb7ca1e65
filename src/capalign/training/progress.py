"""capalign's progress display (utils.progress: a bar on a terminal, plain lines in a log) for the
Trainer-backed commands (style train, rl train), in place of transformers' tqdm bar and printed log dicts.
TensorBoard and the other `report_to` integrations are callbacks of their own and unchanged."""

from __future__ import annotations

from transformers import TrainerCallback


class ProgressBar(TrainerCallback):
    """utils.progress driven by the Trainer: the step count at each optimizer step, the newest logged loss
    (and reward, for GRPO) as the bar's rate field."""

    def __init__(self, desc: str):
        self.desc, self.bar, self.task, self.rate = desc, None, None, ""

    def on_train_begin(self, args, state, control, **kw):
        from ..utils import progress

        self.bar = progress(disable=not state.is_world_process_zero)
        self.bar.start()
        self.task = self.bar.add_task(self.desc, total=state.max_steps, completed=state.global_step, rate="")

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        parts = [f"{k} {logs[k]:.3f}" for k in ("loss", "reward") if isinstance(logs.get(k), (int, float))]
        if parts:
            self.rate = ", ".join(parts)

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step, rate=self.rate)

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def show_progress(trainer, desc: str, disable: bool = False) -> None:
    """Replace the Trainer's own display (tqdm bar, or printed log dicts under disable_tqdm) with ProgressBar
    (nothing at all with `disable`)."""
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if not disable:
        trainer.add_callback(ProgressBar(desc))
