"""References and predictions from any spec `capalign evaluate` takes: capalign's JSONL files (io.py), the
caption files of formats.py (COCO annotation and results files, Karpathy, Flickr30k token, Kaggle csv) and
HF datasets (`hf:NAME`, a save_to_disk folder) with a caption column, by formats.image_id's one id rule."""

from __future__ import annotations

from pathlib import Path

from .. import CapalignError
from ..io import read_predictions as read_jsonl_predictions
from ..io import read_references as read_jsonl_references
from ..utils import print0
from .formats import caption_rows, read_results, resolve_root, sniff, split_format
from .sources import open_images


def read_references(spec: str, split: str | None = None, caption_column: str | None = None) -> dict[str, dict]:
    """id -> {"captions", "objects", "image"} of a references spec: a capalign JSONL file (io.read_references),
    a caption file of formats.py, or a HF dataset (`hf:NAME`, a save_to_disk folder) with a caption column."""
    fmt, raw = split_format(spec)
    path = Path(raw).expanduser()
    if raw.startswith("hf:") or path.is_dir() and any((path / f).is_file() for f in ("state.json", "dataset_dict.json")):
        src = open_images(raw, split=split, caption_column=caption_column)
        if src.caption_col is None:
            raise CapalignError(f"no caption column in {spec} (looked for text in captions, caption, answer, sentences, text, ...); "
                                "name it with --caption_column")
        entries = list(src.entries())
        refs = {e.id: {"captions": e.captions, "objects": e.meta.get("objects"), "image": None} for e in entries if e.captions}
        if not refs:
            raise CapalignError(f"no references in {spec}: none of its {len(entries)} rows has a caption (column {src.caption_col!r})")
        if len(refs) < len(entries):
            print0(f"[yellow]references: {len(entries) - len(refs)} of {len(entries)} rows of {spec} have no caption (left out)")
        return refs
    fmt = fmt or (sniff(path) if path.is_file() else "jsonl")
    if fmt == "results":
        raise CapalignError(f"{path} is a COCO results file (predictions); pass it as --pred, and the annotation file as --refs")
    if fmt == "jsonl":
        if split:
            raise CapalignError(f"{path} has no splits (only HF datasets and Karpathy files do); drop --split {split}")
        return read_jsonl_references(path)  # its errors name a missing file, a folder or a bad line
    rows, name = caption_rows(path, fmt, split, None)
    root = resolve_root(path, rows, name, None)  # images for CLIPScore, where they are beside the file
    refs: dict[str, dict] = {}
    for rid, file, caps in rows:
        if rid in refs:
            raise CapalignError(f"{path}: image id {rid} appears twice; every image must appear once")
        refs[rid] = {"captions": caps, "objects": None, "image": str(root / file) if root else None}
    return refs


def read_predictions(spec: str) -> dict[str, str]:
    """id -> caption of a caption JSONL file (io.read_predictions) or a COCO results file."""
    fmt, raw = split_format(spec)
    path = Path(raw).expanduser()
    if path.is_file() and (fmt == "coco" or fmt is None and sniff(path) == "results"):
        return read_results(path)
    return read_jsonl_predictions(path)
