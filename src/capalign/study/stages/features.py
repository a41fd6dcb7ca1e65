"""Stage `features`: the data of the report's PCA figure (the ViZer paper's Figure 4), per seed.

features.safetensors holds "image" [N, D_v], the test images' pooled vision features minus the mapper's
centre (F_I - c; c = 0 for an uncentred mapper), "mapped/<System>" [N, D_v], the mapper's image of each
system's caption, h(f(caption)), and "reference" [N, D_v] for each image's first reference caption.
f is the *Base* model's language model for every system (the mapper was fitted to it): one fixed ruler,
so the points move only because the captions changed. features.json lists the ids (row order) and how.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ... import CapalignError
from ...config import arg
from ...io import atomic_write_json, read_jsonl
from ...utils import print0
from .. import layout
from ..stage import Context, Stage


@dataclass
class FeaturesOptions:
    variant: str = arg("gt", "Which mapper measures the captions (gt: fitted to human captions).")
    batch_size: int = arg(32, "Images per batch.")

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


class FeaturesStage(Stage):
    name, help = "features", "Vision features and mapped caption states of the test images, for the PCA figure."
    options = FeaturesOptions
    needs = ("mapper", "caption")

    def publish(self, ctx: Context) -> None:
        v = self.opts(self.section(ctx)).variant
        if v not in ctx.mappers:
            raise CapalignError(f"features.variant {v!r} has no mapper; mapper.variants are {list(ctx.mappers)}")
        ctx.features = ctx.root / layout.features(ctx.seed)

    def outputs(self, ctx: Context) -> list[Path]:
        return [ctx.features, ctx.features.with_suffix(".json")]

    def run(self, ctx: Context) -> None:
        import torch
        from safetensors.torch import save_file

        from ...data.sources import batched, open_images
        from ...models import load_vlm
        from ...vizer.mapper import Mapper, vlm_settings

        o = self.opts(self.section(ctx))
        mdir = ctx.mappers[o.variant]
        meta = json.loads((mdir / "mapper_meta.json").read_text())
        vlm = load_vlm(ctx.model, **vlm_settings(meta))
        mapper = Mapper.from_pretrained(str(mdir)).to(vlm.device).eval()
        caps = {name: {r["id"]: r["caption"] for r in read_jsonl(path)} for name, path in ctx.captions.items()}
        refs = {r["id"]: r["captions"] for r in read_jsonl(ctx.test_manifest)}
        ids, image, ref, mapped = [], [], [], {name: [] for name in caps}
        with torch.no_grad():
            for recs in batched(open_images(str(ctx.test_manifest.parent)), o.batch_size):
                recs = [r for r in recs if all(r.id in c for c in caps.values())]
                if not recs:
                    continue
                enc = vlm.encode([r.image for r in recs])  # [B, D_v] pooled F_I, once per image
                image.append(mapper.target(enc.features).cpu())
                ref.append(mapper(vlm.caption_states(enc, vlm.tokenize_captions([refs[r.id][0] for r in recs])).float()).cpu())
                for name, c in caps.items():
                    mapped[name].append(mapper(vlm.caption_states(enc, vlm.tokenize_captions([c[r.id] for r in recs])).float()).cpu())
                ids += [r.id for r in recs]
        if not ids:
            raise CapalignError(f"features: no test image has a caption from every system ({', '.join(caps)})")
        tensors = {"image": torch.cat(image), "reference": torch.cat(ref), **{f"mapped/{n}": torch.cat(t) for n, t in mapped.items()}}
        tmp = ctx.features.with_name(ctx.features.name + ".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        tmp.replace(ctx.features)
        atomic_write_json(ctx.features.with_suffix(".json"), {
            "ids": ids, "mapper": ctx.rel(mdir), "center": bool(meta.get("center")), "systems": list(caps),
            "image": "pooled vision features minus the mapper's centre (F_I - c, c = 0 when center is false)",
            "mapped": "h(f(caption)): the mapper applied to the Base model's pooled caption states, for every system's captions",
            "reference": "h(f(first reference caption))"})
        print0(f"features: {len(ids)} test images x {len(caps)} systems -> {ctx.features}")
