"""The ViZer mapper h (language-model hidden states -> vision-encoder feature space) and `capalign mapper train`.

`M = h(f(.))` with f the VLM's language model (pooled last hidden states over caption tokens, see
VLM.caption_states) and h an MLP of depth 2 (Linear -> GELU -> Linear) of width w. The paper gives
depth and widths (128-1024, best 256) but not the activation; GELU is our choice. Trained with
`1 - cos(F_I - c, h(F_T))`, where c (buffer `feature_mean`) is zero as in the paper, or, with
centering on, the mean training feature: mean-pooled patch features of one model share a large
common component (cosines between different images ~0.99), which leaves the paper's raw cosine
almost no signal to fit (docs/results/vizer-history.md has the measurements). Saved with huggingface_hub's PyTorchModelHubMixin: safetensors + config.json,
`Mapper.from_pretrained(path)`.

`capalign mapper train` fits h on cached frozen-model features. Variant gt pairs each image with a human caption, variant g with the model's own greedy caption
(truly zero-label). The VLM runs once per (model, data, variant) thanks to the feature cache; the
MLP itself trains in seconds. Held-out cosine is measured on a seeded split of the pairs.

Launch: `capalign mapper train --model runs/nano-web --data runs/shapes --variant g --width 256 --samples 10000 --out runs/mapper-g`
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..config import arg, config_dict, save_config, show_config
from ..io import atomic_write_json
from ..training.card import write_model_card
from ..training.hub import PUBLIC_HELP, PUSH_HELP, hub_token, push_folder
from ..training.tracking import REPORT_HELP, Tracker, check_report_to
from ..utils import print0, progress, seed_everything
from .features import collect_features


class Mapper(nn.Module, PyTorchModelHubMixin, library_name="capalign", tags=["vizer-mapper"]):
    def __init__(self, in_dim: int, out_dim: int, width: int = 256, depth: int = 2):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        dims = [in_dim] + [width] * (depth - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < depth - 1:
                layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)
        self.register_buffer("feature_mean", torch.zeros(out_dim))  # c; zero = the paper's raw cosine

    def target(self, features: torch.Tensor) -> torch.Tensor:
        """What h's output is compared with: F_I - c. [B, D_v]"""
        return features.float() - self.feature_mean

    def forward(self, states: torch.Tensor) -> torch.Tensor:  # [B, D_t] -> [B, D_v]
        return self.net(states)


def cosine_loss(features: torch.Tensor, mapped: torch.Tensor) -> torch.Tensor:
    """ViZer's loss: mean over the batch of 1 - cos(F_I, M(x)). [B, D_v] x [B, D_v] -> scalar."""
    return (1 - F.cosine_similarity(features.float(), mapped.float(), dim=-1)).mean()


