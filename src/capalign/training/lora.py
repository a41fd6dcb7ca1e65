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
