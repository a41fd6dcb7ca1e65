"""The one checkpoint finder of every resumable training command.

Checkpoints are `<out>/checkpoint-<step>/` (transformers' naming, `PREFIX_CHECKPOINT_DIR`). A checkpoint is
complete once its marker file exists: `trainer_state.json` for the Trainer-backed commands (the Trainer
writes it last), `progress.json` for `vizer train` (written before the folder is renamed into place). A run
that was killed while saving leaves an incomplete folder: it is never resumed from, and the main process
removes it.

The one resume rule of these commands: before any work, the config saved in `<out>` must be this command's
with the same settings (config.check_resume); right before training, `begin_run` saves the run's config, so
an interrupted run carries the settings its checkpoints were made with.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

TRAINER_MARKER = "trainer_state.json"


def checkpoints(out: str | Path) -> list[Path]:
    """Every `checkpoint-<step>` folder in `out`, oldest first."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    found = [(int(m.group(1)), p) for p in Path(out).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and (m := pattern.match(p.name))]
    return [p for _, p in sorted(found)]


def last_checkpoint(out: str | Path, marker: str = TRAINER_MARKER) -> str | None:
    """The newest complete checkpoint in `out` (None if there is none); incomplete newer ones are removed
    by the main process."""
    from ..utils import is_main_process

    for c in reversed(checkpoints(out)):
        if (c / marker).exists():
            return str(c)
        if is_main_process():
            shutil.rmtree(c, ignore_errors=True)
    return None


def rotate(out: str | Path, keep: int) -> None:
    """Keep the `keep` newest checkpoints (the Trainer does this itself with save_total_limit)."""
    for old in checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)



def begin_run(cfg, overwrite: bool, result_files: tuple[str, ...] = ()) -> None:
    """Right before training (inputs checked): under --overwrite remove an earlier run's checkpoints, exported
    step-<k>/ adapters and `result_files`; save cfg into cfg.out (main process only). The caller ran
    config.check_resume(cfg, cfg.out) first, before any work, which gave `overwrite`."""
    from ..config import save_config
    from ..utils import is_main_process

    out = Path(cfg.out)
    if getattr(cfg, "push_to_hub", None):  # the upload after training needs a token: say so before any training
        from .hub import hub_token

        hub_token()
    if not is_main_process():
        return
    if overwrite:
        for p in [*checkpoints(out), *out.glob(".tmp-checkpoint-*"), *out.glob("step-*")]:
            shutil.rmtree(p, ignore_errors=True)
        for name in result_files:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