@dataclass
class MapperTrainConfig:
    """Train the ViZer mapper (variant gt: human captions; g: the model's own captions)."""

    model: str = arg(help="VLM: hub id or local folder (the frozen f).")
    data: str = arg(help="Images (and, for gt, captions): folder, manifest, dataset folder, hf:NAME, tar shards.")
    out: str = arg(help="Output folder for the mapper (safetensors + config.json + mapper_meta.json).")
    variant: str = arg("gt", "gt: pairs with human captions; g: pairs with the model's own greedy captions.")
    width: int = arg(256, "Hidden width w of the depth-2 MLP (paper: 128-1024, best 256).")
    depth: int = arg(2, "MLP depth (paper: 2).")
    samples: int = arg(10000, "Number of (image, caption) pairs (paper: 10k-100k; best ~40k gt, ~10k g).")
    epochs: int = arg(1, "Epochs over the pairs (paper: 1).")
    batch_size: int = arg(64, "Mapper batch size.")
    lr: float = arg(1e-3, "AdamW learning rate.")
    weight_decay: float = arg(0.01, "AdamW weight decay.")
    val_fraction: float = arg(0.1, "Share of pairs held out for the reported cosine.")
    center: bool = arg(False, "Compare with F_I minus the mean training feature (not in the paper; see docs/vizer.md).")
    pooling: str = arg("mean", "Vision feature pooling over patches: mean, global (SmolVLM global image only) or max.")
    prompt: str = arg(None, "Caption prompt override (default: the family's; '' for none).")
    max_new_tokens: int = arg(32, "Caption length for variant g.")
    feature_batch_size: int = arg(32, "Images per VLM batch when computing features.")
    cache_dir: str = arg(None, "Feature cache folder (default: <out>/feature-cache). Give runs on the same model and data one "
                                   "--cache_dir to compute the features once (a sweep over widths or sample counts).")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N, mps.")
    dtype: str = arg("auto", "auto (bf16 on CUDA, fp32 elsewhere), float32, bfloat16.")
    seed: int = arg(0, "Seed (caption choice, split, init, order).")
    report_to: str = arg("tensorboard", REPORT_HELP)
    push_to_hub: str = arg(None, PUSH_HELP)
    hub_public: bool = arg(False, PUBLIC_HELP)

    def __post_init__(self):
        check_report_to(self.report_to)
        if self.variant not in ("gt", "g"):
            raise ValueError(f"variant must be gt or g, got {self.variant!r}")
        for k in ("width", "depth", "samples", "epochs", "batch_size", "max_new_tokens"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if not 0 < self.val_fraction < 1:
            raise ValueError("val_fraction must be in (0, 1)")


def fit_mapper(states: torch.Tensor, feats: torch.Tensor, width: int, depth: int = 2, epochs: int = 1, batch_size: int = 64,
               lr: float = 1e-3, weight_decay: float = 0.01, val_fraction: float = 0.1, seed: int = 0,
               center: bool = False, desc: str | None = None, on_step: Callable[[int, float], None] | None = None) -> tuple[Mapper, dict]:
    """Train h on ([N, D_t] states, [N, D_v] features); returns the mapper and train/held-out cosines.
    `desc`: show progress (utils.progress) under this name; `on_step(step, loss)` after each optimizer step (the tracker of --report_to)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(states), generator=g)
    n_val = max(1, int(round(val_fraction * len(states)))) if len(states) > 1 else 0
    val, tr = perm[:n_val], perm[n_val:]
    torch.manual_seed(seed)
    mapper = Mapper(states.shape[1], feats.shape[1], width=width, depth=depth)
    if center:
        mapper.feature_mean.copy_(feats[tr].mean(0))
    feats = mapper.target(feats)  # [N, D_v]: F_I - c
    opt = torch.optim.AdamW(mapper.parameters(), lr=lr, weight_decay=weight_decay)
    step = 0
    with progress(disable=desc is None) as bar:
        task = bar.add_task(desc or "", total=epochs * -(-len(tr) // batch_size), rate="")
        for _ in range(epochs):
            order = tr[torch.randperm(len(tr), generator=g)]
            for i in range(0, len(order), batch_size):
                b = order[i : i + batch_size]
                loss = cosine_loss(feats[b], mapper(states[b]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                bar.update(task, advance=1, rate=f"loss {loss.item():.3f}")
                if on_step is not None:
                    on_step(step, loss.item())
    mapper.eval()
    with torch.no_grad():
        cos = lambda idx: F.cosine_similarity(mapper(states[idx]), feats[idx], dim=-1).mean().item() if len(idx) else float("nan")  # noqa: E731
        # baseline: the mean training feature (what a mapper that ignores the caption would predict)
        mean_feat = feats[tr].mean(0, keepdim=True)
        base = F.cosine_similarity(mean_feat.expand(len(val), -1), feats[val], dim=-1).mean().item() if len(val) else float("nan")
        stats = {"train_cos": cos(tr), "val_cos": cos(val), "val_cos_mean_feature_baseline": base, "n_train": len(tr), "n_val": len(val)}
        # a mapper that does not beat the caption-blind prediction has learnt nothing its reward could use
        stats["beats_mean_feature_baseline"] = bool(stats["val_cos"] > base) if len(val) else None
    return mapper, stats


def run(cfg: MapperTrainConfig) -> dict:
    from ..models import load_vlm

    show_config(cfg)
    if cfg.push_to_hub:
        hub_token()  # before any work
    seed_everything(cfg.seed)
    vlm = load_vlm(cfg.model, device=cfg.device, dtype=cfg.dtype, prompt=cfg.prompt, pooling=cfg.pooling)
    cache = cfg.cache_dir or str(Path(cfg.out) / "feature-cache")  # under --out unless asked: never beside it
    data = collect_features(vlm, cfg.data, cfg.variant, cfg.samples, cache, model_id=str(cfg.model), batch_size=cfg.feature_batch_size,
                            max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    tracker = Tracker(cfg.report_to, cfg.out, "mapper", config_dict(cfg))
    mapper, stats = fit_mapper(data["text_states"], data["image_features"], cfg.width, cfg.depth, cfg.epochs, cfg.batch_size,
                               cfg.lr, cfg.weight_decay, cfg.val_fraction, cfg.seed, cfg.center, desc=f"mapper {cfg.variant}",
                               on_step=lambda step, loss: tracker.log({"train/loss": loss}, step))
    tracker.close()
    out = Path(cfg.out)
    mapper.save_pretrained(out)
    meta = {"variant": cfg.variant, "model": cfg.model, "pooling": vlm.pooling, "prompt": vlm.prompt, "samples": len(data["ids"]),
            "width": cfg.width, "depth": cfg.depth, "center": cfg.center, **stats}
    atomic_write_json(out / "mapper_meta.json", meta)
    save_config(cfg, out)
    write_model_card(out, title=f"ViZer mapper ({cfg.variant}) of {cfg.model}", base_model=cfg.model, tags=("vizer", "vizer-mapper"),
                     method=f"The ViZer mapper h: a depth-{cfg.depth}, width-{cfg.width} MLP from the VLM's caption states to its pooled "
                            f"({vlm.pooling}) vision features, trained with the cosine loss; variant {cfg.variant} "
                            + ("(human captions)." if cfg.variant == "gt" else "(the model's own greedy captions)."),
                     data=f"{len(data['ids'])} (image, caption) pairs from `{cfg.data}`; {cfg.val_fraction:.0%} held out for the cosine.",
                     config=config_dict(cfg), metrics=stats,
                     usage=f"The frozen reward of `capalign vizer train --model {cfg.model} --mapper THIS_FOLDER --images IMAGES --out ADAPTER`; "
                           "load it in Python with `capalign.vizer.mapper.Mapper.from_pretrained(THIS_FOLDER)` (safetensors + config.json).")
    print0(f"mapper ({cfg.variant}, w={cfg.width}, n={len(data['ids'])}): held-out cos {stats['val_cos']:.4f} "
           f"(train {stats['train_cos']:.4f}; mean-feature baseline {stats['val_cos_mean_feature_baseline']:.4f})")
    if stats["beats_mean_feature_baseline"] is False:
        print0(f"[yellow]warning: the mapper does not beat the mean-feature baseline (held-out cos {stats['val_cos']:.4f} <= "
               f"{stats['val_cos_mean_feature_baseline']:.4f}, the caption-blind prediction): its reward cannot tell captions of one image "
               "from another's; try more --samples, --center or another --pooling (docs/vizer.md). mapper_meta.json: "
               "beats_mean_feature_baseline false")
    if cfg.push_to_hub:
        push_folder(out, cfg.push_to_hub, private=not cfg.hub_public)
    return meta
