"""Preference pairs for stylistic alignment: `open_preferences(spec, style=...)` -> train / test pairs.

A pair is (id, image, prompt, chosen, rejected, style): chosen = the stylised caption, rejected = a
factual caption of the same image. Sources (docs/style-data.md):

- `x.jsonl` / `x.csv`: rows with `image` (relative to the manifest), `chosen`, `rejected`, `style`,
  optional `id`, `prompt`, `references` (factual captions), `objects`;
- a FlickrStyle10K folder (`humor/`, `romantic/`; see flickrstyle.py) + Flickr30k captions and images;
- `hf:NAME[:CONFIG]` or a `save_to_disk` folder with image / chosen / rejected (/ style / id) columns,
  or the New Yorker caption contest layout (jmhessel/newyorker_caption_contest);
- the shapes world: `shapes:N[:SEED]` or a folder written by `capalign shapes` (see shapes_style.py).

Splits: pairs are grouped by image (`Pair.group`), and a seeded permutation of all groups (before any
pair is skipped or filtered by style) puts `test_share` of them in the test split, so the test split
is the same images for every style, every budget and every training seed, and an image never appears
in both splits. Budgets (`budget_subset`) are prefixes of one seeded permutation of the train pairs,
hence nested. Bad pairs (empty captions, chosen == rejected, missing images) are skipped and listed
with their ids in `PreferenceSet.skipped`; corrupt images are skipped when loaded (`load_images`).
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

from .. import CapalignError
from ..config import arg
from .pairs import Pair, PreferenceSet, split_groups

log = logging.getLogger(__name__)


def _norm(s) -> str:
    return " ".join(str(s).split()) if s is not None else ""


def parse_budget(budget, n: int) -> int:
    """'10%' -> round(0.1 n); '250' or 250 -> 250 pairs. Out of range -> one-line error."""
    s = str(budget).strip()
    if s.endswith("%"):
        try:
            share = float(s[:-1])
        except ValueError:
            raise CapalignError(f"budget {budget!r} is not a percentage like '10%' or a pair count like 250") from None
        if not 0 < share <= 100:
            raise CapalignError(f"budget {s} must be in (0%, 100%]")
        k = math.floor(share / 100 * n + 0.5)
        if k < 1:
            raise CapalignError(f"budget {s} of {n} train pairs is {share / 100 * n:.2f} pairs, below one pair; use a larger budget")
        return k
    try:
        k = int(s)
    except ValueError:
        raise CapalignError(f"budget {budget!r} is not a percentage like '10%' or a pair count like 250") from None
    if k < 1:
        raise CapalignError(f"budget {k} is below one pair")
    if k > n:
        raise CapalignError(f"budget {k} pairs is larger than the {n} train pairs available")
    return k


def budget_subset(pairs: list[Pair], budget, seed: int = 0) -> list[Pair]:
    """The first k pairs of a seeded permutation of `pairs` (sorted by id first, so the input order does
    not matter): the subset of a smaller budget is a prefix of every larger one with the same seed."""
    if not pairs:
        raise CapalignError("no train pairs to take a budget from")
    k = parse_budget(budget, len(pairs))
    order = sorted(pairs, key=lambda p: p.id)
    random.Random(f"capalign-budget/{seed}").shuffle(order)
    return order[:k]


# ---------------------------------------------------------------------------------------- sources
def _read_manifest(path: Path, style: str | None) -> list[Pair]:
    from .sources import read_manifest_rows  # the one JSONL/CSV reader: bad bytes and JSON are one-line errors

    rows = list(read_manifest_rows(path, "preference manifest"))
    if not rows:
        raise CapalignError(f"manifest {path} has no rows; expected rows with image, chosen, rejected, style")
    missing = [c for c in ("image", "chosen", "rejected") if c not in rows[0][1]]
    if missing:
        raise CapalignError(f"{path}: missing column(s) {', '.join(missing)}; a preference manifest has image, chosen, rejected, style (and optional id, prompt)")
    pairs, seen = [], {}
    for line, r in rows:
        pid = _norm(r.get("id")) or f"{path.stem}-{line:06d}"
        if pid in seen:
            raise CapalignError(f"{path}: duplicate id {pid!r} (lines {seen[pid]} and {line}); ids must be unique")
        seen[pid] = line
        st = _norm(r.get("style")) or style
        if not st:
            raise CapalignError(f"{path} line {line}: no style; add a style column or pass style=")
        ref = _norm(r.get("image"))
        img = (Path(ref) if Path(ref).is_absolute() else path.parent / ref) if ref else None
        refs = r.get("references")
        refs = json.loads(refs) if isinstance(refs, str) and refs.startswith("[") else refs
        objs = r.get("objects")
        objs = json.loads(objs) if isinstance(objs, str) and objs.startswith("[") else objs
        pairs.append(Pair(pid, img, r.get("prompt") or None, _norm(r.get("chosen")), _norm(r.get("rejected")), st.lower(),
                          group=str(img) if img else pid, references=[_norm(x) for x in refs or []] if isinstance(refs, list) else [],
                          objects=objs or None))
    return pairs


def _first_row(path: Path) -> dict:
    from ..io import read_jsonl_rows

    return next(read_jsonl_rows(path, "preference manifest"), (0, {}))[1]


_EXPECTED = ("expected a .jsonl/.csv preference manifest, a FlickrStyle10K folder (humor/, romantic/), hf:NAME[:CONFIG], "
             "a datasets save_to_disk folder, shapes:N[:SEED] or a `capalign shapes` folder")


def _raw_pairs(spec: str, style, seed, test_share, hf_split, flickr_captions, flickr_images, columns) -> tuple[str, list[Pair]]:
    if spec.startswith("shapes:"):
        from .shapes_style import shapes_pairs

        return "shapes world", shapes_pairs(spec, seed, test_share)
    if spec.startswith("hf:"):
        from .pref_hf import hf_pairs

        return spec, hf_pairs(spec, None, hf_split, style, columns)
    path = Path(spec).expanduser()
    if not path.exists():
        raise CapalignError(f"preference data not found: {spec}; {_EXPECTED}")
    if path.is_file():
        if path.suffix.lower() in (".jsonl", ".csv"):
            row = _first_row(path) if path.suffix.lower() == ".jsonl" else {}
            if "objects" in row and "chosen" not in row:
                from .shapes_style import shapes_pairs

                return "shapes world", shapes_pairs(path, seed, test_share)
            return str(path), _read_manifest(path, style)
        raise CapalignError(f"unknown preference data {spec}: unsupported file type {path.suffix or '(none)'}; {_EXPECTED}")
    if (path / "manifest.jsonl").is_file():
        row = _first_row(path / "manifest.jsonl")
        if "objects" in row and "chosen" not in row:
            from .shapes_style import shapes_pairs

            return "shapes world", shapes_pairs(path / "manifest.jsonl", seed, test_share)
        return str(path), _read_manifest(path / "manifest.jsonl", style)
    if any((path / f).is_file() for f in ("state.json", "dataset_dict.json")):
        from .pref_hf import hf_pairs

        return str(path), hf_pairs(spec, path, hf_split, style, columns)
    from .flickrstyle import flickrstyle_pairs, is_flickrstyle

    if is_flickrstyle(path):
        return "FlickrStyle10K", flickrstyle_pairs(path, flickr_captions, flickr_images)
    raise CapalignError(f"cannot tell what preference data {spec} holds; {_EXPECTED}")


def _check(p: Pair) -> str | None:
    if not p.chosen:
        return "empty chosen caption"
    if not p.rejected:
        return "empty rejected caption"
    if p.chosen.lower() == p.rejected.lower():
        return "chosen equals rejected"
    if p.image is None or p.image == b"":
        return "no image"
    if isinstance(p.image, Path) and not p.image.is_file():
        return f"image not found: {p.image}"
    return None


def open_preferences(spec: str, style: str | None = None, *, seed: int = 0, test_share: float = 0.2,
                     prompt: str | None = None, hf_split: str = "train", flickr_captions: str | None = None,
                     flickr_images: str | None = None, image_column: str | None = None, chosen_column: str | None = None,
                     rejected_column: str | None = None) -> PreferenceSet:
    """Open preference data and split it by image (seeded). `style`: keep only that style's pairs
    (None: all styles). `prompt`: the caption prompt of every pair (None: the model's default)."""
    if not 0 <= test_share < 1:
        raise CapalignError(f"test_share must be in [0, 1), got {test_share}")
    columns = dict(image=image_column, chosen=chosen_column, rejected=rejected_column)
    name, raw = _raw_pairs(str(spec), style, seed, test_share, hf_split, flickr_captions, flickr_images, columns)
    ids = sorted(p.id for p in raw)
    dup = next((a for a, b in zip(ids, ids[1:]) if a == b), None)
    if dup is not None:
        raise CapalignError(f"duplicate pair id {dup!r} in {spec}; ids must be unique")
    test_groups = split_groups([p.group for p in raw], seed, test_share)  # before any skip or style filter
    skipped = [(p.id, p.meta["skip"]) for p in raw if p.meta.get("skip")]  # loaders mark what they cannot pair
    raw = [p for p in raw if not p.meta.get("skip")]
    counts: dict[str, int] = {}
    kept = []
    for p in raw:
        reason = _check(p)
        if reason:
            skipped.append((p.id, reason))
            continue
        if not p.references:
            p.references = [p.rejected]
        if prompt is not None:
            p.prompt = prompt
        counts[p.style] = counts.get(p.style, 0) + 1
        kept.append(p)
    for pid, reason in skipped:
        log.warning("skipping pair %s: %s", pid, reason)
    if style is not None and counts.get(style.lower(), 0) == 0:
        have = ", ".join(f"{s} ({n})" for s, n in sorted(counts.items())) or "none"
        raise CapalignError(f"no {style!r} pairs in {spec}; styles with pairs: {have}"
                            + (f"; {len(skipped)} pairs were skipped (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
    if not kept:
        raise CapalignError(f"no usable pairs in {spec}: all {len(skipped)} were skipped (e.g. {skipped[0][0]}: {skipped[0][1]})"
                            if skipped else f"no pairs in {spec}")
    sel = [p for p in kept if style is None or p.style == style.lower()]
    train = [p for p in sel if p.group not in test_groups]
    test = [p for p in sel if p.group in test_groups]
    return PreferenceSet(name, train, test, skipped, seed, test_share, counts)


@dataclass
class PreferenceDataArgs:
    """The data flags of every style command: a config dataclass inherits them (all have defaults) and its
    __post_init__ calls super().__post_init__() to validate them."""

    group_title = "data (the same for every style command)"

    data: str = arg("", "Preference data: a .jsonl/.csv manifest, a FlickrStyle10K folder, hf:NAME[:CONFIG], a save_to_disk "
                         "folder, shapes:N[:SEED] or a `capalign shapes` folder (docs/style.md).")
    split_seed: int = arg(0, "Seed of the train/test split (by image); keep it fixed across runs so every run shares the test split.")
    test_share: float = arg(0.2, "Share of the images in the test split (never trained on).")
    prompt: str = arg(None, "Caption prompt of every pair (default: the model's own; '' for none).")
    hf_split: str = arg("train", "Split of a HF dataset to read pairs from (the train/test split is then made by split_seed).")
    flickr_captions: str = arg("", "FlickrStyle10K: Flickr30k's results_20130124.token (default: found beside the folder).")
    flickr_images: str = arg("", "FlickrStyle10K: the Flickr30k image folder (default: flickr30k-images/ beside the folder).")
    image_column: str = arg("", "HF datasets: image column (default: image, img, ...).")
    chosen_column: str = arg("", "HF datasets: chosen caption column (default: chosen).")
    rejected_column: str = arg("", "HF datasets: rejected caption column (default: rejected).")

    def __post_init__(self):
        if not 0 <= self.test_share < 1:
            raise ValueError(f"test_share must be in [0, 1), got {self.test_share}")

    def open_data(self, style: str | None = None) -> PreferenceSet:
        if not str(self.data).strip():
            raise CapalignError("--data is required (preference pairs; see docs/style.md)")
        return open_preferences(self.data, style, seed=self.split_seed, test_share=self.test_share, prompt=self.prompt,
                                hf_split=self.hf_split, flickr_captions=self.flickr_captions or None,
                                flickr_images=self.flickr_images or None, image_column=self.image_column or None,
                                chosen_column=self.chosen_column or None, rejected_column=self.rejected_column or None)
