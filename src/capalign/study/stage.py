"""A study stage = the config class of its command + its own study options + outputs + a run function.

A recipe section (`mapper:`, `vizer:`, ...) may set any field of the stage's command config (the same
names as `capalign mapper train --help`) except the ones the study fills in (`owned`: output folders,
the model, the data, the seed), plus the stage's study options (e.g. `variants`). Adding a stage:

    class MyStage(Stage):
        name, help = "rl", "RL with a VLM judge (`capalign rl train`)."
        command = RLTrainConfig                     # its fields become recipe fields
        owned = ("model", "images", "out", "seed")  # filled in by the study
        options = RLOptions                         # extra study fields (a dataclass), or None
        needs = ("base", "data")
        def publish(self, ctx): ctx.systems["RL_judge"] = ctx.root / layout.rl_dir(ctx.seed, "RL_judge")  # seen by later stages
        def outputs(self, ctx): return [ctx.systems["RL_judge"] / "adapter_model.safetensors"]
        def run(self, ctx): rl.run(self.command_config(ctx, model=ctx.model, ...))

and list it in stages/__init__.py (the order there is the order stages run in).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import CapalignError
from ..config import coerce


@dataclass
class Context:
    """What the stages of one seed know about each other; filled by `publish` in stage order."""

    root: Path  # the run folder
    recipe: Any  # recipe.Recipe
    seed: int | None = None  # None for study-wide stages (summary)
    model: str | None = None  # the Base: hub id or model folder
    data: dict[str, str] = field(default_factory=dict)  # split -> image source spec
    test_manifest: Path | None = None
    mappers: dict[str, Path] = field(default_factory=dict)  # variant -> mapper folder
    systems: dict[str, Path | None] = field(default_factory=dict)  # name -> adapter folder (None: the Base itself)
    budgets: dict[str, dict] = field(default_factory=dict)  # ViZer arm -> {"steps", "systems", ...}
    captions: dict[str, Path] = field(default_factory=dict)  # system -> captions JSONL
    evals: dict[str, Path] = field(default_factory=dict)  # system -> eval JSON
    features: Path | None = None
    seeds: dict[int, "Context"] = field(default_factory=dict)  # study-wide stages: every seed's context

    @property
    def seed_dir(self) -> Path:
        from . import layout

        return self.root / layout.seed_dir(self.seed)

    def rel(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()


def _placeholder(f: dataclasses.Field):
    """A value that lets the command config validate a recipe section before the study fills the field in."""
    empty = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    default = None if empty else (f.default if f.default is not dataclasses.MISSING else f.default_factory())
    if "list" in str(f.type):
        return default or ["x"]
    return "x" if empty else default


class Stage:
    name: str = ""
    help: str = ""
    command: type | None = None  # the command's config dataclass
    owned: tuple[str, ...] = ()  # its fields the study sets
    options: type | None = None  # dataclass of the stage's own study fields
    needs: tuple[str, ...] = ()  # stages that must be in the recipe as well
    per_seed: bool = True  # False: runs once, after every seed
    always_run: bool = False  # True: cheap, re-run every time (e.g. the summary over all seeds)
    placeholders: dict = {}  # values for owned fields that their command requires, used to validate a section

    # ---- the recipe side --------------------------------------------------------------------------
    @property
    def study_owned(self) -> tuple[str, ...]:
        """The owned fields plus `overwrite`: a study resumes by its own rule (run.py: a changed recipe is refused)."""
        return (*self.owned, "overwrite")

    def fields(self) -> dict[str, str]:
        """Field name -> help, for every field a recipe section may set."""
        out = {}
        for cls, skip in ((self.command, self.study_owned), (self.options, ())):
            for f in dataclasses.fields(cls) if cls else ():
                if f.init and f.name not in skip:
                    out[f.name] = f.metadata.get("help", "")
        return out

    def validate(self, section: dict, where: str) -> None:
        allowed = self.fields()
        for k in section:
            if k in self.study_owned:
                raise CapalignError(f"{where}: field {self.name}.{k} is set by the study (the run folder, model, data and seed are its to choose)")
            if k not in allowed:
                raise CapalignError(f"{where}: unknown field {self.name}.{k}; {self.name} takes: {', '.join(sorted(allowed))}")
        self.opts(section, where)
        if self.command:
            owned = {f.name: _placeholder(f) for f in dataclasses.fields(self.command) if f.name in self.owned}
            self.command_config(None, section, where, **{**owned, **self.placeholders})

    def opts(self, section: dict, where: str = "recipe"):
        if not self.options:
            return None
        names = {f.name for f in dataclasses.fields(self.options)}
        try:
            return self.options(**coerce(self.options, {k: v for k, v in section.items() if k in names}, f"{where}: invalid {self.name} options"))
        except (ValueError, TypeError) as e:
            raise CapalignError(f"{where}: invalid {self.name} options: {e}") from None

    def command_config(self, ctx: Context | None, section: dict | None = None, where: str = "recipe", **owned):
        """The command's config from the recipe section plus the study's values for the owned fields."""
        if section is None:
            section = self.section(ctx)
        names = {f.name for f in dataclasses.fields(self.command)}
        values = {k: v for k, v in section.items() if k in names and k not in self.owned}
        try:
            return self.command(**coerce(self.command, values, f"{where}: invalid {self.name} settings"), **owned)
        except (ValueError, TypeError) as e:
            raise CapalignError(f"{where}: invalid {self.name} settings: {e}") from None

    def section(self, ctx: Context) -> dict:
        return ctx.recipe.sections.get(self.name) or {}

    # ---- the run side ------------------------------------------------------------------------------
    def publish(self, ctx: Context) -> None:
        """Record in ctx what this stage provides (paths, systems), whether it runs now, ran before, or not yet."""

    def outputs(self, ctx: Context) -> list[Path]:
        """Files that exist once the stage is done (all of them existing = skip)."""
        return []

    def run(self, ctx: Context) -> None:
        raise NotImplementedError
