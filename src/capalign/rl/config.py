"""`capalign rl train` configuration: one dataclass, every field documented (flags and --config YAML)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import arg
from ..metrics.judge import JUDGE_FIELDS, resolve_prompt
from ..training.args import LoraArgs, OptimArgs, RunArgs, method_defaults


@dataclass(kw_only=True)
@method_defaults(lr=1e-5)  # below @dataclass: it re-declares fields before the dataclass is made
class RLTrainConfig(LoraArgs, OptimArgs, RunArgs):
    """GRPO on a VLM's language model (LoRA) with a caption reward: a VLM judge, a metric or a weighted mix."""

    model: str = arg(help="VLM to train (policy): hub id or local folder (SmolVLM/Idefics3, Qwen2-VL, Qwen2.5-VL).")
    data: str = arg(help="Training images with references: a shapes-world or other dataset folder, manifest, HF dataset, tar shards.")
    reward: str = arg("cider", "Reward (capalign.rl.rewards): judge, cider, bertscore, clipscore, grounding, or a weighted sum such as 'judge:0.7,grounding:0.3'.")
    judge: str = arg("", "Judge VLM for the judge reward (hub id or folder, e.g. the output of `capalign judge train`).")
    judge_prompt: str = arg(*JUDGE_FIELDS["judge_prompt"])
    judge_batch_size: int = arg(*JUDGE_FIELDS["judge_batch_size"])
    judge_dtype: str = arg(*JUDGE_FIELDS["judge_dtype"])
    judge_load_in_8bit: bool = arg(*JUDGE_FIELDS["judge_load_in_8bit"])
    prompt: str = arg(None, "Caption prompt of the policy (default: the family's, as in `capalign caption`; '' for none).")
    limit: int = arg(None, "Use at most this many images.")
    num_generations: int = arg(4, "Sampled captions per image (GRPO's group size G); advantages are relative within a group. >= 2.")
    beta: float = arg(0.0, "KL coefficient to the base model (the policy with its adapter disabled); 0 skips the reference forward.")
    loss_type: str = arg("grpo", "TRL loss_type: grpo (per-sequence token mean, the DeepSeekMath loss), dapo, dr_grpo, bnpo (see docs/rl.md).")
    epsilon: float = arg(0.2, "PPO clip range of the probability ratio (each sampled batch is used for one optimizer step, so the ratio is 1 and the clip never acts; kept for TRL parity).")
    scale_rewards: str = arg("group", "Advantage scaling: group (divide by the group's std), batch, or none (Dr. GRPO).")
    max_new_tokens: int = arg(32, "Maximum caption length in tokens.")
    temperature: float = arg(1.0, "Sampling temperature.")
    top_p: float = arg(1.0, "Nucleus sampling.")
    shared_vision: bool = arg(True, "Run the vision tower once per image for all its samples (off: TRL's one pass per sample and forward).")

    def __post_init__(self):
        if self.num_generations is None or self.num_generations < 2:
            raise ValueError(f"num_generations (samples per image) must be >= 2 for GRPO's group advantages, got {self.num_generations}")
        super().__post_init__()
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.loss_type not in ("grpo", "dapo", "dr_grpo", "bnpo"):
            raise ValueError(f"unknown loss_type {self.loss_type!r}; expected grpo, dapo, dr_grpo or bnpo")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"unknown scale_rewards {self.scale_rewards!r}; expected group, batch or none")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.judge_prompt:
            resolve_prompt(self.judge_prompt)  # a CapalignError naming a missing placeholder, before any model loads
        if self.judge_batch_size < 1:
            raise ValueError(f"judge_batch_size must be >= 1, got {self.judge_batch_size}")
