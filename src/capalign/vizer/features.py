"""Frozen-model features for the mapper, computed once and cached on disk.

For each image: the pooled vision-encoder feature F_I [D_v] and the pooled last hidden state of the
language model over one caption [D_t] (variant gt: a human caption from the data; variant g: the
model's own greedy caption); with `tokens`, the state at each caption token instead [N, L, D_t] and the
weights that pool them [N, L] (late-interaction mappers). The cache key covers everything that changes the numbers (model,
adapter, prompt, pooling, variant, data, sample count, seed, generation length), so sweeps over mapper
widths and sizes reuse one pass of the VLM: a smaller sample count reads a prefix of a larger cache.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import CapalignError, __version__
from ..data.sources import batched, open_images
from ..io import atomic_write_json
from ..utils import print0, progress


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps({"v": __version__, **parts}, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _find_cached(cache_dir: Path, parts: dict, samples: int) -> Path | None:
    """A cache with the same settings and at least `samples` rows (a prefix of it is the same data), or
    one that already holds all of the data (the source ran out before its requested sample count)."""
    for meta in sorted(cache_dir.glob("features-*.json")):
        m = json.loads(meta.read_text())
        enough = m.get("rows", 0) >= samples or (m.get("complete") and samples >= m.get("entries", float("inf")))
        if m.get("parts") == parts and enough and meta.with_suffix(".safetensors").exists():
            return meta.with_suffix(".safetensors")
    return None


@torch.no_grad()
def collect_features(vlm, data: str, variant: str, samples: int, cache_dir: str | Path, model_id: str, batch_size: int = 32,
                     max_new_tokens: int = 32, seed: int = 0, tokens: bool = False) -> dict:
    """Return {"ids", "captions", "image_features" [N, D_v], "text_states" [N, D_t]} (tokens: text_states
    [N, L, D_t] and "token_weights" [N, L]), from cache if possible."""
    if variant not in ("gt", "g"):
        raise CapalignError(f"variant must be gt (human captions) or g (the model's own captions), got {variant!r}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    parts = dict(model=model_id, prompt=vlm.prompt, pooling=vlm.pooling, variant=variant, data=str(data), seed=seed,
                 max_new_tokens=max_new_tokens if variant == "g" else None)
    if tokens:  # only then: the caches of pooled states keep their keys
        parts["tokens"] = True
    if vlm.states_layer != -1:  # likewise: the last layer's caches keep theirs
        parts["states_layer"] = vlm.states_layer
    if vlm.text_only:
        parts["text_only"] = True
    hit = _find_cached(cache_dir, parts, samples)
    if hit is not None:
        meta = json.loads(hit.with_suffix(".json").read_text())
        t = load_file(hit)
        print0(f"features: {samples} rows from cache {hit.name}")
        return {"ids": meta["ids"][:samples], "captions": meta["captions"][:samples],
                **{k: v[:samples] for k, v in t.items()}}

    source = open_images(data, limit=samples, default_split="train")  # a Karpathy file or HF dataset: its train split
    rng = random.Random(seed)
    ids, captions, feats, states, weights, no_caption, seen = [], [], [], [], [], 0, 0
    vlm.model.eval()
    with progress() as bar:
        task = bar.add_task(f"features ({variant})", total=source.num_known(), rate="")
        for recs in batched(source, batch_size):
            seen += len(recs)
            if variant == "gt":
                no_caption += sum(1 for r in recs if not r.captions)
                recs = [r for r in recs if r.captions]
                if not recs:
                    continue
            enc = vlm.encode([r.image for r in recs])
            if variant == "gt":
                caps = vlm.tokenize_captions([rng.choice(r.captions) for r in recs])
            else:
                caps = vlm.generate(enc, max_new_tokens=max_new_tokens)
            if tokens:
                h, w = vlm.caption_token_states(enc, caps)
                states += list(h.float().cpu())
                weights += list(w.float().cpu())
            else:
                states.append(vlm.caption_states(enc, caps).float().cpu())
            feats.append(enc.features.float().cpu())
            ids += [r.id for r in recs]
            captions += caps.texts
            bar.update(task, advance=len(recs))
    if not ids:
        raise CapalignError(f"no usable (image, caption) pairs in {data}" + (" (variant gt needs captions)" if variant == "gt" else ""))
    if source.skipped or no_caption > 0:
        print0(f"features: skipped {len(source.skipped)} unreadable images" + (f", {no_caption} images without captions" if no_caption > 0 else ""))
    out = {"ids": ids, "captions": captions, "image_features": torch.cat(feats)}
    if tokens:  # batches differ in caption length: pad to the longest (weight 0)
        out["text_states"] = torch.nn.utils.rnn.pad_sequence(states, batch_first=True)
        out["token_weights"] = torch.nn.utils.rnn.pad_sequence(weights, batch_first=True)
    else:
        out["text_states"] = torch.cat(states)
    key = cache_key(**parts, rows=len(ids))
    path = cache_dir / f"features-{key}.safetensors"
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in out.items() if isinstance(v, torch.Tensor)}, str(tmp))
    tmp.replace(path)
    entries = seen + len(source.skipped)
    complete = entries < samples  # the data ran out: any sample count >= entries reads exactly this data
    atomic_write_json(path.with_suffix(".json"), {"parts": parts, "rows": len(ids), "entries": entries, "complete": complete,
                                                  "ids": ids, "captions": captions,
                                                  "skipped": source.skipped})
    return out
