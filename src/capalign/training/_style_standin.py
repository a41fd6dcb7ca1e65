"""TEMPORARY stand-in for `capalign.data.preferences` (built on the `style-data` branch): the same names
and signatures (open_preferences -> PreferenceSet, budget_subset, Pair.load_image), a minimal body.
Deleted when that branch is merged; only style_trainer._data() imports it."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from io import BytesIO

from PIL import Image

from .. import CapalignError


@dataclass
class Pair:
    id: str
    image: object
    prompt: str | None
    chosen: str
    rejected: str
    style: str
    group: str = ""
    references: list = field(default_factory=list)
    objects: list | None = None

    def load_image(self, max_side: int = 2048):
        return self.image


@dataclass
class PreferenceSet:
    name: str
    train: list
    test: list


def open_preferences(spec: str, style: str | None = None, *, seed: int = 0, test_share: float = 0.2, prompt=None) -> PreferenceSet:
    from ..data import shapes

    name, _, n = spec.partition(":")
    if name != "shapes":
        raise CapalignError(f"stand-in preference source knows only 'shapes:N', got {spec!r}")
    rng = random.Random(seed)
    test_ids = set(rng.sample(range(int(n)), round(test_share * int(n))))
    train, test = [], []
    for i in range(int(n)):
        row, png = shapes.make_example(0, i, split="pref")
        im = Image.open(BytesIO(png)).convert("RGB")
        for st in shapes.STYLES:
            if style in (None, st):
                p = Pair(f"{row['id']}-{st}", im, prompt, row[f"captions_{st}"][0], row["captions"][0], st, row["id"], row["captions"], row["objects"])
                (test if i in test_ids else train).append(p)
    if not train:
        raise CapalignError(f"no {style!r} pairs in {spec}")
    return PreferenceSet(spec, train, test)


def budget_subset(pairs: list, budget, seed: int = 0) -> list:
    s = str(budget)
    k = math.floor(float(s[:-1]) / 100 * len(pairs) + 0.5) if s.endswith("%") else int(s)
    if k < 1:
        raise CapalignError(f"budget {s} of {len(pairs)} train pairs is below one pair")
    if k > len(pairs):
        raise CapalignError(f"budget {k} pairs is larger than the {len(pairs)} train pairs available")
    order = sorted(pairs, key=lambda p: p.id)
    random.Random(f"capalign-budget/{seed}").shuffle(order)
    return order[:k]
