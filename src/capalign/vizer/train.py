"""`capalign vizer train`: zero-label LoRA training of the VLM toward its images (ViZer).

Each step, for a batch of *unlabeled* images (this command never reads captions):
  1. encode: processor + vision tower once -> prompt tokens, image embeddings, pooled F_I  [B, D_v]
  2. generate captions from the encoded batch (eval mode, no grad; greedy by default)
  3. forward image + prompt + caption through the language model (train mode, LoRA active, reusing
     the step-1 image embeddings), pool the caption tokens' last hidden states        [B, D_t]
  4. map them with the frozen mapper and minimise 1 - cos(F_I, h(states)); only LoRA is updated (or the
     mapper's own objective, recorded when it was trained: InfoNCE over the batch, or token-to-region
     late interaction on the caption's token states; vizer/mapper.py).
Each step's history row (vizer_result.json) has its loss, cos and the degeneracy shares of the step-2 captions
(degenerate_empty/nonword/repeat/distinct: metrics/degenerate.py, the keys of the RL history).
F_I comes from the same single vision pass as the prompt embeddings (the vision tower and connector
are frozen, so it equals the cached features the mapper was trained on, at no extra cost).

LoRA (paper): r=32, alpha=64, dropout 0.1, no bias, on the language model only; AdamW, weight decay
0.01, 1 epoch. Multi-GPU: `accelerate launch -m capalign vizer train ...`; several CPU processes:
`torchrun --nproc_per_node N -m capalign vizer train ... --device cpu` (gloo; `accelerate launch --cpu`
starts a single process unless given an MPI hostfile). Each process takes
every k-th image and gradients are averaged by DDP over the loss module below.
Checkpoints (`checkpoint-<step>/`: LoRA, optimizer, scheduler, RNG states via accelerate's
save_state) every `save_every` steps; re-running the same command resumes from the newest one.

Why an accelerate loop and not a `transformers.Trainer` subclass, as style and rl train are: the loop uses
the same shared parts (training/args.py groups, devices.resolve_precision, training/checkpoints.py, a
transformers scheduler, one seeding function), so only the ~40 lines of the step itself are its own. A
Trainer port keeps the tested behaviours (one vision pass, DDP equal to one process, exact resume, step k
of a long run = a k-step run) only with extra work and changes every ViZer number: `Trainer.__init__`
reseeds after the LoRA init, and its DataLoader draws from the global RNG when an epoch starts, so every
dropout mask and sampled caption moves and the documented ViZer results stop reproducing. Revisit when
those results are re-measured anyway.
"""

from __future__ import annotations

import json
import math
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import CapalignError
from ..config import arg, check_resume, config_dict, save_config, show_config
from ..data.sources import batched, open_images
from ..devices import resolve_precision
from ..io import atomic_write_json
from ..models.adapter import write_adapter_meta
from ..training.args import LoraArgs, OptimArgs, RunArgs, method_defaults
from ..training.card import write_model_card
from ..training.checkpoints import begin_run, last_checkpoint, rotate
from ..training.hub import push_folder
from ..utils import print0, progress, seed_everything
from .mapper import Mapper, vlm_settings

PROGRESS = "progress.json"  # written last into a checkpoint: step and loss history (its completeness marker)


@dataclass(kw_only=True)
@method_defaults(max_grad_norm=0.0)  # below @dataclass: it re-declares fields before the dataclass is made
class VizerTrainConfig(LoraArgs, OptimArgs, RunArgs):
    """Zero-label LoRA training of a VLM with a frozen ViZer mapper (unlabeled images only)."""

    model: str = arg(help="VLM to improve: hub id or local folder.")
    mapper: str = arg(help="Mapper folder from `capalign mapper train` (its pooling and prompt are reused).")
    images: str = arg(help="Unlabeled images: folder, manifest, dataset folder, hf:NAME, tar shards (captions are never read).")
    limit: int = arg(None, "Use at most this many images.")
    max_new_tokens: int = arg(32, "Length of the generated captions.")
    do_sample: bool = arg(False, "Sample captions instead of greedy decoding.")
    temperature: float = arg(1.0, "Sampling temperature.")
    export_steps: str = arg("", "Comma-separated step counts at which to also save the adapter as <out>/step-<k>/ (a budget curve from one run: with a constant learning rate after warmup the image order does not depend on the total, so step k of a longer run is the adapter a k-step run ends with; tested).")

    def __post_init__(self):
        super().__post_init__()
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        try:
            self.export_list = sorted({int(k) for k in str(self.export_steps or "").split(",") if k.strip()})
        except ValueError:
            raise ValueError(f"export_steps must be comma-separated integers, got {self.export_steps!r}") from None
        if self.export_list and self.export_list[0] < 1:
            raise ValueError("export_steps must be >= 1")
        if self.export_list and self.lr_scheduler not in ("constant", "constant_with_warmup"):
            raise ValueError(f"export_steps needs a constant learning rate after warmup (lr_scheduler constant_with_warmup), got {self.lr_scheduler}")


