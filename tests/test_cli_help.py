"""`capalign <command> --help` for every command of the CLI's table (issue 21, item 1).

The commands come from `capalign.cli.COMMANDS`, so a command added there is covered without a new line here.
argparse %-formats help texts, so a bare `%` ("a share of the split (10%)") crashed `style train --help`
with a ValueError; config.py escapes it. Every field's help is checked to be shown, unescaped.
"""

from __future__ import annotations

import dataclasses

import pytest

from capalign.cli import COMMANDS, _load


@pytest.mark.parametrize("path", list(COMMANDS), ids=[" ".join(p) for p in COMMANDS])
def test_help_of_every_command(path, cli):
    r = cli(*path, "--help")
    assert r.code == 0, r.err[-3000:]
    assert "Traceback" not in r.err and not r.error_lines, r.err[-3000:]
    assert f"usage: capalign {' '.join(path)}" in " ".join(r.out.split())
    text = "".join(r.out.split())  # argparse wraps help texts (also after a hyphen): compare without whitespace
    cfg_cls, _ = _load(path)
    for f in dataclasses.fields(cfg_cls):
        if not f.init:
            continue
        assert f"--{f.name}" in text, f"--{f.name} missing from the help of {' '.join(path)}"
        words = "".join(f.metadata.get("help", "").split())
        if words and "%(" not in words:
            assert words[:60] in text, f"help of --{f.name} not shown as written: {words[:60]!r}"
    assert "%%" not in text  # the escape is argparse's business, never shown


def test_percent_in_a_help_text_is_shown_as_written():
    """The one help text that broke --help (issue 21): style train's --budget, '(10%)'."""
    from capalign.config import make_parser
    from capalign.style.config import StyleTrainConfig

    text = "".join(make_parser(StyleTrainConfig, "capalign style train").format_help().split())
    assert "ashareofthetrainingsplit(10%)" in text
