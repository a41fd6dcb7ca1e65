"""The recipe: one YAML file that names the stages of a study.

    name: demo                 # the run folder defaults to runs/<name>
    seeds: [0, 1, 2]           # every per-seed stage runs once per seed, into RUN/seed-<s>/
    data:   {mapper: 2000, unlabeled: 800, test: 300}     # shapes-world sizes, or image sources
    base:   {steps: 3000, web_steps: 700}                 # `capalign nano train` fields, or {model: HUB_ID}
    mapper: {variants: [gt, g], width: 256, epochs: 20}   # `capalign mapper train` fields
    vizer:  {batch_size: 16, lr: 1.0e-3}                  # `capalign vizer train` fields
    caption: {batch_size: 50}                             # `capalign caption` fields
    evaluate: {metrics: "bleu,rouge,cider,grounding"}     # `capalign evaluate` fields
    features: {}
    summary: {}

A stage runs when its section is present (an empty section takes the defaults); the order of stages is
fixed (stages/__init__.py), not the order in the file. Field values follow the command's types; strings
such as `1e-3` (YAML 1.1 reads them as text) are converted like command-line flags are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import CapalignError

TOP_FIELDS = {
    "name": "Name of the study; the run folder defaults to runs/<name>.",
    "seeds": "Seeds: a list ([0, 1, 2]), a comma-separated string or one integer; each seed runs every per-seed stage.",
    "description": "Free text, kept in recipe.yaml and index.json.",
}


@dataclass
class Recipe:
    name: str
    seeds: list[int]
    sections: dict[str, dict] = field(default_factory=dict)  # stage name -> its fields, in stage order
    description: str = ""

    def to_dict(self) -> dict:
        head = {"name": self.name, **({"description": self.description} if self.description else {}), "seeds": list(self.seeds)}
        return {**head, **{k: dict(v) for k, v in self.sections.items()}}

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


def parse_seeds(value, where: str = "recipe") -> list[int]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",") if isinstance(value, str) else [value]
    try:
        seeds = [int(s) for s in items if str(s).strip() != ""]
    except (TypeError, ValueError):
        raise CapalignError(f"{where}: seeds must be integers, e.g. [0, 1, 2] or 0,1,2; got {value!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise CapalignError(f"{where}: seeds must be distinct integers >= 0, at least one; got {value!r}")
    return seeds


def from_dict(data, where: str = "recipe") -> Recipe:
    from .stages import STAGES

    if not isinstance(data, dict):
        raise CapalignError(f"{where}: a recipe is a mapping of stage: fields, got {type(data).__name__}")
    for k in data:
        if k not in STAGES and k not in TOP_FIELDS:
            raise CapalignError(f"{where}: unknown stage {k!r}; stages: {', '.join(STAGES)} (other keys: {', '.join(TOP_FIELDS)})")
    sections = {}
    for name, stage in STAGES.items():  # stage order, whatever the file's order
        if name in data:
            sec = data[name] if data[name] is not None else {}
            if not isinstance(sec, dict):
                raise CapalignError(f"{where}: stage {name} must hold a mapping of field: value, got {sec!r}")
            stage.validate(sec, where)
            sections[name] = dict(sec)
    if not sections:
        raise CapalignError(f"{where}: the recipe names no stage; stages: {', '.join(STAGES)}")
    for name in sections:
        missing = [n for n in STAGES[name].needs if n not in sections]
        if missing:
            raise CapalignError(f"{where}: stage {name} needs stage(s) {', '.join(missing)} in the recipe")
    name = str(data.get("name") or Path(where).stem)
    return Recipe(name=name, seeds=parse_seeds(data.get("seeds", [0]), where), sections=sections,
                  description=str(data.get("description") or ""))


def read_yaml(path: str | Path) -> dict:
    from ..config import read_yaml_mapping

    return read_yaml_mapping(path, "recipe")


def apply_overrides(data: dict, overrides) -> dict:
    """`stage.field=value` (value parsed as YAML) or `seeds=...` / `name=...`, applied to the raw recipe."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for spec in overrides or ():
        key, sep, raw = str(spec).partition("=")
        if not sep:
            raise CapalignError(f"--set {spec!r}: expected stage.field=value (e.g. vizer.lr=1e-4) or seeds=0,1,2")
        value = yaml.safe_load(raw) if raw.strip() else None
        stage, dot, fld = key.strip().partition(".")
        if not dot:
            data[stage] = value
        else:
            if not isinstance(data.get(stage) or {}, dict):
                raise CapalignError(f"--set {spec!r}: {stage} is not a stage section")
            data[stage] = {**(data.get(stage) or {}), fld: value}
    return data


def load_recipe(path: str | Path, overrides=()) -> Recipe:
    return from_dict(apply_overrides(read_yaml(path), overrides), str(path))
