"""Stage `diagnose`: `capalign vizer diagnose` on the seed's test images with every mapper of the seed, right
after the mappers and before any ViZer run, into RUN/seed-<s>/diagnose.json.

A stage rather than a command to run by hand, so every study of a real model measures, per seed, whether its
reward tells a correct caption from a corrupted one before ViZer trains on that reward, and the numbers stay in
the run folder with the mappers they describe. The corruptions follow the test data (`corruptions: auto`):
shapes-world rows get exact-scene errors, any other captioned set the free-text rules (data/corrupt.py).
`capalign study RECIPE --until diagnose` stops there: read the AUCs, then run the same command without
`--until` to go on (finished stages are skipped).
"""

from __future__ import annotations

from pathlib import Path

from ... import CapalignError
from ...vizer import diagnose as diagnose_mod
from .. import layout
from ..stage import Context, Stage


class DiagnoseStage(Stage):
    name, help = "diagnose", "The ViZer reward check (`capalign vizer diagnose`): per-corruption AUC of every mapper on the test images, before ViZer."
    command, owned = diagnose_mod.DiagnoseConfig, ("model", "data", "mappers", "out", "seed")
    needs = ("mapper", "data")

    def publish(self, ctx: Context) -> None:
        if "test" not in ctx.data:
            raise CapalignError("stage diagnose needs data.test (held-out images with captions) in the recipe")

    def outputs(self, ctx: Context) -> list[Path]:
        return [ctx.root / layout.diagnose(ctx.seed)]

    def run(self, ctx: Context) -> None:
        diagnose_mod.run(self.command_config(ctx, model=ctx.model, data=ctx.data["test"], mappers=[str(p) for p in ctx.mappers.values()],
                                             out=str(ctx.root / layout.diagnose(ctx.seed)), seed=ctx.seed))
