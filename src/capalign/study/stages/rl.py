"""Stage `rl`: the RL baseline (`capalign rl train`: GRPO, LoRA on the language model) from the seed's Base,
one run per reward, each a system `RL_<reward>` that caption, evaluate, features and summary then pick up.

`rewards: [judge, cider]` lists `capalign.rl.rewards.build_reward` specs (a weighted mix such as
`cider:1,grounding:0.5` becomes `RL_cider_1_grounding_0_5`). The judge is the `judge` field (a hub id such as
Qwen/Qwen2.5-VL-3B-Instruct, or a `capalign judge train` folder), the same field `capalign rl train --judge`
takes. The training images are a data split of the study (`split`, default `unlabeled`: the images ViZer
trains on, so RL and ViZer see the same images and differ in the signal: RL also reads their references).
Each run writes RUN/rl/<System>-seed<s>/ (docs/run-layout.md): the adapter, checkpoints (a killed study resumes
from them), history.json (the report's reward curves) and rl_result.json, written last (the done marker).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ... import CapalignError
from ...config import arg
from ...rl import train as rl_trainer
from .. import layout
from ..stage import Context, Stage


def system_name(spec: str) -> str:
    """'judge' -> RL_judge; 'cider:1,grounding:0.5' -> RL_cider_1_grounding_0_5."""
    return "RL_" + re.sub(r"[^A-Za-z0-9]+", "_", spec.replace(" ", "")).strip("_")


@dataclass
class RLOptions:
    rewards: list[str] = arg(["judge", "cider"], "Rewards, one RL run (system RL_<reward>) each: `capalign rl train --reward` specs (a list; as a string, ';'-separated).")
    split: str = arg("unlabeled", "Data split whose images (and references) RL trains on: unlabeled (ViZer's images) or mapper.")

    def __post_init__(self):
        # a YAML list; as one string (`--set rl.rewards=judge;cider`) the specs are split on ';' (a spec has commas)
        items = self.rewards if isinstance(self.rewards, (list, tuple)) else str(self.rewards or "").split(";")
        self.rewards = [str(r).strip() for r in items if str(r).strip()]
        names = [system_name(r) for r in self.rewards]
        if not self.rewards or len(set(names)) != len(names):
            raise ValueError(f"rewards must be a non-empty list of distinct reward specs, got {self.rewards}")
        if self.split not in ("unlabeled", "mapper"):
            raise ValueError(f"split must be unlabeled or mapper, got {self.split!r}")


class RLStage(Stage):
    name, help = "rl", "RL baseline (`capalign rl train`), one GRPO run per reward, from the seed's Base."
    command, owned, options = rl_trainer.RLTrainConfig, ("model", "data", "out", "reward", "seed"), RLOptions
    needs = ("base", "data")

    def validate(self, section: dict, where: str) -> None:
        super().validate(section, where)
        o = self.opts(section, where)
        if any("judge" in r for r in o.rewards) and not section.get("judge"):
            raise CapalignError(f"{where}: rl.rewards has a judge reward; set rl.judge (a hub VLM or a `capalign judge train` folder)")

    def runs(self, ctx: Context) -> dict[str, tuple[str, Path]]:
        """System -> (reward spec, run folder RUN/rl/<System>-seed<s>)."""
        return {system_name(r): (r, ctx.root / layout.rl_dir(ctx.seed, system_name(r))) for r in self.opts(self.section(ctx)).rewards}

    def publish(self, ctx: Context) -> None:
        split = self.opts(self.section(ctx)).split
        if split not in ctx.data:
            raise CapalignError(f"stage rl trains on data.{split}; add it to the recipe's data section")
        for system, (_, d) in self.runs(ctx).items():
            ctx.systems[system] = d

    def outputs(self, ctx: Context) -> list[Path]:
        return [d / "rl_result.json" for _, d in self.runs(ctx).values()]

    def run(self, ctx: Context) -> None:
        split = self.opts(self.section(ctx)).split
        for system, (spec, d) in self.runs(ctx).items():
            if (d / "rl_result.json").exists():
                continue
            rl_trainer.run(self.command_config(ctx, model=ctx.model, data=ctx.data[split], out=str(d), reward=spec, seed=ctx.seed))
