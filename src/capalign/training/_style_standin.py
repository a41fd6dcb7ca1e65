"""TEMPORARY stand-in for the preference-data API that the `style-data` branch builds
(`capalign.data.preferences`: open_preferences, split, budget_subset). Deleted when that branch is merged;
nothing else may import it except style_trainer.py / style_sweep.py through `_data()`.
Only the shapes world, 5 templates per style (the old generator), so no held-out templates yet."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from io import BytesIO

from PIL import Image

from .. import CapalignError


@dataclass
class PreferencePair:
    id: str
    image: Image.Image
    prompt: str | None
    chosen: str
    rejected: str
    style: str
    objects: list = field(default_factory=list)


def open_preferences(spec: str, style: str | None = None) -> list[PreferencePair]:
    from ..data import shapes

    name, _, n = spec.partition(":")
    if name != "shapes":
        raise CapalignError(f"stand-in preference source knows only 'shapes[:N]', got {spec!r}")
    out = []
    for i in range(int(n or 1000)):
        row, png = shapes.make_example(0, i, split="pref")
        im = Image.open(BytesIO(png)).convert("RGB")
        for st in shapes.STYLES:
            if style in (None, st):
                out.append(PreferencePair(f"{row['id']}-{st}", im, None, row[f"captions_{st}"][0], row["captions"][0], st, row["objects"]))
    if not out:
        raise CapalignError(f"no pairs of style {style!r} in {spec}")
    return out


def split_pairs(pairs: list, test_fraction: float, seed: int) -> tuple[list, list]:
    def h(p):
        return int(hashlib.sha256(f"{seed}/{p.id}".encode()).hexdigest()[:12], 16) / 16**12

    return [p for p in pairs if h(p) >= test_fraction], [p for p in pairs if h(p) < test_fraction]


def budget_subset(pairs: list, budget: int, seed: int) -> list:
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    return [pairs[i] for i in sorted(order[:budget])]
