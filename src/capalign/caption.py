"""`capalign caption`: caption an image source with a VLM, batched and resumable.

Output: one JSON line `{"id", "caption"}` per image, appended whole after each batch (a crash never
leaves a partial line; a torn last line from a killed run is cut on the next open). Re-running the
same command skips the ids already in the output file without decoding their images. Images that
cannot be read are listed in `<out>.skipped.jsonl`; the resolved config goes to `<out>.config.json`.
`--format coco` writes a COCO results file (`[{"image_id", "caption"}]`, what pycocoevalcap's loadRes
reads) instead: the captions stream into `<out>.jsonl` as above (that file is what a re-run resumes
from) and `<out>` is written atomically from it at the end of every run.

An existing `--out` is resumed only when it is this command's own: every row a caption row, and its
`<out>.config.json` beside it, saved by `capalign caption` (the saved config is the mark, not a header
line, so caption files stay plain `{"id", "caption"}` rows that any JSONL reader takes). Anything else
(a references file, a manifest, captions of another tool) is refused before anything is written. A
resume must repeat the settings that change captions (model, adapter, prompt, decoding, dtype); other
settings are refused with the fields named, unless `--overwrite`, which starts the file over.

Under `accelerate launch` (several processes) each rank captions the entries whose index in the
source is congruent to its rank modulo the world size, into `<out>.rank{k}`; rank 0 merges those
files into `<out>` at the end (and so does any later run, so a crashed multi-process run resumes
correctly with any number of processes). The merged file is in rank order, not source order.
Checked with `torchrun --nproc_per_node 2 -m capalign caption ...` on CPU (accelerate's GPU launcher
sets the same environment); note that `accelerate launch --cpu --num_processes 2` starts ONE process
(accelerate's multi-CPU mode needs MPI), which then simply captions everything.

`caption_source(vlm, source, out_path, ...)` is the library entry point (reused by the ViZer code).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from . import CapalignError
from .config import arg, check_resume, config_path, save_config, show_config
from .devices import DTYPE_NAMES
from .io import JsonlAppender, atomic_write_text, check_prediction, read_jsonl_rows
from .utils import print0, progress


@dataclass
class CaptionConfig:
    """Caption images with a VLM (hub id, local checkpoint or nano captioner folder); batched and resumable."""

    model: str = arg(help="Model: a hub id (e.g. HuggingFaceTB/SmolVLM-256M-Base) or a local model folder (checkpoint, nano captioner).")
    images: str = arg(help="Image source: folder, dataset folder with manifest.jsonl, .jsonl/.csv manifest, COCO annotation or Karpathy .json, save_to_disk folder, .tar shards or hf:NAME (see docs/data.md).")
    out: str = arg(help="Output file: JSONL ({'id', 'caption'} per line), or a COCO results .json with --format coco. Re-running with the same settings resumes: ids already captioned are skipped.")
    format: str = arg("jsonl", "Output format: jsonl ({'id', 'caption'} lines) or coco (a COCO results file [{'image_id', 'caption'}] "
                               "for pycocoevalcap; written at the end, the run streams into OUT.jsonl and resumes from it).")
    split: str = arg(None, "Split of a source with several (HF dataset: any of its splits; Karpathy file: train, val, test, restval; "
                           "'a+b' joins two). Default: the one split there is, else an error listing them.")
    image_root: str = arg(None, "Folder holding the images of a COCO annotation or Karpathy file (default: the usual folder beside "
                                "it, e.g. val2017/ beside annotations/, or train2014/ + val2014/).")
    adapter: str = arg("", "Optional PEFT adapter folder (e.g. the output of `capalign vizer train`).")
    batch_size: int = arg(16, "Images per batch (one vision pass + one generate call per batch).")
    vision_batch_size: int = arg(None, "Images per vision-tower pass inside a batch (default: 1 on CPU, where per-image passes are faster, else the whole batch).")
    max_new_tokens: int = arg(32, "Maximum caption length in tokens.")
    prompt: str = arg(None, "Text prompt after the image; default: with --adapter the prompt it was trained with (capalign adapters record it), "
                            "else the family's (none for SmolVLM-Base). '' = no text, just the image, in every family. {style} is filled "
                            "with the adapter's recorded style.")
    do_sample: bool = arg(False, "Sample instead of greedy decoding.")
    temperature: float = arg(1.0, "Sampling temperature (with --do_sample).")
    top_p: float = arg(1.0, "Nucleus sampling mass (with --do_sample).")
    device: str = arg("auto", "Device: auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps.")
    dtype: str = arg("auto", "Weights dtype: auto (bf16 on CUDA, fp32 elsewhere), float32, bfloat16, float16 (not on CPU).")
    limit: int = arg(None, "Caption only the first N images of the source (resumed runs cover the same N).")
    seed: int = arg(0, "Random seed (matters with --do_sample).")
    overwrite: bool = arg(False, "Start over: replace an earlier output of `capalign caption` at --out (recognised by its .config.json) "
                                 "instead of resuming it, also when its settings differ. A file capalign did not write is never replaced.")

    def resume_fields(self) -> tuple[str, ...]:
        """The settings a resume must repeat: those that change the captions (sampling ones only when sampling)."""
        return ("model", "adapter", "prompt", "max_new_tokens", "do_sample", "dtype") + (("temperature", "top_p", "seed") if self.do_sample else ())

    def __post_init__(self):
        for name in ("model", "images", "out"):
            if not str(getattr(self, name) or "").strip():
                raise ValueError(f"--{name} is required")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {self.batch_size}")
        if self.vision_batch_size is not None and self.vision_batch_size <= 0:
            raise ValueError(f"vision_batch_size must be > 0, got {self.vision_batch_size}")
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be > 0, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")
        if self.format not in ("jsonl", "coco"):
            raise ValueError(f"format must be jsonl or coco, got {self.format!r}")
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {self.dtype!r}")
        if Path(self.out).is_dir():
            raise ValueError(f"out must be a file path (e.g. captions.jsonl), got the folder {self.out}")


@dataclass
class CaptionStats:
    captioned: int = 0  # generated in this run (this rank)
    resumed: int = 0  # already in the output before this run
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason) of unreadable images
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.captioned / self.seconds if self.seconds > 0 else 0.0


def rank_path(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.name}.rank{rank}")


def _rank_files(out: Path) -> list[Path]:
    return sorted(p for p in out.parent.glob(f"{out.name}.rank*") if p.name[len(out.name) + 5 :].isdigit())


def _file_ids(path: Path) -> list[str]:
    """Ids of a caption file this command wrote (a torn last line is ignored: the appender cuts it);
    anything else in it (a row without a caption, e.g. a references file) is an error, so we never
    append to, or cut, a file that is not ours."""
    hint = "it is not a caption file of `capalign caption`; choose another --out"
    try:
        return [check_prediction(r, f"{path} line {n}")[0] for n, r in read_jsonl_rows(path, "output file", torn_ok=True)]
    except CapalignError as e:
        raise CapalignError(f"cannot resume into --out {path}: {e}; {hint}") from None


def claim_output(cfg: CaptionConfig, out: Path | None = None) -> bool:
    """Check that an existing --out (and per-rank leftovers) may be resumed, before anything is written:
    caption rows only, saved config of `capalign caption` beside it, same settings (config.check_resume).
    True: --overwrite, the earlier output is to be removed. Reads only. `out`: the caption file (default --out;
    with --format coco the OUT.jsonl that the captions stream into)."""
    out = Path(out or cfg.out)
    written = [p for p in [out, *_rank_files(out)] if p.is_file() and p.stat().st_size]
    for p in written:
        _file_ids(p)
    if written and not config_path(out).is_file():
        raise CapalignError(f"cannot resume into --out {out}: it was not written by `capalign caption` (no {config_path(out).name} "
                            "beside it), and capalign never appends to a file it did not write; choose another --out")
    return check_resume(cfg, out)


def discard_output(out: Path) -> None:
    """Remove an earlier output of this command (--overwrite): the captions, per-rank leftovers, the skipped list."""
    for p in [out, *_rank_files(out), out.with_name(out.name + ".skipped.jsonl")]:
        p.unlink(missing_ok=True)


def done_ids(out: str | Path) -> set[str]:
    """Ids already captioned: in `out` or in leftover per-rank files of an interrupted multi-process run."""
    out = Path(out)
    ids: set[str] = set()
    for p in [out, *_rank_files(out)]:
        if p.is_file():
            ids.update(_file_ids(p))
    return ids


def merge_rank_files(out: str | Path) -> int:
    """Append the records of `<out>.rank*` not yet in `out` to it, then delete those files. Returns
    the number of records added. Crash-safe: records are appended before the files are removed, and
    a re-run skips ids already in `out`."""
    out = Path(out)
    files = _rank_files(out)
    if not files:
        return 0
    have = set(_file_ids(out)) if out.is_file() else set()
    added = 0
    with JsonlAppender(out) as w:
        for p in files:
            new = [r for _, r in read_jsonl_rows(p, torn_ok=True) if str(r["id"]) not in have]
            have.update(str(r["id"]) for r in new)
            w.write(new)
            added += len(new)
    for p in files:
        p.unlink(missing_ok=True)
    return added


def caption_source(
    vlm,
    source,
    out_path: str | Path,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    rank: int = 0,
    world_size: int = 1,
    show_progress: bool = True,
) -> CaptionStats:
    """Caption every image of `source` (an ImageSource) not yet in `out_path`; append {"id", "caption"}
    lines after each batch. With world_size > 1, this call handles only entries with index % world_size
    == rank and writes them to `<out_path>.rank{rank}` (merge with `merge_rank_files` afterwards)."""
    import torch

    from .data.sources import batched

    if batch_size <= 0:
        raise CapalignError(f"batch_size must be > 0, got {batch_size}")
    out = Path(out_path)
    target = out if world_size == 1 else rank_path(out, rank)
    done = done_ids(out)
    skip = set(done)
    all_ids = source.ids() if world_size > 1 else None
    if world_size > 1:  # not mine: never decoded
        skip.update(i for k, i in enumerate(all_ids) if k % world_size != rank)
        mine = [i for k, i in enumerate(all_ids) if k % world_size == rank]
        total, resumed = len(mine), sum(i in done for i in mine)
    else:
        total = source.num_known()
        resumed = len(done)  # counted as done; the bar starts there
    stats = CaptionStats(resumed=resumed)
    n_skipped0 = len(source.skipped)
    t0 = time.perf_counter()
    with JsonlAppender(target) as writer, progress(disable=not show_progress) as bar, torch.inference_mode():
        task = bar.add_task("captioning", total=total, completed=min(resumed, total) if total else resumed, rate="")
        for batch in batched(source.iter(skip_ids=skip), batch_size):
            enc = vlm.encode([r.image for r in batch])
            caps = vlm.generate(enc, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p)
            writer.write({"id": r.id, "caption": t} for r, t in zip(batch, caps.texts))
            stats.captioned += len(batch)
            elapsed = time.perf_counter() - t0
            bar.update(task, advance=len(batch), rate=f"{stats.captioned / elapsed:.2f} img/s")
    stats.seconds = time.perf_counter() - t0
    stats.skipped = list(source.skipped[n_skipped0:])
    return stats


def _write_skipped(out: Path, skipped: list[tuple[str, str]]) -> Path:
    import json

    path = out.with_name(out.name + ".skipped.jsonl")
    atomic_write_text(path, "".join(json.dumps({"id": i, "reason": r}, ensure_ascii=False) + "\n" for i, r in skipped))
    return path


def run(cfg: CaptionConfig) -> CaptionStats:
    from .data.sources import open_images
    from .devices import resolve_device, resolve_dtype
    from .models.loading import FAMILIES, _config, check_adapter, load_vlm
    from .utils import seed_everything

    # cheap checks first, so bad input fails in one line before any weights are loaded
    device = resolve_device(cfg.device)
    resolve_dtype(cfg.dtype, device)
    source = open_images(cfg.images, limit=cfg.limit, split=cfg.split, image_root=cfg.image_root)
    family = _config(cfg.model).model_type
    if family not in FAMILIES:
        raise CapalignError(f"unsupported model family {family!r} for {cfg.model}; supported: {', '.join(FAMILIES)}")
    if cfg.adapter:
        check_adapter(cfg.adapter)
    out = stream = Path(cfg.out)
    if cfg.format == "coco":  # captions stream into OUT.jsonl (resumable, its config beside it); OUT is written from it at the end
        stream = out.with_name(out.name + ".jsonl")
        if out.is_file():
            from .data.formats import read_results

            read_results(out)  # an existing --out must be a results file (we replace it), never someone's other file
    overwrite = claim_output(cfg, stream)  # an existing caption file must be this command's, with the same settings

    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu") if _launched() else None
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    show_config(cfg)
    seed_everything(cfg.seed + rank)
    # the model (and adapter) load before anything is written, so a model that does not fit changes no file
    vlm = load_vlm(cfg.model, device=device, dtype=cfg.dtype, adapter=cfg.adapter or None, prompt=cfg.prompt)
    vlm.vision_batch_size = cfg.vision_batch_size
    if rank == 0:
        if overwrite:
            discard_output(stream)
        save_config(cfg, stream)
        merge_rank_files(stream)  # leftovers of an interrupted multi-process run
    if state:
        state.wait_for_everyone()
    stats = caption_source(vlm, source, stream, cfg.batch_size, cfg.max_new_tokens, cfg.do_sample, cfg.temperature,
                           cfg.top_p, rank=rank, world_size=world)
    if state:
        from accelerate.utils import gather_object

        parts = gather_object([(stats.captioned, stats.resumed, stats.skipped)])
        state.wait_for_everyone()
        if rank == 0:
            merge_rank_files(stream)
            stats = CaptionStats(sum(p[0] for p in parts), sum(p[1] for p in parts),
                                 [s for p in parts for s in p[2]], stats.seconds)
    if rank != 0:
        return stats
    if cfg.format == "coco":
        from .data.formats import write_results
        from .io import read_jsonl

        n = write_results(out, read_jsonl(stream))
        print0(f"wrote {n} captions as a COCO results file -> {out}")
    skipped_path = _write_skipped(out, stats.skipped)
    if stats.skipped:
        shown = ", ".join(i for i, _ in stats.skipped[:5]) + (", ..." if len(stats.skipped) > 5 else "")
        print0(f"[yellow]skipped {len(stats.skipped)} unreadable image(s): {shown} (reasons in {skipped_path})")
    print0(f"captioned {stats.captioned} images, {stats.resumed} already done (resumed), {len(stats.skipped)} skipped; "
           f"{stats.images_per_s:.2f} images/s over {stats.seconds:.1f}s -> {out}")
    return stats


def _launched() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1
