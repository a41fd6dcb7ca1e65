"""`capalign vizer diagnose`: does a ViZer mapper's reward prefer grounded captions?

ViZer can only improve grounding if its reward, `1 - cos(F_I - c, h(f(caption)))`, is lower for a
correct description of the image than for a wrong one. On held-out shapes-world images (exact scenes)
this scores each image's correct canonical caption and corrupted versions of it, each with exactly one
error (data/shapes.py `corrupt`: one colour, shape, size or position changed, one object dropped, one
invented), all conditioned on the same image, as ViZer's training forward is. Per mapper it reports:
- AUC per corruption kind: the share of (correct, corrupted) pairs of the same image where the correct
  caption has the lower loss (ties count one half); 0.5 = the reward cannot tell them apart;
- caption-to-image retrieval R@1 among groups of `group` images (default 100, chance 1/group): the
  mapped state of an image's correct caption is compared with the features of every image of its group
  (the states come from the caption's forward conditioned on its own image, as in training).
Run it on GT and G mappers, raw (the paper) and centred (`mapper train --center`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import CapalignError
from ..config import arg, save_config, show_config
from ..data.shapes import CORRUPTIONS, corrupt, factual_captions, scene_from_objects
from ..data.sources import batched, open_images
from ..io import atomic_write_json
from ..utils import print0, progress


@dataclass
class DiagnoseConfig:
    """Reward-validity diagnostic of ViZer mappers on held-out shapes-world images."""

    model: str = arg(help="The VLM the mappers were trained on: hub id or local folder.")
    data: str = arg(help="Held-out shapes-world dataset (manifest rows with `objects`), e.g. the study's shapes-test.")
    mappers: list[str] = arg([], "Mapper folder(s) from `capalign mapper train` (repeat the flag or give several).")
    out: str = arg("", "Write the results to this JSON file.")
    limit: int = arg(None, "Use at most this many images.")
    group: int = arg(100, "Retrieval among groups of this many images (R@1 chance = 1/group).")
    batch_size: int = arg(32, "Images per forward batch.")
    seed: int = arg(0, "Seed for the corruptions.")
    device: str = arg("cpu", "Device.")

    def __post_init__(self):
        if isinstance(self.mappers, str):
            self.mappers = [self.mappers]
        if not self.mappers:
            raise ValueError("give at least one --mappers folder")
        if self.group < 2:
            raise ValueError(f"group must be >= 2, got {self.group}")


def auc(correct: torch.Tensor, wrong: torch.Tensor) -> float:
    """Share of pairs where the correct caption's loss is lower (ties 1/2). [N] x [N] -> float."""
    return ((correct < wrong).float() + 0.5 * (correct == wrong).float()).mean().item()


@torch.no_grad()
def caption_sets(vlm, source, seed: int, batch_size: int):
    """Per image: F_I [D_v] and pooled LM states [D_t] of its correct caption and of each corruption.
    Returns (ids, features [N, D_v], correct states [N, D_t], {kind: (image index [M], states [M, D_t])})."""
    rng = random.Random(seed)
    ids, feats, correct, wrong = [], [], [], {k: ([], []) for k in CORRUPTIONS}
    with progress() as bar:
        task = bar.add_task("diagnose", total=source.num_known(), rate="")
        for recs in batched(source, batch_size):
            if any(not r.meta.get("objects") for r in recs):
                raise CapalignError(f"{source.name}: rows need `objects` (a shapes-world manifest); id {next(r.id for r in recs if not r.meta.get('objects'))} has none")
            enc = vlm.encode([r.image for r in recs])
            rows = []  # (image index in batch, kind or None, caption)
            for j, r in enumerate(recs):
                scene = scene_from_objects(r.meta["objects"])
                rows.append((j, None, factual_captions(scene)[0]))
                for kind in CORRUPTIONS:
                    bad = corrupt(scene, kind, rng)
                    if bad is not None:
                        rows.append((j, kind, factual_captions(bad)[0]))
            states = vlm.caption_states(vlm.select(enc, [j for j, _, _ in rows]), vlm.tokenize_captions([c for _, _, c in rows])).float().cpu()
            base = len(ids)
            for (j, kind, _), s in zip(rows, states):
                if kind is None:
                    correct.append(s)
                else:
                    wrong[kind][0].append(base + j)
                    wrong[kind][1].append(s)
            ids += [r.id for r in recs]
            feats.append(enc.features.float().cpu())
            bar.update(task, advance=len(recs))
    wrong = {k: (torch.tensor(i, dtype=torch.long), torch.stack(s)) for k, (i, s) in wrong.items() if i}
    return ids, torch.cat(feats), torch.stack(correct), wrong


