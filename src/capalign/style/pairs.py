"""`capalign style pairs`: write the train/test pairs of preference data as JSONL manifests (+ test-image refs)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import CapalignError
from ..config import arg, save_config, show_config
from ..data.preferences import PreferenceDataArgs
from ..utils import print0


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
