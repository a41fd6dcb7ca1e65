"""Measures of stylistic alignment: WR-LogP, style accuracy, content kept (definitions: docs/style-measures.md).

- WR-LogP (log-probability win rate) on held-out pairs: the share of pairs where the model's
  length-normalised log-probability of the chosen (stylised) caption, given image and prompt,
  exceeds that of the rejected (factual) one: mean over caption tokens, end token included, of
  log p(token | image, prompt, previous tokens); `wr_logp_sum` uses the sum instead of the mean.
  Ties count as losses. One vision pass per distinct image (`VLM.encode`), reused for both captions
  (`VLM.select`), one language-model forward per caption.
- Style accuracy: the share of generated captions a style classifier labels with the target style,
  reported with the classifier's own held-out accuracy and confusion matrix.
- Content kept: grounding against the annotated objects (shapes world) and BERTScore against the
  factual captions, through `capalign.metrics` (never a second implementation).
"""

from __future__ import annotations

import torch

from .. import CapalignError
from ..data.pairs import FACTUAL, Pair


@torch.no_grad()
def wr_logp(vlm, pairs: list[Pair], batch_size: int = 8, max_side: int = 2048, on_batch=None) -> dict:
    """WR-LogP (mean and summed) of `vlm` on `pairs`; pairs whose image cannot be loaded are skipped and listed."""
    if not pairs:
        raise CapalignError("WR-LogP needs at least one pair")
    if batch_size < 1:
        raise CapalignError(f"batch_size must be >= 1, got {batch_size}")
    was_training = vlm.model.training
    vlm.model.eval()
    rows: dict[str, dict] = {}
    skipped: list[tuple[str, str]] = []
    by_prompt: dict = {}
    for p in pairs:
        by_prompt.setdefault(p.prompt, []).append(p)  # encode() takes one prompt per batch
    for prompt, group in by_prompt.items():
        for i in range(0, len(group), batch_size):
            batch = group[i : i + batch_size]
            images, index, keys, kept = [], [], {}, []
            for p in batch:
                if p.group not in keys:  # one vision pass per distinct image in the batch
                    try:
                        img = p.load_image(max_side)
                    except CapalignError as e:
                        skipped.append((p.id, str(e)))
                        continue
                    keys[p.group] = len(images)
                    images.append(img)
                index.append(keys[p.group])
                kept.append(p)
            if not kept:
                continue
            enc = vlm.encode(images, prompt)  # [U] distinct images
            enc2 = vlm.select(enc, [u for u in index for _ in range(2)])  # [2B]: chosen, rejected per pair
            caps = vlm.tokenize_captions([c for p in kept for c in (p.chosen, p.rejected)])
            total = vlm.caption_logprobs(enc2, caps, normalize=False).float().cpu()  # [2B] summed log p
            n_tok = caps.mask.sum(1).cpu()  # [2B] caption tokens incl. the end token
            for j, p in enumerate(kept):
                cs, rs, cn, rn = float(total[2 * j]), float(total[2 * j + 1]), int(n_tok[2 * j]), int(n_tok[2 * j + 1])
                rows[p.id] = {"id": p.id, "chosen_sum": cs, "rejected_sum": rs, "chosen_tokens": cn, "rejected_tokens": rn,
                              "chosen_mean": cs / cn, "rejected_mean": rs / rn}
            if on_batch is not None:
                on_batch(len(batch))
    vlm.model.train(was_training)
    per = [rows[p.id] for p in pairs if p.id in rows]
    if not per:
        raise CapalignError(f"WR-LogP: no pair could be scored; all {len(skipped)} images failed (e.g. {skipped[0][0]}: {skipped[0][1]})")
    n = len(per)
    return {"wr_logp": sum(r["chosen_mean"] > r["rejected_mean"] for r in per) / n,
            "wr_logp_sum": sum(r["chosen_sum"] > r["rejected_sum"] for r in per) / n,
            "margin_mean": sum(r["chosen_mean"] - r["rejected_mean"] for r in per) / n,
            "n": n, "skipped": skipped, "per_pair": per}


def classifier_data(pairs: list[Pair]) -> tuple[list[str], list[str]]:
    """(texts, labels): each pair's chosen caption labelled with its style, its rejected one 'factual';
    duplicates (same text and label) kept once."""
    seen: dict[tuple[str, str], None] = {}
    for p in pairs:
        seen.setdefault((p.chosen, p.style), None)
        seen.setdefault((p.rejected, FACTUAL), None)
    return [t for t, _ in seen], [l for _, l in seen]


