"""Model cards: the README.md of every folder a training command writes (vizer, style and rl adapters, the
mapper, the nano captioner and judge), in the hub's model-card format.

A YAML header (huggingface_hub's ModelCardData: base_model, library_name, license where known, tags,
pipeline_tag), then what was trained and how: method, data, the run's config, its metrics table, the
capalign version, how to load it, intended use and limits. It replaces the template card that peft's and
huggingface_hub's save_pretrained write (full of "[More Information Needed]", or claiming a hub push that
never happened). Written last into the folder, atomically.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

CARD = "README.md"

# licenses of the base models capalign's recipes use (their hub pages); any other base: no license field
LICENSES = {"HuggingFaceTB/SmolVLM": "apache-2.0", "Qwen/Qwen2-VL-2B": "apache-2.0", "Qwen/Qwen2-VL-7B": "apache-2.0"}

LIMITS = ("Trained and measured with capalign on the data named above, at the scale given by the config; captions can be "
          "wrong, incomplete or in the trained style where a neutral one is wanted. Not evaluated for safety, fairness or "
          "any use beyond image captioning research. Check outputs before relying on them.")


def base_license(base_model: str | None) -> str | None:
    return next((lic for prefix, lic in LICENSES.items() if base_model and str(base_model).startswith(prefix)), None)


def metrics_table(metrics: dict | None) -> str:
    """A markdown table of the scalar metrics (numbers and booleans; nested dicts as `a.b`); '' if none."""
    rows = []

    def walk(prefix: str, d: dict) -> None:
        for k, v in d.items():
            name = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(name + ".", v)
            elif isinstance(v, bool) or (isinstance(v, (int, float)) and math.isfinite(v)):
                rows.append((name, f"{v:.4f}" if isinstance(v, float) else str(v)))

    walk("", metrics or {})
    return "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) if rows else ""


def write_model_card(folder: str | Path, *, title: str, method: str, data: str, config: dict, base_model: str | None = None,
                     adapter: bool = False, metrics: dict | None = None, tags: tuple[str, ...] = (), usage: str | None = None,
                     limits: str = LIMITS) -> Path:
    """Write `<folder>/README.md`; returns its path. `adapter`: a PEFT LoRA adapter of `base_model` (library_name peft,
    with the code that loads it without capalign); otherwise a full transformers model or a mapper (`usage` says how)."""
    from huggingface_hub import ModelCard, ModelCardData

    from .. import __version__
    from ..io import atomic_write_text

    card_data = ModelCardData(base_model=str(base_model) if base_model else None, library_name="peft" if adapter else None,
                              license=base_license(base_model), pipeline_tag="image-text-to-text",
                              tags=["capalign", *(["lora"] if adapter else []), *tags])
    if adapter and usage is None:
        usage = ("```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
                 f"base = AutoModelForImageTextToText.from_pretrained({str(base_model)!r})\n"
                 "model = PeftModel.from_pretrained(base, \"THIS_FOLDER_OR_REPO\")  # a plain PEFT LoRA adapter\n"
                 f"processor = AutoProcessor.from_pretrained({str(base_model)!r})\n```\n\n"
                 f"With capalign: `capalign caption --model {base_model} --adapter THIS_FOLDER --images IMAGES --out captions.jsonl` "
                 "(uses the prompt it was trained with, recorded in capalign_adapter.json).")
    table = metrics_table(metrics)
    sections = [
        f"# {title}",
        f"Trained with capalign {__version__}" + (f", a LoRA adapter of `{base_model}`." if adapter else "."),
        f"## Method\n\n{method}",
        f"## Data\n\n{data}",
        "## Training configuration\n\nThe resolved config of the run (also in the folder's capalign config JSON):\n\n```json\n"
        + json.dumps(config, indent=1, default=str) + "\n```",
        "## Results\n\n" + (f"Measured at the end of the run:\n\n{table}" if table else "No metrics were recorded for this run."),
        *([f"## How to use\n\n{usage}"] if usage else []),
        f"## Intended use and limits\n\n{limits}",
    ]
    card = ModelCard("---\n" + card_data.to_yaml() + "\n---\n\n" + "\n\n".join(sections) + "\n")
    path = Path(folder) / CARD
    atomic_write_text(path, str(card))
    return path
