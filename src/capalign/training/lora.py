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


