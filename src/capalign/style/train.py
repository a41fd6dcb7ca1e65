"""`capalign style train`: stylistic preference alignment (zero-shot, SFT, DPO, SimPO) with LoRA on the language model.

Design. `StyleTrainer` is a `transformers.Trainer` whose only override that matters is `compute_loss`: the
Trainer owns the loop, checkpoints and resume (LoRA + optimizer + scheduler + RNG + data position),
TensorBoard, gradient accumulation, mixed precision and DDP under `accelerate launch` / torchrun.
`compute_loss` does, for a batch of B pairs (image, chosen, rejected):
  1. `vlm.encode(images)`: processor + frozen vision tower ONCE per image              -> B image embeddings
  2. `vlm.repeat(enc, 2)` + captions interleaved [c_0, r_0, c_1, r_1, ...]            -> 2B sequences
  3. reference log-probs (DPO only): the same model with the adapter disabled, no grad, computed once
     per pair and cached for later epochs                                              -> [2B]
  4. policy log-probs through the (DDP-wrapped) PEFT model's forward, reusing step 1's
     embeddings via transformers' `mm_encoder_outputs`                                  -> [2B, L]
  5. the loss from `training.losses` (written once; tests compare it with TRL's code).
So one vision pass serves all four forwards (policy chosen/rejected, reference chosen/rejected).

Why not TRL's DPOTrainer (read in trl 1.16): its vision collator (`DataCollatorForVisionPreference`)
repeats every image for chosen and rejected, and `_compute_loss` runs the full VLM forward on them for the
policy and again for the reference, so the vision tower runs 4 times per pair (its
`precompute_ref_log_probs` refuses vision datasets). The difference is in the collator AND in the
~300-line `_compute_loss`, so a subclass would override both and reimplement the loss with its metrics:
more code than this module, and SimPO (CPOTrainer, no image path) would still need another trainer.
TRL's DPOTrainer and SFTTrainer do work on Idefics3 and Qwen2-VL (checked on the tiny checkpoints,
tests/test_style_train.py), so they stay available as `--backend trl` for dpo and sft; the loss values
of both backends agree on the same batch (benchmarks/style_step.py). SimPO exists only here.

Launch: `capalign style train --method dpo --style humorous --budget 10% --data shapes --model M --out DIR`;
many GPUs: `accelerate launch -m capalign style train ...`. Re-running the same command resumes from the
newest complete checkpoint; `style_result.json` is written last, so its presence means "finished".
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import Trainer

from .. import CapalignError
from ..config import check_resume, config_dict, save_config, show_config
from ..devices import resolve_precision
from ..io import atomic_write_json
from ..training import losses
from ..training.args import trainer_arguments
from ..training.card import write_model_card
from ..training.checkpoints import begin_run, last_checkpoint
from ..training.hub import push_folder
from ..training.progress import show_progress
from ..utils import print0, seed_everything
from .config import StyleTrainConfig  # noqa: F401 (StyleTrainConfig: the CLI reads it here)

log = logging.getLogger(__name__)
REF_CACHE = "reference_logps.safetensors"  # in checkpoints: pair id -> [2] reference log-probs (chosen, rejected)


# ---- data ----------------------------------------------------------------------------------------
def load_pairs(cfg: StyleTrainConfig) -> tuple[list, object]:
    """(the budget's pairs of cfg.style from the training split, the whole PreferenceSet)."""
    from ..data.preferences import budget_subset

    data = cfg.open_data()
    return budget_subset(data.train, cfg.budget, cfg.seed), data


def collate(pairs: list) -> dict:
    """Raw pairs -> one batch; tokenization and image processing happen in compute_loss (vision once).
    A pair whose image is missing or corrupt is dropped from its batch, logged and counted (`images_skipped`)."""
    from ..data.images import BadImage

    keep, images, bad = [], [], 0
    for p in pairs:
        try:
            images.append(p.load_image())
            keep.append(p)
        except BadImage as e:
            bad += 1
            log.warning("skipping pair %s: %s", p.id, e)
    if not keep:
        raise CapalignError(f"no image of a batch could be read (e.g. pair {pairs[0].id}); check the data's images")
    return {"ids": [p.id for p in keep], "images": images, "chosen": [p.chosen for p in keep],
            "rejected": [p.rejected for p in keep], "skipped": bad}


# ---- the one-vision-pass forward ----------------------------------------------------------------
def caption_token_logps(model, vlm, enc, caps) -> torch.Tensor:
    """[N, L] log p(caption token | image, prompt, previous tokens), 0 on padding.

    Runs `model`'s own forward (so DDP sees it and syncs LoRA gradients), reusing the image embeddings in
    `enc`; only the logits of the L+1 last positions are built (`logits_to_keep`)."""
    L = caps.ids.shape[1]
    kw = vlm.extend_inputs(enc.inputs, caps.ids, caps.mask)
    out = model(**kw, mm_encoder_outputs=enc.mm_outputs, use_cache=False, logits_to_keep=L + 1)
    logits = out.logits[:, :-1].float()  # [N, L, V]: the states before each caption token
    lp = torch.log_softmax(logits, -1).gather(-1, caps.ids.unsqueeze(-1)).squeeze(-1)
    return lp * caps.mask


def interleave(a: list, b: list) -> list:
    return [x for pair in zip(a, b) for x in pair]  # [a0, b0, a1, b1, ...], the order of vlm.repeat(enc, 2)


class StyleTrainer(Trainer):
    """transformers.Trainer with the style losses; `model` is the PEFT-wrapped VLM (vlm.model with LoRA)."""

    def __init__(self, *args, vlm, method: str, beta: float, gamma: float, prompt: str, sft_weight: float = 0.0, **kw):
        super().__init__(*args, **kw)
        self.vlm, self.method, self.beta, self.gamma, self.prompt = vlm, method, beta, gamma, prompt
        self.sft_weight = sft_weight  # + sft_weight x token NLL of the chosen captions (TRL: CPO's cpo_alpha, DPO's loss_type "sft")
        self._ref_cache: dict[str, torch.Tensor] = {}  # pair id -> [2] reference (chosen, rejected) summed log-probs
        self._metrics: dict[str, list] = defaultdict(list)
        self.images_skipped = 0  # pairs dropped from their batch because the image could not be read

    def reference_logps(self, ids: list[str], enc2, caps) -> torch.Tensor:
        """[2B] summed log-probs under the base model (adapter disabled), interleaved like caps; cached per pair."""
        if not all(i in self._ref_cache for i in ids):
            peft_model = self.accelerator.unwrap_model(self.model)
            with torch.no_grad(), peft_model.disable_adapter():
                ref = caption_token_logps(peft_model, self.vlm, enc2, caps).sum(1)  # [2B]
            for k, i in enumerate(ids):
                self._ref_cache[i] = ref[2 * k : 2 * k + 2].detach().cpu()
        return torch.cat([self._ref_cache[i] for i in ids]).to(caps.ids.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        vlm = self.vlm
        self.images_skipped += inputs.get("skipped", 0)
        enc = vlm.encode(inputs["images"], self.prompt)  # 1. vision once: B images
        if self.method == "sft":
            caps = vlm.tokenize_captions(inputs["chosen"])
            loss = losses.sft_loss(caption_token_logps(model, vlm, enc, caps), caps.mask)
            self._metrics["nll"].append(loss.item())
            return (loss, None) if return_outputs else loss
        enc2 = vlm.repeat(enc, 2)  # 2. [2B] without re-running vision
        caps = vlm.tokenize_captions(interleave(inputs["chosen"], inputs["rejected"]))
        lp = caption_token_logps(model, vlm, enc2, caps)  # 4. [2B, L]
        total, n_tok = lp.sum(1), caps.mask.sum(1).clamp(min=1)
        if self.method == "dpo":
            ref = self.reference_logps(inputs["ids"], enc2, caps)  # 3.
            out = losses.dpo_loss(total[0::2], total[1::2], ref[0::2], ref[1::2], self.beta)
        elif self.method == "simpo":
            mean = total / n_tok
            out = losses.simpo_loss(mean[0::2], mean[1::2], self.beta, self.gamma)
        else:
            raise CapalignError(f"StyleTrainer cannot train method {self.method!r}")
        loss = out.losses.mean()
        m = self._metrics
        if self.sft_weight:
            nll = losses.sft_loss(lp[0::2], caps.mask[0::2])
            loss = loss + self.sft_weight * nll
            m["nll"].append(nll.item())
        m["rewards/accuracies"].append((out.chosen_rewards > out.rejected_rewards).float().mean().item())
        m["rewards/margins"].append((out.chosen_rewards - out.rejected_rewards).mean().item())
        m["logps/chosen"].append(total[0::2].mean().item())
        m["logps/rejected"].append(total[1::2].mean().item())
        return (loss, None) if return_outputs else loss

    # the reference cache is training state: a resumed run must reuse the values computed before the kill, not
    # recompute them in other batches (other padding -> last-bit float differences in the adapter)
    def _save_checkpoint(self, model, trial):
        from safetensors.torch import save_file

        if self._ref_cache and self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)  # written before trainer_state.json, which marks a complete checkpoint
            save_file({k: v.contiguous() for k, v in self._ref_cache.items()}, str(folder / REF_CACHE))
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from safetensors.torch import load_file

        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if (Path(resume_from_checkpoint) / REF_CACHE).exists():
            self._ref_cache.update(load_file(str(Path(resume_from_checkpoint) / REF_CACHE)))

    def log(self, logs: dict, start_time: float | None = None) -> None:
        logs.update({k: sum(v) / len(v) for k, v in self._metrics.items() if v})
        self._metrics.clear()
        super().log(logs, start_time)


def quiet() -> bool:
    """CAPALIGN_QUIET=1 (set in the sweep's worker processes): no per-run progress bars or messages."""
    return os.environ.get("CAPALIGN_QUIET", "0") not in ("", "0")


# ---- run ----------------------------------------------------------------------------------------
def training_args(cfg: StyleTrainConfig, steps: int):
    """(TrainingArguments keyword arguments, the resolved Precision) of a run of `steps` optimizer steps."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_device = cfg.batch_size // cfg.grad_accum // world
    if per_device * cfg.grad_accum * world != cfg.batch_size:
        raise CapalignError(f"batch_size {cfg.batch_size} must be divisible by grad_accum x processes ({cfg.grad_accum} x {world})")
    return trainer_arguments(cfg, per_device, steps, disable_tqdm=True), resolve_precision(cfg.mixed_precision, cfg.device)


def _trl_trainer(cfg: StyleTrainConfig, vlm, args_kw: dict, pairs: list, peft_cfg):
    """TRL's own DPOTrainer / SFTTrainer on the same pairs, prompt and LoRA (`--backend trl`)."""
    from datasets import Dataset

    from ..data.pairs import PreferenceSet

    held = PreferenceSet("budget", pairs, [], [], 0, 0.0)
    pairs, images = held.load_images(pairs)  # unreadable images: skipped and logged, as in the capalign backend
    if not pairs:
        raise CapalignError("no image of the budget's pairs could be read")

    eos = vlm.tokenizer.convert_ids_to_tokens(vlm.eos_ids[0])  # TRL adds no EOS to vision datasets: end like capalign
    prompt = vlm.prompt_texts(1, cfg.style_prompt)[0]
    if cfg.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        rows = [{"image": im, "prompt": prompt, "chosen": p.chosen + eos, "rejected": p.rejected + eos} for p, im in zip(pairs, images)]
        mix = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, cfg.sft_weight]) if cfg.sft_weight else {}
        args = DPOConfig(**args_kw, beta=cfg.beta, max_length=None, disable_dropout=False, **mix)
        return DPOTrainer(model=vlm.model, args=args, train_dataset=Dataset.from_list(rows), processing_class=vlm.processor, peft_config=peft_cfg)
    from trl import SFTConfig, SFTTrainer

    rows = [{"image": im, "prompt": prompt, "completion": p.chosen + eos} for p, im in zip(pairs, images)]
    args = SFTConfig(**args_kw, max_length=None, completion_only_loss=True)
    return SFTTrainer(model=vlm.model, args=args, train_dataset=Dataset.from_list(rows), processing_class=vlm.processor, peft_config=peft_cfg)


