"""`capalign` command line. Each command is a (config dataclass, run function) pair in its module;
flags and `--config run.yaml` come from the dataclass (see config.py). Modules import lazily so
`capalign --help` is fast.

`main` is the one place where user-facing errors become one `error: ...` line and exit code 2:
- `CapalignError`, raised where the input is read and validated (bad flags and YAML, missing or
  malformed files, wrong types, unwritable outputs, models/adapters/mappers that do not fit);
- OSErrors that name a file and can only come from the user's environment, never from a bug:
  permission denied, read-only file system, disk full, a file where a folder should be (or the
  reverse), e.g. from a library's save_pretrained into `--out`;
- any OSError on the command's output path (`--out`, a file inside it, or a folder above it that
  cannot be created, e.g. under /proc), which names that path.
Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import importlib
import sys

from . import CapalignError

# command path -> (module, config class, run function, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str, str, str]] = {
    ("caption",): ("capalign.caption", "CaptionConfig", "run", "Caption images with a VLM (batched, resumable)."),
    ("evaluate",): ("capalign.metrics.evaluate", "EvaluateConfig", "run", "Score caption files: BLEU, ROUGE-L, CIDEr-D, BERTScore, CLIPScore, grounding."),
    ("shapes",): ("capalign.data.shapes", "ShapesConfig", "run", "Write a shapes-world dataset (images, manifest, scenes)."),
    ("nano", "train"): ("capalign.nano.train", "NanoTrainConfig", "run", "Train the nano captioner (SmolVLM architecture) on the shapes world."),
    ("nano", "vision"): ("capalign.nano.vision", "NanoVisionConfig", "run", "Contrastively pretrain the nano vision tower (SigLIP / CLIP loss) on shapes images and captions; probes, retrieval."),
    ("nano", "probe"): ("capalign.nano.vision", "NanoProbeConfig", "run_probe", "What a nano vision tower's pooled features carry: linear probes (colour, shape, size, count), LiT retrieval R@1."),
    ("mapper", "train"): ("capalign.vizer.mapper", "MapperTrainConfig", "run", "Train the ViZer mapper (variant gt or g)."),
    ("vizer", "train"): ("capalign.vizer.train", "VizerTrainConfig", "run", "Zero-label LoRA training of the VLM with a frozen mapper."),
    ("vizer", "sweep"): ("capalign.vizer.sweep", "SweepConfig", "run", "Sweep mapper widths x data sizes; table and heatmap."),
    ("vizer", "diagnose"): ("capalign.vizer.diagnose", "DiagnoseConfig", "run", "Does a mapper's reward prefer correct captions over corrupted ones? AUC per error kind, retrieval R@1."),
    ("vizer", "study"): ("capalign.study.vizer", "VizerStudyConfig", "run", "Base vs ViZer_GT vs ViZer_G on the shapes world (a ViZer-only study recipe), over seeds."),
    ("study",): ("capalign.study.run", "StudyConfig", "run", "Run a study recipe (RECIPE.yaml): every stage into one run folder, resumable, multi-seed summary."),
    ("estimate",): ("capalign.study.estimate", "EstimateConfig", "run", "Estimate GPU memory and time per stage of a recipe (from parameter, activation and FLOP counts)."),
    ("report",): ("capalign.reports.report", "ReportConfig", "run", "Static HTML report of a run folder: gallery, metrics with intervals, figures."),
    ("style", "classifier"): ("capalign.style.classifier", "StyleClassifierConfig", "run_classifier", "Train (or measure) a style classifier on preference data; held-out accuracy and confusion matrix."),
    ("style", "pairs"): ("capalign.style.pairs", "StylePairsConfig", "run_pairs", "Write the train/test pairs of preference data as JSONL manifests (+ test-image refs for caption/evaluate)."),
    ("style", "train"): ("capalign.style.train", "StyleTrainConfig", "run", "Align a VLM to a caption style: zero-shot, SFT, DPO or SimPO over a data budget."),
    ("style", "sweep"): ("capalign.style.sweep", "StyleSweepConfig", "run", "Data-efficiency sweep: methods x styles x budgets x seeds; curves, saturation, plots."),
    ("style", "wrlogp"): ("capalign.style.wrlogp", "WrLogpConfig", "run_wrlogp", "WR-LogP of a model (and its base, with --adapter) on the test split of preference data."),
    ("judge",): ("capalign.judge.grade", "JudgeConfig", "run", "Grade caption files A-E with a VLM judge (expected grade from the letter probabilities)."),
    ("judge", "calibrate"): ("capalign.judge.calibrate", "JudgeCalibrateConfig", "run", "Can a judge be fooled? Grade degenerate captions built from references (non-words, noise, repeats, truncated, empty, ...)."),
    ("judge", "train"): ("capalign.judge.train", "JudgeTrainConfig", "run", "Train a nano VLM judge (SmolVLM architecture) on the shapes world; held-out accuracy."),
    ("rl", "train"): ("capalign.rl.train", "RLTrainConfig", "run", "GRPO on the language model (LoRA) with a judge or metric reward."),
    ("publish",): ("capalign.training.hub", "PublishConfig", "run", "Upload a trained folder (adapter, mapper, model) with its model card to the Hugging Face Hub (private by default)."),
}

# commands whose first argument may be given without its flag: `capalign study RECIPE.yaml`, `capalign report RUN`
POSITIONAL = {("study",): "--recipe", ("estimate",): "--recipe", ("report",): "--run", ("publish",): "--path"}


def _load(path: tuple[str, ...]):
    mod, cfg, fn, _ = COMMANDS[path]
    m = importlib.import_module(mod)
    return getattr(m, cfg), getattr(m, fn)


def _usage(prefix: tuple[str, ...]) -> str:
    rows = [(" ".join(p), h) for p, (_, _, _, h) in COMMANDS.items() if p[: len(prefix)] == prefix]
    width = max(len(n) for n, _ in rows)
    return "usage: capalign COMMAND [--config run.yaml] [flags]\n\ncommands:\n" + "\n".join(f"  {n:<{width}}  {h}" for n, h in rows)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    path: tuple[str, ...] = ()
    while argv and any(p[: len(path) + 1] == (*path, argv[0]) for p in COMMANDS):  # longest match: `judge` and `judge train`
        path = (*path, argv.pop(0))
    if path not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {' '.join((*path, argv[0]))!r}\n\n{_usage(path)}", file=sys.stderr)
            return 2
        print(_usage(path))
        return 0 if argv else 2
    from .config import parse_config

    if path in POSITIONAL and argv and not argv[0].startswith("-"):
        argv = [POSITIONAL[path], *argv]

    cfg = None
    try:
        cfg_cls, run = _load(path)
        cfg = parse_config(cfg_cls, argv, prog="capalign " + " ".join(path))
        run(cfg)
    except CapalignError as e:
        return _error(str(e))
    except OSError as e:
        if not e.filename or (e.errno not in _ENVIRONMENT_ERRNOS and not _under_out(e.filename, cfg)):
            raise
        return _error(f"{e.filename}: {e.strerror or e}")
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume" if path in RESUMABLE else
              "interrupted; this command does not resume: re-run it to start over", file=sys.stderr)
        return 130
    return 0


# commands whose re-run continues an interrupted run (checkpoints, appended outputs, finished cells or stages)
RESUMABLE = {("caption",), ("nano", "train"), ("vizer", "train"), ("vizer", "sweep"), ("vizer", "study"), ("study",),
             ("style", "train"), ("style", "sweep"), ("rl", "train")}

# errno values of OSErrors that only the user's file system can cause (see the module docstring)
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}


def _under_out(filename, cfg) -> bool:
    """Whether `filename` is the command's output path (its `out` field) or lies inside it: any OSError there
    (a folder that cannot be created, e.g. under /proc) comes from where the user asked us to write."""
    from pathlib import Path

    out = getattr(cfg, "out", None)
    if not isinstance(out, str) or not out.strip():
        return False
    out_path, f = Path(out).expanduser().absolute(), Path(str(filename)).expanduser().absolute()
    return f == out_path or out_path in f.parents or f in out_path.parents


def _error(message: str) -> int:
    print("error: " + " ".join(message.split()), file=sys.stderr)  # always one line
    return 2


if __name__ == "__main__":
    sys.exit(main())
