"""`capalign` command line. Each command is a (config dataclass, run function) pair in its module;
flags and `--config run.yaml` come from the dataclass (see config.py). Modules import lazily so
`capalign --help` is fast."""

from __future__ import annotations

import importlib
import sys

from . import CapalignError

# command path -> (module, config class, run function, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str, str, str]] = {
    ("caption",): ("capalign.caption", "CaptionConfig", "run", "Caption images with a VLM (batched, resumable)."),
    ("evaluate",): ("capalign.metrics.evaluate", "EvaluateConfig", "run", "Score caption files: BLEU, ROUGE-L, CIDEr-D, BERTScore, CLIPScore, grounding."),
    ("shapes",): ("capalign.data.shapes", "ShapesConfig", "run", "Write a shapes-world dataset (images, manifest, scenes)."),
    ("nano", "train"): ("capalign.training.nano", "NanoTrainConfig", "run", "Train the nano captioner (SmolVLM architecture) on the shapes world."),
    ("mapper", "train"): ("capalign.training.mapper", "MapperTrainConfig", "run", "Train the ViZer mapper (variant gt or g)."),
    ("vizer", "train"): ("capalign.training.vizer", "VizerTrainConfig", "run", "Zero-label LoRA training of the VLM with a frozen mapper."),
    ("vizer", "sweep"): ("capalign.training.sweep", "SweepConfig", "run", "Sweep mapper widths x data sizes; table and heatmap."),
    ("rl", "train"): ("capalign.training.rl_trainer", "RLTrainConfig", "run", "GRPO on the language model (LoRA) with a judge or metric reward."),
    ("vizer", "study"): ("capalign.training.study", "StudyConfig", "run", "Base vs ViZer_GT vs ViZer_G on the shapes world, end to end."),
}


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
    while argv and any(p[: len(path) + 1] == (*path, argv[0]) for p in COMMANDS):
        path = (*path, argv.pop(0))
        if path in COMMANDS:
            break
    if path not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {' '.join((*path, argv[0]))!r}\n\n{_usage(path)}", file=sys.stderr)
            return 2
        print(_usage(path))
        return 0 if argv else 2
    from .config import parse_config

    try:
        cfg_cls, run = _load(path)
        cfg = parse_config(cfg_cls, argv, prog="capalign " + " ".join(path))
        run(cfg)
    except CapalignError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
