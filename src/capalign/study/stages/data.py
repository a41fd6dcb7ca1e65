"""Stage `data`: the images of a study, per split: `mapper` (images + captions for the GT mapper; the G
mapper uses only its images), `unlabeled` (ViZer's training images, captions never read), `test` (held out,
with references). A number means that many shapes-world images (`capalign shapes`, seeded by the study's
seed, written to RUN/seed-<s>/data/<split>/); a string is any image source (folder, manifest, hf:NAME,
tar shards). A test source is copied into RUN/data/test/ (once, for all seeds) with a manifest, so the run
folder holds every image the report shows; mapper and unlabeled sources are read in place.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from ... import CapalignError
from ...config import arg
from ...data.shapes import ShapesConfig, write_dataset
from ...io import atomic_write_bytes, atomic_write_text
from ...utils import print0
from .. import layout
from ..stage import Context, Stage

SPLITS = ("mapper", "unlabeled", "test")


@dataclass
class DataOptions:
    mapper: int | str = arg(None, "Mapper images (with captions for gt): a number of shapes-world images, or an image source.")
    unlabeled: int | str = arg(None, "Unlabeled images for ViZer: a number of shapes-world images, or an image source.")
    test: int | str = arg(None, "Held-out test images with references: a number of shapes-world images, or an image source (copied into RUN/data/test).")
    test_limit: int = arg(None, "Use at most this many images of a test source.")
    test_split: str = arg(None, "Split of a test source with several: a Karpathy file's test (or val), a HF dataset's split name.")

    def __post_init__(self):
        for split in SPLITS:
            v = getattr(self, split)
            if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1 or isinstance(v, str) and v.strip()):
                raise ValueError(f"data.{split} must be a number of images (>= 1) or an image source, got {v!r}")
        if self.test_limit is not None and self.test_limit < 1:
            raise ValueError("test_limit must be >= 1")


class DataStage(Stage):
    name, help = "data", "Images per split: shapes-world sizes or image sources."
    command, owned, options = ShapesConfig, ("out", "n", "seed", "split"), DataOptions

    def _dirs(self, ctx: Context) -> dict[str, Path]:
        """Split -> folder this stage writes (shapes splits, and a test source's copy)."""
        o = self.opts(self.section(ctx))
        out = {s: ctx.root / layout.data_dir(ctx.seed, s) for s in SPLITS if isinstance(getattr(o, s), int)}
        if isinstance(o.test, str):
            out["test"] = ctx.root / layout.SHARED_TEST
        return out

    def publish(self, ctx: Context) -> None:
        o = self.opts(self.section(ctx))
        dirs = self._dirs(ctx)
        for s in SPLITS:
            if getattr(o, s) is not None:
                ctx.data[s] = str(dirs.get(s, getattr(o, s)))
        if "test" in ctx.data:
            ctx.test_manifest = dirs["test"] / "manifest.jsonl"

    def outputs(self, ctx: Context) -> list[Path]:
        return [d / "manifest.jsonl" for d in self._dirs(ctx).values()]

    def run(self, ctx: Context) -> None:
        o = self.opts(self.section(ctx))
        cfg = self.command_config(ctx, out="x", n=1, seed=ctx.seed, split="x")
        for split, d in self._dirs(ctx).items():
            if (d / "manifest.jsonl").exists():
                continue
            value = getattr(o, split)
            if isinstance(value, int):
                write_dataset(d, value, seed=ctx.seed, image_size=cfg.image_size, split=split)
                print0(f"data: {value} shapes-world images of split {split} (seed {ctx.seed}) -> {d}")
            else:
                copy_test_source(value, d, o.test_limit, o.test_split)


def _ext(ref) -> str:
    from PIL import Image

    if isinstance(ref, (str, Path)):
        return Path(ref).suffix.lower() or ".png"
    if isinstance(ref, bytes):
        fmt = (Image.open(BytesIO(ref)).format or "png").lower()
        return "." + {"jpeg": "jpg"}.get(fmt, fmt)
    return ".png"


def copy_test_source(spec: str, out: Path, limit: int | None, split: str | None = None) -> None:
    """Copy a test image source into `out` (original bytes where the source has them) with manifest.jsonl
    {"id", "image", "captions", "objects"?}; unreadable images are skipped and counted."""
    import json

    from ...data.images import BadImage, load_image
    from ...data.sources import open_images

    src = open_images(spec, limit=limit, split=split)
    rows, skipped = [], []
    for i, e in enumerate(src.entries()):
        try:
            ref = e.load()
            img = load_image(ref, src.max_side)  # readable?
        except (BadImage, OSError) as err:
            skipped.append(e.id)
            print0(f"[yellow]data: skipping test image {e.id}: {err}")
            continue
        if not e.captions:
            skipped.append(e.id)
            continue
        name = f"images/{i:06d}-{re.sub(r'[^A-Za-z0-9._-]', '_', e.id)[:80]}"
        if isinstance(ref, (str, Path)):
            (out / "images").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ref, out / (name + _ext(ref)))
        elif isinstance(ref, bytes):
            atomic_write_bytes(out / (name + _ext(ref)), ref)
        else:
            buf = BytesIO()
            img.save(buf, format="PNG")
            atomic_write_bytes(out / (name + ".png"), buf.getvalue())
        ext = _ext(ref) if isinstance(ref, (str, Path, bytes)) else ".png"
        row = {"id": e.id, "image": name + ext, "captions": e.captions}
        if e.meta.get("objects") is not None:
            row["objects"] = e.meta["objects"]
        rows.append(row)
    if not rows:
        raise CapalignError(f"test source {spec} has no readable images with captions (references are needed to score captions)")
    atomic_write_text(out / "manifest.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print0(f"data: {len(rows)} test images from {spec} -> {out}" + (f" ({len(skipped)} skipped: unreadable or without captions)" if skipped else ""))
