"""Stages `mapper` and `vizer`: the ViZer mappers (GT: human captions, G: the Base's own captions) and the
zero-label LoRA runs, one per (variant, training-caption sampling) arm.

The budget curve: `vizer.steps: [25, 50, 100]` trains each arm once, to the largest count, and snapshots
the adapter at every count (`capalign vizer train --export_steps`): the learning rate is constant after
warmup and the image order does not depend on the total, so the snapshot at k steps is exactly the
adapter of a k-step run (tested), and the Base and mappers are shared by every point. Each point is a
system `ViZer_<V>@<k>` (`ViZer_<V>_sampled@<k>` for sampled training captions: `sampling: [greedy, sampled]`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ... import CapalignError
from ...config import arg
from ...vizer import mapper as mapper_mod
from ...vizer import train as vizer_mod
from .. import layout
from ..stage import Context, Stage


def as_list(value, cast=str) -> list:
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [cast(str(v).strip()) for v in items if str(v).strip()]


@dataclass
class MapperOptions:
    variants: list[str] = arg(["gt", "g"], "Mappers to train: gt (human captions of the mapper split), g (the Base's own captions).")

    def __post_init__(self):
        self.variants = as_list(self.variants)
        bad = [v for v in self.variants if v not in ("gt", "g")]
        if bad or not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants must be a non-empty subset of [gt, g], got {self.variants}")


class MapperStage(Stage):
    name, help = "mapper", "ViZer mappers (`capalign mapper train`), one per variant."
    command, owned, options = mapper_mod.MapperTrainConfig, ("model", "data", "out", "variant", "seed", "cache_dir"), MapperOptions
    needs = ("base", "data")

    def publish(self, ctx: Context) -> None:
        if "mapper" not in ctx.data:
            raise CapalignError("stage mapper needs data.mapper (mapper images) in the recipe")
        for v in self.opts(self.section(ctx)).variants:
            ctx.mappers[v] = ctx.root / layout.mapper_dir(ctx.seed, v)

    def outputs(self, ctx: Context) -> list[Path]:
        return [ctx.mappers[v] / "mapper_meta.json" for v in self.opts(self.section(ctx)).variants]

    def run(self, ctx: Context) -> None:
        for v in self.opts(self.section(ctx)).variants:
            if not (ctx.mappers[v] / "mapper_meta.json").exists():
                mapper_mod.run(self.command_config(ctx, model=ctx.model, data=ctx.data["mapper"], out=str(ctx.mappers[v]), variant=v,
                                                   seed=ctx.seed, cache_dir=str(ctx.root / layout.feature_cache(ctx.seed))))


@dataclass
class VizerOptions:
    variants: list[str] = arg(None, "Mapper variants to train ViZer with (default: every mapper of the recipe).")
    steps: list[int] = arg(None, "Budget curve: evaluate the adapter after each of these step counts (one run per arm, to the largest; sets max_steps).")
    sampling: list[str] = arg(None, "Training captions per arm: greedy and/or sampled (default: as do_sample says).")

    def __post_init__(self):
        self.variants = as_list(self.variants) or None
        self.steps = sorted(set(as_list(self.steps, int))) or None
        self.sampling = as_list(self.sampling) or None
        if self.steps and self.steps[0] < 1:
            raise ValueError("steps must be >= 1")
        if self.sampling and (set(self.sampling) - {"greedy", "sampled"} or len(set(self.sampling)) != len(self.sampling)):
            raise ValueError(f"sampling must be a subset of [greedy, sampled], got {self.sampling}")


class VizerStage(Stage):
    name, help = "vizer", "ViZer LoRA runs (`capalign vizer train`), one per variant and sampling arm."
    command, owned, options = vizer_mod.VizerTrainConfig, ("model", "mapper", "images", "out", "seed", "export_steps"), VizerOptions
    needs = ("mapper", "data")

    def validate(self, section: dict, where: str) -> None:
        super().validate(section, where)
        if section.get("steps") is not None and section.get("max_steps") is not None:
            raise CapalignError(f"{where}: vizer.steps sets the run length (its largest count); drop vizer.max_steps")
        if section.get("sampling") is not None and section.get("do_sample") is not None:
            raise CapalignError(f"{where}: give vizer.sampling (arms) or vizer.do_sample, not both")

    def arms(self, ctx: Context) -> list[tuple[str, str, bool]]:
        """(arm name, variant, sampled) for every ViZer run of a seed."""
        o, sec = self.opts(self.section(ctx)), self.section(ctx)
        variants = o.variants or list(ctx.mappers)
        missing = [v for v in variants if v not in ctx.mappers]
        if missing:
            raise CapalignError(f"vizer.variants {missing} have no mapper; add them to mapper.variants")
        modes = o.sampling or (["sampled"] if str(sec.get("do_sample", False)).lower() in ("true", "1", "yes") else ["greedy"])
        return [(v + ("_sampled" if m == "sampled" else ""), v, m == "sampled") for v in variants for m in modes]

    def publish(self, ctx: Context) -> None:
        if "unlabeled" not in ctx.data:
            raise CapalignError("stage vizer needs data.unlabeled (unlabeled training images) in the recipe")
        steps = self.opts(self.section(ctx)).steps or []
        for arm, v, sampled in self.arms(ctx):
            d = ctx.root / layout.vizer_dir(ctx.seed, arm)
            label = "ViZer_" + v.upper() + ("_sampled" if sampled else "")
            if len(steps) > 1:
                names = [f"{label}@{k}" for k in steps]
                ctx.systems.update({n: d / f"step-{k}" for n, k in zip(names, steps)})
                ctx.budgets[label] = {"variant": v, "sampled": sampled, "steps": steps, "systems": names}
            else:
                ctx.systems[label] = d

    def outputs(self, ctx: Context) -> list[Path]:
        steps = self.opts(self.section(ctx)).steps or []
        out = []
        for arm, _, _ in self.arms(ctx):
            d = ctx.root / layout.vizer_dir(ctx.seed, arm)
            # vizer_result.json is written (atomically) after the adapter: it marks a finished run
            out += [d / "vizer_result.json"] + ([d / f"step-{k}" / "adapter_model.safetensors" for k in steps] if len(steps) > 1 else [])
        return out

    def run(self, ctx: Context) -> None:
        steps = self.opts(self.section(ctx)).steps
        for arm, v, sampled in self.arms(ctx):
            d = ctx.root / layout.vizer_dir(ctx.seed, arm)
            if (d / "vizer_result.json").exists():
                continue
            cfg = self.command_config(ctx, model=ctx.model, mapper=str(ctx.mappers[v]), images=ctx.data["unlabeled"], out=str(d),
                                      seed=ctx.seed, export_steps=",".join(map(str, steps or [])) if steps and len(steps) > 1 else "")
            cfg.do_sample = sampled
            if steps:
                cfg.max_steps = steps[-1]
            vizer_mod.run(cfg)
