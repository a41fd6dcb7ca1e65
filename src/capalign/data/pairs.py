"""The preference pair and set types shared by every preference loader (preferences.py dispatches to them)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from .images import BadImage, load_image

log = logging.getLogger("capalign.data.preferences")


FACTUAL = "factual"  # the label of rejected captions for the style classifier


@dataclass
class Pair:
    id: str
    image: object  # a path, bytes, a PIL image, or a zero-argument function returning one of these
    prompt: str | None  # None: the model's default caption prompt
    chosen: str
    rejected: str
    style: str
    group: str = ""  # the image's key: pairs of one image always share a split
    references: list[str] = field(default_factory=list)  # factual captions of the image (content-kept references)
    objects: list[dict] | None = None  # annotated objects (shapes world), for the grounding metric
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.group = self.group or self.id  # no image key given: the pair is its own group

    def load_image(self, max_side: int = 2048):
        """The RGB image; raises BadImage (one line) if it is missing or corrupt."""
        return load_image(self.image() if callable(self.image) else self.image, max_side)


@dataclass
class PreferenceSet:
    name: str
    train: list[Pair]
    test: list[Pair]
    skipped: list[tuple[str, str]]  # (pair id, reason)
    seed: int
    test_share: float
    styles: dict[str, int] = field(default_factory=dict)  # pairs per style before the style filter

    def summary(self) -> str:
        skip = f", {len(self.skipped)} skipped" + (f" (e.g. {self.skipped[0][0]}: {self.skipped[0][1]})" if self.skipped else "")
        return (f"{self.name}: {len(self.train)} train / {len(self.test)} test pairs (split seed {self.seed}, "
                f"test share {self.test_share:g}){skip}; styles in the data: "
                + ", ".join(f"{s} {n}" for s, n in sorted(self.styles.items())))

    def load_images(self, pairs: list[Pair], max_side: int = 2048) -> tuple[list[Pair], list]:
        """(pairs whose image loads, their images); the others are appended to `skipped`, counted."""
        kept, images = [], []
        for p in pairs:
            try:
                images.append(p.load_image(max_side))
                kept.append(p)
            except BadImage as e:
                self.skipped.append((p.id, str(e)))
                log.warning("skipping pair %s: %s", p.id, e)
        return kept, images


def split_groups(groups, seed: int, test_share: float) -> set[str]:
    """The test groups: a seeded permutation of the sorted distinct groups, the first round(share * n)."""
    uniq = sorted(set(groups))
    rng = random.Random(f"capalign-split/{seed}")
    rng.shuffle(uniq)
    k = round(test_share * len(uniq))
    if test_share > 0 and len(uniq) > 1:
        k = min(max(k, 1), len(uniq) - 1)  # never an empty test split, never an empty train split
    return set(uniq[:k])