class VizerObjective(nn.Module):
    """The trained forward (step 3-4) as one module, so DDP sees it and averages LoRA gradients."""

    def __init__(self, vlm, mapper: Mapper):
        super().__init__()
        self.vlm_model = vlm.model  # registered so DDP finds the trainable (LoRA) parameters
        self.mapper = mapper
        self._vlm = vlm

    def forward(self, enc, caps):
        if self.mapper.objective == "late":  # [B, L, D_t] token states and their weights
            states, weights = self._vlm.caption_token_states(enc, caps)
        else:
            states, weights = self._vlm.caption_states(enc, caps), None  # [B, D_t]
        # the mapper's objective against F_I - c (c = 0 unless the mapper was trained centred)
        loss = self.mapper.loss(states, enc.features, weights)
        return loss, self.mapper.similarity(states, enc.features, weights).detach().mean()


def run(cfg: VizerTrainConfig) -> dict:
    from accelerate import Accelerator
    from peft import get_peft_model
    from transformers import get_scheduler

    from ..models import load_vlm

    prec = resolve_precision(cfg.mixed_precision, cfg.device)
    acc = Accelerator(gradient_accumulation_steps=1, mixed_precision=prec.mixed_precision, log_with=cfg.report_list or None,
                      project_dir=cfg.out, cpu=prec.device == "cpu")
    if acc.is_main_process:
        show_config(cfg)
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    overwrite = check_resume(cfg, out)  # an earlier run in --out must have the same settings (or --overwrite)
    meta_path = Path(cfg.mapper) / "mapper_meta.json"
    if not meta_path.exists():
        raise CapalignError(f"not a mapper folder (no mapper_meta.json): {cfg.mapper}; train one with `capalign mapper train`")
    meta = json.loads(meta_path.read_text())
    if meta.get("states_layer") == 0:
        raise CapalignError(f"mapper {cfg.mapper} reads states_layer 0, the token embeddings: no LoRA weight lies behind them, so "
                            "ViZer cannot train through that reward (use it in `vizer diagnose`; train a mapper on layer >= 1)")
    vlm = load_vlm(cfg.model, device=str(acc.device), dtype=prec.weights, **vlm_settings(meta))
    mapper = Mapper.from_pretrained(cfg.mapper).to(acc.device).eval().requires_grad_(False)
    if mapper.in_dim != vlm.text_hidden_size or mapper.feature_dim != vlm.feature_size:
        raise CapalignError(f"mapper {cfg.mapper} maps {mapper.in_dim}->{mapper.feature_dim} but the model has "
                            f"D_t={vlm.text_hidden_size}, features of {vlm.feature_size}; train the mapper on this model")

    vlm.model.requires_grad_(False)
    peft_model = get_peft_model(vlm.model, cfg.peft_config(vlm))  # injects LoRA into vlm.model in place
    if cfg.gradient_checkpointing:
        vlm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = [p for p in vlm.model.parameters() if p.requires_grad]
    objective = VizerObjective(vlm, mapper)
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    objective, opt = acc.prepare(objective, opt)

    # data: every process reads the same ordered stream and keeps every k-th image (no captions read)
    source = open_images(cfg.images, limit=cfg.limit, default_split="train")
    n = source.num_known()
    per_proc = cfg.batch_size // acc.num_processes
    if per_proc * acc.num_processes != cfg.batch_size:
        raise CapalignError(f"batch_size {cfg.batch_size} must be divisible by the number of processes ({acc.num_processes})")
    steps_per_epoch = (n // cfg.batch_size) if n else None
    total = cfg.max_steps or (int(steps_per_epoch * cfg.epochs) if steps_per_epoch else None)
    if total is None:
        raise CapalignError("the image source has no known length (streaming): give --max_steps")
    if total < 1 or (n is not None and n < cfg.batch_size):  # (with --max_steps the epoch loop would spin forever)
        raise CapalignError(f"{n} images are fewer than one batch of {cfg.batch_size}")
    if cfg.export_list and cfg.export_list[-1] > total:
        raise CapalignError(f"export step {cfg.export_list[-1]} is beyond the run's {total} steps")
    # not through prepare(): accelerate's scheduler wrapper steps num_processes times per optimizer step
    # (it assumes a per-process batch); batch_size here is global, so the schedule follows optimizer steps
    sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=total)
    acc.register_for_checkpointing(sched)

    # checkpoints hold the LoRA weights only (not the frozen VLM): the diffusers-LoRA pattern of
    # accelerate save/load hooks that replace the model state with the adapter's
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    def save_hook(models, weights, output_dir):
        if acc.is_main_process:
            save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}, f"{output_dir}/lora.safetensors")
        weights.clear()

    def load_hook(models, input_dir):
        models.clear()
        set_peft_model_state_dict(peft_model, load_file(f"{input_dir}/lora.safetensors"))

    acc.register_save_state_pre_hook(save_hook)
    acc.register_load_state_pre_hook(load_hook)

    step, history, vocab = 0, [], None
    begin_run(cfg, overwrite, ("vizer_result.json",))
    resume = None if overwrite else last_checkpoint(out, PROGRESS)
    if resume:
        acc.load_state(resume)
        progress_state = json.loads((Path(resume) / PROGRESS).read_text())
        step, history = progress_state["step"], progress_state["history"]
        print0(f"resumed from {resume} at step {step}")
    acc.init_trackers("vizer", config={k: v for k, v in config_dict(cfg).items() if isinstance(v, (int, float, str, bool))})

    def batches():
        for epoch in range(math.ceil(cfg.epochs) if not cfg.max_steps else 10**9):
            stream = (r for i, r in enumerate(source) if i % acc.num_processes == acc.process_index)
            for recs in batched(stream, per_proc):
                if len(recs) == per_proc:
                    yield [r.image for r in recs]  # only images: ViZer is zero-label

    with progress() as bar:
        task = bar.add_task("vizer", total=total, completed=step, rate="")
        data = batches()
        for _ in range(step):  # resume: skip the images of the steps already done (same order, same seed)
            next(data)
        for images in data:
            if step >= total:
                break
            micro = len(images) // cfg.grad_accum
            loss_sum, cos_sum, sampled = 0.0, 0.0, []
            for k in range(cfg.grad_accum):
                chunk = images[k * micro : (k + 1) * micro]
                vlm.model.eval()  # F_I and the captions from the frozen model in eval mode (train() is set below)
                enc = vlm.encode(chunk)  # 1. vision tower once
                caps = vlm.generate(enc, max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, temperature=cfg.temperature)  # 2.
                sampled += caps.texts
                objective.train()
                sync = acc.no_sync(objective) if k < cfg.grad_accum - 1 else nullcontext()
                with sync:
                    loss, cos = objective(enc, caps)  # 3-4.
                    acc.backward(loss / cfg.grad_accum)
                loss_sum += loss.item() / cfg.grad_accum
                cos_sum += cos.item() / cfg.grad_accum
            if cfg.max_grad_norm:
                acc.clip_grad_norm_(trainable, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            loss_avg = acc.reduce(torch.tensor(loss_sum, device=acc.device), "mean").item()
            cos_avg = acc.reduce(torch.tensor(cos_sum, device=acc.device), "mean").item()
            shares, vocab = _degeneracy(sampled, vocab)
            history.append({"step": step, "loss": loss_avg, "cos": cos_avg, **shares})
            if step % cfg.log_every == 0:
                acc.log({"train/loss": loss_avg, "train/cos": cos_avg, **{f"train/{k}": v for k, v in shares.items()}}, step=step)
            bar.update(task, completed=step, rate=f"loss {loss_avg:.4f} cos {cos_avg:.3f}")
            if step in cfg.export_list and acc.is_main_process:
                _export_adapter(peft_model, out / f"step-{step}", lambda d: _describe(d, vlm, cfg, history))
            if cfg.save_every and step % cfg.save_every == 0 and step < total:
                _save_checkpoint(acc, out, step, history, cfg.keep_checkpoints)
    acc.wait_for_everyone()
    if acc.is_main_process:
        peft_model.save_pretrained(out)
        _describe(out, vlm, cfg, history, meta)
        save_config(cfg, out)
        atomic_write_json(out / "vizer_result.json", {"steps": step, "history": history, "mapper_meta": meta, "degenerate_vocabulary": vocab})
        print0(f"vizer: {step} steps; adapter saved to {out} (use: capalign caption --model {cfg.model} --adapter {out})")
        if cfg.push_to_hub:
            push_folder(out, cfg.push_to_hub, private=not cfg.hub_public)
    acc.end_training()
    return {"steps": step, "history": history}


def _describe(folder, vlm, cfg: VizerTrainConfig, history: list, mapper_meta: dict | None = None) -> None:
    """What an adapter folder says about itself: capalign's adapter record (the mapper's prompt: captioning with it is
    the default) and its model card, over the template one peft wrote."""
    write_adapter_meta(folder, vlm, cfg.model, prompt=vlm.prompt or "")
    last = history[-max(1, len(history) // 10):]  # the last tenth of the steps
    metrics = {"steps": len(history), **({"loss (last 10% of steps)": sum(h["loss"] for h in last) / len(last),
                                          "cos (last 10% of steps)": sum(h["cos"] for h in last) / len(last)} if history else {}),
               **({"mapper held-out cos": mapper_meta["val_cos"]} if mapper_meta and "val_cos" in mapper_meta else {})}
    write_model_card(folder, title=f"ViZer LoRA adapter of {cfg.model}", base_model=cfg.model, adapter=True, tags=("vizer", "image-captioning"),
                     method="ViZer: zero-label LoRA training of the language model; the frozen mapper (`capalign mapper train`, "
                            f"`{cfg.mapper}`) maps the model's caption states to the image's vision features and the loss is their "
                            "cosine distance, so captions are pulled towards what the image shows. No caption labels are used.",
                     data=f"Unlabeled images from `{cfg.images}`" + (f" (at most {cfg.limit})" if cfg.limit else "") + ".",
                     config=config_dict(cfg), metrics=metrics)


def _export_adapter(peft_model, path: Path, write_meta=None) -> None:
    """The adapter as it is now, as a folder `capalign caption --adapter` accepts; complete or absent."""
    tmp = path.with_name(f".tmp-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp)
    if write_meta is not None:
        write_meta(tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)


def _degeneracy(texts: list[str], vocab: str | None) -> tuple[dict, str]:
    """The step's sampled captions (all processes') -> ({degenerate_<flag>: share}, vocabulary): metrics/degenerate.py,
    the metric `capalign evaluate --metrics degenerate` reports, with the keys of the RL history. ViZer reads no
    references, so the vocabulary is picked (degenerate.vocabulary_for) from the first step's captions of this run."""
    from accelerate.utils import gather_object

    from ..metrics.degenerate import degeneracy, vocabulary_for

    texts = gather_object(texts)
    vocab = vocab or vocabulary_for(texts)
    return {f"degenerate_{k}": v for k, v in degeneracy(texts, vocab)["corpus"].items()}, vocab


def _save_checkpoint(acc, out: Path, step: int, history: list, keep: int) -> None:
    path = out / f"checkpoint-{step}"
    tmp = out / f".tmp-checkpoint-{step}"
    acc.save_state(str(tmp))
    acc.wait_for_everyone()  # every rank has written its RNG state into tmp before it is renamed
    if acc.is_main_process:
        atomic_write_json(tmp / PROGRESS, {"step": step, "history": history})
        tmp.replace(path)  # a checkpoint folder exists only once it is complete
        rotate(out, keep)
    acc.wait_for_everyone()
