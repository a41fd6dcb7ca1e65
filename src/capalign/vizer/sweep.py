"""`capalign vizer sweep`: mapper widths x mapper data sizes (the paper's Figure 3), as a table and heatmap.

For every (width, samples) cell: fit a mapper on the cached features (the VLM runs once, for the
largest size; smaller sizes read a prefix), run ViZer with it, caption the test images and score them.
Results are written per cell, so an interrupted sweep resumes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import arg, check_resume, save_config, show_config
from ..io import atomic_write_bytes, atomic_write_json, read_jsonl, read_references
from ..plotting import heatmap_png
from ..utils import print0


@dataclass
class SweepConfig:
    """Sweep mapper width x mapper data size; write results.json and a heatmap of one metric."""

    model: str = arg(help="VLM: hub id or local folder.")
    mapper_data: str = arg(help="Images (+ captions for gt) for the mappers.")
    images: str = arg(help="Unlabeled images for ViZer training.")
    test: str = arg(help="Test images with references (a manifest/dataset folder with captions, objects optional).")
    out: str = arg(help="Output folder.")
    variant: str = arg("gt", "Mapper variant: gt or g.")
    widths: str = arg("128,256,512,1024", "Comma-separated mapper widths.")
    sizes: str = arg("500,1000,2000", "Comma-separated mapper data sizes (pairs).")
    metric: str = arg("CIDEr", "Metric for the heatmap (any corpus key of `capalign evaluate`, e.g. CIDEr, BLEU4, recall_attr).")
    mapper_epochs: int = arg(1, "Mapper epochs.")
    vizer_batch_size: int = arg(16, "ViZer images per step.")
    vizer_lr: float = arg(1e-4, "ViZer LoRA learning rate.")
    vizer_max_steps: int = arg(None, "Cap on ViZer steps per cell.")
    max_new_tokens: int = arg(32, "Caption length.")
    device: str = arg("auto", "Device.")
    seed: int = arg(0, "Seed.")
    overwrite: bool = arg(False, "Start over: discard the cells and feature cache of an earlier sweep in --out instead of reusing them, "
                                 "also when its settings differ (a re-run may add widths and sizes; other changes are refused).")
    resume_free = ("widths", "sizes", "metric")  # a re-run may add cells and draw another heatmap; every other field changes the cells

    def __post_init__(self):
        try:
            self.width_list = [int(w) for w in str(self.widths).split(",") if w.strip()]
            self.size_list = [int(s) for s in str(self.sizes).split(",") if s.strip()]
        except ValueError:
            self.width_list = []
        if not self.width_list or not self.size_list or min(self.width_list + self.size_list) < 1:
            raise ValueError(f"widths and sizes must be comma-separated positive integers, got {self.widths!r} and {self.sizes!r}")


def run(cfg: SweepConfig) -> dict:
    from ..caption import caption_source
    from ..data.sources import open_images
    from ..metrics.evaluate import evaluate_system
    from ..models import load_vlm
    from . import mapper as mapper_mod
    from . import train as vizer_mod

    show_config(cfg)
    test_manifest = Path(cfg.test) / "manifest.jsonl" if Path(cfg.test).is_dir() else Path(cfg.test)
    refs = read_references(test_manifest)  # checked before hours of training, not after
    out = Path(cfg.out)
    if check_resume(cfg, out):  # --overwrite: the cells of the earlier sweep go
        for p in [*out.glob("w*-n*"), out / "feature-cache"]:
            shutil.rmtree(p, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    cells = {}
    for w in cfg.width_list:
        for n in sorted(cfg.size_list, reverse=True):  # largest first: smaller sizes reuse its feature cache
            cell = out / f"w{w}-n{n}"
            done = cell / "scores.json"
            if not done.exists():
                mapper_mod.run(mapper_mod.MapperTrainConfig(model=cfg.model, data=cfg.mapper_data, out=str(cell / "mapper"), variant=cfg.variant,
                                                            width=w, samples=n, epochs=cfg.mapper_epochs, max_new_tokens=cfg.max_new_tokens,
                                                            seed=cfg.seed, device=cfg.device, cache_dir=str(out / "feature-cache")))
                vizer_mod.run(vizer_mod.VizerTrainConfig(model=cfg.model, mapper=str(cell / "mapper"), images=cfg.images, out=str(cell / "vizer"),
                                                         batch_size=cfg.vizer_batch_size, lr=cfg.vizer_lr, max_steps=cfg.vizer_max_steps,
                                                         max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, device=cfg.device, save_every=0))
                vlm = load_vlm(cfg.model, device=cfg.device, adapter=str(cell / "vizer"))
                pred = cell / "captions.jsonl"
                caption_source(vlm, open_images(cfg.test), pred, max_new_tokens=cfg.max_new_tokens, show_progress=False)
                atomic_write_json(done, evaluate_system(list(read_jsonl(pred)), refs, ["bleu", "rouge", "cider", "grounding"])["corpus"])
            cells[(w, n)] = json.loads(done.read_text())
    grid = [[cells[(w, n)].get(cfg.metric, float("nan")) for n in cfg.size_list] for w in cfg.width_list]
    table = [{"width": w, "samples": n, **cells[(w, n)]} for w in cfg.width_list for n in cfg.size_list]
    atomic_write_json(out / "results.json", {"metric": cfg.metric, "variant": cfg.variant, "cells": table})
    atomic_write_bytes(out / f"heatmap-{cfg.metric}.png", heatmap_png(grid, cfg.width_list, cfg.size_list, f"ViZer_{cfg.variant.upper()}: {cfg.metric}"))
    print0("width \\ samples  " + "  ".join(f"{n:>8}" for n in cfg.size_list))
    for w, row in zip(cfg.width_list, grid):
        print0(f"{w:>15}  " + "  ".join(f"{v:8.4f}" for v in row))
    print0(f"wrote {out / 'results.json'} and {out / f'heatmap-{cfg.metric}.png'}")
    return {"cells": table}
