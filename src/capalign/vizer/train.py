"""`capalign vizer train`: zero-label LoRA training of the VLM toward its images (ViZer).

Each step, for a batch of *unlabeled* images (this command never reads captions):
  1. encode: processor + vision tower once -> prompt tokens, image embeddings, pooled F_I  [B, D_v]
  2. generate captions from the encoded batch (eval mode, no grad; greedy by default)
  3. forward image + prompt + caption through the language model (train mode, LoRA active, reusing
     the step-1 image embeddings), pool the caption tokens' last hidden states        [B, D_t]
  4. map them with the frozen mapper and minimise 1 - cos(F_I, h(states)); only LoRA is updated.
F_I comes from the same single vision pass as the prompt embeddings (the vision tower and connector
are frozen, so it equals the cached features the mapper was trained on, at no extra cost).

LoRA (paper): r=32, alpha=64, dropout 0.1, no bias, on the language model only; AdamW, weight decay
0.01, 1 epoch. Multi-GPU: `accelerate launch -m capalign vizer train ...`; several CPU processes:
`torchrun --nproc_per_node N -m capalign vizer train ... --device cpu` (gloo; `accelerate launch --cpu`
starts a single process unless given an MPI hostfile). Each process takes
every k-th image and gradients are averaged by DDP over the loss module below.
Checkpoints (`checkpoint-<step>/`: LoRA, optimizer, scheduler, RNG states via accelerate's
save_state) every `save_every` steps; re-running the same command resumes from the newest one.
"""

from __future__ import annotations

import json
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import CapalignError
from ..config import arg, config_dict, save_config, show_config
from ..data.sources import batched, open_images
from ..io import atomic_write_json
from ..training import lora as models_lora
from ..training.lora import LM_LINEAR, check_lora_training
from .mapper import Mapper, cosine_loss
from ..utils import print0, progress


@dataclass
class VizerTrainConfig:
    """Zero-label LoRA training of a VLM with a frozen ViZer mapper (unlabeled images only)."""

    model: str = arg(help="VLM to improve: hub id or local folder.")
    mapper: str = arg(help="Mapper folder from `capalign mapper train` (its pooling and prompt are reused).")
    images: str = arg(help="Unlabeled images: folder, manifest, dataset folder, hf:NAME, tar shards (captions are never read).")
    out: str = arg(help="Output folder: the PEFT adapter (for `capalign caption --adapter`), checkpoints, logs.")
    limit: int = arg(None, "Use at most this many images.")
    epochs: int = arg(1, "Epochs over the images (paper: 1).")
    max_steps: int = arg(None, "Stop after this many optimizer steps (default: epochs over the data).")
    batch_size: int = arg(8, "Images per optimizer step, over all processes (global batch).")
    grad_accum: int = arg(1, "Gradient accumulation: micro-batches of batch_size/grad_accum images per process group.")
    lr: float = arg(1e-4, "AdamW learning rate (constant after warmup).")
    warmup_steps: int = arg(0, "Linear warmup steps.")
    weight_decay: float = arg(0.01, "AdamW weight decay (paper: 0.01).")
    lora_r: int = arg(32, "LoRA rank (paper: 32).")
    lora_alpha: int = arg(64, "LoRA alpha (paper: 64).")
    lora_dropout: float = arg(0.1, "LoRA dropout (paper: 0.1).")
    lora_targets: str = arg(",".join(LM_LINEAR), "Comma-separated linear-layer names to adapt, inside the language model only.")
    max_new_tokens: int = arg(32, "Length of the generated captions.")
    do_sample: bool = arg(False, "Sample captions instead of greedy decoding.")
    temperature: float = arg(1.0, "Sampling temperature.")
    gradient_checkpointing: bool = arg(False, "Recompute activations in backward (less memory).")
    mixed_precision: str = arg("auto", "auto (bf16 on CUDA, none on CPU), no, bf16, fp16.")
    save_every: int = arg(50, "Save a resumable checkpoint every N steps (0: only at the end).")
    export_steps: str = arg("", "Comma-separated step counts at which to also save the adapter as <out>/step-<k>/ (a budget curve from one run: the learning rate is constant after warmup and the image order does not depend on the total, so step k of a longer run is the adapter a k-step run ends with; tested).")
    keep_checkpoints: int = arg(2, "How many checkpoints to keep.")
    log_every: int = arg(1, "Log loss and cosine to TensorBoard every N steps.")
    seed: int = arg(0, "Seed.")
    device: str = arg("auto", "Device for single-process runs (accelerate picks it under `accelerate launch`).")

    def __post_init__(self):
        check_lora_training(self, positive=("epochs", "max_new_tokens"))
        try:
            self.export_list = sorted({int(k) for k in str(self.export_steps or "").split(",") if k.strip()})
        except ValueError:
            raise ValueError(f"export_steps must be comma-separated integers, got {self.export_steps!r}") from None
        if self.export_list and self.export_list[0] < 1:
            raise ValueError("export_steps must be >= 1")