@torch.no_grad()
def score_mapper(mapper, feats: torch.Tensor, correct: torch.Tensor, wrong: dict, group: int) -> dict:
    """AUC per corruption kind (and over all pairs) and caption-to-image R@1 for one mapper."""
    target = mapper.target(feats)  # [N, D_v]: F_I - c
    loss = lambda idx, states: 1 - F.cosine_similarity(mapper(states), target[idx], dim=-1)  # noqa: E731
    good = loss(torch.arange(len(feats)), correct)  # [N]
    res, all_good, all_bad = {"auc": {}, "pairs": {}}, [], []
    for kind, (idx, states) in wrong.items():
        bad = loss(idx, states)
        res["auc"][kind], res["pairs"][kind] = auc(good[idx], bad), len(idx)
        all_good.append(good[idx])
        all_bad.append(bad)
    res["auc"]["all"] = auc(torch.cat(all_good), torch.cat(all_bad))
    res["pairs"]["all"] = sum(res["pairs"].values())
    # retrieval: each correct caption against the images of its group
    mapped = F.normalize(mapper(correct), dim=-1)
    tgt = F.normalize(target, dim=-1)
    hits, n = 0, 0
    for s in range(0, len(feats) - group + 1, group):  # whole groups only, so chance is exactly 1/group
        sim = mapped[s : s + group] @ tgt[s : s + group].T  # [G, G]
        hits += (sim.argmax(1) == torch.arange(group)).sum().item()
        n += group
    res["retrieval_r1"] = hits / n if n else None
    res["retrieval_images"], res["retrieval_chance"] = n, 1 / group
    return res


def run(cfg: DiagnoseConfig) -> dict:
    import json

    from ..models import load_vlm
    from .mapper import Mapper

    show_config(cfg)
    metas = []
    for m in cfg.mappers:
        meta = Path(m) / "mapper_meta.json"
        if not meta.is_file():
            raise CapalignError(f"not a mapper folder (no mapper_meta.json): {m}; train one with `capalign mapper train`")
        metas.append(json.loads(meta.read_text()))
    keys = {(m["pooling"], m.get("prompt")) for m in metas}
    if len(keys) > 1:
        raise CapalignError(f"the mappers were trained with different pooling/prompt settings {sorted(keys, key=str)}; diagnose them separately")
    pooling, prompt = keys.pop()
    vlm = load_vlm(cfg.model, device=cfg.device, dtype="float32", prompt=prompt or "", pooling=pooling)
    source = open_images(cfg.data, limit=cfg.limit)
    ids, feats, correct, wrong = caption_sets(vlm, source, cfg.seed, cfg.batch_size)
    results = {}
    for path, meta in zip(cfg.mappers, metas):
        mapper = Mapper.from_pretrained(path).eval()
        if mapper.net[0].in_features != correct.shape[1] or mapper.net[-1].out_features != feats.shape[1]:
            raise CapalignError(f"mapper {path} maps {mapper.net[0].in_features}->{mapper.net[-1].out_features}, but {cfg.model} has "
                                f"D_t={correct.shape[1]}, D_v={feats.shape[1]}; it was trained on another model")
        r = score_mapper(mapper, feats, correct, wrong, cfg.group)
        results[path] = {"variant": meta["variant"], "center": bool(meta.get("center")), **r}
        print0(f"{path} ({meta['variant']}, {'centred' if meta.get('center') else 'raw'}): AUC "
               + " ".join(f"{k} {v:.3f}" for k, v in r["auc"].items()) + f" | R@1 {r['retrieval_r1']} (chance {r['retrieval_chance']:.3f})")
    out = {"images": len(ids), "group": cfg.group, "corruptions": list(CORRUPTIONS), "mappers": results}
    if cfg.out:
        atomic_write_json(cfg.out, out)
        save_config(cfg, cfg.out + ".config.json")
    return out
