"""Config dataclasses -> CLI flags and YAML, the way trl's TrlParser does it.

Every command has one dataclass; every field carries its help text in `metadata["help"]`.
`parse_config` builds flags with transformers' HfArgumentParser and accepts `--config run.yaml`,
whose values become defaults that explicit flags override. Departures from plain HfArgumentParser:
- a field the YAML supplies is no longer a required flag (argparse checks required flags before any
  default applies, so `--config` could not give `--model` otherwise);
- YAML values are checked against the field's type here (argparse never converts defaults), so
  `batch_size: [1]` or `do_sample: 3` is an error naming the file and field, not a crash later;
- list fields take several values after one flag and repeated flags (`--pred a b`, `--pred a --pred b`);
  argparse's store action would silently keep only the last repeat;
- parse errors are CapalignErrors (one `error:` line from the CLI), not argparse's usage dump.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from . import CapalignError
from .io import atomic_write_text, check_writable

T = TypeVar("T")


def arg(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    """A documented dataclass field: `x: int = arg(3, "what x is")`."""
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


class ListFlag(argparse.Action):
    """`--x a b` and `--x a --x b` both give [a, b]; the first use on the command line replaces the
    default (or the YAML value), later uses extend it."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_capalign_lists_given", set())
        before = getattr(namespace, self.dest) if self.dest in given else []
        given.add(self.dest)
        setattr(namespace, self.dest, [*before, *values])


class _RaiseErrors:
    """argparse prints usage and exits on a bad flag; we raise, and the CLI prints one `error:` line."""

    def error(self, message: str):
        message = re.sub(r"(--\w+)/--[\w-]+", r"\1", message)  # "argument --batch_size/--batch-size:" -> "--batch_size"
        raise CapalignError(f"{message} (see `{self.prog} --help`)")


class _ConfigFlag(_RaiseErrors, argparse.ArgumentParser):
    pass


@functools.lru_cache(maxsize=1)
def _parser_class():
    from transformers import HfArgumentParser

    class Parser(_RaiseErrors, HfArgumentParser):
        def add_argument(self, *args, **kw):
            return super().add_argument(*args, **_list_flag(kw))

    return Parser


def make_parser(cls: type, prog: str | None = None):
    parser = _parser_class()([], prog=prog or "capalign", description=(cls.__doc__ or "").strip())
    parser.add_argument("--config", type=str, default=None, help="YAML file with values for any of the flags below "
                        "(required ones too); flags given on the command line override it.")
    own, groups = _field_groups(cls)
    for f in own:
        parser._parse_dataclass_field(parser, f)
    for title, fields in groups.items():  # the shared argument groups (training/args.py), each under its heading
        group = parser.add_argument_group(title)
        add = group.add_argument
        group.add_argument = lambda *a, _add=add, **kw: _add(*a, **_list_flag(kw))
        for f in fields:
            parser._parse_dataclass_field(group, f)
    return parser


def _list_flag(kw: dict) -> dict:
    """HfArgumentParser's keyword arguments for a field's flag, adjusted: list fields take ListFlag, and a bare
    `%` in a help text ("10%") is escaped, since argparse %-formats help texts (it would crash `--help`)."""
    if "help" in kw and "%(" not in kw["help"]:
        kw["help"] = kw["help"].replace("%", "%%")
    if kw.get("nargs") == "+" and "action" not in kw:  # HfArgumentParser's list fields
        kw["action"] = ListFlag
        if "repeat" not in kw.get("help", ""):
            kw["help"] = (kw.get("help", "") + " (repeat the flag or give several values)").strip()
    return kw


def _field_groups(cls: type) -> tuple[list, dict[str, list]]:
    """The init fields of `cls` with resolved types: its own first, then those of bases that carry a
    `group_title` (the shared argument groups), grouped under that title."""
    import typing

    hints = typing.get_type_hints(cls)
    title_of = {}
    for base in cls.__mro__[1:]:
        title = base.__dict__.get("group_title")
        if title and dataclasses.is_dataclass(base):
            for f in dataclasses.fields(base):
                title_of.setdefault(f.name, title)
    own, groups = [], {}
    for f in dataclasses.fields(cls):
        if f.init:
            f.type = hints[f.name]
            (groups.setdefault(title_of[f.name], []) if f.name in title_of else own).append(f)
    return own, groups


