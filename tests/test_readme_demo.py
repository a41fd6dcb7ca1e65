"""The README's demo section against the sources it quotes (issue 21, item 10).

A user compares `make demo`'s table with the README's; the README must say what varies between machines,
show the seed spread beside the one-seed table, and give the time from the Base's steps/s. Its numbers are
quoted from docs/results/vizer-five-seeds.md, docs/results/nano-speed.md (steps/s) and recipes/demo.yaml (steps): checked here
against those files, so a re-measured doc or a changed recipe cannot leave the README behind.
"""

from __future__ import annotations

import re
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


def test_five_seed_rows_are_docs_vizer_numbers():
    five = (ROOT / "docs" / "results" / "vizer-five-seeds.md").read_text()
    src = {r[0]: r[1:] for r in _table(five, "metric")[1:]}  # metric -> [Base mean, GT - Base (...), G - Base (...)]
    header, *rows = _table(DEMO, "over 5 seeds")
    by_label = {registry.label(k): k for k in src}
    keys = [by_label[h] for h in header[1:]]
    readme = {r[0]: r[1:] for r in rows}
    for col, k in enumerate(keys):
        base, gt, g = src[k]
        assert readme["Base"][col] == base, k
        for name, full in (("ViZer_GT - Base", gt), ("ViZer_G - Base", g)):
            mean, updown = re.match(r"([+-][\d.]+) \[.*\] \((\d/\d)\)", full).groups()
            assert readme[name][col] == f"{mean} ({updown})", (name, k)


def test_demo_time_is_the_base_steps_at_the_nano_rate():
    recipe = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    steps = recipe["base"]["steps"] + recipe["base"]["web_steps"]
    nano = (ROOT / "docs" / "results" / "nano-speed.md").read_text()
    rate = float(next(r for r in _table(nano, "threads")[1:] if r[0] == "2")[1])
    words = " ".join(DEMO.split())
    assert f"The Base is {steps:,} nano steps" in words
    assert f"{steps:,} steps at the {rate} steps/s" in words
    assert f"are {steps / rate / 60:.1f} min of training" in words