def build(cfg: StyleTrainConfig, subset: list | None = None):
    """(trainer, vlm, pairs) for a training method: the base model, LoRA on its language model, the budget's pairs."""
    from peft import get_peft_model
    from transformers import TrainingArguments

    from ..models import load_vlm

    subset = subset if subset is not None else load_pairs(cfg)[0]
    steps = cfg.max_steps or max(math.ceil(cfg.epochs * len(subset) / cfg.batch_size), cfg.min_steps)
    args_kw, prec = training_args(cfg, steps)
    device = str(TrainingArguments(**args_kw).device)
    vlm = load_vlm(cfg.model, device=device, dtype=prec.weights, prompt=cfg.style_prompt)
    vlm.model.requires_grad_(False)
    peft_cfg = cfg.peft_config(vlm)
    if cfg.backend == "trl":
        return _trl_trainer(cfg, vlm, args_kw, subset, peft_cfg), vlm, subset
    seed_everything(cfg.seed)  # the LoRA init
    trainer = StyleTrainer(model=get_peft_model(vlm.model, peft_cfg), args=TrainingArguments(**args_kw), train_dataset=subset,
                           data_collator=collate, vlm=vlm, method=cfg.method, beta=cfg.beta, gamma=cfg.gamma, prompt=cfg.style_prompt,
                           sft_weight=cfg.sft_weight)
    return trainer, vlm, subset


