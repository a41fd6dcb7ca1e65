"""`capalign style train` configuration: one documented dataclass (CLI flags and `--config run.yaml` come from it).

The LoRA, optimizer and run fields are the shared groups of training/args.py (as for `vizer train` and
`rl train`), so recipes carry over between methods; only the defaults that differ are set here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import arg
from ..data.preferences import PreferenceDataArgs, parse_budget
from ..models.prompts import fill_prompt
from ..training.args import LoraArgs, OptimArgs, RunArgs, method_defaults

METHODS = ("zero-shot", "sft", "dpo", "simpo")
BACKENDS = ("capalign", "trl")
DEFAULT_PROMPT = "Write a {style} caption for this image."


@dataclass
class StyleDataArgs(PreferenceDataArgs):
    """The data flags of every style command, with the style prompt of training and captioning."""

    prompt: str = arg(DEFAULT_PROMPT, "Text prompt after the image for training, WR-LogP and captioning ({style} is replaced; '' for none, "
                                      "just the image); the same for every method, so only the training differs. Recorded in the adapter.")

    def open_data(self, style: str | None = None):
        """The preference set of `style`; its pairs carry the prompt with {style} filled in."""
        template = self.prompt
        self.prompt = None if template is None else fill_prompt(template, "--prompt", style=style or "")
        try:
            return super().open_data(style)
        finally:
            self.prompt = template


@dataclass(kw_only=True)
@method_defaults(lr=5e-4, lr_scheduler="cosine", epochs=3.0, log_every=5)  # below @dataclass: it re-declares fields before the dataclass is made
class StyleTrainConfig(LoraArgs, OptimArgs, RunArgs, StyleDataArgs):
    """Align a VLM to a caption style from preference pairs (chosen = styled, rejected = factual): zero-shot, SFT, DPO or SimPO.
    The data flags (--data, --split_seed, --test_share, ...) are those of every style command."""

    model: str = arg("", "Base VLM: hub id or local folder (e.g. a `capalign nano train` output).")
    method: str = arg("dpo", "zero-shot (style prompt only, no training), sft (NLL of the chosen captions), dpo (sigmoid loss, reference = the base model), simpo (reference-free, length-normalised, margin gamma).")
    style: str = arg("humorous", "Style to align to; only pairs of this style are used.")
    budget: str = arg("100%", "Training pairs: a share of the training split (10%) or a count (500). Budgets are nested: the 5% subset of a seed contains its 2% subset.")
    backend: str = arg("capalign", "capalign: one vision pass per image serves every forward (fast); trl: TRL's DPOTrainer / SFTTrainer (dpo and sft only; runs the vision tower for every sequence).")
    beta: float = arg(None, "Preference strength: DPO beta (default 0.1, as TRL) or SimPO beta (default 2.0, SimPO paper).")
    gamma: float = arg(1.0, "SimPO target reward margin gamma (SimPO paper: 0.5-1.6 with beta 2-2.5).")
    sft_weight: float = arg(0.0, "dpo / simpo: add this weight x the SFT loss (token NLL of the chosen captions), as TRL's cpo_alpha (CPO-SimPO) and DPO loss_type=[sigmoid, sft]; keeps the chosen captions likely, against the collapse of reference-free SimPO.")
    min_steps: int = arg(0, "Train at least this many optimizer steps (small budgets repeat their pairs), so small budgets are not also starved of updates.")

    def __post_init__(self):
        super().__post_init__()
        for name in ("model", "data"):
            if not str(getattr(self, name) or "").strip():
                raise ValueError(f"--{name} is required")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.method == "zero-shot" and self.push_to_hub:
            raise ValueError("--push_to_hub: zero-shot trains no adapter, there is nothing to upload")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; expected one of {', '.join(BACKENDS)}")
        if self.backend == "trl" and self.method not in ("sft", "dpo"):
            raise ValueError(f"--backend trl covers sft and dpo only (TRL's SimPO, in CPOTrainer, has no image path); got {self.method}")
        parse_budget(self.budget, 10**12)  # the format (10% or a count >= 1); the size is checked against the data
        if self.beta is None:
            self.beta = 2.0 if self.method == "simpo" else 0.1
        if self.sft_weight < 0 or (self.sft_weight and self.method not in ("dpo", "simpo")):
            raise ValueError(f"sft_weight must be >= 0 and is for dpo and simpo (sft is all SFT), got {self.sft_weight} with {self.method}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.min_steps < 0:
            raise ValueError(f"min_steps must be >= 0, got {self.min_steps}")

    @property
    def style_prompt(self) -> str:
        return fill_prompt(self.prompt, "--prompt", style=self.style)

    def open_data(self, style: str | None = None):
        return super().open_data(style or self.style)
