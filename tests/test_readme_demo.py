"""The README's demo section against the sources it quotes (issue 21, item 10).

A user compares `make demo`'s table with the README's; the README must say what varies between machines,
show the seed spread beside the one-seed table, and give the time from the Base's steps/s. Its numbers are
quoted from docs/results/vizer-five-seeds.md, docs/results/nano-speed.md (steps/s) and recipes/demo.yaml (steps): checked here
against those files, so a re-measured doc or a changed recipe cannot leave the README behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from capalign.metrics import registry

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DEMO = README[README.index("## Two commands"):README.index("## Real use")]


def _table(text: str, first_cell: str) -> list[list[str]]:
    """The rows of the Markdown table whose header row starts with `first_cell`."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_cell} |"))
    rows = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return [rows[0]] + rows[2:]


def test_demo_section_says_what_varies_and_what_does_not():
    words = " ".join(DEMO.split())
    assert "Expect other numbers on your machine" in words and "thread" in words
    assert "bit-identical" in words and "pattern over seeds" in words


def test_five_seed_rows_are_the_compare_study_summary():
    """The README's one table is the shapes-compare study's summary.json (benchmarks/results), cell by cell, and the
    same table as docs/results/compare.md's."""
    summary = json.loads((ROOT / "benchmarks" / "results" / "shapes_compare_summary.json").read_text())
    header, *rows = _table(DEMO, "over 5 seeds")
    keys = {registry.label(k): k for k in summary["metrics"]}
    readme = {r[0]: r[1:] for r in rows}
    assert set(readme) == {"Base"} | {f"{s} - Base" for s in summary["paired"]}
    for col, h in enumerate(header[1:-1]):
        k = keys[h]
        assert readme["Base"][col] == f"{summary['systems']['Base'][k]['mean']:.3f}", h
        for name, row in summary["paired"].items():
            p = row[k]
            assert readme[f"{name} - Base"][col] == f"{p['mean_diff']:+.3f} [{p['lo']:+.3f}, {p['hi']:+.3f}] ({p['n_up']}/{p['n_down']})", (name, h)
    for name in summary["paired"]:
        assert readme[f"{name} - Base"][-1] == (", ".join(sorted(summary["collapsed"].get(name, {}))) or "none")
    compare = (ROOT / "docs" / "results" / "compare.md").read_text()
    assert _table(compare, "over 5 seeds") == [header, *rows]


def test_demo_time_is_the_base_steps_at_the_nano_rate():
    recipe = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    steps = recipe["base"]["steps"] + recipe["base"]["web_steps"]
    nano = (ROOT / "docs" / "results" / "nano-speed.md").read_text()
    rate = float(next(r for r in _table(nano, "threads")[1:] if r[0] == "2")[1])
    words = " ".join(DEMO.split())
    assert f"The Base is {steps:,} nano steps" in words
    assert f"{steps:,} steps at the {rate} steps/s" in words
    assert f"are {steps / rate / 60:.1f} min of training" in words
