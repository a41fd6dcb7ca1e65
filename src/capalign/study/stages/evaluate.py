"""Stages `caption` and `evaluate`: every system of a seed (the Base, each ViZer run, and whatever later
stages add) captions the test split (`capalign caption` fields), then is scored (`capalign evaluate`
fields) into RUN/seed-<s>/captions/<System>.jsonl and eval/<System>.json.

Captions go to `<System>.jsonl.part` (resumable: an interrupted run continues where it stopped) and are
renamed when complete, so a `<System>.jsonl` in the run folder is always whole.
"""

from __future__ import annotations

import os
from pathlib import Path

from ... import CapalignError
from ...caption import CaptionConfig, caption_source
from ...io import atomic_write_json, read_jsonl, read_references
from ...metrics import evaluate as ev
from ...utils import print0
from .. import layout
from ..stage import Context, Stage


class CaptionStage(Stage):
    name, help = "caption", "Caption the test split with every system (`capalign caption`)."
    command, owned = CaptionConfig, ("model", "images", "out", "adapter", "limit", "seed")
    needs = ("base", "data")

    def publish(self, ctx: Context) -> None:
        if ctx.test_manifest is None:
            raise CapalignError("stage caption needs data.test (test images with references) in the recipe")
        ctx.systems = {"Base": None, **ctx.systems}  # the baseline first
        ctx.captions = {name: ctx.root / layout.captions(ctx.seed, name) for name in ctx.systems}

    def outputs(self, ctx: Context) -> list[Path]:
        return list(ctx.captions.values())

    def run(self, ctx: Context) -> None:
        from ...data.sources import open_images
        from ...models import load_vlm
        from ...utils import seed_everything

        for name, adapter in ctx.systems.items():
            final = ctx.captions[name]
            if final.exists():
                continue
            cfg = self.command_config(ctx, model=ctx.model, images=ctx.data["test"], out=str(final), adapter=str(adapter or ""), seed=ctx.seed)
            part = final.with_name(final.name + ".part")
            vlm = load_vlm(cfg.model, device=cfg.device, dtype=cfg.dtype, adapter=cfg.adapter or None, prompt=cfg.prompt)
            vlm.vision_batch_size = cfg.vision_batch_size
            seed_everything(cfg.seed)
            source = open_images(cfg.images)
            stats = caption_source(vlm, source, part, cfg.batch_size, cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_p)
            os.replace(part, final)
            print0(f"caption: {name}: {stats.captioned} captioned ({stats.resumed} resumed, {len(stats.skipped)} unreadable) -> {final}")


class EvaluateStage(Stage):
    name, help = "evaluate", "Score every system's captions (`capalign evaluate`): per-caption and corpus."
    command, owned = ev.EvaluateConfig, ("pred", "refs", "out", "images")
    placeholders = {"refs": "x"}
    needs = ("caption",)

    def publish(self, ctx: Context) -> None:
        ctx.evals = {name: ctx.root / layout.eval_file(ctx.seed, name) for name in ctx.systems}

    def outputs(self, ctx: Context) -> list[Path]:
        return list(ctx.evals.values())

    def run(self, ctx: Context) -> None:
        cfg = self.command_config(ctx, pred=["x"], refs=str(ctx.test_manifest), out="x")
        names = [m.strip() for m in cfg.metrics.split(",") if m.strip()]
        ev._check_models(cfg, names)
        refs = read_references(str(ctx.test_manifest))
        images, images_from = ev._image_map(cfg, refs) if {"clipscore", "judge"} & set(names) else ({}, "")
        for name, path in ctx.evals.items():
            if path.exists():
                continue
            if not ctx.captions[name].exists():
                raise CapalignError(f"no captions of {name} to evaluate: {ctx.captions[name]}")
            res = ev.evaluate_system(list(read_jsonl(ctx.captions[name])), refs, names, cfg, images, images_from)
            atomic_write_json(path, res)
            print0(f"evaluate: {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in res["corpus"].items() if k in ("CIDEr", "recall_name", "chair_i_name")))
