"""The ViZer mapper h (language-model hidden states -> vision-encoder feature space) and `capalign mapper train`.

`M = h(f(.))` with f the VLM's language model (pooled last hidden states over caption tokens, see
VLM.caption_states) and h an MLP of depth 2 (Linear -> GELU -> Linear) of width w. The paper gives
depth and widths (128-1024, best 256) but not the activation; GELU is our choice. Trained with
`1 - cos(F_I - c, h(F_T))`, where c (buffer `feature_mean`) is zero as in the paper, or, with
centering on, the mean training feature: mean-pooled patch features of one model share a large
common component (cosines between different images ~0.99), which leaves the paper's raw cosine
almost no signal to fit (docs/results/vizer-history.md has the measurements). Saved with huggingface_hub's PyTorchModelHubMixin: safetensors + config.json,
`Mapper.from_pretrained(path)`.

Objectives (`--objective`, saved in config.json and mapper_meta.json, so `vizer train`'s reward and `vizer
diagnose` score a mapper the way it was trained; a mapper saved without one is the paper's):
- cosine (the paper, default): per pair 1 - cos(F_I - c, h(mean of the caption's token states));
- infonce: the pooled caption's h against every image of the batch, softmax over cos / temperature, both
  directions (CLIP); a pair scores cos(F_I - c, h(...)), the logit the softmax compares;
- late (token-to-region late interaction, FILIP / ColBERT): each caption token's state is mapped on its
  own and matched to its best region (max cosine), averaged over the caption's tokens; the regions are
  the pooling's (gridRxC: R*C regions; mean: one, the whole image). Loss 1 - that score.

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

from .. import CapalignError
from ..config import arg, config_dict, save_config, show_config
from ..io import atomic_write_json
from ..models.base import grid_shape, masked_mean
from ..training.card import write_model_card
from ..training.hub import PUBLIC_HELP, PUSH_HELP, hub_token, push_folder
from ..training.tracking import REPORT_HELP, Tracker, check_report_to
from ..utils import print0, progress, seed_everything
from .features import collect_features

OBJECTIVES = ("cosine", "infonce", "late")


class Mapper(nn.Module, PyTorchModelHubMixin, library_name="capalign", tags=["vizer-mapper"]):
    def __init__(self, in_dim: int, out_dim: int, width: int = 256, depth: int = 2, objective: str = "cosine",
                 temperature: float = 0.07, regions: int = 1):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if temperature <= 0 or regions < 1 or (regions > 1 and objective != "late"):
            raise ValueError(f"need temperature > 0 and regions >= 1 (> 1 only for objective late), got {temperature}, {regions}")
        self.objective, self.temperature, self.regions = objective, temperature, regions
        dims = [in_dim] + [width] * (depth - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < depth - 1:
                layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)
        self.register_buffer("feature_mean", torch.zeros(out_dim * regions))  # c; zero = the paper's raw cosine

    @property
    def in_dim(self) -> int:
        return self.net[0].in_features

    @property
    def feature_dim(self) -> int:
        """Width of the image features it is compared with (regions x h's output for late interaction)."""
        return self.net[-1].out_features * self.regions

    def target(self, features: torch.Tensor) -> torch.Tensor:
        """What h's output is compared with: F_I - c. [B, D_v]"""
        return features.float() - self.feature_mean

    def forward(self, states: torch.Tensor) -> torch.Tensor:  # [B, D_t] -> [B, D_v]
        return self.net(states)

    def similarity(self, states: torch.Tensor, features: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """[N] score of caption k against image k (higher = more alike): cos(F_I - c, h(pooled states)), or, for
        late, the mean over tokens of the best region's cosine. states: pooled [N, D_t], or token states
        [N, L, D_t] with `weights` [N, L] (pooled by them, as VLM.caption_states does, unless late)."""
        target = self.target(features)  # [N, F]
        if self.objective != "late":
            pooled = masked_mean(states, weights) if states.dim() == 3 else states
            return F.cosine_similarity(target, self(pooled.float()), dim=-1)
        if states.dim() == 2:  # a pooled caption: one token
            states, weights = states[:, None], torch.ones(len(states), 1, device=states.device)
        mapped = F.normalize(self(states.float()), dim=-1)  # [N, L, D_v]
        regions = F.normalize(target.view(len(target), self.regions, -1), dim=-1)  # [N, R, D_v]
        best = (mapped @ regions.transpose(1, 2)).amax(-1)  # [N, L]: each token's best region
        return masked_mean(best[..., None], weights.float())[:, 0]

    def similarity_matrix(self, states: torch.Tensor, features: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """[N, M] score of caption i against image j (the retrieval of `vizer diagnose`); its diagonal is `similarity`."""
        target = self.target(features)  # [M, F]
        if self.objective != "late":
            pooled = masked_mean(states, weights) if states.dim() == 3 else states
            return F.normalize(self(pooled.float()), dim=-1) @ F.normalize(target, dim=-1).T
        if states.dim() == 2:
            states, weights = states[:, None], torch.ones(len(states), 1, device=states.device)
        mapped = F.normalize(self(states.float()), dim=-1)  # [N, L, D_v]
        regions = F.normalize(target.view(len(target), self.regions, -1), dim=-1)  # [M, R, D_v]
        best = torch.einsum("nld,mrd->nmlr", mapped, regions).amax(-1)  # [N, M, L]
        w = weights.float()[:, None, :]
        return (best * w).sum(-1) / w.sum(-1).clamp(min=1)

    def pair_loss(self, states: torch.Tensor, features: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """[N] per-caption loss `vizer diagnose` ranks captions by: 1 - similarity."""
        return 1 - self.similarity(states, features, weights)

    def loss(self, states: torch.Tensor, features: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The objective over a batch (mapper training, and ViZer's reward with h frozen): scalar."""
        if self.objective != "infonce":
            return self.pair_loss(states, features, weights).mean()
        pooled = masked_mean(states, weights) if states.dim() == 3 else states
        return infonce_loss(self.target(features), self(pooled.float()), self.temperature)


def vlm_settings(meta: dict) -> dict:
    """The `load_vlm` settings a mapper was trained with (its mapper_meta.json): prompt, pooling, states_layer and
    text_only, older mappers' missing fields as the paper's. vizer train, vizer diagnose and the study's features
    stage load the model with exactly these, so the reward sees the features and states the mapper learned on."""
    return {"prompt": meta.get("prompt") or "", "pooling": meta["pooling"], "states_layer": meta.get("states_layer", -1),
            "text_only": bool(meta.get("text_only"))}


def infonce_loss(features: torch.Tensor, mapped: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) over a batch: logits cos(mapped_i, features_j) / temperature, pair i the
    positive of row i and of column i; the mean of the two cross-entropies. [B, D] x [B, D] -> scalar."""
    logits = F.normalize(mapped.float(), dim=-1) @ F.normalize(features.float(), dim=-1).T / temperature
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


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
    pooling: str = arg("mean", "Vision feature pooling over patches: mean, global (SmolVLM global image only), max, or gridRxC "
                               "(grid1x3, grid2x2: R x C regions of the patch grid, their means concatenated, or matched per region by "
                               "--objective late).")
    objective: str = arg("cosine", "cosine (the paper: 1 - cos with F_I), infonce (contrastive over the batch, --temperature) or late "
                                   "(each caption token matched to its best region, averaged over tokens); vizer train and diagnose use it.")
    temperature: float = arg(0.07, "InfoNCE temperature (objective infonce).")
    states_layer: int = arg(-1, "The LM hidden state the mapper reads: -1 the last (the paper), 0 the token embeddings, k the output of "
                                "LM layer k (not in the paper; docs/results/vizer-objectives.md); vizer train and diagnose use it.")
    text_only: bool = arg(False, "The mapper reads the LM states of the caption alone (no image, no prompt in the forward), not "
                                 "conditioned on the image (the paper); not in the paper; vizer train and diagnose use it.")
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
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        grid_shape(self.pooling)  # an unknown pooling: one clear error before the model loads


def fit_mapper(states: torch.Tensor, feats: torch.Tensor, width: int, depth: int = 2, epochs: int = 1, batch_size: int = 64,
               lr: float = 1e-3, weight_decay: float = 0.01, val_fraction: float = 0.1, seed: int = 0,
               center: bool = False, objective: str = "cosine", temperature: float = 0.07, regions: int = 1,
               weights: torch.Tensor | None = None, desc: str | None = None,
               on_step: Callable[[int, float], None] | None = None) -> tuple[Mapper, dict]:
    """Train h on ([N, D_t] states, or [N, L, D_t] token states with [N, L] weights, and [N, F] features);
    returns the mapper and train/held-out scores (cosine for cosine/infonce, the late score for late).
    `desc`: show progress (utils.progress) under this name; `on_step(step, loss)` after each optimizer step (the tracker of --report_to)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(states), generator=g)
    n_val = max(1, int(round(val_fraction * len(states)))) if len(states) > 1 else 0
    val, tr = perm[:n_val], perm[n_val:]
    torch.manual_seed(seed)
    if objective == "late":
        if feats.shape[1] % regions:
            raise CapalignError(f"features of width {feats.shape[1]} do not split into {regions} regions")
        mapper = Mapper(states.shape[-1], feats.shape[1] // regions, width=width, depth=depth, objective=objective,
                        temperature=temperature, regions=regions)
    else:
        if states.dim() == 3:
            states, weights = masked_mean(states, weights), None
        mapper = Mapper(states.shape[-1], feats.shape[1], width=width, depth=depth, objective=objective, temperature=temperature)
    w_of = (lambda idx: None) if weights is None else (lambda idx: weights[idx])  # noqa: E731
    if center:
        mapper.feature_mean.copy_(feats[tr].mean(0))
    opt = torch.optim.AdamW(mapper.parameters(), lr=lr, weight_decay=weight_decay)
    step = 0
    with progress(disable=desc is None) as bar:
        task = bar.add_task(desc or "", total=epochs * -(-len(tr) // batch_size), rate="")
        for _ in range(epochs):
            order = tr[torch.randperm(len(tr), generator=g)]
            for i in range(0, len(order), batch_size):
                b = order[i : i + batch_size]
                loss = mapper.loss(states[b], feats[b], w_of(b))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                bar.update(task, advance=1, rate=f"loss {loss.item():.3f}")
                if on_step is not None:
                    on_step(step, loss.item())
    mapper.eval()
    with torch.no_grad():
        cos = lambda idx: mapper.similarity(states[idx], feats[idx], w_of(idx)).mean().item() if len(idx) else float("nan")  # noqa: E731
        # baseline: the mean training feature (what a mapper that ignores the caption would predict)
        target = mapper.target(feats)
        mean_feat = target[tr].mean(0, keepdim=True)
        if mapper.objective == "late":  # every token mapped to the mean region: its best region's cosine
            per_region = target.view(len(target), mapper.regions, -1)  # [N, R, D_v]
            mean_feat = per_region[tr].mean((0, 1))
            base = F.cosine_similarity(mean_feat, per_region[val], dim=-1).amax(-1).mean().item() if len(val) else float("nan")
        else:
            base = F.cosine_similarity(mean_feat.expand(len(val), -1), target[val], dim=-1).mean().item() if len(val) else float("nan")
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
    vlm = load_vlm(cfg.model, device=cfg.device, dtype=cfg.dtype, prompt=cfg.prompt, pooling=cfg.pooling, states_layer=cfg.states_layer,
                   text_only=cfg.text_only)
    cache = cfg.cache_dir or str(Path(cfg.out) / "feature-cache")  # under --out unless asked: never beside it
    late = cfg.objective == "late"
    data = collect_features(vlm, cfg.data, cfg.variant, cfg.samples, cache, model_id=str(cfg.model), batch_size=cfg.feature_batch_size,
                            max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, tokens=late)
    r, c = grid_shape(vlm.pooling) or (1, 1)
    tracker = Tracker(cfg.report_to, cfg.out, "mapper", config_dict(cfg))
    mapper, stats = fit_mapper(data["text_states"], data["image_features"], cfg.width, cfg.depth, cfg.epochs, cfg.batch_size,
                               cfg.lr, cfg.weight_decay, cfg.val_fraction, cfg.seed, cfg.center, objective=cfg.objective,
                               temperature=cfg.temperature, regions=r * c if late else 1, weights=data.get("token_weights"),
                               desc=f"mapper {cfg.variant}", on_step=lambda step, loss: tracker.log({"train/loss": loss}, step))
    tracker.close()
    out = Path(cfg.out)
    mapper.save_pretrained(out)
    meta = {"variant": cfg.variant, "model": cfg.model, "pooling": vlm.pooling, "prompt": vlm.prompt, "samples": len(data["ids"]),
            "width": cfg.width, "depth": cfg.depth, "center": cfg.center, "objective": cfg.objective,
            "temperature": cfg.temperature, "regions": mapper.regions, "states_layer": vlm.states_layer,
            "text_only": vlm.text_only, **stats}
    atomic_write_json(out / "mapper_meta.json", meta)
    save_config(cfg, out)
    write_model_card(out, title=f"ViZer mapper ({cfg.variant}) of {cfg.model}", base_model=cfg.model, tags=("vizer", "vizer-mapper"),
                     method=f"The ViZer mapper h: a depth-{cfg.depth}, width-{cfg.width} MLP from the VLM's caption states to its pooled "
                            f"({vlm.pooling}) vision features, trained with the {cfg.objective} objective; variant {cfg.variant} "
                            + ("(human captions)." if cfg.variant == "gt" else "(the model's own greedy captions)."),
                     data=f"{len(data['ids'])} (image, caption) pairs from `{cfg.data}`; {cfg.val_fraction:.0%} held out for the cosine.",
                     config=config_dict(cfg), metrics=stats,
                     usage=f"The frozen reward of `capalign vizer train --model {cfg.model} --mapper THIS_FOLDER --images IMAGES --out ADAPTER`; "
                           "load it in Python with `capalign.vizer.mapper.Mapper.from_pretrained(THIS_FOLDER)` (safetensors + config.json).")
    print0(f"mapper ({cfg.variant}, {cfg.objective}, w={cfg.width}, n={len(data['ids'])}): held-out cos {stats['val_cos']:.4f} "
           f"(train {stats['train_cos']:.4f}; mean-feature baseline {stats['val_cos_mean_feature_baseline']:.4f})")
    if stats["beats_mean_feature_baseline"] is False:
        print0(f"[yellow]warning: the mapper does not beat the mean-feature baseline (held-out cos {stats['val_cos']:.4f} <= "
               f"{stats['val_cos_mean_feature_baseline']:.4f}, the caption-blind prediction): its reward cannot tell captions of one image "
               "from another's; try more --samples, --center or another --pooling (docs/vizer.md). mapper_meta.json: "
               "beats_mean_feature_baseline false")
    if cfg.push_to_hub:
        push_folder(out, cfg.push_to_hub, private=not cfg.hub_public)
    return meta
