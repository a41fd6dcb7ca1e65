"""Preference pairs from a HF `datasets` dataset: `hf:NAME[:CONFIG]` or a `save_to_disk` folder.

Two layouts:
- generic: an image column plus `chosen` / `rejected` (/ `style`, `id`, `prompt`) columns;
- the New Yorker caption contest (jmhessel/newyorker_caption_contest, recognised by its
  `caption_choices` + `image_description` columns): chosen = the contest caption (`explanation`
  configs: `caption_choices` is that caption; `matching` / `ranking` configs: `caption_choices` is a
  list and `label` the letter of the right / winning one), rejected = `image_description` (the
  annotators' literal description of the cartoon), style "humorous", id = `instance_id`, and the
  cartoon (`contest_number`) as the group, so one cartoon's rows never straddle the split.
  Its `*_from_pixels` configs are refused with a one-line reason: they hold the cartoon, its contest
  captions and the label, but no `image_description`, so there is no factual caption to reject (a wrong
  or losing contest caption is humorous too: a pair of two jokes teaches no style). The same task without
  `_from_pixels` has the same cartoons with the annotators' descriptions.
Images stay undecoded (bytes) until a pair is used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .. import CapalignError
from .sources import IMAGE_COLUMNS, _hf_image_ref


def _load(spec: str, path: Path | None, split: str):
    import datasets

    try:
        if path is not None:
            ds = datasets.load_from_disk(str(path))
        else:
            name, _, config = spec[3:].partition(":")
            ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # hub, network and format errors all mean "cannot open this spec"
        raise CapalignError(f"cannot load dataset {spec}: {' '.join(str(e).split())[:300]}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise CapalignError(f"split {split!r} not in {spec}; available: {', '.join(ds)}")
        ds = ds[split]
    feats = ds.features
    img = next((c for c in ds.column_names if isinstance(feats[c], datasets.Image)), None)
    if img is not None:
        ds = ds.cast_column(img, datasets.Image(decode=False))  # bytes; decoded (or counted as bad) when used
    return ds, img


def _group(ref) -> str:
    if isinstance(ref, (bytes, bytearray)):
        return hashlib.sha1(ref).hexdigest()
    return str(ref)


def hf_pairs(spec: str, path: Path | None, split: str, style: str | None, columns: dict) -> list:
    from .pairs import Pair

    ds, image_feature = _load(spec, path, split)
    cols = ds.column_names
    imk = columns.get("image") or next((c for c in IMAGE_COLUMNS if c in cols), image_feature)
    if imk is None or imk not in cols:
        raise CapalignError(f"no image column in {spec}; columns: {', '.join(cols)}; pass image_column=")
    if "caption_choices" in cols and not columns.get("chosen"):
        if "image_description" not in cols:
            raise CapalignError(f"{spec} is a New Yorker caption contest `_from_pixels` config: it has the cartoons and their "
                                "contest captions but no image_description, so no factual caption to reject; use the same task "
                                "without _from_pixels (e.g. hf:jmhessel/newyorker_caption_contest:matching)")
        return _newyorker(ds, imk, Pair)
    ck, rk = columns.get("chosen") or "chosen", columns.get("rejected") or "rejected"
    missing = [c for c in (ck, rk) if c not in cols]
    if missing:
        raise CapalignError(f"{spec} has no column(s) {', '.join(missing)}; columns: {', '.join(cols)} "
                            "(expected image / chosen / rejected, or the New Yorker caption contest layout)")
    if "style" not in cols and not style:
        raise CapalignError(f"{spec} has no style column; pass style=")
    pairs = []
    for i, row in enumerate(ds):
        ref = _hf_image_ref(row[imk])
        pid = str(row["id"]) if "id" in cols else f"{i:06d}"
        st = (row.get("style") or style or "").strip().lower()
        pairs.append(Pair(pid, ref, row.get("prompt") or None, " ".join(str(row[ck] or "").split()),
                          " ".join(str(row[rk] or "").split()), st, group=_group(ref)))
    return pairs


def _newyorker(ds, imk: str, Pair) -> list:
    pairs = []
    for i, row in enumerate(ds):
        choices, label = row["caption_choices"], (row.get("label") or "").strip()
        if isinstance(choices, list):  # matching / ranking: the label is the letter of the right caption
            k = ord(label.upper()) - ord("A") if len(label) == 1 else -1
            chosen = choices[k] if 0 <= k < len(choices) else ""
        else:
            chosen = choices or ""
        ref = _hf_image_ref(row[imk])
        pid = str(row.get("instance_id") or f"{i:06d}")
        group = f"contest-{row['contest_number']}" if row.get("contest_number") is not None else _group(ref)
        desc = " ".join(str(row["image_description"] or "").split())
        p = Pair(pid, ref, None, " ".join(chosen.split()), desc, "humorous", group=group, references=[desc] if desc else [],
                 meta={"contest_number": row.get("contest_number")})
        if isinstance(choices, list) and not chosen:
            p.meta["skip"] = f"label {label!r} does not pick one of the {len(choices)} caption choices"
        pairs.append(p)
    return pairs
