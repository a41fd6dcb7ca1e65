"""Stage `style`: the data-efficiency sweep of stylistic alignment (`capalign style sweep`) into RUN/style/.

Study-wide, not per seed: the sweep has its own seeds (`seeds: 3` = budget subsets, LoRA inits and data
orders 0..2) and trains every cell from the Base of the study's first seed, or from `base_model`
(`nano-styled`: the nano captioner trained with `--mode styled` into RUN/style/nano-styled, the shapes
world's stand-in; a clean or web nano Base cannot learn the style words with LoRA alone, docs/style.md). Its preference data is its own
(`data:`, e.g. a FlickrStyle10K folder or `shapes:500`), not the data stage's captioned images. It writes
RUN/style/sweep.json (read by `capalign report`: learning curves and saturation table), cells.csv, one plot
per measure and one folder per cell. The stage is done when sweep.json lists no missing cell; a
re-run resumes the unfinished cells (the sweep skips cells with a result.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ... import CapalignError
from ...config import arg
from ...nano import train as nano
from ...style import sweep as style_sweep
from .. import layout
from ..stage import Context, Stage

STYLED_NANO = "nano-styled"


@dataclass
class StyleOptions:
    base_model: str = arg("", "Train the cells from this model (hub id or folder) instead of the first seed's Base; "
                              f"`{STYLED_NANO}`: the nano captioner trained with `capalign nano train --mode styled` (seed 0) into "
                              "RUN/style/nano-styled first, the shapes-world stand-in (docs/style.md).")


class StyleStage(Stage):
    name, help = "style", "Data-efficiency sweep of SFT/DPO/SimPO over budgets and styles (`capalign style sweep`); style/sweep.json."
    command, owned, needs, per_seed = style_sweep.StyleSweepConfig, ("model", "out"), (), False
    options = StyleOptions
    placeholders = {"model": "x", "out": "x"}

    def outputs(self, ctx: Context) -> list[Path]:
        sweep = ctx.root / layout.STYLE_SWEEP
        try:  # an interrupted or partly failed sweep lists its missing cells: their result.json files are outputs still to come
            missing = json.loads(sweep.read_text()).get("missing") or [] if sweep.exists() else []
        except json.JSONDecodeError:
            missing = ["(sweep.json unreadable)"]
        return [sweep, *(ctx.root / layout.STYLE / "cells" / m / "result.json" for m in missing)]

    def run(self, ctx: Context) -> None:
        model = self.opts(self.section(ctx)).base_model or ctx.seeds[min(ctx.seeds)].model
        if not model:
            raise CapalignError("stage style has no model: add a base stage to the recipe or set style.base_model")
        if model == STYLED_NANO:
            folder = ctx.root / layout.STYLE / STYLED_NANO
            if not (folder / "nano_result.json").exists():
                nano.run(nano.NanoTrainConfig(out=str(folder), mode="styled", seed=0))
            model = str(folder)
        style_sweep.run(self.command_config(ctx, model=model, out=str(ctx.root / layout.STYLE)))
