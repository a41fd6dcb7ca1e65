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
Run it on GT and G mappers, raw (the paper) and centred (`mapper train --center`). Each mapper scores a
caption by the objective it was trained with (mapper_meta.json / config.json; vizer/mapper.py
`pair_loss`): 1 - cos for cosine and infonce, 1 - the token-to-region score for late interaction.

Any other captioned set (`--corruptions text`, chosen by `auto` when the rows have no shapes-world
`objects`): the image's first reference caption against free-text corruptions of it, each one rule-made
change (data/corrupt.py: a colour word or a noun swapped, a noun phrase dropped, one from another image's
caption added); a caption a rule cannot change is skipped for that rule and counted (`skipped`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import CapalignError
from ..config import arg, save_config, show_config
from ..data.corrupt import TEXT_CORRUPTIONS, corrupt_text, load_words, phrase_pool
from ..data.shapes import CORRUPTIONS, POSITIONS, corrupt, factual_captions, scene_from_objects
from ..data.sources import batched, open_images
from ..io import atomic_write_json
from ..utils import print0, progress


@dataclass
class DiagnoseConfig:
    """Reward-validity diagnostic of ViZer mappers: held-out images, their correct caption against corrupted ones."""

    model: str = arg(help="The VLM the mappers were trained on: hub id or local folder.")
    data: str = arg(help="Held-out images with captions (any image source), e.g. a study's test split; shapes-world rows (`objects`) get exact-scene corruptions.")
    corruptions: str = arg("auto", "shapes: exact-scene errors (rows need shapes-world `objects`); text: rules on the first reference caption "
                                   "(colour, noun, drop, add; any captioned set); auto: shapes if the first row has shapes-world objects, else text.")
    nouns: str = arg(None, "Text corruptions: the nouns to swap and find phrases by, a file (one per line: `singular` or `singular,plural`) or "
                           "comma-separated (circle,square); default: COCO's 80 category names and person words (capalign.data.corrupt).")
    colours: str = arg(None, "Text corruptions: the colour words, a file (one per line) or comma-separated; default: the 11 basic colour terms.")
    mappers: list[str] = arg([], "Mapper folder(s) from `capalign mapper train` (repeat the flag or give several).")
    out: str = arg("", "Write the results to this JSON file.")
    limit: int = arg(None, "Use at most this many images.")
    group: int = arg(100, "Retrieval among groups of this many images (R@1 chance = 1/group).")
    batch_size: int = arg(32, "Images per forward batch.")
    seed: int = arg(0, "Seed for the corruptions.")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N, mps (the model runs in float32).")

    def __post_init__(self):
        if isinstance(self.mappers, str):
            self.mappers = [self.mappers]
        if not self.mappers:
            raise ValueError("give at least one --mappers folder")
        if self.group < 2:
            raise ValueError(f"group must be >= 2, got {self.group}")
        if self.corruptions not in ("auto", "shapes", "text"):
            raise ValueError(f"corruptions must be auto, shapes or text, got {self.corruptions!r}")


def auc(correct: torch.Tensor, wrong: torch.Tensor) -> float:
    """Share of pairs where the correct caption's loss is lower (ties 1/2). [N] x [N] -> float."""
    return ((correct < wrong).float() + 0.5 * (correct == wrong).float()).mean().item()


def shapes_world(objects) -> bool:
    """Are these a row's shapes-world `objects` (each with name, color, size and a left/middle/right position)?"""
    return bool(objects) and isinstance(objects, list) and all(
        isinstance(o, dict) and {"name", "color", "size", "position"} <= set(o) and o["position"] in POSITIONS for o in objects)


def shapes_captions(source, rng: random.Random):
    """The shapes-world pairs of a record: its canonical caption, then one per kind of `shapes.corrupt` that applies."""
    def captions(r) -> list[tuple[str | None, str]]:
        if not r.meta.get("objects"):
            raise CapalignError(f"{source.name}: rows need `objects` (a shapes-world manifest); id {r.id} has none")
        scene = scene_from_objects(r.meta["objects"])
        out = [(None, factual_captions(scene)[0])]
        for kind in CORRUPTIONS:
            bad = corrupt(scene, kind, rng)
            if bad is not None:
                out.append((kind, factual_captions(bad)[0]))
        return out
    return captions


def text_captions(pool, vocab, rng: random.Random, skipped: dict):
    """The free-text pairs of a record: its first reference, then one per rule of data/corrupt.py that finds a change
    (a rule that finds none, or a record without captions, is counted in `skipped`)."""
    def captions(r) -> list[tuple[str | None, str]]:
        if not r.captions:
            skipped["no_caption"] += 1
            return []
        out = [(None, r.captions[0])]
        others = [p for p in pool if p.image != r.id]
        for kind in TEXT_CORRUPTIONS:
            bad = corrupt_text(r.captions[0], kind, rng, references=r.captions, pool=others, vocab=vocab)
            if bad is None:
                skipped[kind] += 1
            else:
                out.append((kind, bad))
        return out
    return captions


def _pad(rows: list) -> tuple[torch.Tensor, torch.Tensor]:
    """[(token states [L_i, D], weights [L_i]), ...] -> ([N, L, D], [N, L]), padded with weight 0."""
    pad = torch.nn.utils.rnn.pad_sequence
    return pad([h for h, _ in rows], batch_first=True), pad([w for _, w in rows], batch_first=True)


@torch.no_grad()
def caption_sets(vlm, source, captions_of, kinds, batch_size: int, examples: list | None = None, tokens: bool = False):
    """Per image: F_I [D_v] and pooled LM states [D_t] of its correct caption and of each corruption;
    `captions_of(record)` -> [(None, correct), (kind, corrupted), ...] ([] = leave the image out).
    Returns (ids, features [N, D_v], correct states [N, D_t], {kind: (image index [M], states [M, D_t])});
    with `tokens`, each states is a pair (token states [N, L, D_t], weights [N, L]) instead."""
    ids, feats, correct, wrong = [], [], [], {k: ([], []) for k in kinds}
    with progress() as bar:
        task = bar.add_task("diagnose", total=source.num_known(), rate="")
        for batch in batched(source, batch_size):
            sets = [captions_of(r) for r in batch]
            recs, sets = [r for r, c in zip(batch, sets) if c], [c for c in sets if c]
            bar.update(task, advance=len(batch) - len(recs))
            if not recs:
                continue
            if examples is not None and len(examples) < 5:
                examples += [{"id": r.id, **{k or "correct": c for k, c in cs}} for r, cs in zip(recs, sets)][:5 - len(examples)]
            enc = vlm.encode([r.image for r in recs])
            rows = [(j, kind, c) for j, cs in enumerate(sets) for kind, c in cs]  # (image index in batch, kind or None, caption)
            sel, caps = vlm.select(enc, [j for j, _, _ in rows]), vlm.tokenize_captions([c for _, _, c in rows])
            if tokens:
                h, w = vlm.caption_token_states(sel, caps)
                states = [(x[m > 0], m[m > 0]) for x, m in zip(h.float().cpu(), w.float().cpu())]  # each caption's own tokens
            else:
                states = vlm.caption_states(sel, caps).float().cpu()
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
    if not ids:
        raise CapalignError(f"{source.name}: no image to diagnose" + (" (no readable image)" if source.skipped else ""))
    stack = _pad if tokens else torch.stack
    wrong = {k: (torch.tensor(i, dtype=torch.long), stack(s)) for k, (i, s) in wrong.items() if i}
    if not wrong:
        raise CapalignError(f"{source.name}: no caption could be corrupted by any of {', '.join(kinds)}; nothing to compare")
    return ids, torch.cat(feats), stack(correct), wrong


@torch.no_grad()
def score_mapper(mapper, feats: torch.Tensor, correct: torch.Tensor, wrong: dict, group: int) -> dict:
    """AUC per corruption kind (and over all pairs) and caption-to-image R@1 for one mapper, each caption scored by
    the mapper's `pair_loss` against its image. States: [N, D_t] pooled, or pairs (token states [N, L, D_t], weights)."""
    split = lambda s: s if isinstance(s, tuple) else (s, None)  # noqa: E731
    loss = lambda idx, states: mapper.pair_loss(split(states)[0], feats[idx], split(states)[1])  # noqa: E731
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
    states, weights = split(correct)
    hits, n = 0, 0
    for s in range(0, len(feats) - group + 1, group):  # whole groups only, so chance is exactly 1/group
        w = None if weights is None else weights[s : s + group]
        sim = mapper.similarity_matrix(states[s : s + group], feats[s : s + group], w)  # [G, G]: caption i against image j
        hits += (sim.argmax(1) == torch.arange(group)).sum().item()
        n += group
    res["retrieval_r1"] = hits / n if n else None
    res["retrieval_images"], res["retrieval_chance"] = n, 1 / group
    return res


def run(cfg: DiagnoseConfig) -> dict:
    import json

    from ..models import load_vlm
    from .mapper import Mapper, vlm_settings

    show_config(cfg)
    metas = []
    for m in cfg.mappers:
        meta = Path(m) / "mapper_meta.json"
        if not meta.is_file():
            raise CapalignError(f"not a mapper folder (no mapper_meta.json): {m}; train one with `capalign mapper train`")
        metas.append(json.loads(meta.read_text()))
    source = open_images(cfg.data, limit=cfg.limit)
    mode = cfg.corruptions
    if mode == "auto":
        first = next(iter(source.entries()), None)
        mode = "shapes" if first is not None and shapes_world(first.meta.get("objects")) else "text"
    if mode == "text":
        vocab = load_words(cfg.nouns, cfg.colours)
        rows = [(e.id, e.captions[0]) for e in source.entries() if e.captions]  # captions only: no image is decoded
        if not rows:
            raise CapalignError(f"{cfg.data}: no image has a caption; the text corruptions change each image's first reference caption")
        pool = phrase_pool(rows, vocab)

    def corruptions():  # the same seed each time: every group of mappers sees the same captions
        rng = random.Random(cfg.seed)
        if mode == "shapes":
            return CORRUPTIONS, shapes_captions(source, rng), {}
        skipped = {k: 0 for k in (*TEXT_CORRUPTIONS, "no_caption")}
        return TEXT_CORRUPTIONS, text_captions(pool, vocab, rng, skipped), skipped

    kinds = corruptions()[0]
    print0(f"diagnose: {mode} corruptions ({', '.join(kinds)})")
    groups: dict = {}  # mappers trained with other model settings (pooling, prompt, states) see other features and states: one pass each
    for path, meta in zip(cfg.mappers, metas):
        groups.setdefault(tuple(vlm_settings(meta).items()), []).append((path, meta))
    results, examples = {}, []
    for key, members in groups.items():
        settings = dict(key)
        pooling = settings["pooling"]
        kinds, captions_of, skipped = corruptions()
        vlm = load_vlm(cfg.model, device=cfg.device, dtype="float32", **settings)
        mappers = {path: Mapper.from_pretrained(path).eval() for path, _ in members}
        tokens = any(m.objective == "late" for m in mappers.values())  # late interaction needs each token's state
        ids, feats, correct, wrong = caption_sets(vlm, source, captions_of, kinds, cfg.batch_size, examples if not results else None, tokens=tokens)
        d_t = (correct[0] if tokens else correct).shape[-1]
        for path, meta in members:
            mapper = mappers[path]
            if mapper.in_dim != d_t or mapper.feature_dim != feats.shape[1]:
                raise CapalignError(f"mapper {path} maps {mapper.in_dim}->{mapper.feature_dim}, but {cfg.model} has "
                                    f"D_t={d_t}, features of {feats.shape[1]} ({pooling} pooling); it was trained on another model")
            r = score_mapper(mapper, feats, correct, wrong, cfg.group)
            results[path] = {"variant": meta["variant"], "center": bool(meta.get("center")), "objective": mapper.objective,
                             "pooling": pooling, "states_layer": settings["states_layer"], "text_only": settings["text_only"], **r}
            print0(f"{path} ({meta['variant']}, {mapper.objective}, {pooling}, {'centred' if meta.get('center') else 'raw'}): AUC "
                   + " ".join(f"{k} {v:.3f}" for k, v in r["auc"].items()) + f" | R@1 {r['retrieval_r1']} (chance {r['retrieval_chance']:.3f})")
    results = {p: results[p] for p in cfg.mappers}  # in the order given
    out = {"images": len(ids), "group": cfg.group, "mode": mode, "corruptions": list(kinds), "mappers": results, "examples": examples}
    if mode == "text":
        out.update(skipped=skipped, words=vocab.source)
        print0("skipped (nothing the rule could change): " + ", ".join(f"{k} {v}" for k, v in skipped.items()))
    if cfg.out:
        atomic_write_json(cfg.out, out)
        save_config(cfg, cfg.out + ".config.json")
    return out
