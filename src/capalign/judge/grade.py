"""`capalign judge`: grade caption files with a VLM judge, i.e. `capalign evaluate --metrics judge` under its own name."""

from __future__ import annotations

import dataclasses

from ..config import arg
from ..metrics.judge import JUDGE_FIELDS, resolve_prompt


@dataclasses.dataclass
class JudgeConfig:
    """Score caption files with a VLM judge (JSONL {"id", "caption"} against references {"id", "captions", "image"})."""

    judge: str = arg("", "Judge VLM: hub id or local folder (any family `load_vlm` loads; a `capalign judge train` folder works).")
    pred: list[str] = arg([], "Prediction JSONL file(s); one row of results per file.")
    refs: str = arg("", "References with `captions` and images: JSONL with `image` (a shapes-world manifest.jsonl works), or any --refs of `capalign evaluate` (docs/data.md).")
    split: str = arg(None, "Split of --refs (and --images) where it has several: a Karpathy file (train, val, test, restval) or a HF dataset.")
    images: str = arg("", "Image source matched by id (default: the refs' `image` paths, relative to the refs file).")
    out: str = arg("", "Write the mean, per-caption scores, letter probabilities' off-letter mass to this JSON file.")
    prompt: str = arg(*JUDGE_FIELDS["judge_prompt"])
    batch_size: int = arg(*JUDGE_FIELDS["judge_batch_size"])
    dtype: str = arg(*JUDGE_FIELDS["judge_dtype"])
    load_in_8bit: bool = arg(*JUDGE_FIELDS["judge_load_in_8bit"])
    device: str = arg("auto", "auto, cpu, cuda, mps")

    def __post_init__(self):
        if isinstance(self.pred, str):
            self.pred = [self.pred]
        if not self.judge:
            raise ValueError("--judge MODEL is required")
        if not self.pred or not self.refs:
            raise ValueError("give --pred captions.jsonl and --refs refs.jsonl")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.prompt:
            resolve_prompt(self.prompt)


def run(cfg: JudgeConfig) -> dict:
    """`capalign judge`: `capalign evaluate --metrics judge` under its own name (same reading and counting rules)."""
    from ..metrics.evaluate import EvaluateConfig
    from ..metrics.evaluate import run as evaluate

    return evaluate(EvaluateConfig(pred=cfg.pred, refs=cfg.refs, split=cfg.split, images=cfg.images, metrics="judge", out=cfg.out, device=cfg.device,
                                   judge=cfg.judge, judge_prompt=cfg.prompt, judge_batch_size=cfg.batch_size, judge_dtype=cfg.dtype,
                                   judge_load_in_8bit=cfg.load_in_8bit))