def train(cfg: StyleTrainConfig, subset: list, info: dict | None = None):
    """Train cfg.method on `subset` into cfg.out (resuming from its newest complete checkpoint); returns
    (vlm with the trained LoRA in place, or None for zero-shot, result). `style_result.json` is written last."""
    from ..models.adapter import write_adapter_meta

    out = Path(cfg.out)
    overwrite = check_resume(cfg, out)  # an earlier run in --out must have the same settings (or --overwrite)
    result = {"method": cfg.method, "style": cfg.style, "budget": cfg.budget, "n_pairs": len(subset), **(info or {}),
              "prompt": cfg.style_prompt, "model": cfg.model, "config": config_dict(cfg)}
    if cfg.method == "zero-shot":  # nothing to train: the base model with the style prompt
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
        atomic_write_json(out / "style_result.json", {**result, "adapter": None, "steps": 0})
        print0(f"zero-shot: nothing to train; caption with: capalign caption --model {cfg.model} --prompt {json.dumps(cfg.style_prompt)}")
        return None, result
    trainer, vlm, _ = build(cfg, subset)
    begin_run(cfg, overwrite, ("style_result.json",))
    show_progress(trainer, f"{cfg.method} {cfg.style}", disable=quiet())  # capalign's bar or log lines, never raw log dicts
    resume = None if overwrite else last_checkpoint(out)
    if resume:
        print0(f"resuming from {resume}")
    t0 = time.time()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - t0
    trainer.save_model(str(out))  # the PEFT adapter: adapter_model.safetensors + adapter_config.json
    vlm.model.eval()
    if trainer.is_world_process_zero():
        write_adapter_meta(out, vlm, cfg.model, prompt=cfg.style_prompt, style=cfg.style)  # caption/wrlogp --adapter default to them
        save_config(cfg, out)
        result.update(adapter=str(out), steps=trainer.state.global_step, train_seconds=round(seconds, 2),
                      images_skipped=getattr(trainer, "images_skipped", 0),
                      history=[h for h in trainer.state.log_history if "loss" in h])
        losses = [h["loss"] for h in result["history"]]
        write_model_card(out, title=f"{cfg.method.upper()} {cfg.style} style LoRA adapter of {cfg.model}", base_model=cfg.model, adapter=True,
                         tags=("style", cfg.method, "image-captioning"), config=config_dict(cfg),
                         method=f"{cfg.method.upper()} (capalign style train) towards {cfg.style} captions, trained with the prompt "
                                f"{json.dumps(cfg.style_prompt)} (caption with the same prompt; capalign does by default).",
                         data=f"{len(subset)} preference pairs of style {cfg.style} (budget {cfg.budget}) from `{cfg.data}`.",
                         metrics={"steps": result["steps"], "pairs": len(subset), "train_seconds": result["train_seconds"],
                                  **({"final train loss": losses[-1]} if losses else {})})
        atomic_write_json(out / "style_result.json", result)  # last: its presence marks a finished run
        if cfg.push_to_hub:
            push_folder(out, cfg.push_to_hub, private=not cfg.hub_public)
        if not quiet():
            print0(f"{cfg.method} {cfg.style} {cfg.budget} ({len(subset)} pairs): {trainer.state.global_step} steps in {seconds:.0f}s; "
                   f"adapter in {out} (use: capalign caption --model {cfg.model} --adapter {out} --prompt {json.dumps(cfg.style_prompt)})")
    return vlm, result


def run(cfg: StyleTrainConfig) -> dict:
    show_config(cfg)
    subset, data = load_pairs(cfg)
    print0(data.summary())
    return train(cfg, subset, {"n_train_split": len(data.train), "n_test_split": len(data.test), "data_skipped": len(data.skipped)})[1]
