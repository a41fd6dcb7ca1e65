"""Stages `mapper` and `vizer`: the ViZer mappers (GT: human captions, G: the Base's own captions) and the
zero-label LoRA runs, one per (variant, training-caption sampling) arm.

The budget curve: `vizer.steps: [25, 50, 100]` trains each arm once, to the largest count, and snapshots
the adapter at every count (`capalign vizer train --export_steps`): the learning rate is constant after
warmup and the image order does not depend on the total, so the snapshot at k steps is exactly the
adapter of a k-step run (tested), and the Base and mappers are shared by every point. Each point is a
system `ViZer_<V>@<k>` (`ViZer_<V>_sampled@<k>` for sampled training captions: `sampling: [greedy, sampled]`).

Mappers beyond the paper's: `mapper.extra: {late: {variant: gt, objective: late, pooling: grid1x3}}` trains one
more mapper per name (the section's settings with these on top) into mappers/<name>; ViZer then trains with it
too (system `ViZer_<name>`, the name as written), its reward the objective the mapper was trained with.
"""

from __future__ import annotations

import re
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
    extra: dict | None = arg(None, "More mappers, {name: {mapper train fields}} on top of this section's, e.g. {late: {variant: gt, "
                                   "objective: late, pooling: grid1x3}}: mappers/<name>, and a ViZer system ViZer_<name>.")

    def __post_init__(self):
        self.variants = as_list(self.variants)
        bad = [v for v in self.variants if v not in ("gt", "g")]
        if bad or not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants must be a non-empty subset of [gt, g], got {self.variants}")
        self.extra = self.extra or {}
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra must be a mapping {{name: {{field: value}}}}, got {self.extra!r}")
        for name, spec in self.extra.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", str(name)) or name in ("gt", "g"):
                raise ValueError(f"extra mapper name {name!r}: letters, digits and _ (starting with a letter), not gt or g")
            if not isinstance(spec, dict) or spec.get("variant", "gt") not in ("gt", "g"):
                raise ValueError(f"extra.{name} must be a mapping of mapper train fields with variant gt or g, got {spec!r}")

    def mappers(self) -> dict[str, tuple[str, dict]]:
        """Every mapper of the section: name -> (variant, settings over the section's)."""
        extra = {n: (spec.get("variant", "gt"), {k: v for k, v in spec.items() if k != "variant"}) for n, spec in self.extra.items()}
        return {**{v: (v, {}) for v in self.variants}, **extra}


class MapperStage(Stage):
    name, help = "mapper", "ViZer mappers (`capalign mapper train`), one per variant."
    command, owned, options = mapper_mod.MapperTrainConfig, ("model", "data", "out", "variant", "seed", "cache_dir"), MapperOptions
    needs = ("base", "data")

    def validate(self, section: dict, where: str) -> None:
        super().validate(section, where)
        allowed = set(self.fields()) - {f.name for f in MapperOptions.__dataclass_fields__.values()}
        for name, (_, over) in self.opts(section, where).mappers().items():
            bad = sorted(set(over) - allowed)
            if bad:
                raise CapalignError(f"{where}: mapper.extra.{name}: unknown or study-set field(s) {', '.join(bad)}")
            self.command_config(None, {**section, **over}, f"{where}: mapper.extra.{name}", model="x", data="x", out="x")

    def publish(self, ctx: Context) -> None:
        if "mapper" not in ctx.data:
            raise CapalignError("stage mapper needs data.mapper (mapper images) in the recipe")
        for name in self.opts(self.section(ctx)).mappers():
            ctx.mappers[name] = ctx.root / layout.mapper_dir(ctx.seed, name)

    def outputs(self, ctx: Context) -> list[Path]:
        return [ctx.mappers[n] / "mapper_meta.json" for n in self.opts(self.section(ctx)).mappers()]

    def run(self, ctx: Context) -> None:
        for name, (v, over) in self.opts(self.section(ctx)).mappers().items():
            if not (ctx.mappers[name] / "mapper_meta.json").exists():
                mapper_mod.run(self.command_config(ctx, {**self.section(ctx), **over}, model=ctx.model, data=ctx.data["mapper"],
                                                   out=str(ctx.mappers[name]), variant=v, seed=ctx.seed,
                                                   cache_dir=str(ctx.root / layout.feature_cache(ctx.seed))))


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
            label = "ViZer_" + (v.upper() if v in ("gt", "g") else v) + ("_sampled" if sampled else "")
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