class VizerObjective(nn.Module):
    """The trained forward (step 3-4) as one module, so DDP sees it and averages LoRA gradients."""

    def __init__(self, vlm, mapper: Mapper):
        super().__init__()
        self.vlm_model = vlm.model  # registered so DDP finds the trainable (LoRA) parameters
        self.mapper = mapper
        self._vlm = vlm

    def forward(self, enc, caps):
        states = self._vlm.caption_states(enc, caps)  # [B, D_t]
        mapped = self.mapper(states.float())  # [B, D_v]
        target = self.mapper.target(enc.features)  # F_I - c (c = 0 unless the mapper was trained centred)
        cos = nn.functional.cosine_similarity(mapped, target, dim=-1)
        return cosine_loss(target, mapped), cos.detach().mean()


def lora_config(vlm, cfg: VizerTrainConfig):
    return models_lora.lora_config(vlm, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)


def _checkpoints(out: Path) -> list[Path]:
    return sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def run(cfg: VizerTrainConfig) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from peft import get_peft_model

    from ..models import load_vlm

    mp = cfg.mixed_precision if cfg.mixed_precision != "auto" else ("bf16" if torch.cuda.is_available() else "no")
    acc = Accelerator(gradient_accumulation_steps=1, mixed_precision=mp, log_with="tensorboard", project_dir=cfg.out, cpu=cfg.device == "cpu")
    if acc.is_main_process:
        show_config(cfg)
    set_seed(cfg.seed)
    out = Path(cfg.out)
    meta_path = Path(cfg.mapper) / "mapper_meta.json"
    if not meta_path.exists():
        raise CapalignError(f"not a mapper folder (no mapper_meta.json): {cfg.mapper}; train one with `capalign mapper train`")
    meta = json.loads(meta_path.read_text())
    vlm = load_vlm(cfg.model, device=str(acc.device), dtype="bfloat16" if mp == "bf16" else "float32", prompt=meta.get("prompt") or "", pooling=meta["pooling"])
    mapper = Mapper.from_pretrained(cfg.mapper).to(acc.device).eval().requires_grad_(False)
    if mapper.net[0].in_features != vlm.text_hidden_size or mapper.net[-1].out_features != vlm.vision_hidden_size:
        raise CapalignError(f"mapper {cfg.mapper} maps {mapper.net[0].in_features}->{mapper.net[-1].out_features} but the model has "
                            f"D_t={vlm.text_hidden_size}, D_v={vlm.vision_hidden_size}; train the mapper on this model")

    vlm.model.requires_grad_(False)
    peft_model = get_peft_model(vlm.model, lora_config(vlm, cfg))  # injects LoRA into vlm.model in place
    if cfg.gradient_checkpointing:
        vlm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = [p for p in vlm.model.parameters() if p.requires_grad]
    objective = VizerObjective(vlm, mapper)
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
    objective, opt = acc.prepare(objective, opt)
    # not through prepare(): accelerate's scheduler wrapper steps num_processes times per optimizer step
    # (it assumes a per-process batch); batch_size here is global, so the schedule follows optimizer steps
    acc.register_for_checkpointing(sched)

    # data: every process reads the same ordered stream and keeps every k-th image (no captions read)
    source = open_images(cfg.images, limit=cfg.limit)
    n = source.num_known()
    per_proc = cfg.batch_size // acc.num_processes
    if per_proc * acc.num_processes != cfg.batch_size:
        raise CapalignError(f"batch_size {cfg.batch_size} must be divisible by the number of processes ({acc.num_processes})")
    steps_per_epoch = (n // cfg.batch_size) if n else None
    total = cfg.max_steps or (steps_per_epoch * cfg.epochs if steps_per_epoch else None)
    if total is None:
        raise CapalignError("the image source has no known length (streaming): give --max_steps")
    if total < 1 or (n is not None and n < cfg.batch_size):  # (with --max_steps the epoch loop would spin forever)
        raise CapalignError(f"{n} images are fewer than one batch of {cfg.batch_size}")
    if cfg.export_list and cfg.export_list[-1] > total:
        raise CapalignError(f"export step {cfg.export_list[-1]} is beyond the run's {total} steps")

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

    step, history = 0, []
    ckpts = _checkpoints(out)
    if ckpts:
        acc.load_state(str(ckpts[-1]))
        progress_state = json.loads((ckpts[-1] / "progress.json").read_text())
        step, history = progress_state["step"], progress_state["history"]
        print0(f"resumed from {ckpts[-1]} at step {step}")
    acc.init_trackers("vizer", config={k: v for k, v in config_dict(cfg).items() if isinstance(v, (int, float, str, bool))})

    def batches():
        for epoch in range(cfg.epochs if not cfg.max_steps else 10**9):
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
            loss_sum, cos_sum = 0.0, 0.0
            for k in range(cfg.grad_accum):
                chunk = images[k * micro : (k + 1) * micro]
                vlm.model.eval()  # F_I and the captions from the frozen model in eval mode (train() is set below)
                enc = vlm.encode(chunk)  # 1. vision tower once
                caps = vlm.generate(enc, max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, temperature=cfg.temperature)  # 2.
                objective.train()
                sync = acc.no_sync(objective) if k < cfg.grad_accum - 1 else nullcontext()
                with sync:
                    loss, cos = objective(enc, caps)  # 3-4.
                    acc.backward(loss / cfg.grad_accum)
                loss_sum += loss.item() / cfg.grad_accum
                cos_sum += cos.item() / cfg.grad_accum
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            loss_avg = acc.reduce(torch.tensor(loss_sum, device=acc.device), "mean").item()
            cos_avg = acc.reduce(torch.tensor(cos_sum, device=acc.device), "mean").item()
            history.append({"step": step, "loss": loss_avg, "cos": cos_avg})
            if step % cfg.log_every == 0:
                acc.log({"train/loss": loss_avg, "train/cos": cos_avg}, step=step)
            bar.update(task, completed=step, rate=f"loss {loss_avg:.4f} cos {cos_avg:.3f}")
            if step in cfg.export_list and acc.is_main_process:
                _export_adapter(peft_model, out / f"step-{step}")
            if cfg.save_every and step % cfg.save_every == 0 and step < total:
                _save_checkpoint(acc, out, step, history, cfg.keep_checkpoints)
    acc.wait_for_everyone()
    if acc.is_main_process:
        peft_model.save_pretrained(out)
        save_config(cfg, out)
        atomic_write_json(out / "vizer_result.json", {"steps": step, "history": history, "mapper_meta": meta})
        print0(f"vizer: {step} steps; adapter saved to {out} (use: capalign caption --model {cfg.model} --adapter {out})")
    acc.end_training()
    return {"steps": step, "history": history}


def _export_adapter(peft_model, path: Path) -> None:
    """The adapter as it is now, as a folder `capalign caption --adapter` accepts; complete or absent."""
    tmp = path.with_name(f".tmp-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)


def _save_checkpoint(acc, out: Path, step: int, history: list, keep: int) -> None:
    path = out / f"checkpoint-{step}"
    tmp = out / f".tmp-checkpoint-{step}"
    acc.save_state(str(tmp))
    acc.wait_for_everyone()  # every rank has written its RNG state into tmp before it is renamed
    if acc.is_main_process:
        atomic_write_json(tmp / "progress.json", {"step": step, "history": history})
        tmp.replace(path)  # a checkpoint folder exists only once it is complete
        for old in _checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