def style_accuracy(captions: list[str], style: str, classifier, device: str = "cpu") -> dict:
    """Share of `captions` labelled `style`; empty captions count as misses. The classifier's held-out
    accuracy and confusion matrix travel with the result."""
    classifier.require(style)
    nonempty = [i for i, c in enumerate(captions) if c and c.strip()]
    pred: list[str | None] = [None] * len(captions)
    for i, lab in zip(nonempty, classifier.predict([captions[i] for i in nonempty], device)):
        pred[i] = lab
    counts = {l: sum(p == l for p in pred) for l in classifier.labels}
    h = classifier.heldout or {}
    return {"style_accuracy": sum(p == style for p in pred) / len(captions) if captions else 0.0, "style": style,
            "n": len(captions), "empty": len(captions) - len(nonempty), "predicted": counts, "per_caption": pred,
            "classifier": {"path": classifier.path, "labels": classifier.labels, "heldout_accuracy": h.get("accuracy"),
                           "heldout_confusion": h.get("confusion"), "heldout_n": h.get("n"), "heldout_data": h.get("data")}}


def distinct_frames(captions: list[str]) -> float:
    """Shapes world: distinct style frames (`shapes_style.caption_frame`) per caption, empty captions adding none.
    A model that tells every image the same joke scores 1/n; the test split's own styled captions ~0.95."""
    from ..data.shapes_style import caption_frame

    return len({caption_frame(c) for c in captions if c and c.strip()}) / len(captions) if captions else 0.0


def content_kept(captions: list[str], pairs: list[Pair], bertscore_model: str | None = None, num_layers: int | None = None,
                 device: str = "cpu") -> dict:
    """Grounding (pairs with objects) and, if `bertscore_model` is given, BERTScore F1 against the pairs'
    factual references; captions[i] belongs to pairs[i]."""
    if len(captions) != len(pairs):
        raise CapalignError(f"{len(captions)} captions for {len(pairs)} pairs")
    out: dict = {"n": len(captions)}
    have = [i for i, p in enumerate(pairs) if p.objects]
    if have:
        from .grounding import grounding

        g = grounding([captions[i] for i in have], [pairs[i].objects for i in have])
        out["grounding"] = {"n": len(have), "name": g["name"], "attr": g["attr"]}
        if len(have) == len(pairs):  # per-caption rows line up with captions
            out["grounding"]["per_caption"] = g["per_caption"]
    if bertscore_model:
        from .bertscore import bert_score

        kw = {"num_layers": num_layers} if num_layers is not None else {}
        b = bert_score(captions, [p.references or [p.rejected] for p in pairs], model=bertscore_model, device=device, **kw)
        out["bertscore_f1"] = b["F_mean"]
        out["bertscore_per_caption"] = b["F"]
    return out


# ---- `capalign evaluate --metrics style` -----------------------------------------------------------
_CLASSIFIERS: dict = {}


def _classifier(cfg):
    if cfg is None or not getattr(cfg, "style", "") or not getattr(cfg, "style_classifier", ""):
        raise CapalignError("the style metric needs --style (e.g. humorous) and --style_classifier (a folder from `capalign style classifier --out`)")
    if cfg.style_classifier not in _CLASSIFIERS:
        from ..utils import print0
        from .style_classifier import load_classifier

        clf = load_classifier(cfg.style_classifier)
        clf.require(cfg.style)
        _CLASSIFIERS[cfg.style_classifier] = clf
        h = clf.heldout or {}
        print0(f"style classifier {cfg.style_classifier}: labels {', '.join(clf.labels)}; "
               + (f"held-out accuracy {100 * h['accuracy']:.2f}% on {h['n']} captions ({h.get('data', '')}), confusion {h['confusion']}"
                  if h.get("accuracy") is not None else "no held-out accuracy recorded (measure it with `capalign style classifier --classifier`)"))
    return _CLASSIFIERS[cfg.style_classifier]


def style_for_evaluate(captions: list[str], cfg) -> dict:
    clf = _classifier(cfg)
    from ..devices import resolve_device

    r = style_accuracy(captions, cfg.style, clf, device=resolve_device(cfg.device))
    return {"style_accuracy": r["style_accuracy"], "per_caption": r["per_caption"], "counts": {"predicted": r["predicted"], "empty": r["empty"]}}


def style_definition(cfg) -> str:
    clf = _classifier(cfg)
    h = clf.heldout or {}
    return (f"share of captions the classifier {cfg.style_classifier} labels {cfg.style!r} (empty captions count as misses); "
            f"its labels {clf.labels}, held-out accuracy {h.get('accuracy')} on {h.get('n')} captions of {h.get('data')}, "
            f"confusion (rows true, columns predicted) {h.get('confusion')}")
