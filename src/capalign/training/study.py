"""`capalign vizer study`: Base vs ViZer_GT vs ViZer_G on the shapes world, end to end.

  1. nano captioner in web mode (vague / partial captions, like SmolVLM-Base): the Base model;
  2. shapes-world splits: `mapper` (images + human captions, for the GT mapper; the G mapper uses only
     its images), `unlabeled` (images only, for ViZer's LoRA training), `test` (held out);
  3. mappers GT and G (`capalign mapper train`), ViZer LoRA runs (`capalign vizer train`);
  4. caption the test split with each system, score with the metric suite + grounding, print the table.
Every stage writes into `out/` and is skipped when its output exists, so an interrupted study resumes.
This is what `make demo` runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import arg, config_dict, save_config, show_config
from ..io import atomic_write_json, read_jsonl
from ..utils import print0


# the study's table: reference metrics and grounding (name level; attr = colour must match too)
COLUMNS = {"BLEU4": "BLEU4", "ROUGE-L": "ROUGE_L", "CIDEr": "CIDEr", "P_obj": "precision_name", "R_obj": "recall_name",
           "R_attr": "recall_attr", "CHAIRi": "chair_i_name", "CHAIRi_attr": "chair_i_attr", "CHAIRs_attr": "chair_s_attr"}


def print_table(summary: dict, title: str) -> None:
    from rich.table import Table

    from rich.console import Console

    t = Table(title=title)
    t.add_column("system")
    for h in COLUMNS:
        t.add_column(h, justify="right")
    for name, row in summary.items():
        t.add_row(name, *("-" if row[k] is None else f"{row[k]:.3f}" for k in COLUMNS.values()))
    Console(stderr=True, width=130).print(t)  # wide enough for every column, also when logged to a file


@dataclass
class StudyConfig:
    """Base vs ViZer_GT vs ViZer_G on the shapes world with the nano captioner (web mode)."""

    out: str = arg("runs/study", "Output folder for every stage (re-running resumes).")
    seed: int = arg(0, "Seed for data and training.")
    nano_steps: int = arg(3000, "Steps of the nano captioner's clean pre-training (or of web mode with --web_from_scratch). Fixed steps, never a clock, so the Base does not depend on the machine's speed (3000 steps take ~3 minutes on 2 idle cores; at 2000 steps one seed in three had not learnt to see yet, docs/nano.md).")
    web_steps: int = arg(700, "Steps of the web-mode fine-tuning of the clean nano model.")
    web_from_scratch: bool = arg(False, "No clean pre-training: train web mode from scratch for nano_steps (such a Base ignores the image, docs/vizer.md).")
    web_fraction: float = arg(0.9, "Share of web-style captions in the Base model's training.")
    n_mapper: int = arg(2000, "Images (with captions) for the mappers.")
    n_unlabeled: int = arg(800, "Unlabeled images for ViZer training.")
    n_test: int = arg(300, "Held-out test images.")
    mapper_width: int = arg(256, "Mapper width.")
    mapper_epochs: int = arg(20, "Mapper epochs (the paper's 1 epoch assumes 10k-100k pairs).")
    vizer_batch_size: int = arg(16, "ViZer images per step.")
    vizer_epochs: int = arg(1, "ViZer epochs over the unlabeled images.")
    vizer_lr: float = arg(1e-3, "ViZer LoRA learning rate.")
    lora_r: int = arg(32, "LoRA rank.")
    max_new_tokens: int = arg(32, "Caption length.")
    variants: str = arg("gt,g", "Which ViZer variants to run (comma-separated subset of gt,g).")
    center: bool = arg(True, "Centre the vision features for the mapper and ViZer (our departure from the paper, see docs/vizer.md; --center false for the raw cosine).")
    vizer_do_sample: bool = arg(False, "Sample ViZer's training captions instead of greedy decoding.")
    vizer_max_steps: int = arg(None, "Cap on ViZer steps.")
    tag: str = arg("", "Suffix for the mapper/ViZer/caption outputs, so ablations share the Base model and data.")


def run(cfg: StudyConfig) -> dict:
    from ..caption import caption_source
    from ..data.shapes import write_dataset
    from ..data.sources import open_images
    from ..metrics.evaluate import evaluate_system
    from ..models import load_vlm
    from . import mapper as mapper_mod
    from . import nano
    from . import vizer as vizer_mod

    show_config(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    base = out / "nano-web"
    if not (base / "nano_result.json").exists():
        # SmolVLM-Base-like: learns to see (clean captions), then imitates web alt-text (web captions).
        # Trained on web captions from scratch, the nano model ignores the image (one caption for all).
        clean = out / "nano-clean"
        pretrain = not cfg.web_from_scratch
        if pretrain and not (clean / "nano_result.json").exists():
            nano.run(nano.NanoTrainConfig(out=str(clean), mode="clean", seed=cfg.seed, steps=cfg.nano_steps))
        nano.run(nano.NanoTrainConfig(out=str(base), mode="web", web_fraction=cfg.web_fraction, seed=cfg.seed + 1,
                                      init_from=str(clean) if pretrain else None,
                                      steps=cfg.web_steps if pretrain else cfg.nano_steps, lr=1e-3 if pretrain else 3e-3))
    data = {}
    for split, n in (("mapper", cfg.n_mapper), ("unlabeled", cfg.n_unlabeled), ("test", cfg.n_test)):
        data[split] = out / f"shapes-{split}"
        if not (data[split] / "manifest.jsonl").exists():
            write_dataset(data[split], n, seed=cfg.seed, split=split)

    systems = {"Base": None}
    for v in [v.strip() for v in cfg.variants.split(",") if v.strip()]:
        mdir, vdir = out / f"mapper-{v}{cfg.tag}", out / f"vizer-{v}{cfg.tag}"
        if not (mdir / "mapper_meta.json").exists():
            mapper_mod.run(mapper_mod.MapperTrainConfig(model=str(base), data=str(data["mapper"]), out=str(mdir), variant=v,
                                                        width=cfg.mapper_width, samples=cfg.n_mapper, epochs=cfg.mapper_epochs,
                                                        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, device="cpu", center=cfg.center,
                                                        cache_dir=str(out / "feature-cache")))
        if not (vdir / "adapter_model.safetensors").exists():
            vizer_mod.run(vizer_mod.VizerTrainConfig(model=str(base), mapper=str(mdir), images=str(data["unlabeled"]), out=str(vdir),
                                                     batch_size=cfg.vizer_batch_size, epochs=cfg.vizer_epochs, lr=cfg.vizer_lr,
                                                     lora_r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, max_new_tokens=cfg.max_new_tokens,
                                                     seed=cfg.seed, device="cpu", save_every=0, do_sample=cfg.vizer_do_sample,
                                                     max_steps=cfg.vizer_max_steps))
        systems[f"ViZer_{v.upper()}"] = vdir

    refs = {r["id"]: r for r in read_jsonl(data["test"] / "manifest.jsonl")}
    results = {}
    for name, adapter in systems.items():
        pred = out / f"captions-{name}{cfg.tag if adapter else ''}.jsonl"
        vlm = load_vlm(str(base), device="cpu", dtype="float32", adapter=str(adapter) if adapter else None)
        caption_source(vlm, open_images(str(data["test"])), pred, batch_size=50, max_new_tokens=cfg.max_new_tokens, show_progress=False)
        res = evaluate_system(list(read_jsonl(pred)), refs, ["bleu", "rouge", "cider", "grounding"])
        res["examples"] = [r["caption"] for r in list(read_jsonl(pred))[:5]]
        results[name] = {"file": str(pred), **res}
    summary = {name: {k: r["corpus"].get(k) for k in COLUMNS.values()} for name, r in results.items()}
    print_table(summary, f"ViZer study on the shapes world ({cfg.n_test} test images){' ' + cfg.tag if cfg.tag else ''}")
    for name, r in results.items():
        print0(f"{name}: " + " | ".join(r["examples"][:3]))
    atomic_write_json(out / f"study{cfg.tag}.json", {"config": config_dict(cfg), "summary": summary, "systems": results})
    print0(f"wrote {out / f'study{cfg.tag}.json'}")
    return summary
