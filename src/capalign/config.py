"""Config dataclasses -> CLI flags and YAML, the way trl's TrlParser does it.

Every command has one dataclass; every field carries its help text in `metadata["help"]`.
`parse_config` builds flags with transformers' HfArgumentParser and accepts `--config run.yaml`,
whose values become defaults that explicit flags override.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from . import CapalignError
from .io import atomic_write_text

T = TypeVar("T")


def arg(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    """A documented dataclass field: `x: int = arg(3, "what x is")`."""
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def make_parser(cls: type, prog: str | None = None, parser=None):
    from transformers import HfArgumentParser

    parser = parser or HfArgumentParser([], prog=prog, description=(cls.__doc__ or "").strip())
    parser.add_argument("--config", type=str, default=None, help="YAML file with values for any of the flags below; flags override it.")
    parser._add_dataclass_arguments(cls)
    return parser


def parse_config(cls: type[T], argv: Sequence[str] | None = None, prog: str | None = None, parser=None) -> T:
    parser = make_parser(cls, prog, parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**load_yaml(pre.config, cls))
    ns = parser.parse_args(argv)
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if f.init}
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        raise CapalignError(f"invalid {cls.__name__}: {e}") from None


def load_yaml(path: str | Path, cls: type) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CapalignError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise CapalignError(f"config file {path} must hold a mapping of field: value, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CapalignError(f"unknown field(s) in {path}: {', '.join(unknown)}; expected some of: {', '.join(sorted(known))}")
    return data


def config_dict(cfg: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def show_config(cfg: Any) -> None:
    """Print the resolved config at the start of a command (only on the main process)."""
    from .utils import print0

    print0(f"[bold]{type(cfg).__name__}[/bold] " + json.dumps(config_dict(cfg), indent=1))


def save_config(cfg: Any, path: str | Path) -> Path:
    """Save the resolved config as JSON beside an output: `<dir>/capalign_config.json` for a folder
    (not config.json: model folders already have one), `<file>.config.json` for a file, or `path`
    itself when it ends in .json."""
    path = Path(path)
    if path.suffix == ".json":
        target = path
    elif path.is_dir() or not path.suffix:
        target = path / "capalign_config.json"
    else:
        target = path.with_name(path.name + ".config.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps({"command": type(cfg).__name__, **config_dict(cfg)}, indent=2) + "\n")
    return target
