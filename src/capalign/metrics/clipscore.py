"""CLIPScore (Hessel et al. 2021) and the raw image-caption cosine, with any CLIP or SigLIP model.

Per sample, with L2-normalised embeddings from `get_image_features` / `get_text_features`:
- cos        = cos(image, text(caption)): no prefix, no clamp, no scaling. This is what the ViZer
               paper's tables call CLIPS (~0.25-0.30 for CLIP ViT-B/32); the paper does not say whether
               it adds a prompt, we use none.
- clip_s     = 2.5 * max(cos(image, text("A photo depicts " + caption)), 0)  (CLIP-S, paper and
               jmhessel/clipscore).
- ref_s      = max_j cos(text("A photo depicts " + caption), text("A photo depicts " + ref_j)): the
               reference implementation embeds candidates and references with the same prefix and takes
               the max without the 2.5 factor.
- refclip_s  = 2 * clip_s * r / (clip_s + r) with r = max(ref_s, 0) (RefCLIP-S: harmonic mean; the
               clamp at 0 is the paper's formula, the reference code does not clamp; 0 when both are 0).
Texts longer than the text encoder's maximum are truncated (as clip.tokenize(truncate=True)); they are
counted in the output and in a warning. SigLIP models get padding="max_length" (as they were trained).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np

from .. import CapalignError

PREFIX = "A photo depicts "
W = 2.5


def definitions(prefix: str = PREFIX) -> dict[str, str]:
    return {
        "cos": "cos(image, text(caption)), no prefix, no clamp, no scaling (the ViZer paper's CLIPS)",
        "clip_s": f"{W}*max(cos(image, text({prefix!r} + caption)), 0) (CLIP-S, Hessel et al. 2021)",
        "ref_s": f"max over references of cos(text({prefix!r} + caption), text({prefix!r} + reference)) (jmhessel/clipscore)",
        "refclip_s": "harmonic mean 2*clip_s*r/(clip_s+r), r = max(ref_s, 0) (RefCLIP-S, Hessel et al. 2021)",
    }


@functools.lru_cache(maxsize=2)
def _load(model: str, device: str):
    from transformers import AutoModel, AutoProcessor

    try:
        proc = AutoProcessor.from_pretrained(model)
        net = AutoModel.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise CapalignError(f"cannot load CLIPScore model {model!r} ({' '.join(str(e).split())[:160]}); "
                            "pass a local folder with --clip_model") from None
    if not (hasattr(net, "get_text_features") and hasattr(net, "get_image_features")):
        raise CapalignError(f"model {model!r} is not a CLIP/SigLIP-style model (no get_text_features/get_image_features); check --clip_model")
    net.eval().to(device)
    return proc, net, {}  # {}: image-feature cache (path -> vector) for repeated evaluations


def _features(out) -> "torch.Tensor":  # noqa: F821
    import torch

    if isinstance(out, torch.Tensor):
        return out
    for k in ("pooler_output", "text_embeds", "image_embeds"):
        v = getattr(out, k, None)
        if v is not None:
            return v
    return out[0]


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _text_limits(proc, net) -> tuple[int, bool]:
    tc = getattr(net.config, "text_config", net.config)
    limit = getattr(tc, "max_position_embeddings", None) or 77
    tok = proc.tokenizer
    if getattr(tok, "model_max_length", None) and tok.model_max_length < 10**6:
        limit = min(limit, tok.model_max_length)
    siglip = "siglip" in getattr(net.config, "model_type", "")
    return int(limit), siglip


def text_features(texts: list[str], proc, net, device: str, batch_size: int = 64) -> tuple[np.ndarray, list[bool]]:
    """Normalised text embeddings (float64) and, per text, whether it was truncated."""
    import torch

    limit, siglip = _text_limits(proc, net)
    tok = proc.tokenizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(getattr(tok, "deprecation_warnings", None), dict):  # silence the "longer than max length" log: we count them
            tok.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
        lengths = [len(x) for x in tok(list(texts), truncation=False)["input_ids"]] if texts else []
    truncated = [n > limit for n in lengths]
    uniq = list(dict.fromkeys(texts))
    order = sorted(range(len(uniq)), key=lambda i: -len(uniq[i]))
    feats: dict[str, np.ndarray] = {}
    pad = {"padding": "max_length"} if siglip else {"padding": True}
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            chunk = [uniq[i] for i in order[b:b + batch_size]]
            enc = tok(chunk, truncation=True, max_length=limit, return_tensors="pt", **pad)
            kw = {"input_ids": enc["input_ids"].to(device)}
            if "attention_mask" in enc and not siglip:  # SigLIP's text tower is used without a mask
                kw["attention_mask"] = enc["attention_mask"].to(device)
            f = _normalize(_features(net.get_text_features(**kw)).float().cpu().numpy())
            feats.update(zip(chunk, f))
    dim = next(iter(feats.values())).shape[-1] if feats else 0
    return (np.stack([feats[t] for t in texts]) if texts else np.zeros((0, dim))), truncated


def image_features(images: list, proc, net, device: str, batch_size: int = 64, cache: dict | None = None,
                   bar=None, task=None, keys: list | None = None) -> tuple[np.ndarray | None, list[str | None]]:
    """Normalised image embeddings; images are PIL images, paths, bytes or callables returning one of those.
    `keys` (default: the path) name images in `cache`. Returns (features or None rows, errors)."""
    import torch

    from ..data.images import BadImage, load_image

    out: list = [None] * len(images)
    errors: list[str | None] = [None] * len(images)
    todo = []
    for i, im in enumerate(images):
        key = keys[i] if keys is not None else str(im) if isinstance(im, (str, Path)) else None
        if im is None:
            errors[i] = "no image"
        elif cache is not None and key in cache:
            out[i] = cache[key]
        else:
            todo.append(i)
    with torch.inference_mode():
        for b in range(0, len(todo), batch_size):
            chunk, pics = [], []
            for i in todo[b:b + batch_size]:
                try:
                    src = images[i]() if callable(images[i]) else images[i]
                    pics.append(load_image(src))
                    chunk.append(i)
                except BadImage as e:
                    errors[i] = str(e)
            if pics:
                px = proc.image_processor(images=pics, return_tensors="pt")["pixel_values"].to(device)
                f = _normalize(_features(net.get_image_features(pixel_values=px)).float().cpu().numpy())
                for i, v in zip(chunk, f):
                    out[i] = v
                    key = keys[i] if keys is not None else str(images[i]) if isinstance(images[i], (str, Path)) else None
                    if cache is not None and key is not None:
                        cache[key] = v
            if bar is not None:
                bar.update(task, advance=len(todo[b:b + batch_size]))
    return out, errors


def clip_score(images: list, cands: list[str], refs: list[list[str]] | None = None, model: str = "openai/clip-vit-base-patch32",
               batch_size: int = 64, device: str | None = None, prefix: str = PREFIX, show_progress: bool | None = None,
               cache_keys: list | None = None) -> dict:
    """CLIP-S, RefCLIP-S (when refs are given) and the raw cosine per sample, plus their means.

    images[i] (PIL image, path, bytes or a callable returning one; None = missing) goes with cands[i];
    cache_keys[i] (optional) names it in the in-process image-feature cache (paths are their own key).
    Samples whose image is missing or unreadable get None and are left out of the means (counted in "missing_images").
    """
    from ..devices import resolve_device
    from ..utils import progress

    if len(images) != len(cands):
        raise ValueError(f"{len(images)} images but {len(cands)} captions")
    if refs is not None:
        if len(refs) != len(cands):
            raise ValueError(f"{len(refs)} reference lists but {len(cands)} captions")
        refs = [[r] if isinstance(r, str) else list(r) for r in refs]
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if prefix and not prefix.endswith(" "):
        prefix += " "  # as jmhessel/clipscore
    dev = resolve_device(device or "auto")
    proc, net, cache = _load(model, dev)
    cands = [c if isinstance(c, str) else "" for c in cands]
    show = len(images) > 500 if show_progress is None else show_progress
    with progress(disable=not show) as bar:
        task = bar.add_task("clipscore images", total=len(images), rate="")
        img, errors = image_features(images, proc, net, dev, batch_size, cache, bar, task, cache_keys)
    ok = [i for i, v in enumerate(img) if v is not None]
    raw, trunc_raw = text_features(cands, proc, net, dev, batch_size)
    pre, trunc_pre = text_features([prefix + c for c in cands], proc, net, dev, batch_size)
    n = len(cands)
    cos = [None] * n
    cos_p = [None] * n
    if ok:
        I = np.stack([img[i] for i in ok])
        for j, i in enumerate(ok):
            cos[i] = float(I[j] @ raw[i])
            cos_p[i] = float(I[j] @ pre[i])
    clip_s = [None if c is None else W * max(c, 0.0) for c in cos_p]
    limit, _ = _text_limits(proc, net)
    res = {"cos": cos, "clip_s": clip_s, "cos_prefixed": cos_p}
    trunc = {"captions": sum(trunc_raw), "captions_with_prefix": sum(trunc_pre)}
    if refs is not None:
        flat = [prefix + r for g in refs for r in g]
        R, trunc_ref = text_features(flat, proc, net, dev, batch_size)
        trunc["references"] = sum(trunc_ref)
        ref_s, refclip = [], []
        start = 0
        for i, g in enumerate(refs):
            sims = R[start:start + len(g)] @ pre[i] if g else np.zeros(0)
            start += len(g)
            r = float(sims.max()) if len(sims) else None
            ref_s.append(r)
            if clip_s[i] is None or r is None:
                refclip.append(None)
            else:
                rr = max(r, 0.0)
                refclip.append(2 * clip_s[i] * rr / (clip_s[i] + rr) if clip_s[i] + rr > 0 else 0.0)
        res.update(ref_s=ref_s, refclip_s=refclip)
    n_trunc = max(trunc.values())
    if n_trunc:
        warnings.warn(f"CLIPScore: texts longer than {limit} tokens were truncated: {trunc}", stacklevel=2)
    for k in list(res):
        vals = [v for v in res[k] if v is not None]
        res[f"{k}_mean"] = float(np.mean(vals)) if vals else None
    missing = [i for i, e in enumerate(errors) if e is not None]
    return {**res, "definitions": definitions(prefix), "truncated": trunc, "max_text_tokens": limit,
            "missing_images": len(missing), "image_errors": {i: errors[i] for i in missing[:20]},
            "scored": len(ok), "model": model}
