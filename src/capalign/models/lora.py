"""LoRA on the language model only, the setting every capalign training method shares (ViZer paper:
r=32, alpha=64, dropout 0.1, no bias). The vision encoder has q_proj/k_proj/v_proj too, so the target
regex is anchored inside the adapter's `language_model_prefix`: the vision tower and connector stay frozen."""

from __future__ import annotations

import re

LM_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_config(vlm, r: int = 32, alpha: int = 64, dropout: float = 0.1, targets: str = ",".join(LM_LINEAR)):
    """A peft LoraConfig for `vlm` (a capalign VLM adapter); `targets`: comma-separated linear-layer names."""
    from peft import LoraConfig

    names = "|".join(re.escape(t.strip()) for t in targets.split(",") if t.strip())
    lm = vlm.language_model_prefix
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", target_modules=rf"{re.escape(lm)}\..*\.({names})")


def check_lora_training(cfg, positive: tuple[str, ...] = ()) -> None:
    """The checks every LoRA training config shares (vizer, style and rl train): batch_size, grad_accum, lora_r
    and the `positive` fields >= 1, batch_size a multiple of grad_accum, max_steps >= 1 when set, lora_dropout in [0, 1)."""
    for k in ("batch_size", "grad_accum", "lora_r", *positive):
        if getattr(cfg, k) < 1:
            raise ValueError(f"{k} must be >= 1, got {getattr(cfg, k)}")
    if cfg.batch_size % cfg.grad_accum:
        raise ValueError(f"batch_size must be divisible by grad_accum, got {cfg.batch_size} and {cfg.grad_accum}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {cfg.max_steps}")
    if not 0 <= cfg.lora_dropout < 1:
        raise ValueError(f"lora_dropout must be in [0, 1), got {cfg.lora_dropout}")


# ---- which base model an adapter belongs to ------------------------------------------------------
# An adapter trained on one base loads without complaint onto another base of the same architecture (or
# fails deep inside peft with a size mismatch for another one). capalign adapters carry a probe of their
# base: a few weights that LoRA never changes (input/output embeddings, the first vision weight).
ADAPTER_META = "capalign_adapter.json"


def base_probe(vlm, k: int = 16) -> list[float]:
    m = vlm.model
    tensors = [m.get_input_embeddings().weight, m.get_output_embeddings().weight, next(iter(vlm.vision_parameters()))]
    return [float(x) for t in tensors for x in t.detach().flatten()[:k].float().cpu()]


def write_adapter_meta(folder, vlm, base_model: str, **extra) -> None:
    from pathlib import Path

    from ..io import atomic_write_json

    atomic_write_json(Path(folder) / ADAPTER_META, {"base_model": base_model, "family": vlm.family, "base_probe": base_probe(vlm), **extra})


def check_adapter_base(folder, vlm, model_name: str) -> None:
    """Raise CapalignError when the adapter in `folder` was trained on another base model than `vlm`."""
    import json
    from pathlib import Path

    import torch

    from .. import CapalignError

    path = Path(folder) / ADAPTER_META
    if not path.exists():
        return  # not written by capalign (or an older version): nothing to check against
    meta = json.loads(path.read_text())
    want, have = torch.tensor(meta.get("base_probe", [])), torch.tensor(base_probe(vlm))
    # bf16 vs fp32 loads round the weights: compare with a tolerance far below the gap between two models
    if meta.get("family") != vlm.family or want.shape != have.shape or not torch.allclose(want, have, rtol=1e-2, atol=1e-3):
        raise CapalignError(f"adapter {folder} was trained on another base model ({meta.get('base_model')}), not {model_name}")
