"""Stage `base`: the model every system starts from.

`model: HUB_ID_OR_FOLDER` uses an existing model as is (`{seed}` in it is replaced by the seed, e.g.
`runs/demo/seed-{seed}/base/nano-web` to reuse another study's Bases). Otherwise the nano captioner
(`capalign nano train` fields) is trained like SmolVLM-Base was: it learns to see on clean factual
captions, then imitates vague web alt-text (`web_steps` of web mode). Trained on web captions from
scratch it ignores the image (docs/vizer.md), which no alignment method can repair.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ... import CapalignError
from ...config import arg
from ...nano import train as nano
from .. import layout
from ..stage import Context, Stage


@dataclass
class BaseOptions:
    model: str = arg(None, "Use this model (hub id or folder; `{seed}` is replaced by the seed) instead of training the nano captioner.")
    web_steps: int = arg(700, "Steps of the web-mode fine-tuning that follows the clean pre-training (`steps`).")
    web_lr: float = arg(1e-3, "Learning rate of the web-mode fine-tuning.")
    web_from_scratch: bool = arg(False, "No clean pre-training: web mode from scratch for `steps` (such a Base ignores the image).")

    def __post_init__(self):
        if self.web_steps < 1:
            raise ValueError("web_steps must be >= 1")


class BaseStage(Stage):
    name, help = "base", "The Base model: a hub model, or the nano captioner trained clean then web."
    command, owned, options = nano.NanoTrainConfig, ("out", "seed", "mode", "init_from"), BaseOptions
    needs = ()

    def validate(self, section: dict, where: str) -> None:
        super().validate(section, where)
        if section.get("model"):
            trains = sorted(k for k in section if k != "model")
            if trains:
                raise CapalignError(f"{where}: base.model uses an existing model; the training fields {', '.join(trains)} do not apply")

    def publish(self, ctx: Context) -> None:
        o = self.opts(self.section(ctx))
        ctx.model = o.model.replace("{seed}", str(ctx.seed)) if o.model else str(ctx.root / layout.base_dir(ctx.seed, "nano-web"))

    def outputs(self, ctx: Context) -> list[Path]:
        return [] if self.opts(self.section(ctx)).model else [Path(ctx.model) / "nano_result.json"]

    def run(self, ctx: Context) -> None:
        o = self.opts(self.section(ctx))
        if o.model:
            return
        base, clean = Path(ctx.model), ctx.root / layout.base_dir(ctx.seed, "nano-clean")
        pretrain = not o.web_from_scratch
        if pretrain and not (clean / "nano_result.json").exists():
            nano.run(self.command_config(ctx, out=str(clean), mode="clean", seed=ctx.seed))
        cfg = self.command_config(ctx, out=str(base), mode="web", seed=ctx.seed + 1, init_from=str(clean) if pretrain else None)
        if pretrain:  # the fine-tune: its own steps and learning rate; its tower comes from the clean model (vision_from
            cfg.steps, cfg.lr, cfg.vision_from = o.web_steps, o.web_lr, None  # applied there, not again over its training)
        nano.run(cfg)
