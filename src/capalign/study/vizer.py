"""`capalign vizer study`: Base vs ViZer_GT vs ViZer_G on the shapes world, as a recipe.

The flags map onto a ViZer-only recipe (`recipe_from_flags`) that `capalign study` runs; with the default
flags it is recipes/demo.yaml, what `make demo` runs (a test checks they agree). The multi-seed measurement:
`capalign vizer study --seeds 0,1,2,3,4` (each seed its own data, Base, mappers and ViZer runs; resumable
per seed), plus the ViZer budget: `--vizer_steps 25,50,100,200,400 --vizer_sampling greedy,sampled`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import arg, show_config
from .recipe import Recipe, from_dict, parse_seeds


@dataclass
class VizerStudyConfig:
    """Base vs ViZer_GT vs ViZer_G on the shapes world with the nano captioner (web mode), over one or more seeds."""

    out: str = arg("runs/study", "Run folder (re-running resumes).")
    seed: int = arg(0, "Seed for data and training (one seed; see --seeds).")
    seeds: str = arg(None, "Several seeds, e.g. 0,1,2,3,4: each gets its own data, Base, mappers and ViZer runs; then the multi-seed summary.")
    nano_steps: int = arg(3000, "Steps of the nano captioner's clean pre-training (or of web mode with --web_from_scratch). Fixed steps, never a clock, so the Base does not depend on the machine's speed (~3 minutes on 2 idle cores; at 2000 steps one seed in three had not learnt to see yet, docs/nano.md).")
    web_steps: int = arg(700, "Steps of the web-mode fine-tuning of the clean nano model.")
    web_from_scratch: bool = arg(False, "No clean pre-training: train web mode from scratch for nano_steps (such a Base ignores the image, docs/vizer.md).")
    web_fraction: float = arg(0.9, "Share of web-style captions in the Base model's training.")
    base_from: str = arg(None, "Reuse the Bases of another study run folder (RUN/seed-<s>/base/nano-web) instead of training them.")
    n_mapper: int = arg(2000, "Images (with captions) for the mappers.")
    n_unlabeled: int = arg(800, "Unlabeled images for ViZer training.")
    n_test: int = arg(300, "Held-out test images.")
    mapper_width: int = arg(256, "Mapper width.")
    mapper_epochs: int = arg(20, "Mapper epochs (the paper's 1 epoch assumes 10k-100k pairs).")
    vizer_batch_size: int = arg(16, "ViZer images per step.")
    vizer_epochs: int = arg(1, "ViZer epochs over the unlabeled images.")
    vizer_lr: float = arg(1e-3, "ViZer LoRA learning rate.")
    lora_r: int = arg(32, "LoRA rank (alpha = 2 r).")
    max_new_tokens: int = arg(32, "Caption length.")
    variants: str = arg("gt,g", "Which ViZer variants to run (comma-separated subset of gt,g).")
    center: bool = arg(True, "Centre the vision features for the mapper and ViZer (our departure from the paper, see docs/vizer.md; --center false for the raw cosine).")
    vizer_do_sample: bool = arg(False, "Sample ViZer's training captions instead of greedy decoding.")
    vizer_max_steps: int = arg(None, "Cap on ViZer steps.")
    vizer_steps: str = arg(None, "ViZer budget curve: comma-separated step counts (e.g. 25,50,100,200,400), one run per arm to the largest, evaluated at each.")
    vizer_sampling: str = arg(None, "Training-caption arms: greedy,sampled runs both (overrides --vizer_do_sample).")
    features: bool = arg(True, "Write per-seed features.safetensors (vision features and mapped captions, for the report's PCA figure).")
    dry_run: bool = arg(False, "Print the plan (each stage and seed: done or to run) and stop.")


def recipe_from_flags(cfg: VizerStudyConfig) -> Recipe:
    variants = [v.strip() for v in cfg.variants.split(",") if v.strip()]
    base = {"model": f"{cfg.base_from}/seed-{{seed}}/base/nano-web"} if cfg.base_from else {
        "steps": cfg.nano_steps, "web_steps": cfg.web_steps, "web_fraction": cfg.web_fraction, "web_from_scratch": cfg.web_from_scratch}
    vizer = {"batch_size": cfg.vizer_batch_size, "epochs": cfg.vizer_epochs, "lr": cfg.vizer_lr, "lora_r": cfg.lora_r,
             "lora_alpha": 2 * cfg.lora_r, "max_new_tokens": cfg.max_new_tokens, "save_every": 0}
    if cfg.vizer_steps:
        vizer["steps"] = [int(k) for k in cfg.vizer_steps.split(",") if k.strip()]
    elif cfg.vizer_max_steps:
        vizer["max_steps"] = cfg.vizer_max_steps
    if cfg.vizer_sampling:
        vizer["sampling"] = [m.strip() for m in cfg.vizer_sampling.split(",") if m.strip()]
    else:
        vizer["do_sample"] = cfg.vizer_do_sample
    data = {
        "name": Path(cfg.out).name,
        "description": "ViZer on the shapes world: Base (nano captioner, clean then web captions) vs ViZer_GT / ViZer_G.",
        "seeds": parse_seeds(cfg.seeds, "--seeds") if cfg.seeds else [cfg.seed],
        "data": {"mapper": cfg.n_mapper, "unlabeled": cfg.n_unlabeled, "test": cfg.n_test},
        "base": base,
        "mapper": {"variants": variants, "width": cfg.mapper_width, "samples": cfg.n_mapper, "epochs": cfg.mapper_epochs,
                   "center": cfg.center, "max_new_tokens": cfg.max_new_tokens},
        "vizer": vizer,
        "caption": {"batch_size": 50, "max_new_tokens": cfg.max_new_tokens},
        "evaluate": {"metrics": "bleu,rouge,cider,grounding,degenerate"},
        **({"features": {"variant": "gt" if "gt" in variants else variants[0]}} if cfg.features else {}),
        "summary": {},
    }
    return from_dict(data, "capalign vizer study")


def run(cfg: VizerStudyConfig) -> dict:
    from .run import run_study

    show_config(cfg)
    return run_study(recipe_from_flags(cfg), Path(cfg.out), cfg.dry_run)
