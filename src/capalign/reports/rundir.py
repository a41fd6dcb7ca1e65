"""Read a study run folder (capalign.study.layout; the contract in docs/run-layout.md) for the report.

The report shows whatever exists: a file that the index names but that is missing or unreadable
becomes a note (shown at the top of the page), never an exception. Only a folder that is not a run
folder at all (no readable index.json) is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import CapalignError
from ..io import read_jsonl
from ..study import layout


def _get(d, key):
    """d[key] if d is a mapping that has it, else {} (index.json is read defensively: a hand-edited index must not crash the report)."""
    return d.get(key) or {} if isinstance(d, dict) else {}


@dataclass
class Run:
    root: Path
    index: dict
    seeds: list[str]  # seed keys as they appear in index.json's per-seed maps ("0", "1", ...)
    systems: list[str]  # the baseline first, then the index's order
    baseline: str
    notes: list[str] = field(default_factory=list)  # what is missing or unreadable, in reading order

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def file(self, rel: str | None) -> Path | None:
        return self.root / rel if rel else None

    def json(self, rel: str | None, what: str, required: bool = True):
        """The parsed JSON file at `rel`, or None with a note (when `required`) if it is missing or broken."""
        p = self.file(rel)
        if p is None or not p.is_file():
            if required:
                self.note(f"{what}: {rel or 'not listed in index.json'} is missing")
            return None
        try:
            return json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            self.note(f"{what}: {rel} is unreadable ({e})")
            return None

    def jsonl(self, rel: str | None, what: str) -> list[dict] | None:
        p = self.file(rel)
        if p is None or not p.is_file():
            self.note(f"{what}: {rel or 'not listed in index.json'} is missing")
            return None
        try:
            return [r for r in read_jsonl(p) if isinstance(r, dict)]
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            self.note(f"{what}: {rel} is unreadable ({e})")
            return None

    def system_file(self, system: str, seed: str, kind: str) -> str | None:
        """The relative path of a system's `captions` or `eval` file for a seed (index first, then the layout's default)."""
        entry = _get(_get(self.index.get("systems"), system), seed)
        default = layout.captions(seed, system) if kind == "captions" else layout.eval_file(seed, system)
        return entry.get(kind) or default

    def test_manifest(self, seed: str) -> str:
        return _get(self.index.get("test"), seed) or layout.test_manifest(seed)

    def headline(self, budget: dict | None = None) -> list[str]:
        """The systems the gallery shows: all but the intermediate points of a ViZer budget arm (index.json's
        or summary.json's "budget": {arm: {"steps": [...], "systems": [...]}}), whose largest budget stays.
        The study's table uses the same rule (capalign.study.layout.headline)."""
        return layout.headline(self.systems, budget if budget is not None else self.index.get("budget"))

    def artifact(self, key: str, default: str | None = None):
        """index.json's artifacts[key] (a path, or a mapping for rl_history), else `default`."""
        return _get(self.index.get("artifacts"), key) or default


def load_run(path: str | Path) -> Run:
    root = Path(path)
    if not root.is_dir():
        raise CapalignError(f"{root} is not a folder; give the run folder that `capalign study` wrote")
    idx = root / "index.json"
    if not idx.is_file():
        raise CapalignError(f"{root} is not a capalign run folder (it has no index.json; `capalign study RECIPE` writes one)")
    try:
        index = json.loads(idx.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CapalignError(f"{idx} is not valid JSON ({e})") from None
    if not isinstance(index, dict) or not isinstance(index.get("systems", {}), dict):
        raise CapalignError(f"{idx} is not a run index (expected an object with 'systems', see docs/run-layout.md)")
    systems = list(index.get("systems", {}))
    baseline = index.get("baseline") or ("Base" if "Base" in systems else (systems[0] if systems else "Base"))
    systems = [baseline] + [s for s in systems if s != baseline] if baseline in systems else systems
    seeds = [str(s) for s in index.get("seeds") or []]
    if not seeds:  # an index written before its seeds were known: take them from the systems' entries
        seeds = sorted({s for per in index.get("systems", {}).values() for s in (per or {})}, key=lambda s: (len(s), s))
    run = Run(root, index, seeds, systems, baseline)
    for st in index.get("stages") or []:
        if isinstance(st, dict) and st.get("status") in ("missing", "failed"):
            where = f" (seed {st['seed']})" if st.get("seed") is not None else ""
            why = f": {st['error']}" if st.get("error") else ""
            run.note(f"stage {st.get('name', '?')}{where} is {st['status']}{why}")
    stages = [st.get("name") for st in index.get("stages") or [] if isinstance(st, dict)]
    if not systems and (not stages or set(stages) - {"style"}):  # a style-only study captions nothing: not missing
        run.note("index.json lists no systems yet: no captions to show")
    return run
