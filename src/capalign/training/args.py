"""The argument groups every LoRA training command shares, declared once: `LoraArgs`, `OptimArgs`, `RunArgs`.

A method's config composes them (`class VizerTrainConfig(LoraArgs, OptimArgs, RunArgs)`, as litgpt's
`TrainArgs` and TRL's `ModelConfig` are shared) and sets the defaults that differ by method once, with
`@method_defaults(lr=5e-4, ...)`, which re-declares the field with the group's type and help text and only
a new default. Every group validates its own fields in `__post_init__` and passes on to the next base
(cooperative: a method config calls `super().__post_init__()` first). The dataclasses are keyword-only,
so a group's defaults never constrain the order of a method's required fields; `--help` lists the
method's own fields first (config.make_parser).

`trainer_arguments(cfg, ...)` is the part of `transformers.TrainingArguments` (and TRL's configs, which
extend it) that follows from these groups, for the commands that run a Trainer (style, rl, vizer).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import arg
from ..devices import MIXED_PRECISION, resolve_precision
from .hub import PUBLIC_HELP, PUSH_HELP
from .lora import LM_LINEAR, lora_config
from .tracking import REPORT_HELP, check_report_to


def _next(obj, cls) -> None:
    """Run the __post_init__ of the next base in the MRO (the groups are mixed in any order)."""
    nxt = getattr(super(cls, obj), "__post_init__", None)
    if nxt is not None:
        nxt()


@dataclass(kw_only=True)
class LoraArgs:
    """LoRA on the language model's linear layers only (the vision tower and connector stay frozen)."""

    group_title = "LoRA (on the language model)"

    lora_r: int = arg(32, "LoRA rank (ViZer paper: 32).")
    lora_alpha: int = arg(64, "LoRA alpha (ViZer paper: 64).")
    lora_dropout: float = arg(0.1, "LoRA dropout (ViZer paper: 0.1).")
    lora_targets: str = arg(",".join(LM_LINEAR), "Comma-separated linear-layer names to adapt, inside the language model only.")

    def __post_init__(self):
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        _next(self, LoraArgs)

    def peft_config(self, vlm):
        """peft's LoraConfig of these fields for `vlm` (training/lora.py)."""
        return lora_config(vlm, self.lora_r, self.lora_alpha, self.lora_dropout, self.lora_targets)