def parse_config(cls: type[T], argv: Sequence[str] | None = None, prog: str | None = None) -> T:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser(cls, prog)
    pre = _ConfigFlag(prog=parser.prog, add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    config = pre.parse_known_args(argv)[0].config
    if config:
        values = load_yaml(config, cls, parser)
        parser.set_defaults(**values)
        for action in parser._actions:
            if action.dest in values:
                action.required = False
    ns = parser.parse_args(argv)
    if ns.config != config:  # an abbreviation (--conf) that the pre-parser did not expand
        raise CapalignError(f"write the config file flag in full: --config {ns.config}")
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if f.init}
    try:
        cfg = cls(**values)
    except (ValueError, TypeError) as e:
        raise CapalignError(f"invalid {cls.__name__}: {e}") from None
    out = getattr(cfg, "out", None)  # every command's output path is its `out` field
    if isinstance(out, str) and out.strip():
        check_writable(out, "--out")
        _check_not_an_input(cfg, out)
    return cfg


def _check_not_an_input(cfg: Any, out: str) -> None:
    """An output file is never one of the command's inputs (`evaluate --refs r.jsonl --out r.jsonl` would replace
    the references with the scores)."""
    target = Path(out).expanduser()
    if not target.is_file():
        return
    for f in dataclasses.fields(cfg):
        values = getattr(cfg, f.name)
        for v in values if isinstance(values, list) else [values]:
            if f.name != "out" and isinstance(v, str) and v.strip() and Path(v).expanduser().is_file() and Path(v).expanduser().samefile(target):
                raise CapalignError(f"--out {out} is also the input --{f.name}; an output never replaces an input: choose another --out")


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice is an error (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"field {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """The mapping in a YAML file (config files and recipes); every problem (missing, not UTF-8, not YAML,
    a key given twice, not a mapping) is one CapalignError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CapalignError(f"{what} not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CapalignError(f"{what} {path} is not UTF-8 text (byte at offset {e.start})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
        raise CapalignError(f"{what} {path} is not valid YAML: {problem}{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CapalignError(f"{what} {path} must hold a mapping of field: value, got {type(data).__name__}")
    return data


def load_yaml(path: str | Path, cls: type, parser=None) -> dict:
    """The values of a YAML config for `cls`, converted to the fields' types; every problem (missing,
    not UTF-8, not YAML, not a mapping, unknown field, wrong type) is one CapalignError line."""
    data = read_yaml_mapping(path)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted((str(k) for k in data if k not in known))
    if unknown:
        raise CapalignError(f"unknown field(s) in {path}: {', '.join(unknown)}; expected some of: {', '.join(sorted(known))}")
    actions = _actions(parser or make_parser(cls))
    return {k: _yaml_value(actions[k], v, f"{path}: {k}") for k, v in data.items()}


def _actions(parser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings and a.option_strings[0] == f"--{a.dest}"}


def coerce(cls: type, values: dict, where: str = "recipe") -> dict:
    """Recipe values for the fields of `cls`, converted and checked exactly as `--config` YAML values are
    (strings such as `1e-3` become numbers, a wrong type is one error line naming the field). Fields whose
    type no flag can express (a study option such as `int | str` or a dict) pass through unchanged."""
    actions = _field_actions(cls)
    return {k: _yaml_value(actions[k], v, f"{where}: {k}") if k in actions else v for k, v in values.items()}


@functools.lru_cache(maxsize=None)
def _field_actions(cls: type) -> dict[str, argparse.Action]:
    import typing

    parser, (own, groups) = _parser_class()([]), _field_groups(cls)
    for f in [*own, *(f for fs in groups.values() for f in fs)]:
        if len([t for t in typing.get_args(f.type) if t is not type(None)]) > 1 or dict in (f.type, *typing.get_args(f.type)):
            continue  # a union such as `int | str` (a count or a path) or a mapping: no flag type expresses it, left as given
        parser._parse_dataclass_field(parser, f)
    return _actions(parser)


def _yaml_value(action: argparse.Action, value: Any, where: str) -> Any:
    """A YAML value converted like argparse converts the same flag's text; wrong types are errors."""
    if value is None:
        if action.default is None and not action.required:  # an optional field (default None)
            return None
        raise CapalignError(f"{where}: expected {_kind(action)}, got null")
    if isinstance(action, ListFlag):
        return [_yaml_scalar(action, v, where) for v in (value if isinstance(value, list) else [value])]
    return _yaml_scalar(action, value, where)


def _kind(action: argparse.Action) -> str:
    from transformers.hf_argparser import string_to_bool

    kinds = {int: "an integer", float: "a number", str: "a string", string_to_bool: "true or false"}
    kind = kinds.get(action.type, getattr(action.type, "__name__", "a value"))
    return f"a list of {kind.split(' ', 1)[-1]}s" if isinstance(action, ListFlag) and action.type in (int, float, str) else kind


def _yaml_scalar(action: argparse.Action, v: Any, where: str) -> Any:
    from transformers.hf_argparser import string_to_bool

    t = action.type
    bad = CapalignError(f"{where}: expected {_kind(action)}, got {v!r}")
    if isinstance(v, (list, dict)) or v is None:
        raise bad
    if t is string_to_bool:
        if isinstance(v, bool):
            return v
        if not isinstance(v, str):
            raise bad
    elif isinstance(v, bool):  # YAML reads yes/no/on/off as booleans: never a number or a string here
        raise CapalignError(f"{where}: expected {_kind(action)}, got {v!r}" + (" (quote it if you meant the text)" if t is str else ""))
    elif t is int and isinstance(v, float):
        raise bad
    try:
        v = t(v) if isinstance(v, str) or t in (int, float, str) else v
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        raise bad from None
    if action.choices is not None and v not in action.choices:
        raise CapalignError(f"{where}: expected one of {', '.join(map(str, action.choices))}, got {v!r}")
    return v


def config_dict(cfg: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def show_config(cfg: Any) -> None:
    """Print the resolved config at the start of a command (only on the main process)."""
    from .utils import print0

    print0(f"[bold]{type(cfg).__name__}[/bold] " + json.dumps(config_dict(cfg), indent=1))


def config_path(path: str | Path) -> Path:
    """Where `save_config` keeps the config of the output `path`: `<dir>/capalign_config.json` for a folder
    (not config.json: model folders already have one), `<file>.config.json` for a file, or `path` itself
    when it ends in .json."""
    path = Path(path)
    if path.suffix == ".json":
        return path
    if path.is_dir() or not path.suffix:
        return path / "capalign_config.json"
    return path.with_name(path.name + ".config.json")


def save_config(cfg: Any, path: str | Path) -> Path:
    """Save the resolved config as JSON beside an output (`config_path`); it names the command's config class."""
    target = config_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps({"command": type(cfg).__name__, **config_dict(cfg)}, indent=2) + "\n")
    return target


# fields a resumed run may change, for every command: they decide where and how it runs and logs, never what it writes
RESUME_FREE = frozenset({"out", "overwrite", "device", "save_every", "keep_checkpoints", "log_every", "report_to", "workers", "push_to_hub", "hub_public"})


def check_resume(cfg: Any, out: str | Path, what: str = "--out") -> bool:
    """Before a command appends to or resumes from an earlier output at `out` (a caption file, a checkpoint
    folder, a sweep's cells): the config saved beside it (`config_path`) must be this command's, with the
    same settings in every field that changes the output, so one output never mixes two setups. Returns
    True when the earlier output is to be replaced instead (`cfg.overwrite`; the caller removes it); False
    for a resume or a new output. Compared: `cfg.resume_fields()` if the config defines it, else every field
    except RESUME_FREE and the class's `resume_free`; a field the saved config lacks (an older version) is
    not compared. Paths count as equal when they name the same existing file or folder. Reads only."""
    saved = config_path(out)
    if not saved.is_file():
        return False
    try:
        prev = json.loads(saved.read_bytes())
    except (ValueError, OSError):
        prev = None
    name = type(cfg).__name__
    if not isinstance(prev, dict) or prev.get("command") != name:
        whose = f"of {prev['command']}" if isinstance(prev, dict) and isinstance(prev.get("command"), str) else "that is not a capalign config"
        raise CapalignError(f"{what} {out} holds another command's output ({saved} is a config {whose}, not of {name}); "
                            f"choose another {what}")
    if getattr(cfg, "overwrite", False):
        return True
    diff = changed_settings(cfg, prev)
    if diff:
        raise CapalignError(f"{what} {out} was made with other settings ({'; '.join(diff)}); resuming would mix them in one output. "
                            f"Re-run with the settings saved in {saved} to resume, or add --overwrite to start over")
    return False


def changed_settings(cfg: Any, prev: dict) -> list[str]:
    """'field: before -> now' for the output-changing fields of `cfg` whose value differs from the saved config `prev`."""
    now = config_dict(cfg)
    if hasattr(cfg, "resume_fields"):
        names = list(cfg.resume_fields())
    else:
        free = RESUME_FREE | set(getattr(cfg, "resume_free", ()))
        names = [k for k in now if k not in free]
    return [f"{k}: {json.dumps(prev[k])} before, {json.dumps(now[k])} now" for k in names if k in prev and not _same_value(prev[k], now[k])]


def _same_value(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and a and b:  # runs/nano and ./runs/nano/ are the same model
        pa, pb = Path(a).expanduser(), Path(b).expanduser()
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    return False