@dataclass(kw_only=True)
class OptimArgs:
    """AdamW on the LoRA weights, with a transformers learning-rate schedule."""

    group_title = "optimizer"

    epochs: float = arg(1.0, "Epochs over the training data (the ViZer paper: 1).")
    max_steps: int = arg(None, "Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = arg(8, "Samples per optimizer step over all processes (global batch): images for vizer and rl train (each with num_generations samples in rl), pairs for style train.")
    grad_accum: int = arg(1, "Gradient accumulation: micro-batches of batch_size/grad_accum per optimizer step.")
    lr: float = arg(1e-4, "AdamW learning rate.")
    lr_scheduler: str = arg("constant_with_warmup", "transformers scheduler name: constant_with_warmup, cosine, linear, constant, ...")
    warmup_steps: int = arg(0, "Linear warmup steps.")
    weight_decay: float = arg(0.01, "AdamW weight decay (ViZer paper: 0.01).")
    max_grad_norm: float = arg(1.0, "Gradient clipping norm (0: off).")

    def __post_init__(self):
        for k in ("batch_size", "grad_accum"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size must be divisible by grad_accum, got {self.batch_size} and {self.grad_accum}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        from transformers import SchedulerType

        names = [s.value for s in SchedulerType]
        if self.lr_scheduler not in names:
            raise ValueError(f"unknown lr_scheduler {self.lr_scheduler!r}; transformers has: {', '.join(names)}")
        _next(self, OptimArgs)


@dataclass(kw_only=True)
class RunArgs:
    """Where a run writes, how it is seeded, saved, logged and on which device and precision it runs."""

    group_title = "run: output, checkpoints, logging, device, precision"

    out: str = arg(help="Output folder: the PEFT adapter (for `capalign caption --adapter`), checkpoints, TensorBoard logs, the run's result JSON.")
    seed: int = arg(0, "Seed (data order, LoRA init, sampling).")
    device: str = arg("auto", "Device for single-process runs: auto (cuda > mps > cpu), cpu, cuda, cuda:N; under `accelerate launch` / torchrun accelerate picks it per process.")
    mixed_precision: str = arg("auto", "auto (bf16 on CUDA with bf16, fp16 on older CUDA, none on CPU and MPS), no, bf16 (CUDA or CPU), fp16 (CUDA only); see capalign/devices.py.")
    gradient_checkpointing: bool = arg(False, "Recompute activations in backward (less memory, about a third more compute).")
    save_every: int = arg(50, "Save a resumable checkpoint every N steps (0: only the final adapter); re-running the same command resumes from the newest.")
    keep_checkpoints: int = arg(2, "How many checkpoints to keep.")
    log_every: int = arg(1, "Log the training metrics every N steps.")
    report_to: str = arg("tensorboard", REPORT_HELP)
    push_to_hub: str = arg(None, PUSH_HELP)
    hub_public: bool = arg(False, PUBLIC_HELP)
    overwrite: bool = arg(False, "Start over: discard the checkpoints and result of an earlier run in --out (recognised by its capalign_config.json) "
                                 "instead of resuming from them, also when its settings differ. A resume must repeat every setting that changes "
                                 "the result; others are refused, naming the fields.")

    def __post_init__(self):
        if not str(self.out or "").strip():
            raise ValueError("--out is required")
        for k in ("keep_checkpoints", "log_every"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.save_every < 0:
            raise ValueError(f"save_every must be >= 0, got {self.save_every}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        check_report_to(self.report_to)
        _next(self, RunArgs)

    @property
    def report_list(self) -> list[str]:
        return [] if self.report_to == "none" else [self.report_to]


def method_defaults(**defaults):
    """Class decorator (below @dataclass): the method's own default for inherited group fields, declared once
    there; the field keeps the group's type and help text."""

    def apply(cls):
        if "__dataclass_fields__" in cls.__dict__:  # above @dataclass: the fields exist already, a default set now is ignored
            raise TypeError(f"{cls.__name__}: put @method_defaults below @dataclass")
        inherited = {}
        for base in reversed(cls.__mro__[1:]):
            if dataclasses.is_dataclass(base):
                inherited.update({f.name: f for f in dataclasses.fields(base)})
        own = cls.__dict__.get("__annotations__", {})
        for name, value in defaults.items():
            if name not in inherited:
                raise TypeError(f"{cls.__name__}: {name} is not a field of its argument groups")
            own = {name: inherited[name].type, **own} if name not in own else own
            setattr(cls, name, arg(value, inherited[name].metadata.get("help", "")))
        cls.__annotations__ = own
        return cls

    return apply


def trainer_arguments(cfg, per_device_batch: int, max_steps: int, **extra) -> dict:
    """The TrainingArguments fields that follow from the groups; `extra` adds or overrides (method-specific)."""
    prec = resolve_precision(cfg.mixed_precision, cfg.device)
    return {**dict(
        output_dir=cfg.out, per_device_train_batch_size=per_device_batch, gradient_accumulation_steps=cfg.grad_accum,
        max_steps=max_steps, learning_rate=cfg.lr, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, data_seed=cfg.seed,
        bf16=prec.bf16, fp16=prec.fp16, use_cpu=prec.device == "cpu",
        save_strategy="steps" if cfg.save_every else "no", save_steps=cfg.save_every or 1, save_total_limit=cfg.keep_checkpoints,
        logging_steps=cfg.log_every, report_to=cfg.report_list, remove_unused_columns=False,
        gradient_checkpointing=cfg.gradient_checkpointing, dataloader_num_workers=0,
    ), **extra}
